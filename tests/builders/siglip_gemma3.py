"""Tiny random gemma-3 folders (vision tower + projector + language model) in the formats users have.

The configs are tiny (hidden 32, 2 layers) but keep the official 896-pixel input; a 64-pixel patch
gives a 14x14 grid that ``mm_tokens_per_image`` = 49 pools 2x2 to 7x7 tokens. The text hidden size
(48) differs from the vision one (32), so a feature read at the wrong place has the wrong width.

Formats (``build(folder, fmt)``):

- ``"hub"``: what ``google/gemma-3-4b-it`` ships: 3 shards + ``model.safetensors.index.json``,
  keys ``vision_tower.vision_model.*``, ``multi_modal_projector.*``, ``language_model.model.*``,
  the Hub's minimal config.json (``vision_use_head: false``);
- ``"save_pretrained"``: transformers 5.x ``Gemma3ForConditionalGeneration.save_pretrained`` (sharded),
  keys ``vision_tower.*`` without SigLIP's ``vision_model.`` level;
- ``"module"``: one ``model.safetensors`` with the module tree's keys (``model.vision_tower...``);
- ``"text_only"``: the hub layout without any vision-tower tensors (an error case).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FORMATS = ("hub", "save_pretrained", "module", "text_only")
IMAGE_SIZE = 896
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    image_size=IMAGE_SIZE, patch_size=64, vision_use_head=False, model_type="siglip_vision_model",
)
TEXT = dict(
    hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=24, vocab_size=512, sliding_window=32, model_type="gemma3_text",
)
MM_TOKENS = 49
FEATURE_DIM = TEXT["hidden_size"]


def hub_config(vision: dict | None = None, text: dict | None = None, mm_tokens: int = MM_TOKENS) -> dict:
    """A config.json shaped like the Hub's gemma-3-4b-it one (only the fields it sets)."""
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "eos_token_id": [1, 106],
        "image_token_index": 262144,
        "initializer_range": 0.02,
        "mm_tokens_per_image": mm_tokens,
        "model_type": "gemma3",
        "text_config": dict(TEXT if text is None else text),
        "torch_dtype": "float32",
        "transformers_version": "4.50.0.dev0",
        "vision_config": dict(VISION if vision is None else vision),
    }


def random_model(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A Gemma3ForConditionalGeneration with every parameter random (transformers zero-inits some)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(config)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(0.0, 0.1)
            if name.endswith(("layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")):
                parameter.add_(1.0)  # SigLIP LayerNorms scale by weight (Gemma's RMSNorms by 1 + weight)
    return model.to(dtype)


def _hub_key(key: str) -> str:
    """Module-tree key (transformers 5.x) → the Hub's on-disk key."""
    if key.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + key[len("model.vision_tower."):]
    if key.startswith("model.multi_modal_projector."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    return key


def write_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """Shards named and indexed like the Hub's (``model-0000i-of-0000N.safetensors`` + index)."""
    from safetensors.torch import save_file

    keys = sorted(state)
    weight_map = {}
    total = 0
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key].contiguous() for key in keys[index::shards]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in part})
        total += sum(tensor.numel() * tensor.element_size() for tensor in part.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def build(folder: str | Path, fmt: str = "hub", seed: int = 0, config: dict | None = None,
          dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random gemma-3 folder in format ``fmt`` under ``folder``; returns the folder."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = config or hub_config()
    model = random_model(config, seed, dtype)
    if fmt == "save_pretrained":
        model.save_pretrained(folder, max_shard_size="200KB")
        return folder
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to the embeddings, as on the Hub
    if fmt == "module":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        state = {_hub_key(key): value for key, value in state.items()}
        if fmt == "text_only":
            state = {key: value for key, value in state.items() if not key.startswith("vision_tower.")}
        write_sharded(state, folder, shards=3)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
