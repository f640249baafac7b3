"""Show which image regions drive each creativity score (Grad-CAM heatmaps).

For every image it writes into --out:

  <name>_<axis>_gradcam.png   the heatmap of --axis (or "weighted" for a --weights mix) over the image
  <name>_sheet.png            the image and the heatmaps of all four axes side by side, with their scores

Red marks the regions that raise the score most; a heatmap is all blue when nothing does.

Exit status: 0 at least one image was explained; 1 none could be read; 2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..models.axes import AXES
from .arguments import UsageError, axis_weights_text, check_device, unit_interval
from .common import add_image_arguments, add_model_arguments, collect_images, load_model_from_args, progress_bar

logger = logging.getLogger(__name__)

WEIGHTED = "weighted"


def register(subparsers) -> None:
    parser = subparsers.add_parser("explain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--axis", choices=[*AXES, WEIGHTED], help="axis of the single heatmap (default: overall, or weighted when --weights is given)")
    parser.add_argument("--weights", type=axis_weights_text, metavar="G,M,T,O", help="explain a weighted sum of the axes, e.g. 1,0,0.5,0 (implies --axis weighted)")
    parser.add_argument(
        "--block", type=int, default=-1, metavar="N",
        help="backbone block whose activations are mapped, counted from 0 (negative: from the end). Default: the last "
        "block whose patch outputs reach the score, which for CLIP and DINOv3 (scored from the CLS token) is the one "
        "before the last",
    )
    parser.add_argument("--out", default=".", metavar="DIR", help="output folder (default: the current folder)")
    parser.add_argument("--alpha", type=unit_interval, default=0.5, help="heatmap opacity over the image, 0 to 1 (default: 0.5)")
    parser.add_argument("--colormap", default="jet", choices=["jet", "turbo"], help="heatmap colours (default: jet)")
    add_model_arguments(parser)
    add_image_arguments(parser, workers=False)
    parser.set_defaults(func=run)


def save_png_atomically(image, path: Path) -> Path:
    """Save a PIL image as PNG via a temporary file in the same folder, then rename it into place."""
    from ..models.output_files import atomic_output

    with atomic_output(path) as temporary:
        image.save(temporary, format="PNG")
    return path


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


def run(args) -> int:
    from ..models.axes import axis_weights
    from ..models.errors import CREwardError, ImageError
    from ..models.gradcam import axis_sheet, gradcam_layer, gradcam_multi, overlay, to_pil_image
    from ..models.preprocess import load_image

    if args.weights is not None and args.axis not in (None, WEIGHTED):
        raise UsageError(f"--weights gives a mixed target; it cannot be combined with --axis {args.axis}")
    axis = WEIGHTED if args.weights is not None else (args.axis or "overall")
    if axis == WEIGHTED and args.weights is None:
        raise UsageError("--axis weighted needs --weights G,M,T,O")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    check_device(args.device)
    mix = axis_weights(args.weights) if axis == WEIGHTED else None

    images = collect_images(args.paths)
    model = load_model_from_args(args)
    if args.block != -1:
        try:
            gradcam_layer(model, args.block)  # the blocks there are depend on the backbone: checked once it is known
        except CREwardError as error:
            raise UsageError(f"--block: {error}") from None
    out = Path(args.out)
    targets = list(model.axes) + ([mix] if mix is not None else [])
    chosen = len(model.axes) if mix is not None else list(model.axes).index(axis)
    failed = 0
    rows = []
    with progress_bar(len(images), "explaining") as bar:
        for path, stem in zip(images, _unique_stems(images)):
            try:
                image = load_image(path, args.max_pixels or None)
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
    if not rows:
        logger.error("none of the %d file(s) could be read as an image", len(images))
        return 1
    return 0
