"""Applying creative LoRAs with signed per-axis strengths, warning about mismatched bases.

Each LoRA goes through ComfyUI's own ``comfy.sd.load_lora_for_models`` (what ``LoraLoader``
does), so a creative LoRA behaves exactly like any LoRA file. A negative strength subtracts the
update: a LoRA trained to raise texture creativity lowers it. Strength 0 skips the file
entirely, so the model is the base model bit for bit.

Imports ComfyUI: only import this module where ``comfy`` is importable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import comfy.sd
import comfy.utils

from . import base_model
from .export import LoraInfo, read_lora_info

logger = logging.getLogger(__name__)


@dataclass
class AppliedLora:
    slot: str
    path: str
    strength: float
    info: LoraInfo
    warnings: list[str] = field(default_factory=list)


def check_lora(info: LoraInfo, model, slot: str | None = None, model_signature: list | None = None) -> list[str]:
    """Warnings about applying the LoRA described by ``info`` to ``model`` (empty when all fits)."""
    name = os.path.basename(info.path)
    if not info.is_creward:
        return [f"{name} is not a CREward creative LoRA (no creward metadata): applied as a plain LoRA"]
    warnings = []
    current = base_model.architecture(model)
    if info.base_architecture and info.base_architecture != current:
        warnings.append(
            f"{name} was trained on a {info.base_architecture} model ({info.base_model or 'unnamed'}) but this model "
            f"is {current}: its keys will mostly not load"
        )
    elif info.base_signature:
        signature = model_signature if model_signature is not None else base_model.signature(model)
        if not base_model.signature_matches(info.base_signature, signature):
            warnings.append(
                f"{name} was trained on a different {current} base model ({info.base_model or 'unnamed checkpoint'}); "
                f"it loads, but its effect on this model may differ"
            )
    if slot and slot in info.axis_weights and info.primary_axis not in ("", slot, "mix"):
        warnings.append(f"{name} was trained for the {info.primary_axis} axis but sits in the {slot} slot")
    return warnings


def apply_creative_loras(model, clip, entries, cache: dict | None = None):
    """Apply ``entries`` = ``[(slot, path or None, strength), ...]`` in order.

    Returns ``(model, clip, applied)`` where ``applied`` lists ``AppliedLora`` with their
    warnings (also logged). ``cache`` (a dict the caller keeps) avoids re-reading unchanged files.
    """
    applied = []
    signature = None
    for slot, path, strength in entries:
        if not path or strength == 0:
            continue
        info = read_lora_info(path)
        if signature is None and info.base_signature:
            signature = base_model.signature(model)
        warnings = check_lora(info, model, slot, signature)
        for warning in warnings:
            logger.warning("creative LoRA (%s slot): %s", slot, warning)
        tensors = _load(path, cache)
        model, clip = comfy.sd.load_lora_for_models(model, clip, tensors, strength, strength if clip is not None else 0)
        applied.append(AppliedLora(slot, path, strength, info, warnings))
    return model, clip, applied


def _load(path: str, cache: dict | None):
    stamp = os.stat(path).st_mtime_ns
    if cache is not None and path in cache and cache[path][0] == stamp:
        return cache[path][1]
    tensors = comfy.utils.load_torch_file(path, safe_load=True)
    if cache is not None:
        cache[path] = (stamp, tensors)
    return tensors


def describe(applied: list[AppliedLora]) -> str:
    """One line per applied LoRA (with its warnings), for the node's text output."""
    if not applied:
        return "no creative LoRA applied (all slots None or strength 0): the base model"
    lines = []
    for entry in applied:
        lines.append(f"{entry.slot}: {entry.strength:+.2f} x {entry.info.describe()}")
        lines += [f"  warning: {warning}" for warning in entry.warnings]
    return "\n".join(lines)
