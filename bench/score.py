"""End-to-end scoring throughput: ours vs the official per-image code path, same run, same images.

    python bench/score.py [--images 32] [--arch vit-b16|vit-l14] [--batch-size 8] [--device cpu]

Prints, for one random-weight CLIP backbone of the chosen architecture (ViT-B/16 by default; the
real ``clip`` backbone is ViT-L/14) and the same PNG files (mixed sizes up to 2048 px):

- naive: the official code path, one image per forward in fp32 (PIL decode at full size →
  ToTensor → Resize((S,S)) → Normalize → backbone → head), images/s;
- ours end to end: ``creward.models.file_scoring.score_files`` (background decoding, batches),
  images/s, and the ratio to naive;
- ours model only: preprocessed batches through backbone + head, images/s;
- the backbone's achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) against this
  machine's own ``torch.matmul`` GFLOP/s measured in the same run (the physical limit);
- end-to-end as a fraction of model-only.
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

ARCHES = {
    "vit-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
    "vit-l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
}


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(2048, 2048), (1536, 1024), (1024, 1024), (768, 1344), (512, 512), (2048, 1152), (640, 480), (1200, 1800)]
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        small = rng.random((height // 32 + 1, width // 32 + 1, 3))
        image = Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        noise = rng.integers(0, 12, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        path = folder / f"img_{index:03d}.png"
        image.save(path, compress_level=6)
        paths.append(path)
    return paths


def build_weights(folder: Path, arch: str) -> tuple[Path, Path]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from creward.models.head import build_head, save_head

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=224, hidden_act="quick_gelu", **ARCHES[arch])
    model = CLIPVisionModel(config)
    backbone = folder / "backbone"
    model.save_pretrained(backbone, safe_serialization=True)
    head = save_head(build_head(config.hidden_size), folder / "head.safetensors", "clip")
    return head, backbone


def matmul_gflops(device: torch.device, size: int = 2048, seconds: float = 3.0) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def naive_official(head_path: Path, backbone_path: Path, paths: list[Path]) -> float:
    """The official code path: one image per forward, fp32, full decode then resize."""
    from PIL import Image
    from torchvision import transforms
    from transformers import CLIPVisionModel

    from creward.models.backbones.registry import CLIP_MEAN, CLIP_STD
    from creward.models.head import load_head

    backbone = CLIPVisionModel.from_pretrained(backbone_path).eval()
    head, _ = load_head(head_path)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Resize((224, 224)), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            pixels = transform(Image.open(path).convert("RGB")).unsqueeze(0)
            head(backbone(pixel_values=pixels).pooler_output)
    return len(paths) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--arch", choices=list(ARCHES), default="vit-b16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from torch.utils.flop_counter import FlopCounterMode

    from creward.models.file_scoring import score_files
    from creward.models.loader import load

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / "images").mkdir()
        print(f"writing {args.images} PNG images (mixed sizes up to 2048 px)...", file=sys.stderr)
        paths = make_images(folder / "images", args.images)
        head_path, backbone_path = build_weights(folder, args.arch)
        model = load(head_path, backbone_weights=backbone_path, device=device, dtype="fp32")

        matmul = matmul_gflops(device)
        pixels = torch.randn(args.batch_size, 3, 224, 224, device=device)
        with torch.inference_mode():
            with FlopCounterMode(display=False) as counter:
                model.backbone(pixels[:1])
            flops_per_image = counter.get_total_flops()
            model.score_pixels(pixels)  # warm-up
            repeats = max(2, 64 // args.batch_size)
            start = time.perf_counter()
            for _ in range(repeats):
                model.score_pixels(pixels)
            model_only = repeats * args.batch_size / (time.perf_counter() - start)

        score_files(model, paths[: args.batch_size], batch_size=args.batch_size, workers=args.workers)  # warm-up
        start = time.perf_counter()
        score_files(model, paths, batch_size=args.batch_size, workers=args.workers)
        ours = len(paths) / (time.perf_counter() - start)
        naive = naive_official(head_path, backbone_path, paths)

    achieved = flops_per_image * model_only / 1e9
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}",
        "arch": args.arch,
        "images": args.images,
        "batch_size": args.batch_size,
        "naive_images_per_s": round(naive, 3),
        "ours_end_to_end_images_per_s": round(ours, 3),
        "speedup_vs_naive": round(ours / naive, 2),
        "ours_model_only_images_per_s": round(model_only, 3),
        "end_to_end_fraction_of_model_only": round(ours / model_only, 3),
        "backbone_gflop_per_image": round(flops_per_image / 1e9, 2),
        "achieved_gflops": round(achieved, 1),
        "matmul_gflops": round(matmul, 1),
        "fraction_of_matmul": round(achieved / matmul, 3),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
