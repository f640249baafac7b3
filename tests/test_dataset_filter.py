"""Keep rules of ``creward score-dataset``: top percent, minimums, groups, pluggable criteria."""

from __future__ import annotations

import math

import numpy as np
import pytest

from creward.dataset.filtering import KeepRule, Threshold, WeightedScore
from creward.models.errors import CREwardError

pytestmark = pytest.mark.unit

NAN = math.nan


def scores_of(overall):
    """Rows whose four scores are all ``overall`` (NaN rows are unreadable images)."""
    return np.array([[value] * 4 for value in overall], dtype=np.float64)


def test_top_percent_rounds_up_keeps_ties_in_input_order_and_never_keeps_unreadable():
    scores = scores_of([0.1, 0.5, NAN, 0.5, 0.3, 0.2])
    decision = KeepRule(WeightedScore.of("overall"), top_percent=40).apply(scores)
    # 5 scored rows, 40% → 2 rows: the two 0.5s, the earlier one ranked first
    assert decision.keep.tolist() == [False, True, False, True, False, False]
    assert decision.rank.tolist() == [5, 1, 0, 2, 3, 4]
    assert decision.groups[""].scored == 5 and decision.groups[""].lowest_kept == 0.5
    assert KeepRule(WeightedScore.of("overall"), top_percent=1).apply(scores).kept == 1  # ceil: never zero of a non-empty group
    assert KeepRule(WeightedScore.of("overall"), top_percent=100).apply(scores).kept == 5


def test_per_group_top_percent_and_minimum_together():
    scores = scores_of([0.9, 0.1, 0.8, 0.7, 0.2, 0.6])
    groups = ["a", "a", "b", "b", "b", None]
    rule = KeepRule(WeightedScore.of("overall"), top_percent=50, thresholds=(Threshold(WeightedScore.of("overall"), 0.65),), group_by="site")
    decision = rule.apply(scores, groups)
    # a: best 1 of 2 → 0.9; b: best 2 of 3 → 0.8, 0.7; "" (no site): best 1 of 1 → 0.6, below the minimum
    assert decision.keep.tolist() == [True, False, True, True, False, False]
    assert {name: outcome.kept for name, outcome in decision.groups.items()} == {"": 0, "a": 1, "b": 2}
    assert rule.describe() == "top 50% by overall and overall >= 0.65 per site"


def test_weighted_sum_matches_creward_select_weights():
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    value = WeightedScore.of("1,0,0.5,1")
    assert value(scores, None).tolist() == [1 + 1.5 + 4, 4 + 1 + 1]
    assert value.name == "1*geometry + 0.5*texture + 1*overall"
    with pytest.raises(CREwardError, match="all zero"):
        WeightedScore.of("0,0,0,0")
    with pytest.raises(CREwardError, match="unknown axis"):
        WeightedScore.of("creativity")


def test_a_criterion_is_any_function_of_scores_and_group():
    class RankInGroup:
        """A calibrated-style value: the row's percentile of overall within its group."""

        name = "percentile"

        def __call__(self, scores, groups):
            values = np.full(len(scores), np.nan)
            for group in set(groups.tolist()):
                rows = np.flatnonzero(groups == group)
                order = scores[rows, 3].argsort().argsort()
                values[rows] = 100.0 * order / max(1, len(rows) - 1)
            return values

    scores = scores_of([0.1, 0.9, 0.5, 5.0, 6.0])
    rule = KeepRule(WeightedScore.of("overall"), thresholds=(Threshold(RankInGroup(), 50.0, "--min-percentile"),), group_by="g")
    decision = rule.apply(scores, ["x", "x", "x", "y", "y"])
    assert decision.keep.tolist() == [False, True, True, False, True]
    assert "percentile >= 50" in rule.describe()


def test_bad_rules_are_refused():
    with pytest.raises(CREwardError, match="needs --keep-top-percent or a minimum"):
        KeepRule(WeightedScore.of("overall"))
    with pytest.raises(CREwardError, match=r"\(0, 100\]"):
        KeepRule(WeightedScore.of("overall"), top_percent=150)
    with pytest.raises(CREwardError, match="finite"):
        KeepRule(WeightedScore.of("overall"), thresholds=(Threshold(WeightedScore.of("overall"), math.inf),))
