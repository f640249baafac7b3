"""``vgg16``: torchvision's VGG16 (ImageNet) without the classifier's last Linear.

Feature::

    features → avgpool → flatten → classifier[:-1]
    (Linear 25088→4096, ReLU, Dropout, Linear 4096→4096, ReLU, Dropout; dropout is off in eval)

i.e. what the official code gets from ``vgg16(...)`` after ``model.classifier = model.classifier[:-1]``:
the 4096-wide penultimate activations.

Weights: torchvision's ``vgg16-397923af.pth`` (a pickled state dict, read with
``torch.load(weights_only=True)``) or a safetensors file of the same state dict. The module keeps
torchvision's structure and key names (``features.N``, ``classifier.N``), so torchvision's file
loads strictly. The architecture is VGG16's configuration "D" (13 convolutions in five blocks,
each block ending with a max-pool); channel counts and classifier widths are read from the
tensors, so smaller VGG16-shaped state dicts (as the tests write) load as well.

Grad-CAM: the ReLU after the last convolution of each block, i.e. the input of each max-pool;
the default (last) is ``features[29]``, the rectified conv5_3 maps at 14×14 for a 224-pixel
input. That is the layer Selvaraju et al. use for VGG16 ("the last convolutional layer"); the
max-pool after it only halves the resolution to 7×7 without adding information.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from .base import Backbone, GradCamLayer
from .registry import BackboneSpec
from .weight_files import load_strict, read_state_dict

logger = logging.getLogger(__name__)

# torchvision's cfgs["D"]: numbers are conv widths, "M" a max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CLASSIFIER_LINEARS = (0, 3, 6)


def _conv_indices(layout) -> list[int]:
    """Positions of the convolutions inside ``features`` (each conv is followed by a ReLU)."""
    indices, position = [], 0
    for item in layout:
        if item == "M":
            position += 1
        else:
            indices.append(position)
            position += 2
    return indices


def _weights_file(path: Path, spec: BackboneSpec) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise WeightsError(f"{spec.name} weights not found: {path} (expected {spec.weights_hint})")
    for name in spec.default_names:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors") and p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    raise WeightsError(
        f"{path}: expected one VGG16 weight file ({', '.join(spec.default_names)}) in this folder, found "
        f"{[p.name for p in candidates] or 'none'}"
    )


def _layout_from_state(state: dict[str, torch.Tensor], source: Path) -> tuple[list, list[int]]:
    """VGG16's layout with the channel counts of ``state``; classifier widths (in, hidden1, hidden2, out)."""
    if any(key.endswith("running_mean") for key in state):
        raise WeightsError(f"{source} holds batch-norm statistics (vgg16_bn?); the vgg16 backbone is the plain VGG16")
    conv_positions = sorted(
        int(key.split(".")[1]) for key, value in state.items()
        if key.startswith("features.") and key.endswith(".weight") and value.ndim == 4
    )
    expected = _conv_indices(VGG16_LAYOUT)
    if conv_positions != expected:
        raise WeightsError(
            f"{source} is not a torchvision VGG16 state dict: convolutions at features indices {conv_positions}, "
            f"expected {expected} (VGG16 configuration D)"
        )
    missing = [f"classifier.{i}.weight" for i in CLASSIFIER_LINEARS if f"classifier.{i}.weight" not in state]
    if missing:
        raise WeightsError(f"{source}: classifier tensors {missing} are missing (expected torchvision's vgg16 classifier)")
    widths = iter(int(state[f"features.{i}.weight"].shape[0]) for i in expected)
    layout = [item if item == "M" else next(widths) for item in VGG16_LAYOUT]
    first = state["classifier.0.weight"]
    classifier = [int(first.shape[1]), int(first.shape[0]), int(state["classifier.3.weight"].shape[0]),
                  int(state["classifier.6.weight"].shape[0])]
    return layout, classifier


class Vgg16Backbone(Backbone):
    """torchvision VGG16 structure (``features``, ``avgpool``, ``classifier``) ending at classifier[:-1]."""

    def __init__(self, layout: list, classifier_widths: list[int]):
        from torchvision.models.vgg import make_layers

        super().__init__()
        self.features = make_layers(layout, batch_norm=False)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        flat, hidden1, hidden2, classes = classifier_widths
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden1), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden1, hidden2), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden2, classes),
        )
        self.feature_dim = hidden2
        # The ReLU closing each conv block (input of the max-pool): out of place, so hooks on it
        # see a tensor no later operation overwrites.
        self._block_ends = [index - 1 for index, module in enumerate(self.features) if isinstance(module, nn.MaxPool2d)]
        for index in self._block_ends:
            self.features[index] = nn.ReLU(inplace=False)

    def drop_last_linear(self) -> None:
        self.classifier = self.classifier[:-1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(pixel_values))
        return self.classifier(torch.flatten(x, 1))

    def gradcam_layers(self) -> list[GradCamLayer]:
        return [GradCamLayer(self.features[index]) for index in self._block_ends]


def load(path: str, spec: BackboneSpec, dtype: torch.dtype | None = None) -> Vgg16Backbone:
    """Build torchvision's VGG16 (classifier[:-1]) from its weight file, in ``dtype`` (default float32)."""
    source = _weights_file(Path(path), spec)
    state = read_state_dict(source)  # any float dtype: the copy into the module (built in ``dtype``) converts
    layout, classifier = _layout_from_state(state, source)
    last_channels = layout[-2]
    if classifier[0] != last_channels * 7 * 7:
        raise WeightsError(
            f"{source}: classifier.0 takes {classifier[0]} inputs but the last conv block gives "
            f"{last_channels}x7x7 = {last_channels * 49}"
        )
    with torch.device("meta"):
        backbone = Vgg16Backbone(layout, classifier)
    backbone.to(dtype or torch.float32).to_empty(device="cpu")  # every tensor is overwritten by the strict load below
    load_strict(backbone, state, source)
    backbone.drop_last_linear()
    logger.info("loaded %s from %s: %d-wide features", spec.name, source, backbone.feature_dim)
    return backbone
