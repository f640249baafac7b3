"""Show what a CREward head file holds: backbone, axes, feature width, parameters, metadata."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", description=__doc__)
    parser.add_argument("file", help="head file (.safetensors, or an official .ckpt)")
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
    rows = [
        ("file", record["file"]),
        ("backbone", record["backbone"] or "(not recorded: official .ckpt; pass --backbone when loading)"),
        ("axes", ", ".join(record["axes"])),
        ("feature width", str(record["feature_dim"])),
        ("parameters", f"{parameters:,} ({record['dtype']})"),
        ("format", record["format_version"] or "official checkpoint"),
    ]
    rows += [(key, value) for key, value in sorted(info.metadata.items()) if key not in ("creward.backbone", "creward.axes", "creward.version")]
    print(format_fields(rows))
    return 0


def format_fields(rows: list[tuple[str, str]], max_value: int = 400) -> str:
    """``name:  value`` lines with the values aligned; long values (training metadata) are cut."""
    width = max(len(name) for name, _ in rows) + 1
    lines = []
    for name, value in rows:
        value = str(value)
        if len(value) > max_value:
            value = value[:max_value] + f"... ({len(value)} characters; --json shows all)"
        lines.append(f"{(name + ':').ljust(width)}  {value}")
    return "\n".join(lines)
