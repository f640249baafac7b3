"""Percentiles and win probabilities (``creward.models.calibration``) mean what they say, on synthetic scores.

- On held-out scores from the reference's own distribution, percentiles are uniform (KS p > 0.01)
  and monotone in the score, both for exact references and for 1001-quantile ones.
- The win probability equals the empirical pairwise win rate of Bradley–Terry judgements
  (P(A beats B) = sigmoid(s_A − s_B)), within 4 standard errors, and is 0.5 at the median of a
  symmetric reference.
- Quantile references agree with the exact one to 0.1 percentile.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from creward.models.calibration import (
    QUANTILE_KNOTS,
    Calibration,
    ScoreDistribution,
    calibrate_within_batch,
    within_batch,
)
from creward.models.errors import CREwardError

pytestmark = pytest.mark.unit


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("max_points, exact", [(10_000, False), (20_000, True)])
@pytest.mark.parametrize("distribution", ["normal", "skewed"])
def test_percentiles_of_held_out_scores_are_uniform_and_monotone(max_points, exact, distribution):
    rng = np.random.default_rng(0)
    draw = (lambda n: rng.normal(0.3, 1.7, n)) if distribution == "normal" else (lambda n: rng.gamma(2.0, 0.8, n) - 1.0)
    reference = ScoreDistribution.from_scores(draw(20_000), max_points=max_points)
    assert reference.exact is exact and reference.count == 20_000
    held_out = draw(3000)
    percentiles = reference.percentile(held_out)
    assert percentiles.min() >= 0.0 and percentiles.max() <= 100.0
    assert stats.kstest(percentiles / 100.0, "uniform").pvalue > 0.01
    order = np.argsort(held_out)
    assert np.all(np.diff(percentiles[order]) >= 0)  # monotone in the score
    win = reference.win_probability(held_out)
    assert np.all(np.diff(win[order]) >= -1e-12)


def test_a_shifted_distribution_is_not_uniform():
    """The KS check can fail: scores from a better distribution sit high."""
    rng = np.random.default_rng(1)
    reference = ScoreDistribution.from_scores(rng.normal(0, 1, 5000))
    assert stats.kstest(reference.percentile(rng.normal(0.3, 1, 3000)) / 100.0, "uniform").pvalue < 1e-6


def test_percentile_uses_mid_rank_for_ties_and_covers_0_to_100():
    reference = ScoreDistribution.from_scores([1.0, 2.0, 2.0, 3.0])
    np.testing.assert_allclose(reference.percentile([0.5, 1.0, 2.0, 2.5, 3.0, 9.0]), [0.0, 12.5, 50.0, 75.0, 87.5, 100.0])
    assert np.isnan(reference.percentile([np.nan]))[0] and np.isnan(reference.win_probability([np.nan]))[0]


def test_quantile_reference_is_exact_to_a_tenth_of_a_percentile():
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(0, 1, 30_000), rng.normal(4, 0.3, 10_000), np.full(500, 1.25)])  # bimodal + a tie block
    quantiles = ScoreDistribution.from_scores(scores)
    exact = ScoreDistribution.from_scores(scores, max_points=len(scores))
    assert not quantiles.exact and quantiles.values.size == QUANTILE_KNOTS and exact.exact
    probes = np.concatenate([rng.normal(1, 2.5, 1000), [1.25, scores.min(), scores.max(), -50.0, 50.0]])
    assert np.abs(quantiles.percentile(probes) - exact.percentile(probes)).max() <= 0.1 + 1e-9
    assert np.abs(quantiles.win_probability(probes) - exact.win_probability(probes)).max() < 1e-3
    assert quantiles.resolution == pytest.approx(0.1)


def test_win_probability_matches_the_bradley_terry_win_rate():
    """Simulate the judge: each comparison of image i with a random reference image j is won with sigmoid(s_i − r_j)."""
    rng = np.random.default_rng(11)
    reference_scores = rng.normal(0.0, 1.5, 4000)
    reference = ScoreDistribution.from_scores(reference_scores)
    images = np.array([-3.0, -1.0, 0.0, 0.4, 1.0, 2.5, 5.0])
    comparisons = 20_000
    opponents = rng.choice(reference_scores, size=(len(images), comparisons))
    wins = rng.random((len(images), comparisons)) < sigmoid(images[:, None] - opponents)
    empirical = wins.mean(axis=1)
    predicted = reference.win_probability(images)
    tolerance = 4 * np.sqrt(0.25 / comparisons)  # 4 standard errors of a win rate: 0.014
    assert np.abs(predicted - empirical).max() < tolerance
    quantiles = ScoreDistribution.from_scores(reference_scores, max_points=100)
    assert np.abs(quantiles.win_probability(images) - empirical).max() < tolerance


def test_win_probability_is_one_half_at_the_median_of_a_symmetric_reference():
    rng = np.random.default_rng(5)
    half = rng.gamma(1.5, 1.0, 6000)
    symmetric = np.concatenate([half, -half]) + 0.75  # median 0.75
    for reference in (ScoreDistribution.from_scores(symmetric), ScoreDistribution.from_scores(symmetric, max_points=1000)):
        assert reference.win_probability([0.75])[0] == pytest.approx(0.5, abs=1e-9)
        assert reference.percentile([0.75])[0] == pytest.approx(50.0, abs=0.1)
        assert reference.median == pytest.approx(0.75, abs=1e-6)


def test_within_batch_is_leave_one_out_against_the_others():
    scores = np.array([0.3, -1.2, 2.0, 0.3, np.nan, 5.5], dtype=np.float32)
    percentiles, win = within_batch(scores)
    finite = [0, 1, 2, 3, 5]
    for i in finite:
        others = np.array([scores[j] for j in finite if j != i], dtype=np.float64)
        expected = 100 * ((others < scores[i]).sum() + 0.5 * (others == scores[i]).sum()) / len(others)
        assert percentiles[i] == pytest.approx(expected)
        assert win[i] == pytest.approx(sigmoid(float(scores[i]) - others).mean(), abs=1e-6)
    assert np.isnan(percentiles[4]) and np.isnan(win[4])
    assert percentiles[5] == 100.0 and percentiles[1] == 0.0
    alone_p, alone_w = within_batch(np.array([1.0]))
    assert alone_p[0] == 50.0 and alone_w[0] == 0.5


def test_calibrate_within_batch_labels_the_view_and_takes_rows():
    calibration = calibrate_within_batch(torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]))
    assert calibration.is_batch_relative and calibration.label == "within this batch (3 images)"
    torch.testing.assert_close(calibration.percentiles[:, 0], torch.tensor([0.0, 50.0, 100.0]))
    taken = calibration.take([2, 0])
    torch.testing.assert_close(taken.values("percentile")[:, 1], torch.tensor([100.0, 50.0]))
    with pytest.raises(CREwardError, match="unknown calibrated quantity"):
        calibration.values("z-score")
    with pytest.raises(CREwardError, match="should both be"):
        Calibration(torch.zeros(2, 4), torch.zeros(3, 4), "x")


@pytest.mark.parametrize(
    "values, message",
    [([], "no scores"), ([1.0, float("nan")], "NaN or infinite"), ([1.0, float("inf")], "NaN or infinite")],
)
def test_bad_scores_are_refused(values, message):
    with pytest.raises(CREwardError, match=message):
        ScoreDistribution.from_scores(values)


def test_unsorted_or_inconsistent_distributions_are_refused():
    with pytest.raises(CREwardError, match="sorted"):
        ScoreDistribution(np.array([2.0, 1.0]), 2, True)
    with pytest.raises(CREwardError, match="exact distribution of 3"):
        ScoreDistribution(np.array([1.0, 2.0]), 3, True)
    with pytest.raises(CREwardError, match="2..count knots"):
        ScoreDistribution(np.array([1.0]), 10, False)
