"""SigLIP2 so400m patch14 384 vision model: feature = ``pooler_output`` of transformers' ``SiglipVisionModel``.

The pooler output is the attention-pooled (MAP head, ``vision_use_head=True``) embedding, the
official CREward path. Every weight format is turned into one ``SiglipVisionModel`` and runs its
forward; formats are told apart by what the path holds:

1. **Hugging Face folder** (``config.json`` of ``model_type`` ``siglip``, as
   ``google/siglip2-so400m-patch14-384``, or ``siglip_vision_model``): architecture from the config;
   only the vision tensors (``vision_model.*``, or root keys of a vision model saved by
   transformers 5) are read. ``siglip2`` (the NaFlex ``Siglip2Model``) is refused: it is another
   architecture and preprocessing.
2. **open_clip folder** (``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``, e.g.
   ``timm/ViT-SO400M-14-SigLIP2-378``), or a **timm folder** (``config.json`` with an
   ``architecture`` + ``model.safetensors``): that file, read as 3.
3. **A single file** (``.safetensors``, or a pickle read weights-only; TorchScript refused):
   - ``<p>patch_embed.proj.weight`` with ``<p>pos_embed``, ``<p>blocks.0.attn.qkv.weight`` and no
     ``<p>cls_token`` → timm SigLIP ViT under ``<p>`` (``visual.trunk.`` in open_clip checkpoints,
     none in timm's): keys are converted (``vision_checkpoints.timm_siglip_to_hf``);
   - ``<p>embeddings.patch_embedding.weight`` with ``<p>post_layernorm.weight`` and no
     ``<p>embeddings.class_embedding`` (that would be CLIP) → transformers layout under ``<p>``
     (e.g. ``vision_model.``); a SigLIP ``config.json`` next to the file is used if present;
   - exactly one tower must be found, else a ``WeightsError`` naming the file and its keys.

Config inference from shapes: width, patch size and channels from the patch embedding, layer
count from the block indices, MLP width from ``fc1``, patches per side from the position table;
``layer_norm_eps`` 1e-6, ``gelu_pytorch_tanh`` (transformers' and big_vision's SigLIP activation;
timm/open_clip run the exact erf GELU instead, so their own features differ from CREward's by
that approximation — CREward's head was trained on the transformers features). The image size is
CREward's 384 when the position table fits it (27 patches of 14 px: the last 6 px rows/columns
fall outside the patches, as in transformers; open_clip calls the same weights "378").

Attention heads cannot be read from weights (q, k, v are all ``[C, C]``). They come from, in order:

- the ``config.json`` of a Hugging Face folder;
- the timm model named next to a timm/open_clip checkpoint (``open_clip_config.json``'s
  ``vision_cfg.timm_model_name``, or timm's ``config.json`` ``architecture``), built on the meta
  device with timm to read its ``num_heads`` (without timm: the table below);
- the width of the official SigLIP/SigLIP2 towers (timm/big_vision): 768 → 12 (B), 1024 → 16 (L),
  1152 → 16 (So400m, head dim 72), 1536 → 16 (g-opt).

Any other width without a config is refused rather than guessed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from ..errors import MissingDependencyError, WeightsError
from .registry import BackboneSpec
from .vision_checkpoints import (
    OPEN_CLIP_CONFIG,
    PooledVisionBackbone,
    SingleWeightFile,
    build_vision_model,
    describe_keys,
    find_prefixes,
    layer_indices,
    open_clip_weight_file,
    read_hf_folder,
    read_open_clip_config,
    sibling_hf_config,
    timm_siglip_to_hf,
)
from .weight_files import read_config

logger = logging.getLogger(__name__)

HF_MODEL_TYPES = ("siglip", "siglip_vision_model")
OFFICIAL_HEADS = {768: 12, 1024: 16, 1152: 16, 1536: 16}
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
    "vision_use_head",
)
INSTEAD = (
    "the Hugging Face folder of google/siglip2-so400m-patch14-384, or open_clip's open_clip_model.safetensors "
    "from timm/ViT-SO400M-14-SigLIP2-378"
)


class Siglip2Backbone(PooledVisionBackbone):
    """``SiglipVisionModel`` → ``pooler_output`` (attention-pooled)."""

    prefix_tokens = 0  # SigLIP has no CLS token


def load(path: str, spec: BackboneSpec, dtype: torch.dtype | None = None) -> Siglip2Backbone:
    """Build the SigLIP2 backbone from ``path`` (folder or file, see the module docstring) in ``dtype`` (default float32)."""
    source = Path(path)
    config, state = read_weights(source, spec.preprocessing.image_size)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = build_vision_model(SiglipVisionModel, SiglipVisionConfig, config, state, source, dtype or torch.float32)
    logger.info(
        "loaded SigLIP vision model from %s (width %d, %d layers, %d heads, patch %d)",
        source, config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"], config["patch_size"],
    )
    return Siglip2Backbone(model)


# --------------------------------------------------------------------------------------------
# Formats


def read_weights(path: str | os.PathLike, image_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(SiglipVisionConfig kwargs, tensors with transformers' vision-transformer keys)`` from any supported format."""
    source = Path(path)
    if source.is_dir():
        config, state = _read_folder(source, image_size)
    elif source.is_file():
        config, state = _read_file(source, image_size)
    else:
        raise WeightsError(f"SigLIP2 weights not found at {path}; expected {INSTEAD}")
    _check_config(config, image_size, source)
    return config, state


