"""The ``CREWARD`` value: a CREward model under ComfyUI's model management.

Like ComfyUI's own ``clip_vision.ClipVisionModel``: the module is wrapped in a
``comfy.model_patcher.ModelPatcher`` with load/offload devices from ``comfy.model_management``;
``load_models_gpu`` is called before every scoring call (it is a no-op when the model is already
on its device, and moves it back after ComfyUI offloaded it to make room for other models); the
scores are returned on ``intermediate_device()``. Nothing here calls ``.cuda()`` or empties
caches itself.

The model is always loaded fully (``force_full_load=True``): our backbones are plain PyTorch /
transformers modules without ComfyUI's cast-on-the-fly layers, so a partial ("lowvram") load
would leave some layers on the offload device and the forward would fail.
"""

from __future__ import annotations

import logging

import torch

from ..models.errors import ImageError
from ..models.model import CREward

logger = logging.getLogger(__name__)

# Rough activation memory per image, in bytes per input pixel-channel element at the compute
# dtype's size; tells ComfyUI how much room to make on the device before a batch.
ACTIVATION_FACTOR = 64


class PatchableCREward(torch.nn.Module):
    """What the ModelPatcher manages: the CREward module plus the ``device`` attribute it updates."""

    def __init__(self, model: CREward, device: torch.device):
        super().__init__()
        self.creward = model
        self.device = device

    def get_dtype(self) -> torch.dtype:
        return self.creward.dtype


class ManagedCREward:
    """A loaded CREward (backbone + head) that ComfyUI loads to and offloads from its device.

    Attributes:
        model: the ``creward.models.CREward`` module.
        patcher: its ``ModelPatcher``.
        description: what was loaded from where (shown in logs and summaries).
    """

    def __init__(self, model: CREward, load_device: torch.device, offload_device: torch.device, dtype: torch.dtype, description: str):
        import comfy.model_patcher

        model.place(offload_device, dtype)
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.description = description
        self.patcher = comfy.model_patcher.ModelPatcher(
            PatchableCREward(model, offload_device), load_device=load_device, offload_device=offload_device
        )

    @property
    def axes(self) -> tuple[str, ...]:
        return self.model.axes

    @property
    def short_description(self) -> str:
        """Backbone and precision, e.g. ``clip, fp32`` (the caption of the score bars)."""
        from ..models.device import dtype_name

        return f"{self.model.spec.name}, {dtype_name(self.model.dtype)}"

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def scorer(self):
        """The ``ScorerIdentity`` (head hash, backbone, axes) of the loaded model."""
        from ..models.scorer_identity import ScorerIdentity

        return ScorerIdentity.of_model(self.model)

    def load(self, batch_size: int) -> None:
        """Make sure the model sits on its load device (ComfyUI frees room for a batch first)."""
        import comfy.model_management as model_management

        element = torch.tensor([], dtype=self.model.dtype).element_size()
        memory_required = batch_size * 3 * self.image_size * self.image_size * element * ACTIVATION_FACTOR
        model_management.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)

    def score_images(self, images: torch.Tensor, batch_size: int, progress=None) -> torch.Tensor:
        """Score ComfyUI images ``[B, H, W, C]`` in [0, 1]; returns float32 ``[B, len(axes)]``.

        ``progress(done)`` is called after each batch with the number of images scored so far.
        Checks for an interrupt before each batch.
        """
        import comfy.model_management as model_management

        images = as_rgb(images)
        self.load(batch_size)

        def after_batch(done: int, total: int) -> None:
            if progress is not None:
                progress(done)
            if done < total:
                model_management.throw_exception_if_processing_interrupted()

        model_management.throw_exception_if_processing_interrupted()
        scores = self.model.score(images, batch_size=batch_size, progress=after_batch, channels_last=True)
        return scores.to(model_management.intermediate_device())


def as_rgb(images: torch.Tensor, input_name: str = "images") -> torch.Tensor:
    """Check a ComfyUI IMAGE and return its RGB channels (alpha dropped, grey repeated)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ImageError(f"{input_name}: expected an IMAGE batch shaped [batch, height, width, channels], got {shape}")
    if images.shape[0] == 0:
        raise ImageError(f"{input_name}: the image batch is empty (0 images); nothing to score")
    channels = images.shape[-1]
    if channels == 1:
        return images.expand(-1, -1, -1, 3)
    if channels in (3, 4):
        return images[..., :3]
    raise ImageError(f"{input_name}: expected 1, 3 or 4 channels in the last dimension, got {channels} (shape {tuple(images.shape)})")
