"""Memory and precision of LoRA training steps: gradient checkpointing and the compute dtype."""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint


def _checkpoint_units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Outermost submodules that are not plain containers (ComfyUI's ``TrainLoraNode`` recipe)."""
    units = []
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)):
            units += _checkpoint_units(child)
        else:
            units.append(child)
    return units


@contextlib.contextmanager
def gradient_checkpointing(*modules: torch.nn.Module | None):
    """Recompute the blocks of ``modules`` during backward instead of storing their activations."""
    patched = []
    try:
        for module in modules:
            if module is None:
                continue
            for unit in _checkpoint_units(module):
                if "forward" in unit.__dict__:  # already patched by someone else: leave it
                    continue
                original = unit.forward

                def checkpointed(*args, _original=original, **kwargs):
                    if not torch.is_grad_enabled():
                        return _original(*args, **kwargs)
                    return torch.utils.checkpoint.checkpoint(lambda a, k: _original(*a, **k), args, kwargs, use_reentrant=False)

                unit.forward = checkpointed
                patched.append(unit)
        yield len(patched)
    finally:
        for unit in patched:
            unit.__dict__.pop("forward", None)


def precision(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """Compute dtype for training: None keeps ComfyUI's own choice (``auto`` on CPU)."""
    if mixed_precision == "fp32":
        return torch.float32
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return None


def autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
