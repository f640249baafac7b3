"""Grad-CAM: which parts of an image drive a CREward axis score.

For a target (an axis name, or a weighted mix of axes as in :func:`creward.models.axes.axis_weights`)
the score ``s = scores @ weights`` is differentiated with respect to the activations ``A`` of one
Grad-CAM layer of the backbone (``backbone.gradcam_layers()``; by default the last one whose patch
activations reach the score, see :func:`gradcam_multi`):

- transformer backbones (CLIP, SigLIP2, SigLIP-Gemma3, DINOv3): ``A`` is ``[B, T, C]`` token
  activations; the layer's prefix tokens (CLS, registers) are dropped and the remaining patch
  tokens are laid out on the layer's patch grid;
- CNN backbones (VGG16): ``A`` is the ``[B, C, h, w]`` feature map of the last conv block.

Channel weights are the gradients averaged over positions, ``w_c = mean_p ds/dA_pc``, and the map
is ``CAM_p = ReLU(sum_c w_c A_pc)``. It is upsampled bilinearly to the image's size (the model
squashes every image to a square, so the patch grid spans the whole image) and min-max
normalised to [0, 1] per image. A map without contrast (constant, including all zero because no
position pushes the score up) becomes all zeros rather than noise.

Everything runs with autograd even when called under ``torch.inference_mode()`` (ComfyUI runs
nodes under it): inference mode is left explicitly, the inputs are cloned, and backbone
parameters or buffers that were created in inference mode are replaced once by normal copies
(inference tensors cannot take part in autograd). Hooks are always removed.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .autograd import make_autograd_ready
from .axes import axis_weights
from .backbones.base import GradCamLayer
from .errors import CREwardError, ImageError
from .model import CREward

logger = logging.getLogger(__name__)

AxisSpec = str | Mapping[str, float] | Sequence[float] | torch.Tensor
ProgressCallback = Callable[[int, int], None]


class GradCam(NamedTuple):
    """Grad-CAM of a batch: ``heatmaps`` ``[B, H, W]`` float32 in [0, 1] and ``scores`` ``[B, len(axes)]``."""

    heatmaps: torch.Tensor
    scores: torch.Tensor


# -- layers ------------------------------------------------------------------------------------
def gradcam_layer(model: CREward, block: int = -1) -> GradCamLayer:
    """The Grad-CAM layer ``block`` of the model's backbone (Python indexing: -1 = last)."""
    try:
        layers = model.backbone.gradcam_layers()
    except NotImplementedError as error:
        raise CREwardError(str(error)) from None
    if not layers:
        raise CREwardError(f"backbone {model.spec.name!r} lists no Grad-CAM layers")
    if not -len(layers) <= block < len(layers):
        raise CREwardError(
            f"Grad-CAM block {block} is out of range: backbone {model.spec.name!r} has {len(layers)} blocks "
            f"(use 0..{len(layers) - 1}, or -1 for the last)"
        )
    return layers[block]


def target_weights(targets: Sequence[AxisSpec], axes: Sequence[str]) -> torch.Tensor:
    """Targets (axis names or weight mixes) → float32 weight matrix ``[K, len(axes)]``."""
    if not targets:
        raise CREwardError("no Grad-CAM target axis given")
    rows = []
    for target in targets:
        weights = target.detach().float().flatten().cpu() if isinstance(target, torch.Tensor) else axis_weights(target, axes)
        if weights.numel() != len(axes):
            raise CREwardError(f"expected {len(axes)} axis weights ({', '.join(axes)}), got {weights.numel()}")
        if not torch.isfinite(weights).all() or not weights.abs().sum() > 0:
            raise CREwardError(f"axis weights {weights.tolist()} must be finite and not all zero")
        rows.append(weights.float())
    return torch.stack(rows)


# -- the maps ----------------------------------------------------------------------------------
def _split_output(output) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """The activation tensor of a module output, and how to put a replacement back."""
    if isinstance(output, torch.Tensor):
        return output, lambda tensor: tensor
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda tensor: type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])
    raise CREwardError(
        f"Grad-CAM layer output should be a tensor or a tuple starting with one, got {type(output).__name__}"
    )


