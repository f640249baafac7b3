"""Calibrated scores: a score's percentile and win probability against a distribution of scores.

CREward's scores are Bradley–Terry logits: the head was trained so that
P(image A judged more creative than image B) = sigmoid(s_A − s_B). A raw score therefore means
nothing alone; against a set of reference scores r_1..r_n of the same subject it means two things:

- **percentile** (0–100): the share of the reference scoring below s, ties counted half
  (mid-rank): ``100 · (#{r < s} + ½ #{r = s}) / n``. On new images from the same distribution
  as the reference, percentiles are uniform on 0–100 (``tests/test_calibration.py``).
- **win probability** (0–1): ``mean_j sigmoid(s − r_j)``, the chance that the judge the head was
  trained to imitate prefers this image to a random reference image. It is 0.5 at the median of a
  symmetric reference; unlike the percentile it keeps growing beyond the best reference image
  and says how *much* better: a percentile of 100 with a win probability of 0.6 means "above all
  of them, but only slightly".

A :class:`ScoreDistribution` holds one axis's reference scores: every score, sorted (``exact``),
or, for large sets, ``QUANTILE_KNOTS`` = 1001 quantiles at probabilities 0, 0.001, …, 1, read as a
piecewise-linear CDF, so that percentiles are within 0.1 of the exact ones and the win probability
integrates the sigmoid over each quantile bin exactly (uniform within the bin).

:func:`within_batch` is the batch-relative view (no reference): each image against the *other*
images of its batch (leave-one-out), e.g. the best of 5 distinct scores is at percentile 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import CREwardError

QUANTILE_KNOTS = 1001
EXACT_LIMIT = 10_000  # up to this many scores per axis and group are kept exactly
COARSE_BELOW = 50  # fewer reference images than this: percentiles are coarse (warned)
_CHUNK = 512  # new scores per block when averaging sigmoids over an exact reference


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


def _as_float32_exact(values) -> np.ndarray:
    """float64 array holding float32 values: scores are float32, and stored ones are written as such."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


