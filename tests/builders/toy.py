"""A toy in-memory backbone for tests of the model plumbing (not a registry backbone)."""

from __future__ import annotations

import torch
from torch import nn

from creward.models.backbones.base import Backbone, GradCamLayer
from creward.models.backbones.registry import get_spec
from creward.models.head import HeadInfo, build_head
from creward.models.model import CREward


class ToyBackbone(Backbone):
    """Conv patch embedding + mean pool: enough to exercise batching, dtype and gradients."""

    def __init__(self, width: int = 8, patch: int = 32):
        super().__init__()
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        self.feature_dim = width

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embed(pixel_values).mean(dim=(2, 3))

    def gradcam_layers(self) -> list[GradCamLayer]:
        return [GradCamLayer(self.embed)]


def toy_model(width: int = 8, seed: int = 0, backbone_name: str = "clip") -> CREward:
    torch.manual_seed(seed)
    backbone = ToyBackbone(width).freeze()
    head = build_head(width).eval()
    info = HeadInfo(path=None, backbone=backbone_name, axes=("geometry", "material", "texture", "overall"), feature_dim=width, version="1")
    return CREward(backbone, head, info, get_spec(backbone_name))
