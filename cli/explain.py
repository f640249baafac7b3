"""``creward explain IMAGES...``: Grad-CAM heatmaps showing which regions drive each creativity score.

For every image it writes, into ``--out``:

- ``<stem>_<axis>_gradcam.png``: the heatmap of ``--axis`` (or ``weighted`` for a ``--weights``
  mix) blended over the image;
- ``<stem>_sheet.png``: the image and the overlays of all four axes side by side, labelled with
  their scores.

Red marks the regions that raise the score most; a heatmap is all blue when nothing does.
Files are written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..models.axes import AXES
from .common import add_model_arguments, collect_or_exit, load_model_from_args, progress_bar

logger = logging.getLogger(__name__)

WEIGHTED = "weighted"


def register(subparsers) -> None:
    parser = subparsers.add_parser("explain", help="Grad-CAM heatmaps: which image regions drive each axis score", description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--axis", choices=[*AXES, WEIGHTED], help="axis of the single overlay (default: overall, or weighted when --weights is given)")
    parser.add_argument("--weights", metavar="G,M,T,O", help="axis weights for a mixed target, e.g. 1,0,0.5,0 (implies --axis weighted)")
    parser.add_argument("--block", type=int, default=-1, help="backbone block whose activations are used (default: -1, the last)")
    parser.add_argument("--out", default=".", help="output folder (default: the current folder)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity over the image, 0..1 (default: 0.5)")
    parser.add_argument("--colormap", default="jet", choices=["jet", "turbo"], help="heatmap colours (default: jet)")
    add_model_arguments(parser)
    parser.set_defaults(func=lambda args: run(args, parser))


def save_png_atomically(image, path: Path) -> Path:
    """Save a PIL image as PNG via a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique (``name``, ``name-2``, ...) so images in different folders don't overwrite each other."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
        if count > 1:
            logger.warning("%s has the same name as an earlier image; writing it as %s", path, stems[-1])
    return stems


def run(args, parser) -> int:
    from ..models.axes import axis_weights
    from ..models.errors import ImageError
    from ..models.gradcam import to_pil_image, axis_sheet, gradcam_multi, overlay
    from ..models.preprocess import load_image

    if args.weights is not None and args.axis not in (None, WEIGHTED):
        parser.error(f"--weights gives a mixed target; it cannot be combined with --axis {args.axis}")
    axis = WEIGHTED if args.weights is not None else (args.axis or "overall")
    if axis == WEIGHTED and args.weights is None:
        parser.error("--axis weighted needs --weights G,M,T,O")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha should be between 0 and 1, got {args.alpha}")
    mix = axis_weights(args.weights) if axis == WEIGHTED else None  # validate before loading the model

    images = collect_or_exit(args.paths)
    model = load_model_from_args(args)
    out = Path(args.out)
    targets = list(model.axes) + ([mix] if mix is not None else [])
    chosen = len(model.axes) if mix is not None else list(model.axes).index(axis)
    failed = 0
    rows = []
    with progress_bar(len(images), "explaining") as bar:
        for path, stem in zip(images, _unique_stems(images)):
            try:
                image = load_image(path)
            except ImageError as error:
                logger.warning("skipping %s", error)
                failed += 1
                bar.update(1)
                continue
            heatmaps, scores = gradcam_multi(model, image, targets, block=args.block, batch_size=args.batch_size)
            heatmaps, scores = heatmaps[0], scores[0]
            overlay_path = save_png_atomically(to_pil_image(overlay(image, heatmaps[chosen], args.alpha, args.colormap)), out / f"{stem}_{axis}_gradcam.png")
            labels = [f"{name} {value:+.3f}" for name, value in zip(model.axes, scores.tolist())]
            sheet = axis_sheet(image, heatmaps[: len(model.axes)], labels, alpha=args.alpha, colormap=args.colormap)
            sheet_path = save_png_atomically(sheet, out / f"{stem}_sheet.png")
            rows.append((str(path), scores.tolist(), overlay_path, sheet_path))
            bar.update(1)
    if rows:
        width = max(len("image"), *(len(row[0]) for row in rows))
        print("  ".join(["image".ljust(width), *(name.rjust(9) for name in model.axes), "written"]))
        for name, values, overlay_path, sheet_path in rows:
            print("  ".join([name.ljust(width), *(f"{value:9.4f}" for value in values), f"{overlay_path}, {sheet_path.name}"]))
    logger.info("explained %d image(s) on axis %s into %s%s", len(rows), axis, out, f", {failed} unreadable" if failed else "")
    return 0 if rows else 1