@dataclass(frozen=True, eq=False)
class ScoreDistribution:
    """Reference scores of one axis (one group).

    Attributes:
        values: sorted float64 ``[m]``: every score (``exact``) or the quantile knots at
            probabilities ``linspace(0, 1, m)``.
        count: how many scores the distribution stands for (``m`` when exact).
        exact: whether ``values`` are the scores themselves.
    """

    values: np.ndarray
    count: int
    exact: bool

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise CREwardError(f"a score distribution needs at least one value, got shape {values.shape}")
        if not np.isfinite(values).all():
            raise CREwardError("a score distribution must hold finite numbers (found NaN or infinity)")
        if np.any(np.diff(values) < 0):
            raise CREwardError("a score distribution's values must be sorted in increasing order")
        if self.exact and self.count != values.size:
            raise CREwardError(f"an exact distribution of {self.count} scores holds {values.size} values")
        if not self.exact and (values.size < 2 or self.count < values.size):
            raise CREwardError(f"a quantile distribution needs 2..count knots, got {values.size} knots for {self.count} scores")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "count", int(self.count))

    @classmethod
    def from_scores(cls, scores, max_points: int = EXACT_LIMIT, knots: int = QUANTILE_KNOTS) -> "ScoreDistribution":
        """Sorted scores when there are at most ``max_points``, else ``knots`` quantiles (linear interpolation)."""
        scores = _as_float32_exact(scores).ravel()
        if scores.size == 0:
            raise CREwardError("no scores to build a distribution from")
        if not np.isfinite(scores).all():
            raise CREwardError(f"{int((~np.isfinite(scores)).sum())} of {scores.size} scores are NaN or infinite")
        ordered = np.sort(scores)
        if ordered.size <= max_points:
            return cls(ordered, ordered.size, True)
        quantiles = np.quantile(ordered, np.linspace(0.0, 1.0, knots))
        return cls(np.maximum.accumulate(_as_float32_exact(quantiles)), ordered.size, False)

    @property
    def probabilities(self) -> np.ndarray:
        """CDF level of each quantile knot (only meaningful when not exact)."""
        return np.linspace(0.0, 1.0, self.values.size)

    @property
    def resolution(self) -> float:
        """Smallest step between percentiles this distribution can tell apart, in percentile points."""
        step = 100.0 / self.count
        return step if self.exact else max(step, 100.0 / (self.values.size - 1))

    @property
    def median(self) -> float:
        return float(np.median(self.values)) if self.exact else float(np.interp(0.5, self.probabilities, self.values))

    def percentile(self, scores) -> np.ndarray:
        """Percentile (0–100, mid-rank for ties) of each score (compared as float32); NaN stays NaN."""
        scores = _as_float32_exact(scores)
        values = self.values
        left = np.searchsorted(values, scores, side="left")
        right = np.searchsorted(values, scores, side="right")
        if self.exact:
            result = 100.0 * (left + 0.5 * (right - left)) / values.size
        else:
            levels = self.probabilities
            last = values.size - 1
            tied = right > left  # equal to one or more knots: the middle of their CDF levels
            on_knot = 0.5 * (levels[np.minimum(left, last)] + levels[np.clip(right - 1, 0, last)])
            below, above = np.clip(left - 1, 0, last), np.clip(left, 0, last)
            width = values[above] - values[below]
            fraction = np.divide(scores - values[below], width, out=np.zeros_like(scores), where=width > 0)
            between = levels[below] + np.clip(fraction, 0.0, 1.0) * (levels[above] - levels[below])
            between = np.where(left == 0, 0.0, np.where(left > last, 1.0, between))
            result = 100.0 * np.where(tied, on_knot, between)
        return np.where(np.isnan(scores), np.nan, result)

    def win_probability(self, scores) -> np.ndarray:
        """``mean_j sigmoid(s − r_j)`` over the reference for each score (as float32); NaN stays NaN."""
        scores = _as_float32_exact(scores)
        flat = scores.ravel()
        result = np.empty_like(flat)
        if self.exact:
            for start in range(0, flat.size, _CHUNK):
                block = flat[start:start + _CHUNK, None]
                result[start:start + _CHUNK] = _sigmoid(block - self.values[None, :]).mean(axis=1)
        else:
            low, high = self.values[:-1], self.values[1:]
            width = high - low
            wide = width > 1e-6 * np.maximum(1.0, np.abs(high))
            safe = np.where(wide, width, 1.0)
            for start in range(0, flat.size, _CHUNK):
                block = flat[start:start + _CHUNK, None]
                # Mean of sigmoid(s - r) for r uniform on [low, high]: (softplus(s-low) - softplus(s-high)) / width.
                uniform = (np.logaddexp(0.0, block - low) - np.logaddexp(0.0, block - high)) / safe
                narrow = _sigmoid(block - 0.5 * (low + high))
                result[start:start + _CHUNK] = np.where(wide, uniform, narrow).mean(axis=1)
        result = result.reshape(scores.shape)
        return np.where(np.isnan(scores), np.nan, result)


def within_batch(scores) -> tuple[np.ndarray, np.ndarray]:
    """Batch-relative percentiles and win probabilities of ``scores`` ``[N]`` (leave-one-out).

    Each image is compared with the other finite scores of the batch; an image alone (or with
    only NaN companions) gets percentile 50 and win probability 0.5. NaN scores get NaN.
    """
    scores = _as_float32_exact(scores)
    finite = np.isfinite(scores)
    others = int(finite.sum()) - 1
    percentile = np.full(scores.shape, np.nan)
    win = np.full(scores.shape, np.nan)
    if others <= 0:
        percentile[finite], win[finite] = 50.0, 0.5
        return percentile, win
    batch = ScoreDistribution.from_scores(scores[finite])
    count = others + 1
    # The batch's own distribution counts the image itself once, as a tie (½) and as sigmoid(0) = ½: take it out.
    percentile[finite] = (batch.percentile(scores[finite]) / 100.0 * count - 0.5) / others * 100.0
    win[finite] = (batch.win_probability(scores[finite]) * count - 0.5) / others
    return np.clip(percentile, 0.0, 100.0), np.clip(win, 0.0, 1.0)


