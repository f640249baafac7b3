"""``dino3``: DINOv3 ViT-H/16+ (transformers ``DINOv3ViTModel``, ``model_type`` ``dinov3_vit``).

Feature: the CLS token of ``last_hidden_state``, i.e. after the final LayerNorm, as transformers
returns it (``DINOv3ViTModel``'s ``pooler_output`` is that same tensor). 1280 wide for ViT-H/16+.

Weights: a Hugging Face folder (``config.json`` + ``model.safetensors`` or shards). On-disk keys
are ``embeddings.*``, ``layer.N.*``, ``norm.*`` (the Hub's files and transformers 5.x
``save_pretrained``, which renames back); the 5.x module tree keeps the blocks under
``model.layer.N``, and files saved from a ``state_dict()`` with those keys are accepted too.

Token layout: ``[CLS, registers (4 for ViT-H/16+), patches (row-major 14x14 at 224 px)]``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import WeightsError
from .base import Backbone, GradCamLayer
from .registry import BackboneSpec
from .vision_checkpoints import build_without_init
from .weight_files import load_strict, model_folder, parse_config, read_config, read_safetensors, safetensors_files

logger = logging.getLogger(__name__)


def _fit_to_module(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Map ``layer.N.*`` ↔ ``model.layer.N.*`` to whichever the installed transformers uses."""
    module_keys = set(module.state_dict())
    fitted = {}
    for key, value in state.items():
        if key not in module_keys:
            if f"model.{key}" in module_keys:
                key = f"model.{key}"
            elif key.startswith("model.") and key[len("model."):] in module_keys:
                key = key[len("model."):]
        fitted[key] = value
    return fitted


class Dino3Backbone(Backbone):
    """DINOv3 ViT → CLS token of the final-normed last hidden state."""

    def __init__(self, model: nn.Module, feature_dim: int, register_tokens: int, patch_size: int, image_size: int):
        super().__init__()
        self.model = model
        self.feature_dim = feature_dim
        self.register_tokens = register_tokens
        side = image_size // patch_size
        self.grid = (side, side)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

    def _blocks(self) -> nn.ModuleList:
        encoder = getattr(self.model, "model", None)  # transformers 5.x: DINOv3ViTModel.model.layer
        return encoder.layer if encoder is not None and hasattr(encoder, "layer") else self.model.layer

    def gradcam_layers(self) -> list[GradCamLayer]:
        # Each DINOv3ViTLayer outputs [B, 1 + registers + rows*cols, C].
        prefix = 1 + self.register_tokens
        return [GradCamLayer(block, prefix_tokens=prefix, grid=self.grid) for block in self._blocks()]


def load(path: str, spec: BackboneSpec, dtype: torch.dtype | None = None) -> Dino3Backbone:
    """Build the DINOv3 backbone from a Hugging Face folder, in ``dtype`` (default float32)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    folder = model_folder(path, spec.name, spec.weights_hint)
    raw = read_config(folder)
    if raw.get("model_type") != "dinov3_vit":
        raise WeightsError(
            f"{folder / 'config.json'}: expected a DINOv3 ViT (model_type 'dinov3_vit'), got model_type "
            f"{raw.get('model_type')!r}; the {spec.name} backbone needs {spec.weights_hint}"
        )
    config = parse_config(DINOv3ViTConfig, raw, folder / "config.json", "DINOv3 ViT")
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    size = spec.preprocessing.image_size
    if size % patch:
        raise WeightsError(f"{folder / 'config.json'}: patch_size {patch} does not divide the {size}-pixel input")

    # File dtype kept: the copy into the module (built in ``dtype``) converts tensor by tensor.
    dtype = dtype or torch.float32
    state = read_safetensors(safetensors_files(folder))
    model = build_without_init(DINOv3ViTModel, config, dtype)
    state = _fit_to_module(state, model)
    load_strict(model, state, folder)
    model.to(dtype)  # also the buffers transformers computes in float32 (RoPE)

    if "norm.weight" not in state or "embeddings.cls_token" not in state:
        raise WeightsError(f"{folder}: no final norm / CLS token tensors; not a DINOv3ViTModel checkpoint")
    registers = state.get("embeddings.register_tokens")
    backbone = Dino3Backbone(
        model,
        feature_dim=int(state["norm.weight"].shape[0]),
        register_tokens=int(registers.shape[1]) if registers is not None else 0,
        patch_size=patch,
        image_size=size,
    )
    logger.info(
        "loaded %s from %s: %d blocks, %d register tokens, %d-wide features",
        spec.name, folder, len(backbone._blocks()), backbone.register_tokens, backbone.feature_dim,
    )
    return backbone
