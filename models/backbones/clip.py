"""OpenAI CLIP ViT-L/14 vision model: feature = ``pooler_output`` of transformers' ``CLIPVisionModel``.

The pooler output is the post-layernorm CLS token, taken *before* the visual projection (the
official CREward path). Every weight format is turned into one ``CLIPVisionModel`` and runs its
forward; formats are told apart by what the path holds:

1. **Hugging Face folder** (a folder with ``config.json`` of ``model_type`` ``clip`` or
   ``clip_vision_model``; e.g. ``openai/clip-vit-large-patch14``): the architecture comes from the
   config; only the vision tensors (``vision_model.*``) are read, from ``model.safetensors`` or
   its shards.
2. **open_clip folder** (no such config.json, but ``open_clip_model.safetensors`` or
   ``open_clip_pytorch_model.bin``, as in ``timm/vit_large_patch14_clip_224.openai``): read as 4.
3. **A single file** (``.safetensors``, or ``.bin``/``.pt``/``.pth``/``.ckpt`` read weights-only;
   TorchScript archives such as OpenAI's original ``ViT-L-14.pt`` are refused):
   - a key ``<p>embeddings.patch_embedding.weight`` with ``<p>embeddings.class_embedding`` →
     transformers layout under prefix ``<p>``: ``vision_model.`` in ComfyUI's
     ``clip_vision_l.safetensors`` (``vision_model.*`` + ``visual_projection.weight``) and in
     transformers' ``model.safetensors``/``pytorch_model.bin``; ``clip_vision.vision_model.`` or
     ``clip_l_vision.vision_model.`` in checkpoints bundling it (as ComfyUI saves them); none in a
     vision model saved by transformers 5. The architecture comes
     from a ``config.json`` of a CLIP model next to the file if there is one, else from the shapes
     (see ``infer_config``);
   - a key ``<p>conv1.weight`` with ``<p>class_embedding`` and
     ``<p>transformer.resblocks.0.attn.in_proj_weight`` → OpenAI/open_clip layout under ``<p>``
     (``visual.`` in open_clip checkpoints, ``module.visual.`` in DDP training checkpoints): keys
     are converted (``vision_checkpoints.open_clip_visual_to_hf``); an ``open_clip_config.json``
     next to the file gives ``head_width`` and ``quick_gelu`` (defaults: 64 and True, OpenAI's);
   - exactly one such tower must be found; anything else is a ``WeightsError`` naming the file and
     its keys. Only the tower's tensors are read from safetensors files.

Config inference from shapes (OpenAI conventions): width, patch size and channels from the patch
embedding, layer count from the block indices, MLP width from ``fc1``, patches per side from the
position table (minus CLS); attention heads = width / 64 (every OpenAI CLIP ViT has 64-wide heads;
open_clip's ``head_width``), ``quick_gelu``, ``layer_norm_eps`` 1e-5. Widths 1280 and 1664 (LAION's
ViT-H/bigG, also kept in ComfyUI's clip_vision folder) break those conventions and are refused by
name. The image size is CREward's 224 and must fit the position table (a 336 px model is refused,
not silently interpolated).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from ..errors import WeightsError
from .registry import BackboneSpec
from .vision_checkpoints import (
    PooledVisionBackbone,
    SingleWeightFile,
    build_vision_model,
    describe_keys,
    find_prefixes,
    layer_indices,
    open_clip_visual_to_hf,
    open_clip_weight_file,
    read_hf_folder,
    read_open_clip_config,
    sibling_hf_config,
)
from .weight_files import read_config

logger = logging.getLogger(__name__)

HF_MODEL_TYPES = ("clip", "clip_vision_model")
OPENAI_HEAD_WIDTH = 64
# Widths of the other CLIP towers found in ComfyUI's clip_vision folder (its clip_vision_config_h/g.json):
# their heads are not 64 wide and their activation is not quick_gelu, so they are named, not guessed.
NOT_OPENAI_WIDTHS = {1280: "LAION's ViT-H/14", 1664: "LAION's ViT-bigG/14"}
# The entries of a CLIP vision config that define the forward.
CONFIG_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)
INSTEAD = (
    "the Hugging Face folder of openai/clip-vit-large-patch14, ComfyUI's clip_vision_l.safetensors, or "
    "open_clip's open_clip_model.safetensors from timm/vit_large_patch14_clip_224.openai"
)


class ClipBackbone(PooledVisionBackbone):
    """``CLIPVisionModel`` → ``pooler_output`` (post-layernorm CLS, before the projection)."""

    prefix_tokens = 1  # CLS


def load(path: str, spec: BackboneSpec, dtype: torch.dtype | None = None) -> ClipBackbone:
    """Build the CLIP backbone from ``path`` (folder or file, see the module docstring) in ``dtype`` (default float32)."""
    source = Path(path)
    config, state = read_weights(source, spec.preprocessing.image_size)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = build_vision_model(CLIPVisionModel, CLIPVisionConfig, config, state, source, dtype or torch.float32)
    logger.info(
        "loaded CLIP vision model from %s (width %d, %d layers, patch %d)",
        source, config["hidden_size"], config["num_hidden_layers"], config["patch_size"],
    )
    return ClipBackbone(model)


# --------------------------------------------------------------------------------------------
# Formats


def read_weights(path: str | os.PathLike, image_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(CLIPVisionConfig kwargs, tensors with transformers' vision-transformer keys)`` from any supported format."""
    source = Path(path)
    if source.is_dir():
        config, state = _read_folder(source, image_size)
    elif source.is_file():
        config, state = _read_file(source, image_size)
    else:
        raise WeightsError(f"CLIP weights not found at {path}; expected {INSTEAD}")
    _check_image_size(config, image_size, source)
    return config, state


