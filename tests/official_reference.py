"""An independent re-implementation of the official CREward formula, for the tests.

Written from the paper's description and the official release's code path
(github.com/han-j-y/CREward ``src/models.py``), without using ``creward.models``: PIL
``.convert("RGB")`` → torchvision v1 ``ToTensor``, ``Resize((S, S))``, ``Normalize`` → the
backbone as the official code builds it (whole transformers/torchvision models, in float32: the
official ``CreativityReward(dtype=torch.float32)`` passes its dtype to ``from_pretrained``) → the
MLP head as an ``nn.Sequential`` loaded from a ``torch.save``d state dict.

- :func:`official_embedder` ``(backbone, weights)``: normalised pixels → features, the official way;
- :func:`official_features` / :func:`official_scores` ``(backbone, weights, [head,] paths)``: image
  files → features / scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]

Embed = Callable[[torch.Tensor], torch.Tensor]


def official_head(feature_dim: int, seed: int = 1) -> nn.Sequential:
    """The paper's MLP head, written out independently of creward.models.head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(feature_dim, 1024), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 16), nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()


def save_official_checkpoint(head: nn.Sequential, path: str | Path) -> Path:
    """What the official release ships: ``torch.save(head.state_dict(), "reward_head_best.ckpt")``."""
    torch.save(head.state_dict(), path)
    return Path(path)


def write_images(folder: str | Path, sizes=((300, 200), (97, 131), (224, 224)), seed: int = 0) -> list[Path]:
    """Random RGB PNGs ``image{i}.png`` of the given (width, height) sizes."""
    rng = np.random.default_rng(seed)
    paths = []
    for index, (width, height) in enumerate(sizes):
        path = Path(folder) / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def official_pixels(paths, size: int, mean, std, bicubic: bool = False) -> torch.Tensor:
    from torchvision import transforms

    interpolation = transforms.InterpolationMode.BICUBIC if bicubic else transforms.InterpolationMode.BILINEAR
    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize((size, size), interpolation=interpolation),
        transforms.Normalize(mean, std),
    ])
    return torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])


# -- the official backbones: weights → (pixels → features) ------------------------------------


def clip_embedder(hf_folder) -> Embed:
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(hf_folder, dtype=torch.float32).eval()
    return lambda pixels: model(pixel_values=pixels).pooler_output


def siglip2_embedder(hf_folder) -> Embed:
    from transformers import SiglipVisionModel

    model = SiglipVisionModel.from_pretrained(hf_folder, dtype=torch.float32).eval()
    return lambda pixels: model(pixel_values=pixels).pooler_output


def siglip_gemma3_embedder(hf_folder) -> Embed:
    """The whole ``Gemma3ForConditionalGeneration`` (language model included), as the official code builds it."""
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(hf_folder, dtype=torch.float32).eval()

    def embed(pixels):
        tokens = model.get_image_features(pixel_values=pixels)  # [B, mm_tokens, text hidden]
        return getattr(tokens, "pooler_output", tokens).mean(dim=1)

    return embed


def dino3_embedder(hf_folder) -> Embed:
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(hf_folder, dtype=torch.float32).eval()
    return lambda pixels: model(pixel_values=pixels).last_hidden_state[:, 0]


def vgg16_embedder(pth_file) -> Embed:
    """torchvision's VGG16 with ``classifier = classifier[:-1]`` (the official ``vgg16(pretrained=True)``).

    A full-size file is loaded into ``torchvision.models.vgg16()`` itself; smaller VGG16-shaped
    files (the tests' tiny weights) into torchvision's ``VGG`` class with the widths read from the file.
    """
    from torchvision.models import vgg16
    from torchvision.models.vgg import VGG, cfgs, make_layers

    state = torch.load(pth_file, map_location="cpu", weights_only=True)
    convs = sorted({int(key.split(".")[1]) for key in state if key.startswith("features.") and key.endswith(".weight")})
    cfg, previous = [], -1
    for index in convs:
        if previous >= 0 and index - previous > 2:
            cfg.append("M")
        cfg.append(state[f"features.{index}.weight"].shape[0])
        previous = index
    cfg.append("M")
    widths = [state[f"classifier.{index}.weight"].shape for index in (0, 3, 6)]
    with torch.device("meta"):  # no random init: every tensor is assigned from the file below
        if cfg == cfgs["D"] and [tuple(shape) for shape in widths] == [(4096, 25088), (4096, 4096), (1000, 4096)]:
            model = vgg16()
        else:
            model = VGG(make_layers(cfg), init_weights=False)
            model.classifier = nn.Sequential(
                nn.Linear(widths[0][1], widths[0][0]), nn.ReLU(True), nn.Dropout(),
                nn.Linear(widths[1][1], widths[1][0]), nn.ReLU(True), nn.Dropout(),
                nn.Linear(widths[2][1], widths[2][0]),
            )
    model.load_state_dict(state, strict=True, assign=True)
    model.classifier = model.classifier[:-1]
    return model.eval()


@dataclass(frozen=True)
class OfficialBackbone:
    embedder: Callable[[object], Embed]
    size: int
    mean: list[float]
    std: list[float]


OFFICIAL_BACKBONES = {
    "clip": OfficialBackbone(clip_embedder, 224, CLIP_MEAN, CLIP_STD),
    "siglip2": OfficialBackbone(siglip2_embedder, 384, HALF, HALF),
    "siglip-gemma3": OfficialBackbone(siglip_gemma3_embedder, 896, HALF, HALF),
    "dino3": OfficialBackbone(dino3_embedder, 224, IMAGENET_MEAN, IMAGENET_STD),
    "vgg16": OfficialBackbone(vgg16_embedder, 224, IMAGENET_MEAN, IMAGENET_STD),
}


def official_embedder(backbone: str, weights) -> Embed:
    """Normalised pixels ``[B, 3, S, S]`` → features, through the official model (no gradients)."""
    embed = OFFICIAL_BACKBONES[backbone].embedder(weights)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return embed(pixels)

    return run


def official_features(backbone: str, weights, paths) -> torch.Tensor:
    official = OFFICIAL_BACKBONES[backbone]
    return official_embedder(backbone, weights)(official_pixels(paths, official.size, official.mean, official.std))


def official_scores(backbone: str, weights, head: nn.Sequential, paths) -> torch.Tensor:
    with torch.no_grad():
        return head(official_features(backbone, weights, paths))
