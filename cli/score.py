"""``creward score PATHS...``: score image files and folders."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys

from .common import (
    add_model_arguments,
    add_reference_arguments,
    collect_or_exit,
    load_model_from_args,
    load_reference_from_args,
    progress_bar,
    write_atomically,
)

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("score", help="score images (files or folders, recursive)", description=__doc__)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    add_model_arguments(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON list in input order on stdout")
    output.add_argument("--csv", metavar="FILE", help="write the scores to a CSV file")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
    add_reference_arguments(parser)
    parser.set_defaults(func=run)


def calibrated_columns(axes) -> list[str]:
    """The columns ``--reference`` adds: ``<axis>_percentile`` for every axis, then ``<axis>_win``."""
    return [f"{axis}_percentile" for axis in axes] + [f"{axis}_win" for axis in axes]


def calibrate_results(reference, results, axes, group=None) -> tuple[list[dict | None], str]:
    """Per result, ``{"<axis>_percentile": ..., "<axis>_win": ...}`` against ``reference`` (None where unscored), and the label."""
    import math

    import torch

    scored = [index for index, result in enumerate(results) if result.scores is not None]
    extra: list[dict | None] = [None] * len(results)
    if not scored:
        return extra, reference.describe()
    values = torch.tensor([[results[index].scores[axis] for axis in axes] for index in scored], dtype=torch.float32)
    groups = reference.groups_for([results[index].path for index in scored], group)
    calibration = reference.calibrate(values, axes, groups)
    for position, index in enumerate(scored):
        row = {}
        for a, axis in enumerate(axes):
            value = calibration.percentiles[position, a].item()
            row[f"{axis}_percentile"] = None if math.isnan(value) else round(value, 3)
        for a, axis in enumerate(axes):
            value = calibration.win[position, a].item()
            row[f"{axis}_win"] = None if math.isnan(value) else round(value, 5)
        if reference.groups:
            row["reference_group"] = calibration.groups[position]
        extra[index] = row
    return extra, calibration.label


def format_table(results, axes, calibrated=None, label: str = "") -> str:
    width = max([len("path")] + [len(result.path) for result in results])
    header = ["path".ljust(width)] + [axis.rjust(9) for axis in axes]
    if calibrated is not None:
        header += ["|"] + [f"pct.{axis[:3]}" for axis in axes] + ["|"] + [f"win.{axis[:3]}" for axis in axes]
    lines = ["  ".join(header)]
    for result, extra in zip(results, calibrated or [None] * len(results)):
        if result.scores is None:
            lines.append(f"{result.path.ljust(width)}  unreadable: {result.error}")
            continue
        cells = [result.path.ljust(width)] + [f"{result.scores[axis]:9.4f}" for axis in axes]
        if extra is not None:
            cells += ["|"] + [_cell(extra[f"{axis}_percentile"], 7, 1) for axis in axes]
            cells += ["|"] + [_cell(extra[f"{axis}_win"], 7, 3) for axis in axes]
        lines.append("  ".join(cells))
    if calibrated is not None:
        lines.append(f"pct = percentile (0-100), win = win probability (0-1), {label}")
    return "\n".join(lines)


def _cell(value, width: int, digits: int) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.{digits}f}"


def to_csv(results, axes, calibrated=None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    extra_columns = calibrated_columns(axes) if calibrated is not None else []
    grouped = calibrated is not None and any(extra and "reference_group" in extra for extra in calibrated)
    writer.writerow(["path", *axes, *extra_columns, *(["reference_group"] if grouped else []), "error"])
    for result, extra in zip(results, calibrated or [None] * len(results)):
        if result.scores is None:
            writer.writerow([result.path, *[""] * (len(axes) + len(extra_columns) + grouped), result.error])
        else:
            cells = [f"{result.scores[axis]:.6f}" for axis in axes]
            cells += ["" if extra[column] is None else f"{extra[column]:g}" for column in extra_columns]
            cells += [extra.get("reference_group") or ""] if grouped else []
            writer.writerow([result.path, *cells, ""])
    return buffer.getvalue()


def json_items(results, axes, calibrated=None) -> list[dict]:
    """``creward score --json`` items; with a reference every item has the calibrated keys (null when unscored)."""
    items = [result.as_dict() for result in results]
    if calibrated is not None:
        grouped = any(extra and "reference_group" in extra for extra in calibrated)
        for item, extra in zip(items, calibrated):
            empty = dict.fromkeys(calibrated_columns(axes) + (["reference_group"] if grouped else []))
            item.update(extra if extra is not None else empty)
    return items


def run(args) -> int:
    from ..models.file_scoring import score_files

    images = collect_or_exit(args.paths)
    reference = load_reference_from_args(args)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update)
    failed = sum(result.scores is None for result in results)
    calibrated, label = calibrate_results(reference, results, model.axes, args.group) if reference is not None else (None, "")
    if args.json:
        json.dump(json_items(results, model.axes, calibrated), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.csv:
        write_atomically(args.csv, to_csv(results, model.axes, calibrated))
        logger.info("wrote %s", args.csv)
    else:
        print(format_table(results, model.axes, calibrated, label))
    logger.info("scored %d image(s)%s", len(results) - failed, f", {failed} unreadable" if failed else "")
    return 0 if failed < len(results) else 1
