"""``creward score PATHS...``: score image files and folders."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys

from .common import add_model_arguments, collect_or_exit, load_model_from_args, progress_bar, write_atomically

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("score", help="score images (files or folders, recursive)", description=__doc__)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    add_model_arguments(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON list in input order on stdout")
    output.add_argument("--csv", metavar="FILE", help="write the scores to a CSV file")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
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
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", *axes, "error"])
    for result in results:
        if result.scores is None:
            writer.writerow([result.path, *[""] * len(axes), result.error])
        else:
            writer.writerow([result.path, *[f"{result.scores[axis]:.6f}" for axis in axes], ""])
    return buffer.getvalue()


def run(args) -> int:
    from ..models.file_scoring import score_files

    images = collect_or_exit(args.paths)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update)
    failed = sum(result.scores is None for result in results)
    if args.json:
        json.dump([result.as_dict() for result in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.csv:
        write_atomically(args.csv, to_csv(results, model.axes))
        logger.info("wrote %s", args.csv)
    else:
        print(format_table(results, model.axes))
    logger.info("scored %d image(s)%s", len(results) - failed, f", {failed} unreadable" if failed else "")
    return 0 if failed < len(results) else 1
