"""Bar charts of CREward scores, drawn with PIL (no plotting library needed).

One group of bars per image (ids under the groups), one bar per axis in the axis colours below,
a zero line, value ticks on the left and a legend at the top. Scores can be negative (the head
has no output activation), so bars grow up or down from zero.

The ComfyUI front end (``web/creward.js``) draws the same bars on the node with the same colours.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .axes import AXES
from .errors import CREwardError

# Colour of each axis (RGB); kept in step with AXIS_COLORS in web/creward.js.
AXIS_COLORS: dict[str, tuple[int, int, int]] = {
    "geometry": (76, 120, 168),
    "material": (245, 133, 24),
    "texture": (84, 162, 75),
    "overall": (228, 87, 86),
}
_EXTRA_COLORS = ((114, 183, 178), (178, 121, 162), (157, 117, 93), (186, 176, 172))
HIGHLIGHT = (255, 244, 204)
MAX_WIDTH = 4096


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _nice_step(span: float, target_ticks: int = 5) -> float:
    raw = span / max(target_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def axis_color(axis: str, position: int) -> tuple[int, int, int]:
    return AXIS_COLORS.get(axis, _EXTRA_COLORS[position % len(_EXTRA_COLORS)])


def plot_scores(
    values: torch.Tensor,
    axes: Sequence[str] = AXES,
    ids: Sequence[int] | None = None,
    highlight: Sequence[int] = (),
    title: str | None = None,
    height: int = 360,
    width: int | None = None,
    y_range: tuple[float, float] | None = None,
    midline: float | None = None,
):
    """Draw scores ``[N, len(axes)]`` as grouped bars; returns an RGB ``PIL.Image``.

    Percentiles (``y_range=(0, 100), midline=50``) and win probabilities (``(0, 1)``, ``0.5``)
    are drawn the same way, on a fixed scale with a dashed line at the middle.

    Args:
        values: scores, one row per image.
        axes: axis names of the columns.
        ids: label of each row (default 0..N-1), drawn as ``#id``.
        highlight: row positions to mark with a shaded background (e.g. the chosen ones).
        title: optional text at the top left.
        height: image height in pixels (>= 120).
        width: image width; default grows with N (about 14 px per bar), capped at 4096.
        y_range: fixed (low, high) of the value axis; default: from the values (always including 0).
        midline: value at which to draw a dashed line (e.g. 50 for percentiles).
    """
    from PIL import Image, ImageDraw

    values = torch.as_tensor(values).detach().float().cpu()
    if values.ndim != 2 or values.shape[1] != len(axes):
        raise CREwardError(f"scores should be shaped [N, {len(axes)}], got {tuple(values.shape)}")
    count, num_axes = values.shape
    if count == 0:
        raise CREwardError("no scores to plot (empty batch)")
    if height < 120:
        raise CREwardError(f"plot height should be at least 120 pixels, got {height}")
    ids = list(range(count)) if ids is None else list(ids)
    left, right, top, bottom = 58, 14, 44, 30
    if width is None:
        width = min(MAX_WIDTH, max(420, left + right + count * (num_axes * 14 + 14)))
    if width < left + right + count:
        raise CREwardError(f"plot width {width} is too small for {count} images")

    finite = values[torch.isfinite(values)]
    if y_range is not None:
        low, high = float(y_range[0]), float(y_range[1])
        if not high > low:
            raise CREwardError(f"plot value range should be (low, high) with high > low, got {y_range}")
    else:
        low = min(0.0, finite.min().item()) if finite.numel() else 0.0
        high = max(0.0, finite.max().item()) if finite.numel() else 1.0
        if high - low < 1e-9:
            high, low = high + 1.0, low - (1.0 if low < 0 else 0.0)
        pad = 0.06 * (high - low)
        low, high = (low - pad if low < 0 else low), high + pad

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float:
        return top + (high - value) / (high - low) * plot_h

    group_w = plot_w / count
    for row in highlight:
        if 0 <= row < count:
            draw.rectangle([left + row * group_w, top, left + (row + 1) * group_w, top + plot_h], fill=HIGHLIGHT)

    step = _nice_step(high - low)
    for index in range(math.ceil(low / step), math.floor(high / step) + 1):
        tick = index * step  # multiples of the step: no accumulated rounding ("-2.8e-17")
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=(232, 232, 232))
        draw.text((left - 6, y), f"{tick:.3g}", fill=(90, 90, 90), font=small, anchor="rm")
    zero = y_of(min(max(0.0, low), high))
    draw.line([(left, zero), (width - right, zero)], fill=(60, 60, 60), width=1)
    if midline is not None and low < midline < high:
        y = y_of(midline)
        for x in range(left, width - right, 8):
            draw.line([(x, y), (min(x + 4, width - right), y)], fill=(120, 120, 120), width=1)
    draw.line([(left, top), (left, top + plot_h)], fill=(60, 60, 60), width=1)

    inner = group_w * 0.8
    bar_w = inner / num_axes
    label_every = max(1, math.ceil(34 / group_w))
    for row in range(count):
        x0 = left + row * group_w + (group_w - inner) / 2
        for column, axis in enumerate(axes):
            value = values[row, column].item()
            if not math.isfinite(value):
                continue
            bx0 = x0 + column * bar_w
            bx1 = max(bx0 + 1, bx0 + bar_w - (1 if bar_w > 3 else 0))
            y = y_of(min(max(value, low), high))
            draw.rectangle([bx0, min(y, zero), bx1, max(y, zero)], fill=axis_color(axis, column))
        if row % label_every == 0:
            draw.text((left + (row + 0.5) * group_w, top + plot_h + 6), f"#{ids[row]}", fill=(40, 40, 40), font=small, anchor="mt")

    if title:
        draw.text((left, 4), title, fill=(20, 20, 20), font=font)
    x = left
    for column, axis in enumerate(axes):
        draw.rectangle([x, 24, x + 10, 34], fill=axis_color(axis, column))
        draw.text((x + 14, 29), axis, fill=(40, 40, 40), font=small, anchor="lm")
        x += 14 + draw.textlength(axis, font=small) + 14
    return image


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB image → float32 ``[H, W, 3]`` in [0, 1] (ComfyUI's IMAGE layout, without the batch)."""
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).float().div_(255.0)
