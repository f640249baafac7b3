"""Identities of model files: which head and which backbone weights produced a result.

Written into the outputs that depend on them (feature caches, scored datasets), so results
from other weights are never mixed in silently.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
SAMPLE_BYTES = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes (for head files: small); ``WeightsError`` naming it when unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise WeightsError(f"cannot read {path}: {error.strerror or error}") from None
    return "sha256:" + digest.hexdigest()


def weights_identity(path: str | os.PathLike) -> str:
    """A fingerprint of backbone weights (file or folder) that survives copying and moving.

    sha256 over, per weight file (``*.safetensors``, ``*.bin``, ``*.pth``, ``*.pt``, ``*.ckpt``
    and ``config.json``; relative names inside a folder), its size and 1 MiB samples at its
    start, middle and end.
    """
    path = Path(path)
    if path.is_file():
        files = [(path, "")]
    elif path.is_dir():
        files = [
            (child, child.relative_to(path).as_posix())
            for child in sorted(path.rglob("*"))
            if child.is_file()
            and not any(part.startswith(".") for part in child.relative_to(path).parts)
            and (child.suffix in WEIGHT_SUFFIXES or child.name == "config.json")
        ]
    else:
        raise WeightsError(f"backbone weights not found: {path}")
    if not files:
        raise WeightsError(f"no weight files (*.safetensors, *.bin, *.pth, *.pt, *.ckpt) in {path}")
    digest = hashlib.sha256()
    for file, name in files:
        size = file.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
                handle.seek(offset)
                digest.update(handle.read(SAMPLE_BYTES))
    return "sampled-sha256:" + digest.hexdigest()[:32]
