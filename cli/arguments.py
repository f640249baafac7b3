"""What every ``creward`` command uses to refuse bad settings before it loads anything.

Two tools, both ending in argparse's usage message on stderr and exit status 2:

- value types for ``add_argument(type=...)`` (``positive_int``, ``device_name``...): argparse
  calls them while parsing, so a bad value never reaches the command;
- :class:`UsageError`, raised by a command's ``run`` for what one value cannot say alone
  (options that contradict each other, an output folder that is in the way, a device this
  machine lacks). Raise it before reading any weights; ``cli.main`` prints the command's usage
  and ``<prog>: error: <message>`` and returns 2.

Nothing here imports torch: parsing and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import re

EXIT_USAGE = 2
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class UsageError(Exception):
    """A command-line setting is wrong: the message names the option and what it expects."""


def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0."""
    value = _number(text, float, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number between 0 and 1 (both included)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def percentile_value(text: str) -> float:
    """A number from 0 to 100 (both included)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentile between 0 and 100, got {text}")
    return value


def fraction_below_one(text: str) -> float:
    """A number from 0 up to, not including, 1."""
    value = _number(text, float, "a number")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to below 1, got {text}")
    return value


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether this machine has it is checked later)."""
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def axis_weights_text(text: str) -> str:
    """Four comma-separated numbers ``g,m,t,o`` (geometry, material, texture, overall), not all 0."""
    from ..models.axes import parse_weight_list

    try:
        weights = parse_weight_list(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not any(weights):
        raise argparse.ArgumentTypeError(f"every weight in {text!r} is 0: give at least one axis a weight")
    return text


def check_device(device: str, option: str = "--device") -> None:
    """Refuse, as a :class:`UsageError`, a device this machine does not have (imports torch: call
    it from a command's ``run``, before loading anything)."""
    from ..models.device import resolve_device
    from ..models.errors import CREwardError

    try:
        resolve_device(device)
    except CREwardError as error:
        raise UsageError(f"{option}: {error}") from None
