"""Vision-tower checkpoints in every layout users have: recognise, read, and rename to transformers'.

CREward's ``clip`` and ``siglip2`` features are defined by transformers' ``CLIPVisionModel`` and
``SiglipVisionModel``. Weights come as Hugging Face folders, single files holding the tower under
some prefix (ComfyUI's ``clip_vision`` files, checkpoints bundling several models), or open_clip /
timm checkpoints. This module finds the tower in a file, reads only its tensors, and renames
(splitting fused tensors) open_clip/timm layouts so that every format runs through that one forward:

- OpenAI/open_clip ``VisionTransformer`` (``visual.conv1``, ``visual.transformer.resblocks.N``...)
  → ``CLIPVisionModel`` keys;
- timm SigLIP ``VisionTransformer`` (open_clip's ``visual.trunk.*``, or a timm checkpoint)
  → ``SiglipVisionModel`` keys.

Converted keys are relative to the vision transformer (``embeddings.*``, ``encoder.*``,
``post_layernorm.*``...), the layout of transformers 5's vision models; ``hf_target`` finds the
module that takes them in either transformers 4 or 5. Keys the converters do not know are kept
as they are, so that the strict load names them. ``build_vision_model`` then builds the
transformers model from them and ``PooledVisionBackbone`` wraps it (its ``pooler_output``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..errors import WeightsError
from .base import Backbone, GradCamLayer
from .weight_files import (
    load_strict,
    read_config,
    read_safetensors,
    read_state_dict,
    safetensors_files,
    safetensors_keys,
    strip_prefix,
)

logger = logging.getLogger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# --------------------------------------------------------------------------------------------
# Recognising files


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (``torch.jit.save``; e.g. OpenAI's original ``ViT-L-14.pt``).

    Those archives carry code (``<archive>/code/__torch__/...``, ``constants.pkl``); a plain
    ``torch.save`` zip holds only ``data.pkl`` and tensor data.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(
        name.rsplit("/", 1)[-1] == "constants.pkl" or "/code/__torch__" in f"/{name}" for name in names
    )


def find_prefixes(keys: Iterable[str], marker: str, companions: Iterable[str] = ()) -> list[str]:
    """Prefixes ``p`` such that ``p + marker`` and every ``p + companion`` are keys.

    Checkpoints wrap a model under prefixes (``visual.``, ``module.``, ``clip_vision.``,
    ``conditioner.embedders.0...``); this finds where the wanted tower sits.
    """
    keys = set(keys)
    companions = tuple(companions)
    prefixes = {key[: -len(marker)] for key in keys if key.endswith(marker)}
    return sorted(p for p in prefixes if all(p + companion in keys for companion in companions))


def describe_keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} keys: {shown}{', ...' if len(keys) > limit else ''}" if keys else "no tensors"


def read_open_clip_config(folder: str | os.PathLike) -> dict | None:
    """The open_clip model config next to a checkpoint (``open_clip_config.json`` as on the Hub), if any.

    Returns the model config (``{"vision_cfg": ..., "quick_gelu": ...}``); the Hub file wraps it
    as ``{"model_cfg": ..., "preprocess_cfg": ...}``.
    """
    path = Path(folder) / OPEN_CLIP_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not valid JSON: {error}") from error
    if isinstance(config, dict) and isinstance(config.get("model_cfg"), dict):
        config = config["model_cfg"]
    if not isinstance(config, dict) or not isinstance(config.get("vision_cfg", {}), dict):
        raise WeightsError(f"{path} is not an open_clip model config (expected 'model_cfg' with a 'vision_cfg')")
    return config


def open_clip_weight_file(folder: str | os.PathLike) -> Path | None:
    """The open_clip checkpoint of a Hub-style open_clip folder, safetensors first."""
    for name in OPEN_CLIP_WEIGHT_FILES:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def layer_indices(keys: Iterable[str], pattern: str, source: str | os.PathLike) -> list[int]:
    """Sorted block indices found by ``pattern`` (a regex with one group), checked to be 0..N-1."""
    regex = re.compile(pattern)
    indices = sorted({int(match.group(1)) for key in keys if (match := regex.match(key))})
    if not indices or indices != list(range(len(indices))):
        raise WeightsError(f"{source}: transformer blocks should be numbered 0..N-1, found {indices}")
    return indices


# --------------------------------------------------------------------------------------------
# Reading


class SingleWeightFile:
    """One weight file, read tensor by tensor (safetensors) or once (weights-only pickle).

    TorchScript archives are refused before anything is unpickled; ``instead`` tells the user
    which file to use.
    """

    def __init__(self, path: str | os.PathLike, instead: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"weight file not found: {self.path}")
        if is_torchscript_archive(self.path):
            raise WeightsError(
                f"{self.path} is a TorchScript archive (like OpenAI's original ViT-L-14.pt); CREward never runs "
                f"TorchScript code. Use {instead} instead."
            )
        self._state: dict[str, torch.Tensor] | None = None
        if self.path.suffix == ".safetensors":
            self.keys = safetensors_keys(self.path)
        else:
            self._state = read_state_dict(self.path)
            self.keys = list(self._state)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor under ``prefix``, with the prefix removed."""
        if self._state is None:
            state = read_safetensors(self.path, prefixes=(prefix,))
        else:
            state = {key: value for key, value in self._state.items() if key.startswith(prefix)}
        return strip_prefix(state, prefix)


