"""Calibrated scores in a real ComfyUI server (``POST /prompt``): Score with a reference, Select Best by percentile.

A reference set of 60 images scored by the core with the tests' clip head is written to
``models/creward/references/`` (as a user would with ``creward calibrate``); the graphs load four
input images, score them against it, keep those at or above a percentile and plot percentiles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import comfyui_harness as harness
import nodes_setup
from creward.models import load
from creward.models.reference_set import ReferenceSet
from creward.models.scorer_identity import ScorerIdentity

pytestmark = pytest.mark.integration

AXES = ("geometry", "material", "texture", "overall")


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess):  # in-process ComfyUI first: it cannot start once Playwright runs
    files = nodes_setup.install_weights(comfy_base_dir)
    core = load(files["head"], backbone_weights=files["backbone"])
    torch.manual_seed(8)
    pool = torch.rand(60, 3, 64, 64) * torch.linspace(0.1, 1.0, 60)[:, None, None, None]
    reference = ReferenceSet.build(core.score(pool), ScorerIdentity.of_model(core), "server_pool")
    folder = comfy_base_dir / "models" / "creward" / "references"
    reference.save(folder / "server_pool.json")
    other = ScorerIdentity("another_head.safetensors", "f" * 64, "clip", AXES)
    ReferenceSet.build(core.score(pool), other, "foreign").save(folder / "foreign.json")
    (folder / "corrupt.json").write_bytes(b"\x00\x01 not json")

    class Env:
        client = comfyui_server

    Env.reference = reference
    return Env


def graph(reference="server_pool.json", minimum_of="percentile", minimum=50.0) -> dict:
    """Four input images → Score (with a reference) → Select Best by texture percentile → Save, and a percentile plot."""
    nodes = nodes_setup.api_workflow("creward_score_images")
    loader = nodes["1"]
    images = {str(10 + i): {"class_type": "LoadImage", "inputs": {"image": name}} for i, name in enumerate(nodes_setup.EXAMPLE_IMAGES)}
    return {
        "1": loader,
        **images,
        "20": {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}},
        "21": {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["12", 0]}},
        "22": {"class_type": "ImageBatch", "inputs": {"image1": ["21", 0], "image2": ["13", 0]}},
        "30": {"class_type": "CREwardReferenceLoader", "inputs": {"reference": reference, "group": ""}},
        "31": {"class_type": "CREwardScore", "inputs": {"creward": ["1", 0], "images": ["22", 0], "reference": ["30", 0]}},
        "32": {"class_type": "CREwardSelectBest", "inputs": {
            "images": ["22", 0], "scores": ["31", 0], "rank_by": "texture", "top_k": 0, "use_minimum": True,
            "minimum": minimum, "minimum_of": minimum_of, "when_none_pass": "keep best", "geometry_weight": 1.0,
            "material_weight": 1.0, "texture_weight": 1.0, "overall_weight": 0.0}},
        "33": {"class_type": "SaveImage", "inputs": {"images": ["32", 0], "filename_prefix": "calibration/chosen"}},
        "34": {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "calibration/all"}},
        "35": {"class_type": "CREwardPlotScores", "inputs": {"scores": ["31", 0], "height": 240, "width": 0, "show": "percentile"}},
        "36": {"class_type": "PreviewImage", "inputs": {"images": ["35", 0]}},
        "37": {"class_type": "PreviewAny", "inputs": {"preview": "", "source": ["31", 9]}},
    }


def ui(history, node, key):
    return harness.ComfyUIClient.outputs(history, node)[key][0]


def png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_score_with_a_reference_and_select_best_by_percentile(env):
    client = env.client
    first = client.run(graph())
    payload = ui(first, "31", "creward_scores")
    scores = torch.tensor(payload["scores"])
    expected = env.reference.calibrate(scores, AXES)
    np.testing.assert_allclose(payload["percentiles"], expected.percentiles.numpy(), atol=1e-3)
    np.testing.assert_allclose(payload["win"], expected.win.numpy(), atol=1e-5)
    assert payload["calibration"] == {"label": "vs reference server_pool (60 images)", "reference": "server_pool", "batch_relative": False}
    scores_chart, percentile_chart = payload["charts"]
    assert scores_chart["value_label"] == "score" and scores_chart["values"] == payload["scores"]
    assert percentile_chart["value_label"] == "percentile" and percentile_chart["value_range"] == [0.0, 100.0]
    assert percentile_chart["values"] == payload["percentiles"] and percentile_chart["note"] == "vs reference server_pool (60 images)"
    text = harness.ComfyUIClient.outputs(first, "31")["text"][0]
    assert "| percentile " in text and "vs reference server_pool" in text
    assert float(harness.ComfyUIClient.outputs(first, "37")["text"][0]) == pytest.approx(expected.percentiles[:, 3].mean().item(), abs=1e-3)
    assert png(client.output_files(first, "36")[0]).shape[0] == 240

    texture = expected.percentiles[:, 2]
    minimum = float(torch.sort(texture).values[1])  # the second lowest: all but the lowest pass (unless tied)
    assert texture.max() > texture.min(), "the test images should not all sit at one percentile"
    history = client.run(graph(minimum=minimum))
    selection = ui(history, "32", "creward_selection")
    order = torch.argsort(scores[:, 2], descending=True, stable=True).tolist()
    chosen = [row for row in order if texture[row] >= minimum]
    assert selection["chosen"] == chosen and selection["minimum_of"] == "percentile" and not selection["fell_back"]
    everything = [png(path) for path in client.output_files(history, "34")]
    picked = [png(path) for path in client.output_files(history, "33")]
    assert len(picked) == len(chosen)
    for image, row in zip(picked, chosen):
        np.testing.assert_array_equal(image, everything[row])
    assert "texture percentile vs reference server_pool" in harness.ComfyUIClient.outputs(history, "32")["text"][0]


def test_a_reference_of_another_head_is_an_execution_error_naming_both(env):
    with pytest.raises(harness.ComfyUIPromptError) as info:
        env.client.run(graph("foreign.json"))
    error = next(data for kind, data in info.value.details["status"]["messages"] if kind == "execution_error")
    assert error["node_type"] == "CREwardScore"
    assert "another_head.safetensors" in error["exception_message"] and "creward_clip.safetensors" in error["exception_message"]


def test_a_corrupt_reference_file_is_a_validation_error(env):
    bad = graph("corrupt.json")
    del bad["34"]  # every output left depends on the reference (ComfyUI runs a prompt whose other outputs are valid)
    with pytest.raises(harness.ComfyUIPromptError) as info:
        env.client.queue(bad)
    errors = info.value.details["node_errors"]["30"]["errors"]
    assert errors[0]["extra_info"]["input_name"] == "reference" and "not a CREward reference file" in errors[0]["details"]
    assert env.client.run(graph())  # the server still runs a good prompt


TEXTS_JS = """async ([id]) => {
    const node = window.app.graph.getNodeById(Number(id));
    const drawn = [];
    const original = CanvasRenderingContext2D.prototype.fillText;
    CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) { drawn.push(String(text)); return original.call(this, text, ...rest); };
    try {
        window.app.graph.setDirtyCanvas(true, true);
        window.app.canvas.draw(true, true);
    } finally {
        CanvasRenderingContext2D.prototype.fillText = original;
    }
    // Captions drawn on the canvas, or shown in the DOM (a renderer that draws the bars as DOM widgets).
    const captions = [...document.querySelectorAll(".creward-value-label")].map((element) => element.textContent);
    return {texts: drawn.concat(captions), calibration: node.creward.data.calibration, percentiles: node.creward.data.percentiles};
}"""


@pytest.mark.browser
def test_the_score_node_draws_percentile_bars_in_the_web_ui(env, browser_page):
    page = browser_page
    report = harness.load_workflow_in_ui(page, env.client.base_url, graph(), name="calibrated")
    assert report["missing_node_types"] == [], report
    history = harness.run_in_ui(page, env.client, timeout=180)
    page.wait_for_function("() => { const n = window.app.graph.getNodeById(31); return n && n.creward && n.creward.data; }", timeout=30_000)
    page.evaluate("""() => { const c = window.app.canvas, n = window.app.graph.getNodeById(31);
        c.ds.scale = 1.0; c.ds.offset = [-n.pos[0] + 40, -n.pos[1] + 80]; }""")
    seen = page.evaluate(TEXTS_JS, ["31"])
    assert seen["calibration"]["reference"] == "server_pool"
    assert seen["percentiles"] == ui(history, "31", "creward_scores")["percentiles"]
    assert any(text.startswith("percentile \u00b7 vs reference server_pool") for text in seen["texts"]), [t for t in seen["texts"] if "ercent" in t or "geometry" in t]
    errors = [line for line in page.console_log if line.startswith("pageerror") or "creward.js" in line]
    assert errors == [], errors
    harness.save_screenshot(page, "creward-percentile-bars")
