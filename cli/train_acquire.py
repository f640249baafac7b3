"""``creward train acquire``: generate N samples per prompt with a ComfyUI checkpoint, score them
with CREward and keep the most (and least) creative per axis (``diffusion.acquire``).

Parsing imports neither torch nor ComfyUI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.errors import CREwardError
from .arguments import UsageError
from .generation_args import (
    add_comfyui_arguments, add_creward_arguments, add_sampling_arguments, load_base, load_creward, prompts_from_args,
)
from .steering_args import add_steering_arguments, check_steer_axis, guidance_from_args, plan_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "acquire",
        help="generate N samples per prompt with a ComfyUI checkpoint, keep the most creative per axis",
        description="Generate samples with a ComfyUI checkpoint, score them with CREward and keep the top-k "
        "(and bottom-k) per prompt and axis in a browsable folder (index.html, contact sheet, manifest, "
        "latents). Needs a ComfyUI folder (--comfyui).",
    )
    add = parser.add_argument
    add_comfyui_arguments(parser)
    add_creward_arguments(parser)
    add("-o", "--output", required=True, metavar="DIR", help="folder to write (must be empty or new unless --overwrite)")
    add("--overwrite", action="store_true", help="write into a folder that already holds files")
    add("-n", "--samples-per-prompt", type=int, default=16, metavar="N", help="samples generated per prompt (default 16)")
    add("--top-k", type=int, default=4, metavar="K", help="kept per prompt and axis, most creative (default 4)")
    add("--bottom-k", type=int, default=0, metavar="K", help="also kept, least creative (default 0)")
    add("--batch-size", type=int, default=4, metavar="B", help="samples per sampler call (default 4)")
    add_sampling_arguments(parser, steps=20)
    add_steering_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..diffusion.acquire import CONTACT_SHEET, INDEX, AcquireSettings, acquire_samples
    from ..diffusion.host import setup_comfyui

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--output {out} is not empty; choose a new folder or pass --overwrite")
    # every setting is checked before anything is loaded
    try:
        settings = AcquireSettings(
            samples_per_prompt=args.samples_per_prompt, top_k=args.top_k, bottom_k=args.bottom_k, seed=args.seed,
            steps=args.steps, cfg=args.cfg, sampler_name=args.sampler, scheduler=args.scheduler,
            width=args.width, height=args.height, batch_size=args.batch_size,
        )
    except CREwardError as error:
        raise UsageError(str(error)) from None
    check_steer_axis(args)
    plan = plan_from_args(args, args.steps)
    guidance = guidance_from_args(args)
    setup_comfyui(args.comfyui, args.cpu)
    prompts = prompts_from_args(args)
    base = load_base(args)
    creward = load_creward(args)
    from tqdm.auto import tqdm

    from ..diffusion.prompts import encode_prompts

    positive = encode_prompts(base.clip, prompts)
    negative = encode_prompts(base.clip, [args.negative])[0] if args.negative is not None else None
    steered = None
    if plan is not None or guidance is not None:
        from ..diffusion.creative_sampling import SteeredGeneration, reward_builder
        from ..diffusion.reward import RewardSpec

        spec = RewardSpec.parse(args.steer_axis, creward.axes)
        builder = reward_builder(creward, spec, args.preview_decoder, base.vae, args.batch_size)
        steered = SteeredGeneration(base.model, base.vae, args.width, args.height, args.steps, args.cfg, args.sampler,
                                    args.scheduler, builder, plan=plan, guidance=guidance)
    with tqdm(total=len(prompts) * settings.samples_per_prompt, desc="acquire", disable=args.no_progress) as bar:
        result = acquire_samples(
            base.model, base.vae, positive, prompts,
            lambda images: creward.score(images, batch_size=args.batch_size, channels_last=True),
            creward.axes, out, settings, negative=negative,
            on_progress=lambda done, total: bar.update(done - bar.n),
            checkpoint_name=base.name, head_name=str(args.head or ""),
            make_latents=steered, generation=steered.describe() if steered is not None else None,
        )
    if steered is not None and steered.lineage:
        from ..models.output_files import write_text_atomically

        write_text_atomically(out / "lineage.txt", "\n\n".join(steered.lineage) + "\n")
    print(f"{len(result.manifest['samples'])} samples; open {result.folder / INDEX} (contact sheet {result.folder / CONTACT_SHEET})")
    return 0
