"""``CREwardPlotScores``: CREWARD_SCORES → an IMAGE bar chart (drawn by ``creward.models.plots``).

``show`` picks what is drawn: the raw scores (default), or each image's percentile (0–100) or win
probability (0–1) against the ``reference`` input, else the reference the scores were calibrated
with, else within the plotted images. The title says which.
"""

from __future__ import annotations

from ..models.errors import CREwardError
from ..models.plots import image_to_tensor, plot_scores

CATEGORY = "CREward"
SHOW = ("scores", "percentile", "win probability")


def parse_rows(text: str, count: int) -> list[int]:
    """``"3, 0,7"`` → ``[3, 0, 7]``; every row must be within ``0..count-1``."""
    rows = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            row = int(part)
        except ValueError:
            raise CREwardError(f"highlight: {part!r} is not a whole number (expected positions like '3,0,7')") from None
        if not 0 <= row < count:
            raise CREwardError(f"highlight: position {row} is outside the {count} scored images (0..{count - 1})")
        rows.append(row)
    return rows


class CREwardPlotScores:
    """Draw scores as grouped bars (one group per image, one bar per axis)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scores": ("CREWARD_SCORES", {"tooltip": "Scores from CREward Score, Score Latent or Select Best."}),
                "height": ("INT", {"default": 360, "min": 120, "max": 2048, "step": 8, "tooltip": "Height of the chart in pixels."}),
                "width": ("INT", {
                    "default": 0, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Width in pixels; 0 sizes it to the number of images (up to 4096).",
                }),
            },
            "optional": {
                "highlight": ("STRING", {
                    "forceInput": True,
                    "tooltip": "Positions to shade, e.g. the 'indices' output of CREward Select Best.",
                }),
                "title": ("STRING", {"default": "CREward scores", "tooltip": "Text at the top of the chart."}),
                "show": (list(SHOW), {
                    "default": "scores",
                    "tooltip": "Draw the raw scores, or each image's percentile (0-100) or win probability (0-1): against "
                    "the reference (connected here, or the one the scores were calibrated with), else within these images.",
                }),
                "reference": ("CREWARD_REFERENCE", {"tooltip": "Optional reference set (CREward Reference Loader) for 'show'."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("plot",)
    OUTPUT_TOOLTIPS = ("The bar chart as a one-image batch.",)
    FUNCTION = "plot"
    CATEGORY = CATEGORY
    DESCRIPTION = "Draws CREward scores as a bar chart image: one group of four bars (geometry, material, texture, overall) per image."

    def plot(self, scores, height, width, highlight=None, title="CREward scores", show="scores", reference=None):
        if show not in SHOW:
            raise CREwardError(f"show: unknown choice {show!r}; expected one of {', '.join(SHOW)}")
        rows = parse_rows(highlight, len(scores)) if highlight else []
        if show == "scores":
            image = plot_scores(scores.values, scores.axes, scores.ids, rows, title or None, height, width or None)
        else:
            table = reference.calibrate(scores) if reference is not None else scores
            calibration = table.calibrated()
            label = f"{show} {calibration.label}"
            y_range, midline = ((0.0, 100.0), 50.0) if show == "percentile" else ((0.0, 1.0), 0.5)
            image = plot_scores(
                calibration.values(show), scores.axes, scores.ids, rows, f"{title} - {label}" if title else label,
                height, width or None, y_range=y_range, midline=midline,
            )
        return (image_to_tensor(image).unsqueeze(0),)
