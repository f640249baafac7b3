"""``CREwardSelectBest``: best-of-N and filtering of a batch by creativity score.

The ranking rules are ``creward.models.selection.select_indices`` (also behind ``creward
select``). This node takes the chosen rows of the images, of an optional LATENT (samples,
noise_mask and batch_index) and of an optional MASK, with the same indices, best first.

When nothing reaches the minimum, ``when_none_pass`` decides: ``error`` stops the run with an
error naming the minimum and the best score; ``keep best`` returns the single best image and
logs a warning (also shown in the node's text). The node never returns an empty selection.

``minimum_of`` says what the minimum is: a raw ``score`` (the default, as before), a
``percentile`` (0–100) or a ``win probability`` (0–1) on the ``rank_by`` axis, against the
``reference`` input, else against the reference the scores were calibrated with (CREward Score
with a reference), else within this batch (labelled so in the node's text). Ranking is always by
score.
"""

from __future__ import annotations

import logging
import math

import torch

from ..models.axes import AXES
from ..models.errors import CREwardError
from ..models.score_table import ScoreTable
from ..models.selection import NothingPassedError, select_indices
from .managed_model import as_rgb

logger = logging.getLogger(__name__)

CATEGORY = "CREward"
UI_KEY = "creward_selection"
WEIGHTED = "weighted sum"
RANK_BY = (*AXES, WEIGHTED)
WHEN_NONE_PASS = ("error", "keep best")
MINIMUM_OF = ("score", "percentile", "win probability")


def take_rows(tensor: torch.Tensor, rows: list[int], count: int) -> torch.Tensor:
    """Rows of a per-sample tensor following ComfyUI's batch conventions.

    One row applies to every sample (kept as is); fewer rows than samples are repeated
    cyclically (as LatentFromBatch does for noise masks).
    """
    if tensor.shape[0] == 1:
        return tensor.clone()
    if tensor.shape[0] < count:
        tensor = tensor.repeat(math.ceil(count / tensor.shape[0]), *([1] * (tensor.ndim - 1)))[:count]
    return tensor[rows].clone()


def select_latent(latent: dict, rows: list[int], count: int) -> dict:
    """The chosen samples of a LATENT, with their noise_mask rows and batch_index entries."""
    selected = dict(latent)
    selected["samples"] = latent["samples"][rows].clone()
    if latent.get("noise_mask") is not None:
        selected["noise_mask"] = take_rows(latent["noise_mask"], rows, count)
    if latent.get("batch_index") is not None:
        selected["batch_index"] = [latent["batch_index"][row] for row in rows]
    else:
        selected["batch_index"] = list(rows)
    return selected


