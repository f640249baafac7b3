"""``creward score-dataset INPUT... -o OUT``: score (and filter) a whole image dataset.

INPUT: folders, globs (quoted), image files, WebDataset shards (.tar, as img2dataset writes),
Parquet/CSV lists of image paths (--path-column). OUT: a Parquet dataset, one row per image
(key, path, shard, member, folder, part, the four axis scores, error), one file per input part
(a shard, or --part-size files), each written atomically; rerunning with the same OUT skips the
finished parts (--overwrite starts over).

Engines: --engine local (default: this process, the batched scoring of `creward score`) or
--engine ray (Ray Data: decoding in CPU tasks, CREward loaded once per actor; install with
pip install 'comfyui-creward[ray]').

Calibration: --reference REF (built with `creward calibrate`) adds each image's percentile
(0-100) and win probability (0-1) per axis, and the reference group used, as `creward score
--reference` does (a folder-grouped reference: each image's folder; a tar member counts as
<shard name>/<member>; a column-grouped one: that --columns column; or --group NAME for all).
A rerun with another reference recalibrates the finished parts from their scores (no rescoring).

Filtering: --keep-top-percent P and/or --min-score S on one axis (--axis) or a weighted sum
(--weights), and/or --min-percentile P / --min-win W against --reference (with --weights: the
weighted mean of the axes' percentiles or win probabilities), over the whole dataset or
--per-group folder|shard|COLUMN, writing the kept rows to --keep-to DIR (kept.parquet,
keys.txt; --copy-images, --write-shards).
"""

from __future__ import annotations

import argparse
import logging

from .arguments import percentile_value, unit_interval
from .common import add_model_arguments, add_reference_arguments

logger = logging.getLogger(__name__)

AXIS_CHOICES = ("geometry", "material", "texture", "overall")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"should be positive, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"should be >= 0, got {text}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"should be in (0, 100], got {text}")
    return value


def _column_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score-dataset",
        help="score a dataset (folders, Parquet/CSV lists, WebDataset shards) into Parquet; resume, filter, Ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, image files, globs, .tar shards, .parquet/.csv lists")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (a Parquet dataset)")
    parser.add_argument("--path-column", default="path", help="column of a Parquet/CSV list holding image paths (default: path)")
    parser.add_argument("--columns", type=_column_list, default=(), metavar="A,B",
                        help="columns to carry into the output, from the lists or the shards' .json members (as text)")
    parser.add_argument("--part-size", type=_positive_int, default=1000, help="image files per output part (default: 1000; a shard is one part)")
    parser.add_argument("--overwrite", action="store_true", help="delete earlier parts in OUT and score everything again")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray")
    parser.add_argument("--workers", type=int, default=2, help="local engine: image decoding threads (default: 2)")
    add_model_arguments(parser)
    add_reference_arguments(parser)

    ray = parser.add_argument_group("Ray (--engine ray)")
    ray.add_argument("--address", help="cluster to join: auto, ray://HOST:10001 (default: $RAY_ADDRESS, or start one here)")
    ray.add_argument("--actors", type=_positive_int, default=1, help="scoring actors, each holding one CREward (default: 1)")
    ray.add_argument("--gpus-per-actor", type=_non_negative_float, default=0.0, help="GPUs per actor, e.g. 1 or 0.5 (default: 0)")
    ray.add_argument("--cpus-per-actor", type=_non_negative_float, default=1.0, help="CPUs reserved per actor (default: 1)")
    ray.add_argument("--decode-cpus", type=_non_negative_float, default=1.0, help="CPUs reserved per decoding task (default: 1)")

    keep = parser.add_argument_group("filtering (needs --keep-to)")
    keep.add_argument("--keep-top-percent", type=_percent, metavar="P", help="keep the best P%% of the scored images (of each group)")
    keep.add_argument("--min-score", type=float, metavar="S", help="keep only images whose ranking value is at least S")
    keep.add_argument("--min-percentile", type=percentile_value, metavar="P",
                      help="keep only images at or above percentile P (0-100) of --reference on --axis (or the --weights' weighted mean)")
    keep.add_argument("--min-win", type=unit_interval, metavar="W",
                      help="keep only images whose win probability (0-1) against --reference on --axis (or the weighted mean) is at least W")
    rank = keep.add_mutually_exclusive_group()
    rank.add_argument("--axis", choices=AXIS_CHOICES, help="rank by one axis (default: overall)")
    rank.add_argument("--weights", help="rank by a weighted sum: four numbers g,m,t,o, e.g. 1,0,0.5,1")
    keep.add_argument("--per-group", metavar="COLUMN", help="apply the rule within each group: folder, shard, or a carried column")
    keep.add_argument("--keep-to", metavar="DIR", help="write kept.parquet, keys.txt and summary.json here (replaced atomically)")
    keep.add_argument("--copy-images", action="store_true", help="also copy the kept images into DIR/images")
    keep.add_argument("--write-shards", action="store_true", help="also write WebDataset shards of the kept samples into DIR/shards")
    parser.set_defaults(func=run, parser=parser)


