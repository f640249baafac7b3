"""CREward core: plain PyTorch, no ComfyUI.

Public API::

    from creward.models import load, available_backbones, AXES
    model = load(head="creward_clip.safetensors", backbone_weights="clip-vit-large-patch14/")
    scores = model.score(images)   # [N, 4] float32: geometry, material, texture, overall
"""

from .axes import AXES, axis_index, axis_weights
from .backbones.registry import available_backbones, get_spec
from .errors import CREwardError, ImageError, MissingDependencyError, WeightsError
from .loader import load
from .model import CREward

__all__ = [
    "AXES",
    "CREward",
    "CREwardError",
    "ImageError",
    "MissingDependencyError",
    "WeightsError",
    "available_backbones",
    "axis_index",
    "axis_weights",
    "get_spec",
    "load",
]
