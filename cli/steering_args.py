"""``--steer`` options of the commands that generate (``creward train acquire``): creativity
steering while sampling (``diffusion.steering_sampler``, ``diffusion.guidance``).

Parsing and ``plan_from_args`` / ``guidance_from_args`` import neither torch nor ComfyUI
(``diffusion.steering_plan`` and ``diffusion.guidance`` are imported only when steering is asked),
and every setting is checked before anything is loaded: bad ones are usage errors (exit 2).
"""

from __future__ import annotations

import argparse

from .arguments import UsageError, non_negative_float, positive_float, positive_int, unit_interval

STEER_CHOICES = ("none", "resample", "prune", "guide")


def add_steering_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "creativity steering while sampling",
        "resample: FK steering (N particles resampled by their reward at checkpoints; needs an ancestral/SDE sampler, "
        "else it prunes); prune: early-pruned best-of-N; guide: reward-gradient guidance of each step's clean estimate.",
    )
    add = group.add_argument
    add("--steer", default="none", choices=STEER_CHOICES, help="steering method (default none: plain sampling)")
    add("--steer-axis", default="overall", metavar="SPEC",
        help="reward to steer toward: an axis, or a mix such as 'geometry=1,texture=0.5' (default overall)")
    add("--particles", type=positive_int, default=4, metavar="N", help="resample/prune: particles per sample (default 4)")
    add("--survivors", type=positive_int, default=1, metavar="M", help="prune: particles left after the last checkpoint (default 1)")
    add("--potential", default="sum", choices=("sum", "diff", "max"), help="resample: FK potential (default sum)")
    add("--fk-lambda", type=positive_float, default=10.0, metavar="L", help="resample: FK temperature lambda (default 10)")
    add("--checkpoint-every", type=positive_int, default=4, metavar="K", help="a checkpoint every K steps (default 4)")
    add("--checkpoint-steps", metavar="LIST", help="explicit checkpoint steps, e.g. 4,8,12 (0-based; overrides --checkpoint-every)")
    add("--steer-start", type=unit_interval, default=None, metavar="P",
        help="start of the steered part of the schedule, 0..1 (default 0.2 for resample/prune, 0 for guide)")
    add("--steer-end", type=unit_interval, default=0.8, metavar="P", help="end of the steered part, 0..1 (default 0.8)")
    add("--preview-decoder", default="auto", choices=("auto", "taesd", "vae"),
        help="decoder of the clean estimates: auto (TAESD from <comfyui>/models/vae_approx if present, else the VAE)")
    add("--guidance-scale", type=non_negative_float, default=0.1, metavar="S",
        help="guide: step size in latent units per guided step (default 0.1)")
    add("--guidance-every", type=positive_int, default=1, metavar="K", help="guide: every K-th step of the range (default 1)")
    add("--guidance-weighting", default="noise fraction", choices=("noise fraction", "constant", "sigma"),
        help="guide: sigma-dependent weight (default 'noise fraction' = sigma^2/(sigma^2+1))")
    add("--max-grad-rms", type=non_negative_float, default=1.0, metavar="G", help="guide: gradient clipping (default 1; 0 = off)")
    add("--raw-gradient", action="store_true", help="guide: use the raw gradient (clipped) instead of normalising it")


def plan_from_args(args: argparse.Namespace, steps: int, keep: int = 1):
    """The ``SteeringPlan`` of ``--steer resample|prune`` (None otherwise), checked against ``steps``."""
    if args.steer not in ("resample", "prune"):
        return None
    from ..diffusion.steering_plan import SteeringPlan, parse_checkpoint_steps
    from ..models.errors import CREwardError

    try:
        steps_list = parse_checkpoint_steps(args.checkpoint_steps)
    except CREwardError as error:
        raise UsageError(f"--checkpoint-steps: {error}") from None
    try:
        plan = SteeringPlan(
            mode=args.steer, particles=args.particles, keep=keep, survivors=args.survivors,
            potential=args.potential, temperature=args.fk_lambda, checkpoint_steps=steps_list,
            every=args.checkpoint_every, start_percent=0.2 if args.steer_start is None else args.steer_start,
            end_percent=args.steer_end, seed=0,
        )
        plan.checkpoints(steps)
    except CREwardError as error:
        raise UsageError(f"--steer {args.steer}: {error}") from None
    return plan


def guidance_from_args(args: argparse.Namespace):
    """The ``GuidanceSettings`` of ``--steer guide`` (None otherwise)."""
    if args.steer != "guide":
        return None
    from ..diffusion.guidance import GuidanceSettings
    from ..models.errors import CREwardError

    try:
        return GuidanceSettings(
            scale=args.guidance_scale, start_percent=0.0 if args.steer_start is None else args.steer_start,
            end_percent=args.steer_end, every=args.guidance_every, weighting=args.guidance_weighting,
            max_grad_rms=args.max_grad_rms, normalize=not args.raw_gradient,
        )
    except CREwardError as error:
        raise UsageError(f"--steer guide: {error}") from None


def check_steer_axis(args: argparse.Namespace) -> None:
    """``--steer-axis`` names axes CREward has (before loading: the four standard axes)."""
    if args.steer == "none":
        return
    from ..diffusion.reward import RewardSpec
    from ..models.errors import CREwardError

    try:
        RewardSpec.parse(args.steer_axis)
    except CREwardError as error:
        raise UsageError(f"--steer-axis: {error}") from None
