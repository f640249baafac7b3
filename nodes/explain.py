"""``CREwardExplain``: Grad-CAM heatmaps of one creativity axis (or a weighted mix) over the images.

A thin adapter over ``creward.models.gradcam``: ComfyUI runs nodes under
``torch.inference_mode()``; ``gradcam`` leaves it and clones what it needs, so gradients flow.
"""

from __future__ import annotations

import logging

from ..models.axes import AXES, axis_weights
from ..models.errors import CREwardError
from ..models.gradcam import gradcam, overlay
from ..models.score_table import ScoreTable
from .managed_model import as_rgb

logger = logging.getLogger(__name__)

CATEGORY = "CREward"
WEIGHTED = "weighted"


class CREwardExplain:
    """Which regions of each image drive its score on one axis."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "creward": ("CREWARD", {"tooltip": "The model from CREward Loader."}),
                "images": ("IMAGE", {"tooltip": "The images to explain (any size; heatmaps come back at each image's size)."}),
                "axis": ([*AXES, WEIGHTED], {
                    "default": "overall",
                    "tooltip": "The creativity axis whose score is explained. 'weighted': the mix given in 'weights'.",
                }),
            },
            "optional": {
                "weights": ("STRING", {
                    "default": "1,1,1,1",
                    "tooltip": "Only for axis 'weighted': weights of geometry, material, texture, overall, "
                    "separated by commas (e.g. 1,0,0.5,0). The heatmap explains the weighted sum of the scores.",
                }),
                "block": ("INT", {
                    "default": -1, "min": -64, "max": 64,
                    "tooltip": "Backbone block whose activations are weighed: -1 = the last useful one (the default), "
                    "0 = the first, negative counts from the end. Earlier blocks give finer, lower-level maps.",
                    "advanced": True,
                }),
                "alpha": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Opacity of the coloured heatmap over the image in the 'overlay' output.",
                }),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "CREWARD_SCORES")
    RETURN_NAMES = ("overlay", "heatmap", "scores")
    OUTPUT_TOOLTIPS = (
        "The images with the heatmap blended over them (red: regions that raise the score most, blue: none).",
        "The raw heatmaps [batch, height, width] in 0..1, per image (all zero when no region raises the score).",
        "The images' scores (geometry, material, texture, overall), for CREward Plot Scores or Select Best.",
    )
    FUNCTION = "explain"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Grad-CAM: shows which regions of each image drive its CREward score on the chosen axis (or a weighted mix "
        "of axes), as a heatmap overlay and a mask. Each heatmap is normalised to 0..1 on its own image."
    )
    SEARCH_ALIASES = ["grad-cam", "gradcam", "heatmap", "creativity explain", "saliency"]

    def explain(self, creward, images, axis, weights="1,1,1,1", block=-1, alpha=0.5):
        import comfy.model_management as model_management
        import comfy.utils

        images = as_rgb(images, "images")
        if axis == WEIGHTED:
            try:
                target = axis_weights(weights, creward.axes)
            except CREwardError as error:
                raise CREwardError(f"weights: {error}") from None
        elif axis in AXES:
            target = axis
        else:
            raise CREwardError(f"axis: unknown choice {axis!r}; expected one of {', '.join([*AXES, WEIGHTED])}")
        count = images.shape[0]
        bar = comfy.utils.ProgressBar(count)

        def after_image(done: int, total: int) -> None:
            bar.update_absolute(done, total)
            if done < total:
                model_management.throw_exception_if_processing_interrupted()

        creward.load(1)
        model_management.throw_exception_if_processing_interrupted()
        heatmaps, scores = gradcam(creward.model, images, target, block=block, batch_size=1, channels_last=True, progress=after_image)
        pictures = overlay(images.movedim(-1, 1).float().cpu(), heatmaps, alpha).movedim(1, -1)
        device = model_management.intermediate_device()
        return (pictures.to(device), heatmaps.to(device), ScoreTable(scores, creward.axes, scorer=creward.scorer))
