"""Where the CREward nodes find weights inside ComfyUI's model folders.

- ``models/creward/``: reward heads (``*.safetensors`` written by CREward, or the official
  ``*.ckpt``). Registered with ``folder_paths`` as ``creward`` with explicit extensions
  (``add_model_folder_path`` on a new name registers an empty extension set, which lists every
  file). Only files that look like heads are listed; ``backbones/`` is never listed as heads.
- ``models/creward/backbones/``: backbone weights, single files or Hugging Face folders,
  registered as ``creward_backbones`` (so ``extra_model_paths.yaml`` can add more places).
- ``models/clip_vision/``: ComfyUI's CLIP vision files, offered as ``clip_vision/<name>``
  (``clip_vision_l.safetensors`` is OpenAI's ViT-L/14, the ``clip`` backbone).
- ``models/creward/references/``: reference sets (``*.json`` from ``creward calibrate``),
  registered as ``creward_references``.

``auto`` backbone weights: the backbone's usual names (``BackboneSpec.default_names``) in the
backbone folders, then (for ``clip``) ``clip_vision/clip_vision_l.safetensors``, then the
library's own lookup (``$CREWARD_BACKBONE_WEIGHTS``, ``$CREWARD_MODELS_DIR``,
``~/.cache/creward``; see ``creward.models.locate``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import folder_paths

from ..models.backbones.registry import BackboneSpec
from ..models.errors import WeightsError
from ..models.head import HEAD_FILE_SUFFIXES, is_head_file
from ..models.reference_set import REFERENCE_SUFFIX

logger = logging.getLogger(__name__)

HEAD_FOLDER = "creward"
BACKBONE_FOLDER = "creward_backbones"
REFERENCE_FOLDER = "creward_references"
CLIP_VISION_FOLDER = "clip_vision"
CLIP_VISION_PREFIX = "clip_vision/"
AUTO = "auto"
BACKBONE_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CLIP_VISION_L = "clip_vision_l.safetensors"


def register_model_folders() -> None:
    """Register ``models/creward``, ``models/creward/backbones`` and ``models/creward/references`` with explicit extensions."""
    folders = (
        (HEAD_FOLDER, "creward", HEAD_FILE_SUFFIXES),
        (BACKBONE_FOLDER, os.path.join("creward", "backbones"), BACKBONE_FILE_SUFFIXES),
        (REFERENCE_FOLDER, os.path.join("creward", "references"), (REFERENCE_SUFFIX,)),
    )
    for name, relative, suffixes in folders:
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, relative), is_default=True)
        paths, extensions = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions or ()) | set(suffixes))


def reference_folders() -> list[str]:
    return folder_paths.get_folder_paths(REFERENCE_FOLDER)


def list_references() -> list[str]:
    """Reference files (``*.json``) in the ``creward_references`` folders (relative names)."""
    return list(folder_paths.get_filename_list(REFERENCE_FOLDER))


def reference_path(name: str) -> str | None:
    return folder_paths.get_full_path(REFERENCE_FOLDER, name) if name else None


def head_folders() -> list[str]:
    return folder_paths.get_folder_paths(HEAD_FOLDER)


def _is_under_backbones(name: str) -> bool:
    return Path(name).parts[:1] == ("backbones",)


def head_path(name: str) -> str | None:
    if _is_under_backbones(name):
        return None
    return folder_paths.get_full_path(HEAD_FOLDER, name)


def list_heads() -> list[str]:
    """Head files in the ``creward`` folders (relative names), without backbone weights."""
    heads = []
    for name in folder_paths.get_filename_list(HEAD_FOLDER):
        path = head_path(name)
        if path is not None and is_head_file(path):
            heads.append(name)
    return heads


def list_backbone_weights() -> list[str]:
    """``auto``, then files and folders in the backbone folders, then ``clip_vision/<file>``."""
    choices = [AUTO]
    for root in folder_paths.get_folder_paths(BACKBONE_FOLDER):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            if entry.startswith("."):
                continue
            path = os.path.join(root, entry)
            if os.path.isdir(path) or entry.lower().endswith(BACKBONE_FILE_SUFFIXES):
                choices.append(entry)
    choices += [CLIP_VISION_PREFIX + name for name in folder_paths.get_filename_list(CLIP_VISION_FOLDER)]
    return list(dict.fromkeys(choices))


def resolve_backbone_choice(choice: str) -> Path:
    """The path behind one ``backbone_weights`` choice other than ``auto``."""
    if choice.startswith(CLIP_VISION_PREFIX):
        path = folder_paths.get_full_path(CLIP_VISION_FOLDER, choice[len(CLIP_VISION_PREFIX):])
        if path is not None:
            return Path(path)
        places = folder_paths.get_folder_paths(CLIP_VISION_FOLDER)
    else:
        places = folder_paths.get_folder_paths(BACKBONE_FOLDER)
        relative = os.path.relpath(os.path.join("/", choice), "/")  # no escaping the folder
        for root in places:
            path = os.path.join(root, relative)
            if os.path.exists(path):
                return Path(path)
    raise WeightsError(f"backbone_weights: {choice!r} not found in {', '.join(places)}")


def auto_backbone_candidates(spec: BackboneSpec) -> list[Path]:
    """Where ``auto`` looks inside ComfyUI's folders, in order."""
    places = [
        Path(root) / name for root in folder_paths.get_folder_paths(BACKBONE_FOLDER) for name in spec.default_names
    ]
    if spec.name == "clip":
        places += [Path(root) / CLIP_VISION_L for root in folder_paths.get_folder_paths(CLIP_VISION_FOLDER)]
    return places


def find_backbone_auto(spec: BackboneSpec) -> Path:
    """Resolve ``auto``: ComfyUI's folders first, then the library's lookup order."""
    from ..models.locate import find_backbone_weights

    places = auto_backbone_candidates(spec)
    for place in places:
        if place.exists():
            return place
    try:
        return find_backbone_weights(spec.name)
    except WeightsError as error:
        raise WeightsError(
            f"backbone_weights: no weights for backbone {spec.name!r} found. Expected {spec.weights_hint}. "
            f"Put them at one of: {', '.join(str(place) for place in places)} (or choose a file/folder in "
            f"'backbone_weights'; for clip you can also connect a Load CLIP Vision node). Outside ComfyUI's "
            f"folders: {error}"
        ) from None
