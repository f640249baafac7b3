"""Command-line options shared by the commands that generate with a ComfyUI checkpoint
(``creward train lora``, ``creward train acquire``), and what they load from them.

Parsing imports neither torch nor ComfyUI; the ``load_*`` helpers do.
"""

from __future__ import annotations

import argparse


def add_comfyui_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--comfyui", required=True, metavar="PATH", help="a ComfyUI folder (main.py and comfy/ at its root)")
    add("--cpu", action="store_true", help="run ComfyUI on the CPU even when a GPU is present")
    add("--checkpoint", required=True, metavar="CKPT",
        help="checkpoint file, or a name in <comfyui>/models/checkpoints/")
    add("--vae", metavar="FILE", help="use this VAE file instead of the checkpoint's")


def add_creward_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--head", metavar="FILE", help="CREward head file (default: looked up, see `creward info`)")
    add("--backbone", metavar="NAME", help="backbone name (default: from the head file)")
    add("--backbone-weights", metavar="PATH", help="backbone weights (default: looked up)")
    add("--creward-device", default="auto", metavar="DEV", help="device of CREward: auto (default), cpu, cuda, cuda:N")
    add("--creward-dtype", default=None, metavar="DTYPE", help="CREward backbone dtype: fp32 (default), fp16, bf16, auto")


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int, steps_help: str = "sampler steps") -> None:
    add = parser.add_argument
    add("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for several)")
    add("--prompts", action="append", default=[], metavar="FILE", help="text file, one prompt per line (# comments)")
    add("--negative", metavar="TEXT", help="negative prompt for CFG (default: zeroed conditioning)")
    add("--seed", type=int, default=0, metavar="N", help="seed (default 0)")
    add("--steps", type=int, default=steps, metavar="N", help=f"{steps_help} (default {steps})")
    add("--cfg", type=float, default=7.0, metavar="S", help="CFG scale of the samples (default 7)")
    add("--sampler", default="euler", metavar="NAME", help="ComfyUI sampler name (default euler)")
    add("--scheduler", default="normal", metavar="NAME", help="ComfyUI scheduler name (default normal)")
    add("--width", type=int, default=512, metavar="PX", help="image width (default 512)")
    add("--height", type=int, default=512, metavar="PX", help="image height (default 512)")
    add("--no-progress", action="store_true", help="no progress bar")


def load_base(args: argparse.Namespace):
    """``--checkpoint`` (and ``--vae``) through ComfyUI's loader; ``setup_comfyui`` must have run."""
    from ..diffusion.host import load_checkpoint

    return load_checkpoint(args.checkpoint, getattr(args, "vae", None))


def load_creward(args: argparse.Namespace):
    from ..models.loader import load

    return load(head=args.head, backbone=args.backbone, backbone_weights=args.backbone_weights,
                device=args.creward_device, dtype=args.creward_dtype)


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    from ..diffusion.prompts import read_prompts

    return read_prompts(args.prompt, args.prompts)
