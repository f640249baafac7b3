"""Creative-LoRA training step: time and memory with and without gradient checkpointing.

    python bench/lora_step.py [--channels 64] [--levels 2] [--size 128] [--batch 2] [--steps 6]
                              [--targets attention] [--precision auto]

A tiny SD1.x-style UNet built from ComfyUI 0.3.75's classes (random weights, v-prediction),
a random TAESD and the tiny random CLIP CREward of the tests, trained by the real trainer
(``CreativeLoraTrainer.run_steps``: one-step estimate, differentiable TAESD decode, CREward,
backward, AdamW). Each setting runs in its own process so that peak memory is its own. Printed
per setting:

- ``step s``: median wall time of a training step (the first step is a warm-up, not counted);
- ``saved MB``: bytes of the tensors autograd saves for backward during one step, outside
  checkpointed blocks (``torch.autograd.graph.saved_tensors_hooks``; a tensor saved by several ops
  is counted each time, so this is an upper bound), what checkpointing removes;
- ``peak RSS MB``: the process's peak resident memory minus its resident memory just before
  training (CPU), or ``torch.cuda.max_memory_allocated`` over the steps (GPU).

Run it on a quiet machine; numbers are for the device that ran it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def worker(options: argparse.Namespace) -> dict:
    from comfyui_setup import ensure_comfyui

    from creward.diffusion.host import setup_comfyui

    setup_comfyui(ensure_comfyui(), cpu=options.device == "cpu")
    import torch

    from builders.comfy_diffusion import tiny_conditioning, tiny_sd15_model, tiny_vae
    from builders.comfyui_models import install_creward_clip
    from creward.models import load
    from creward.train.lora.config import CreativeLoraConfig
    from creward.train.lora.trainer import CreativeLoraTrainer

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="creward-lora-bench-"))
    files = install_creward_clip(folder / "models")
    creward = load(files["head"], backbone_weights=files["backbone"])
    model = tiny_sd15_model(seed=1, model_channels=options.channels, levels=options.levels, prediction="v")
    vae, conds = tiny_vae(), tiny_conditioning(2)
    creward.place(model.load_device)
    config = CreativeLoraConfig(
        axis_weights="texture", denoise_weight=1.0, rank=8, alpha=8.0, learning_rate=1e-4, steps=options.steps + 1,
        batch_size=options.batch, width=options.size, height=options.size, targets=options.targets,
        gradient_checkpointing=options.checkpointing, mixed_precision=options.precision, checkpoint_every=10_000,
        eval_seeds=0, samples_per_prompt=1, sample_steps=1, cfg=1.0,
    )
    trainer = CreativeLoraTrainer(model, vae, creward, conds, config, folder / "run")
    trainer.prepare(resume=False)
    trainer.run_steps(1)  # warm-up
    cuda = model.load_device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    saved = {"now": 0, "peak": 0}

    def pack(tensor):
        saved["now"] += tensor.numel() * tensor.element_size()
        saved["peak"] = max(saved["peak"], saved["now"])
        return tensor

    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.run_steps(1)
    first_measured = time.perf_counter() - started
    trainer.run_steps(options.steps - 1)
    if cuda:
        torch.cuda.synchronize()
    times = [first_measured] + [entry["seconds"] for entry in trainer.state.history[2:]]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before)
    return {
        "checkpointing": options.checkpointing,
        "step_s": statistics.median(times),
        "saved_mb": saved["peak"] / 2**20,
        "peak_mb": peak,
        "lora_params": trainer.lora.num_parameters(),
        "device": str(model.load_device),
        "compute_dtype": str(trainer.compute_dtype or "model default").replace("torch.", ""),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=64, help="UNet model_channels (default 64)")
    parser.add_argument("--levels", type=int, default=2, help="UNet levels (default 2)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="samples per step (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="measured steps (default 6)")
    parser.add_argument("--targets", default="attention", choices=("attention", "linear", "all"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu"))
    parser.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        options.checkpointing = options.worker == "on"
        print(json.dumps(worker(options)))
        return 0
    results = []
    for mode in ("off", "on"):
        command = [sys.executable, __file__, "--worker", mode] + [
            f"--{key}={value}" for key, value in vars(options).items() if key not in ("worker",)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import torch

    print(f"creative-LoRA training step, tiny SD1.x UNet (model_channels {options.channels}, {options.levels} levels), "
          f"{options.size}x{options.size} px, batch {options.batch}, targets {options.targets}, "
          f"{results[0]['lora_params']} LoRA parameters; TAESD decode + tiny CLIP CREward; "
          f"device {results[0]['device']}, compute {results[0]['compute_dtype']}; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'gradient checkpointing':<24}{'step s':>10}{'saved MB':>12}{'peak MB':>12}")
    for result in results:
        print(f"{'on' if result['checkpointing'] else 'off':<24}{result['step_s']:>10.3f}{result['saved_mb']:>12.1f}{result['peak_mb']:>12.1f}")
    off, on = results
    print(f"checkpointing: step time x{on['step_s'] / off['step_s']:.2f}, saved activations x{on['saved_mb'] / max(off['saved_mb'], 1e-9):.2f}, "
          f"peak x{on['peak_mb'] / max(off['peak_mb'], 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
