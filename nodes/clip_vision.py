"""Reuse a ComfyUI ``CLIP_VISION`` (from Load CLIP Vision) as CREward's ``clip`` backbone.

ComfyUI's CLIP vision model keeps transformers-style tensors (``vision_model.*``,
``visual_projection.weight``). We take its state dict and build our own ``clip`` backbone from
it, so the features are exactly those of the official path: OpenAI ViT-L/14 ``pooler_output``
(post-layernorm CLS before the projection) on images resized to 224x224 without cropping
(ComfyUI's own ``encode_image`` centre-crops, which is not what the head was trained on).

Accepted: a CLIP ViT (class token, pre-layernorm) with 14-pixel patches at 224 px whose width is
the head's feature width: for the official ``clip`` head (1024-wide) that is exactly ViT-L/14
(``clip_vision_l.safetensors``); ViT-H/14, ViT-bigG/14 (other widths), SigLIP (no class token),
DINOv2 (other keys) and 336-px models are refused with a message saying so.

The weights are those ComfyUI holds: on a CPU ComfyUI keeps CLIP vision in float16, so the
backbone gets the float16 values (the same as reading an fp16 ``clip_vision_l.safetensors``).
The copy costs the backbone's memory once more (about 0.6 GB in fp16 for ViT-L/14).
"""

from __future__ import annotations

import logging

import torch

from ..models.backbones.base import Backbone
from ..models.backbones.registry import BackboneSpec
from ..models.errors import WeightsError

logger = logging.getLogger(__name__)

PREFIX = "vision_model."
PATCH = 14
IMAGE_SIZE = 224


def _state_dict(clip_vision) -> dict[str, torch.Tensor]:
    if hasattr(clip_vision, "get_sd"):
        state = clip_vision.get_sd()
    elif hasattr(clip_vision, "model") and hasattr(clip_vision.model, "state_dict"):
        state = clip_vision.model.state_dict()
    else:
        raise WeightsError(f"clip_vision: expected a CLIP_VISION from ComfyUI's Load CLIP Vision, got {type(clip_vision).__name__}")
    return {key[len(PREFIX):]: value for key, value in state.items() if key.startswith(PREFIX)}


def describe(state: dict[str, torch.Tensor]) -> str:
    patch = state.get("embeddings.patch_embedding.weight")
    layers = {key.split(".")[2] for key in state if key.startswith("encoder.layers.")}
    if patch is None:
        return "a vision model without a patch embedding"
    return f"a ViT with {len(layers)} layers, width {patch.shape[0]}, {patch.shape[-1]}-px patches"


def backbone_from_clip_vision(clip_vision, spec: BackboneSpec, feature_dim: int) -> tuple[Backbone, str]:
    """Build the ``clip`` backbone from a ComfyUI CLIP_VISION; returns it and a description.

    Raises:
        WeightsError: the CLIP_VISION is not a CLIP ViT/14 at 224 px with ``feature_dim`` width.
    """
    from ..models.backbones import clip as clip_backbone
    from ..models.backbones.vision_checkpoints import build_without_init, hf_target
    from ..models.backbones.weight_files import load_strict

    state = _state_dict(clip_vision)
    what = describe(state)
    if "embeddings.class_embedding" not in state or "pre_layrnorm.weight" not in state:
        raise WeightsError(
            f"clip_vision: this CLIP_VISION is {what} without CLIP's class token (a SigLIP or DINO model?); "
            f"CREward's clip backbone needs OpenAI CLIP ViT-L/14 (clip_vision_l.safetensors)"
        )
    config = clip_backbone.infer_config(state, IMAGE_SIZE, source="clip_vision")
    if config["patch_size"] != PATCH or config["image_size"] != IMAGE_SIZE or config["hidden_size"] != feature_dim:
        raise WeightsError(
            f"clip_vision: this CLIP_VISION is {what} for {config['image_size']} px images; the head expects "
            f"{feature_dim}-wide features of OpenAI CLIP ViT-L/14 at {IMAGE_SIZE} px (clip_vision_l.safetensors). "
            f"ViT-H/14 (clip_vision_h) and ViT-bigG (clip_vision_g) are different models"
        )
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = build_without_init(CLIPVisionModel, CLIPVisionConfig(**config))
    state = {
        key: value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
        for key, value in state.items()
        if not key.endswith("position_ids")
    }
    load_strict(hf_target(model), state, "clip_vision (ComfyUI CLIP_VISION input)")
    model.float().eval()
    backbone = clip_backbone.ClipBackbone(model)
    backbone.name = spec.name
    description = f"ComfyUI CLIP_VISION input ({what})"
    logger.info("clip backbone built from the CLIP_VISION input: %s", what)
    return backbone.freeze(), description
