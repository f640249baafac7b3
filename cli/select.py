"""Keep the most creative images: score every image, rank them, copy the best into a folder.

Ranks by one axis (--axis, default overall) or by a weighted sum of the four (--weights), keeps
the --top-k best (0: all), optionally only those reaching --min, and copies them into --out as
<rank>_<name> with a manifest.json (source path, scores, ranking value and rank of each).

--min-percentile P / --min-win W keep images whose percentile (win probability) on the ranking
axis is at least P (W) against --reference REF (built with creward calibrate), or, without a
reference, within the scored images themselves (--min-percentile 90: the top 10 %).

The folder always matches its manifest: the new selection is assembled beside --out and then
put in its place, so an interrupted run changes nothing. --out must be new or empty; --overwrite
replaces a folder written by an earlier creward select (one holding a manifest.json).

Exit status: 0 images were kept; 1 none could be read, or none reached the minimum (nothing is
written); 2 a usage error or no image found.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..models.axes import AXES
from .arguments import UsageError, axis_weights_text, check_device, non_negative_int, percentile_value, unit_interval
from .common import (
    add_image_arguments, add_model_arguments, add_reference_arguments, collect_images, load_model_from_args,
    load_reference_from_args, progress_bar,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def register(subparsers) -> None:
    parser = subparsers.add_parser("select", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--top-k", type=non_negative_int, required=True, metavar="K", help="how many images to keep (0: every image reaching --min)")
    rank = parser.add_mutually_exclusive_group()
    rank.add_argument("--axis", choices=AXES, help="rank by one axis (default: overall)")
    rank.add_argument("--weights", type=axis_weights_text, metavar="G,M,T,O", help="rank by a weighted sum of geometry, material, texture, overall, e.g. 1,0,0.5,1")
    minimum = parser.add_mutually_exclusive_group()
    minimum.add_argument("--min", type=float, dest="minimum", metavar="VALUE", help="keep only images whose ranking value is at least this")
    minimum.add_argument(
        "--min-percentile", type=percentile_value, metavar="P",
        help="keep only images at or above percentile P (0-100) on the ranking axis: against --reference, else within these images (90 = top 10 %%)",
    )
    minimum.add_argument(
        "--min-win", type=unit_interval, metavar="W",
        help="keep only images whose win probability (0-1) on the ranking axis is at least W: the chance of beating a random --reference image (else another of these images)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: new or empty (created if needed)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier selection")
    add_model_arguments(parser)
    add_image_arguments(parser)
    add_reference_arguments(parser)
    parser.set_defaults(func=run)


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, holds other files, or holds a selection without --overwrite."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise UsageError(f"--out {out} already holds files that are not a creward select output (no {MANIFEST}); choose a new or empty folder")
    if not overwrite:
        raise UsageError(f"--out {out} holds an earlier selection; pass --overwrite to replace it, or choose a new folder")


def _replace_folder(staging: Path, out: Path) -> None:
    """Put the finished ``staging`` folder at ``out``, moving an earlier ``out`` away first."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_selection(out: Path, chosen: list[tuple[Path, dict]], manifest: dict) -> None:
    """Copy ``chosen`` (source, manifest entry) into a new folder beside ``out``, write the manifest
    last, then put the folder in place of ``out``."""
    from ..models.output_files import default_file_mode

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        os.chmod(staging, default_file_mode(folder=True))  # mkdtemp makes it private
        for source, entry in chosen:
            shutil.copy2(source, staging / entry["file"])
            manifest["images"].append(entry)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def minimum_of_args(args) -> tuple[str, float | None]:
    """``("score" | "percentile" | "win probability", minimum)`` from --min/--min-percentile/--min-win."""
    if args.min_percentile is not None:
        kind, minimum = "percentile", args.min_percentile
    elif args.min_win is not None:
        kind, minimum = "win probability", args.min_win
    else:
        return "score", args.minimum
    if args.weights:
        raise UsageError("--min-percentile/--min-win compare one axis with its reference distribution: rank with --axis, not --weights")
    return kind, minimum


def run(args) -> int:
    import torch

    from ..models.calibration import calibrate_within_batch
    from ..models.file_scoring import score_files
    from ..models.selection import select_indices

    kind, minimum = minimum_of_args(args)
    if args.reference and kind == "score":
        logger.info("--reference given without --min-percentile/--min-win: the manifest records percentiles; the minimum (if any) is a score")
    out = Path(args.out)
    check_out_folder(out, args.overwrite)
    check_device(args.device)
    images = collect_images(args.paths)
    inside = [path for path in images if out.resolve() in path.resolve().parents]
    if inside:  # an earlier selection inside the searched folder is not part of the input
        logger.info("leaving out %d image(s) inside --out %s", len(inside), out)
        images = [path for path in images if path not in inside]
        if not images:
            raise UsageError(f"every image found is inside --out {out}")
    reference = load_reference_from_args(args)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(
            model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update, max_pixels=args.max_pixels or None,
        )
    scored = [result for result in results if result.scores is not None]
    if not scored:
        logger.error("none of the %d file(s) could be read as an image; nothing written", len(results))
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
            "no image reached %s >= %g (best: %.4f, %s); nothing written",
            threshold_name or selection.criterion, minimum, limit[best].item(), scored[best].path,
        )
        return 1
    digits = max(3, len(str(len(selection.chosen))))
    manifest = {
        "criterion": selection.criterion, "minimum": minimum, "minimum_of": kind, "top_k": args.top_k, "scored": len(scored),
        "axes": list(model.axes), "calibration": calibration.label if calibration is not None else None,
        "reference": calibration.reference if calibration is not None else None, "images": [],
    }
    chosen = []
    for rank, index in enumerate(selection.chosen, start=1):
        source = Path(scored[index].path)
        item = {"rank": rank, "file": f"{rank:0{digits}d}_{source.name}", "source": str(source.resolve()), "value": selection.values[index].item(), **scored[index].scores}
        if calibration is not None:
            item.update({f"{axis}_percentile": calibration.percentiles[index, a].item() for a, axis in enumerate(model.axes)})
            item.update({f"{axis}_win": calibration.win[index, a].item() for a, axis in enumerate(model.axes)})
        chosen.append((source, item))
    write_selection(out, chosen, manifest)
    print(f"kept {len(selection.chosen)} of {len(scored)} image(s) ranked by {selection.criterion}"
          + (f", {threshold_name} >= {minimum:g}" if threshold_name else "") + f" -> {out}")
    return 0
