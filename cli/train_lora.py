"""``creward train lora``: train a creative LoRA on a ComfyUI checkpoint.

Example::

    creward train lora --comfyui ~/ComfyUI --checkpoint v1-5-pruned-emaonly.safetensors \\
        --prompts chairs.txt --axis texture --lambda 1.0 --rank 8 --steps 500 \\
        --head creward_siglip-gemma3.safetensors --backbone-weights gemma-3-4b-it/

The checkpoint is loaded by ComfyUI's ``load_checkpoint_guess_config`` (SD1.x, SDXL and the other
architectures ComfyUI detects); the LoRA is written to ``<comfyui>/models/loras/`` unless
``--output`` says otherwise, and the run (checkpoints, pool, reward curve) to
``<comfyui>/output/creward_lora_runs/<name>/``; running the same command again resumes it.

This module imports without torch or ComfyUI (argument parsing); ComfyUI is imported after
``diffusion.host.setup_comfyui`` put its folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..models.errors import CREwardError
from .arguments import UsageError
from .generation_args import (
    add_comfyui_arguments, add_creward_arguments, add_sampling_arguments, load_base, load_creward, prompts_from_args,
)

logger = logging.getLogger(__name__)

RUNS_FOLDER = "creward_lora_runs"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lora",
        help="train a creative LoRA: reward-guided fine-tuning of a ComfyUI checkpoint with CREward",
        description="Reward-guided LoRA training (the CREward paper's creative LoRAs): loss = -sum_c w_c "
        "CREward_c(decode(x0_hat)) + lambda * ||x0_hat - x0||^2 with the model's one-step clean estimate x0_hat. "
        "Resumes when run again with the same settings.",
    )
    add = parser.add_argument
    add_comfyui_arguments(parser)
    add_creward_arguments(parser)
    add_sampling_arguments(parser, steps=500, steps_help="training (optimiser) steps")
    add("--axis", default="overall", metavar="SPEC",
        help="axis to make more creative: geometry, material, texture, overall, or a mix such as "
        "'geometry=1,texture=0.5' or '1,0,0.5,0' (negative = less creative); default overall")
    add("--lambda", dest="denoise_weight", type=float, default=1.0, metavar="L",
        help="weight of the denoising term (default 1.0; 0 = reward only)")
    add("--rank", type=int, default=8, help="LoRA rank (default 8)")
    add("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1)")
    add("--lr", type=float, default=1e-4, metavar="LR", help="learning rate (default 1e-4)")
    add("--batch-size", type=int, default=1, metavar="B", help="samples per step (default 1)")
    add("--targets", default="attention", choices=("attention", "linear", "all"),
        help="layers with a LoRA: attention (default), linear, all (linear + conv)")
    add("--timestep-range", nargs=2, type=float, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
        help="part of the schedule noise levels are drawn from, 0 = pure noise, 1 = clean (default 0 1)")
    add("--no-gradient-checkpointing", action="store_true", help="store activations instead of recomputing them")
    add("--mixed-precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
        help="training compute dtype (default auto: bf16 on GPUs that have it, fp32 on the CPU)")
    add("--checkpoint-every", type=int, default=50, metavar="N", help="checkpoint every N steps (default 50)")
    add("--keep-checkpoints", type=int, default=2, metavar="N", help="checkpoints kept (default 2)")
    add("--eval-every", type=int, default=0, metavar="N", help="held-out evaluation every N steps (default: at checkpoints)")
    add("--eval-seeds", type=int, default=2, metavar="N", help="held-out samples per prompt (default 2; 0 = no evaluation)")
    add("--eval-steps", type=int, default=20, metavar="N", help="sampler steps of the held-out samples (default 20)")
    add("--samples-per-prompt", type=int, default=2, metavar="N",
        help="base-model samples per prompt in the training pool (default 2)")
    add("--sample-steps", type=int, default=20, metavar="N", help="sampler steps of the pool samples (default 20)")
    add("--pool", metavar="DIR", help="train from the latents a `creward train acquire` folder kept (its prompts)")
    add("--pool-axis", metavar="AXIS", help="which axis' selections of --pool (default: --axis if it is one axis)")
    add("--pool-which", default="top", choices=("top", "bottom"), help="top (default) or bottom selections of --pool")
    add("--max-grad-norm", type=float, default=1.0, metavar="N", help="gradient clipping (default 1; 0 = off)")
    add("--weight-decay", type=float, default=0.0, metavar="W", help="AdamW weight decay (default 0)")
    add("--save-dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="dtype of the exported LoRA (default fp16)")
    add("-o", "--output", metavar="FILE", help="LoRA file to write (default <comfyui>/models/loras/creward_<axis>_<checkpoint>.safetensors)")
    add("--run-dir", metavar="DIR", help="run folder (default <comfyui>/output/creward_lora_runs/<lora name>)")
    add("--restart", action="store_true", help="start over instead of resuming the run in --run-dir")
    parser.set_defaults(func=_run)


def _config(args: argparse.Namespace, width: int, height: int):
    from ..train.lora.config import CreativeLoraConfig

    return CreativeLoraConfig(
        axis_weights=args.axis, denoise_weight=args.denoise_weight, rank=args.rank,
        alpha=float(args.alpha if args.alpha is not None else args.rank), learning_rate=args.lr, steps=args.steps,
        batch_size=args.batch_size, seed=args.seed, width=width, height=height, targets=args.targets,
        timestep_range=tuple(args.timestep_range), gradient_checkpointing=not args.no_gradient_checkpointing,
        mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, eval_every=args.eval_every, eval_seeds=args.eval_seeds,
        eval_steps=args.eval_steps, samples_per_prompt=args.samples_per_prompt, sample_steps=args.sample_steps,
        cfg=args.cfg, sampler_name=args.sampler, scheduler=args.scheduler, max_grad_norm=args.max_grad_norm,
        weight_decay=args.weight_decay, save_dtype=args.save_dtype,
    )


def _run(args: argparse.Namespace) -> int:
    from ..diffusion.host import setup_comfyui

    try:  # every setting is checked before anything is loaded (the pool's image size is checked again below)
        _config(args, args.width, args.height)
    except CREwardError as error:
        raise UsageError(str(error)) from None
    root = setup_comfyui(args.comfyui, args.cpu)
    latents = prompt_index = None
    if args.pool:
        from ..diffusion.acquire import read_acquired_pool
        from ..train.lora.config import normalize_axis_weights

        axis = args.pool_axis
        if axis is None:
            weights = normalize_axis_weights(args.axis)
            used = [name for name, value in weights.items() if value != 0]
            if len(used) != 1:
                raise UsageError("--pool with a mix of axes: say which selections to use with --pool-axis")
            axis = used[0]
        latents, prompts, prompt_index = read_acquired_pool(args.pool, axis, args.pool_which)
        logger.info("training from %d %s-%s latents of %s", len(latents), args.pool_which, axis, args.pool)
    else:
        prompts = prompts_from_args(args)
    from ..diffusion.prompts import encode_prompts, slug
    from ..train.lora.trainer import train_creative_lora

    base = load_base(args)
    creward = load_creward(args)
    width, height = args.width, args.height
    if latents is not None:
        factor = base.vae.spacial_compression_decode()
        height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
    config = _config(args, width, height)
    positive = encode_prompts(base.clip, prompts)
    negative = encode_prompts(base.clip, [args.negative])[0] if args.negative is not None else None
    name = f"creward_{slug(config.primary_axis())}_{slug(Path(base.name).stem)}"
    output = Path(args.output) if args.output else root / "models" / "loras" / f"{name}.safetensors"
    run_dir = Path(args.run_dir) if args.run_dir else root / "output" / RUNS_FOLDER / output.stem
    result = train_creative_lora(
        base.model, base.vae, creward, positive, config, run_dir, output=output, prompts=prompts, negative=negative,
        latents=latents, base_name=base.name, head_name=Path(creward.head_info.path or "").name,
        resume=not args.restart, progress=not args.no_progress, latent_prompt_index=prompt_index,
    )
    before, after = result.reward_before, result.reward_after
    change = f"{before:.4f} -> {after:.4f}" if before is not None and after is not None else "not evaluated"
    print(f"creative LoRA: {result.lora_path} ({result.steps} steps; held-out mean reward {change}); "
          f"run folder {result.run_dir} (reward curve {result.run_dir / 'reward_curve.png'})")
    return 0
