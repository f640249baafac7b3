"""What every CREward backbone provides: pixels in, one feature vector per image out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GradCamLayer:
    """A layer whose activations Grad-CAM weighs.

    ``module``'s forward output (or its first element, if a tuple) is either token activations
    ``[B, T, C]`` (transformers: ``prefix_tokens`` leading tokens such as CLS/registers are
    dropped and the rest reshaped to ``grid`` = (rows, cols)) or a feature map ``[B, C, h, w]``
    (CNNs: ``grid`` is None).
    """

    module: nn.Module
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None


class Backbone(nn.Module):
    """A frozen feature extractor.

    Subclasses set ``name`` (the registry name) and ``feature_dim`` (read from the weights, never
    from a fixed table), implement ``forward(pixel_values) -> [B, feature_dim]`` on pixels that were
    already resized and normalised for this backbone, and list their Grad-CAM layers.
    """

    name: str = ""
    feature_dim: int = 0

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def gradcam_layers(self) -> list[GradCamLayer]:
        """Candidate layers for Grad-CAM, first block to last (the default is the last)."""
        raise NotImplementedError(f"backbone {self.name!r} does not support Grad-CAM")

    def freeze(self) -> "Backbone":
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen: always inference behaviour (dropout off), whatever a parent module asks.
        return super().train(False)