def _vision_config(config: dict, source: Path) -> dict:
    model_type = config.get("model_type")
    if model_type == "siglip":
        config = config.get("vision_config") or {}
    elif model_type != "siglip_vision_model":
        if model_type == "siglip2":
            hint = (
                " (that is the NaFlex Siglip2Model, another architecture and preprocessing; use "
                "google/siglip2-so400m-patch14-384, whose model_type is 'siglip')"
            )
        elif str(model_type).startswith("clip"):
            hint = " (use backbone 'clip' for CLIP models)"
        else:
            hint = ""
        raise WeightsError(
            f"{source / 'config.json'} has model_type {model_type!r}; the siglip2 backbone needs one of "
            f"{list(HF_MODEL_TYPES)}{hint}"
        )
    config = {key: config[key] for key in CONFIG_KEYS if key in config}
    # transformers' defaults for SigLIP, written out so that any version builds the same model
    config.setdefault("hidden_act", "gelu_pytorch_tanh")
    config.setdefault("layer_norm_eps", 1e-6)
    return config


def _read_folder(folder: Path, image_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    config = read_config(folder) if (folder / "config.json").is_file() else None
    if config is not None and config.get("model_type") in HF_MODEL_TYPES:
        return _vision_config(config, folder), read_hf_folder(folder, "embeddings.patch_embedding.weight")
    open_clip_file = open_clip_weight_file(folder)
    if open_clip_file is not None:
        logger.info("%s is an open_clip folder; reading %s", folder, open_clip_file.name)
        return _read_file(open_clip_file, image_size)
    if config is not None and "architecture" in config and (folder / "model.safetensors").is_file():
        logger.info("%s is a timm folder (%s)", folder, config["architecture"])
        return _read_file(folder / "model.safetensors", image_size)
    if config is not None:
        _vision_config(config, folder)  # raises, naming the model_type
    raise WeightsError(
        f"{folder} is neither a Hugging Face SigLIP folder (config.json + model.safetensors) nor an open_clip "
        f"folder (open_clip_model.safetensors); expected {INSTEAD}"
    )


def _read_file(path: Path, image_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    weights = SingleWeightFile(path, instead=INSTEAD)
    keys = set(weights.keys)
    timm_prefixes = [
        prefix
        for prefix in find_prefixes(keys, "patch_embed.proj.weight", ["pos_embed", "blocks.0.attn.qkv.weight"])
        if prefix + "cls_token" not in keys
    ]
    hf_prefixes = [
        prefix
        for prefix in find_prefixes(keys, "embeddings.patch_embedding.weight", ["post_layernorm.weight"])
        if prefix + "embeddings.class_embedding" not in keys
    ]
    found = [(p, "timm") for p in timm_prefixes] + [(p, "hf") for p in hf_prefixes]
    if len(found) != 1:
        _raise_unrecognised(path, weights.keys, found)
    prefix, layout = found[0]
    state = weights.tensors(prefix)
    if prefix:
        logger.info("%s: reading the SigLIP vision tower under %r (%s layout)", path, prefix, layout)
    if layout == "hf":
        config = sibling_hf_config(path, HF_MODEL_TYPES)
        if config is not None:
            return _vision_config(config, path.parent), state
        heads = _heads(int(state["embeddings.patch_embedding.weight"].shape[0]), None, path)
        return infer_config(state, image_size, heads, source=path), state
    state = timm_siglip_to_hf(state, path)
    width = int(state["embeddings.patch_embedding.weight"].shape[0])
    heads = _heads(width, _timm_model_name(path.parent), path)
    return infer_config(state, image_size, heads, source=path), state


def _raise_unrecognised(path: Path, keys: list[str], found: list[tuple[str, str]]) -> None:
    if found:
        raise WeightsError(f"{path} holds {len(found)} SigLIP vision towers (under {[p for p, _ in found]}); expected one")
    clip = (
        find_prefixes(keys, "embeddings.class_embedding")
        or find_prefixes(keys, "conv1.weight", ["class_embedding"])
        or find_prefixes(keys, "patch_embed.proj.weight", ["cls_token"])
    )
    hint = " It looks like a CLIP model: use backbone 'clip'." if clip else ""
    raise WeightsError(
        f"{path} holds no SigLIP vision tower: expected keys 'visual.trunk.patch_embed.*', 'visual.trunk.attn_pool.*' "
        f"(open_clip/timm layout) or 'vision_model.embeddings.*', 'vision_model.head.*' (transformers layout), "
        f"found {describe_keys(keys)}.{hint} Expected {INSTEAD}."
    )


# --------------------------------------------------------------------------------------------
# Architecture from shapes


def _timm_model_name(folder: Path) -> str | None:
    """The timm model named next to a checkpoint: open_clip's ``timm_model_name`` or timm's ``architecture``."""
    open_clip_config = read_open_clip_config(folder)
    if open_clip_config is not None:
        name = open_clip_config.get("vision_cfg", {}).get("timm_model_name")
        if name:
            return str(name)
        logger.warning("%s names no timm_model_name", folder / OPEN_CLIP_CONFIG)
    timm_config = folder / "config.json"
    if timm_config.is_file():
        try:
            architecture = json.loads(timm_config.read_text()).get("architecture")
        except (OSError, json.JSONDecodeError, AttributeError):
            architecture = None
        if architecture:
            return str(architecture)
    return None


def timm_num_heads(model_name: str, width: int, source: str | os.PathLike) -> int:
    """Attention heads of timm model ``model_name``, built on the meta device (no memory, no weights)."""
    try:
        import timm
    except ImportError:
        if width in OFFICIAL_HEADS:
            return OFFICIAL_HEADS[width]
        raise MissingDependencyError(
            "timm", f"reading the attention heads of {source} (timm model {model_name!r})"
        ) from None
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False)
    except Exception as error:  # unknown name, or a model timm cannot build
        raise WeightsError(f"{source}: timm cannot build model {model_name!r} named next to it: {error}") from error
    blocks = getattr(model, "blocks", None)
    if not blocks or getattr(model, "embed_dim", None) != width:
        raise WeightsError(
            f"{source}: timm model {model_name!r} (width {getattr(model, 'embed_dim', '?')}) does not describe "
            f"these weights (width {width})"
        )
    return int(blocks[0].attn.num_heads)


def _heads(width: int, timm_model_name: str | None, source: Path) -> int:
    if timm_model_name:
        return timm_num_heads(timm_model_name, width, source)
    if width in OFFICIAL_HEADS:
        return OFFICIAL_HEADS[width]
    raise WeightsError(
        f"{source}: cannot tell the attention heads of a width-{width} SigLIP tower (the official widths are "
        f"{sorted(OFFICIAL_HEADS)}); put the open_clip_config.json (open_clip) or config.json (Hugging Face) that "
        f"came with the weights next to the file"
    )


def infer_config(state: dict[str, torch.Tensor], image_size: int, heads: int, source: str | os.PathLike) -> dict:
    """A ``SiglipVisionConfig`` dict from transformers-layout tensor shapes (conventions in the module doc)."""
    try:
        patch = state["embeddings.patch_embedding.weight"]
        positions = state["embeddings.position_embedding.weight"]
        fc1 = state["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as error:
        raise WeightsError(f"{source}: SigLIP vision tensor {error.args[0]!r} is missing ({describe_keys(state)})") from None
    if "head.probe" not in state:
        raise WeightsError(
            f"{source} has no attention-pooling head ('head.*' / 'attn_pool.*'), which the siglip2 feature "
            f"(pooler_output) needs"
        )
    width = int(patch.shape[0])
    if width % heads:
        raise WeightsError(f"{source}: width {width} is not divisible by {heads} attention heads")
    grid = math.isqrt(int(positions.shape[0]))
    if grid * grid != positions.shape[0]:
        raise WeightsError(f"{source}: {positions.shape[0]} position embeddings is not a square number of patches")
    patch_size = int(patch.shape[-1])
    return {
        "hidden_size": width,
        "intermediate_size": int(fc1.shape[0]),
        "num_hidden_layers": len(layer_indices(state, r"encoder\.layers\.(\d+)\.", source)),
        "num_attention_heads": heads,
        "num_channels": int(patch.shape[1]),
        "image_size": image_size if image_size // patch_size == grid else grid * patch_size,
        "patch_size": patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": True,
    }


def _check_config(config: dict, image_size: int, source: Path) -> None:
    if not config.get("vision_use_head", True):
        raise WeightsError(f"{source}: vision_use_head is false; the siglip2 feature (pooler_output) needs the MAP head")
    patch_size = int(config.get("patch_size", 16))
    size = int(config.get("image_size", 224))
    if size // patch_size != image_size // patch_size:
        raise WeightsError(
            f"{source} is a SigLIP model for {size} px images ({size // patch_size} patches per side); CREward's "
            f"siglip2 backbone is so400m patch14 at {image_size} px ({image_size // patch_size} patches per side)"
        )
    config["image_size"] = image_size
