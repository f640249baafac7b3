"""The example workflows in ComfyUI's web UI (headless Chromium): they load with no missing node
types, match their API twins, queue and run, and our extension draws the score bars.

The scoring workflow runs under both front ends (the bundled 1.32.9 and the newest, served with
``--front-end-root``) and both node renderers (the classic LiteGraph canvas and Nodes 2.0,
``Comfy.VueNodes.Enabled``); each time the bars are checked where the user sees them: in the
page's DOM and in the screenshot's pixels. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import io

import pytest

import comfyui_harness as harness
import comfyui_setup
import nodes_setup

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# Nodes whose bars we check, per workflow (node id -> node type).
SCORED_NODES = {
    "creward_score_images": {"5": "CREwardScore"},
    "creward_best_of_n": {"8": "CREwardScore", "9": "CREwardSelectBest"},
    "creward_score_latents": {"7": "CREwardScoreLatent"},
}
AXES = ["geometry", "material", "texture", "overall"]
AXIS_COLORS = {"geometry": (0x4C, 0x78, 0xA8), "material": (0xF5, 0x85, 0x18), "texture": (0x54, 0xA2, 0x4B), "overall": (0xE4, 0x57, 0x56)}
FRONT_ENDS = {"bundled": "1.32.9", "newest": comfyui_setup.NEWEST_FRONTEND_VERSION}
RENDERERS = {"classic": False, "nodes2": True}  # Comfy.VueNodes.Enabled

SHRINK_JS = """() => {
    for (const node of window.app.graph.nodes) {
        const set = (name, value) => { const w = (node.widgets || []).find(w => w.name === name); if (w) w.value = value; };
        if (node.type === "EmptyLatentImage") { set("width", 64); set("height", 64); set("batch_size", 3); }
        if (node.type === "KSampler") set("steps", 2);
    }
}"""

# Canvas at scale 1 with the node near the top left (both renderers follow the canvas transform).
FOCUS_JS = """([id]) => {
    const canvas = window.app.canvas, node = window.app.graph.getNodeById(Number(id));
    canvas.ds.scale = 1;
    canvas.ds.offset = [-node.pos[0] + 90, -node.pos[1] + 110];
    window.app.graph.setDirtyCanvas(true, true);
}"""

# What our DOM widget shows for a node: each chart's box on the page, its bars and captions.
CHARTS_JS = """([id]) => {
    const node = window.app.graph.getNodeById(Number(id));
    const widget = node && (node.widgets || []).find(w => w.name === "creward_chart");
    if (!widget || !widget.element) return null;
    const box = (element) => { const r = element.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; };
    return {
        connected: widget.element.isConnected,
        rows: node.creward ? node.creward.data.scores.length : null,
        charts: [...widget.element.querySelectorAll(".creward-chart")].map(chart => ({
            box: box(chart),
            series: chart.dataset.series.split(","),
            rows: Number(chart.dataset.rows),
            bars: [...chart.querySelectorAll("rect.creward-bar")].map(box),
            highlights: chart.querySelectorAll("rect.creward-highlight").length,
            caption: chart.querySelector(".creward-value-label").textContent,
        })),
    };
}"""

INFO_JS = """([id]) => {
    const node = window.app.graph.getNodeById(Number(id));
    const widget = node && (node.widgets || []).find(w => w.name === "creward_info");
    if (!widget || !widget.element || !widget.element.isConnected) return null;
    const r = widget.element.getBoundingClientRect();
    return {text: widget.element.textContent, width: r.width, height: r.height};
}"""

# Preview as Text (PreviewAny): the bundled front end renders Markdown; the newest shows a
# plain-text textarea (its default mode). Lines that do not fit would wrap.
PREVIEW_JS = """([id]) => {
    const node = window.app.graph.getNodeById(Number(id));
    const widgets = (node.widgets || []).map(w => w.element || w.inputEl).filter(Boolean);
    for (const element of widgets) {
        const tables = element.querySelectorAll ? [...element.querySelectorAll("table")] : [];
        if (tables.length) return {kind: "markdown", rows: tables.flatMap(t => [...t.querySelectorAll("tr")]).map(tr => [...tr.children].map(td => td.textContent.trim()))};
    }
    const area = [...document.querySelectorAll("textarea")].find(t => t.value.startsWith("| image"));
    if (!area) return null;
    const style = getComputedStyle(area), ctx = document.createElement("canvas").getContext("2d");
    ctx.font = `${style.fontSize} ${style.fontFamily}`;
    const usable = area.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const rows = area.value.split("\\n").filter(line => line.startsWith("|"));  // the tables (the last line may wrap)
    const widest = Math.max(...rows.map(line => ctx.measureText(line).width));
    return {kind: "text", firsts: rows.filter(line => !line.includes("---")).map(line => line.split("|")[1].trim()), widest, usable};
}"""


# Open the template browser on our pack's templates; their thumbnails and titles as shown.
TEMPLATES_JS = """async ([count]) => {
    const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms));
    await window.app.extensionManager.command.execute("Comfy.BrowseTemplates");
    let dialog = null;
    for (let i = 0; i < 50 && !dialog; i++) {
        await sleep(100);
        dialog = [...document.querySelectorAll("[role=dialog], .p-dialog")].find(d => d.innerText.includes("comfyui-creward"));
    }
    if (!dialog) return null;
    [...dialog.querySelectorAll("*")].filter(e => e.textContent.trim() === "comfyui-creward").pop().click();
    // Cards load their thumbnail only while in view (the bundled front end's LazyImage drops it again
    // when scrolled away): scroll through the cards and note each thumbnail as it loads.
    const images = () => [...dialog.querySelectorAll("img")];
    const scrollers = () => [...dialog.querySelectorAll("*")].filter(e => e.scrollHeight > e.clientHeight + 4 && /(auto|scroll)/.test(getComputedStyle(e).overflowY));
    const seen = new Map(), text = new Set();
    for (let i = 0; i < 160 && !(seen.size >= count && [...seen.values()].every(Boolean)); i++) {
        await sleep(100);
        for (const img of images().filter(img => img.complete && img.getAttribute("src"))) {
            const key = img.alt + " " + img.src, loaded = img.naturalWidth > 0 && !img.src.includes("default-template");
            seen.set(key, seen.get(key) || loaded);  // a failed thumbnail shows the default picture
        }
        for (const line of dialog.innerText.split("\\n")) text.add(line.trim());
        if (i % 5 === 4) for (const scroller of scrollers()) scroller.scrollTop += scroller.clientHeight / 2;
    }
    return {thumbnails: [...seen.values()], text: [...text]};
}"""


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess):
    nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_checkpoint(comfy_base_dir)
    return comfyui_server


def api_view(graph: dict) -> dict:
    return {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in graph.items()}


def our_console_errors(page) -> list[str]:
    """Page errors, and console lines from our extension (other lines are the front ends' own:
    the newest one asks ComfyUI 0.3.75 for APIs it does not have, and the internet for node info)."""
    return [line for line in page.console_log if line.startswith("pageerror") or "creward.js" in line or "CREward:" in line]


def focus(page, node_id: str) -> None:
    page.evaluate(FOCUS_JS, [node_id])
    page.wait_for_timeout(250)  # a few frames: the canvas and the DOM widgets follow


def drawn_colors(page, box: dict) -> dict[str, int]:
    """How many pixels of each axis colour the screenshot shows inside ``box``."""
    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
    counts = dict.fromkeys(AXIS_COLORS, 0)
    for (r, g, b), count in ((rgb, n) for n, rgb in shot.getcolors(shot.width * shot.height)):
        for axis, (ar, ag, ab) in AXIS_COLORS.items():
            if abs(r - ar) + abs(g - ag) + abs(b - ab) <= 24:
                counts[axis] += count
    return counts


def check_bars(page, node_id: str, rows: int, highlighted: int = 0) -> dict:
    """The node's bars are on the page: one per image and axis, each visible in the pixels."""
    focus(page, node_id)
    shown = page.evaluate(CHARTS_JS, [node_id])
    assert shown and shown["connected"] and len(shown["charts"]) == 1, shown
    chart = shown["charts"][0]
    assert chart["series"] == AXES and chart["rows"] == rows == shown["rows"], chart
    assert len(chart["bars"]) == rows * len(AXES) and all(bar["width"] >= 1 and bar["height"] >= 1 for bar in chart["bars"]), chart
    assert chart["highlights"] == highlighted
    assert chart["box"]["width"] >= 200 and chart["box"]["height"] >= 100, chart  # at scale 1: full size
    colors = drawn_colors(page, chart["box"])
    assert all(count >= 30 for count in colors.values()), colors  # every axis's bars are in the pixels
    return chart