def read_hf_folder(folder: str | os.PathLike, marker: str) -> dict[str, torch.Tensor]:
    """The vision tensors of a Hugging Face folder, keys relative to the vision transformer.

    The tower sits under ``vision_model.`` in ``CLIPModel``/``SiglipModel`` folders and in vision
    model folders saved by transformers 4, and at the root in those saved by transformers 5; it is
    found by ``marker`` (e.g. ``embeddings.patch_embedding.weight``). Only its tensors are read.
    """
    files = safetensors_files(folder)
    keys = [key for path in files for key in safetensors_keys(path)]
    prefixes = find_prefixes(keys, marker)
    if len(prefixes) != 1:
        raise WeightsError(
            f"{folder}: expected one vision tower (a key ending in {marker!r}), found "
            f"{len(prefixes)} ({prefixes}) among {describe_keys(keys)}"
        )
    return strip_prefix(read_safetensors(files, prefixes=prefixes), prefixes[0])


def sibling_hf_config(path: Path, model_types: Iterable[str]) -> dict | None:
    """The Hugging Face ``config.json`` next to a single weight file, if its ``model_type`` is one of ``model_types``."""
    if not (path.parent / "config.json").is_file():
        return None
    config = read_config(path.parent)
    return config if config.get("model_type") in tuple(model_types) else None


