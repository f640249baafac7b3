"""``siglip-gemma3``: the SigLIP vision tower and multi-modal projector of Gemma-3-4B-IT.

Feature (the paper's default)::

    SiglipVisionModel(pixels).last_hidden_state          # [B, 4096, 1152] at 896 px, patch 14
    -> Gemma3MultiModalProjector                          # avg-pool to mm_tokens_per_image (256) tokens,
                                                          # soft-embedding RMSNorm, projection to the
                                                          # text hidden size
    -> mean over tokens                                   # [B, 2560]

which is ``Gemma3ForConditionalGeneration.get_image_features(pixels).pooler_output.mean(1)`` in
transformers 5.x, computed without ever building the language model: only the vision-tower and
projector tensors are read from the checkpoint (0.8 of its 8.6 GB).

Weights: a Hugging Face ``gemma-3-4b-it`` folder (``config.json`` with ``model_type`` ``gemma3``,
``model.safetensors`` or shards listed in ``model.safetensors.index.json``). Key layouts found in
the wild, all accepted:

- the Hub's files (and transformers 4.x ``save_pretrained``): ``vision_tower.vision_model.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``;
- transformers 5.x ``save_pretrained``: ``vision_tower.*`` (SigLIP's ``vision_model.`` level is
  gone), ``multi_modal_projector.*``;
- checkpoints saved from the module tree (``Gemma3ForConditionalGeneration.state_dict()``):
  the same keys under ``model.``.

The SigLIP attention-pooling head (``vision_tower[.vision_model].head.*``) is not part of the
feature; Gemma's config disables it, and if a checkpoint carries it anyway it is skipped.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from .base import Backbone, GradCamLayer
from .registry import BackboneSpec
from .vision_checkpoints import build_without_init, default_dtype
from .weight_files import (
    load_strict,
    model_folder,
    parse_config,
    read_config,
    read_safetensors,
    safetensors_files,
    safetensors_keys,
)

logger = logging.getLogger(__name__)

# Where the tensors may live, most specific first (``vision_tower.`` also matches the longer one).
VISION_PREFIXES = (
    "model.vision_tower.vision_model.",
    "vision_tower.vision_model.",
    "model.vision_tower.",
    "vision_tower.",
)
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
SIGLIP_HEAD = "head."  # attention-pooling head of SiglipVisionModel, unused by Gemma 3


def _file_keys(folder: Path) -> dict[str, Path]:
    """Every tensor name of a Hugging Face folder → the file holding it (headers / index only)."""
    index = folder / "model.safetensors.index.json"
    files = safetensors_files(folder)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    return {key: path for path in files for key in safetensors_keys(path)}


def _pick_prefix(keys, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in keys):
            return prefix
    return None


def _fit_to_module(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Add SigLIP's ``vision_model.`` level back when the installed transformers still has it (4.x)."""
    module_keys = set(module.state_dict())
    if any(key.startswith("vision_model.") for key in module_keys):
        return {key if key.startswith("vision_model.") else f"vision_model.{key}": value for key, value in state.items()}
    return state


class SiglipGemma3Backbone(Backbone):
    """SigLIP vision tower → Gemma 3 multi-modal projector → mean over the image tokens."""

    def __init__(self, vision: nn.Module, projector: nn.Module, feature_dim: int, grid: tuple[int, int]):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.feature_dim = feature_dim
        self.grid = grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision(pixel_values=pixel_values).last_hidden_state
        return self.projector(hidden).mean(dim=1)

    def _blocks(self) -> nn.ModuleList:
        tower = getattr(self.vision, "vision_model", self.vision)  # transformers 4.x keeps a vision_model level
        return tower.encoder.layers

    def gradcam_layers(self) -> list[GradCamLayer]:
        # Each SigLIP encoder layer outputs [B, rows*cols, C]; SigLIP has no CLS/register tokens.
        return [GradCamLayer(block, prefix_tokens=0, grid=self.grid) for block in self._blocks()]


