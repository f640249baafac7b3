"""Creative sampling on a GPU: steps/s of an SD1.5-sized UNet in bf16, plain against steered.

    python bench/steering_gpu.py [--device cuda] [--particles 4] [--steps 20] [--repeats 3]
    python bench/steering_gpu.py --device cpu --tiny      # the same script in seconds, to check it runs

Prepared for a GPU session (none was lent when it was written). What it builds, all random weights,
nothing downloaded:

- ComfyUI's SD1.x ``BaseModel`` with the real SD1.5 UNet shape (model_channels 320, channel_mult
  1/2/4/4, 2 res blocks per level, attention at the first three levels and the middle, 8 heads,
  context 768: about 860 M parameters), inference dtype bf16 on CUDA (fp32 on the CPU);
- a random TAESD in ``models/vae_approx`` (what the Creative KSampler's ``auto`` preview decoder picks);
- the CLIP CREward at real size: a ViT-L/14 vision tower at 224 px (24 layers, width 1024) with a
  random head, backbone in bf16 on CUDA;
- 512 x 512 images (64 x 64 latents), 77-token conditioning, cfg 7.5, ``euler_ancestral``, ``normal``.

Printed per mode: median seconds per step over ``--repeats`` runs after a warm-up, steps/s, the ratio
to plain sampling (the baseline: the N particles' latents as one batch through ``comfy.sample.sample``),
UNet evaluations per sample and, on CUDA, the peak memory. Modes: plain; FK resampling with TAESD
previews scored by CREward at the checkpoints (the plan's defaults: every 4 steps from 20 % to 80 %);
pruned best-of-N N -> 1; reward guidance (scale 0.3, every 4th step). The target of issue 9: preview
scoring adds <= 15 % to the step time (FK / plain - 1). The last line is the results as JSON.

``--tiny`` swaps in the tests' tiny UNet (32 channels, 2 levels, context 32), the tiny CLIP and 64 px
images, so that ``--device cpu --tiny`` runs on a laptop in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

# ComfyUI's model_detection output for SD1.5 (v1-5-pruned-emaonly): transformer_depth is per res block.
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
# openai/clip-vit-large-patch14's vision tower
VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               image_size=224, patch_size=14)


def build_unet(tiny: bool, dtype, load_device):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from builders.comfy_diffusion import fill_weights, sd15_unet_config

    config = comfy.supported_models.SD15(sd15_unet_config() if tiny else dict(SD15_UNET))
    config.set_inference_dtype(dtype, None)
    model = comfy.model_base.BaseModel(config)
    fill_weights(model.diffusion_model, seed=1)
    model.eval()
    parameters = sum(p.numel() for p in model.diffusion_model.parameters())
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=torch.device("cpu"))
    return patcher, parameters, config.unet_config["context_dim"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny UNet, tiny CLIP, 64 px: a quick check on any machine")
    parser.add_argument("--particles", type=int, default=4, help="particles N (default 4)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode after a warm-up (default 3)")
    parser.add_argument("--size", type=int, help="image size in pixels (default 512, --tiny 64)")
    options = parser.parse_args()
    size = options.size or (64 if options.tiny else 512)

    from comfyui_setup import ensure_comfyui

    from creward.diffusion.host import setup_comfyui

    setup_comfyui(ensure_comfyui(), cpu=options.device == "cpu")
    import torch

    if options.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here; use --device cpu --tiny for a check run", file=sys.stderr)
        return 2
    import comfy.model_management
    import comfy.sample
    import folder_paths

    from builders.comfy_diffusion import taesd_files, tiny_conditioning
    from builders.comfyui_models import install_creward_clip
    from creward.diffusion.creative_sampling import creative_sample, reward_builder
    from creward.diffusion.guidance import GuidanceSettings, guided_model
    from creward.diffusion.reward import RewardSpec
    from creward.diffusion.steering_plan import SteeringPlan
    from creward.models import load

    cuda = options.device == "cuda"
    device = comfy.model_management.get_torch_device()
    dtype = torch.bfloat16 if cuda else torch.float32
    folder = Path(tempfile.mkdtemp(prefix="creward-steering-gpu-"))
    taesd_files(folder / "vae_approx")
    folder_paths.add_model_folder_path("vae_approx", str(folder / "vae_approx"), is_default=True)
    started = time.perf_counter()
    files = install_creward_clip(folder / "models", vision=None if options.tiny else VIT_L14)
    creward = load(files["head"], backbone_weights=files["backbone"], device=str(device), dtype=dtype if cuda else None)
    model, parameters, context = build_unet(options.tiny, dtype, device)
    print(f"built UNet ({parameters / 1e6:.0f} M parameters) and CREward in {time.perf_counter() - started:.1f} s", flush=True)
    spec = RewardSpec.parse("overall", creward.axes)
    positive, negative = tiny_conditioning(2, context_dim=context, tokens=7 if options.tiny else 77)
    n, steps, cfg, sampler = options.particles, options.steps, 7.5, "euler_ancestral"
    latent = torch.zeros(1, 4, size // 8, size // 8)
    batch = latent.repeat(n, 1, 1, 1)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def plain(seed):
        samples = comfy.sample.sample(model, comfy.sample.prepare_noise(batch, seed), steps, cfg, sampler, "normal",
                                      positive, negative, batch, seed=seed, disable_pbar=True)
        return samples, steps, ""

    def steered(plan):
        def run(seed):
            samples, report = creative_sample(model, positive, negative, latent, seed, steps, cfg, sampler, "normal", plan,
                                              reward_builder(creward, spec, "taesd", decode_batch=n))
            return samples, report.evaluations_per_latent, report.plan
        return run

    guided, _ = guided_model(model, reward_builder(creward, spec, "taesd", decode_batch=n),
                             GuidanceSettings(scale=0.3, end_percent=0.8, every=4))

    def guide(seed):
        samples = comfy.sample.sample(guided, comfy.sample.prepare_noise(batch, seed), steps, cfg, sampler, "normal",
                                      positive, negative, batch, seed=seed, disable_pbar=True)
        return samples, steps, "every 4th step to 80 %"

    modes = {
        f"plain, batch of {n} (baseline)": plain,
        f"FK {n} particles, TAESD previews": steered(SteeringPlan(mode="resample", particles=n)),
        f"pruned {n}->1, TAESD previews": steered(SteeringPlan(mode="prune", particles=n, survivors=1)),
        f"guidance scale 0.3, batch of {n}": guide,
    }
    timings = {name: [] for name in modes}
    details, peaks = {}, {}
    for repeat in range(options.repeats + 1):
        for name, function in modes.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            begun = time.perf_counter()
            with torch.inference_mode():
                samples, evaluations, plan = function(100 + repeat)
            sync()
            if repeat:
                timings[name].append((time.perf_counter() - begun) / steps)
                details[name] = (evaluations, plan)
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                if not bool(torch.isfinite(samples).all()):
                    print(f"warning: {name} returned non-finite latents (random weights in {dtype})", file=sys.stderr)

    where = (torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine())
    print(f"{'SD1.5-sized' if not options.tiny else 'tiny'} UNet ({parameters / 1e6:.0f} M), {str(dtype).replace('torch.', '')}, "
          f"{size} px, N {n}, {steps} steps, cfg {cfg}, {sampler}; CREward clip {'ViT-L/14' if not options.tiny else 'tiny'}; "
          f"{where}; torch {torch.__version__}; median of {options.repeats}")
    print(f"{'mode':<40}{'s/step':>9}{'steps/s':>9}{'vs plain':>10}{'evals/sample':>14}{'peak GiB':>10}")
    baseline = statistics.median(timings[next(iter(modes))])
    results = []
    for name in modes:
        step = statistics.median(timings[name])
        evaluations, plan = details[name]
        results.append({"mode": name, "s_per_step": step, "steps_per_s": 1 / step, "ratio": step / baseline,
                        "evaluations_per_sample": evaluations, "peak_gib": peaks[name], "plan": plan})
        print(f"{name:<40}{step:>9.4f}{1 / step:>9.2f}{step / baseline:>9.3f}x{evaluations:>14.1f}{peaks[name]:>10.2f}")
    fk = results[1]
    print(f"target (preview scoring adds <= 15 % to the step time): {'met' if fk['ratio'] <= 1.15 else 'NOT MET'}: "
          f"FK {fk['ratio'] - 1:+.1%} ({fk['plan']})")
    print(json.dumps({"device": where, "dtype": str(dtype), "tiny": options.tiny, "size": size, "particles": n,
                      "steps": steps, "unet_parameters": parameters, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
