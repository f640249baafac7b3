"""Which rows of a scored dataset to keep: top percent and minimums, globally or per group.

A criterion is a :class:`RowValue`: any callable giving one number per row from the rows'
scores (``[N, len(axes)]``, NaN for unreadable images) and their groups. A value that reads
other columns of the output names them in a ``columns`` attribute and is given those columns
(``[N, len(columns)]``) instead of the scores. Two are built in: :class:`WeightedScore` (one
axis, or a weighted sum as in ``creward select``) and :class:`CalibratedValue` (an axis's
percentile or win probability against a reference set, ``--reference``; or a weighted mean of
them); either can be the value of a :class:`Threshold` or the ranking of a :class:`KeepRule`.

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


CALIBRATED_KINDS = {"percentile": "percentile", "win": "win probability"}


@dataclass(frozen=True)
class CalibratedValue:
    """An axis's calibrated column (``<axis>_percentile`` or ``<axis>_win``, written with
    ``--reference``), or the weighted *mean* over the axes with a non-zero weight (weights
    divided by their sum, so the value stays on the 0-100 or 0-1 scale of a minimum).

    Weights must be >= 0: a percentile counted negatively has no meaning as a minimum.
    """

    kind: str
    weights: tuple[float, ...]
    axes: tuple[str, ...] = AXES

    def __post_init__(self):
        if self.kind not in CALIBRATED_KINDS:
            raise CREwardError(f"calibrated value should be one of {', '.join(CALIBRATED_KINDS)}, got {self.kind!r}")
        if len(self.weights) != len(self.axes):
            raise CREwardError(f"expected {len(self.axes)} axis weights ({', '.join(self.axes)}), got {len(self.weights)}")
        if any(weight < 0 for weight in self.weights) or not sum(self.weights) > 0:
            raise CREwardError(
                f"weights for a {CALIBRATED_KINDS[self.kind]} minimum must be >= 0 and not all 0 (a weighted mean of the "
                f"axes' {CALIBRATED_KINDS[self.kind]}s), got {', '.join(f'{w:g}' for w in self.weights)}"
            )

    @staticmethod
    def of(kind: str, by: str | Sequence[float] = "overall", axes: Sequence[str] = AXES) -> "CalibratedValue":
        """From an axis name or ``"g,m,t,o"`` weights, as :meth:`WeightedScore.of`."""
        return CalibratedValue(kind, WeightedScore.of(by, axes).weights, tuple(axes))

    @property
    def _used(self) -> list[tuple[str, float]]:
        return [(axis, weight) for axis, weight in zip(self.axes, self.weights) if weight != 0]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"{axis}_{self.kind}" for axis, _ in self._used)

    @property
    def name(self) -> str:
        used = self._used
        what = CALIBRATED_KINDS[self.kind]
        if len(used) == 1:
            return f"{used[0][0]} {what}"
        return f"weighted mean of {what} ({', '.join(f'{weight:g}*{axis}' for axis, weight in used)})"

    def __call__(self, values: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        weights = np.asarray([weight for _, weight in self._used], dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(weights):
            raise CREwardError(f"calibrated values should be shaped [N, {len(weights)}] ({', '.join(self.columns)}), got {values.shape}")
        with np.errstate(invalid="ignore"):
            return values @ (weights / weights.sum())


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

    @property
    def columns(self) -> tuple[str, ...]:
        """The output columns (besides the scores) that the ranking and the thresholds read."""
        values = [self.ranking, *(threshold.value for threshold in self.thresholds)]
        return tuple(dict.fromkeys(name for value in values for name in (getattr(value, "columns", None) or ())))

    def apply(self, scores: np.ndarray, groups: Sequence | None = None, columns: dict[str, np.ndarray] | None = None) -> KeepDecision:
        """Decide for every row of ``scores`` (``[N, len(axes)]``, NaN when unreadable);
        ``columns`` holds the other columns the values read (:attr:`columns`), by name."""
        scores = np.asarray(scores, dtype=np.float64)
        count = scores.shape[0]
        labels = np.array(["" if group is None else str(group) for group in groups], dtype=object) if groups is not None else None
        if labels is not None and len(labels) != count:
            raise CREwardError(f"{len(labels)} group labels given for {count} rows")

        def evaluate(value: RowValue) -> np.ndarray:
            names = getattr(value, "columns", None)
            if not names:
                return np.asarray(value(scores, labels), dtype=np.float64)
            missing = [name for name in names if columns is None or name not in columns]
            if missing:
                raise CREwardError(f"{value.name} needs the column(s) {', '.join(missing)}, which were not given")
            data = np.stack([np.asarray(columns[name], dtype=np.float64) for name in names], axis=1) if count else np.zeros((0, len(names)))
            return np.asarray(value(data, labels), dtype=np.float64)

        values = evaluate(self.ranking)
        scored = np.isfinite(values)
        passes = np.ones(count, dtype=bool)
        for threshold in self.thresholds:
            threshold_values = evaluate(threshold.value)
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
