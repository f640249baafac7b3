"""GPU throughput of ``creward score-dataset --engine ray``: ViT-L/14 ``clip`` in bf16, decode overlapped.

    python bench/dataset_gpu.py [--images 16000] [--shards 16] [--batch-size 256] [--actors 1]
    python bench/dataset_gpu.py --tiny      # the same script on a CPU, tiny model, seconds: checks it runs

Target (the issue): at least clip-retrieval's 1,500 images/s on one GPU. The data is
img2dataset-like WebDataset shards (``key.jpg`` 384 px + ``key.json``) written here; the model a
random-weight ViT-L/14 CLIP vision tower (the real ``clip`` backbone's architecture) with a head.
Measured in the same run:

- model only: bf16 forward of preprocessed batches on the GPU (the ceiling);
- Ray Data: after a one-shard warm-up job, N and then 2N images through the whole job (decode in
  CPU tasks, one actor per GPU);
  marginal images/s = N / (T(2N) - T(N)), without the fixed costs (imports, weights, actor start),
  and its fraction of model-only (how well decoding is hidden behind inference);
- the local engine on 2N images (one process, decode threads), for the ratio Ray / local.

Prints one JSON object.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import RAY_ENV, build_weights  # noqa: E402


def _shard(args: tuple[Path, int, int, int]) -> Path:
    import io
    import tarfile

    from PIL import Image

    path, number, count, size = args
    rng = np.random.default_rng(number)
    with tarfile.open(path, "w") as archive:
        for index in range(count):
            key = f"{number:05d}{index:04d}"
            small = rng.random((size // 16, size // 16, 3))
            image = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            noise = rng.integers(0, 16, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            for name, data in ((f"{key}.jpg", buffer.getvalue()), (f"{key}.json", json.dumps({"key": key}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path, shards: int, per_shard: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"{number:05d}.tar", number, per_shard, size) for number in range(shards)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(_shard, jobs))


def model_only(head: Path, backbone: Path, device: str, dtype: str, batch_size: int, seconds: float = 5.0) -> float:
    from creward.models.file_scoring import score_pixel_batch
    from creward.models.loader import load

    model = load(head, backbone_weights=backbone, device=device, dtype=dtype)
    pixels = torch.randn(batch_size, 3, 224, 224, device=model.device)
    for _ in range(3):
        score_pixel_batch(model, pixels)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        score_pixel_batch(model, pixels)  # ends with .cpu(): synchronises
        count += batch_size
    rate = count / (time.perf_counter() - start)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16000, help="N (the 2N job reads twice as many shards)")
    parser.add_argument("--shards", type=int, default=16, help="shards per N images")
    parser.add_argument("--size", type=int, default=384, help="JPEG side in pixels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--decode-cpus", type=float, default=1.0)
    parser.add_argument("--skip-local", action="store_true", help="do not run the local-engine baseline")
    parser.add_argument("--tiny", action="store_true", help="CPU check: tiny model, 64 images, fp32, no GPU")
    parser.add_argument("--data", help="folder to keep shards and weights in (default: a temporary folder)")
    args = parser.parse_args()
    os.environ.update(RAY_ENV)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from creward.dataset.job import DatasetJob, run_job
    from creward.dataset.ray_engine import RayOptions

    arch, device, dtype, gpus = ("vit-l14", "cuda", "bf16", 1.0)
    if args.tiny:
        arch, device, dtype, gpus = ("tiny", "cpu", "fp32", 0.0)
        args.images, args.shards, args.batch_size, args.size = 32, 2, 8, 128
    elif not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --tiny to check the script on a CPU")
    per_shard = max(1, args.images // args.shards)
    count = per_shard * args.shards
    with tempfile.TemporaryDirectory(dir=args.data) as temporary:
        root = Path(temporary)
        print(f"writing {2 * args.shards} shards of {per_shard} JPEGs ({args.size} px)...", file=sys.stderr, flush=True)
        shards = write_shards(root / "shards", 2 * args.shards, per_shard, args.size)
        head, backbone = build_weights(root, arch)
        result = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"{torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else 'cpu'}, torch {torch.__version__}, ray {ray.__version__}",
            "arch": arch, "dtype": dtype, "batch_size": args.batch_size, "actors": args.actors, "n": count, "jpeg_px": args.size,
        }
        result["model_only_images_per_s"] = round(model_only(head, backbone, device, dtype, args.batch_size), 1)
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False, **({"num_cpus": 2} if args.tiny else {}))
        try:
            timings = {}
            for label, inputs in (("warm-up", shards[:1]), ("n", shards[: args.shards]), ("2n", shards)):
                job = DatasetJob(inputs=[str(path) for path in inputs], output=root / f"out-ray-{label}", engine="ray", head=head,
                                 backbone_weights=backbone, device="auto", dtype=dtype, batch_size=args.batch_size, progress=False,
                                 ray=RayOptions(actors=args.actors, gpus_per_actor=gpus, cpus_per_actor=1, decode_cpus=args.decode_cpus))
                print(f"ray, {len(inputs) * per_shard} images...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                summary = run_job(job)
                timings[label] = time.perf_counter() - start
                assert summary.images == len(inputs) * per_shard and summary.errors == 0, summary.describe()
        finally:
            ray.shutdown()
        marginal = count / (timings["2n"] - timings["n"]) if timings["2n"] > timings["n"] else None
        result["ray"] = {
            "wall_s_n": round(timings["n"], 2), "wall_s_2n": round(timings["2n"], 2),
            "end_to_end_images_per_s": round(2 * count / timings["2n"], 1),
            "marginal_images_per_s": None if marginal is None else round(marginal, 1),
            "marginal_fraction_of_model_only": None if marginal is None else round(marginal / result["model_only_images_per_s"], 3),
            "target_images_per_s": 1500, "meets_target": None if marginal is None or args.tiny else marginal >= 1500,
        }
        if not args.skip_local:
            job = DatasetJob(inputs=[str(path) for path in shards], output=root / "out-local", engine="local", head=head, backbone_weights=backbone,
                             device=device, dtype=dtype, batch_size=args.batch_size, workers=max(2, (os.cpu_count() or 2) - 1), progress=False)
            print(f"local, {2 * count} images...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            run_job(job)
            wall = time.perf_counter() - start
            result["local"] = {"wall_s_2n": round(wall, 2), "end_to_end_images_per_s": round(2 * count / wall, 1)}
            result["ray_to_local_end_to_end"] = round(result["ray"]["end_to_end_images_per_s"] / result["local"]["end_to_end_images_per_s"], 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
