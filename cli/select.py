"""``creward select PATHS... --top-k K --out DIR``: keep the most creative images.

Reward-based filtering and creative sample acquisition: scores every image, ranks by one axis or
a weighted sum (``models.selection``), copies the chosen files into DIR as
``<rank>_<name>`` and writes ``DIR/manifest.json`` (source path, scores, ranking value, rank).
Each copy and the manifest are written via a temporary file, so an interrupted run leaves no
half-written file; the manifest is written last.

``--min-percentile P`` / ``--min-win W`` keep images whose percentile (win probability) on the
ranking axis is at least P (W) against ``--reference REF`` (built with ``creward calibrate``), or,
without a reference, within the scored images themselves (``--min-percentile 90``: the top 10 %).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..models.axes import AXES
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
    parser = subparsers.add_parser("select", help="copy the top-k most creative images into a folder with a manifest", description=__doc__)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=int, required=True, help="how many images to keep (0 = every image reaching --min)")
    rank = parser.add_mutually_exclusive_group()
    rank.add_argument("--axis", choices=AXES, help="rank by one axis (default: overall)")
    rank.add_argument("--weights", help="rank by a weighted sum: four numbers g,m,t,o, e.g. 1,0,0.5,1")
    minimum = parser.add_mutually_exclusive_group()
    minimum.add_argument("--min", type=float, dest="minimum", help="keep only images whose ranking value is at least this")
    minimum.add_argument(
        "--min-percentile", type=float, metavar="P",
        help="keep only images at or above percentile P (0-100) on the ranking axis: against --reference, else within these images (90 = top 10 %%)",
    )
    minimum.add_argument(
        "--min-win", type=float, metavar="W",
        help="keep only images whose win probability (0-1) on the ranking axis is at least W: the chance of beating a random --reference image (else another of these images)",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
    add_model_arguments(parser)
    add_reference_arguments(parser)
    parser.set_defaults(func=lambda args: run(args, parser))


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    try:
        shutil.copy2(source, partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def minimum_of_args(args, parser) -> tuple[str, float | None]:
    """``("score" | "percentile" | "win probability", minimum)`` from --min/--min-percentile/--min-win, validated."""
    if args.min_percentile is not None:
        if not 0.0 <= args.min_percentile <= 100.0:
            parser.error(f"--min-percentile should be between 0 and 100, got {args.min_percentile:g}")
        kind, minimum = "percentile", args.min_percentile
    elif args.min_win is not None:
        if not 0.0 <= args.min_win <= 1.0:
            parser.error(f"--min-win should be a probability between 0 and 1, got {args.min_win:g}")
        kind, minimum = "win probability", args.min_win
    else:
        return "score", args.minimum
    if args.weights:
        parser.error("--min-percentile/--min-win compare one axis with its reference distribution: rank with --axis, not --weights")
    return kind, minimum


def run(args, parser) -> int:
    import torch

    from ..models.calibration import calibrate_within_batch
    from ..models.file_scoring import score_files
    from ..models.selection import select_indices

    if args.top_k < 0:
        raise SystemExit(f"--top-k should be >= 0, got {args.top_k}")
    kind, minimum = minimum_of_args(args, parser)
    if args.reference and kind == "score":
        logger.info("--reference given without --min-percentile/--min-win: the manifest records percentiles; the minimum (if any) is a score")
    images = collect_or_exit(args.paths)
    reference = load_reference_from_args(args)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update)
    scored = [result for result in results if result.scores is not None]
    if not scored:
        logger.error("none of the %d image(s) could be read", len(results))
        return 1
    scores = torch.tensor([[result.scores[axis] for axis in model.axes] for result in scored])
    calibration = None
    if reference is not None:
        calibration = reference.calibrate(scores, model.axes, reference.groups_for([result.path for result in scored], args.group))
    elif kind != "score":
        calibration = calibrate_within_batch(scores)
        logger.info("no --reference: %s are %s", kind, calibration.label.replace("this batch", "the scored images"))
    threshold, threshold_name = None, None
    if kind != "score":
        axis = args.axis or "overall"
        threshold = calibration.values(kind)[:, list(model.axes).index(axis)]
        threshold_name = f"{axis} {kind} {calibration.label}"
    selection = select_indices(
        scores, args.weights or args.axis or "overall", top_k=args.top_k, minimum=minimum, when_none_pass="empty", axes=model.axes,
        threshold=threshold, threshold_name=threshold_name,
    )
    if not selection.chosen:
        limit = selection.values if threshold is None else threshold
        best = int(torch.nan_to_num(limit, nan=-float("inf")).argmax())
        logger.error(
            "no image reached %s >= %g (best: %.4f, %s); nothing copied",
            threshold_name or selection.criterion, minimum, limit[best].item(), scored[best].path,
        )
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(selection.chosen))))
    manifest = {
        "criterion": selection.criterion, "minimum": minimum, "minimum_of": kind, "top_k": args.top_k, "scored": len(scored),
        "axes": list(model.axes), "calibration": calibration.label if calibration is not None else None,
        "reference": calibration.reference if calibration is not None else None, "images": [],
    }
    for rank, index in enumerate(selection.chosen, start=1):
        source = Path(scored[index].path)
        target = out / f"{rank:0{digits}d}_{source.name}"
        _copy_atomically(source, target)
        item = {"rank": rank, "file": target.name, "source": str(source.resolve()), "value": selection.values[index].item(), **scored[index].scores}
        if calibration is not None:
            item.update({f"{axis}_percentile": calibration.percentiles[index, a].item() for a, axis in enumerate(model.axes)})
            item.update({f"{axis}_win": calibration.win[index, a].item() for a, axis in enumerate(model.axes)})
        manifest["images"].append(item)
    write_atomically(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    print(f"kept {len(selection.chosen)} of {len(scored)} image(s) ranked by {selection.criterion}"
          + (f", {threshold_name} >= {minimum:g}" if threshold_name else "") + f" -> {out}")
    return 0