class CREwardSelectBest:
    """Keep the top-k images of a batch by one axis or a weighted sum of axes."""

    @classmethod
    def INPUT_TYPES(cls):
        weight = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.05}
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The batch to choose from (e.g. a decoded KSampler batch)."}),
                "rank_by": (list(RANK_BY), {
                    "default": "overall",
                    "tooltip": "Rank by one axis, or by the weighted sum of the four axes (weights below).",
                }),
                "top_k": ("INT", {
                    "default": 1, "min": 0, "max": 4096,
                    "tooltip": "How many images to keep, best first. 0 keeps every image that reaches the minimum (filtering).",
                }),
                "use_minimum": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Keep only images whose ranking score is at least 'minimum'.",
                }),
                "minimum": ("FLOAT", {
                    "default": 0.0, "min": -1000.0, "max": 1000.0, "step": 0.01,
                    "tooltip": "The minimum when use_minimum is on: a ranking score (the axis, or the weighted sum), or a "
                    "percentile / win probability (see minimum_of). Raw scores are relative: a percentile against a "
                    "reference of your subject says what a good score is.",
                }),
                "when_none_pass": (list(WHEN_NONE_PASS), {
                    "default": "error",
                    "tooltip": "If no image reaches the minimum: 'error' stops with an error naming the minimum and "
                    "the best score; 'keep best' returns the single best image (with a warning).",
                }),
                **{f"{axis}_weight": ("FLOAT", {**weight, "default": 1.0 if axis != "overall" else 0.0,
                    "tooltip": f"Weight of {axis} in the weighted sum (only used when rank_by is 'weighted sum')."})
                   for axis in AXES},
            },
            "optional": {
                "scores": ("CREWARD_SCORES", {"tooltip": "Scores of these images from CREward Score (same order)."}),
                "creward": ("CREWARD", {"tooltip": "Or a CREward model: the images are scored here when 'scores' is not connected."}),
                "latent": ("LATENT", {"tooltip": "Optional latents of the same batch: the same samples are selected."}),
                "mask": ("MASK", {"tooltip": "Optional masks of the same batch (one per image, or one for all)."}),
                "minimum_of": (list(MINIMUM_OF), {
                    "default": "score",
                    "tooltip": "What 'minimum' is: a raw score, a percentile (0-100: 90 keeps the top 10 %) or a win "
                    "probability (0-1: 0.8 = beats a random reference image 80 % of the time) on the rank_by axis, against "
                    "the reference (else within this batch).",
                }),
                "reference": ("CREWARD_REFERENCE", {
                    "tooltip": "Optional reference set (CREward Reference Loader) for a percentile or win-probability "
                    "minimum. Without it: the reference the scores were calibrated with, else this batch.",
                }),
            },
        }

    RETURN_TYPES = ("IMAGE", "LATENT", "MASK", "IMAGE", "STRING", "CREWARD_SCORES")
    RETURN_NAMES = ("images", "latent", "mask", "rejected_images", "indices", "scores")
    OUTPUT_TOOLTIPS = (
        "The chosen images, best first.",
        "The chosen latents (same indices; noise_mask and batch_index follow). None when no latent is connected.",
        "The chosen masks (same indices); zeros when no mask is connected.",
        "The images that were not chosen, in input order (an empty batch when every image was chosen).",
        "The chosen positions in the input batch (0-based), best first, comma-separated.",
        "The scores of the chosen images, best first.",
    )
    FUNCTION = "select"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = (
        "Best-of-N and filtering: keeps the top-k images by a CREward axis or a weighted sum, optionally only those "
        "above a minimum, and takes the same samples from a LATENT and a MASK."
    )
    SEARCH_ALIASES = ["best of n", "filter by creativity", "top k"]

    def select(self, images, rank_by, top_k, use_minimum, minimum, when_none_pass, geometry_weight=1.0,
               material_weight=1.0, texture_weight=1.0, overall_weight=0.0, scores=None, creward=None,
               latent=None, mask=None, minimum_of="score", reference=None):
        as_rgb(images, "images")
        count = images.shape[0]
        if when_none_pass not in WHEN_NONE_PASS:
            raise CREwardError(f"when_none_pass: unknown choice {when_none_pass!r}; expected one of {', '.join(WHEN_NONE_PASS)}")
        if rank_by not in RANK_BY:
            raise CREwardError(f"rank_by: unknown choice {rank_by!r}; expected one of {', '.join(RANK_BY)}")
        if minimum_of not in MINIMUM_OF:
            raise CREwardError(f"minimum_of: unknown choice {minimum_of!r}; expected one of {', '.join(MINIMUM_OF)}")
        if use_minimum and minimum_of != "score":
            if rank_by == WEIGHTED:
                raise CREwardError(
                    f"minimum_of: a {minimum_of} compares one axis with its reference distribution; choose an axis in "
                    f"rank_by (a weighted sum has no reference distribution), or set minimum_of to 'score'"
                )
            bounds = (0.0, 100.0) if minimum_of == "percentile" else (0.0, 1.0)
            if not bounds[0] <= minimum <= bounds[1]:
                raise CREwardError(f"minimum: a {minimum_of} minimum should be between {bounds[0]:g} and {bounds[1]:g}, got {minimum:g}")
        table = self._scores(images, scores, creward)
        if reference is not None:
            table = reference.calibrate(table, scorer=table.scorer or (creward.scorer if creward is not None else None))
        calibration = table.calibrated()
        threshold, threshold_name = None, None
        if use_minimum and minimum_of != "score":
            if rank_by not in table.axes:
                raise CREwardError(f"rank_by: these scores have no {rank_by!r} axis (axes: {', '.join(table.axes)})")
            threshold = calibration.values(minimum_of)[:, table.axes.index(rank_by)]
            threshold_name = f"{rank_by} {minimum_of} {calibration.label}"
        if latent is not None and latent["samples"].shape[0] != count:
            raise CREwardError(f"latent: {latent['samples'].shape[0]} samples for {count} images; they must be the same batch")
        if mask is not None:
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            if mask.shape[0] not in (1, count):
                raise CREwardError(f"mask: {mask.shape[0]} masks for {count} images; give one mask per image, or one for all")
        if rank_by == WEIGHTED:
            weights = {"geometry": geometry_weight, "material": material_weight, "texture": texture_weight, "overall": overall_weight}
            by = torch.tensor([float(weights.get(axis, 0.0)) for axis in table.axes])
            if not by.abs().sum() > 0:
                raise CREwardError("rank_by is 'weighted sum' but every *_weight is 0: give at least one axis a weight")
        else:
            by = rank_by
        try:
            selection = select_indices(
                table.values, by, top_k, minimum if use_minimum else None, when_none_pass, table.axes,
                threshold=threshold, threshold_name=threshold_name,
            )
        except NothingPassedError as error:
            raise CREwardError(
                f"minimum: {error}. Lower 'minimum', or set 'when_none_pass' to 'keep best' to keep the single best image"
            ) from error
        chosen = list(selection.chosen)
        rejected = list(selection.rejected)
        if not rejected:
            logger.info("CREward Select Best: every image was chosen; rejected_images is an empty batch")
        out_images = images[chosen].clone()
        out_rejected = images[rejected].clone()
        out_latent = select_latent(latent, chosen, count) if latent is not None else None
        if mask is not None:
            out_mask = take_rows(mask, chosen, count) if mask.shape[0] == count else mask.clone()
        else:
            out_mask = torch.zeros((len(chosen), images.shape[1], images.shape[2]), dtype=torch.float32, device=images.device)
        text = selection.describe()
        if selection.fell_back:
            text = (f"WARNING: no image reached {threshold_name or selection.criterion} >= {selection.minimum:g}; kept the best one.\n") + text
        if threshold is None and table.calibration is not None:
            text += f"\npercentiles: {calibration.label}"
        indices = ",".join(str(row) for row in chosen)
        title = f"CREward Select Best (by {selection.criterion})"
        payload = {
            **table.to_payload(calibration),
            "title": title,
            "charts": table.charts(title, highlight=chosen, note=f"chosen: {', '.join(f'#{table.ids[row]}' for row in chosen)}"),
            "chosen": chosen,
            "rejected": rejected,
            "values": [value if math.isfinite(value) else None for value in selection.values.tolist()],
            "criterion": selection.criterion,
            "minimum": selection.minimum,
            "minimum_of": minimum_of if use_minimum else None,
            "passed": selection.passed,
            "fell_back": selection.fell_back,
        }
        result = (out_images, out_latent, out_mask, out_rejected, indices, table.take(chosen))
        return {"ui": {UI_KEY: [payload], "text": [text]}, "result": result}

    @staticmethod
    def _scores(images, scores, creward) -> ScoreTable:
        count = images.shape[0]
        if scores is not None:
            if len(scores) != count:
                raise CREwardError(f"scores: {len(scores)} rows of scores for {count} images; score this same batch")
            return scores
        if creward is None:
            raise CREwardError("connect 'scores' (from CREward Score) or 'creward' (to score the images here)")
        import comfy.utils

        bar = comfy.utils.ProgressBar(count)
        return ScoreTable(creward.score_images(images, 8, progress=bar.update_absolute), creward.axes, scorer=creward.scorer)
