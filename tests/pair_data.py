"""Synthetic labelled pairs with a planted signal per axis, for the training tests.

Two kinds:

- :func:`synthetic_pair_features`: features of images with a hidden property per axis
  (geometry, material, texture; overall = their mean), ``tanh(z @ A) + noise`` wide ``dim``;
  a label says which image has the larger property, near-equal ones are ties, and a fraction
  ``noise`` of decisive labels is flipped. Also returns the clean labels.
- :func:`render_pairs`: PNG pairs where one visible property decides each axis: geometry = the
  size of a square, material = its brightness, texture = the number of stripes across it;
  overall = the majority of the three. Written as ``pair_{idx:04d}_{0,1}.png`` with a labels
  JSONL in ``creward train label``'s format and/or CreBench arrays.

Also :func:`one_torch_thread` and the autouse ``one_thread`` fixture (a test module imports it
to run its tests with one torch thread).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

AXES = ("geometry", "material", "texture", "overall")
LETTER = {1: "A", -1: "B", 0: "tie"}


@contextlib.contextmanager
def one_torch_thread():
    """Tiny matrices: one thread is faster, and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test of a module that imports this fixture runs with one torch thread."""
    with one_torch_thread():
        yield


def _labels_from_latents(latent_0: torch.Tensor, latent_1: torch.Tensor, tie_margin: float, noise: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    difference = latent_0 - latent_1
    clean = torch.sign(difference).to(torch.int8)
    clean[difference.abs() < tie_margin] = 0
    noisy = clean.clone()
    flip = torch.rand(clean.shape, generator=generator) < noise
    noisy[flip] = -noisy[flip]
    return noisy, clean


def synthetic_pair_features(pairs: int, dim: int = 32, noise: float = 0.1, seed: int = 0, tie_margin: float = 0.1):
    """``(PairFeatures with noisy labels, clean labels [pairs, 4])``; the feature map is fixed
    across seeds so train/val/test sets drawn with different seeds share it."""
    from creward.train.fit import PairFeatures

    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(3, dim, generator=torch.Generator().manual_seed(1234))
    z_0, z_1 = torch.randn(pairs, 3, generator=generator), torch.randn(pairs, 3, generator=generator)

    def latent(z):
        return torch.cat([z, z.mean(dim=1, keepdim=True)], dim=1)

    def features(z):
        return torch.tanh(z @ mixing) + 0.1 * torch.randn(len(z), dim, generator=generator)

    noisy, clean = _labels_from_latents(latent(z_0), latent(z_1), tie_margin, noise, generator)
    return PairFeatures(features(z_0), features(z_1), noisy), clean


def render_image(size: float, brightness: float, stripes: int, pixels: int = 64, hue: int = 0):
    """A square of side ``size``·pixels, colour ``brightness``, with ``stripes`` dark stripes."""
    from PIL import Image

    image = np.full((pixels, pixels, 3), 40, dtype=np.uint8)
    image[..., 2] = 90 + hue
    side = max(int(size * pixels), 4)
    start = (pixels - side) // 2
    yy, xx = np.mgrid[0:side, 0:side]
    value = int(60 + 195 * brightness)
    block = np.full((side, side, 3), value, dtype=np.uint8)
    dark = (np.floor(xx * stripes * 2 / side) % 2 == 1)
    block[dark] = (block[dark] * 0.35).astype(np.uint8)
    image[start:start + side, start:start + side] = block
    return Image.fromarray(image)


def render_pairs(folder, pairs: int = 40, seed: int = 0, noise: float = 0.0, pixels: int = 64, labels_name: str | None = "labels.jsonl"):
    """Render ``pairs`` pairs into ``folder``; returns ``(folder, labels [pairs, 4] +1/-1/0, properties)``.

    Writes ``folder/labels_name`` (JSONL, "A" = image _0 more creative) unless it is None.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    properties = np.stack([rng.uniform(0.25, 0.95, (pairs, 2)), rng.uniform(0.0, 1.0, (pairs, 2)), rng.integers(1, 7, (pairs, 2))], axis=-1)
    labels = np.zeros((pairs, 4), dtype=np.int8)
    for index in range(pairs):
        for side in (0, 1):
            size, brightness, stripes = properties[index, side]
            render_image(size, brightness, int(stripes), pixels, hue=int(rng.integers(0, 40))).save(folder / f"pair_{index:04d}_{side}.png")
        difference = properties[index, 0] - properties[index, 1]
        labels[index, :3] = np.sign(difference).astype(np.int8)
        labels[index, 2] = 0 if difference[2] == 0 else labels[index, 2]
        labels[index, 3] = np.sign(labels[index, :3].sum())
    flip = rng.random(labels.shape) < noise
    labels[flip] = -labels[flip]
    if labels_name:
        write_jsonl(folder / labels_name, labels)
    return folder, labels, properties


def write_jsonl(path, labels, malformed=(), model: str = "synthetic") -> Path:
    """A labels JSONL in ``creward train label``'s format for pairs 0..N-1."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        for index, row in enumerate(labels):
            bad = index in malformed
            record = {
                "pair": index,
                "image_0": f"pair_{index:04d}_0.png",
                "image_1": f"pair_{index:04d}_1.png",
                "labels": None if bad else {axis: LETTER[int(value)] for axis, value in zip(AXES, row)},
                "status": "malformed" if bad else "ok",
                "inconsistent": None if bad else [],
                "answers": ["", ""],
                "model": model,
            }
            handle.write(json.dumps(record) + "\n")
    return path
