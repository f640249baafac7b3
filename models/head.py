"""The CREward reward head and its weight files.

The head is the official MLP, kept as a plain ``nn.Sequential`` so that its state-dict keys are
exactly those of the official checkpoint ``reward_head_best.ckpt``
(``0.weight``, ``0.bias``, ``3.*``, ``6.*``, ``9.*``, ``11.*``)::

    Linear(d,1024) ReLU Dropout(0.2) Linear(1024,128) ReLU Dropout(0.2)
    Linear(128,64) ReLU Dropout(0.2) Linear(64,16) ReLU Linear(16,4)

Head files are safetensors with those keys and string metadata:

- ``creward.backbone``: the backbone name (see ``creward.models.backbones.registry``);
- ``creward.axes``: JSON list of the output axes (``["geometry", "material", "texture", "overall"]``);
- ``creward.version``: the format version (``"1"``);
- optional extras written by training (``creward.data``, ``creward.metrics``, ...).

Every head read has a **content hash** (:func:`head_hash`, ``HeadInfo.content_hash``): SHA-256 over
its tensors' names, shapes and float32 values, so the same weights have the same hash whatever the
file is called and whether it is the official ``.ckpt`` or its safetensors conversion. Reference
sets and score files record it to tell which head made their scores.

The official ``.ckpt`` (a pickled state dict) is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .axes import AXES
from .errors import WeightsError
from .output_files import atomic_output

logger = logging.getLogger(__name__)

HEAD_FORMAT_VERSION = "1"
HIDDEN_WIDTHS = (1024, 128, 64, 16)
DROPOUT = 0.2
# Indices of the Linear layers inside the Sequential (the official key prefixes).
LINEAR_INDICES = (0, 3, 6, 9, 11)
HEAD_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def build_head(feature_dim: int, num_outputs: int = len(AXES)) -> nn.Sequential:
    """The official reward head for features of width ``feature_dim`` (in train mode; call ``.eval()``)."""
    if feature_dim <= 0:
        raise ValueError(f"feature_dim should be positive, got {feature_dim}")
    widths = (feature_dim, *HIDDEN_WIDTHS)
    layers: list[nn.Module] = []
    for index in range(len(HIDDEN_WIDTHS)):
        layers += [nn.Linear(widths[index], widths[index + 1]), nn.ReLU()]
        if index < len(HIDDEN_WIDTHS) - 1:
            layers.append(nn.Dropout(DROPOUT))
    layers.append(nn.Linear(HIDDEN_WIDTHS[-1], num_outputs))
    return nn.Sequential(*layers)


def expected_keys() -> set[str]:
    return {f"{index}.{kind}" for index in LINEAR_INDICES for kind in ("weight", "bias")}


@dataclass
class HeadInfo:
    """What a head file holds besides its tensors."""

    path: str | None
    backbone: str | None
    axes: tuple[str, ...]
    feature_dim: int
    version: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    content_hash: str | None = None  # head_hash() of the tensors; None for heads built in memory


def head_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a head's state dict: sorted names, shapes and float32 little-endian values.

    Independent of the file's name and format (official ``.ckpt`` or safetensors) and of any
    wrapper prefix (``head.``/``module.``; pass the stripped state dict, as ``read_head_file`` does).
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise WeightsError(f"head file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error
        return state, metadata
    from .backbones.weight_files import load_pickle_weights_only

    try:
        loaded = load_pickle_weights_only(path)
    except ValueError as error:
        raise WeightsError(
            f"{path} is not a CREward head: {error} (expected a .safetensors head written by CREward, or the "
            f"official reward_head_best.ckpt; weights-only reading)"
        ) from error
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors (got {type(loaded).__name__})")
    return dict(loaded), {}


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept heads saved from a wrapper (``head.0.weight``, ``module.0.weight``)."""
    if "0.weight" in state:
        return state
    for prefix in ("reward_head.", "head.", "module.", "mlp."):
        if f"{prefix}0.weight" in state:
            return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def _axes_from_metadata(path: Path, metadata: dict[str, str]) -> tuple[str, ...]:
    """The ``creward.axes`` metadata field: a JSON list of distinct names (the official axes when absent)."""
    text = metadata.get("creward.axes")
    if text is None:
        return AXES
    try:
        axes = json.loads(text)
    except json.JSONDecodeError:
        axes = None
    if not isinstance(axes, list) or not axes or not all(isinstance(axis, str) and axis for axis in axes) or len(set(axes)) != len(axes):
        raise WeightsError(
            f"{path}: its metadata field 'creward.axes' should be a JSON list of distinct axis names, e.g. "
            f"{json.dumps(list(AXES))}, but it is {text!r}"
        )
    return tuple(axes)


