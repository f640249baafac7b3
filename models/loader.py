"""``load()``: build a CREward model from local files."""

from __future__ import annotations

import logging
import os

import torch

from .backbones.registry import get_spec, load_backbone
from .device import resolve_device, resolve_dtype
from .errors import WeightsError
from .head import load_head
from .locate import find_backbone_weights, find_head
from .model import CREward

logger = logging.getLogger(__name__)


def load(
    head: str | os.PathLike | None = None,
    backbone: str | None = None,
    backbone_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> CREward:
    """Load CREward from a head file and local backbone weights. Nothing is downloaded.

    Args:
        head: head file (safetensors written by CREward, or the official ``reward_head_best.ckpt``
            together with ``backbone``). When None it is looked up (see ``creward.models.locate``).
        backbone: backbone name (``siglip-gemma3``, ``siglip2``, ``clip``, ``dino3``, ``vgg16``,
            ``dreamsim``). Defaults to the name stored in the head file's metadata.
        backbone_weights: the backbone's weights (Hugging Face folder or single file); looked up
            when None.
        device: ``cpu`` (default), ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        dtype: backbone compute dtype: ``fp32``/``fp16``/``bf16``/``auto`` or a torch dtype;
            default float32 (``auto`` picks bf16/fp16 on GPUs). The head always runs in float32.

    Returns:
        A ``CREward`` module in eval mode; call ``model.score(images)``.

    Raises:
        WeightsError: a file is missing, unreadable, or head and backbone do not fit together.
        CREwardError: unknown backbone name, device or dtype.

    Example:
        >>> model = load("creward_siglip-gemma3.safetensors", backbone_weights="gemma-3-4b-it/")
        >>> scores = model.score(images)  # [N, 4]: geometry, material, texture, overall
    """
    head_path = find_head(head, backbone)
    head_module, info = load_head(head_path, backbone)
    if info.backbone is None:
        raise WeightsError(
            f"{head_path} does not say which backbone it was trained on (official .ckpt files carry no metadata): "
            f"pass backbone=... / --backbone NAME, or convert it once with `creward convert {head_path} --backbone NAME`"
        )
    spec = get_spec(info.backbone)
    weights_path = find_backbone_weights(spec.name, backbone_weights)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype if dtype is not None else "fp32", resolved_device)
    logger.info("loading backbone %s from %s (%s)", spec.name, weights_path, str(resolved_dtype).replace("torch.", ""))
    # Built directly in its compute dtype: a bf16 checkpoint run in bf16 never has a float32 copy.
    backbone_module = load_backbone(spec.name, weights_path, dtype=resolved_dtype)
    model = CREward(backbone_module, head_module, info, spec, backbone_source=str(weights_path))
    model.place(resolved_device, resolved_dtype)
    return model
