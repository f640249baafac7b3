"""Best-of-N / filtering rules (creward.models.selection), the score table and the bar chart."""

import math

import numpy as np
import pytest
import torch

from creward.models.errors import CREwardError
from creward.models.plots import AXIS_COLORS, image_to_tensor, plot_scores
from creward.models.score_table import ScoreTable
from creward.models.selection import NothingPassedError, ranking_values, select_indices

pytestmark = pytest.mark.unit


def table(*overall, other=0.0):
    """Scores whose overall column is ``overall`` (other axes constant)."""
    return torch.tensor([[other, other, other, value] for value in overall])


def test_top_k_by_one_axis_best_first_and_rejected_in_input_order():
    scores = table(0.1, 0.9, 0.5, 0.7)
    selection = select_indices(scores, "overall", top_k=2)
    assert selection.chosen == (1, 3)
    assert selection.rejected == (0, 2)
    assert selection.passed == 4 and not selection.fell_back


def test_each_axis_ranks_its_own_column():
    scores = torch.tensor([[3.0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3]])
    for column, axis in enumerate(("geometry", "material", "texture", "overall")):
        assert select_indices(scores, axis, top_k=1).chosen == (column,)


def test_weighted_sum_is_not_normalised_and_minimum_applies_to_it():
    scores = torch.tensor([[1.0, 0, 1.0, 0], [0, 0, 0, 1.5], [2.0, 0, 0, 0]])
    values, criterion = ranking_values(scores, [1, 0, 0.5, 1])
    torch.testing.assert_close(values, torch.tensor([1.5, 1.5, 2.0]))
    assert criterion == "1*geometry + 0.5*texture + 1*overall"
    selection = select_indices(scores, {"geometry": 1, "texture": 0.5, "overall": 1}, top_k=0, minimum=1.5)
    assert selection.chosen == (2, 0, 1)  # ties keep input order
    assert select_indices(scores, "1,0,0.5,1", top_k=0, minimum=1.6).chosen == (2,)


def test_ties_keep_input_order():
    assert select_indices(table(1.0, 2.0, 2.0, 2.0), top_k=2).chosen == (1, 2)


def test_top_k_zero_keeps_every_passing_and_large_k_keeps_all():
    scores = table(0.1, 0.9, 0.5)
    assert select_indices(scores, top_k=0, minimum=0.5).chosen == (1, 2)
    assert select_indices(scores, top_k=10).chosen == (1, 2, 0)
    assert select_indices(scores, top_k=10).rejected == ()


def test_minimum_is_inclusive():
    assert select_indices(table(0.5, 0.4), top_k=0, minimum=0.5).chosen == (0,)


def test_nothing_passes_error_names_minimum_and_best():
    with pytest.raises(NothingPassedError, match=r"overall >= 2 .*best of the 3 image\(s\) scored 0.9000 \(image 1\)") as info:
        select_indices(table(0.1, 0.9, 0.5), top_k=1, minimum=2.0)
    assert info.value.best_index == 1 and info.value.minimum == 2.0


def test_nothing_passes_keep_best_returns_single_best_with_flag(caplog):
    selection = select_indices(table(0.1, 0.9, 0.5), top_k=3, minimum=2.0, when_none_pass="keep best")
    assert selection.chosen == (1,) and selection.fell_back and selection.passed == 0
    assert selection.rejected == (0, 2)
    assert "keeping the best" in caplog.text
    assert "nothing passed" in selection.describe()


def test_nothing_passes_empty_is_explicit():
    selection = select_indices(table(0.1), minimum=2.0, when_none_pass="empty")
    assert selection.chosen == () and selection.rejected == (0,)


def test_nan_never_passes_and_ranks_last():
    scores = table(float("nan"), 0.2, 0.1)
    assert select_indices(scores, top_k=0).chosen == (1, 2)
    assert select_indices(scores, top_k=0).rejected == (0,)
    with pytest.raises(CREwardError, match="NaN"):
        select_indices(table(float("nan"), float("nan")))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"by": "colour"}, "unknown axis"),
        ({"by": [0, 0, 0, 0]}, "all zero"),
        ({"by": [1, 2]}, "expected 4 axis weights"),
        ({"when_none_pass": "skip"}, "when_none_pass"),
        ({"minimum": float("nan")}, "minimum"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(CREwardError, match=message):
        select_indices(table(0.1, 0.2), **kwargs)


def test_bad_shapes_and_empty_are_errors():
    with pytest.raises(CREwardError, match=r"\[N, 4\]"):
        select_indices(torch.zeros(3, 2))
    with pytest.raises(CREwardError, match="empty"):
        select_indices(torch.zeros(0, 4))


def test_score_table_mean_take_summary_payload():
    values = torch.tensor([[1.0, 2, 3, 4], [3.0, 4, 5, float("nan")]])
    scores = ScoreTable(values, ids=(7, 9))
    assert len(scores) == 2 and scores.ids == (7, 9)
    torch.testing.assert_close(scores.mean()[:3], torch.tensor([2.0, 3, 4]))
    picked = scores.take([1])
    assert picked.ids == (9,) and picked.values.shape == (1, 4)
    assert scores.take([]).values.shape == (0, 4)
    assert "#7" in scores.summary() and "mean" in scores.summary()
    payload = scores.to_payload()
    assert payload["ids"] == [7, 9] and payload["scores"][1][3] is None  # NaN is JSON null
    assert ScoreTable.concat([scores, picked]).ids == (7, 9, 9)
    with pytest.raises(CREwardError, match="ids"):
        ScoreTable(values, ids=(1,))


def test_score_table_chart_draws_the_scores_or_any_other_value_of_the_same_shape():
    scores = ScoreTable(torch.tensor([[1.0, 2, 3, 4], [3.0, 4, 5, float("inf")]]), ids=(7, 9))
    chart = scores.chart("t", note="clip, fp32")
    assert chart == {
        "title": "t", "series": list(scores.axes), "labels": ["#7", "#9"], "values": [[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, None]],
        "value_label": "score", "value_range": None, "highlight": [], "note": "clip, fp32",
    }
    percentiles = scores.chart("t", values=torch.full((2, 4), 50.0), value_label="percentile", value_range=(0, 100), highlight=[1])
    assert percentiles["values"][0] == [50.0] * 4 and percentiles["value_range"] == [0, 100] and percentiles["highlight"] == [1]
    with pytest.raises(CREwardError, match=r"shaped \(2, 4\)"):
        scores.chart("t", values=torch.zeros(3, 4))


def test_plot_draws_axis_colours_and_highlight():
    values = torch.tensor([[1.0, -0.5, 0.25, 0.8], [0.2, 0.4, -1.0, 0.1]])
    image = plot_scores(values, ids=(3, 4), highlight=[1], title="t", height=240)
    assert image.size[1] == 240 and image.mode == "RGB"
    pixels = set(map(tuple, np.asarray(image).reshape(-1, 3).tolist()))
    for color in AXIS_COLORS.values():
        assert color in pixels
    assert (255, 244, 204) in pixels  # the highlighted group's background
    tensor = image_to_tensor(image)
    assert tensor.shape == (240, image.size[0], 3) and tensor.max() <= 1.0


def test_plot_handles_constant_nan_and_many_images():
    assert plot_scores(torch.zeros(1, 4)).size[0] >= 420
    assert plot_scores(torch.full((2, 4), math.nan)).size[1] == 360
    wide = plot_scores(torch.randn(400, 4))
    assert wide.size[0] == 4096
    with pytest.raises(CREwardError, match="empty"):
        plot_scores(torch.zeros(0, 4))
