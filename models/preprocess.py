"""Image decoding and the official CREward preprocessing.

Official path, reproduced exactly: ``PIL.Image.open(path).convert("RGB")`` → float tensor in
[0,1] (``ToTensor``) → ``Resize((S, S))`` on the tensor (bilinear or bicubic, antialiased; no
crop, aspect ratio not kept) → ``Normalize(mean, std)``.

Two deliberate differences, both only where the official path breaks:

- 16-bit grayscale images are scaled by their full range (PIL's ``convert("RGB")`` clips them
  to 255, turning almost every pixel white);
- images above ``MAX_DECODE_PIXELS`` are first reduced by an integer box filter (PIL
  ``reduce``), so a huge file cannot exhaust memory. Images up to 4096×4096 are untouched.

Everything here is differentiable in the image tensor (used by creative-LoRA training).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .errors import ImageError

logger = logging.getLogger(__name__)

MAX_DECODE_PIXELS = 4096 * 4096
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its pixels: square size, interpolation, normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic"

    def __post_init__(self):
        if self.image_size <= 0:
            raise ValueError(f"image_size should be positive, got {self.image_size}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation should be 'bilinear' or 'bicubic', got {self.interpolation!r}")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image as a float32 ``[3, H, W]`` tensor in [0, 1], as the official code sees it."""
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if image.mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageError(f"32-bit integer image with values outside 0..65535 is not supported (mode {image.mode})")
        gray = torch.from_numpy(array.astype(np.float32) / 65535.0)
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        gray = torch.from_numpy(np.clip(array, 0.0, 1.0) if array.max() <= 1.0 else np.clip(array / 255.0, 0, 1))
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_DECODE_PIXELS, name: str | None = None) -> torch.Tensor:
    """Decode one image file to a float32 ``[3, H, W]`` tensor in [0, 1].

    ``path`` is a file path, or an open binary file (a tar member, bytes in memory) together with
    ``name``, which error messages then use. Raises ``ImageError`` naming the file when it cannot
    be read.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
    else:
        name = name or getattr(path, "name", None) or "(image bytes)"
    label = path if name is None else name
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                factor = math.ceil(math.sqrt(pixels / max_pixels))
                if image.format == "JPEG":
                    image.draft("RGB", (image.width // factor, image.height // factor))
                image.load()
                factor = math.ceil(math.sqrt(image.width * image.height / max_pixels))
                if factor > 1:
                    logger.info("%s is %dx%d; reducing by %d before preprocessing", label, image.width, image.height, factor)
                    image = image.reduce(factor)
            image.load()
            return pil_to_tensor(image)
    except FileNotFoundError:
        raise ImageError(f"image file not found: {label}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ImageError(f"{label} is not a readable image: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageError(f"{label} could not be decoded (corrupt or truncated?): {error}") from error


def _interpolation(name: str) -> InterpolationMode:
    return InterpolationMode.BICUBIC if name == "bicubic" else InterpolationMode.BILINEAR


def resize_and_normalize(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """``[B, 3, H, W]`` (or ``[3, H, W]``) float in [0, 1] → normalised ``[B, 3, S, S]``.

    Same maths as ``Resize((S, S))`` + ``Normalize`` applied image by image; differentiable.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"expected images shaped [B, 3, H, W], got {tuple(images.shape)}")
    size = preprocessing.image_size
    if images.shape[-2:] != (size, size):
        images = TF.resize(images, [size, size], interpolation=_interpolation(preprocessing.interpolation), antialias=True)
    mean = torch.tensor(preprocessing.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def preprocess_list(images: list[torch.Tensor], preprocessing: Preprocessing) -> torch.Tensor:
    """Images of any sizes (each ``[3, H, W]`` in [0, 1]) → one normalised ``[B, 3, S, S]`` batch."""
    if not images:
        raise ImageError("no images to preprocess (empty batch)")
    return torch.cat([resize_and_normalize(image, preprocessing) for image in images])