@pytest.mark.parametrize("name", [name for name in nodes_setup.UI_WORKFLOWS if name != "creward_score_images"])
def test_example_workflow_loads_queues_and_draws_score_bars(env, browser_page, name):
    """The sampling workflows in the bundled front end's classic renderer (the scoring workflow
    runs under every front end and renderer below)."""
    client = env
    page = browser_page
    client.post("/settings/Comfy.VueNodes.Enabled", json=False).raise_for_status()
    report = harness.load_workflow_in_ui(page, client.base_url, nodes_setup.ui_workflow(name), name=name)
    assert report["missing_node_types"] == [] and not report["missing_nodes_dialog"], report
    assert not any("invalid" in text.lower() or "error" in text.lower() for text in report["dialogs"]), report
    assert api_view(harness.graph_to_prompt(page)) == api_view(nodes_setup.api_workflow(name))
    page.evaluate(SHRINK_JS)
    harness.run_in_ui(page, client, timeout=300)
    rows = 2 if name == "creward_score_images" else 3
    for node_id, node_type in SCORED_NODES[name].items():
        page.wait_for_function(f"() => !!window.app.graph.getNodeById({node_id}).creward", timeout=30_000)
        check_bars(page, node_id, rows, highlighted=1 if node_type == "CREwardSelectBest" else 0)
    assert our_console_errors(page) == []
    focus(page, min(SCORED_NODES[name], key=int))
    harness.save_screenshot(page, f"creward-{name}")


