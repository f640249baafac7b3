"""Where CREward looks for weights when they are not given explicitly.

Order, first match wins:

1. the explicit argument (``--head`` / ``--backbone-weights`` on the CLI, loader inputs in ComfyUI);
2. environment variables ``CREWARD_HEAD`` and ``CREWARD_BACKBONE_WEIGHTS``;
3. model folders laid out like ComfyUI's ``models/creward/``, in this order:
   ``$CREWARD_MODELS_DIR``, ``$COMFYUI_PATH/models/creward``, ``~/.cache/creward``
   (where ``creward download`` puts files by default).

Inside a model folder: head files at the top (``*.safetensors`` heads or official ``*.ckpt``),
backbone weights in ``backbones/<name>`` (a Hugging Face folder or a single file, see each
backbone's ``default_names``), and for ``clip`` also ComfyUI's sibling
``../clip_vision/clip_vision_l.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .backbones.registry import BackboneSpec, get_spec
from .errors import WeightsError
from .head import HEAD_FILE_SUFFIXES, is_head_file

HEAD_ENV = "CREWARD_HEAD"
BACKBONE_ENV = "CREWARD_BACKBONE_WEIGHTS"
MODELS_DIR_ENV = "CREWARD_MODELS_DIR"
COMFYUI_ENV = "COMFYUI_PATH"


def default_download_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or Path.home() / ".cache" / "creward")


def model_dirs() -> list[Path]:
    """The model folders searched, in order (existing or not)."""
    dirs = []
    if os.environ.get(MODELS_DIR_ENV):
        dirs.append(Path(os.environ[MODELS_DIR_ENV]))
    if os.environ.get(COMFYUI_ENV):
        dirs.append(Path(os.environ[COMFYUI_ENV]) / "models" / "creward")
    dirs.append(Path.home() / ".cache" / "creward")
    return dirs


def list_head_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix in HEAD_FILE_SUFFIXES and is_head_file(path))


def _head_backbone(path: Path) -> str | None:
    from .head import read_head_file

    try:
        return read_head_file(path)[1].metadata.get("creward.backbone")
    except WeightsError:
        return None


def find_head(head: str | os.PathLike | None = None, backbone: str | None = None) -> Path:
    """Resolve the head file; raises ``WeightsError`` saying where it looked."""
    if head:
        path = Path(head)
        if not path.is_file():
            raise WeightsError(f"head file not found: {path}")
        return path
    if os.environ.get(HEAD_ENV):
        path = Path(os.environ[HEAD_ENV])
        if not path.is_file():
            raise WeightsError(f"head file not found: {path} (from ${HEAD_ENV})")
        return path
    for folder in model_dirs():
        candidates = list_head_files(folder)
        if backbone:
            matching = [path for path in candidates if _head_backbone(path) == backbone]
            candidates = matching or [path for path in candidates if path.suffix != ".safetensors"]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise WeightsError(
                f"several CREward heads in {folder}: {[path.name for path in candidates]}; choose one with --head"
                + ("" if backbone else " (or narrow the choice with --backbone)")
            )
    raise WeightsError(
        "no CREward head given and none found. Pass --head FILE, set $CREWARD_HEAD, or put the head "
        f"(e.g. the official reward_head_best.ckpt converted with `creward convert`) in one of: "
        f"{', '.join(str(folder) for folder in model_dirs())}"
    )


def backbone_candidates(spec: BackboneSpec) -> list[Path]:
    """Every place the backbone weights are looked for, in order."""
    places = []
    for folder in model_dirs():
        for name in spec.default_names:
            places.append(folder / "backbones" / name)
        if spec.name == "clip":
            places.append(folder.parent / "clip_vision" / "clip_vision_l.safetensors")
    return places


def find_backbone_weights(backbone: str, weights: str | os.PathLike | None = None) -> Path:
    """Resolve the backbone's weights (file or folder); raises ``WeightsError`` naming what to fetch."""
    spec = get_spec(backbone)
    if weights:
        path = Path(weights)
        if not path.exists():
            raise WeightsError(f"backbone weights for {backbone!r} not found: {path} (expected {spec.weights_hint})")
        return path
    if os.environ.get(BACKBONE_ENV):
        path = Path(os.environ[BACKBONE_ENV])
        if not path.exists():
            raise WeightsError(f"backbone weights not found: {path} (from ${BACKBONE_ENV})")
        return path
    places = backbone_candidates(spec)
    for place in places:
        if place.exists():
            return place
    raise WeightsError(
        f"backbone weights for {backbone!r} not found. Expected {spec.weights_hint}. Pass --backbone-weights PATH, "
        f"set ${BACKBONE_ENV}, or place them at one of: {', '.join(str(place) for place in places)}"
        f" (`creward download {backbone}` fetches them where a network is available)"
    )
