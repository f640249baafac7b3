"""CREward core: plain PyTorch, no ComfyUI.

Public API::

    from creward.models import load, available_backbones, AXES
    model = load(head="creward_clip.safetensors", backbone_weights="clip-vit-large-patch14/")
    scores = model.score(images)   # [N, 4] float32: geometry, material, texture, overall

The names below are imported on first use (PEP 562), so that importing a light submodule
(``creward.models.axes``, ``creward.models.backbones.registry``) does not import torch: the
command line parses its arguments and prints ``--help`` without it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AXES": ".axes",
    "axis_index": ".axes",
    "axis_weights": ".axes",
    "available_backbones": ".backbones.registry",
    "get_spec": ".backbones.registry",
    "CREwardError": ".errors",
    "ImageError": ".errors",
    "MissingDependencyError": ".errors",
    "WeightsError": ".errors",
    "load": ".loader",
    "CREward": ".model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
