"""``creward score-dataset`` throughput: the local engine vs Ray Data with 1 and 2 actors, same run.

    python bench/dataset.py [--arch tiny vit-b16] [--images 64] [--batch-size 8] [--part-size 16]

For each random-weight CLIP backbone (``tiny``: the tests' 128-wide 2-layer ViT at patch 32;
``vit-b16``: ViT-B/16-sized, 768 wide, 12 layers) the same JPEG files (512 px, as img2dataset
writes) are scored by

- ``local``: ``--engine local`` (one process: torch's threads for the model, 2 decode threads);
- ``ray-1``: ``--engine ray``, 1 actor reserving 2 CPUs (torch then uses 2 threads), decoding in
  Ray tasks of 1 CPU;
- ``ray-2``: 2 actors of 1 CPU each (1 thread each), decoding as above;

on a local Ray cluster started here with 3 logical CPUs on this machine's cores (the actors'
2 plus 1 for decoding, which runs beside inference in both engines: local's decode threads
share the same cores). Each mode scores N images, then 2N images (the N plus N more), each a
fresh job, after one untimed warm-up job (cold file caches would otherwise count against the first).
Reported per mode: end-to-end images/s of the 2N job (wall time, model loading and
Ray's actor start included) and marginal images/s = N / (T(2N) - T(N)), which cancels every
fixed cost (imports, model loading, actor start, Ray's planning) and is the throughput a large
dataset sees; and the ratio of each Ray mode to ``local`` measured in the same run. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ARCHES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, patch_size=32),
    "vit-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
    "vit-l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
}
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def make_jpegs(folder: Path, count: int, size: int = 512, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        small = rng.random((size // 16, size // 16, 3))
        image = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        noise = rng.integers(0, 16, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        path = folder / f"{index:06d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def build_weights(folder: Path, arch: str) -> tuple[Path, Path]:
    """A random CLIP vision model of ``arch`` (Hugging Face folder) and a random head for it."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from creward.models.head import build_head, save_head

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=224, hidden_act="quick_gelu", **ARCHES[arch])
    backbone = folder / f"backbone-{arch}"
    CLIPVisionModel(config).save_pretrained(backbone, safe_serialization=True)
    head = save_head(build_head(config.hidden_size), folder / f"head-{arch}.safetensors", "clip")
    return head, backbone


def timed_job(job) -> tuple[float, int]:
    from creward.dataset.job import run_job

    start = time.perf_counter()
    summary = run_job(job)
    return time.perf_counter() - start, summary.images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=list(ARCHES), default=["tiny", "vit-b16"])
    parser.add_argument("--images", type=int, nargs="+", default=None, help="N per arch (default: 480 tiny, 48 vit-b16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--part-size", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=["local", "ray-1", "ray-2"])
    args = parser.parse_args()
    os.environ.update(RAY_ENV)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from creward.dataset.job import DatasetJob
    from creward.dataset.ray_engine import RayOptions

    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=300 * 1024**2, logging_level="WARNING", log_to_driver=False)
    counts = args.images or [{"tiny": 480, "vit-b16": 48, "vit-l14": 16}[arch] for arch in args.arch]
    results = []
    try:
        with tempfile.TemporaryDirectory() as temporary:
            root = Path(temporary)
            for arch, count in zip(args.arch, counts):
                files = make_jpegs(root / f"images-{arch}", 2 * count)
                folders = {}
                for size in (count, 2 * count):  # N and 2N images (hard links of the same files)
                    folders[size] = root / f"images-{arch}-{size}"
                    folders[size].mkdir()
                    for path in files[:size]:
                        os.link(path, folders[size] / path.name)
                head, backbone = build_weights(root, arch)
                row = {"arch": arch, "n": count}
                for mode in args.modes:
                    options = {
                        "local": RayOptions(),
                        "ray-1": RayOptions(actors=1, cpus_per_actor=2, decode_cpus=1),
                        "ray-2": RayOptions(actors=2, cpus_per_actor=1, decode_cpus=1),
                    }[mode]
                    timings = {}
                    for size, folder in [(0, folders[count]), *folders.items()]:  # 0: a warm-up job, not timed
                        job = DatasetJob(inputs=[str(folder)], output=root / f"out-{arch}-{mode}-{size}", engine="local" if mode == "local" else "ray",
                                         part_size=args.part_size if size else count,
                                         head=head, backbone_weights=backbone, device="cpu", dtype="fp32", batch_size=args.batch_size,
                                         workers=2, ray=options, progress=False)
                        print(f"{arch} {mode} {size or 'warm-up'} images...", file=sys.stderr, flush=True)
                        timings[size], scored = timed_job(job)
                        assert scored == (size or count), (scored, size)
                    marginal = count / (timings[2 * count] - timings[count]) if timings[2 * count] > timings[count] else None
                    row[mode] = {
                        "wall_s_n": round(timings[count], 2), "wall_s_2n": round(timings[2 * count], 2),
                        "end_to_end_images_per_s": round(2 * count / timings[2 * count], 2),
                        "marginal_images_per_s": None if marginal is None else round(marginal, 2),
                    }
                for mode in args.modes:
                    if mode != "local" and "local" in row:
                        for measure in ("end_to_end_images_per_s", "marginal_images_per_s"):
                            if row[mode][measure] and row["local"][measure]:
                                row[mode][f"{measure.replace('_images_per_s', '')}_ratio_to_local"] = round(row[mode][measure] / row["local"][measure], 3)
                results.append(row)
    finally:
        ray.shutdown()
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}",
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "batch_size": args.batch_size, "part_size": args.part_size, "results": results,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
