"""Score how creative images are: geometry, material, texture and overall, one row per image.

Folders are searched recursively for image files (other files in them are left out, with a
warning); files named explicitly are always scored, whatever their extension. Scores are
relative: compare images of the same subject (higher = more creative on that axis).

Output: a table on stdout, or --json (one list in input order), or --csv FILE. Every row has
path, geometry, material, texture, overall and error (with --reference, each axis's percentile
and win probability before error); a file that could not be read keeps its row, with empty
(null) values and the reason in error.

Exit status: 0 when at least one image was scored (unreadable ones are marked in the output),
1 when none could be, 2 for a usage error or when no image was found.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys

from .arguments import check_device
from .common import (
    add_image_arguments, add_model_arguments, add_reference_arguments, check_output_file, collect_images,
    load_model_from_args, load_reference_from_args, progress_bar, write_text_output,
)

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the scores as one JSON list, in input order")
    output.add_argument("--csv", metavar="FILE", help="write the scores to a CSV file")
    add_model_arguments(parser)
    add_image_arguments(parser)
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
    """The rows of ``--json`` as CSV, same columns in the same order: null is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    items = json_items(results, axes, calibrated)
    writer.writerow(list(items[0]) if items else ["path", *axes, "error"])
    for item in items:
        writer.writerow(["" if value is None else value if isinstance(value, str) else f"{value:.6f}" if key in axes else f"{value:g}"
                         for key, value in item.items()])
    return buffer.getvalue()


def json_items(results, axes, calibrated=None) -> list[dict]:
    """``creward score --json`` items: path, the axes, (with a reference) the calibrated keys, error;
    every key in every item, null where a file could not be read."""
    items = [result.as_dict(axes) for result in results]
    if calibrated is not None:
        grouped = any(extra and "reference_group" in extra for extra in calibrated)
        for item, extra in zip(items, calibrated):
            error = item.pop("error")
            empty = dict.fromkeys(calibrated_columns(axes) + (["reference_group"] if grouped else []))
            item.update(extra if extra is not None else empty)
            item["error"] = error
    return items


def run(args) -> int:
    from ..models.file_scoring import score_files

    check_output_file(args.csv, "--csv")
    check_device(args.device)
    images = collect_images(args.paths)
    reference = load_reference_from_args(args)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(
            model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update, max_pixels=args.max_pixels or None,
        )
    failed = sum(result.scores is None for result in results)
    calibrated, label = calibrate_results(reference, results, model.axes, args.group) if reference is not None else (None, "")
    if args.json:
        json.dump(json_items(results, model.axes, calibrated), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.csv:
        write_text_output(args.csv, to_csv(results, model.axes, calibrated))
        logger.info("wrote %s", args.csv)
    else:
        print(format_table(results, model.axes, calibrated, label))
    if failed == len(results):
        logger.error("none of the %d file(s) could be read as an image", len(results))
        return 1
    logger.info("scored %d image(s)%s", len(results) - failed, f"; {failed} could not be read" if failed else "")
    return 0
