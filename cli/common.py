"""Arguments and helpers shared by the commands that load a CREward model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..models.backbones.registry import available_backbones
from .arguments import UsageError, device_name, non_negative_int, positive_int

logger = logging.getLogger(__name__)

MAX_PIXELS_DEFAULT = 4096 * 4096  # creward.models.preprocess.MAX_DECODE_PIXELS (not imported: it needs torch)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model", "Not given: looked up in $CREWARD_MODELS_DIR, $COMFYUI_PATH/models/creward, then ~/.cache/creward."
    )
    group.add_argument("--head", metavar="FILE", help="head file (.safetensors, or the official .ckpt together with --backbone); default: $CREWARD_HEAD")
    group.add_argument("--backbone", choices=available_backbones(), help="backbone the head was trained on (default: read from the head file)")
    group.add_argument("--backbone-weights", metavar="PATH", help="the backbone's weights: a Hugging Face folder or a file; default: $CREWARD_BACKBONE_WEIGHTS")
    group.add_argument("--device", type=device_name, default="auto", help="auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps (default: auto)")
    group.add_argument(
        "--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
        help="backbone precision. fp32 gives the official numbers; auto (the default) is fp32 on the CPU, bf16 on "
        "CUDA GPUs that support it (else fp16) and fp16 on MPS: faster, with scores that differ slightly",
    )
    group.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward pass (default: 8)")


def add_image_arguments(parser: argparse.ArgumentParser, workers: bool = True) -> None:
    group = parser.add_argument_group("reading images")
    if workers:
        group.add_argument("--workers", type=non_negative_int, default=2, metavar="N", help="image decoding threads; 0 decodes in the main thread (default: 2)")
    group.add_argument(
        "--max-pixels", type=non_negative_int, default=MAX_PIXELS_DEFAULT, metavar="N",
        help=f"images with more pixels are shrunk by a whole factor before the resize, to bound memory; their scores "
        f"then differ slightly from the official code's (a warning names each). 0: never shrink (default: {MAX_PIXELS_DEFAULT} = 4096x4096)",
    )


def load_model_from_args(args: argparse.Namespace):
    """Load the model the arguments name, and say what was loaded, where, and in which precision."""
    from ..models.device import precision_note
    from ..models.loader import load

    model = load(head=args.head, backbone=args.backbone, backbone_weights=args.backbone_weights, device=args.device, dtype=args.dtype)
    logger.info("CREward %s on %s, %s", model.spec.name, model.device, precision_note(model.dtype, "--dtype fp32"))
    logger.debug("%s", model.describe())
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


def collect_images(paths: list[str]) -> list[Path]:
    """The files to score under ``paths`` (see ``models.file_scoring.collect_image_paths``).

    Raises ``UsageError`` (exit status 2) for a path that does not exist or when there is no
    image at all; folders' files that are not images are counted in one warning.
    """
    from ..models.errors import ImageError
    from ..models.file_scoring import collect_image_paths

    try:
        images, left_out = collect_image_paths(paths)
    except ImageError as error:
        raise UsageError(str(error)) from None
    if left_out:
        names = ", ".join(str(path) for path in left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        logger.warning("left out %d file(s) in the folders that are not images by their extension: %s", len(left_out), names)
    if not images:
        raise UsageError(f"no images found in {', '.join(paths)}")
    return images


def write_text_output(path: str | Path, text: str) -> Path:
    """Write an output file atomically (see ``models.output_files``)."""
    from ..models.output_files import write_text_atomically

    return write_text_atomically(path, text)


def check_output_file(path: str | None, option: str) -> None:
    """Refuse an output file path that cannot be written (a folder), before any work is done."""
    if path is not None and Path(path).is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