def read_head_file(path: str | os.PathLike, backbone: str | None = None) -> tuple[dict[str, torch.Tensor], HeadInfo]:
    """Read and validate a head file (safetensors or official ``.ckpt``) without building it.

    Raises ``WeightsError`` naming the file and the missing/unexpected keys or wrong shapes.
    """
    path = Path(path)
    state, metadata = _read_state_dict(path)
    state = _strip_prefix(state)
    missing = sorted(expected_keys() - set(state))
    unexpected = sorted(set(state) - expected_keys())
    if missing or unexpected:
        raise WeightsError(
            f"{path} is not a CREward head: missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''} "
            f"(expected {sorted(expected_keys())})"
        )
    first = state["0.weight"]
    if first.ndim != 2:
        raise WeightsError(f"{path}: '0.weight' should be a matrix, got shape {tuple(first.shape)}")
    feature_dim = int(first.shape[1])
    axes = _axes_from_metadata(path, metadata)
    reference = build_head(feature_dim, len(axes)).state_dict()
    for key, tensor in reference.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{path}: '{key}' has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)} "
                f"for a head on {feature_dim}-wide features with {len(axes)} outputs"
            )
    stored_backbone = metadata.get("creward.backbone")
    if backbone and stored_backbone and backbone != stored_backbone:
        logger.warning("%s was trained on backbone %r but %r was requested", path, stored_backbone, backbone)
    info = HeadInfo(
        path=str(path),
        backbone=backbone or stored_backbone,
        axes=axes,
        feature_dim=feature_dim,
        version=metadata.get("creward.version"),
        metadata=metadata,
        content_hash=head_hash(state),
    )
    return state, info


def load_head(path: str | os.PathLike, backbone: str | None = None) -> tuple[nn.Sequential, HeadInfo]:
    """Build the head from a file, in eval mode, strictly loaded."""
    state, info = read_head_file(path, backbone)
    head = build_head(info.feature_dim, len(info.axes))
    head.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    head.eval()
    return head, info


def save_head(
    head: nn.Sequential,
    path: str | os.PathLike,
    backbone: str,
    axes: tuple[str, ...] = AXES,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write a head as safetensors with CREward metadata, atomically (no half-written file) and
    readable by other users as a normally created file is."""
    from safetensors.torch import save_file

    from .backbones.registry import get_spec

    get_spec(backbone)  # validates the name
    path = Path(path)
    metadata = {
        "creward.backbone": backbone,
        "creward.axes": json.dumps(list(axes)),
        "creward.version": HEAD_FORMAT_VERSION,
    }
    for key, value in (extra_metadata or {}).items():
        metadata[key if key.startswith("creward.") else f"creward.{key}"] = value if isinstance(value, str) else json.dumps(value)
    state = {key: value.detach().float().cpu().contiguous() for key, value in head.state_dict().items()}
    with atomic_output(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return path


def is_head_file(path: str | os.PathLike) -> bool:
    """Cheap check (header only for safetensors) used to list head files in folders."""
    path = Path(path)
    if path.suffix not in HEAD_FILE_SUFFIXES or not path.is_file():
        return False
    if path.suffix != ".safetensors":
        return True
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return "0.weight" in set(handle.keys()) or "creward.backbone" in (handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False
