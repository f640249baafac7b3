"""``CREwardPlotScores``: CREWARD_SCORES → an IMAGE bar chart (drawn by ``creward.models.plots``)."""

from __future__ import annotations

from ..models.errors import CREwardError
from ..models.plots import image_to_tensor, plot_scores

CATEGORY = "CREward"


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
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("plot",)
    OUTPUT_TOOLTIPS = ("The bar chart as a one-image batch.",)
    FUNCTION = "plot"
    CATEGORY = CATEGORY
    DESCRIPTION = "Draws CREward scores as a bar chart image: one group of four bars (geometry, material, texture, overall) per image."

    def plot(self, scores, height, width, highlight=None, title="CREward scores"):
        rows = parse_rows(highlight, len(scores)) if highlight else []
        image = plot_scores(scores.values, scores.axes, scores.ids, rows, title or None, height, width or None)
        return (image_to_tensor(image).unsqueeze(0),)
