"""Best-of-N and filtering over CREward scores.

Rank images by one axis or by a weighted sum of axes, keep the ``top_k`` best, optionally only
those whose ranking value is at least ``minimum``. Used by the ComfyUI node ``CREwardSelectBest``
and by ``creward select``; nothing here knows about ComfyUI or files.

Rules, in order:

1. ranking value of image i = ``scores[i] @ weights`` (one axis = a one-hot weight vector; the
   weighted sum is *not* normalised: the minimum applies to ``sum_a w_a * score_a`` as given);
2. an image passes when its value is ``>= minimum`` (every image passes without a minimum);
   a NaN value never passes and ranks last. With ``threshold`` (e.g. each image's percentile
   against a reference set, ``creward.models.calibration``), the minimum applies to those values
   instead, while the ranking stays by score;
3. passing images are sorted by value, best first; ties keep input order (stable sort);
4. the first ``top_k`` are chosen (``top_k=0`` keeps every passing image; a ``top_k`` above the
   number passing keeps all of them);
5. when no image passes, ``when_none_pass`` decides: ``"error"`` raises
   :class:`NothingPassedError` naming the minimum and the best value, ``"keep best"`` chooses the
   single best image (``Selection.fell_back`` is True), ``"empty"`` chooses nothing (for callers
   such as the CLI that report an empty result themselves).

Example:
    >>> selection = select_indices(scores, "texture", top_k=2, minimum=0.1)
    >>> selection.chosen      # e.g. (3, 0): rows of ``scores``, best first
    >>> selection.rejected    # the other rows, in input order
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .axes import AXES, axis_weights
from .errors import CREwardError

logger = logging.getLogger(__name__)

WHEN_NONE_PASS = ("error", "keep best", "empty")

AxisChoice = str | Mapping[str, float] | Sequence[float] | torch.Tensor


class NothingPassedError(CREwardError):
    """No image reached the minimum (raised when ``when_none_pass="error"``)."""

    def __init__(self, criterion: str, minimum: float, best_value: float, best_index: int, count: int):
        self.criterion = criterion
        self.minimum = minimum
        self.best_value = best_value
        self.best_index = best_index
        super().__init__(
            f"no image reached the minimum: {criterion} >= {minimum:g} was required, but the best of the "
            f"{count} image(s) scored {best_value:.4f} (image {best_index})"
        )


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_indices`.

    Attributes:
        chosen: row indices of the chosen images, best first.
        rejected: every other row index, in input order.
        values: the ranking value of every row, float32 ``[N]`` (NaN where a score was NaN).
        criterion: the ranking in words, e.g. ``"overall"`` or ``"1*geometry + 0.5*texture"``.
        minimum: the minimum applied, or None.
        passed: how many rows reached the minimum (every non-NaN row when there is none).
        fell_back: True when nothing passed and the best row was kept (``"keep best"``).
    """

    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    values: torch.Tensor
    criterion: str
    minimum: float | None
    passed: int
    fell_back: bool = False
    threshold: torch.Tensor | None = None
    threshold_name: str | None = None

    def describe(self) -> str:
        """One line for logs and the UI."""
        kept = ", ".join(f"{index} ({self.values[index].item():.4f})" for index in self.chosen) or "none"
        text = f"ranked by {self.criterion}"
        if self.minimum is not None:
            what = f" {self.threshold_name}" if self.threshold_name else ""
            text += f", minimum{what} {self.minimum:g}: {self.passed} of {len(self.values)} passed"
        text += f"; chosen: {kept}"
        if self.fell_back:
            text += " (nothing passed: kept the best)"
        return text


def _weight_vector(by: AxisChoice, axes: Sequence[str]) -> torch.Tensor:
    if isinstance(by, torch.Tensor):
        weights = by.detach().float().flatten().cpu()
        if weights.numel() != len(axes):
            raise CREwardError(f"expected {len(axes)} axis weights ({', '.join(axes)}), got {weights.numel()}")
    else:
        weights = axis_weights(by, axes).float()
    if not torch.isfinite(weights).all():
        raise CREwardError(f"axis weights must be finite numbers, got {weights.tolist()}")
    if not weights.abs().sum() > 0:
        raise CREwardError(f"axis weights are all zero ({', '.join(axes)}): give at least one axis a weight")
    return weights


def describe_weights(weights: torch.Tensor, axes: Sequence[str] = AXES) -> str:
    """``"texture"`` for a one-hot vector, else ``"1*geometry + 0.5*texture"``."""
    nonzero = [(axis, float(weight)) for axis, weight in zip(axes, weights.tolist()) if weight != 0]
    if len(nonzero) == 1 and nonzero[0][1] == 1.0:
        return nonzero[0][0]
    return " + ".join(f"{weight:g}*{axis}" for axis, weight in nonzero)


