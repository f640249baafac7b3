"""Percentiles in the CREward nodes, inside a real (imported) ComfyUI 0.3.75: the fast edge cases.

The Reference Loader lists ``models/creward/references/*.json``; Score with a reference carries
percentiles equal to ``ReferenceSet.calibrate``; Select Best keeps exactly the images at or above a
percentile / win probability; without a reference everything is labelled batch-relative; Plot
Scores draws either; a reference of another head, bad settings and corrupt files are clear errors.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

import nodes_setup
from builders import comfyui_models
from creward.models import load
from creward.models.reference_set import ReferenceSet
from creward.models.scorer_identity import ScorerIdentity

pytestmark = pytest.mark.integration

AXES = ("geometry", "material", "texture", "overall")


def run(env, node_type, method, *args, **kwargs):
    with torch.inference_mode():
        return getattr(env.M[node_type](), method)(*args, **kwargs)


@pytest.fixture(scope="module")
def env(comfy_inprocess, comfy_base_dir):
    files = nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_taesd(comfy_base_dir)
    core = load(files["head"], backbone_weights=files["backbone"])
    torch.manual_seed(3)
    pool = torch.rand(64, 3, 48, 48) * torch.linspace(0.2, 1.0, 64)[:, None, None, None]
    reference_scores = core.score(pool)
    folder = comfy_base_dir / "models" / "creward" / "references"
    scorer = ScorerIdentity.of_model(core)
    groups = ["dim"] * 32 + ["bright"] * 32
    reference = ReferenceSet.build(reference_scores, scorer, "pool", groups, "column:brightness")
    reference.save(folder / "pool.json")
    other = ScorerIdentity("someone_elses.safetensors", "0" * 64, "clip", AXES)
    ReferenceSet.build(reference_scores, other, "other").save(folder / "other_head.json")
    ReferenceSet.build(np.full((60, 4), 1e3), scorer, "unbeatable").save(folder / "unbeatable.json")
    (folder / "broken.json").write_text('{"format": "creward-reference", "version": 1')
    (folder / "notes.txt").write_text("not a reference")

    class Env:
        M = comfy_inprocess.NODE_CLASS_MAPPINGS

    Env.core, Env.reference = core, reference
    with torch.inference_mode():
        Env.creward = Env.M["CREwardLoader"]().load(comfyui_models.HEAD_NAME, "auto", "auto", "auto", "auto")["result"][0]
    return Env


@pytest.fixture(scope="module")
def batch(env):
    torch.manual_seed(4)
    return torch.rand(6, 40, 40, 3) * torch.linspace(0.3, 1.0, 6)[:, None, None, None]


def reference(env, name="pool.json", group=""):
    return run(env, "CREwardReferenceLoader", "load", name, group)[0]


def test_reference_loader_lists_reference_files_and_validates_them(env):
    choices = env.M["CREwardReferenceLoader"].INPUT_TYPES()["required"]["reference"][0]
    assert {"pool.json", "other_head.json", "broken.json"} <= set(choices) and "notes.txt" not in choices
    assert not any(name.endswith(".json") for name in env.M["CREwardLoader"].INPUT_TYPES()["required"]["head"][0])
    assert env.M["CREwardReferenceLoader"].VALIDATE_INPUTS("pool.json") is True
    assert "broken.json is not a CREward reference file (not readable JSON" in env.M["CREwardReferenceLoader"].VALIDATE_INPUTS("broken.json")
    assert "'missing.json' not found" in env.M["CREwardReferenceLoader"].VALIDATE_INPUTS("missing.json")


def test_score_with_reference_equals_the_library(env, batch):
    output = run(env, "CREwardScore", "score", env.creward, batch, reference=reference(env, group="bright"))
    table, *floats, summary = output["result"][:6]
    percentile_floats = output["result"][6:]
    expected = env.reference.calibrate(table.values, AXES, "bright")
    torch.testing.assert_close(table.calibration.percentiles, expected.percentiles)
    torch.testing.assert_close(table.calibration.win, expected.win)
    assert percentile_floats == pytest.approx(expected.percentiles.mean(dim=0).tolist(), abs=1e-4)
    assert table.calibration.label == "vs reference pool (group bright, 32 images)"
    payload = output["ui"]["creward_scores"][0]
    assert payload["calibration"] == {"label": table.calibration.label, "reference": "pool", "batch_relative": False}
    np.testing.assert_allclose(payload["percentiles"], expected.percentiles.numpy(), atol=1e-4)
    assert [chart["value_label"] for chart in payload["charts"]] == ["score", "percentile"]
    lines = summary.splitlines()
    assert [line.split("|")[1].strip() for line in lines if line.startswith("|") and "---" not in line and not line.startswith("| #")] == [
        "image", "mean", "percentile", "mean", "win prob.", "mean"]  # three Markdown tables: scores, percentiles, win probabilities
    assert lines[-1].endswith(table.calibration.label)
    json.dumps(output["ui"])


def test_score_without_reference_shows_the_batch_relative_view(env, batch):
    output = run(env, "CREwardScore", "score", env.creward, batch)
    table = output["result"][0]
    assert table.calibration is None and all(math.isnan(value) for value in output["result"][6:])
    payload = output["ui"]["creward_scores"][0]
    assert payload["calibration"]["batch_relative"] is True and payload["calibration"]["label"] == "within this batch (6 images)"
    assert sorted(row[3] for row in payload["percentiles"]) == pytest.approx([0.0, 20.0, 40.0, 60.0, 80.0, 100.0])
    assert [chart["value_label"] for chart in payload["charts"]] == ["score"]  # the bars stay scores without a reference
    assert "within this batch (6 images)" in output["result"][5]
    single = run(env, "CREwardScore", "score", env.creward, batch[:1])
    assert "percentile" not in single["result"][5]  # one image: no batch-relative tables


def test_score_latent_with_reference(env):
    with torch.inference_mode():
        vae = env.M["VAELoader"]().load_vae("taesd")[0]
    latent = {"samples": torch.randn(3, 4, 8, 8)}
    output = run(env, "CREwardScoreLatent", "score", env.creward, latent, vae, reference=reference(env))
    table = output["result"][0]
    torch.testing.assert_close(table.calibration.percentiles, env.reference.calibrate(table.values, AXES).percentiles)


def test_a_missing_group_warns_and_uses_the_whole_set(env, batch, caplog):
    with caplog.at_level(logging.WARNING):
        chosen = reference(env, group="sofa")
    assert "has no group 'sofa'" in caplog.text
    table = run(env, "CREwardScore", "score", env.creward, batch, reference=chosen)["result"][0]
    assert table.calibration.label == "vs reference pool (64 images)"


def test_reference_of_another_head_is_an_error_naming_both(env, batch):
    with pytest.raises(Exception) as info:
        run(env, "CREwardScore", "score", env.creward, batch, reference=reference(env, "other_head.json"))
    message = str(info.value)
    assert message.startswith("reference: ") and "someone_elses.safetensors" in message and comfyui_models.HEAD_NAME in message


def select(env, images, scores=None, **kwargs):
    options = dict(rank_by="texture", top_k=0, use_minimum=True, minimum=50.0, when_none_pass="error", minimum_of="percentile")
    options.update(kwargs)
    return run(env, "CREwardSelectBest", "select", images, scores=scores, **options)


def test_select_best_by_percentile_against_the_reference(env, batch):
    scored = run(env, "CREwardScore", "score", env.creward, batch, reference=reference(env))["result"][0]
    percentiles = scored.calibration.percentiles[:, 2]
    minimum = float(percentiles.median())
    output = select(env, batch, scored, minimum=minimum)
    order = torch.argsort(scored.values[:, 2], descending=True, stable=True).tolist()
    expected = [row for row in order if percentiles[row] >= minimum]
    assert 0 < len(expected) < 6 and output["result"][4] == ",".join(map(str, expected))
    assert output["result"][5].calibration.label == scored.calibration.label  # chosen scores keep their percentiles
    assert "texture percentile vs reference pool" in output["ui"]["text"][0]
    # the same through the node's own reference input, scores without calibration
    plain = run(env, "CREwardScore", "score", env.creward, batch)["result"][0]
    assert select(env, batch, plain, minimum=minimum, reference=reference(env))["result"][4] == output["result"][4]
    # and by win probability
    win = scored.calibration.win[:, 2]
    by_win = select(env, batch, scored, minimum_of="win probability", minimum=float(win.median()))
    assert by_win["result"][4] == ",".join(str(row) for row in order if win[row] >= win.median())


def test_select_best_by_percentile_within_the_batch(env, batch):
    plain = run(env, "CREwardScore", "score", env.creward, batch)["result"][0]
    output = select(env, batch, plain, minimum=75.0)  # leave-one-out: the best 2 of 6 are at 100 and 80
    best = torch.argsort(plain.values[:, 2], descending=True, stable=True)[:2].tolist()
    assert output["result"][4] == ",".join(map(str, best))
    assert "within this batch (6 images)" in output["ui"]["text"][0]


def test_select_best_percentile_errors(env, batch):
    plain = run(env, "CREwardScore", "score", env.creward, batch)["result"][0]
    with pytest.raises(Exception, match="a weighted sum has no reference distribution"):
        select(env, batch, plain, rank_by="weighted sum")
    with pytest.raises(Exception, match="a win probability minimum should be between 0 and 1, got 50"):
        select(env, batch, plain, minimum_of="win probability")
    with pytest.raises(Exception, match=r"minimum: no image reached the minimum: texture percentile vs reference unbeatable .* >= 1"):
        select(env, batch, plain, minimum=1.0, reference=reference(env, "unbeatable.json"))
    with pytest.raises(Exception, match="reference: .*someone_elses"):
        select(env, batch, plain, reference=reference(env, "other_head.json"))


def test_plot_scores_can_show_percentiles_and_win_probabilities(env, batch):
    scored = run(env, "CREwardScore", "score", env.creward, batch, reference=reference(env))["result"][0]
    for show in ("percentile", "win probability"):
        image = run(env, "CREwardPlotScores", "plot", scored, 240, 0, show=show)[0]
        assert image.shape[0] == 1 and image.shape[1] == 240
    plain = run(env, "CREwardScore", "score", env.creward, batch)["result"][0]
    scores_plot = run(env, "CREwardPlotScores", "plot", plain, 240, 0)[0]
    batch_plot = run(env, "CREwardPlotScores", "plot", plain, 240, 0, show="percentile")[0]
    assert not torch.equal(scores_plot, batch_plot)
