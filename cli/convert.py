"""Convert an official head checkpoint (reward_head_best.ckpt) into a CREward head file."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ..models.backbones.registry import available_backbones
from .common import check_output_file

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        description="Convert an official CREward head checkpoint (reward_head_best.ckpt from the jhan/CREward release) "
        "into a safetensors head file that records its backbone. Only tensors are read from the checkpoint: one "
        "carrying Python objects or code is refused.",
    )
    parser.add_argument("checkpoint", help="official head checkpoint, e.g. reward_head_best.ckpt")
    parser.add_argument("--backbone", required=True, choices=available_backbones(), help="backbone the head was trained on")
    parser.add_argument("-o", "--output", help="output file (default: creward_<backbone>.safetensors beside the checkpoint)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..models.head import load_head, save_head

    source = Path(args.checkpoint)
    if args.output is not None:
        check_output_file(args.output, "-o/--output")
    head, info = load_head(source, args.backbone)
    output = Path(args.output) if args.output else source.with_name(f"creward_{args.backbone}.safetensors")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    save_head(head, output, args.backbone, info.axes, {"creward.source": source.name, "creward.source_sha256": digest})
    print(f"wrote {output} (backbone {args.backbone}, {info.feature_dim}-wide features, axes {', '.join(info.axes)})")
    return 0
