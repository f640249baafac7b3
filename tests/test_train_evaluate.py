"""Evaluation metrics: pairwise accuracy, Spearman, human-set metrics, the report."""

import numpy as np
import pytest
from PIL import Image

from creward.train.evaluate import (
    EvaluationError,
    average_ranks,
    evaluate_scores,
    human_metrics,
    human_win_rates,
    pairwise_accuracy,
    spearman,
    write_report,
)
from creward.train.pairs import encode_labels, load_pair_set
from pair_data import render_pairs, write_jsonl

pytestmark = pytest.mark.unit


def test_pairwise_accuracy_excludes_ties_and_counts_equal_scores_wrong():
    scores_0 = np.array([[1.0, 0, 0, 0], [0.0, 0, 0, 0], [2.0, 0, 0, 0], [5.0, 0, 0, 0]])
    scores_1 = np.array([[0.0, 0, 0, 0], [1.0, 0, 0, 0], [2.0, 0, 0, 0], [0.0, 0, 0, 0]])
    labels = np.array([[1, 0, 0, 0], [-1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    accuracy, counts = pairwise_accuracy(scores_0, scores_1, labels)
    assert counts == {"geometry": 3, "material": 0, "texture": 0, "overall": 0}
    assert accuracy["geometry"] == pytest.approx(2 / 3)  # pair 2 has equal scores: wrong; pair 3 is a tie: excluded
    assert accuracy["material"] is None


def test_spearman_matches_hand_computed_values():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / np.sqrt(1.5 * 2))  # tied ranks 1.5, 1.5, 3
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    np.testing.assert_array_equal(average_ranks([10, 30, 10, 20]), [1.5, 4, 1.5, 3])


@pytest.fixture
def tiny_human_set():
    # 3 raters x 4 pairs, geometry only (other axes all ties); +1 = image _0 wins.
    raters = np.zeros((3, 4, 4), dtype=np.int8)
    raters[:, :, 0] = [[1, 1, -1, 0], [1, 0, -1, 0], [-1, 1, -1, 1]]
    scores_0 = np.zeros((4, 4))
    scores_1 = np.zeros((4, 4))
    scores_0[:, 0] = [0.5, 0.9, -1.0, 0.2]
    scores_1[:, 0] = [0.1, -0.5, 0.3, 0.4]
    keys_0 = [f"p{i}_0" for i in range(4)]
    keys_1 = [f"p{i}_1" for i in range(4)]
    return raters, scores_0, scores_1, keys_0, keys_1


def test_human_win_rates_count_ties_half(tiny_human_set):
    raters, _, _, keys_0, keys_1 = tiny_human_set
    rates = human_win_rates(raters, keys_0, keys_1, 0)
    expected = {"p0_0": 2 / 3, "p0_1": 1 / 3, "p1_0": 5 / 6, "p1_1": 1 / 6, "p2_0": 0, "p2_1": 1, "p3_0": 2 / 3, "p3_1": 1 / 3}
    assert rates == pytest.approx(expected)


def test_human_metrics_on_a_tiny_rater_array(tiny_human_set):
    raters, scores_0, scores_1, keys_0, keys_1 = tiny_human_set
    metrics = human_metrics(scores_0, scores_1, raters, keys_0, keys_1)
    # Spearman of the 8 image scores vs the win rates above (ties share ranks); scipy gives 0.747042.
    assert metrics["spearman"]["geometry"] == pytest.approx(0.7470421737, abs=1e-8)
    assert metrics["spearman"]["material"] is None  # all win rates 0.5: constant
    per_rater = [entry["accuracy"]["geometry"] for entry in metrics["rater_agreement"]]
    assert per_rater == pytest.approx([1.0, 1.0, 0.5])  # rater 2: wrong on pairs 0 and 3
    assert metrics["rater_agreement"][0]["decisive"]["geometry"] == 3
    assert metrics["mean_rater_agreement"]["geometry"] == pytest.approx(2.5 / 3)
    # rater 0 vs majority(raters 1, 2) = [tie, A, B, A]: both decisive on pairs 1, 2, agreeing on both.
    assert metrics["rater_vs_rest"][0]["accuracy"]["geometry"] == 1.0
    assert metrics["raters"] == 3 and metrics["images"]["geometry"] == 8


def test_evaluation_of_a_human_set_from_files_and_its_report(tmp_path, tiny_human_set):
    raters, scores_0, scores_1, _, _ = tiny_human_set
    folder, _, _ = render_pairs(tmp_path / "bowl", pairs=4, seed=0, pixels=16, labels_name=None)
    np.save(tmp_path / "human_bowl.npy", encode_labels(raters, "index"))
    pair_set = load_pair_set([folder], [tmp_path / "human_bowl.npy"])
    evaluation = evaluate_scores(pair_set, scores_0, scores_1)
    # majority labels (ties abstain): [A, A, B, A]; the scores order pairs 0-2 right, pair 3 wrong
    assert evaluation.as_json() == {"geometry": 0.75, "material": None, "texture": None, "overall": None, "pairs": 4}
    assert evaluation.human["spearman"]["geometry"] == pytest.approx(0.7470421737, abs=1e-8)
    report = write_report(evaluation, tmp_path / "report", "head.safetensors", "clip")
    text = report.read_text()
    assert "| geometry | 0.750 | 4 |" in text and "| material | n/a | 0 |" in text
    assert "Human-rated set (3 raters)" in text and "| 2 | 0.500 |" in text
    with Image.open(tmp_path / "report" / "accuracy.png") as image:
        assert image.size == (720, 420)
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # something was drawn


def test_an_axis_without_decisive_pairs_warns_and_none_at_all_is_an_error(tmp_path, caplog):
    folder, labels, _ = render_pairs(tmp_path / "p", pairs=3, seed=0, pixels=16, labels_name=None)
    labels[:, 2] = 0
    pair_set = load_pair_set([folder], [write_jsonl(folder / "l.jsonl", labels)])
    scores = np.zeros((3, 4))
    evaluation = evaluate_scores(pair_set, scores, scores)
    assert evaluation.accuracy["texture"] is None and "axis texture has no decisive pair" in caplog.text
    pair_set.labels[:] = 0
    with pytest.raises(EvaluationError, match=r"no decisive pair on any axis in .*l\.jsonl"):
        evaluate_scores(pair_set, scores, scores)
