"""``creward info FILE``: what a head file holds."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show what a CREward head file holds")
    parser.add_argument("file", help="head file (.safetensors or official .ckpt)")
    parser.add_argument("--json", action="store_true", help="print as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..models.head import read_head_file

    state, info = read_head_file(args.file)
    parameters = sum(tensor.numel() for tensor in state.values())
    record = {
        "file": info.path,
        "backbone": info.backbone,
        "axes": list(info.axes),
        "feature_dim": info.feature_dim,
        "format_version": info.version,
        "parameters": parameters,
        "dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
        "metadata": info.metadata,
    }
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    print(f"file:         {record['file']}")
    print(f"backbone:     {record['backbone'] or '(not recorded: official .ckpt; pass --backbone when loading)'}")
    print(f"axes:         {', '.join(record['axes'])}")
    print(f"feature width:{record['feature_dim']:>6}")
    print(f"parameters:   {parameters:,} ({record['dtype']})")
    print(f"format:       {record['format_version'] or 'official checkpoint'}")
    for key, value in sorted(info.metadata.items()):
        if key not in ("creward.backbone", "creward.axes", "creward.version"):
            print(f"{key}: {value}")
    return 0