def _vision_config(config: dict, source: Path) -> dict:
    model_type = config.get("model_type")
    if model_type == "clip":
        config = config.get("vision_config") or {}
    elif model_type != "clip_vision_model":
        hint = " (use backbone 'siglip2' for SigLIP models)" if str(model_type).startswith("siglip") else ""
        raise WeightsError(
            f"{source / 'config.json'} has model_type {model_type!r}; the clip backbone needs one of "
            f"{list(HF_MODEL_TYPES)}{hint}"
        )
    return {key: config[key] for key in CONFIG_KEYS if key in config}


def _read_folder(folder: Path, image_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    config_path = folder / "config.json"
    open_clip_file = open_clip_weight_file(folder)
    if config_path.is_file():
        config = read_config(folder)
        if config.get("model_type") in HF_MODEL_TYPES or open_clip_file is None:
            return _vision_config(config, folder), read_hf_folder(folder, "embeddings.patch_embedding.weight")
    if open_clip_file is not None:
        logger.info("%s is an open_clip folder; reading %s", folder, open_clip_file.name)
        return _read_file(open_clip_file, image_size)
    raise WeightsError(
        f"{folder} is neither a Hugging Face CLIP folder (config.json + model.safetensors) nor an open_clip "
        f"folder (open_clip_model.safetensors); expected {INSTEAD}"
    )


def _read_file(path: Path, image_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    weights = SingleWeightFile(path, instead=INSTEAD)
    hf_prefixes = find_prefixes(weights.keys, "embeddings.patch_embedding.weight", ["embeddings.class_embedding"])
    open_clip_prefixes = find_prefixes(
        weights.keys, "conv1.weight", ["class_embedding", "transformer.resblocks.0.attn.in_proj_weight"]
    )
    found = [(p, "hf") for p in hf_prefixes] + [(p, "open_clip") for p in open_clip_prefixes]
    if len(found) != 1:
        _raise_unrecognised(path, weights.keys, found)
    prefix, layout = found[0]
    state = weights.tensors(prefix)
    if prefix:
        logger.info("%s: reading the CLIP vision tower under %r (%s layout)", path, prefix, layout)
    if layout == "hf":
        config = sibling_hf_config(path, HF_MODEL_TYPES)
        if config is not None:
            return _vision_config(config, path.parent), state
        return infer_config(state, image_size, source=path), state
    open_clip_config = read_open_clip_config(path.parent) or {}
    vision_cfg = open_clip_config.get("vision_cfg", {})
    head_width = int(vision_cfg.get("head_width", OPENAI_HEAD_WIDTH))
    quick_gelu = bool(open_clip_config.get("quick_gelu", True))
    if not quick_gelu:
        logger.warning("%s: open_clip config says quick_gelu=false, so these are not OpenAI's CLIP weights", path)
    state = open_clip_visual_to_hf(state, path)
    config = infer_config(state, image_size, source=path, head_width=head_width)
    config["hidden_act"] = "quick_gelu" if quick_gelu else "gelu"
    return config, state


def _raise_unrecognised(path: Path, keys: list[str], found: list[tuple[str, str]]) -> None:
    if found:
        raise WeightsError(f"{path} holds {len(found)} CLIP vision towers (under {[p for p, _ in found]}); expected one")
    siglip = find_prefixes(keys, "embeddings.patch_embedding.weight") or find_prefixes(keys, "attn_pool.latent")
    hint = " It looks like a SigLIP model: use backbone 'siglip2'." if siglip else ""
    raise WeightsError(
        f"{path} holds no CLIP vision tower: expected keys 'vision_model.embeddings.*' (transformers/ComfyUI "
        f"layout) or 'visual.conv1.weight', 'visual.transformer.resblocks.*' (open_clip layout), found "
        f"{describe_keys(keys)}.{hint} Expected {INSTEAD}."
    )


def infer_config(
    state: dict[str, torch.Tensor],
    image_size: int,
    source: str | os.PathLike,
    head_width: int = OPENAI_HEAD_WIDTH,
) -> dict:
    """A ``CLIPVisionConfig`` dict from transformers-layout tensor shapes (conventions in the module doc)."""
    try:
        patch = state["embeddings.patch_embedding.weight"]
        positions = state["embeddings.position_embedding.weight"]
        fc1 = state["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as error:
        raise WeightsError(f"{source}: CLIP vision tensor {error.args[0]!r} is missing ({describe_keys(state)})") from None
    width = int(patch.shape[0])
    if width in NOT_OPENAI_WIDTHS and head_width == OPENAI_HEAD_WIDTH:
        raise WeightsError(
            f"{source} is {NOT_OPENAI_WIDTHS[width]} (width {width}), not OpenAI's CLIP ViT-L/14 (width 1024) that "
            f"CREward's clip backbone uses; expected {INSTEAD}"
        )
    layers = layer_indices(state, r"encoder\.layers\.(\d+)\.", source)
    grid = math.isqrt(int(positions.shape[0]) - 1)
    if grid * grid != positions.shape[0] - 1:
        raise WeightsError(f"{source}: {positions.shape[0]} position embeddings is not 1 + a square number of patches")
    if width % head_width:
        raise WeightsError(f"{source}: width {width} is not a multiple of the head width {head_width}")
    patch_size = int(patch.shape[-1])
    return {
        "hidden_size": width,
        "intermediate_size": int(fc1.shape[0]),
        "num_hidden_layers": len(layers),
        "num_attention_heads": width // head_width,
        "num_channels": int(patch.shape[1]),
        "image_size": image_size if image_size // patch_size == grid else grid * patch_size,
        "patch_size": patch_size,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def _check_image_size(config: dict, image_size: int, source: Path) -> None:
    size = config.get("image_size", 224)
    if size != image_size:
        raise WeightsError(
            f"{source} is a CLIP model for {size} px images; CREward's clip backbone is OpenAI's ViT-L/14 at "
            f"{image_size} px (its head was trained on those features)"
        )
