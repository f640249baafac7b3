"""``creward select PATHS... --top-k K --out DIR``: keep the most creative images.

Reward-based filtering and creative sample acquisition: scores every image, ranks by one axis or
a weighted sum (``models.selection``), copies the chosen files into DIR as
``<rank>_<name>`` and writes ``DIR/manifest.json`` (source path, scores, ranking value, rank).
Each copy and the manifest are written via a temporary file, so an interrupted run leaves no
half-written file; the manifest is written last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..models.axes import AXES
from .common import add_model_arguments, collect_or_exit, load_model_from_args, progress_bar, write_atomically

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("select", help="copy the top-k most creative images into a folder with a manifest", description=__doc__)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=int, required=True, help="how many images to keep (0 = every image reaching --min)")
    rank = parser.add_mutually_exclusive_group()
    rank.add_argument("--axis", choices=AXES, help="rank by one axis (default: overall)")
    rank.add_argument("--weights", help="rank by a weighted sum: four numbers g,m,t,o, e.g. 1,0,0.5,1")
    parser.add_argument("--min", type=float, dest="minimum", help="keep only images whose ranking value is at least this")
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    try:
        shutil.copy2(source, partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def run(args) -> int:
    import torch

    from ..models.file_scoring import score_files
    from ..models.selection import select_indices

    if args.top_k < 0:
        raise SystemExit(f"--top-k should be >= 0, got {args.top_k}")
    images = collect_or_exit(args.paths)
    model = load_model_from_args(args)
    with progress_bar(len(images), "scoring") as bar:
        results = score_files(model, images, batch_size=args.batch_size, workers=args.workers, progress=bar.update)
    scored = [result for result in results if result.scores is not None]
    if not scored:
        logger.error("none of the %d image(s) could be read", len(results))
        return 1
    scores = torch.tensor([[result.scores[axis] for axis in model.axes] for result in scored])
    selection = select_indices(scores, args.weights or args.axis or "overall", top_k=args.top_k, minimum=args.minimum, when_none_pass="empty", axes=model.axes)
    if not selection.chosen:
        best = int(selection.values.argmax())
        logger.error(
            "no image reached %s >= %g (best: %.4f, %s); nothing copied",
            selection.criterion, args.minimum, selection.values[best].item(), scored[best].path,
        )
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(selection.chosen))))
    manifest = {"criterion": selection.criterion, "minimum": args.minimum, "top_k": args.top_k, "scored": len(scored), "axes": list(model.axes), "images": []}
    for rank, index in enumerate(selection.chosen, start=1):
        source = Path(scored[index].path)
        target = out / f"{rank:0{digits}d}_{source.name}"
        _copy_atomically(source, target)
        manifest["images"].append(
            {"rank": rank, "file": target.name, "source": str(source.resolve()), "value": selection.values[index].item(), **scored[index].scores}
        )
    write_atomically(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    print(f"kept {len(selection.chosen)} of {len(scored)} image(s) ranked by {selection.criterion} -> {out}")
    return 0
