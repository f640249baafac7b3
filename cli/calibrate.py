"""creward calibrate PATHS... -o REF.json: build a reference set to turn scores into percentiles.

PATHS are image files or folders (scored here with the head and backbone given, as `creward score`
does), or score files already written: `creward score --json` / `--csv` output, Parquet files or
folders from the dataset job, or the manifest.json of `creward train acquire`. The reference keeps,
per axis (and per group with --group-by), every score or, above --max-points images, 1001
quantiles (exact to 0.1 percentile), with the head's content hash and the backbone name, so it is
only ever used with the head that made it.

Then `creward score --reference REF.json` adds each image's percentile (0-100: the share of the
reference it beats, ties counted half) and win probability (0-1: the chance the judge prefers it to
a random reference image), and `creward select --min-percentile 90 --reference REF.json` keeps the
top 10 %.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .arguments import UsageError, check_device, positive_int
from .common import add_image_arguments, add_model_arguments, collect_images, load_model_from_args, progress_bar

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files/folders, or score files (.json, .csv, .parquet, a folder of .parquet parts)")
    parser.add_argument("-o", "--output", required=True, metavar="REF", help="reference file to write (.json)")
    parser.add_argument("--name", help="the reference's name, shown beside percentiles (default: the output file's name without .json)")
    parser.add_argument(
        "--group-by", metavar="folder|column:NAME",
        help="one distribution per subject: 'folder' (each image's folder name) or 'column:NAME' (a column of the score files, e.g. column:prompt)",
    )
    parser.add_argument("--max-points", type=positive_int, default=None, help="keep every score up to this many images per group, quantiles above (default: 10000)")
    add_model_arguments(parser)
    add_image_arguments(parser)
    parser.set_defaults(func=run)


def _head_for_files(args, recorded, head_files):
    """``(scorer, head path or None)`` for score files: --head ($CREWARD_HEAD), else the identity the files record, else the usual lookup."""
    import os

    from ..models.errors import CREwardError, WeightsError
    from ..models.locate import HEAD_ENV, find_head
    from ..models.scorer_identity import ScorerIdentity

    if recorded and not head_files and not (args.head or os.environ.get(HEAD_ENV)):
        return recorded[0][1], None
    try:
        head = find_head(args.head, args.backbone)
    except WeightsError as error:
        named = f" ({head_files[0][1]['name']})" if head_files else ""
        raise CREwardError(f"the score files do not say which head made them in a form a reference can use: pass --head FILE "
                           f"(the head that scored them{named}). {error}") from None
    return ScorerIdentity.of_head_file(head, args.backbone), head


def _check_recorded(scorer, head, recorded, head_files) -> None:
    """Refuse score files whose recorded head is not ``scorer`` (the head file at ``head``), naming both."""
    import hashlib

    from ..models.errors import CREwardError

    for source, identity in recorded:
        if not identity.matches(scorer):
            raise CREwardError(f"{source} was scored with {identity.describe()}, but the head given is {scorer.describe()}")
    if not head_files:
        return
    digest = "sha256:" + hashlib.sha256(Path(head).read_bytes()).hexdigest() if head else None
    for source, recorded_file in head_files:
        if recorded_file["sha256"] != digest or (recorded_file["backbone"] and recorded_file["backbone"] != scorer.backbone):
            raise CREwardError(
                f"{source} was scored with head {recorded_file['name']} (file {recorded_file['sha256'][:19]}, backbone "
                f"{recorded_file['backbone']}), but the head given is {scorer.head} (file {(digest or '?')[:19]}, backbone {scorer.backbone})"
            )


def run(args) -> int:
    import numpy as np

    from ..models.calibration import EXACT_LIMIT
    from ..models.errors import CREwardError
    from ..models.reference_set import FOLDER, ReferenceSet, folder_group, parse_group_by
    from ..models.score_records import is_score_file, read_score_file
    from ..models.scorer_identity import ScorerIdentity

    try:
        group_by = parse_group_by(args.group_by)
    except CREwardError as error:
        raise UsageError(f"--group-by: {error}") from None
    max_points = EXACT_LIMIT if args.max_points is None else args.max_points
    if max_points < 2:
        raise UsageError(f"--max-points should be at least 2, got {max_points}")
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"-o/--output {output} is a folder; give a file name")
    name = args.name or output.name.removesuffix(".json") or "reference"
    score_files = [path for path in args.paths if is_score_file(path)]
    image_paths = [path for path in args.paths if path not in score_files]
    if image_paths and group_by not in (None, FOLDER):
        raise UsageError(f"--group-by {group_by}: images have no columns; group them with --group-by folder (or score them to a file first)")

    rows, groups, where, scorers, head_files = [], [], [], [], []  # where: each row's file (and row), for messages
    for path in score_files:
        records = read_score_file(path)
        scored = records.scored
        if not scored.all():
            logger.warning("%s: skipping %d row(s) with an error (unscored)", path, int((~scored).sum()))
        if group_by == FOLDER:
            names = [None if location is None else folder_group(location) for location in records.locations()]
        elif group_by:
            names = [None if value is None else str(value) for value in records.column(group_by.split(":", 1)[1])]
        else:
            names = [None] * len(records)
        locations = records.locations() if any(name in records.columns for name in ("path", "key", "file")) else [None] * len(records)
        rows += [records.values[row] for row in range(len(records)) if scored[row]]
        groups += [names[row] for row in range(len(records)) if scored[row]]
        where += [f"{path} row {row}" + (f" ({locations[row]})" if locations[row] else "") for row in range(len(records)) if scored[row]]
        if records.scorer is not None:
            scorers.append((str(path), records.scorer))
        if records.head_file is not None:
            head_files.append((str(path), records.head_file))
        logger.info("%s: %d scored row(s)", path, int(scored.sum()))

    if image_paths:
        from ..models.file_scoring import score_files as score_image_files

        check_device(args.device)
        images = collect_images(image_paths)
        model = load_model_from_args(args)
        scorer = ScorerIdentity.of_model(model)
        _check_recorded(scorer, model.head_info.path, scorers, head_files)
        with progress_bar(len(images), "scoring") as bar:
            results = score_image_files(
                model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update, max_pixels=args.max_pixels or None,
            )
        for result in results:
            if result.scores is not None:
                rows.append([result.scores[axis] for axis in model.axes])
                groups.append(folder_group(result.path) if group_by == FOLDER else None)
                where.append(result.path)
    else:
        scorer, head = _head_for_files(args, scorers, head_files)
        _check_recorded(scorer, head, scorers, head_files)

    if not rows:
        raise CREwardError(f"no scores to build a reference from in {', '.join(args.paths)} (every row was unreadable or an error)")
    values = np.asarray(rows, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise CREwardError(
            f"{bad.size} of {len(values)} images have NaN or infinite scores (first: {where[bad[0]]}): the model gave no usable "
            f"score for them; remove them (or rescore them, e.g. with --dtype fp32) and build the reference again"
        )
    reference = ReferenceSet.build(values, scorer, name, groups if group_by else None, group_by, max_points)
    reference.save(output)
    summary = ", ".join(f"{group} {data.count}" for group, data in reference.groups.items())
    print(
        f"wrote {output}: {reference.count} image(s)" + (f" in {len(reference.groups)} group(s) ({summary})" if reference.groups else "")
        + f", {scorer.describe()}"
    )
    return 0
