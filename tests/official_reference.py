"""An independent re-implementation of the official CREward formula, for the tests.

Written from the paper's description and the official release's code path, without using
``creward.models``: PIL ``.convert("RGB")`` → torchvision v1 ``ToTensor``, ``Resize((S, S))``,
``Normalize`` → the backbone as the official code builds it (whole transformers/torchvision
models) → the MLP head as an ``nn.Sequential`` loaded from a ``torch.save``d state dict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]


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


def clip_features(hf_folder, paths) -> torch.Tensor:
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        return model(pixel_values=official_pixels(paths, 224, CLIP_MEAN, CLIP_STD)).pooler_output


def siglip2_features(hf_folder, paths) -> torch.Tensor:
    from transformers import SiglipVisionModel

    model = SiglipVisionModel.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        return model(pixel_values=official_pixels(paths, 384, HALF, HALF)).pooler_output


def siglip_gemma3_features(hf_folder, paths) -> torch.Tensor:
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        tokens = model.get_image_features(pixel_values=official_pixels(paths, 896, HALF, HALF))
        tokens = getattr(tokens, "pooler_output", tokens)
        return tokens.mean(dim=1)


def dino3_features(hf_folder, paths) -> torch.Tensor:
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        return model(pixel_values=official_pixels(paths, 224, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state[:, 0]


def vgg16_features(pth_file, paths) -> torch.Tensor:
    """torchvision VGG16 with the classifier's last Linear removed; widths from the file (tiny tests)."""
    from torchvision.models.vgg import VGG, make_layers

    state = torch.load(pth_file, map_location="cpu", weights_only=True)
    convs = sorted({int(key.split(".")[1]) for key in state if key.startswith("features.") and key.endswith(".weight")})
    cfg, previous = [], -1
    for index in convs:
        if previous >= 0 and index - previous > 2:
            cfg.append("M")
        cfg.append(state[f"features.{index}.weight"].shape[0])
        previous = index
    cfg.append("M")
    model = VGG(make_layers(cfg), num_classes=state["classifier.6.weight"].shape[0])
    hidden = state["classifier.0.weight"].shape[0]
    model.classifier[0] = nn.Linear(state["classifier.0.weight"].shape[1], hidden)
    model.classifier[3] = nn.Linear(hidden, state["classifier.3.weight"].shape[0])
    model.classifier[6] = nn.Linear(state["classifier.3.weight"].shape[0], state["classifier.6.weight"].shape[0])
    model.load_state_dict(state)
    model.classifier = model.classifier[:-1]
    model.eval()
    with torch.no_grad():
        return model(official_pixels(paths, 224, IMAGENET_MEAN, IMAGENET_STD))


OFFICIAL_FEATURES = {
    "clip": clip_features,
    "siglip2": siglip2_features,
    "siglip-gemma3": siglip_gemma3_features,
    "dino3": dino3_features,
    "vgg16": vgg16_features,
}


def official_scores(backbone: str, weights, head: nn.Sequential, paths) -> torch.Tensor:
    with torch.no_grad():
        return head(OFFICIAL_FEATURES[backbone](weights, paths))
