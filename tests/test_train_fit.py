"""Head training: planted signals recovered, ties masked, seeds, early stopping, export."""

import json

import pytest
import torch

from creward.models.backbones.registry import get_spec
from creward.models.head import load_head
from creward.models.model import CREward
from creward.train.fit import FitConfig, FitError, PairFeatures, fit_head, pair_metrics, pairwise_losses, score_pairs
from builders.toy import ToyBackbone
from pair_data import one_thread, synthetic_pair_features  # noqa: F401 (one_thread: autouse fixture)

pytestmark = pytest.mark.unit

FAST = dict(lr=1e-3, batch_size=64)


@pytest.fixture(scope="module")
def data():
    train, _ = synthetic_pair_features(600, noise=0.1, seed=1)
    val, _ = synthetic_pair_features(150, noise=0.1, seed=2)
    test, clean = synthetic_pair_features(400, noise=0.0, seed=3)
    return train, val, test, clean


def test_training_recovers_each_planted_axis_despite_label_noise(data):
    train, val, test, clean = data
    torch.set_num_threads(1)
    result = fit_head(train, val, FitConfig(epochs=15, **FAST), progress=False)
    metrics = pair_metrics(*score_pairs(result.head, test), clean)
    # 10% of training labels flipped; chance is 0.5. Each axis has its own latent, so a head that
    # mixed the axes up would fail this on the others.
    for axis, accuracy in metrics["accuracy"].items():
        assert accuracy >= 0.85, (axis, metrics["accuracy"])
    assert result.best["loss"] < 0.55
    assert set(result.best["accuracy"]) == {"geometry", "material", "texture", "overall"}


def test_same_seed_gives_an_identical_head_and_another_seed_does_not(data):
    train, val, _, _ = data
    config = FitConfig(epochs=2, seed=5, **FAST)
    first = fit_head(train, val, config, progress=False).head.state_dict()
    second = fit_head(train, val, config, progress=False).head.state_dict()
    other = fit_head(train, val, FitConfig(epochs=2, seed=6, **FAST), progress=False).head.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["0.weight"], other["0.weight"])


def test_training_leaves_the_global_rng_alone(data):
    train, val, _, _ = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_head(train, val, FitConfig(epochs=1, **FAST), progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_ties_are_masked_out_of_the_loss():
    scores_0 = torch.tensor([[2.0, 0.0, 5.0, 1.0]], requires_grad=True)
    scores_1 = torch.tensor([[1.0, 0.0, -5.0, 1.0]])
    labels = torch.tensor([[1, 0, -1, 0]], dtype=torch.int8)
    losses, mask = pairwise_losses(scores_0, scores_1, labels)
    assert mask.tolist() == [[True, False, True, False]]
    torch.testing.assert_close(losses[0, 0], -torch.nn.functional.logsigmoid(torch.tensor(1.0)))
    torch.testing.assert_close(losses[0, 2], -torch.nn.functional.logsigmoid(torch.tensor(-10.0)))
    losses[mask].mean().backward()
    assert scores_0.grad[0, 1] == 0 and scores_0.grad[0, 3] == 0
    assert scores_0.grad[0, 0] < 0 and scores_0.grad[0, 2] > 0


def test_tie_labelled_pairs_do_not_change_training():
    train, _ = synthetic_pair_features(96, seed=1)
    train.labels[64:] = 0  # the last 32 pairs are ties on every axis
    garbage = PairFeatures(train.features_0.clone(), train.features_1.clone(), train.labels)
    garbage.features_0[64:] = 100 * torch.randn(32, train.feature_dim)
    garbage.features_1[64:] = -100 * torch.randn(32, train.feature_dim)
    # Same seed, same pair count: same shuffles and dropout masks; tie-only pairs carry no
    # gradient, so whatever their features are, the heads are equal.
    config = FitConfig(epochs=2, batch_size=32, lr=1e-3)
    plain = fit_head(train, None, config, progress=False).head.state_dict()
    changed = fit_head(garbage, None, config, progress=False).head.state_dict()
    for key in plain:
        torch.testing.assert_close(plain[key], changed[key])


def test_an_axis_without_decisive_training_pairs_is_an_error():
    train, _ = synthetic_pair_features(50, seed=1)
    train.labels[:, 2] = 0
    with pytest.raises(FitError, match="axis texture has no decisive training pair"):
        fit_head(train, None, FitConfig(epochs=1), progress=False)


def test_an_axis_without_decisive_validation_pairs_warns_and_has_no_metric(data, caplog):
    train, val, _, _ = data
    val = PairFeatures(val.features_0, val.features_1, val.labels.clone())
    val.labels[:, 1] = 0
    result = fit_head(train, val, FitConfig(epochs=1, **FAST), progress=False)
    assert "axis material has no decisive validation pair" in caplog.text
    assert result.best["accuracy"]["material"] is None and result.best["accuracy"]["geometry"] is not None


def test_early_stopping_keeps_the_best_epoch(data):
    train, val, _, _ = data
    small = PairFeatures(train.features_0[:60], train.features_1[:60], train.labels[:60])
    result = fit_head(small, val, FitConfig(epochs=60, lr=3e-3, batch_size=16, patience=3), progress=False)
    losses = [record["val_loss"] for record in result.history]
    assert result.stopped_early and len(result.history) < 60
    assert result.best_epoch == losses.index(min(losses)) + 1
    assert len(result.history) == result.best_epoch + 3
    val_metrics = pair_metrics(*score_pairs(result.head, val), val.labels)
    assert val_metrics["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_exported_head_loads_in_the_core(tmp_path, data):
    from creward.models.head import save_head

    train, val, _, _ = data
    result = fit_head(train, val, FitConfig(epochs=1, **FAST), progress=False)
    path = save_head(result.head, tmp_path / "head.safetensors", "clip", extra_metadata={"metrics": {"loss": result.best["loss"]}})
    head, info = load_head(path)
    assert (info.backbone, info.feature_dim) == ("clip", train.feature_dim)
    assert json.loads(info.metadata["creward.metrics"])["loss"] == pytest.approx(result.best["loss"])
    model = CREward(ToyBackbone(train.feature_dim).freeze(), head, info, get_spec("clip"))
    torch.testing.assert_close(model.score_features(val.features_0[:5]), result.head(val.features_0[:5]))
