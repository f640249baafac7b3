"""Tiny random SigLIP2 vision weights in every format users have for the ``siglip2`` backbone.

One set of random weights (a transformers ``SiglipModel``: vision width 32, 2 layers, 4 heads of
8, MAP head, at the official 384 px with a 56 px patch) is written in each format, so the loaders
can be checked against one another. As in so400m/14 at 384 px (27 patches = 378 px), 384 is not a
multiple of the patch: 6 patches cover 336 px and transformers' convolution ignores the rest;
open_clip/timm name such weights by the covered size (``...-378``), so the tiny timm model is
built for 336 px.

Formats (``build(folder, fmt)`` returns the path to pass as backbone weights):

- ``"hub"``: ``SiglipModel.save_pretrained`` (model_type ``siglip``), as google/siglip2-so400m-patch14-384;
- ``"sharded"``: the same in shards + ``model.safetensors.index.json``;
- ``"vision"``: ``SiglipVisionModel.save_pretrained`` (model_type ``siglip_vision_model``);
- ``"open_clip"``: open_clip ``CustomTextCLIP.state_dict()`` with the timm trunk under
  ``visual.trunk.*`` (``patch_embed.proj``, ``pos_embed``, ``blocks.N.attn.qkv``, ``attn_pool.{latent,
  q, kv, proj, norm, mlp}``...) as ``open_clip_model.safetensors``, with ``open_clip_config.json``
  naming the timm model (the Hub layout of timm/ViT-SO400M-14-SigLIP2-378); the file;
- ``"open_clip_bin"``: the same as ``open_clip_pytorch_model.bin`` next to ``open_clip_config.json``;
- ``"open_clip_folder"``: the folder of ``"open_clip"``;
- ``"timm"``: a timm folder: ``config.json`` (``architecture``) + ``model.safetensors`` with the
  trunk's keys at the root.

The tiny timm architecture is registered in timm's model registry as ``TIMM_MODEL`` (by
``register_timm_model()``, called on import) so that open_clip and the loader can build it by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ._files import save_safetensors, save_vision_model

FORMATS = ("hub", "sharded", "vision", "open_clip", "open_clip_bin", "open_clip_folder", "timm")
IMAGE_SIZE = 384
PATCH = 56
GRID = IMAGE_SIZE // PATCH  # 6
COVERED = GRID * PATCH  # 336 px: what timm/open_clip are fed
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    vision_use_head=True,
)
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=64, max_position_embeddings=8, projection_size=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
FEATURE_DIM = VISION["hidden_size"]
TIMM_MODEL = "creward_test_vit_tiny_patch56_siglip_336"
TIMM_ARGS = dict(
    img_size=COVERED, patch_size=PATCH, embed_dim=VISION["hidden_size"], depth=VISION["num_hidden_layers"],
    num_heads=VISION["num_attention_heads"], mlp_ratio=VISION["intermediate_size"] / VISION["hidden_size"],
    class_token=False, global_pool="map",
)
# The open_clip model config (as in open_clip_config.json's "model_cfg"), like ViT-SO400M-14-SigLIP2-378's.
OPEN_CLIP_CONFIG = {
    "embed_dim": VISION["hidden_size"],
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": COVERED,
        "timm_model_name": TIMM_MODEL,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1,
        "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
    },
}


def register_timm_model() -> str:
    """Register the tiny SigLIP ViT in timm's registry (once) and return its name."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if timm.is_model(TIMM_MODEL):
        return TIMM_MODEL

    def creward_test_vit_tiny_patch56_siglip_336(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                                                 cache_dir=None, **kwargs):
        if pretrained:
            raise ValueError(f"{TIMM_MODEL} has no pretrained weights")
        return VisionTransformer(**dict(TIMM_ARGS, **kwargs))

    creward_test_vit_tiny_patch56_siglip_336.__module__ = __name__
    register_model(creward_test_vit_tiny_patch56_siglip_336)
    return TIMM_MODEL


def random_model(seed: int = 0, vision: dict | None = None):
    """A ``SiglipModel`` with every parameter random (LayerNorms near 1)."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(text_config=TEXT, vision_config=dict(VISION, **(vision or {})))
    model = SiglipModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ("norm" in name and name.endswith(".weight")):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            elif parameter.ndim == 1 and name.endswith(("bias", "in_proj_bias")):
                parameter.copy_(0.1 * torch.randn_like(parameter))
            else:
                fan_in = parameter[0].numel() if parameter.ndim > 1 else parameter.numel()
                parameter.copy_(torch.randn_like(parameter) / fan_in ** 0.5)
    return model


def vision_state(model) -> dict[str, torch.Tensor]:
    """The vision transformer's tensors, keys relative to it (``embeddings.*``, ``encoder.*``, ``head.*``...)."""
    return {key: value.detach().clone() for key, value in model.vision_model.state_dict().items()}


