"""Tiny random DINOv3 ViT folders shaped like facebook/dinov3-vith16plus-pretrain-lvd1689m.

Same architecture options as ViT-H/16+ (patch 16, 4 register tokens, SwiGLU MLP, layer scale,
RoPE, 224 px) at hidden 32 with 2 layers.

Formats (``build(folder, fmt)``):

- ``"hub"``: ``config.json`` + one ``model.safetensors`` with the Hub's keys (``layer.N.*``), written
  by transformers 5.x ``save_pretrained`` (which writes exactly the Hub's layout);
- ``"sharded"``: the same, split into shards with ``model.safetensors.index.json``;
- ``"module"``: one ``model.safetensors`` holding ``DINOv3ViTModel.state_dict()`` (5.x module keys
  ``model.layer.N.*``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FORMATS = ("hub", "sharded", "module")
IMAGE_SIZE = 224
CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
    image_size=IMAGE_SIZE, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu", layerscale_value=1.0,
    key_bias=False, layer_norm_eps=1e-5, rope_theta=100.0, pos_embed_rescale=2.0,
)
FEATURE_DIM = CONFIG["hidden_size"]
REGISTERS = CONFIG["num_register_tokens"]


def random_model(config: dict | None = None, seed: int = 0):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(**(config or CONFIG))).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(0.0, 0.1)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                parameter.add_(1.0)
    return model


def build(folder: str | Path, fmt: str = "hub", seed: int = 0, config: dict | None = None) -> Path:
    """Write a tiny random DINOv3 ViT folder in format ``fmt``; returns the folder."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    model = random_model(config, seed)
    if fmt == "module":
        folder.mkdir(parents=True, exist_ok=True)
        model.config.to_json_file(str(folder / "config.json"))
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(folder, max_shard_size="20KB" if fmt == "sharded" else "50GB")
    return folder


def on_disk_keys(folder: str | Path) -> list[str]:
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text())["weight_map"])
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return sorted(handle.keys())
