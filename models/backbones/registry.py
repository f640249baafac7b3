"""The one table of CREward backbones: architecture, preprocessing and where weights come from.

Adding a backbone is adding one ``BackboneSpec`` here and one module in this package with
``load(path, spec, dtype=None) -> Backbone`` (built in ``dtype``, float32 when None). Feature widths in this table are the official models' widths,
for documentation only: the loaders always read the width from the weights.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CREwardError

if TYPE_CHECKING:  # the table itself needs no torch: the command line reads it while parsing
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its pixels: square size, interpolation, normalisation
    (applied by ``creward.models.preprocess``)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic"

    def __post_init__(self):
        if self.image_size <= 0:
            raise ValueError(f"image_size should be positive, got {self.image_size}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation should be 'bilinear' or 'bicubic', got {self.interpolation!r}")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    preprocessing: Preprocessing
    feature: str  # which output is pooled into the feature vector
    official_feature_dim: int
    module: str  # module in this package with ``load(path, spec, dtype=None) -> Backbone``
    weights_hint: str  # what a user has to provide, in words
    hf_repo: str | None = None  # where `creward download` fetches the backbone
    download_url: str | None = None  # for single files outside the Hub
    default_names: tuple[str, ...] = ()  # file/folder names looked up in models/creward/backbones/
    requires: str | None = None  # optional package needed


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="siglip-gemma3",
            description="SigLIP vision tower + multi-modal projector of Gemma-3-4B-IT (the paper's default and best)",
            preprocessing=Preprocessing(896, HALF, HALF, "bilinear"),
            feature="last_hidden_state -> multi_modal_projector -> mean over tokens",
            official_feature_dim=2560,
            module="siglip_gemma3",
            weights_hint="a Hugging Face folder of google/gemma-3-4b-it (config.json + model-*.safetensors); "
            "only the vision tower and projector tensors are read",
            hf_repo="google/gemma-3-4b-it",
            default_names=("gemma-3-4b-it", "siglip-gemma3"),
        ),
        BackboneSpec(
            name="siglip2",
            description="SigLIP2 so400m patch14 384 vision model",
            preprocessing=Preprocessing(384, HALF, HALF, "bilinear"),
            feature="pooler_output (attention pooled)",
            official_feature_dim=1152,
            module="siglip2",
            weights_hint="a Hugging Face folder of google/siglip2-so400m-patch14-384, or an open_clip "
            "ViT-SO400M-14-SigLIP2-378 checkpoint (open_clip_model.safetensors; open_clip's patch-14 so400m SigLIP2 "
            "tower, the same network as the 384 px Hugging Face model)",
            hf_repo="google/siglip2-so400m-patch14-384",
            default_names=("siglip2-so400m-patch14-384", "siglip2"),
        ),
        BackboneSpec(
            name="clip",
            description="OpenAI CLIP ViT-L/14 vision model",
            preprocessing=Preprocessing(224, CLIP_MEAN, CLIP_STD, "bilinear"),
            feature="pooler_output (post-layernorm CLS, before the projection)",
            official_feature_dim=1024,
            module="clip",
            weights_hint="a Hugging Face folder of openai/clip-vit-large-patch14, ComfyUI's "
            "models/clip_vision/clip_vision_l.safetensors, or an open_clip ViT-L-14 (OpenAI) checkpoint",
            hf_repo="openai/clip-vit-large-patch14",
            default_names=("clip-vit-large-patch14", "clip", "clip_vision_l.safetensors"),
        ),
        BackboneSpec(
            name="dino3",
            description="DINOv3 ViT-H/16+",
            preprocessing=Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
            feature="CLS token of last_hidden_state",
            official_feature_dim=1280,
            module="dino3",
            weights_hint="a Hugging Face folder of facebook/dinov3-vith16plus-pretrain-lvd1689m",
            hf_repo="facebook/dinov3-vith16plus-pretrain-lvd1689m",
            default_names=("dinov3-vith16plus-pretrain-lvd1689m", "dino3"),
        ),
        BackboneSpec(
            name="vgg16",
            description="torchvision VGG16 (ImageNet) without the classifier's last Linear",
            preprocessing=Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
            feature="classifier[:-1] output",
            official_feature_dim=4096,
            module="vgg16",
            weights_hint="torchvision's vgg16-397923af.pth",
            download_url="https://download.pytorch.org/models/vgg16-397923af.pth",
            default_names=("vgg16-397923af.pth", "vgg16.pth", "vgg16.safetensors"),
        ),
        BackboneSpec(
            name="dreamsim",
            description="DreamSim ensemble embedding (needs the optional 'dreamsim' package)",
            preprocessing=Preprocessing(224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bicubic"),
            feature="DreamSim embed",
            official_feature_dim=1792,
            module="dreamsim",
            weights_hint="DreamSim's checkpoint folder (what dreamsim(pretrained=True, cache_dir=...) writes)",
            default_names=("dreamsim",),
            requires="dreamsim",
        ),
    )
}


def available_backbones() -> list[str]:
    """Names of every backbone CREward knows."""
    return list(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise CREwardError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}") from None


def load_backbone(name: str, weights: str | os.PathLike, dtype: "torch.dtype | None" = None):
    """Build backbone ``name`` from local ``weights`` (file or folder) on CPU, frozen, in ``dtype``
    (default float32). The module is built in ``dtype`` and the tensors are converted as they are
    copied in, so a bf16 checkpoint loaded for bf16 compute never has a float32 copy."""
    spec = get_spec(name)
    module = importlib.import_module(f"{__package__}.{spec.module}")
    backbone = module.load(os.fspath(weights), spec, dtype=dtype)
    backbone.name = spec.name
    return backbone.freeze()
