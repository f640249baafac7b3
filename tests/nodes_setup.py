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
}
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
