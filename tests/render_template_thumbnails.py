"""Render the template browser's thumbnails: ``workflows/<template>.jpg``, one per UI workflow.

Usage::

    python tests/render_template_thumbnails.py [--only NAME ...]

ComfyUI's template browser shows ``<name>.jpg`` beside each ``workflows/<name>.json`` of a pack.
This starts a ComfyUI server (the bundled front end, classic renderer) on a temporary base
directory holding the tests' tiny weights, opens each example workflow in headless Chromium,
runs the ones that score or sample (so their bars and images show; the LoRA workflows are shown
as graphs, training would take minutes), fits the graph in view with the panels hidden and saves a 512x320 JPEG.
Rerun it after changing a workflow or the look of the nodes, and commit the pictures.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfyui_harness as harness  # noqa: E402
import nodes_setup  # noqa: E402
from comfyui_setup import ensure_comfyui  # noqa: E402

SIZE = (512, 320)
VIEWPORT = {"width": 1920, "height": 1200}  # large, so the fitted graph stays above the low-quality zoom
# The graph's nodes on the page, in CSS pixels: [left, top, right, bottom].
BOUNDS_JS = """() => {
    const canvas = window.app.canvas, ds = canvas.ds, rect = canvas.canvas.getBoundingClientRect();
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = window.app.graph.nodes.map(n => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
    const screen = (x, y) => [rect.x + (x + ds.offset[0]) * ds.scale, rect.y + (y + ds.offset[1]) * ds.scale];
    const [left, top] = screen(Math.min(...boxes.map(b => b[0])), Math.min(...boxes.map(b => b[1])));
    const [right, bottom] = screen(Math.max(...boxes.map(b => b[2])), Math.max(...boxes.map(b => b[3])));
    return [left, top, right, bottom];
}"""
RUN = {"creward_score_images", "creward_best_of_n", "creward_score_latents", "explain", "creative_ksampler_pruned",
       "fk_steering_custom_sampler", "guidance_ksampler"}
SHRINK_JS = """() => {
    for (const node of window.app.graph.nodes) {
        const set = (name, value) => { const w = (node.widgets || []).find(w => w.name === name); if (w) w.value = value; };
        if (node.type === "EmptyLatentImage") { set("width", 64); set("height", 64); set("batch_size", 3); }
        if (["KSampler", "CREwardCreativeKSampler", "BasicScheduler"].includes(node.type)) set("steps", 2);
        if (["CREwardCreativeKSampler", "CREwardSteeringSampler"].includes(node.type)) { set("particles", 4); set("checkpoint_every", 1); }
    }
}"""


def render(page, client, name: str, out: Path) -> Path:
    from PIL import Image

    harness.load_workflow_in_ui(page, client.base_url, nodes_setup.ui_workflow(name), name=name)
    if name in RUN:
        page.evaluate(SHRINK_JS)
        harness.run_in_ui(page, client, timeout=600)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(800)
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    margin = 24
    left, top, right, bottom = page.evaluate(BOUNDS_JS)
    graph = shot.crop((max(0, int(left) - margin), max(0, int(top) - margin), min(shot.width, int(right) + margin), min(shot.height, int(bottom) + margin)))
    graph.thumbnail(SIZE, Image.LANCZOS)
    canvas = Image.new("RGB", SIZE, shot.getpixel((2, shot.height // 2)))  # the canvas background
    canvas.paste(graph, ((SIZE[0] - graph.width) // 2, (SIZE[1] - graph.height) // 2))
    target = out / f"{nodes_setup.TEMPLATE_NAMES[name]}.jpg"
    canvas.save(target, quality=82, optimize=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(nodes_setup.TEMPLATE_NAMES), help="render only these")
    options = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    comfyui = ensure_comfyui()
    with tempfile.TemporaryDirectory() as temporary:
        base = harness.make_base_dir(Path(temporary) / "base", settings={"Comfy.VueNodes.Enabled": False})
        harness.load_comfyui_inprocess(comfyui, base)  # the tiny checkpoint is built with ComfyUI's own code
        nodes_setup.install_weights(base)
        nodes_setup.install_taesd(base)
        nodes_setup.install_checkpoint(base)
        with harness.ComfyUIServer(comfyui, base) as client, sync_playwright() as playwright:
            browser = harness.launch_chromium(playwright)
            page = browser.new_page(viewport=VIEWPORT)
            harness.open_ui(page, client.base_url)
            page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
            for name in options.only or nodes_setup.TEMPLATE_NAMES:
                print(render(page, client, name, nodes_setup.WORKFLOWS))
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
