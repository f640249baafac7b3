"""CREward nodes in a real ComfyUI: cost of re-running, and best-of-N overhead.

    python bench/nodes_rerun.py [--arch vit-l14|vit-b16|tiny] [--batch 8] [--size 512] [--repeats 3]

Random-weight CLIP CREward of the chosen architecture (ViT-L/14 is the real ``clip`` backbone),
built into a fresh ComfyUI base directory, ComfyUI 0.3.75 on the CPU. Prints:

1. **Re-runs through the API** (``POST /prompt`` → ``/history``): a scoring workflow
   (CREward Loader → CREward Score of a batch of ``--batch`` images → Preview as Text) is run
   three times, each time with a *new* image. For each run: the wall time from queueing to the
   history entry, the time ComfyUI logged for the prompt, and the loader's own load time
   (``CREward loaded in X s`` in the log; 0 when the loader was served from the executor's
   cache). The second and third runs must not reload anything.
2. **Best-of-N overhead per image**, in-process (ComfyUI imported, node classes called as the
   executor does): a batch of ``--batch`` latents of ``--size`` px is decoded with TAESD
   (VAELoader "taesd"); then CREward Score + CREward Select Best run on the decoded batch. Both
   per image (median of ``--repeats``) and their ratio.

Run it on a quiet machine; numbers are for the CPU of the machine that ran it.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

ARCHES = {
    "tiny": {"patch_size": 14},
    "vit-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
    "vit-l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
}
LOADED = re.compile(r"CREward loaded in ([0-9.]+) s")
EXECUTED = re.compile(r"Prompt executed in ([0-9.]+) seconds")


def scoring_graph(image: str, batch: int) -> dict:
    return {
        "1": {"class_type": "CREwardLoader", "inputs": {"head": "creward_clip.safetensors", "backbone": "auto",
                                                        "backbone_weights": "auto", "device": "auto", "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": batch}},
        "4": {"class_type": "CREwardScore", "inputs": {"creward": ["1", 0], "images": ["3", 0], "batch_size": 8}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 5]}},
    }


def api_reruns(comfyui: Path, base: Path, batch: int, images: list[str]) -> list[dict]:
    import comfyui_harness as harness

    runs = []
    with harness.ComfyUIServer(comfyui, base) as client:
        for image in images:
            log_before = client.log_text()
            started = time.perf_counter()
            history = client.run(scoring_graph(image, batch), timeout=1800)
            wall = time.perf_counter() - started
            new_log = client.log_text()[len(log_before):]
            cached = [data["nodes"] for kind, data in history["status"]["messages"] if kind == "execution_cached"]
            loads = [float(value) for value in LOADED.findall(new_log)]
            executed = [float(value) for value in EXECUTED.findall(new_log)]
            runs.append({
                "image": image,
                "wall_s": round(wall, 3),
                "comfy_executed_s": executed[-1] if executed else None,
                "loader_load_s": loads[-1] if loads else 0.0,
                "loader_cached": "1" in (cached[0] if cached else []),
            })
    return runs


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def best_of_n_overhead(nodes, batch: int, size: int, repeats: int) -> dict:
    mappings = nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        vae = mappings["VAELoader"]().load_vae("taesd")[0]
        creward = mappings["CREwardLoader"]().load("creward_clip.safetensors", "auto", "auto", "auto", "auto")["result"][0]
        latent = torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
        images = vae.decode(latent)  # warm-up, and the batch the selection runs on
        score, select = mappings["CREwardScore"](), mappings["CREwardSelectBest"]()

        def decode():
            vae.decode(latent)

        def score_and_select():
            scores = score.score(creward, images)["result"][0]
            select.select(images, "overall", 1, False, 0.0, "error", scores=scores)

        score_and_select()  # warm-up
        decode_s = median_time(decode, repeats)
        select_s = median_time(score_and_select, repeats)
    return {
        "taesd_decode_ms_per_image": round(1000 * decode_s / batch, 2),
        "score_and_select_ms_per_image": round(1000 * select_s / batch, 2),
        "overhead_vs_taesd_decode": round(select_s / decode_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="vit-l14")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="image size (latents are size/8)")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args(argv)

    import comfyui_harness as harness
    import nodes_setup
    from builders import comfyui_models
    from comfyui_setup import ensure_comfyui

    comfyui = ensure_comfyui()
    with tempfile.TemporaryDirectory(prefix="creward-bench-") as temp:
        base = harness.make_base_dir(Path(temp) / "base")
        nodes = harness.load_comfyui_inprocess(comfyui, base)  # needed to build TAESD with ComfyUI's classes
        comfyui_models.install_creward_clip(base / "models", vision=ARCHES[options.arch])
        nodes_setup.install_taesd(base)
        names = ["bench_1.png", "bench_2.png", "bench_3.png"]
        nodes_setup.write_images(base / "input", names, size=(options.size, options.size))
        runs = api_reruns(comfyui, base, options.batch, names)
        overhead = best_of_n_overhead(nodes, options.batch, options.size, options.repeats)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "arch": options.arch,
        "batch": options.batch,
        "image_size": options.size,
        "api_runs": runs,
        "best_of_n": overhead,
    }
    print(json.dumps(result, indent=2))
    first, *later = runs
    print(f"\nfirst run {first['wall_s']:.2f} s (of which CREward load {first['loader_load_s']:.2f} s); "
          + "; ".join(f"run {i + 2} {run['wall_s']:.2f} s, load {run['loader_load_s']:.2f} s, loader cached: {run['loader_cached']}"
                      for i, run in enumerate(later)))
    print(f"best-of-{options.batch}: TAESD decode {overhead['taesd_decode_ms_per_image']} ms/image, "
          f"CREward score + select {overhead['score_and_select_ms_per_image']} ms/image "
          f"({overhead['overhead_vs_taesd_decode']}x the decode)")
    reloaded = [run for run in later if not run["loader_cached"] or run["loader_load_s"] > 0]
    return 1 if reloaded else 0


if __name__ == "__main__":
    sys.exit(main())