def loadable(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype`` (a no-op for those already in it), without the ``position_ids``
    buffers transformers recomputes (older checkpoints, and ComfyUI files converted from them, carry them)."""
    return {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in state.items()
        if not key.endswith("position_ids")
    }


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Modules built inside get ``dtype`` parameters (as transformers' ``from_pretrained(dtype=...)`` builds them)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_without_init(model_class, config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``model_class(config)`` in ``dtype``, without random initialisation (every tensor is loaded right after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    with no_init_weights(), default_dtype(dtype):
        return model_class(config)


def build_vision_model(
    model_class, config_class, config: dict, state: dict[str, torch.Tensor], source, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """``model_class(config_class(**config))`` (e.g. ``CLIPVisionModel``) holding ``state`` (transformers'
    vision-transformer keys, strictly loaded; errors name ``source``), built in ``dtype``, in eval mode."""
    model = build_without_init(model_class, config_class(**config), dtype)
    load_strict(hf_target(model), loadable(state, dtype), source)
    return model.to(dtype).eval()  # also the buffers transformers computes in float32


class PooledVisionBackbone(Backbone):
    """A transformers vision model (``CLIPVisionModel``, ``SiglipVisionModel``) → its ``pooler_output``.

    Subclasses set ``prefix_tokens``: the tokens before the patch grid in each encoder layer's output.
    """

    prefix_tokens = 0

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        config = model.config
        self.feature_dim = int(config.hidden_size)
        self.grid = int(config.image_size) // int(config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output

    def gradcam_layers(self) -> list[GradCamLayer]:
        layers = hf_target(self.model).encoder.layers
        return [GradCamLayer(layer, prefix_tokens=self.prefix_tokens, grid=(self.grid, self.grid)) for layer in layers]


# --------------------------------------------------------------------------------------------
# Where converted keys go


def hf_target(model: nn.Module) -> nn.Module:
    """The module whose state-dict keys are ``embeddings.*``, ``encoder.*``, ...

    transformers 4 nests the vision transformer as ``model.vision_model``; transformers 5's
    ``CLIPVisionModel``/``SiglipVisionModel`` hold it directly.
    """
    return getattr(model, "vision_model", model)


# --------------------------------------------------------------------------------------------
# OpenAI / open_clip VisionTransformer → CLIPVisionModel

_CLIP_RENAMES = {
    "class_embedding": "embeddings.class_embedding",
    "conv1.weight": "embeddings.patch_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
_CLIP_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# After the pooled feature: not part of CREward's clip feature.
CLIP_DROPPED = ("proj",)


def _split_qkv(tensor: torch.Tensor, key: str, source: str | os.PathLike) -> tuple[torch.Tensor, ...]:
    if tensor.shape[0] % 3:
        raise WeightsError(
            f"{source}: {key!r} has shape {tuple(tensor.shape)}; its first dimension should be 3 x width (q, k, v)"
        )
    return tuple(part.clone() for part in tensor.chunk(3, dim=0))


def open_clip_visual_to_hf(state: dict[str, torch.Tensor], source: str | os.PathLike = "") -> dict[str, torch.Tensor]:
    """open_clip/OpenAI ``visual.*`` tensors (prefix removed) → ``CLIPVisionModel`` keys.

    ``in_proj_weight``/``in_proj_bias`` (rows q, k, v as in ``nn.MultiheadAttention``) are split
    into ``q_proj``, ``k_proj``, ``v_proj``. The projection ``proj`` is dropped (CREward's feature
    is taken before it).
    """
    block = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)$")
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in CLIP_DROPPED:
            continue
        if key in _CLIP_RENAMES:
            converted[_CLIP_RENAMES[key]] = tensor
            continue
        match = block.match(key)
        if match:
            index, name, kind = match.groups()
            layer = f"encoder.layers.{index}"
            if name == "attn.in_proj" and key.endswith(f"in_proj_{kind}"):
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(tensor, key, source)):
                    converted[f"{layer}.self_attn.{projection}.{kind}"] = part
                continue
            if name in _CLIP_BLOCK_RENAMES:
                converted[f"{layer}.{_CLIP_BLOCK_RENAMES[name]}.{kind}"] = tensor
                continue
        converted[key] = tensor  # unknown: the strict load reports it
    return converted


# --------------------------------------------------------------------------------------------
# timm SigLIP VisionTransformer (open_clip's visual.trunk) → SiglipVisionModel

_SIGLIP_RENAMES = {
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
    "attn_pool.proj.weight": "head.attention.out_proj.weight",
    "attn_pool.proj.bias": "head.attention.out_proj.bias",
    "attn_pool.norm.weight": "head.layernorm.weight",
    "attn_pool.norm.bias": "head.layernorm.bias",
    "attn_pool.mlp.fc1.weight": "head.mlp.fc1.weight",
    "attn_pool.mlp.fc1.bias": "head.mlp.fc1.bias",
    "attn_pool.mlp.fc2.weight": "head.mlp.fc2.weight",
    "attn_pool.mlp.fc2.bias": "head.mlp.fc2.bias",
}
_SIGLIP_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def timm_siglip_to_hf(state: dict[str, torch.Tensor], source: str | os.PathLike = "") -> dict[str, torch.Tensor]:
    """timm SigLIP ViT tensors (``visual.trunk.`` removed) → ``SiglipVisionModel`` keys.

    - ``pos_embed`` ``[1, N, C]`` → ``embeddings.position_embedding.weight`` ``[N, C]``;
    - ``blocks.N.attn.qkv`` (rows q, k, v) → ``q_proj``, ``k_proj``, ``v_proj``;
    - the attention pool: ``latent`` → ``head.probe``; ``q`` and ``kv`` (rows k, v) are stacked into
      ``nn.MultiheadAttention``'s ``in_proj_weight``/``in_proj_bias`` (rows q, k, v);
    - a classifier ``head.*`` after the pool (absent in SigLIP checkpoints) is dropped.
    """
    block = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
    converted: dict[str, torch.Tensor] = {}
    remaining = dict(state)
    for kind in ("weight", "bias"):
        query, key_value = remaining.pop(f"attn_pool.q.{kind}", None), remaining.pop(f"attn_pool.kv.{kind}", None)
        if query is not None and key_value is not None:
            if key_value.shape[0] != 2 * query.shape[0]:
                raise WeightsError(
                    f"{source}: attention pool 'kv.{kind}' has shape {tuple(key_value.shape)}, expected twice the rows of "
                    f"'q.{kind}' {tuple(query.shape)}"
                )
            converted[f"head.attention.in_proj_{kind}"] = torch.cat([query, key_value], dim=0)
        else:  # let the strict load name what is missing/unexpected
            for name, tensor in ((f"attn_pool.q.{kind}", query), (f"attn_pool.kv.{kind}", key_value)):
                if tensor is not None:
                    converted[name] = tensor
    for key, tensor in remaining.items():
        if key.startswith("head."):
            logger.debug("dropping classifier tensor %s (after the pooled feature)", key)
            continue
        if key == "pos_embed":
            converted["embeddings.position_embedding.weight"] = tensor.reshape(-1, tensor.shape[-1])
            continue
        if key == "attn_pool.latent":
            converted["head.probe"] = tensor
            continue
        if key in _SIGLIP_RENAMES:
            converted[_SIGLIP_RENAMES[key]] = tensor
            continue
        match = block.match(key)
        if match:
            index, name, kind = match.groups()
            layer = f"encoder.layers.{index}"
            if name == "attn.qkv":
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(tensor, key, source)):
                    converted[f"{layer}.self_attn.{projection}.{kind}"] = part
                continue
            if name in _SIGLIP_BLOCK_RENAMES:
                converted[f"{layer}.{_SIGLIP_BLOCK_RENAMES[name]}.{kind}"] = tensor
                continue
        converted[key] = tensor  # unknown (cls_token, norm_pre, layer scale...): the strict load reports it
    return converted
