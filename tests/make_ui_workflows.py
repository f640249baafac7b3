"""Write the UI-format twin ``workflows/<template>.json`` of API workflows ``workflows/api/<name>.json``.

Usage::

    python tests/make_ui_workflows.py NAME [NAME ...]

Starts a ComfyUI server (tests' tiny weights, bundled front end), reads every node's schema from
``/object_info`` and lays the API graph out as the front end saves it (format 0.4): link slots and
widget slots in schema order, ``widgets_values`` in schema order (with the "control after
generate" value after seeds), nodes in columns by their depth in the graph. The browser tests
then check that the front end loads each file with no missing nodes and turns it back into
exactly its API twin (``graphToPrompt``); the server tests check it against the schemas.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nodes_setup  # noqa: E402

NODE_WIDTH = 320
WIDE_NODES = {"CLIPTextEncode": 400, "SaveImage": 360, "PreviewImage": 360, "PreviewAny": 400}
COLUMN_GAP = 50
ROW_GAP = 40
TOP = 40
SLOT_HEIGHT = 20  # LiteGraph.NODE_SLOT_HEIGHT
WIDGET_HEIGHT = 24  # LiteGraph.NODE_WIDGET_HEIGHT + its margin
MULTILINE_HEIGHT = 90
# Room for what a node shows below its widgets: images, our score charts, a text preview.
EXTRA_HEIGHT = {"SaveImage": 260, "PreviewImage": 260, "PreviewAny": 160, "CREwardScore": 230,
                "CREwardScoreLatent": 230, "CREwardSelectBest": 230}
# A note beside each template's graph (a front-end-only node: the API twin does not have it).
NOTES = {
    "creative_ksampler_pruned": (
        "Creative KSampler: N particles per latent sample as one batch; at checkpoint steps each particle's clean "
        "estimate is decoded (TAESD from models/vae_approx, else the VAE), scored by CREward and the worst are pruned "
        "(they stop costing model evaluations), or resampled (mode resample, FK steering). The k best come out, with "
        "their scores and the lineage (which particle survived which checkpoint).\n\n"
        "Needs a CREward head in ComfyUI/models/creward/ (see the pack's README, section Weights)."),
    "fk_steering_custom_sampler": (
        "FK steering as a SAMPLER for SamplerCustomAdvanced: the particles of each latent are scored by CREward at "
        "checkpoint steps and resampled by their potential (sum / diff / max of the rewards, temperature fk_lambda); "
        "the best particle of each latent is returned. Resampling needs a sampler that adds noise (ancestral, SDE).\n\n"
        "Needs a CREward head in ComfyUI/models/creward/ (see the pack's README, section Weights)."),
    "guidance_ksampler": (
        "CREward Guidance patches the model: at each guided step the clean estimate is decoded differentiably "
        "(TAESD from models/vae_approx, else the VAE), scored, and moved along the gradient of the reward. Use the "
        "patched model with any sampler; scale 0 is exactly the unpatched model. CREward Score scores the result.\n\n"
        "Needs a CREward head in ComfyUI/models/creward/ (see the pack's README, section Weights)."),
}
NOTE_CHAR_WIDTH, NOTE_LINE_HEIGHT = 7, 17  # the Note's text area, roughly


def _parents(node: dict) -> list[str]:
    return [value[0] for value in node["inputs"].values() if isinstance(value, list)]


def _columns(api: dict) -> dict[str, int]:
    """Each node's column: its depth in the graph, with source nodes pulled right next to their first user."""
    depth: dict[str, int] = {}

    def visit(key: str) -> int:
        if key not in depth:
            depth[key] = 1 + max((visit(parent) for parent in _parents(api[key])), default=-1)
        return depth[key]

    for key in api:
        visit(key)
    children: dict[str, list[str]] = {key: [] for key in api}
    for key, node in api.items():
        for parent in _parents(node):
            children[parent].append(key)
    for key in api:
        if not _parents(api[key]) and children[key]:
            depth[key] = max(depth[key], min(depth[child] for child in children[key]) - 1)
    return depth


def _node_size(class_type: str, schema: dict, sockets: int, widgets: list) -> list[int]:
    """A size that fits what the front end draws (it keeps a saved size that is large enough)."""
    rows = max(sockets, len(schema["output"])) * SLOT_HEIGHT
    height = rows + sum(MULTILINE_HEIGHT if multiline else WIDGET_HEIGHT for multiline in widgets) + 16
    return [WIDE_NODES.get(class_type, NODE_WIDTH), height + EXTRA_HEIGHT.get(class_type, 0)]