def _positions(activations: torch.Tensor, layer: GradCamLayer) -> tuple[torch.Tensor, tuple[int, int]]:
    """Activations → ``([B, P, C], (rows, cols))`` over spatial positions (patch tokens or pixels)."""
    if activations.ndim == 4:  # CNN feature map [B, C, h, w]
        batch, channels, rows, cols = activations.shape
        return activations.flatten(2).transpose(1, 2), (rows, cols)
    if activations.ndim != 3:
        raise CREwardError(f"Grad-CAM layer activations should be [B, T, C] or [B, C, h, w], got {tuple(activations.shape)}")
    tokens = activations[:, layer.prefix_tokens:]
    count = tokens.shape[1]
    if layer.grid is not None:
        rows, cols = layer.grid
    else:
        side = round(count ** 0.5)
        rows, cols = side, side
    if rows * cols != count:
        raise CREwardError(
            f"Grad-CAM layer has {activations.shape[1]} tokens; after dropping {layer.prefix_tokens} prefix tokens "
            f"{count} remain, which do not fill a {rows}x{cols} patch grid"
        )
    return tokens, (rows, cols)


def normalize_maps(maps: torch.Tensor, relative_eps: float = 1e-6) -> torch.Tensor:
    """Min-max normalise each ``[H, W]`` map of ``[..., H, W]`` to [0, 1].

    A map without contrast (its range is zero, or below ``relative_eps`` of its largest magnitude,
    i.e. rounding noise) becomes all zeros: there is nothing to point at.
    """
    flat = maps.float().flatten(-2)
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    has_contrast = (span > 0) & (span > relative_eps * flat.abs().amax(-1, keepdim=True))
    normalized = (flat - low) / torch.where(has_contrast, span, torch.ones_like(span))
    return torch.where(has_contrast, normalized.clamp(0.0, 1.0), torch.zeros_like(normalized)).view(maps.shape)


def _cam(activations: torch.Tensor, gradient: torch.Tensor | None, layer: GradCamLayer) -> tuple[torch.Tensor, bool]:
    """Grad-CAM formula on one layer: ``[B, rows, cols]`` map, and whether any patch gradient was non-zero."""
    values, grid = _positions(activations.detach().float(), layer)
    if gradient is None:
        return torch.zeros(values.shape[0], *grid, device=values.device), False
    gradient, _ = _positions(gradient.float(), layer)
    channel_weights = gradient.mean(dim=1, keepdim=True)  # [B, 1, C]
    cam = F.relu((values * channel_weights).sum(-1))  # [B, P]
    return cam.view(cam.shape[0], *grid), bool(gradient.abs().amax() > 0)


