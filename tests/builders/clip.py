"""Tiny random OpenAI-CLIP vision weights in every format users have for the ``clip`` backbone.

One set of random weights (a transformers ``CLIPModel``: vision width 128, 2 layers, 2 heads of
64 as OpenAI's, patch 32 at the official 224 px, ``quick_gelu``) is written in each format, so the
loaders can be checked against one another. Parameters are rounded to float16 values, so the
float16 ComfyUI file holds exactly the same weights.

Formats (``build(folder, fmt)`` returns the path to pass as backbone weights):

- ``"hub"``: ``CLIPModel.save_pretrained`` (``config.json`` model_type ``clip``; keys
  ``vision_model.*``, ``text_model.*``, ``visual_projection.weight``...), as openai/clip-vit-large-patch14;
- ``"sharded"``: the same in shards + ``model.safetensors.index.json``;
- ``"vision"``: ``CLIPVisionModel.save_pretrained`` (model_type ``clip_vision_model``);
- ``"comfyui"``: ComfyUI's ``models/clip_vision/clip_vision_l.safetensors`` layout: ``vision_model.*``
  (with the ``position_ids`` buffer old conversions carry) + ``visual_projection.weight``, float16;
- ``"comfyui_bundle"``: a checkpoint bundling the tower under ``clip_vision.`` next to other models'
  tensors (ComfyUI's ``save_checkpoint`` prefix), as one file;
- ``"open_clip"``: open_clip ``CLIP.state_dict()`` (``visual.conv1.weight``, ``visual.transformer.
  resblocks.N.attn.in_proj_weight``, ``visual.proj``... plus the text tower) as
  ``open_clip_model.safetensors`` with ``open_clip_config.json`` beside it (the Hub layout); the file;
- ``"open_clip_bin"``: the same as ``open_clip_pytorch_model.bin`` (``torch.save``), without config;
- ``"open_clip_folder"``: the folder of ``"open_clip"``;
- ``"open_clip_training"``: an open_clip training checkpoint ``epoch_1.pt``
  (``{"epoch", "name", "state_dict": {"module.visual...": ...}}``).

``torchscript_archive(path)`` writes a TorchScript archive (what OpenAI's ``ViT-L-14.pt`` is).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ._files import save_safetensors, save_vision_model

FORMATS = (
    "hub", "sharded", "vision", "comfyui", "comfyui_bundle",
    "open_clip", "open_clip_bin", "open_clip_folder", "open_clip_training",
)
IMAGE_SIZE = 224
VISION = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    image_size=IMAGE_SIZE, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=64, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
PROJECTION_DIM = 16
FEATURE_DIM = VISION["hidden_size"]
GRID = IMAGE_SIZE // VISION["patch_size"]


def open_clip_config(vision: dict | None = None) -> dict:
    """The open_clip model config of the same architecture (open_clip_config.json's ``model_cfg``)."""
    vision = dict(VISION, **(vision or {}))
    return {
        "embed_dim": PROJECTION_DIM,
        "quick_gelu": vision["hidden_act"] == "quick_gelu",
        "vision_cfg": {
            "image_size": vision["image_size"],
            "layers": vision["num_hidden_layers"],
            "width": vision["hidden_size"],
            "head_width": vision["hidden_size"] // vision["num_attention_heads"],
            "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"],
            "patch_size": vision["patch_size"],
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }


def random_model(seed: int = 0, vision: dict | None = None):
    """A ``CLIPModel`` with every parameter random (LayerNorms near 1) and float16-exact."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=TEXT, vision_config=dict(VISION, **(vision or {})), projection_dim=PROJECTION_DIM)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            elif parameter.ndim == 1 and name.endswith(".bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
            else:
                fan_in = parameter[0].numel() if parameter.ndim > 1 else parameter.numel()
                parameter.copy_(torch.randn_like(parameter) / fan_in ** 0.5)
            parameter.copy_(parameter.half().float())
    return model


def vision_state(model) -> dict[str, torch.Tensor]:
    """The vision transformer's tensors, keys relative to it (``embeddings.*``, ``encoder.*``...)."""
    return {key: value.detach().clone() for key, value in model.vision_model.state_dict().items()}


def hf_to_open_clip_visual(model) -> dict[str, torch.Tensor]:
    """The builder's own transformers → open_clip conversion (q, k, v stacked into ``in_proj``)."""
    hf = vision_state(model)
    visual = {
        "class_embedding": hf["embeddings.class_embedding"],
        "conv1.weight": hf["embeddings.patch_embedding.weight"],
        "positional_embedding": hf["embeddings.position_embedding.weight"],
        "ln_pre.weight": hf["pre_layrnorm.weight"],
        "ln_pre.bias": hf["pre_layrnorm.bias"],
        "ln_post.weight": hf["post_layernorm.weight"],
        "ln_post.bias": hf["post_layernorm.bias"],
        "proj": model.visual_projection.weight.detach().t().contiguous(),
    }
    for index in range(model.config.vision_config.num_hidden_layers):
        source, target = f"encoder.layers.{index}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            visual[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [hf[f"{source}self_attn.{name}_proj.{kind}"] for name in ("q", "k", "v")]
            )
            for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                visual[f"{target}{ours}.{kind}"] = hf[f"{source}{theirs}.{kind}"]
    return visual


