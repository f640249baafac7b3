"""The example workflows in ComfyUI's web UI (headless Chromium): they load with no missing node
types, match their API twins, queue and run, and our extension draws the score bars.

Screenshots of each finished workflow go to ``artifacts/creward-<workflow>.png``.
"""

from __future__ import annotations

import pytest

import comfyui_harness as harness
import nodes_setup

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# Nodes whose bars we check, per workflow (node id -> node type).
SCORED_NODES = {
    "creward_score_images": {"5": "CREwardScore"},
    "creward_best_of_n": {"8": "CREwardScore", "9": "CREwardSelectBest"},
    "creward_score_latents": {"7": "CREwardScoreLatent"},
}

SHRINK_JS = """() => {
    for (const node of window.app.graph.nodes) {
        const set = (name, value) => { const w = (node.widgets || []).find(w => w.name === name); if (w) w.value = value; };
        if (node.type === "EmptyLatentImage") { set("width", 64); set("height", 64); set("batch_size", 3); }
        if (node.type === "KSampler") set("steps", 2);
    }
}"""

BARS_JS = """([id]) => {
    const node = window.app.graph.getNodeById(Number(id));
    return node && node.creward ? {drawn: node.creward.drawn, rows: node.creward.data.scores.length,
        axes: node.creward.data.axes, chosen: node.creward.data.chosen || null} : null;
}"""


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess):
    nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_checkpoint(comfy_base_dir)
    return comfyui_server


def api_view(graph: dict) -> dict:
    return {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in graph.items()}


@pytest.mark.parametrize("name", nodes_setup.UI_WORKFLOWS)
def test_example_workflow_loads_queues_and_draws_score_bars(env, browser_page, name):
    client = env
    page = browser_page
    report = harness.load_workflow_in_ui(page, client.base_url, nodes_setup.ui_workflow(name), name=name)
    assert report["missing_node_types"] == [] and not report["missing_nodes_dialog"], report
    assert not any("invalid" in text.lower() or "error" in text.lower() for text in report["dialogs"]), report
    assert api_view(harness.graph_to_prompt(page)) == api_view(nodes_setup.api_workflow(name))
    page.evaluate(SHRINK_JS)
    harness.run_in_ui(page, client, timeout=300)
    for node_id, node_type in SCORED_NODES[name].items():
        page.wait_for_function(f"() => {{ const n = window.app.graph.getNodeById({node_id}); return n && n.creward && n.creward.drawn > 0; }}",
                               timeout=30_000)
        bars = page.evaluate(BARS_JS, [node_id])
        assert bars["axes"] == ["geometry", "material", "texture", "overall"], (node_type, bars)
        assert bars["rows"] == (2 if name == "creward_score_images" else 3)
        if node_type == "CREwardSelectBest":
            assert len(bars["chosen"]) == 1
    errors = [line for line in page.console_log if line.startswith("pageerror") or "creward.js" in line]
    assert errors == [], errors
    first = min(SCORED_NODES[name], key=int)
    page.evaluate("""([id]) => {
        const canvas = window.app.canvas, node = window.app.graph.getNodeById(Number(id));
        canvas.ds.scale = 0.9;
        canvas.ds.offset = [-node.pos[0] + 110, -node.pos[1] + 110];
        window.app.graph.setDirtyCanvas(true, true);
    }""", [first])
    page.wait_for_timeout(500)
    harness.save_screenshot(page, f"creward-{name}")
