"""Shared set-up for the CREward node tests (in-process, server, browser, bench).

Everything is written into a ComfyUI ``--base-directory`` where a user would put it:

- ``models/creward/creward_clip.safetensors`` + ``models/creward/backbones/clip-vit-large-patch14/``
  (tiny random clip CREward, ``builders.comfyui_models.install_creward_clip``);
- ``models/vae_approx/taesd_{encoder,decoder}.safetensors`` (random TAESD);
- ``models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors`` (tiny SD1.x, built once into
  ``<repo>/.cache/test-weights`` and linked; needs ComfyUI imported in this process);
- ``input/example.png`` and ``input/creward_*.png`` (random images).

The example workflows name exactly these files, so they run unchanged.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from builders import comfyui_models
from comfyui_setup import file_lock

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
WEIGHT_CACHE = REPO_ROOT / ".cache" / "test-weights"
CHECKPOINT_BUILD = "tiny-sd15-v1.safetensors"  # bump when install_sd15_checkpoint changes
UI_WORKFLOWS = ("creward_score_images", "creward_best_of_n", "creward_score_latents")
# The template browser titles a pack's template by its file name, so the UI-format files have
# readable names; their API twins keep the short names scripts use: workflows/api/<key>.json.
TEMPLATE_NAMES = {
    "creward_score_images": "Score images with CREward",
    "creward_best_of_n": "Best of N with CREward",
    "creward_score_latents": "Score latents with CREward",
    "explain": "Explain a score with Grad-CAM",
    "creative_lora_sliders": "Creative LoRA sliders",
    "train_creative_lora": "Train a creative LoRA",
    "creative_ksampler_pruned": "Creative KSampler with pruning",
    "fk_steering_custom_sampler": "FK steering with SamplerCustomAdvanced",
    "guidance_ksampler": "CREward guidance on a KSampler",
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# Node types that live only in the front end (graphToPrompt leaves them out).
VIRTUAL_NODES = ("Note", "MarkdownNote")
# Widgets the front end adds to a node and sends in the prompt, which no schema lists.
FRONT_END_WIDGETS = {"PreviewAny": ("preview",)}
EXAMPLE_IMAGES = ("example.png", "creward_a.png", "creward_b.png", "creward_c.png")


def write_images(folder: Path, names=EXAMPLE_IMAGES, seed: int = 0, size=(96, 128)) -> list[Path]:
    """Random RGB PNGs (each a different size pattern) in ``folder``; existing files are kept."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for index, name in enumerate(names):
        path = Path(folder) / name
        if not path.is_file():
            height, width = size[0] + 8 * index, size[1] - 8 * index
            base = rng.random((height, width, 3)) * (0.3 + 0.2 * index)
            stripes = (np.arange(width)[None, :, None] // (4 + 3 * index)) % 2
            Image.fromarray((np.clip(base + 0.4 * stripes, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def install_weights(base_dir: Path) -> dict:
    """CREward clip weights, TAESD and example images in ``base_dir`` (idempotent)."""
    base_dir = Path(base_dir)
    files = comfyui_models.install_creward_clip(base_dir / "models")
    files["images"] = write_images(base_dir / "input")
    return files


def install_taesd(base_dir: Path) -> None:
    """Random TAESD in ``models/vae_approx`` (needs ComfyUI imported in this process)."""
    folder = Path(base_dir) / "models" / "vae_approx"
    if not (folder / "taesd_decoder.safetensors").is_file():
        comfyui_models.install_taesd(Path(base_dir) / "models")


def install_checkpoint(base_dir: Path) -> Path:
    """The tiny SD1.x checkpoint under the example workflows' name (needs ComfyUI imported)."""
    target = Path(base_dir) / "models" / "checkpoints" / comfyui_models.CHECKPOINT_NAME
    if target.exists():
        return target
    target.unlink(missing_ok=True)  # a dangling link
    with file_lock(WEIGHT_CACHE / (CHECKPOINT_BUILD + ".lock")):
        built = comfyui_models.install_sd15_checkpoint(WEIGHT_CACHE, name=CHECKPOINT_BUILD)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(built, target)
    return target


def api_workflow(name: str) -> dict:
    """A copy of ``workflows/api/<name>.json`` (the API-format twin of the UI workflow)."""
    return copy.deepcopy(json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()))


def ui_workflow_path(name: str) -> Path:
    """``workflows/<template name>.json``, the UI-format twin of ``workflows/api/<name>.json``."""
    return WORKFLOWS / f"{TEMPLATE_NAMES[name]}.json"


def ui_workflow(name: str) -> dict:
    return json.loads(ui_workflow_path(name).read_text())


def small_sampling(graph: dict, size: int = 64, batch: int = 4, steps: int = 2) -> dict:
    """Shrink the sampler of an example workflow for the CPU (64x64 latents, 2 steps)."""
    for node in graph.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size, batch_size=batch)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return graph


def node_id(graph: dict, class_type: str) -> str:
    ids = [key for key, node in graph.items() if node["class_type"] == class_type]
    assert len(ids) == 1, f"expected one {class_type} in the graph, found {ids}"
    return ids[0]


def is_widget(spec) -> bool:
    """Whether an ``/object_info`` input spec is shown as a widget (else it is a socket only:
    ``forceInput`` widgets types are sockets too)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def check_ui_workflow_against_schemas(client, name: str) -> None:
    """Assert that ``workflows/<template>.json`` describes exactly the graph of its API twin.

    Checked against the server's ``/object_info``: the same node ids and types (notes aside),
    ``widgets_values`` in schema order with a "control after generate" value after seeds, each
    linked slot's link pointing at the API twin's origin, and each output's type.
    """
    ui = ui_workflow(name)
    api = api_workflow(name)
    assert ui["version"] == 0.4
    graph_nodes = [node for node in ui["nodes"] if node["type"] not in VIRTUAL_NODES]
    assert {str(node["id"]): node["type"] for node in graph_nodes} == {key: node["class_type"] for key, node in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in graph_nodes:
        schema = client.object_info(node["type"])
        inputs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        values = list(node["widgets_values"] or [])
        widgets = {}
        for input_name, spec in inputs.items():
            if is_widget(spec):
                widgets[input_name] = values.pop(0)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    assert values.pop(0) in ("fixed", "randomize", "increment", "decrement")
        assert values == [], f"node {node['id']} ({node['type']}): widget values left over: {values}"
        api_inputs = api[str(node["id"])]["inputs"]
        added = FRONT_END_WIDGETS.get(node["type"], ())
        assert set(api_inputs) - set(inputs) <= set(added), f"node {node['id']}: inputs no schema lists"
        linked = {k for k, v in api_inputs.items() if isinstance(v, list)}
        ui_values = {k: v for k, v in widgets.items() if k not in linked}
        api_values = {k: v for k, v in api_inputs.items() if k not in linked and k not in added}
        assert ui_values == api_values, f"node {node['id']} ({node['type']}): widgets {ui_values} != API {api_values}"
        for slot in node["inputs"]:
            assert slot["name"] in inputs
            if slot.get("link") is not None:
                _, origin, origin_slot, target, target_slot, kind = links[slot["link"]]
                assert target == node["id"] and node["inputs"][target_slot] is slot
                assert api_inputs[slot["name"]] == [str(origin), origin_slot]
        assert sorted(linked) == sorted(
            slot["name"] for slot in node["inputs"] if slot.get("link") is not None), f"node {node['id']}: links"
        for index, output in enumerate(node["outputs"]):
            assert schema["output"][index] == output["type"]


def check_ui_workflow_in_web_ui(page, client, name: str) -> dict:
    """Load ``workflows/<template>.json`` in the web UI on ``page``; assert that no node is missing
    and that the front end's ``graphToPrompt`` gives exactly its API twin. Returns the load report."""
    import comfyui_harness as harness

    report = harness.load_workflow_in_ui(page, client.base_url, ui_workflow(name), name=name)
    assert report["missing_node_types"] == [] and not report["missing_nodes_dialog"], report
    prompt = harness.graph_to_prompt(page)
    view = {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in prompt.items()}
    twin = {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in api_workflow(name).items()}
    assert view == twin
    return report
