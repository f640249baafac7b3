"""Small datasets in the formats users have, for the ``creward score-dataset`` tests.

- ``image_folder``: PNG/JPEG files of mixed sizes in a folder with a subfolder;
- ``webdataset_shards``: img2dataset-style tar shards (``key.jpg`` + ``key.json`` + ``key.txt``),
  written with ``tarfile`` the way ``webdataset.TarWriter`` lays them out;
- ``path_list``: a Parquet or CSV list of image paths with extra columns;
- ``weights``: tiny random CLIP backbone + converted head (as ``tests/test_cli.py`` builds them).
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    small = rng.random((height // 8 + 1, width // 8 + 1, 3))
    return Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)


SIZES = ((96, 64), (64, 80), (120, 120), (50, 90), (70, 70), (128, 48))


def image_folder(folder: Path, count: int = 6, seed: int = 0) -> list[Path]:
    """``count`` images: half at the top, half in ``sub/``; alternately PNG and JPEG."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        target = folder / ("sub" if index % 2 else "") / f"img_{index:02d}.{'jpg' if index % 3 == 1 else 'png'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        random_image(rng, *SIZES[index % len(SIZES)]).convert("RGB").save(target)
        paths.append(target)
    return sorted(paths)


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return path


def webdataset_shards(folder: Path, shards: int = 2, per_shard: int = 4, seed: int = 1) -> list[Path]:
    """img2dataset layout: ``{shard:05d}.tar`` holding ``{shard:05d}{i:04d}.jpg/.json/.txt``."""
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(shards):
        members = []
        for index in range(per_shard):
            key = f"{shard:05d}{index:04d}"
            image = random_image(rng, *SIZES[(shard * per_shard + index) % len(SIZES)])
            members.append((f"{key}.jpg", encode(image)))
            members.append((f"{key}.json", json.dumps({"key": key, "caption": f"image {index}", "source": f"site{index % 2}"}).encode()))
            members.append((f"{key}.txt", f"image {index}".encode()))
        paths.append(write_tar(folder / f"{shard:05d}.tar", members))
    return paths


def extract_images(shard: Path, folder: Path) -> list[Path]:
    """The shard's image members as files (what ``creward score`` can read), in archive order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with tarfile.open(shard) as archive:
        for info in archive:
            if info.name.endswith(".jpg"):
                target = folder / info.name
                target.write_bytes(archive.extractfile(info).read())
                paths.append(target)
    return paths


def path_list(target: Path, paths: list[Path], relative_to: Path | None = None, extra: dict[str, list] | None = None) -> Path:
    """A Parquet or CSV (by ``target``'s suffix) list with a ``path`` column (+ ``extra`` columns)."""
    values = [str(path.relative_to(relative_to)) if relative_to else str(path) for path in paths]
    columns = {"path": values, **(extra or {})}
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".csv":
        with open(target, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), target)
    return target


def weights(folder: Path) -> dict:
    """Tiny random CLIP weights (Hub layout) + the official head converted by ``creward convert``."""
    from builders import clip as clip_builder
    from creward.cli.main import main
    from official_reference import official_head, save_official_checkpoint

    backbone = clip_builder.build(folder / "clip-hub", "hub")
    head = official_head(clip_builder.FEATURE_DIM)
    checkpoint = save_official_checkpoint(head, folder / "reward_head_best.ckpt")
    converted = folder / "creward_clip.safetensors"
    assert main(["convert", str(checkpoint), "--backbone", "clip", "-o", str(converted)]) == 0
    return {"backbone": backbone, "head": converted, "module": head}
