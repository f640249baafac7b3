"""Entry point of the ``creward`` command: one sub-command per module in ``COMMAND_MODULES``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code).
Command modules keep their heavy imports inside ``run`` so ``creward --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order shown in --help.
COMMAND_MODULES = (
    "score",
    "score_dataset",
    "select",
    "calibrate",
    "explain",
    "convert",
    "info",
    "download",
    "train",
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="creward",
        description="CREward: score how creative images are along geometry, material, texture and overall.",
    )
    parser.add_argument("--version", action="version", version=f"creward {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__).register(subparsers)
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


def configure_logging(verbose: bool) -> None:
    logger = logging.getLogger(__package__.rsplit(".", 1)[0])
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from ..models.errors import CREwardError

    try:
        return int(args.func(args) or 0)
    except CREwardError as error:
        logging.getLogger("creward").error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
