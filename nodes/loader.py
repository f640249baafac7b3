"""``CREwardLoader``: head + backbone weights → a ``CREWARD`` model.

Loaded once: the executor's cache keeps the output while the inputs stay the same, so later runs
(new images, other settings downstream) reuse it. No module-level cache.
"""

from __future__ import annotations

import logging
import time

import torch

from ..models.backbones.registry import available_backbones, get_spec, load_backbone
from ..models.device import DTYPES, precision_note
from ..models.errors import CREwardError, WeightsError
from ..models.head import load_head, read_head_file
from ..models.model import CREward
from . import model_folders
from .managed_model import ManagedCREward

logger = logging.getLogger(__name__)

CATEGORY = "CREward"
UI_KEY = "creward_loaded"  # what was loaded, in which precision: shown on the node by web/creward.js
AUTO = "auto"
DEVICES = (AUTO, "cpu")
DTYPE_CHOICES = (AUTO, *DTYPES)


def choose_devices(device: str) -> tuple[torch.device, torch.device]:
    """``auto``: ComfyUI's main device, offloaded like CLIP vision models; ``cpu``: CPU only."""
    import comfy.model_management as model_management

    if device == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    if device != AUTO:
        raise CREwardError(f"device: unknown choice {device!r}; expected one of {', '.join(DEVICES)}")
    return model_management.get_torch_device(), model_management.text_encoder_offload_device()


def choose_dtype(dtype: str, load_device: torch.device) -> torch.dtype:
    """``auto``: bf16 or fp16 where ComfyUI says the device runs them well, else fp32 (always fp32 on CPU)."""
    import comfy.model_management as model_management

    if dtype != AUTO:
        if dtype not in DTYPES:
            raise CREwardError(f"dtype: unknown choice {dtype!r}; expected one of {', '.join(DTYPE_CHOICES)}")
        if load_device.type == "cpu" and dtype != "fp32":
            logger.warning("CREward in %s on the CPU is slow and less precise; fp32 is the CPU default", dtype)
        return DTYPES[dtype]
    if model_management.is_device_cpu(load_device):
        return torch.float32
    if model_management.should_use_bf16(load_device):
        return torch.bfloat16
    if model_management.should_use_fp16(load_device):
        return torch.float16
    return torch.float32


def _head_path(head: str) -> str:
    path = model_folders.head_path(head) if head else None
    if path is None:
        available = model_folders.list_heads()
        raise WeightsError(
            f"head: {head!r} not found in {', '.join(model_folders.head_folders())} (available heads: "
            f"{available or 'none; put a CREward head there, see the README'})"
        )
    return path


class CREwardLoader:
    """Load a CREward head and its backbone."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "head": (model_folders.list_heads(), {
                    "tooltip": "The reward head in models/creward/ (a .safetensors head written by CREward, or the "
                    "official reward_head_best.ckpt together with 'backbone'). Only files that are heads are listed.",
                }),
                "backbone": ([AUTO, *available_backbones()], {
                    "default": AUTO,
                    "tooltip": "The backbone the head was trained on. 'auto' reads it from the head file (official "
                    ".ckpt heads carry no name: choose it here).",
                }),
                "backbone_weights": (model_folders.list_backbone_weights(), {
                    "default": AUTO,
                    "tooltip": "The backbone's weights: a file or Hugging Face folder in models/creward/backbones/, "
                    "or a file in models/clip_vision/ (clip_vision_l.safetensors is the 'clip' backbone). 'auto' "
                    "looks for the backbone's usual names there. Ignored when clip_vision is connected.",
                }),
                "device": (list(DEVICES), {
                    "default": AUTO,
                    "tooltip": "'auto': ComfyUI's device (GPU if any), offloaded when idle like other models; "
                    "'cpu': always on the CPU.",
                }),
                "dtype": (list(DTYPE_CHOICES), {
                    "default": AUTO,
                    "tooltip": "Backbone compute precision. fp32 gives the official numbers. 'auto': bf16/fp16 on GPUs "
                    "that run them well (faster; scores differ slightly), fp32 on the CPU. The head always runs in fp32. "
                    "The precision in use is shown on the node after it runs.",
                }),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "Optional: a CLIP vision model from Load CLIP Vision to use as the 'clip' backbone "
                    "(OpenAI ViT-L/14, clip_vision_l.safetensors). CREward keeps its own preprocessing (resize to "
                    "224, no crop).",
                }),
            },
        }

    RETURN_TYPES = ("CREWARD",)
    RETURN_NAMES = ("creward",)
    OUTPUT_TOOLTIPS = ("The CREward model (backbone + head), for the CREward scoring and selection nodes.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads CREward, a creativity reward model scoring images on geometry, material, texture and overall "
        "creativity. Heads go in models/creward/, backbone weights in models/creward/backbones/ (or "
        "models/clip_vision/ for the clip backbone)."
    )
    SEARCH_ALIASES = ["creativity", "reward model", "aesthetic score"]

    @classmethod
    def VALIDATE_INPUTS(cls, head=None):
        # Replaces ComfyUI's "value not in list" check for `head` with one that says what is wrong
        # (ComfyUI shows it as "head - <message>"). backbone_weights keeps the usual list check.
        if head is not None:
            try:
                read_head_file(_head_path(head))
            except CREwardError as error:
                return str(error).removeprefix("head: ")
        return True

    def load(self, head, backbone, backbone_weights, device, dtype, clip_vision=None):
        started = time.perf_counter()
        head_file = _head_path(head)
        try:
            head_module, info = load_head(head_file, None if backbone == AUTO else backbone)
        except WeightsError as error:
            raise WeightsError(f"head: {error}") from error
        if info.backbone is None:
            raise WeightsError(
                f"head: {head} does not say which backbone it was trained on (official .ckpt heads carry no name): "
                f"choose it in 'backbone' ({', '.join(available_backbones())})"
            )
        spec = get_spec(info.backbone)
        load_device, offload_device = choose_devices(device)
        compute_dtype = choose_dtype(dtype, load_device)
        if clip_vision is not None:
            if spec.name != "clip":
                raise WeightsError(
                    f"clip_vision: a CLIP vision model can only stand in for the 'clip' backbone, but head {head} "
                    f"was trained on {spec.name!r}; disconnect clip_vision or choose a clip head"
                )
            from .clip_vision import backbone_from_clip_vision

            backbone_module, source = backbone_from_clip_vision(clip_vision, spec, info.feature_dim)
        else:
            if backbone_weights == AUTO:
                weights_path = model_folders.find_backbone_auto(spec)
            else:
                weights_path = model_folders.resolve_backbone_choice(backbone_weights)
            logger.info("CREward: loading backbone %s from %s", spec.name, weights_path)
            try:
                backbone_module = load_backbone(spec.name, weights_path, dtype=compute_dtype)  # built in its compute dtype: no fp32 copy at peak
            except WeightsError as error:
                raise WeightsError(f"backbone_weights: {error}") from error
            source = str(weights_path)
        model = CREward(backbone_module, head_module, info, spec, backbone_source=source)
        precision = precision_note(compute_dtype, "dtype fp32")
        description = f"{spec.name} head {head} + backbone {source} on {load_device}, {precision}"
        logger.info("CREward loaded in %.2f s: %s", time.perf_counter() - started, description)
        shown = f"{spec.name} on {load_device}, {precision}"
        return {"ui": {UI_KEY: [{"text": shown}]}, "result": (ManagedCREward(model, load_device, offload_device, compute_dtype, description),)}