@dataclass(frozen=True)
class Calibration:
    """Percentiles and win probabilities of a batch of scores, and what they are relative to.

    Attributes:
        percentiles: float32 ``[N, len(axes)]`` in 0–100 (NaN where there is no score).
        win: float32 ``[N, len(axes)]`` in 0–1.
        label: what they are relative to, for people: ``"vs reference chair (group chair, 500 images)"``
            or ``"within this batch (8 images)"``.
        reference: the reference set's name, or None for the batch-relative view.
        groups: per row, the reference group it was compared with (None: the whole set).
    """

    percentiles: torch.Tensor
    win: torch.Tensor
    label: str
    reference: str | None = None
    groups: tuple[str | None, ...] | None = None

    def __post_init__(self):
        percentiles = torch.as_tensor(self.percentiles, dtype=torch.float32).detach().cpu()
        win = torch.as_tensor(self.win, dtype=torch.float32).detach().cpu()
        if percentiles.shape != win.shape or percentiles.ndim != 2:
            raise CREwardError(f"percentiles {tuple(percentiles.shape)} and win probabilities {tuple(win.shape)} should both be [N, axes]")
        groups = None if self.groups is None else tuple(self.groups)
        if groups is not None and len(groups) != percentiles.shape[0]:
            raise CREwardError(f"{len(groups)} reference groups given for {percentiles.shape[0]} rows")
        object.__setattr__(self, "percentiles", percentiles)
        object.__setattr__(self, "win", win)
        object.__setattr__(self, "groups", groups)

    def __len__(self) -> int:
        return self.percentiles.shape[0]

    @property
    def is_batch_relative(self) -> bool:
        return self.reference is None

    def take(self, rows: Sequence[int]) -> "Calibration":
        rows = [int(row) for row in rows]
        return Calibration(
            self.percentiles[rows] if rows else self.percentiles[:0],
            self.win[rows] if rows else self.win[:0],
            self.label,
            self.reference,
            None if self.groups is None else tuple(self.groups[row] for row in rows),
        )

    def values(self, kind: str) -> torch.Tensor:
        """``"percentile"`` → percentiles, ``"win probability"`` (or ``"win"``) → win probabilities."""
        if kind == "percentile":
            return self.percentiles
        if kind in ("win probability", "win"):
            return self.win
        raise CREwardError(f"unknown calibrated quantity {kind!r}; expected 'percentile' or 'win probability'")


def calibrate_within_batch(values: torch.Tensor) -> Calibration:
    """The batch-relative :class:`Calibration` of scores ``[N, axes]`` (each axis on its own)."""
    values = torch.as_tensor(values).detach().float().cpu()
    columns = [within_batch(values[:, axis].numpy()) for axis in range(values.shape[1])]
    percentiles = np.stack([column[0] for column in columns], axis=1) if columns else np.zeros((len(values), 0))
    win = np.stack([column[1] for column in columns], axis=1) if columns else np.zeros((len(values), 0))
    count = len(values)
    return Calibration(torch.from_numpy(percentiles), torch.from_numpy(win), f"within this batch ({count} image{'s' if count != 1 else ''})")


def coarse_message(what: str, count: int) -> str | None:
    """A warning when ``count`` reference images are too few for fine percentiles, else None."""
    if count >= COARSE_BELOW:
        return None
    return (f"{what} holds only {count} image{'s' if count != 1 else ''}: percentiles move in steps of "
            f"{100.0 / count:.3g} points and are coarse (aim for {COARSE_BELOW} or more per group)")