def ui_from_api(api: dict, object_info: dict, note: str | None = None) -> dict:
    """The UI-format workflow (front end format 0.4) of the API graph ``api``.

    Slots as the front end creates them: sockets (required, then optional) first, then one slot per
    widget; ``widgets_values`` in schema order with "fixed" after a seed. Nodes in columns by depth,
    each column ordered by where its inputs come from; ``note`` adds a Note below the graph.
    """
    links, nodes = [], []
    column_of = _columns(api)
    order = sorted(api, key=lambda key: (column_of[key], int(key)))
    by_key: dict[str, dict] = {}
    for position, key in enumerate(order):
        node = api[key]
        schema = object_info[node["class_type"]]
        specs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        sockets, widget_slots, values, widget_kinds = [], [], [], []
        for name, spec in specs.items():
            value = node["inputs"].get(name)
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if not nodes_setup.is_widget(spec):
                sockets.append({"localized_name": name, "name": name, "type": kind, "link": value, **(
                    {} if name in schema["input"].get("required", {}) else {"shape": 7})})
                continue
            slot = {"localized_name": name, "name": name, "type": kind, "widget": {"name": name}, "link": None}
            if isinstance(value, list):  # a widget fed by a link: the front end still saves a value
                slot["link"], value = value, None
            if value is None:
                value = options.get("default")
                if value is None and isinstance(spec[0], list):
                    value = spec[0][0]
            values.append(value)
            if options.get("control_after_generate"):
                values.append("fixed")
                widget_kinds.append(False)
            widget_kinds.append(bool(options.get("multiline")))
            widget_slots.append(slot)
        for name in node["inputs"]:  # inputs the front end adds itself (PreviewAny's 'preview'): not saved
            if name not in specs:
                widget_kinds.append(False)
        slots = sockets + widget_slots
        for index, slot in enumerate(slots):
            if slot["link"] is not None:
                origin, origin_slot = slot["link"]
                link_id = len(links) + 1
                links.append([link_id, int(origin), origin_slot, int(key), index, None])
                slot["link"] = link_id
        by_key[key] = {
            "id": int(key), "type": node["class_type"], "pos": [0, 0],
            "size": _node_size(node["class_type"], schema, len(sockets), widget_kinds),
            "flags": {}, "order": position, "mode": 0, "inputs": slots,
            "outputs": [{"localized_name": name, "name": name, "type": kind, "links": []}
                        for kind, name in zip(schema["output"], schema.get("output_name", schema["output"]))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": values,
        }
        if "_meta" in node and node["_meta"].get("title"):
            by_key[key]["title"] = node["_meta"]["title"]
        nodes.append(by_key[key])
    by_id = {node["id"]: node for node in nodes}
    for link in links:
        link_id, origin, slot, target, target_slot, _ = link
        output = by_id[origin]["outputs"][slot]
        output["links"].append(link_id)
        link[5] = output["type"]

    # Place the columns left to right; in a column, nodes follow the mean height of their inputs.
    x, bottom = 40, TOP
    for column in sorted(set(column_of.values())):
        members = [key for key in order if column_of[key] == column]
        def anchor(key):
            parents = [by_key[parent] for parent in _parents(api[key]) if column_of[parent] < column]
            if not parents:
                return (float("inf") if column else 0.0, int(key))
            return (sum(p["pos"][1] + p["size"][1] / 2 for p in parents) / len(parents), int(key))
        members.sort(key=anchor)
        y = TOP
        for key in members:
            by_key[key]["pos"] = [x, y]
            y += by_key[key]["size"][1] + ROW_GAP + 30  # 30: the title bar above pos
        bottom = max(bottom, y)
        x += max(by_key[key]["size"][0] for key in members) + COLUMN_GAP
    if note:  # under the first column, as wide as it
        first = [node for node in nodes if node["pos"][0] == 40]
        width = max(node["size"][0] for node in first)
        lines = sum(1 + len(paragraph) * NOTE_CHAR_WIDTH // (width - 20) for paragraph in note.split("\n"))
        nodes.append({"id": max(by_id) + 1, "type": "Note",
                      "pos": [40, max(node["pos"][1] + node["size"][1] for node in first) + ROW_GAP + 30],
                      "size": [width, 20 + NOTE_LINE_HEIGHT * lines], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note],
                      "color": "#432", "bgcolor": "#653"})
    return {"revision": 0, "last_node_id": max(node["id"] for node in nodes), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(argv=None) -> int:
    import comfyui_harness as harness
    from comfyui_setup import ensure_comfyui

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="keys of nodes_setup.TEMPLATE_NAMES (workflows/api/<name>.json)")
    options = parser.parse_args(argv)
    comfyui = ensure_comfyui()
    with tempfile.TemporaryDirectory() as folder:
        base = harness.make_base_dir(Path(folder) / "base")
        with harness.ComfyUIServer(comfyui, base) as client:
            info = client.object_info()
            for name in options.names:
                ui = ui_from_api(nodes_setup.api_workflow(name), info, note=NOTES.get(name))
                path = nodes_setup.ui_workflow_path(name)
                path.write_text(json.dumps(ui, indent=2) + "\n")
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