def _cams(
    model: CREward,
    images: torch.Tensor,
    weights: torch.Tensor,
    layer: GradCamLayer,
    fallback: GradCamLayer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward, one backward per target: maps ``[B, K, H, W]`` at the images' size (not yet
    normalised) and scores ``[B, A]``.

    With a ``fallback`` layer (an earlier block), a target whose gradients on ``layer``'s patch
    positions are all exactly zero is mapped on ``fallback`` instead: this is the case of the last
    block of backbones pooled from the CLS token, whose patch outputs never reach the score.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(key: str, start_graph: bool):
        def record(module, inputs, output):
            activations, rebuild = _split_output(output)
            if not start_graph:
                captured[key] = activations
                return None
            # Start the graph here: gradients stop at this layer, earlier blocks keep no activations.
            activations = activations.detach().requires_grad_(True)
            captured[key] = activations  # a layer run twice: its last call counts
            return rebuild(activations)

        return record

    handles = []
    try:
        if fallback is None:
            handles.append(layer.module.register_forward_hook(hook("layer", True)))
        else:
            handles.append(fallback.module.register_forward_hook(hook("fallback", True)))
            handles.append(layer.module.register_forward_hook(hook("layer", False)))
        scores = model(images)
    finally:
        for handle in handles:
            handle.remove()
    for key, which in (("layer", layer), ("fallback", fallback)):
        if which is not None and key not in captured:
            raise CREwardError(
                f"Grad-CAM layer {type(which.module).__name__} of backbone {model.spec.name!r} was not run by the forward pass"
            )
    if not scores.requires_grad:
        raise CREwardError(f"backbone {model.spec.name!r} computes its features without autograd; Grad-CAM needs gradients")
    sources = [captured["layer"]] + ([captured["fallback"]] if fallback is not None else [])
    weights = weights.to(scores.device)
    size = images.shape[-2:]
    maps = []
    for index in range(weights.shape[0]):
        target = (scores.float() @ weights[index]).sum()
        gradients = torch.autograd.grad(target, sources, retain_graph=index < weights.shape[0] - 1, allow_unused=True)
        cam, reached = _cam(sources[0], gradients[0], layer)
        if not reached and fallback is not None:
            logger.debug(
                "Grad-CAM: the last block's patch outputs of %r do not reach the score (CLS pooling); using the block before",
                model.spec.name,
            )
            cam, reached = _cam(sources[1], gradients[1], fallback)
        if not reached:
            logger.warning(
                "Grad-CAM: the score does not depend on the patch activations of this block of %r "
                "(all gradients zero); the map is empty. Try an earlier block.",
                model.spec.name,
            )
        maps.append(F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(maps, dim=1), scores.detach().float()


def gradcam_multi(
    model: CREward,
    images: torch.Tensor,
    targets: Sequence[AxisSpec],
    block: int = -1,
    batch_size: int = 4,
    channels_last: bool = False,
    progress: ProgressCallback | None = None,
) -> GradCam:
    """Grad-CAM maps of several targets from one forward pass per batch.

    Args:
        model: a CREward model (any device/dtype; left unchanged except as described in the module doc).
        images: ``[B, 3, H, W]`` (or ``[3, H, W]``) in [0, 1]; ``[B, H, W, 3]`` when ``channels_last``
            (ComfyUI's IMAGE).
        targets: axis names (``"texture"``) or weight mixes (``"1,0,0.5,0"``, ``{"geometry": 1}``,
            a sequence or tensor of ``len(model.axes)`` numbers).
        block: which of ``model.backbone.gradcam_layers()`` to use. -1 (default) is the last block
            whose patch activations reach the score: the last one, except for backbones pooled
            from the CLS token (CLIP, DINOv3), where it is the one before (the last block's patch
            outputs never reach the CLS token; the usual Grad-CAM choice for such ViTs).
        batch_size: images per forward/backward pass (bounds memory).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        ``GradCam(heatmaps [B, K, H, W], scores [B, len(axes)])``, float32 on the CPU; maps in [0, 1].

    Raises:
        CREwardError: unknown axis, bad weights, block out of range, or a backbone without Grad-CAM.
        ImageError: images of the wrong shape.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size should be positive, got {batch_size}")
    layer = gradcam_layer(model, block)
    layers = model.backbone.gradcam_layers()
    fallback = layers[-2] if block == -1 and len(layers) > 1 else None
    target_weights(targets, model.axes)  # validate before any work
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if channels_last and images.ndim == 4:
        images = images.movedim(-1, 1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"expected images shaped [B, 3, H, W]{' (channels last: [B, H, W, 3])' if channels_last else ''}, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ImageError("no images to explain (empty batch)")
    total = images.shape[0]
    heatmaps, scores = [], []
    with torch.inference_mode(False), torch.enable_grad():
        make_autograd_ready(model)
        weights = target_weights(targets, model.axes)  # built here: not an inference tensor
        for start in range(0, total, batch_size):
            # clone(): inference tensors (ComfyUI's IMAGE) cannot enter autograd.
            chunk = images[start:start + batch_size].to(model.device, torch.float32).clone()
            maps, chunk_scores = _cams(model, chunk, weights, layer, fallback)
            heatmaps.append(normalize_maps(maps).cpu())
            scores.append(chunk_scores.cpu())
            if progress is not None:
                progress(min(start + batch_size, total), total)
    return GradCam(torch.cat(heatmaps), torch.cat(scores))


def gradcam(
    model: CREward,
    images: torch.Tensor,
    axis: AxisSpec = "overall",
    block: int = -1,
    batch_size: int = 4,
    channels_last: bool = False,
    progress: ProgressCallback | None = None,
) -> GradCam:
    """Grad-CAM heatmaps of one axis (or weighted mix of axes) for a batch of images.

    Returns ``GradCam(heatmaps [B, H, W], scores [B, len(axes)])`` on the CPU; heatmaps are float32
    in [0, 1] at the images' own size. See :func:`gradcam_multi` for the arguments.

    Example:
        >>> heatmaps, scores = gradcam(model, images, "texture")
        >>> pictures = overlay(images, heatmaps)
    """
    result = gradcam_multi(model, images, [axis], block=block, batch_size=batch_size, channels_last=channels_last, progress=progress)
    return GradCam(result.heatmaps[:, 0], result.scores)


# -- pictures ----------------------------------------------------------------------------------
def _jet(x: torch.Tensor) -> torch.Tensor:
    # The classic piecewise-linear jet: blue → cyan → yellow → red.
    return torch.stack([(1.5 - (4 * x - offset).abs()).clamp(0, 1) for offset in (3.0, 2.0, 1.0)], dim=-3)


def _turbo(x: torch.Tensor) -> torch.Tensor:
    # Polynomial fit of Google's Turbo colormap (Ruofei Du's approximation).
    coefficients = (
        (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
        (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
        (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
    )
    channels = []
    for c in coefficients:
        value = torch.full_like(x, c[-1])
        for coefficient in reversed(c[:-1]):
            value = value * x + coefficient
        channels.append(value.clamp(0, 1))
    return torch.stack(channels, dim=-3)


COLORMAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"jet": _jet, "turbo": _turbo}


def colorize(heatmaps: torch.Tensor, colormap: str = "jet") -> torch.Tensor:
    """Heatmaps ``[..., H, W]`` in [0, 1] → RGB ``[..., 3, H, W]`` in [0, 1] (0 = blue, 1 = red)."""
    try:
        function = COLORMAPS[colormap]
    except KeyError:
        raise CREwardError(f"unknown colormap {colormap!r}; expected one of {', '.join(COLORMAPS)}") from None
    return function(heatmaps.float().clamp(0, 1))


def overlay(images: torch.Tensor, heatmaps: torch.Tensor, alpha: float = 0.5, colormap: str = "jet") -> torch.Tensor:
    """Blend coloured heatmaps over images: ``(1 - alpha) * image + alpha * colormap(heatmap)``.

    ``images`` ``[B, 3, H, W]`` (or ``[3, H, W]``) in [0, 1], ``heatmaps`` ``[B, H, W]`` (or ``[H, W]``)
    of the same size; returns float32 images like ``images``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha should be in [0, 1], got {alpha}")
    if images.shape[-2:] != heatmaps.shape[-2:] or images.shape[:-3] != heatmaps.shape[:-2] or images.shape[-3] != 3:
        raise ImageError(f"overlay needs images [B, 3, H, W] and heatmaps [B, H, W] of the same size, got {tuple(images.shape)} and {tuple(heatmaps.shape)}")
    colours = colorize(heatmaps.to(images.device), colormap)
    return ((1.0 - alpha) * images.float() + alpha * colours).clamp(0, 1)


def to_pil_image(image: torch.Tensor):
    """``[3, H, W]`` float in [0, 1] → 8-bit RGB PIL image."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return Image.fromarray(array, "RGB")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def axis_sheet(
    image: torch.Tensor,
    heatmaps: torch.Tensor,
    labels: Sequence[str],
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_height: int | None = 384,
    include_original: bool = True,
):
    """A side-by-side PIL image: the original (optional) then one overlay per heatmap, labelled.

    Args:
        image: ``[3, H, W]`` in [0, 1].
        heatmaps: ``[K, H, W]`` in [0, 1] (for example the four axes of one image).
        labels: K captions drawn above the tiles (for example ``"texture 0.42"``).
        tile_height: each tile is scaled to this height (aspect kept); None keeps the image's size.
    """
    from PIL import Image, ImageDraw

    if heatmaps.ndim != 3 or len(labels) != heatmaps.shape[0]:
        raise ValueError(f"expected heatmaps [K, H, W] and K labels, got {tuple(heatmaps.shape)} and {len(labels)} labels")
    tiles = [to_pil_image(image)] if include_original else []
    captions = ["image"] if include_original else []
    overlays = overlay(image.unsqueeze(0).expand(heatmaps.shape[0], -1, -1, -1), heatmaps, alpha, colormap)
    tiles += [to_pil_image(picture) for picture in overlays]
    captions += list(labels)
    width, height = tiles[0].size
    if tile_height is not None and height != tile_height:
        width, height = max(1, round(width * tile_height / height)), tile_height
        tiles = [tile.resize((width, height), Image.BILINEAR) for tile in tiles]
    font = _font(max(12, height // 20))
    band = int(font.getbbox("Ag")[3] * 1.6) + 4
    gap = 4
    sheet = Image.new("RGB", (len(tiles) * width + (len(tiles) - 1) * gap, height + band), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        left = index * (width + gap)
        sheet.paste(tile, (left, band))
        draw.text((left + 4, 2), caption, fill=(0, 0, 0), font=font)
    return sheet