def _read_gemma3_config(folder: Path, spec: BackboneSpec):
    from transformers import Gemma3Config

    raw = read_config(folder)
    config_path = folder / "config.json"
    model_type = raw.get("model_type")
    if model_type != "gemma3" or "vision_config" not in raw:
        hint = " (a text-only Gemma model has no vision tower)" if model_type in ("gemma3_text", "gemma2", "gemma") else ""
        raise WeightsError(
            f"{config_path}: expected a multimodal Gemma 3 config (model_type 'gemma3' with a vision_config), "
            f"got model_type {model_type!r}{hint}; the siglip-gemma3 backbone needs {spec.weights_hint}"
        )
    config = parse_config(Gemma3Config, raw, config_path, "Gemma 3")
    vision = config.vision_config
    size = spec.preprocessing.image_size
    if vision.image_size != size:
        raise WeightsError(
            f"{config_path}: vision_config.image_size is {vision.image_size}, but {spec.name} feeds {size}-pixel images"
        )
    patches = vision.image_size // vision.patch_size
    side = int(round(config.mm_tokens_per_image**0.5))
    if side * side != config.mm_tokens_per_image or side == 0 or patches % side:
        raise WeightsError(
            f"{config_path}: mm_tokens_per_image {config.mm_tokens_per_image} is not a square whose side divides the "
            f"{patches}x{patches} patch grid"
        )
    return config


def load(path: str, spec: BackboneSpec, dtype: torch.dtype | None = None) -> SiglipGemma3Backbone:
    """Build the vision tower + projector from a gemma-3 folder in ``dtype`` (default float32), reading
    only their tensors."""
    from transformers import SiglipVisionModel
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

    folder = model_folder(path, spec.name, spec.weights_hint)
    config = _read_gemma3_config(folder, spec)

    key_files = _file_keys(folder)
    vision_prefix = _pick_prefix(key_files, VISION_PREFIXES)
    projector_prefix = _pick_prefix(key_files, PROJECTOR_PREFIXES)
    if vision_prefix is None or projector_prefix is None:
        missing = "vision tower" if vision_prefix is None else "multi_modal_projector"
        wanted = VISION_PREFIXES if vision_prefix is None else PROJECTOR_PREFIXES
        raise WeightsError(
            f"{folder}: no {missing} tensors in {sorted({p.name for p in key_files.values()})} "
            f"(looked for keys starting with {', '.join(wanted)}); is this a text-only Gemma checkpoint?"
        )
    wanted_keys = [key for key in key_files if key.startswith((vision_prefix, projector_prefix))]
    shards = sorted({key_files[key] for key in wanted_keys})
    logger.info("reading the vision tower and projector of %s from %d of its files", folder, len(shards))
    state = read_safetensors(shards, prefixes=(vision_prefix, projector_prefix))

    # Tensors keep their file dtype (bf16 on the Hub): copying them into the modules, built in ``dtype``,
    # converts them one by one, so no second copy of the tower is ever held (none at all when they match).
    dtype = dtype or torch.float32
    vision_state = {key[len(vision_prefix):]: value for key, value in state.items() if key.startswith(vision_prefix)}
    projector_state = {key[len(projector_prefix):]: value for key, value in state.items() if key.startswith(projector_prefix)}
    del state
    skipped = [key for key in vision_state if key.startswith(SIGLIP_HEAD)]
    if skipped:
        logger.debug("%s: skipping %d SigLIP attention-pooling head tensors (unused by Gemma 3)", folder, len(skipped))
        vision_state = {key: value for key, value in vision_state.items() if not key.startswith(SIGLIP_HEAD)}

    vision_config = copy.deepcopy(config.vision_config)
    vision_config.vision_use_head = False
    vision = build_without_init(SiglipVisionModel, vision_config, dtype)
    with default_dtype(dtype):
        projector = Gemma3MultiModalProjector(config)
    load_strict(vision, _fit_to_module(vision_state, vision), folder)
    load_strict(projector, projector_state, folder)
    vision.to(dtype)  # also the buffers transformers computes in float32

    projection = projector_state["mm_input_projection_weight"]
    patches = config.vision_config.image_size // config.vision_config.patch_size
    backbone = SiglipGemma3Backbone(vision, projector, feature_dim=int(projection.shape[1]), grid=(patches, patches))
    logger.info(
        "loaded %s from %s: %d vision layers, %d image tokens, %d-wide features",
        spec.name, folder, len(backbone._blocks()), config.mm_tokens_per_image, backbone.feature_dim,
    )
    return backbone
