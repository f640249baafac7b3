"""``dreamsim``: the DreamSim ensemble embedding (needs the optional ``dreamsim`` package).

Feature: ``model.embed(pixels)`` of ``dreamsim(pretrained=True)`` with its defaults
(``dreamsim_type="ensemble"``, ``normalize_embeds=True``): the concatenation of DINO ViT-B/16's CLS
token (768), and the projected CLIP ViT-B/16 (512) and OpenCLIP ViT-B/16 (512) embeddings, each
ViT LoRA-tuned by DreamSim, then centred and L2-normalised: 1792 wide. Pixels are in [0, 1] at
224×224 (bicubic); each ensemble member normalises them itself.

Weights: the folder that ``dreamsim(pretrained=True, cache_dir=FOLDER)`` fills on a machine with
internet access. It holds DreamSim's unzipped checkpoint (``dino_vitb16_pretrain.pth``,
``clip_vitb16_pretrain.pth.tar``, ``open_clip_vitb16_pretrain.pth.tar``, ``ensemble_lora/``) and,
because DreamSim builds DINO through ``torch.hub`` with its hub directory set to that folder,
torch.hub's copy of DINO's code (``facebookresearch_dino_main/``) and DINO's weights
(``checkpoints/dino_vitbase16_pretrain.pth``). Note that ``torch.hub`` imports
``facebookresearch_dino_main/hubconf.py`` from that folder: only use a folder you created.

Nothing is ever downloaded: missing files are reported up front (``WeightsError`` naming them),
and any download DreamSim or torch.hub would still attempt is refused. DreamSim's
``torch.hub.set_dir`` is undone after loading.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingDependencyError, WeightsError
from .base import Backbone, GradCamLayer
from .registry import BackboneSpec

logger = logging.getLogger(__name__)

PIP_NAME = "dreamsim"
# What dreamsim(pretrained=True, dreamsim_type="ensemble", cache_dir=FOLDER) reads from FOLDER.
REQUIRED_FILES = {
    "dino_vitb16_pretrain.pth": "DreamSim checkpoint (DINO projection head)",
    "clip_vitb16_pretrain.pth.tar": "DreamSim checkpoint (CLIP ViT-B/16 as a ViT)",
    "open_clip_vitb16_pretrain.pth.tar": "DreamSim checkpoint (OpenCLIP ViT-B/16 as a ViT)",
    "ensemble_lora/adapter_config.json": "DreamSim checkpoint (LoRA config)",
    "facebookresearch_dino_main/hubconf.py": "torch.hub's copy of github.com/facebookresearch/dino",
    "checkpoints/dino_vitbase16_pretrain.pth": "DINO ViT-B/16 weights in torch.hub's cache",
}
ADAPTER_WEIGHTS = ("ensemble_lora/adapter_model.safetensors", "ensemble_lora/adapter_model.bin")


def missing_files(folder: Path) -> list[str]:
    """Files of a DreamSim cache folder that are absent (relative paths)."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        missing.append(" or ".join(ADAPTER_WEIGHTS))
    return missing


def _import_dreamsim():
    if importlib.util.find_spec("dreamsim") is None:
        raise MissingDependencyError("dreamsim", "the 'dreamsim' backbone", PIP_NAME)
    try:
        return importlib.import_module("dreamsim")
    except ImportError as error:  # one of its own dependencies (peft, timm, open_clip) is missing
        name = getattr(error, "name", None) or "dreamsim"
        raise MissingDependencyError(name, "the 'dreamsim' backbone (through the dreamsim package)") from error


@contextlib.contextmanager
def _offline_torch_hub(folder: Path):
    """Refuse every torch.hub download while DreamSim loads; restore torch.hub's directory after."""
    import torch.hub

    hub_dir = torch.hub.get_dir()
    original = torch.hub.download_url_to_file

    def refuse(url, dst, *args, **kwargs):
        raise WeightsError(
            f"{folder}: DreamSim tried to download {url} (to {dst}); CREward never downloads. "
            f"Create the folder with dreamsim(pretrained=True, cache_dir=...) where a network is available"
        )

    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original
        torch.hub.set_dir(hub_dir)


class DreamSimBackbone(Backbone):
    """DreamSim's ensemble ``embed``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # DreamSim's PeftModel around its PerceptualModel

    def _perceptual(self) -> nn.Module:
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embed(pixel_values)

    def _apply(self, fn, recurse=True):
        # DreamSim keeps the CLIP projections as plain tensor attributes and moves them to a
        # device string fixed at construction on every call; keep both in step with .to().
        super()._apply(fn, recurse)
        perceptual = self._perceptual()
        device = next(self.parameters()).device
        for extractor in getattr(perceptual, "extractor_list", []):
            if isinstance(getattr(extractor, "proj", None), torch.Tensor):
                extractor.proj = fn(extractor.proj)
            extractor.device = device
        if hasattr(perceptual, "device"):
            perceptual.device = device
        return self

    def gradcam_layers(self) -> list[GradCamLayer]:
        """The blocks of each ensemble member (DINO, CLIP, OpenCLIP), in that order.

        Each map shows only the part of the score that flows through that member's tokens
        ``[B, 1 + rows*cols, C]`` (1 CLS token, 14x14 patches at 224 px).
        """
        layers = []
        for extractor in self._perceptual().extractor_list:
            vit = extractor.model
            patch = vit.patch_embed.patch_size
            patch = patch[0] if isinstance(patch, tuple) else patch
            side = 224 // patch
            layers += [GradCamLayer(block, prefix_tokens=1, grid=(side, side)) for block in vit.blocks]
        return layers


def load(path: str, spec: BackboneSpec, dtype: torch.dtype | None = None) -> DreamSimBackbone:
    """Build DreamSim from its cache folder; DreamSim builds its models in float32 itself, so
    another ``dtype`` is a conversion after loading."""
    package = _import_dreamsim()
    folder = Path(path)
    if not folder.is_dir():
        raise WeightsError(
            f"{spec.name} weights not found: {folder} is not a folder (expected {spec.weights_hint})"
        )
    missing = missing_files(folder)
    if missing:
        raise WeightsError(
            f"{folder} is not a complete DreamSim cache folder; missing: {', '.join(missing)}. "
            f"Create it with dreamsim(pretrained=True, cache_dir='{folder.name}') on a machine with internet access "
            f"and copy the whole folder"
        )
    logger.info("loading DreamSim (ensemble) from %s", folder)
    with _offline_torch_hub(folder):
        model, _ = package.dreamsim(pretrained=True, device="cpu", cache_dir=str(folder))
    dtype = dtype or torch.float32
    backbone = DreamSimBackbone(model).to(dtype)
    with torch.no_grad():
        size = spec.preprocessing.image_size
        backbone.feature_dim = int(backbone.eval()(torch.zeros(1, 3, size, size, dtype=dtype)).shape[-1])
    logger.info("loaded %s from %s: %d-wide features", spec.name, folder, backbone.feature_dim)
    return backbone