def hf_to_timm(model) -> dict[str, torch.Tensor]:
    """The builder's own transformers → timm conversion (q, k, v fused; the pool's k, v fused)."""
    hf = vision_state(model)
    width = hf["embeddings.patch_embedding.weight"].shape[0]
    in_proj_weight, in_proj_bias = hf["head.attention.in_proj_weight"], hf["head.attention.in_proj_bias"]
    trunk = {
        "pos_embed": hf["embeddings.position_embedding.weight"].unsqueeze(0),
        "patch_embed.proj.weight": hf["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embedding.bias"],
        "norm.weight": hf["post_layernorm.weight"],
        "norm.bias": hf["post_layernorm.bias"],
        "attn_pool.latent": hf["head.probe"],
        "attn_pool.q.weight": in_proj_weight[:width],
        "attn_pool.q.bias": in_proj_bias[:width],
        "attn_pool.kv.weight": in_proj_weight[width:],
        "attn_pool.kv.bias": in_proj_bias[width:],
        "attn_pool.proj.weight": hf["head.attention.out_proj.weight"],
        "attn_pool.proj.bias": hf["head.attention.out_proj.bias"],
        "attn_pool.norm.weight": hf["head.layernorm.weight"],
        "attn_pool.norm.bias": hf["head.layernorm.bias"],
    }
    for name in ("fc1", "fc2"):
        for kind in ("weight", "bias"):
            trunk[f"attn_pool.mlp.{name}.{kind}"] = hf[f"head.mlp.{name}.{kind}"]
    for index in range(model.config.vision_config.num_hidden_layers):
        source, target = f"encoder.layers.{index}.", f"blocks.{index}."
        for kind in ("weight", "bias"):
            trunk[f"{target}attn.qkv.{kind}"] = torch.cat([hf[f"{source}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                                 ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                trunk[f"{target}{ours}.{kind}"] = hf[f"{source}{theirs}.{kind}"]
    return {key: value.contiguous() for key, value in trunk.items()}


def open_clip_model(state: dict[str, torch.Tensor] | None = None):
    """open_clip's own ``CustomTextCLIP`` of the tiny architecture, optionally loaded strictly from ``state``."""
    from open_clip.model import CustomTextCLIP

    register_timm_model()
    config = dict(OPEN_CLIP_CONFIG)
    config.pop("custom_text")
    model = CustomTextCLIP(config.pop("embed_dim"), config.pop("vision_cfg"), config.pop("text_cfg"), **config).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def open_clip_state(model) -> dict[str, torch.Tensor]:
    """A full open_clip state dict (random text tower) whose visual trunk holds ``model``'s weights."""
    torch.manual_seed(1234)
    clip = open_clip_model()
    clip.visual.trunk.load_state_dict(hf_to_timm(model), strict=True)
    return {key: value.detach().contiguous() for key, value in clip.state_dict().items()}


def write_open_clip_config(folder: Path) -> None:
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": OPEN_CLIP_CONFIG,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
    }, indent=2))


def build(folder: str | Path, fmt: str = "hub", seed: int = 0, vision: dict | None = None) -> Path:
    """Write the tiny random SigLIP2 weights in format ``fmt`` under ``folder``; returns the path to load."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    model = random_model(seed, vision)
    if fmt in ("hub", "sharded"):
        model.save_pretrained(folder, max_shard_size="20KB" if fmt == "sharded" else "50GB")
        return folder
    if fmt == "vision":
        from transformers import SiglipVisionModel

        return save_vision_model(SiglipVisionModel, model.config.vision_config, vision_state(model), folder)
    if fmt == "timm":
        path = save_safetensors(hf_to_timm(model), folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({
            "architecture": register_timm_model(), "num_classes": 0, "num_features": VISION["hidden_size"],
            "global_pool": "map", "pretrained_cfg": {"input_size": [3, COVERED, COVERED]},
        }, indent=2))
        return folder
    state = open_clip_state(model)
    if fmt in ("open_clip", "open_clip_folder"):
        path = save_safetensors(state, folder / "open_clip_model.safetensors")
        write_open_clip_config(folder)
        return path if fmt == "open_clip" else folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    write_open_clip_config(folder)
    return path


try:  # so that timm (used by open_clip and by the loader) can build TIMM_MODEL by name
    register_timm_model()
except ImportError:  # pragma: no cover - timm missing: the open_clip formats cannot be built
    pass
