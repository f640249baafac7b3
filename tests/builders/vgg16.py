"""Random VGG16 state dicts in torchvision's format (``features.N.*``, ``classifier.{0,3,6}.*``).

``build(folder, fmt)`` writes:

- ``"pth"``: a VGG16-shaped state dict with few channels (4-8) and a small classifier
  (392 → 24 → 20 → 10), ``torch.save``'d as ``vgg16-397923af.pth`` like torchvision's file;
- ``"safetensors"``: the same tensors as ``vgg16.safetensors``;
- ``"full_pth"``: a full-size VGG16 state dict (138 M parameters, 528 MB) as
  ``vgg16-397923af.pth``, for the test against ``torchvision.models.vgg16()`` itself.

Weights are He-normal (biases small), so activations neither vanish nor explode.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

FORMATS = ("pth", "safetensors", "full_pth")
TINY_LAYOUT = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M")
FULL_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TINY_CLASSIFIER = (24, 20, 10)  # hidden1, hidden2 (the feature width), classes
FULL_CLASSIFIER = (4096, 4096, 1000)
TINY_FEATURE_DIM = TINY_CLASSIFIER[1]


def random_state_dict(layout=TINY_LAYOUT, classifier=TINY_CLASSIFIER, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def he(shape, fan_in):
        return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)

    state = {}
    position, channels = 0, 3
    for item in layout:
        if item == "M":
            position += 1
            continue
        state[f"features.{position}.weight"] = he((item, channels, 3, 3), channels * 9)
        state[f"features.{position}.bias"] = torch.randn(item, generator=generator) * 0.01
        position += 2
        channels = item
    widths = (channels * 7 * 7, *classifier)
    for index, (fan_in, fan_out) in zip((0, 3, 6), zip(widths[:-1], widths[1:])):
        state[f"classifier.{index}.weight"] = he((fan_out, fan_in), fan_in)
        state[f"classifier.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.01
    return state


def build(folder: str | Path, fmt: str = "pth", seed: int = 0) -> Path:
    """Write random VGG16 weights in format ``fmt`` under ``folder``; returns the file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "full_pth":
        state = random_state_dict(FULL_LAYOUT, FULL_CLASSIFIER, seed)
    else:
        state = random_state_dict(seed=seed)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = folder / "vgg16.safetensors"
        save_file(state, str(path))
    else:
        path = folder / "vgg16-397923af.pth"
        torch.save(state, path)
    return path