def ranking_values(scores: torch.Tensor, by: AxisChoice = "overall", axes: Sequence[str] = AXES) -> tuple[torch.Tensor, str]:
    """Ranking value of every row: ``scores @ weights`` as float32 ``[N]``, and the criterion in words.

    Args:
        scores: ``[N, len(axes)]`` scores.
        by: an axis name, ``{"axis": weight}``, a sequence of ``len(axes)`` weights, a string
            ``"1,0,0.5,1"``, or a weight tensor.
    """
    scores = torch.as_tensor(scores)
    if scores.ndim != 2 or scores.shape[1] != len(axes):
        raise CREwardError(f"scores should be shaped [N, {len(axes)}] ({', '.join(axes)}), got {tuple(scores.shape)}")
    weights = _weight_vector(by, axes)
    values = scores.detach().float().cpu() @ weights
    return values, describe_weights(weights, axes)


def select_indices(
    scores: torch.Tensor,
    by: AxisChoice = "overall",
    top_k: int = 1,
    minimum: float | None = None,
    when_none_pass: str = "error",
    axes: Sequence[str] = AXES,
    threshold: torch.Tensor | None = None,
    threshold_name: str | None = None,
) -> Selection:
    """Choose the best rows of ``scores`` (see the module docstring for the exact rules).

    Args:
        scores: ``[N, len(axes)]`` scores (any float dtype/device), N >= 1.
        by: what to rank by: an axis name or weights (see :func:`ranking_values`).
        top_k: how many to keep, best first; 0 keeps every row that passes the minimum.
        minimum: keep only rows whose ranking value is ``>= minimum``; None for no minimum.
        when_none_pass: ``"error"``, ``"keep best"`` or ``"empty"``.
        threshold: optional ``[N]`` values the minimum applies to instead of the ranking value
            (e.g. percentiles); NaN never passes.
        threshold_name: what ``threshold`` is, in words (e.g. ``"overall percentile"``).

    Returns:
        A :class:`Selection`.

    Raises:
        NothingPassedError: nothing reached the minimum and ``when_none_pass="error"``.
        CREwardError: bad arguments (empty scores, negative top_k, unknown axis, all-zero weights,
            every value NaN).
    """
    if when_none_pass not in WHEN_NONE_PASS:
        raise CREwardError(f"when_none_pass should be one of {', '.join(WHEN_NONE_PASS)}, got {when_none_pass!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise CREwardError(f"top_k should be a whole number >= 0 (0 = keep every image that passes), got {top_k!r}")
    if minimum is not None and (not isinstance(minimum, (int, float)) or math.isnan(minimum)):
        raise CREwardError(f"minimum should be a number or None, got {minimum!r}")
    values, criterion = ranking_values(scores, by, axes)
    count = len(values)
    if count == 0:
        raise CREwardError("no scores to select from (empty batch)")
    if threshold is not None:
        threshold = torch.as_tensor(threshold).detach().float().cpu().flatten()
        if threshold.numel() != count:
            raise CREwardError(f"{threshold.numel()} threshold values for {count} rows of scores")
    limit = values if threshold is None else threshold
    limit_name = threshold_name or criterion
    is_nan = torch.isnan(values)
    if is_nan.all():
        raise CREwardError(f"every {criterion} score is NaN: the model produced no usable scores")
    # Stable descending sort with NaN last: rank on a copy where NaN is -inf, then move NaN rows behind.
    rankable = torch.where(is_nan, torch.full_like(values, -math.inf), values)
    order = torch.sort(rankable, descending=True, stable=True).indices.tolist()
    order = [index for index in order if not is_nan[index]] + [index for index in order if is_nan[index]]
    passing = [index for index in order if not is_nan[index] and (minimum is None or limit[index].item() >= minimum)]
    fell_back = False
    if passing:
        chosen = passing if top_k == 0 else passing[:top_k]
    elif when_none_pass == "error":
        best = _best_of(limit, order)
        raise NothingPassedError(limit_name, float(minimum), limit[best].item(), best, count)
    elif when_none_pass == "keep best":
        chosen = order[:1]
        fell_back = True
        best = _best_of(limit, order)
        logger.warning(
            "no image reached %s >= %g (best: %.4f, image %d); keeping the best one", limit_name, minimum, limit[best].item(), best
        )
    else:
        chosen = []
    chosen_set = set(chosen)
    rejected = tuple(index for index in range(count) if index not in chosen_set)
    return Selection(
        chosen=tuple(chosen),
        rejected=rejected,
        values=values,
        criterion=criterion,
        minimum=None if minimum is None else float(minimum),
        passed=len(passing),
        fell_back=fell_back,
        threshold=threshold,
        threshold_name=threshold_name if threshold is not None else None,
    )


def _best_of(limit: torch.Tensor, order: list[int]) -> int:
    """The row with the highest non-NaN ``limit`` value (the first in ranking order on ties)."""
    best = order[0]
    for index in order:  # ranking order: the first of equal values wins
        if not torch.isnan(limit[index]) and (torch.isnan(limit[best]) or limit[index] > limit[best]):
            best = index
    return best
