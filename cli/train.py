"""``creward train <step>``: the steps of building CREward weights (see ``creward.train``).

Each step module exposes ``register(subparsers)`` like the top-level commands; they are listed
in ``TRAIN_STEPS`` and, as there, only the chosen step's module is imported.
"""

from __future__ import annotations

from typing import Sequence

from .commands import Command, add_commands

_TRAIN_PACKAGE = __package__.rsplit(".", 1)[0] + ".train"

TRAIN_STEPS = (
    Command("label", f"{_TRAIN_PACKAGE}.label", "ask an LVLM which image of each pair is more creative per axis (JSONL labels)"),
    Command("features", f"{_TRAIN_PACKAGE}.features", "run the frozen backbone once per pair image and cache the features"),
    Command("fit", f"{_TRAIN_PACKAGE}.fit", "train the reward head on labelled pairs (Bradley-Terry, backbone frozen)"),
    Command("eval", f"{_TRAIN_PACKAGE}.evaluate", "pairwise accuracy of a head per axis on labelled pairs (+ human-set metrics, report)"),
    Command("lora", f"{__package__}.train_lora", "train a creative LoRA: reward-guided fine-tuning of a ComfyUI checkpoint with CREward"),
    Command("acquire", f"{__package__}.train_acquire", "generate N samples per prompt with a ComfyUI checkpoint, keep the most creative per axis"),
)


def register(subparsers, words: Sequence[str] = ()) -> None:
    parser = subparsers.add_parser(
        "train",
        description="Build CREward weights: label pairs with an LVLM, cache backbone features, fit and evaluate a head; "
        "train creative LoRAs and acquire creative samples with a ComfyUI checkpoint.",
        epilog="Run 'creward train STEP --help' for a step's options.",
    )
    steps = parser.add_subparsers(dest="train_step", metavar="STEP")
    add_commands(steps, TRAIN_STEPS, words)

    def print_help(args) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=print_help)
