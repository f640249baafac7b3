"""Image decoding and the official CREward preprocessing.

Official path, reproduced exactly: ``PIL.Image.open(path).convert("RGB")`` → float tensor in
[0,1] (``ToTensor``) → ``Resize((S, S))`` on the tensor (bilinear or bicubic, antialiased; no
crop, aspect ratio not kept) → ``Normalize(mean, std)``.

Two deliberate differences, both only where the official path breaks:

- 16-bit grayscale images are scaled by their full range (PIL's ``convert("RGB")`` clips them
  to 255, turning almost every pixel white);
- images above ``MAX_DECODE_PIXELS`` (4096×4096) are first reduced by an integer box filter
  (PIL ``reduce``; JPEGs are decoded at the reduced size), so a huge file cannot exhaust memory.
  Measured against the official code this changes scores of 20-24 MP photos by 2e-3 to 6e-2,
  so it is announced with a warning per file; ``max_pixels=None`` (``--max-pixels 0`` on the
  command line) turns it off. Images up to 4096×4096 are untouched.

Everything here is differentiable in the image tensor (used by creative-LoRA training).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .backbones.registry import Preprocessing
from .errors import ImageError

logger = logging.getLogger(__name__)

MAX_DECODE_PIXELS = 4096 * 4096
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


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


def load_image(path: str | os.PathLike | BinaryIO, max_pixels: int | None = MAX_DECODE_PIXELS, name: str | None = None) -> torch.Tensor:
    """Decode one image file to a float32 ``[3, H, W]`` tensor in [0, 1].

    Args:
        path: a file path, or an open binary file (a tar member, bytes in memory) together with
            ``name``, which messages then use.
        max_pixels: images with more pixels are box-reduced by the smallest integer factor that
            brings them under it (a warning says so: the scores then differ slightly from the
            official code's); None or 0: never reduce.

    Raises ``ImageError`` naming the file when it cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
    else:
        name = name or getattr(path, "name", None) or "(image bytes)"
    label = path if name is None else name
    try:
        with Image.open(path) as image:
            width, height = image.width, image.height
            if max_pixels and width * height > max_pixels:
                factor = math.ceil(math.sqrt(width * height / max_pixels))
                if image.format == "JPEG":
                    image.draft("RGB", (width // factor, height // factor))
                image.load()
                factor = math.ceil(math.sqrt(image.width * image.height / max_pixels))
                if factor > 1:
                    image = image.reduce(factor)
                logger.warning(
                    "%s is %dx%d (%.1f MP): reduced to %dx%d before the resize, so its scores differ slightly from the "
                    "official code's (--max-pixels 0 / max_pixels=None turns this off)",
                    label, width, height, width * height / 1e6, image.width, image.height,
                )
            image.load()
            return pil_to_tensor(image)
    except ImageError as error:  # an unsupported pixel format: name the file
        raise ImageError(error.reason, label) from None
    except FileNotFoundError:
        raise ImageError("file not found", label) from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file", label) from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (no image format PIL knows)", label) from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"not a readable image ({error})", label) from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageError(f"could not be decoded, corrupt or truncated? ({error})", label) from error


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
