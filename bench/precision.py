"""How much the backbone precision changes CREward's scores: fp32 (the official) vs bf16 vs fp16.

    # on a GPU, with real weights and a few hundred real images (the measurement):
    python bench/precision.py --head creward_siglip-gemma3.safetensors --backbone-weights gemma-3-4b-it/ \
        --images ./photos --limit 300 --device cuda

    # anywhere, in a minute: tiny random weights and synthetic images (checks the script runs)
    python bench/precision.py --tiny [--backbone siglip-gemma3] [--device cpu]

For each precision the same files go through ``creward.models.file_scoring.score_files`` (the
``creward score`` path) with the model loaded in that precision. Against the fp32 scores of the
same run (the baseline) it prints, per axis: the largest and mean |difference|, Kendall's tau-b
between the two rankings of the images, and whether the best image stays the best; plus each
precision's images/s and its ratio to fp32's. In fp32 it also records the largest |activation|
of the backbone's layers: fp16 overflows above 65504 (bf16 keeps fp32's range), so the
printed headroom says how close the real weights come to overflowing in fp16. A precision that
overflows is reported as such (CREward raises instead of returning NaN scores).
Results go to stdout as JSON and a Markdown table; record them in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FP16_MAX = 65504.0
DTYPES = ("fp32", "bf16", "fp16")


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (ties counted as in scipy.stats.kendalltau)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    upper = np.triu_indices(len(x), k=1)
    dx = np.sign(x[:, None] - x[None, :])[upper]
    dy = np.sign(y[:, None] - y[None, :])[upper]
    concordant_minus_discordant = float((dx * dy).sum())
    denominator = np.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return concordant_minus_discordant / denominator if denominator else float("nan")


def largest_activation(model, paths: list[Path], batch_size: int) -> dict:
    """Largest |output| of any backbone layer over the first batch, in the model's precision."""
    from creward.models.file_scoring import load_preprocessed

    largest = {"value": 0.0, "layer": None}

    def hook(module, inputs, output, name=None):
        tensors = output if isinstance(output, (tuple, list)) else (output,)
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                value = float(tensor.detach().abs().max())
                if value > largest["value"]:
                    largest.update(value=value, layer=name)

    handles = [module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name)) for name, module in model.backbone.named_modules() if name]
    try:
        pixels = torch.stack([load_preprocessed(path, model.spec.preprocessing) for path in paths[:batch_size]])
        with torch.inference_mode():
            model.score_pixels(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return {**largest, "fp16_headroom": FP16_MAX / largest["value"] if largest["value"] else None}


def score_in(dtype: str, args, paths: list[Path], head, weights) -> dict:
    from creward.models.errors import WeightsError
    from creward.models.file_scoring import score_files
    from creward.models.loader import load

    model = load(head, backbone=args.backbone, backbone_weights=weights, device=args.device, dtype=dtype)
    record: dict = {"dtype": dtype}
    try:
        score_files(model, paths[: args.batch_size], batch_size=args.batch_size, workers=args.workers)  # warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        results = score_files(model, paths, batch_size=args.batch_size, workers=args.workers)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        record["images_per_s"] = len(paths) / (time.perf_counter() - started)
        record["scores"] = np.array([[result.scores[axis] for axis in model.axes] for result in results if result.scores is not None])
        record["axes"] = list(model.axes)
    except WeightsError as error:  # inf/NaN features: the precision overflowed
        record["overflow"] = str(error)
    if dtype == "fp32":
        record["activation"] = largest_activation(model, paths, args.batch_size)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def compare(baseline: dict, other: dict) -> dict:
    if "overflow" in other:
        return {"dtype": other["dtype"], "overflow": other["overflow"]}
    reference, scores = baseline["scores"], other["scores"]
    per_axis = {}
    for column, axis in enumerate(baseline["axes"]):
        difference = np.abs(scores[:, column] - reference[:, column])
        per_axis[axis] = {
            "max_abs_diff": float(difference.max()),
            "mean_abs_diff": float(difference.mean()),
            "kendall_tau": kendall_tau_b(reference[:, column], scores[:, column]),
            "same_best_image": bool(np.argmax(scores[:, column]) == np.argmax(reference[:, column])),
        }
    return {
        "dtype": other["dtype"],
        "images_per_s": round(other["images_per_s"], 3),
        "speed_vs_fp32": round(other["images_per_s"] / baseline["images_per_s"], 2),
        "axes": per_axis,
    }


def tiny_setup(folder: Path, backbone: str, count: int) -> tuple[Path, Path, list[Path]]:
    """Random tiny weights in the user format (tests/builders) and ``count`` synthetic images."""
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from builders import build_backbone_weights

    from creward.models.backbones.registry import load_backbone
    from creward.models.head import build_head, save_head

    torch.manual_seed(0)
    weights = build_backbone_weights(backbone, folder / "backbone")
    head = save_head(build_head(load_backbone(backbone, weights).feature_dim), folder / "head.safetensors", backbone)
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    paths = []
    for index in range(count):
        small = rng.random((6, 6, 3)) ** (0.5 + index % 5)
        picture = Image.fromarray((small * 255).astype(np.uint8)).resize((96 + 8 * (index % 4), 96), Image.BICUBIC)
        path = folder / "images" / f"img_{index:03d}.png"
        picture.save(path)
        paths.append(path)
    return head, weights, paths


def markdown(comparisons: list[dict], baseline: dict) -> str:
    lines = ["| precision | axis | max abs diff vs fp32 | mean abs diff | Kendall tau vs fp32 | same best image | img/s (vs fp32) |", "|---|---|---|---|---|---|---|"]
    for row in comparisons:
        if "overflow" in row:
            lines.append(f"| {row['dtype']} | all | overflow: {row['overflow']} | | | | |")
            continue
        for axis, values in row["axes"].items():
            lines.append(
                f"| {row['dtype']} | {axis} | {values['max_abs_diff']:.2e} | {values['mean_abs_diff']:.2e} | {values['kendall_tau']:.4f} | "
                f"{'yes' if values['same_best_image'] else 'no'} | {row['images_per_s']:.2f} ({row['speed_vs_fp32']:.2f}x) |"
            )
    activation = baseline["activation"]
    lines.append(
        f"\nfp32: {baseline['images_per_s']:.2f} img/s; largest |activation| {activation['value']:.4g} in {activation['layer']} "
        f"(fp16 headroom {activation['fp16_headroom']:.3g}x)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random weights and synthetic images (a quick check of the script)")
    parser.add_argument("--head", help="head file (not with --tiny)")
    parser.add_argument("--backbone", default=None, help="backbone (default: from the head; with --tiny: clip)")
    parser.add_argument("--backbone-weights", help="backbone weights (not with --tiny)")
    parser.add_argument("--images", help="folder of images (not with --tiny)")
    parser.add_argument("--limit", type=int, default=300, help="images used (default 300; --tiny: 40)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    args = parser.parse_args()
    if not args.tiny and not (args.head and args.images):
        parser.error("give --head, --backbone-weights and --images (or --tiny)")

    from creward.models.file_scoring import collect_image_paths

    with tempfile.TemporaryDirectory() as temporary:
        if args.tiny:
            args.backbone = args.backbone or "clip"
            head, weights, paths = tiny_setup(Path(temporary), args.backbone, min(args.limit, 40))
        else:
            head, weights = args.head, args.backbone_weights
            paths = collect_image_paths([args.images])[0][: args.limit]
        records = [score_in(dtype, args, paths, head, weights) for dtype in ["fp32", *(d for d in args.dtypes if d != "fp32")]]
    baseline = records[0]
    comparisons = [compare(baseline, record) for record in records[1:]]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    result = {
        "machine": f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}",
        "mode": "tiny random weights, synthetic images" if args.tiny else f"{head} + {weights}",
        "backbone": args.backbone,
        "images": len(paths),
        "fp32_images_per_s": round(baseline["images_per_s"], 3),
        "fp32_largest_activation": baseline["activation"],
        "comparisons": comparisons,
    }
    print(json.dumps(result, indent=1))
    print(markdown(comparisons, baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
