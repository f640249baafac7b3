"""The CREward model: frozen backbone + reward head, with the official preprocessing.

Score of an image = ``head(backbone(normalize(resize(image))))``, one value per axis in
``model.axes`` (geometry, material, texture, overall). Scores are relative: compare images of
the same subject; higher means more creative on that axis.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from .backbones.base import Backbone
from .backbones.registry import BackboneSpec
from .errors import ImageError, WeightsError
from .head import HeadInfo
from .preprocess import resize_and_normalize

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# model.score refuses pixel values outside this range: [0, 1] with room for resampling overshoot,
# far from what 0..255 pixels or [-1, 1]-normalised images hold.
VALUE_RANGE = (-0.5, 1.5)


def check_value_range(images: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Raise ``ImageError`` for images clearly not in [0, 1] (0..255 pixels, [-1, 1] tensors)."""
    tensors = [images] if isinstance(images, torch.Tensor) else list(images)
    finite = [tensor.detach() for tensor in tensors if tensor.numel()]
    if not finite:
        return
    low = min(float(tensor.amin()) for tensor in finite)
    high = max(float(tensor.amax()) for tensor in finite)
    if low >= VALUE_RANGE[0] and high <= VALUE_RANGE[1]:
        return
    hint = "0..255 pixels? divide them by 255" if high > VALUE_RANGE[1] else "[-1, 1] images? use (x + 1) / 2"
    raise ImageError(
        f"images should hold values in [0, 1] (as ComfyUI's IMAGE and torchvision's ToTensor give), but these range from "
        f"{low:g} to {high:g} ({hint})"
    )


class CREward(nn.Module):
    """Backbone + head. Use :func:`creward.models.load` to build one from files.

    The backbone may run in half precision (``to(device, dtype)`` casts only the backbone);
    the head always runs in float32, as in the official code.
    """

    def __init__(self, backbone: Backbone, head: nn.Sequential, head_info: HeadInfo, spec: BackboneSpec, backbone_source: str | None = None):
        super().__init__()
        if head_info.feature_dim != backbone.feature_dim:
            raise WeightsError(
                f"head {head_info.path or '(in memory)'} expects {head_info.feature_dim}-wide features but backbone "
                f"{spec.name!r} from {backbone_source or '(in memory)'} gives {backbone.feature_dim}-wide features: "
                f"the head was trained on a different backbone"
            )
        self.backbone = backbone
        self.head = head.eval()
        for parameter in self.head.parameters():
            parameter.requires_grad_(False)
        self.head_info = head_info
        self.spec = spec
        self.backbone_source = backbone_source
        self.axes: tuple[str, ...] = tuple(head_info.axes)

    # -- placement -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the backbone."""
        return next(self.backbone.parameters()).dtype

    def place(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "CREward":
        """Move to ``device``; the backbone runs in ``dtype`` (default float32), the head in float32."""
        device = torch.device(device)
        self.backbone.to(device=device, dtype=dtype or torch.float32)
        self.head.to(device=device, dtype=torch.float32)
        return self

    def train(self, mode: bool = True) -> "CREward":
        # Inference-only module: dropout in the head stays off even inside a training loop.
        return super().train(False)

    # -- the formula -----------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.spec.preprocessing.image_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] → normalised ``[B, 3, S, S]`` (differentiable)."""
        return resize_and_normalize(images, self.spec.preprocessing)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels → float32 features ``[B, D]``.

        Raises ``WeightsError`` when the backbone gives inf/NaN (fp16 activations overflow above
        65504; bf16 and fp32 have fp32's range), instead of returning NaN scores.
        """
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        features = self.backbone(pixel_values).float()
        if not bool(torch.isfinite(features).all()):
            if not bool(torch.isfinite(pixel_values).all()):
                raise ImageError("the images hold inf/NaN values; nothing can be scored from them")
            advice = ("fp16 has a small range (its activations overflow above 65504): run it in bf16 or fp32"
                      if self.dtype == torch.float16 else "its weights may be damaged")
            raise WeightsError(f"backbone {self.spec.name!r} ({self.backbone_source}) gave inf/NaN features in {str(self.dtype).replace('torch.', '')}: {advice}")
        return features

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.to(device=self.device, dtype=torch.float32))

    def score_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels → scores ``[B, len(axes)]``."""
        return self.score_features(self.features(pixel_values))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] → scores ``[B, len(axes)]``, differentiable in the images."""
        return self.score_pixels(self.preprocess(images.to(self.device)))

    # -- batched inference -----------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """Score images in batches; returns float32 scores ``[N, len(axes)]`` on the CPU.

        Args:
            images: a ``[N, 3, H, W]`` tensor in [0, 1], a ``[N, H, W, 3]`` tensor when
                ``channels_last`` (ComfyUI's IMAGE), or a list of ``[3, H, W]`` tensors of any sizes.
            batch_size: images per backbone forward (bounds memory).
            progress: called as ``progress(done, total)`` after each batch.

        Raises:
            ImageError: no images, or values clearly outside [0, 1] (such as 0..255 pixels).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size should be positive, got {batch_size}")
        total = len(images)
        if total == 0:
            raise ImageError("no images to score (empty batch)")
        check_value_range(images)
        results = []
        for start in range(0, total, batch_size):
            chunk = images[start:start + batch_size]
            if isinstance(chunk, torch.Tensor):
                if channels_last:
                    chunk = chunk.movedim(-1, 1)
                pixels = self.preprocess(chunk.to(self.device, torch.float32))
            else:
                pixels = torch.cat([self.preprocess(image.to(self.device, torch.float32)) for image in chunk])
            results.append(self.score_pixels(pixels).float().cpu())
            if progress is not None:
                progress(min(start + batch_size, total), total)
        return torch.cat(results)

    def describe(self) -> str:
        return (
            f"CREward(backbone={self.spec.name}, features={self.backbone.feature_dim}, image_size={self.image_size}, "
            f"axes={list(self.axes)}, head={self.head_info.path}, backbone_weights={self.backbone_source})"
        )
