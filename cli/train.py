"""``creward train <step>``: the steps of building CREward weights (see ``creward.train``).

Each step module in ``creward.train`` exposes ``register(subparsers)`` like the top-level
commands; they are listed in ``TRAIN_STEPS``.
"""

from __future__ import annotations

import importlib

_TRAIN_PACKAGE = __package__.rsplit(".", 1)[0] + ".train"

TRAIN_STEPS = (
    "label",
    "features",
    "fit",
    "evaluate",
    "lora.cli",
    "acquire",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="build CREward weights: label pairs, cache features, fit, evaluate, creative LoRAs")
    steps = parser.add_subparsers(dest="train_step", metavar="STEP")
    for name in TRAIN_STEPS:
        importlib.import_module(f"{_TRAIN_PACKAGE}.{name}").register(steps)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