@pytest.fixture(scope="module")
def newest(comfyui_server_newest_frontend, env):
    yield comfyui_server_newest_frontend
    # The servers share one user settings file: leave the classic renderer for the other tests.
    env.post("/settings/Comfy.VueNodes.Enabled", json=False).raise_for_status()


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_score_bars_are_drawn_by_both_front_ends_and_both_renderers(env, newest, browser_page, front_end, renderer):
    client = env if front_end == "bundled" else newest
    page = browser_page
    # Both servers share the user settings file: set the renderer, then open the page.
    client.post("/settings/Comfy.VueNodes.Enabled", json=RENDERERS[renderer]).raise_for_status()
    client.free_memory()  # so the loader runs (and reports its precision) in this test too
    name = "creward_score_images"
    report = harness.load_workflow_in_ui(page, client.base_url, nodes_setup.ui_workflow(name), name=name, reload=True)
    assert report["missing_node_types"] == [] and not report["missing_nodes_dialog"], report
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == FRONT_ENDS[front_end]
    assert page.evaluate("() => window.app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is RENDERERS[renderer]
    ours = lambda graph: {key: node for key, node in api_view(graph).items() if node["class_type"].startswith("CREward")}  # noqa: E731
    assert ours(harness.graph_to_prompt(page)) == ours(nodes_setup.api_workflow(name))  # our display widgets are not sent
    harness.run_in_ui(page, client, timeout=300)
    page.wait_for_function("() => !!window.app.graph.getNodeById(5).creward", timeout=30_000)

    chart = check_bars(page, "5", rows=2)
    assert chart["caption"] == "score · clip, fp32"
    harness.save_screenshot(page, f"creward-bars-{front_end}-{renderer}")

    focus(page, "1")  # the loader says what it loaded, in which precision
    info = page.evaluate(INFO_JS, ["1"])
    assert info and info["text"] == "clip on cpu, fp32 (the official precision)" and info["width"] > 100, info

    focus(page, "8")  # the summary in Preview as Text: one line per image, nothing wrapped
    preview = page.evaluate(PREVIEW_JS, ["8"])
    assert preview is not None
    # three tables of five columns: the scores (with the mean), their percentiles and win probabilities within the batch
    expected = ["image", "#0", "#1", "mean", "percentile", "#0", "#1", "win prob.", "#0", "#1"]
    if preview["kind"] == "markdown":
        assert [row[0] for row in preview["rows"]] == expected and all(len(row) == 5 for row in preview["rows"]), preview
    else:
        assert preview["firsts"] == expected and preview["widest"] <= preview["usable"], preview

    if renderer == "classic":  # the template cards: a thumbnail each and readable titles
        templates = page.evaluate(TEMPLATES_JS, [len(nodes_setup.TEMPLATE_NAMES)])
        assert templates and len(templates["thumbnails"]) == len(nodes_setup.TEMPLATE_NAMES) and all(templates["thumbnails"]), templates
        assert set(nodes_setup.TEMPLATE_NAMES.values()) <= set(templates["text"]), templates["text"]
        assert not [line for line in page.console_log if "Failed to cache media" in line or ("http 404" in line and "workflow_templates" in line)]
    assert our_console_errors(page) == []