def keep_rule_factory(args):
    """The keep rule asked for on the command line, as a function of the head's axes (or None).

    Each minimum is a ``Threshold`` over a ``RowValue``: the score itself (``--min-score``), or
    its calibrated percentile / win probability (``--min-percentile`` / ``--min-win``).
    """
    if args.keep_top_percent is None and args.min_score is None and args.min_percentile is None and args.min_win is None:
        return None

    def build(axes):
        from ..dataset.filtering import CalibratedValue, KeepRule, Threshold, WeightedScore

        by = args.weights or args.axis or "overall"
        ranking = WeightedScore.of(by, axes)
        thresholds = []
        if args.min_score is not None:
            thresholds.append(Threshold(ranking, args.min_score, "--min-score"))
        if args.min_percentile is not None:
            thresholds.append(Threshold(CalibratedValue.of("percentile", by, axes), args.min_percentile, "--min-percentile"))
        if args.min_win is not None:
            thresholds.append(Threshold(CalibratedValue.of("win", by, axes), args.min_win, "--min-win"))
        return KeepRule(ranking, args.keep_top_percent, tuple(thresholds), args.per_group)

    return build


def run(args) -> int:
    parser = args.parser
    rule = keep_rule_factory(args)
    calibrated = [flag for flag, value in (("--min-percentile", args.min_percentile), ("--min-win", args.min_win)) if value is not None]
    if calibrated and not args.reference:
        parser.error(f"{' / '.join(calibrated)} compare with a reference set: give --reference REF (built with `creward calibrate`)")
    if args.group and not args.reference:
        parser.error("--group names a group of the reference set: give --reference REF")
    if calibrated and args.weights:
        from ..models.axes import parse_weight_list

        try:
            weights = parse_weight_list(args.weights)
        except ValueError as error:
            parser.error(f"--weights: {error}")
        if any(weight < 0 for weight in weights) or not sum(weights) > 0:
            parser.error(f"{' / '.join(calibrated)} with --weights use the weighted mean of the axes' values: "
                         f"give weights >= 0, not all 0 (got {args.weights})")
    if rule is not None and not args.keep_to:
        parser.error("--keep-top-percent / --min-score / --min-percentile / --min-win need --keep-to DIR (where the kept rows go)")
    if args.keep_to and rule is None:
        parser.error("--keep-to needs a rule: --keep-top-percent P, --min-score S, --min-percentile P and/or --min-win W")
    if (args.copy_images or args.write_shards) and not args.keep_to:
        parser.error("--copy-images / --write-shards need a rule and --keep-to DIR")
    if args.engine == "local" and (args.address or args.actors != 1 or args.gpus_per_actor):
        parser.error("--address, --actors and --gpus-per-actor apply to --engine ray")

    from ..dataset.inputs import DatasetInputError
    from ..dataset.job import DatasetJob, run_job
    from ..dataset.output import DatasetOutputError
    from ..dataset.ray_engine import RayOptions

    job = DatasetJob(
        inputs=args.inputs, output=args.output, engine=args.engine, path_column=args.path_column, columns=args.columns,
        part_size=args.part_size, head=args.head, backbone=args.backbone, backbone_weights=args.backbone_weights,
        device=args.device, dtype=args.dtype, batch_size=args.batch_size, workers=args.workers,
        ray=RayOptions(args.address, args.actors, args.gpus_per_actor, args.cpus_per_actor, args.decode_cpus),
        overwrite=args.overwrite, rule=rule, keep_to=args.keep_to, copy_images=args.copy_images, write_shards=args.write_shards,
        reference=args.reference, group=args.group,
    )
    try:
        summary = run_job(job)
    except (DatasetInputError, DatasetOutputError) as error:
        logger.error("%s", error)
        return 2
    return 0 if summary.images == 0 or summary.errors < summary.images else 1
