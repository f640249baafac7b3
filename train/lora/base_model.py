"""Which base model a LoRA belongs to: architecture name plus a small weight signature.

A MODEL in ComfyUI carries no file name, so a LoRA records (1) the architecture (the model
config class ComfyUI detected, ``SD15``, ``SDXL``, ``Flux`` ...) and (2) a signature: mean and
standard deviation of eight base weights spread over the diffusion model. Means and deviations
survive dtype changes (a checkpoint loaded in fp16 on one machine and fp32 on another), so the
comparison is by tolerance, not by hash. Weights already patched by other LoRAs are read from
the patcher's backup, so a chain of LoRA loaders does not look like another base model.

Imports nothing from ComfyUI itself, but takes ComfyUI ``ModelPatcher`` objects.
"""

from __future__ import annotations

import math

import torch

SIGNATURE_TENSORS = 8
RELATIVE_TOLERANCE = 0.02


def architecture(model_patcher) -> str:
    return type(model_patcher.model.model_config).__name__


def _base_weight(model_patcher, key: str, state: dict) -> torch.Tensor:
    base = model_patcher.model
    for patcher in (getattr(base, "current_patcher", None), model_patcher):
        backup = getattr(patcher, "backup", None) or {}
        if key in backup:
            return backup[key].weight
    return state[key]


def signature(model_patcher) -> list[list]:
    """``[[key, mean, std], ...]`` for eight diffusion-model weights (every key with ndim >= 2, evenly spaced)."""
    state = model_patcher.model.state_dict()
    keys = sorted(key for key, value in state.items() if key.startswith("diffusion_model.") and value.ndim >= 2)
    if not keys:
        return []
    count = min(SIGNATURE_TENSORS, len(keys))
    picks = sorted({round(i * (len(keys) - 1) / max(count - 1, 1)) for i in range(count)})
    result = []
    with torch.no_grad():
        for index in picks:
            key = keys[index]
            weight = _base_weight(model_patcher, key, state).float()
            result.append([key, float(weight.mean()), float(weight.std()) if weight.numel() > 1 else 0.0])
    return result


def signature_matches(stored: list, current: list) -> bool:
    """True when every stored tensor is present with close mean and deviation."""
    if not stored:
        return True
    current_by_key = {entry[0]: entry[1:] for entry in current}
    for key, mean, std in stored:
        if key not in current_by_key:
            return False
        cur_mean, cur_std = current_by_key[key]
        scale = max(abs(std), abs(cur_std), 1e-8)
        if not (math.isclose(std, cur_std, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-7)
                and abs(mean - cur_mean) <= RELATIVE_TOLERANCE * scale + 1e-7):
            return False
    return True
