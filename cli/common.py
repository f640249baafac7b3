"""Arguments and helpers shared by the commands that load a CREward model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from ..models.backbones.registry import available_backbones

logger = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (looked up in $CREWARD_MODELS_DIR, $COMFYUI_PATH/models/creward, ~/.cache/creward when not given)")
    group.add_argument("--head", help="head file (.safetensors, or the official .ckpt together with --backbone); env CREWARD_HEAD")
    group.add_argument("--backbone", choices=available_backbones(), help="backbone name (default: from the head file's metadata)")
    group.add_argument("--backbone-weights", help="backbone weights: Hugging Face folder or file; env CREWARD_BACKBONE_WEIGHTS")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N, mps (default: auto)")
    group.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="backbone precision (auto: fp32 on CPU, bf16/fp16 on GPU)")
    group.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")


def load_model_from_args(args: argparse.Namespace):
    from ..models.loader import load

    if args.batch_size <= 0:
        raise SystemExit(f"--batch-size should be positive, got {args.batch_size}")
    model = load(head=args.head, backbone=args.backbone, backbone_weights=args.backbone_weights, device=args.device, dtype=args.dtype)
    logger.info("%s", model.describe())
    return model


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration against a reference set (built with `creward calibrate`)")
    group.add_argument("--reference", metavar="REF", help="reference file: adds each image's percentile (0-100) and win probability (0-1) against it")
    group.add_argument("--group", metavar="NAME", help="compare with this group of the reference (default: a folder-grouped reference uses each image's folder name, otherwise the whole set)")


def load_reference_from_args(args: argparse.Namespace):
    """The ``--reference`` file, checked against the head that will score (before the backbone loads); None without one."""
    if not getattr(args, "reference", None):
        return None
    from ..models.locate import find_head
    from ..models.reference_set import ReferenceSet
    from ..models.scorer_identity import ScorerIdentity

    reference = ReferenceSet.load(args.reference)
    reference.check_scorer(ScorerIdentity.of_head_file(find_head(args.head, args.backbone), args.backbone))
    return reference


def progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` via a temporary file in the same folder, so no half-written file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            stream.write(text)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates 0600; match a normal file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def collect_or_exit(paths: list[str]):
    """Image files under ``paths``; exits with code 2 and a message when there are none."""
    from ..models.file_scoring import collect_image_paths

    images, skipped = collect_image_paths(paths)
    for path in skipped:
        logger.warning("skipping %s: not an image file", path)
    if not images:
        logger.error("no images found in %s", ", ".join(paths))
        raise SystemExit(2)
    return images
