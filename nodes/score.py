"""``CREwardScore`` (IMAGE) and ``CREwardScoreLatent`` (LATENT + VAE): per-image creativity scores.

Both return a ``CREWARD_SCORES`` value (every image's four scores), one FLOAT per axis and a text
summary (a Markdown table), and send the scores to the UI, where ``web/creward.js`` draws them as
bars on the node: the payload's ``charts`` (``ScoreTable.chart``) say what to draw.

For a batch, each FLOAT output is the **mean** over the images (for one image, its score).

With a ``reference`` (CREward Reference Loader) connected, every image also gets its percentile
and win probability against the reference (carried in ``scores``, shown in the summary and the
bars, and the batch's mean percentile per axis as the ``*_percentile`` FLOAT outputs, NaN without
a reference). Without one, the summary and the UI show the batch-relative view (each image
against the others in the batch), labelled as such.
"""

from __future__ import annotations

import logging
import math

import torch

from ..models.axes import AXES
from ..models.errors import CREwardError, ImageError
from ..models.score_table import ScoreTable
from .managed_model import as_rgb

logger = logging.getLogger(__name__)

CATEGORY = "CREward"
UI_KEY = "creward_scores"
REGIONS = ("whole image", "noise_mask area")
SCORE_OUTPUT_TYPES = ("CREWARD_SCORES", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
SCORE_OUTPUT_NAMES = ("scores", *AXES, "summary", *(f"{axis}_percentile" for axis in AXES))
SCORE_OUTPUT_TOOLTIPS = (
    "Every image's scores (geometry, material, texture, overall), for CREward Select Best and CREward Plot Scores; "
    "with a reference connected, also their percentiles and win probabilities.",
    *(f"{axis.capitalize()} creativity: the mean over the batch (for a single image, its score)." for axis in AXES),
    "The scores as a Markdown table (one line per image, and the mean; with percentiles and win probabilities); reads "
    "as an aligned table as plain text too.",
    *(f"{axis.capitalize()} percentile (0-100) against the connected reference: the mean over the batch (for a single "
      f"image, its percentile). NaN when no reference is connected." for axis in AXES),
)
REFERENCE_INPUT = ("CREWARD_REFERENCE", {
    "tooltip": "Optional: a reference set from CREward Reference Loader. Each image then gets its percentile (0-100) and "
    "win probability (0-1) against it, shown on the node and carried in 'scores'.",
})


def _per_axis(values: torch.Tensor, axes: tuple[str, ...]) -> list[float]:
    floats = []
    for axis in AXES:
        if axis in axes:
            floats.append(float(values[axes.index(axis)]))
        else:
            logger.warning("this CREward head has no %r output (its axes: %s); that output is NaN", axis, axes)
            floats.append(math.nan)
    return floats


def score_outputs(table: ScoreTable, title: str, note: str | None = None) -> dict:
    """``{"ui": ..., "result": ...}`` shared by the scoring nodes (``note``: a caption for the score bars)."""
    floats = _per_axis(table.mean(), table.axes)
    if table.calibration is not None:
        percentiles = _per_axis(table.calibration.percentiles.nanmean(dim=0), table.axes)
    else:
        percentiles = [math.nan] * len(AXES)
    calibration = table.calibrated()  # vs the reference, else within this batch
    summary = table.summary(calibration=calibration if table.calibration is not None or len(table) > 1 else None)
    payload = {**table.to_payload(calibration), "title": title, "charts": table.charts(title, note=note)}
    return {"ui": {UI_KEY: [payload], "text": [summary]}, "result": (table, *floats, summary, *percentiles)}


def with_reference(table: ScoreTable, reference) -> ScoreTable:
    """``table`` calibrated against the ``reference`` input (a ``ChosenReference``), or as is."""
    return table if reference is None else reference.calibrate(table, input_name="reference")


def _progress_bar(total: int):
    import comfy.utils

    return comfy.utils.ProgressBar(total)


class CREwardScore:
    """Score a batch of images."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "creward": ("CREWARD", {"tooltip": "The model from CREward Loader."}),
                "images": ("IMAGE", {"tooltip": "The images to score (any size; each is resized to the backbone's input)."}),
            },
            "optional": {
                "batch_size": ("INT", {
                    "default": 8, "min": 1, "max": 256,
                    "tooltip": "Images per forward pass: lower it if the device runs out of memory.",
                    "advanced": True,
                }),
                "reference": REFERENCE_INPUT,
            },
        }

    RETURN_TYPES = SCORE_OUTPUT_TYPES
    RETURN_NAMES = SCORE_OUTPUT_NAMES
    OUTPUT_TOOLTIPS = SCORE_OUTPUT_TOOLTIPS
    FUNCTION = "score"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = (
        "Scores how creative each image is on geometry, material, texture and overall (higher = more creative). "
        "Scores are relative: compare images of the same subject, or connect a reference (CREward Reference Loader) "
        "to get each image's percentile and win probability against your subject. The FLOAT outputs are batch means."
    )
    SEARCH_ALIASES = ["creativity score", "rate images"]

    def score(self, creward, images, batch_size=8, reference=None):
        images = as_rgb(images, "images")
        bar = _progress_bar(images.shape[0])
        values = creward.score_images(images, batch_size, progress=bar.update_absolute)
        table = with_reference(ScoreTable(values, creward.axes, scorer=creward.scorer), reference)
        return score_outputs(table, f"CREward ({len(table)} image{'s' if len(table) != 1 else ''})", creward.short_description)


def mask_boxes(noise_mask: torch.Tensor, count: int, height: int, width: int) -> list[tuple[int, int, int, int] | None]:
    """Per image, the bounding box ``(top, bottom, left, right)`` of its noise mask >= 0.5 in pixels.

    Masks follow ComfyUI's latent conventions: one mask for the whole batch, or one per sample
    (fewer masks than samples are repeated, as LatentFromBatch does). None for an empty mask.
    """
    masks = noise_mask.reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1]).float()
    if masks.shape[0] < count:
        masks = masks.repeat(math.ceil(count / masks.shape[0]), 1, 1, 1)[:count]
    masks = torch.nn.functional.interpolate(masks[:count], size=(height, width), mode="bilinear")
    boxes: list[tuple[int, int, int, int] | None] = []
    for mask in masks[:, 0] >= 0.5:
        rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
        if rows.numel() == 0:
            boxes.append(None)
        else:
            boxes.append((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
    return boxes


class CREwardScoreLatent:
    """Decode latents chunk by chunk with a VAE and score them (memory bounded by the chunk size)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "creward": ("CREWARD", {"tooltip": "The model from CREward Loader."}),
                "latent": ("LATENT", {"tooltip": "The latents to score, e.g. a KSampler batch."}),
                "vae": ("VAE", {"tooltip": "The VAE that decodes these latents."}),
            },
            "optional": {
                "decode_batch_size": ("INT", {
                    "default": 4, "min": 1, "max": 256,
                    "tooltip": "Latents decoded and scored at a time: only this many decoded images are in memory at once.",
                    "advanced": True,
                }),
                "region": (list(REGIONS), {
                    "default": REGIONS[0],
                    "tooltip": "'whole image': score the full decoded image. 'noise_mask area': when the latent has a "
                    "noise_mask (inpainting), score only the bounding box of the masked (regenerated) area; images "
                    "whose mask is empty are scored whole.",
                }),
                "reference": REFERENCE_INPUT,
            },
        }

    RETURN_TYPES = SCORE_OUTPUT_TYPES
    RETURN_NAMES = SCORE_OUTPUT_NAMES
    OUTPUT_TOOLTIPS = SCORE_OUTPUT_TOOLTIPS
    FUNCTION = "score"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = (
        "Decodes latents in chunks and scores their creativity (geometry, material, texture, overall) without keeping "
        "all decoded images in memory. Images are numbered by the latent's batch_index when it has one."
    )
    SEARCH_ALIASES = ["creativity score latent"]

    def score(self, creward, latent, vae, decode_batch_size=4, region=REGIONS[0], reference=None):
        import comfy.model_management as model_management

        if region not in REGIONS:
            raise CREwardError(f"region: unknown choice {region!r}; expected one of {', '.join(REGIONS)}")
        samples = check_latent(latent, vae)
        count = samples.shape[0]
        ids = latent.get("batch_index")
        if ids is not None and len(ids) != count:
            logger.warning("latent batch_index has %d entries for %d samples; numbering images 0..%d", len(ids), count, count - 1)
            ids = None
        noise_mask = latent.get("noise_mask") if region == REGIONS[1] else None
        if region == REGIONS[1] and noise_mask is None:
            logger.warning("region is 'noise_mask area' but the latent has no noise_mask: scoring whole images")
        bar = _progress_bar(count)
        rows = []
        boxes = None
        for start in range(0, count, decode_batch_size):
            model_management.throw_exception_if_processing_interrupted()
            images = vae.decode(samples[start:start + decode_batch_size])
            if images.ndim == 5:  # video VAEs: [batch, frames, H, W, C] -> every frame is an image
                images = images.reshape(-1, *images.shape[-3:])
                ids, noise_mask = None, None
            images = as_rgb(images, "latent (decoded)")
            if noise_mask is not None:
                if boxes is None:
                    boxes = mask_boxes(noise_mask, count, images.shape[1], images.shape[2])
                chunk_boxes = boxes[start:start + images.shape[0]]
                crops = [image if box is None else image[box[0]:box[1], box[2]:box[3]] for image, box in zip(images, chunk_boxes)]
                values = torch.cat([creward.score_images(crop.unsqueeze(0), 1) for crop in crops])
            else:
                values = creward.score_images(images, decode_batch_size)
            rows.append(values)
            bar.update_absolute(min(start + decode_batch_size, count))
        table = with_reference(ScoreTable(torch.cat(rows), creward.axes, ids, scorer=creward.scorer), reference)
        return score_outputs(table, f"CREward ({len(table)} latent{'s' if len(table) != 1 else ''})", creward.short_description)


def check_latent(latent, vae) -> torch.Tensor:
    """The latent's samples, checked against the VAE; errors name the input."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise CREwardError(f"latent: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    samples = latent["samples"]
    if samples.shape[0] == 0:
        raise ImageError("latent: the latent batch is empty (0 samples); nothing to score")
    expected = getattr(vae, "latent_channels", None)
    if samples.ndim < 3 or (expected is not None and samples.shape[1] != expected):
        raise CREwardError(
            f"latent: the latent has {samples.shape[1] if samples.ndim > 1 else '?'} channels (shape "
            f"{tuple(samples.shape)}) but this VAE decodes {expected}-channel latents: connect the VAE that belongs "
            f"to the model that made the latent"
        )
    return samples
