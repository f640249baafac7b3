"""Score how creative images are: geometry, material, texture and overall, one row per image.

Folders are searched recursively for image files (other files in them are left out, with a
warning); files named explicitly are always scored, whatever their extension. Scores are
relative: compare images of the same subject (higher = more creative on that axis).

Output: a table on stdout, or --json (one list in input order), or --csv FILE. Every row has
path, geometry, material, texture, overall and error; a file that could not be read keeps its
row, with empty (null) scores and the reason in error.

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
    add_image_arguments, add_model_arguments, check_output_file, collect_images, load_model_from_args, progress_bar,
    write_text_output,
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
    parser.set_defaults(func=run)


def format_table(results, axes) -> str:
    width = max([len("path")] + [len(result.path) for result in results])
    lines = ["  ".join(["path".ljust(width)] + [axis.rjust(9) for axis in axes])]
    for result in results:
        if result.scores is None:
            lines.append(f"{result.path.ljust(width)}  unreadable: {result.error}")
        else:
            lines.append("  ".join([result.path.ljust(width)] + [f"{result.scores[axis]:9.4f}" for axis in axes]))
    return "\n".join(lines)


def to_csv(results, axes) -> str:
    """The rows of ``--json`` as CSV: null is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", *axes, "error"])
    for result in results:
        row = result.as_dict(axes)
        writer.writerow([row["path"], *("" if row[axis] is None else f"{row[axis]:.6f}" for axis in axes), row["error"] or ""])
    return buffer.getvalue()


def run(args) -> int:
    from ..models.file_scoring import score_files

    check_output_file(args.csv, "--csv")
    check_device(args.device)
    images = collect_images(args.paths)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(
            model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update, max_pixels=args.max_pixels or None,
        )
    failed = sum(result.scores is None for result in results)
    if args.json:
        json.dump([result.as_dict(model.axes) for result in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.csv:
        write_text_output(args.csv, to_csv(results, model.axes))
        logger.info("wrote %s", args.csv)
    else:
        print(format_table(results, model.axes))
    if failed == len(results):
        logger.error("none of the %d file(s) could be read as an image", len(results))
        return 1
    logger.info("scored %d image(s)%s", len(results) - failed, f"; {failed} could not be read" if failed else "")
    return 0