def open_clip_model(state: dict[str, torch.Tensor] | None = None, vision: dict | None = None):
    """open_clip's own ``CLIP`` of the tiny architecture, optionally loaded strictly from ``state``."""
    from open_clip.model import CLIP

    config = open_clip_config(vision)
    model = CLIP(config.pop("embed_dim"), config.pop("vision_cfg"), config.pop("text_cfg"), **config).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def open_clip_state(model, vision: dict | None = None) -> dict[str, torch.Tensor]:
    """A full open_clip state dict (random text tower) whose visual tower holds ``model``'s weights."""
    torch.manual_seed(1234)
    clip = open_clip_model(vision=vision)
    clip.visual.load_state_dict(hf_to_open_clip_visual(model), strict=True)
    return {key: value.detach().contiguous() for key, value in clip.state_dict().items()}


def _comfyui_state(model) -> dict[str, torch.Tensor]:
    state = {f"vision_model.{key}": value for key, value in vision_state(model).items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(GRID * GRID + 1).unsqueeze(0)
    state["visual_projection.weight"] = model.visual_projection.weight.detach().clone()
    return {key: value.half() if value.is_floating_point() else value for key, value in state.items()}


def build(folder: str | Path, fmt: str = "hub", seed: int = 0, vision: dict | None = None) -> Path:
    """Write the tiny random CLIP weights in format ``fmt`` under ``folder``; returns the path to load."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    model = random_model(seed, vision)
    if fmt in ("hub", "sharded"):
        model.save_pretrained(folder, max_shard_size="100KB" if fmt == "sharded" else "50GB")
        return folder
    if fmt == "vision":
        from transformers import CLIPVisionModel

        return save_vision_model(CLIPVisionModel, model.config.vision_config, vision_state(model), folder)
    if fmt == "comfyui":
        return save_safetensors(_comfyui_state(model), folder / "clip_vision_l.safetensors")
    if fmt == "comfyui_bundle":
        state = {f"clip_vision.{key}": value for key, value in _comfyui_state(model).items()}
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3).half()
        state["first_stage_model.decoder.conv_in.weight"] = torch.randn(8, 4, 3, 3).half()
        return save_safetensors(state, folder / "unclip_bundle.safetensors")
    state = open_clip_state(model, vision)
    if fmt in ("open_clip", "open_clip_folder"):
        path = save_safetensors(state, folder / "open_clip_model.safetensors")
        (folder / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": open_clip_config(vision),
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
        }, indent=2))
        return path if fmt == "open_clip" else folder
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "open_clip_bin":
        path = folder / "open_clip_pytorch_model.bin"
        torch.save(state, path)
        return path
    path = folder / "epoch_1.pt"  # open_clip_train's checkpoint, saved from a DDP-wrapped model
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    return path


def torchscript_archive(path: str | Path) -> Path:
    """A TorchScript archive (``torch.jit.save``), the format of OpenAI's original ``ViT-L-14.pt``."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Tiny()), str(path))
    return path
