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

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
COLUMN_WIDTH = 360
ROW_GAP = 40


def _is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(key: str, seen=()) -> int:
        if key in depth:
            return depth[key]
        parents = [value[0] for value in api[key]["inputs"].values() if isinstance(value, list)]
        depth[key] = 1 + max((visit(parent, seen + (key,)) for parent in parents), default=-1)
        return depth[key]

    for key in api:
        visit(key)
    return depth


def ui_from_api(api: dict, object_info: dict) -> dict:
    """The UI-format workflow (front end format 0.4) of the API graph ``api``."""
    links, nodes = [], []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    depth = _depths(api)
    order = sorted(api, key=lambda key: (depth[key], int(key)))
    rows_in_column: dict[int, float] = {}
    for position, key in enumerate(order):
        node = api[key]
        schema = object_info[node["class_type"]]
        specs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        slots, values = [], []
        for name, spec in specs.items():
            value = node["inputs"].get(name)
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            if isinstance(value, list):  # a link
                link_id = len(links) + 1
                origin, slot = value
                links.append([link_id, int(origin), slot, int(key), len(slots), None])
                outputs_links.setdefault((origin, slot), []).append(link_id)
                entry = {"localized_name": name, "name": name, "type": kind, "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
                slots.append(entry)
            elif _is_widget(spec):
                if value is None:
                    value = spec[1].get("default") if len(spec) > 1 else None
                    if value is None and isinstance(spec[0], list):
                        value = spec[0][0]
                values.append(value)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    values.append("fixed")
                slots.append({"localized_name": name, "name": name, "type": kind, "widget": {"name": name}})
            else:  # an optional input left unconnected
                slots.append({"localized_name": name, "name": name, "shape": 7, "type": kind, "link": None})
        extra = [name for name in node["inputs"] if name not in specs]
        for name in extra:  # inputs the front end adds itself (PreviewAny's 'preview')
            values.append(node["inputs"][name])
        column = depth[key]
        height = 46 + 22 * len(slots) + 22 * len(schema["output"])
        y = rows_in_column.get(column, 40)
        rows_in_column[column] = y + height + ROW_GAP
        nodes.append({
            "id": int(key), "type": node["class_type"], "pos": [40 + column * COLUMN_WIDTH, y], "size": [320, height],
            "flags": {}, "order": position, "mode": 0, "inputs": slots,
            "outputs": [{"localized_name": name, "name": name, "type": kind, "links": []}
                        for kind, name in zip(schema["output"], schema.get("output_name", schema["output"]))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": values,
        })
    by_id = {node["id"]: node for node in nodes}
    for link in links:
        link_id, origin, slot, target, target_slot, _ = link
        output = by_id[origin]["outputs"][slot]
        output["links"].append(link_id)
        link[5] = output["type"]
    return {"revision": 0, "last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(argv=None) -> int:
    import comfyui_harness as harness
    import nodes_setup
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
                ui = ui_from_api(nodes_setup.api_workflow(name), info)
                path = nodes_setup.ui_workflow_path(name)
                path.write_text(json.dumps(ui, indent=2) + "\n")
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
