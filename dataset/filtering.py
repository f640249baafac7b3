"""Which rows of a scored dataset to keep: top percent and minimums, globally or per group.

A criterion is a :class:`RowValue`: any callable giving one number per row from the rows'
scores (``[N, len(axes)]``, NaN for unreadable images) and their groups. :class:`WeightedScore`
(one axis, or a weighted sum as in ``creward select``) is the one built in; calibrated values
(a percentile, a win probability against a reference set) plug in the same way, as the value of
a :class:`Threshold` or as the ranking of a :class:`KeepRule`.

Rules, applied within each group (the whole dataset when there is no grouping):

1. a row is *scored* when its ranking value is a finite number (unreadable images never are);
2. ``top_percent=P`` keeps the best ``ceil(P/100 × scored rows of the group)`` rows by ranking
   value, ties in input order; without it every scored row is a candidate;
3. every :class:`Threshold` must hold too: its value ``>= minimum`` (a NaN value never holds).

``rank`` is the row's place in its group by ranking value (1 = best; 0 when not scored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..models.axes import AXES
from ..models.errors import CREwardError


class RowValue(Protocol):
    """A number per row from its scores and group; ``name`` says what it is (logs, kept.parquet)."""

    name: str

    def __call__(self, scores: np.ndarray, groups: np.ndarray | None) -> np.ndarray: ...


@dataclass(frozen=True)
class WeightedScore:
    """``scores @ weights``: one axis (a one-hot weight vector) or a weighted sum, not normalised."""

    weights: tuple[float, ...]
    axes: tuple[str, ...] = AXES

    @staticmethod
    def of(by: str | Sequence[float] = "overall", axes: Sequence[str] = AXES) -> "WeightedScore":
        """From an axis name, ``"g,m,t,o"`` weights or a sequence (as ``creward select --axis/--weights``)."""
        from ..models.selection import weight_vector

        return WeightedScore(tuple(float(w) for w in weight_vector(by, axes).tolist()), tuple(axes))

    @property
    def name(self) -> str:
        import torch

        from ..models.selection import describe_weights

        return describe_weights(torch.tensor(self.weights), self.axes)

    def __call__(self, scores: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.weights):
            raise CREwardError(f"scores should be shaped [N, {len(self.weights)}] ({', '.join(self.axes)}), got {scores.shape}")
        with np.errstate(invalid="ignore"):
            return scores @ np.asarray(self.weights, dtype=np.float64)


@dataclass(frozen=True)
class Threshold:
    """Keep only rows whose ``value >= minimum``; ``flag`` is the option that asked for it (messages)."""

    value: RowValue
    minimum: float
    flag: str = "--min-score"


@dataclass(frozen=True)
class GroupOutcome:
    rows: int
    scored: int
    kept: int
    lowest_kept: float | None


@dataclass(frozen=True)
class KeepDecision:
    """The outcome of :meth:`KeepRule.apply`: per-row arrays and per-group counts."""

    keep: np.ndarray  # bool [N]
    values: np.ndarray  # float64 [N], the ranking value
    rank: np.ndarray  # int64 [N], 1 = best in its group, 0 = not scored
    groups: dict[str, GroupOutcome] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


@dataclass(frozen=True)
class KeepRule:
    """What to keep (see the module docstring for the exact rules).

    Args:
        ranking: the value ranked by for ``top_percent`` (and reported as ``value``).
        top_percent: keep this percentage (0 < P <= 100) of each group's scored rows; None: no limit.
        thresholds: minimums that must all hold.
        group_by: column whose values form the groups (``folder``, ``shard``, a carried column), or None.
    """

    ranking: RowValue
    top_percent: float | None = None
    thresholds: tuple[Threshold, ...] = ()
    group_by: str | None = None

    def __post_init__(self):
        if self.top_percent is not None and not (0 < self.top_percent <= 100):
            raise CREwardError(f"--keep-top-percent should be in (0, 100], got {self.top_percent:g}")
        if self.top_percent is None and not self.thresholds:
            raise CREwardError("a keep rule needs --keep-top-percent or a minimum such as --min-score")
        for threshold in self.thresholds:
            if not math.isfinite(threshold.minimum):
                raise CREwardError(f"{threshold.flag} should be a finite number, got {threshold.minimum}")

    def describe(self) -> str:
        text = []
        if self.top_percent is not None:
            text.append(f"top {self.top_percent:g}% by {self.ranking.name}")
        text += [f"{threshold.value.name} >= {threshold.minimum:g}" for threshold in self.thresholds]
        where = f" per {self.group_by}" if self.group_by else ""
        return " and ".join(text) + where

    def apply(self, scores: np.ndarray, groups: Sequence | None = None) -> KeepDecision:
        """Decide for every row of ``scores`` (``[N, len(axes)]``, NaN when unreadable)."""
        scores = np.asarray(scores, dtype=np.float64)
        count = scores.shape[0]
        labels = np.array(["" if group is None else str(group) for group in groups], dtype=object) if groups is not None else None
        if labels is not None and len(labels) != count:
            raise CREwardError(f"{len(labels)} group labels given for {count} rows")
        values = np.asarray(self.ranking(scores, labels), dtype=np.float64)
        scored = np.isfinite(values)
        passes = np.ones(count, dtype=bool)
        for threshold in self.thresholds:
            threshold_values = np.asarray(threshold.value(scores, labels), dtype=np.float64)
            with np.errstate(invalid="ignore"):
                passes &= np.isfinite(threshold_values) & (threshold_values >= threshold.minimum)
        keep = np.zeros(count, dtype=bool)
        rank = np.zeros(count, dtype=np.int64)
        outcomes: dict[str, GroupOutcome] = {}
        group_names = [""] if labels is None else sorted(set(labels.tolist()))
        for name in group_names:
            members = np.arange(count) if labels is None else np.flatnonzero(labels == name)
            candidates = members[scored[members]]
            # stable sort, best first: ties keep input order
            order = candidates[np.argsort(-values[candidates], kind="stable")]
            rank[order] = np.arange(1, len(order) + 1)
            if self.top_percent is not None:
                limit = math.ceil(round(self.top_percent * len(order) / 100.0, 9))
                order = order[:limit]
            chosen = order[passes[order]]
            keep[chosen] = True
            outcomes[name] = GroupOutcome(len(members), len(candidates), len(chosen), float(values[chosen].min()) if len(chosen) else None)
        return KeepDecision(keep, values, rank, outcomes)
