"""Entry point of the ``creward`` command: one sub-command per entry of ``COMMANDS``.

Only the module of the command being run is imported (see ``cli.commands``), and command
modules keep their heavy imports inside ``run``: ``creward --help``, ``--version`` and usage
errors never import torch.

Exit status: 0 success; 1 an error (unreadable weights, nothing could be scored...); 2 a usage
error (argparse's own, or a :class:`~creward.cli.arguments.UsageError`), also for "no images
found"; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .arguments import EXIT_USAGE, UsageError
from .commands import Command, add_commands, command_words

_PACKAGE = __package__
LOGGER_NAME = _PACKAGE.rsplit(".", 1)[0]  # "creward": every module logs below it

# Order is the order shown in --help.
COMMANDS = (
    Command("score", f"{_PACKAGE}.score", "score images (files or folders, recursive)"),
    Command("score-dataset", f"{_PACKAGE}.score_dataset", "score a dataset (folders, Parquet/CSV lists, WebDataset shards) into Parquet; resume, filter, Ray"),
    Command("select", f"{_PACKAGE}.select", "copy the top-k most creative images into a folder with a manifest"),
    Command("calibrate", f"{_PACKAGE}.calibrate", "build a reference set (percentiles, win probabilities) from images or score files"),
    Command("explain", f"{_PACKAGE}.explain", "Grad-CAM heatmaps: which image regions drive each axis score"),
    Command("convert", f"{_PACKAGE}.convert", "convert an official reward_head_best.ckpt into a safetensors head file"),
    Command("info", f"{_PACKAGE}.info", "show what a CREward head file holds"),
    Command("download", f"{_PACKAGE}.download", "fetch a backbone's weights (and optionally a head) into the models folder"),
    Command("train", f"{_PACKAGE}.train", "build CREward weights: label pairs, cache features, fit, evaluate, creative LoRAs", group=True),
)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``creward`` parser, with the command named in ``argv`` (if any) built in full."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="creward",
        description="CREward: score how creative images are along geometry, material, texture and overall.",
        epilog="Run 'creward COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"creward {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(subparsers, COMMANDS, command_words(argv))
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (works under redirection)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _OthersHandler(_StderrHandler):
    """Warnings of other libraries' loggers (ComfyUI's, in the commands that host it), once each.

    Installed on the root logger, it also keeps ``logging.info()`` calls at import time (ComfyUI's
    ``model_management`` makes some) from installing ``basicConfig``'s handler, which would print
    every CREward line a second time.
    """

    def __init__(self):
        super().__init__()
        self.setLevel(logging.WARNING)
        self.addFilter(lambda record: not (record.name == LOGGER_NAME or record.name.startswith(LOGGER_NAME + ".")))
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def configure_logging(verbose: bool) -> None:
    """Messages on stderr as ``LEVEL: message`` (with ``--verbose`` also the logger's name); other
    libraries' warnings as ``LEVEL name: message``."""
    root = logging.getLogger()
    if not any(isinstance(handler, _OthersHandler) for handler in root.handlers):
        root.addHandler(_OthersHandler())
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler = next((handler for handler in logger.handlers if isinstance(handler, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s"))


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """What argparse does for its own errors (usage, then ``prog: error: message``), as a status."""
    parser.print_usage(sys.stderr)
    sys.stderr.write(f"{parser.prog}: error: {message}\n")
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from ..models.errors import CREwardError

    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        return usage_error(getattr(args, "command_parser", None) or parser, str(error))
    except CREwardError as error:
        logging.getLogger(LOGGER_NAME).error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
