"""Reading backbone weights from the files users have, tensor by tensor.

- Hugging Face folders: ``config.json`` plus ``model.safetensors`` or shards listed in
  ``model.safetensors.index.json``; only tensors under the wanted prefixes are read (a
  gemma-3-4b-it folder is 8 GB, of which the vision tower is 0.8 GB).
- Single files: safetensors, or pickles read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable

import torch

from ..errors import WeightsError

logger = logging.getLogger(__name__)


def model_folder(path: str | os.PathLike, backbone: str, expected: str) -> Path:
    """``path`` as a model folder; a ``WeightsError`` saying what ``backbone`` expects when it is missing or a file."""
    folder = Path(path)
    if not folder.exists():
        raise WeightsError(f"{backbone} weights not found: {folder} (expected {expected})")
    if not folder.is_dir():
        raise WeightsError(f"{folder} is a file; {backbone} expects a folder: {expected}")
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise WeightsError(f"{folder} is not a Hugging Face model folder: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not valid JSON: {error}") from error


def parse_config(config_class, config: dict, path: str | os.PathLike, what: str):
    """``config_class.from_dict(config)`` (a transformers config), or a ``WeightsError`` naming ``path``."""
    try:
        return config_class.from_dict(config)
    except (TypeError, ValueError, KeyError) as error:
        raise WeightsError(f"{path} is not a valid {what} config: {error}") from error


def safetensors_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a Hugging Face folder (sharded or not)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise WeightsError(f"{index} is not a valid safetensors index: {error}") from error
        files = sorted({folder / name for name in weight_map.values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise WeightsError(f"{folder}: shard files listed in the index are missing: {[p.name for p in missing]}")
    if not files:
        raise WeightsError(
            f"{folder} holds no *.safetensors weights (only safetensors Hugging Face folders are supported; "
            f"convert pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))"
        )
    return files


def read_safetensors(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    prefixes: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors from one or several safetensors files, optionally only those under ``prefixes``."""
    from safetensors import SafetensorError, safe_open

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    prefixes = tuple(prefixes) if prefixes is not None else None
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            with safe_open(os.fspath(path), framework="pt") as handle:
                for key in handle.keys():
                    if prefixes is None or key.startswith(prefixes):
                        state[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error
    return state


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error


def why_not_loadable(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in words (without torch's advice to
    turn ``weights_only`` off or allow-list classes: CREward never loads pickled code)."""
    text = str(error)
    if "TorchScript" in text:
        return "it is a TorchScript archive, not a checkpoint of tensors (files are read weights-only)"
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds Python objects ({found.group(1).rstrip('.')}), not only tensors; CREward reads weight files "
                f"weights-only and never runs pickled code")
    return "it is neither a safetensors file nor a PyTorch checkpoint of tensors"


def load_pickle_weights_only(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU; a ``ValueError`` saying why not otherwise."""
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickles carrying code or objects; other files fail to parse
        raise ValueError(why_not_loadable(error)) from error


def read_state_dict(path: str | os.PathLike, what: str = "backbone weights") -> dict[str, torch.Tensor]:
    """A single weight file: safetensors, or a pickle loaded weights-only (nothing else is trusted)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        loaded = load_pickle_weights_only(path)
    except ValueError as error:
        raise WeightsError(f"{path} is not {what}: {error}") from error
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(loaded).__name__})")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the keys."""
    result_missing = sorted(set(module.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(module.state_dict()))
    # Buffers that transformers recomputes (e.g. position ids) may be absent from checkpoints.
    missing = [key for key in result_missing if not key.endswith(("position_ids",))]
    if missing or unexpected:
        raise WeightsError(
            f"{source} does not fit the {type(module).__name__} it was read for: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
        )
    reference = module.state_dict()
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(reference[key].shape):
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(reference[key].shape)}"
            )
    module.load_state_dict(state, strict=False)
