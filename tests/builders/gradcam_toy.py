"""A toy CREward whose axes look at known image content, to check where Grad-CAM points.

The backbone embeds 32×32 patches into four hand-made channels — redness, greenness,
brightness, blueness — passes them through one "block" (the Grad-CAM layer) and mean-pools
the patch tokens. The head is the official MLP with block-structured, positive weights so that
axis ``g`` depends only (and increasingly) on channel ``g``: geometry sees red things,
material green things, texture bright things, overall blue things.

``planted_image`` paints a red and a green square on gray, each exactly one patch, so the
geometry heatmap must peak on the red square and the material heatmap on the green one.
"""

from __future__ import annotations

import torch
from torch import nn

from creward.models.backbones.base import Backbone, GradCamLayer
from creward.models.backbones.registry import get_spec
from creward.models.head import HIDDEN_WIDTHS, HeadInfo, LINEAR_INDICES, build_head
from creward.models.model import CREward

PATCH = 32
CHANNELS = 4
RED_PATCH = (1, 2)  # (row, col) on the 7×7 grid of a 224×224 image
GREEN_PATCH = (5, 4)


class ClsPool(nn.Module):
    """An "attention" block reduced to its essence: CLS ← mean of the patch tokens; patches unchanged."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, 1:].mean(dim=1, keepdim=True), tokens[:, 1:]], dim=1)


class ColourTokenBackbone(Backbone):
    """Patch embedding → [CLS | patch tokens] → block (Grad-CAM layer) → mean of patch tokens.

    ``layout="tokens"`` gives the block ``[B, 1 + N, C]`` tokens (transformer-like, one prefix
    token); ``layout="map"`` gives it a ``[B, C, h, w]`` feature map (CNN-like); ``layout="cls"``
    adds a second block that only moves the mean of the patch tokens into the CLS token, and the
    feature is that CLS token (like CLIP / DINOv3: the last block's patch outputs are unused).
    """

    def __init__(self, layout: str = "tokens"):
        super().__init__()
        self.layout = layout
        self.feature_dim = CHANNELS
        self.embed = nn.Conv2d(3, CHANNELS, PATCH, stride=PATCH, bias=False)
        kernel = torch.zeros(CHANNELS, 3, PATCH, PATCH)
        area = PATCH * PATCH
        kernel[0, 0], kernel[0, 1] = 1 / area, -1 / area  # red minus green
        kernel[1, 1], kernel[1, 0] = 1 / area, -1 / area  # green minus red
        kernel[2, :] = 1 / (3 * area)  # brightness
        kernel[3, 2], kernel[3, 0] = 1 / area, -1 / area  # blue minus red
        self.embed.weight.data.copy_(kernel)
        self.cls = nn.Parameter(torch.zeros(1, 1, CHANNELS))
        linear = nn.Linear(CHANNELS, CHANNELS)
        linear.weight.data.copy_(torch.eye(CHANNELS))
        linear.bias.data.zero_()
        self.block = nn.Sequential(linear, nn.ReLU())
        self.pool_block = ClsPool()
        self.block_map = nn.Sequential(nn.Conv2d(CHANNELS, CHANNELS, 1), nn.ReLU())
        self.block_map[0].weight.data.copy_(torch.eye(CHANNELS).view(CHANNELS, CHANNELS, 1, 1))
        self.block_map[0].bias.data.zero_()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.embed(pixel_values)  # [B, C, h, w]
        if self.layout == "map":
            return self.block_map(patches).mean(dim=(2, 3))
        tokens = torch.cat([self.cls.expand(patches.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        if self.layout == "cls":
            return self.pool_block(self.block(tokens))[:, 0]
        return self.block(tokens)[:, 1:].mean(dim=1)

    def gradcam_layers(self) -> list[GradCamLayer]:
        if self.layout == "map":
            return [GradCamLayer(self.block_map)]
        if self.layout == "cls":
            return [GradCamLayer(self.block, prefix_tokens=1, grid=(7, 7)), GradCamLayer(self.pool_block, prefix_tokens=1, grid=(7, 7))]
        return [GradCamLayer(self.embed), GradCamLayer(self.block, prefix_tokens=1, grid=(7, 7))]


def axis_selective_head(feature_dim: int = CHANNELS) -> nn.Sequential:
    """The official head with block-diagonal positive weights: output g depends only on feature g."""
    head = build_head(feature_dim).eval()
    widths = (feature_dim, *HIDDEN_WIDTHS, 4)
    with torch.no_grad():
        for layer_number, index in enumerate(LINEAR_INDICES):
            linear: nn.Linear = head[index]
            linear.weight.zero_()
            linear.bias.fill_(0.1 if layer_number == 0 else 0.0)
            fan_out, fan_in = widths[layer_number + 1] // 4, widths[layer_number] // 4
            for group in range(4):
                if layer_number == 0:
                    linear.weight[group * fan_out:(group + 1) * fan_out, group] = 1.0
                else:
                    linear.weight[group * fan_out:(group + 1) * fan_out, group * fan_in:(group + 1) * fan_in] = 1.0 / fan_in
    return head


def colour_model(layout: str = "tokens") -> CREward:
    """A 224-pixel ("clip" preprocessing) CREward over :class:`ColourTokenBackbone`."""
    backbone = ColourTokenBackbone(layout).freeze()
    info = HeadInfo(path=None, backbone="clip", axes=("geometry", "material", "texture", "overall"), feature_dim=CHANNELS, version="1")
    return CREward(backbone, axis_selective_head(), info, get_spec("clip"))


def patch_box(patch: tuple[int, int], size: int = 224, grid: int = 7) -> tuple[slice, slice]:
    """Pixel rows/cols of one grid cell in a ``size``×``size`` image."""
    step = size // grid
    return slice(patch[0] * step, (patch[0] + 1) * step), slice(patch[1] * step, (patch[1] + 1) * step)


def planted_image(size: int = 224, seed: int = 0) -> torch.Tensor:
    """``[3, size, size]``: mid-gray with mild noise, a red square on RED_PATCH and a green one on GREEN_PATCH."""
    generator = torch.Generator().manual_seed(seed)
    image = 0.5 + 0.05 * torch.rand(3, size, size, generator=generator)
    rows, cols = patch_box(RED_PATCH, size)
    image[:, rows, cols] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    rows, cols = patch_box(GREEN_PATCH, size)
    image[:, rows, cols] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    return image
