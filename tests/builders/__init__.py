"""Tiny random weights in the exact formats users have, built by the tests (nothing downloaded).

One module per backbone family (``tests/builders/<module>.py``) exposes ``FORMATS`` and
``build(folder, fmt) -> path`` (the path to pass as ``backbone_weights``).
``build_backbone_weights(name, folder, fmt=None)`` dispatches by registry name; without ``fmt``
it writes the backbone's primary user format.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PRIMARY_FORMAT = {"clip": "hub", "siglip2": "hub", "siglip-gemma3": "hub", "dino3": "hub", "vgg16": "pth"}


def build_backbone_weights(name: str, folder: str | Path, fmt: str | None = None) -> Path:
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return module.build(folder, fmt or PRIMARY_FORMAT[name])
