"""Creative-LoRA files: the key format ComfyUI's ``LoraLoader`` reads, metadata, atomic writes.

Key format (chosen because it is ComfyUI's own generic format, the one its ``TrainLoraNode`` /
``SaveLoRA`` write, and ``comfy.lora.model_lora_keys_unet`` maps it for *every* architecture
ComfyUI supports, SD1.x, SDXL, SD3, Flux and newer alike, with no per-model renaming)::

    diffusion_model.<module path>.lora_up.weight     [out, rank]          ([out, rank, 1, 1] for convs)
    diffusion_model.<module path>.lora_down.weight   [rank, in]           ([rank, in, kh, kw] for convs)
    diffusion_model.<module path>.alpha              scalar

``<module path>`` is the module's name inside ComfyUI's diffusion model (``input_blocks.1.1.
transformer_blocks.0.attn1.to_q`` for SD1.x). The update is ``alpha / rank * up @ down``, the
same formula in training (``comfy.weight_adapter.lora.LoraDiff``) and loading
(``LoRAAdapter.calculate_weight``), so what was trained is exactly what loads.

Metadata (safetensors string metadata, all keys prefixed ``creward.``): base model name,
architecture and weight signature, axes and weights, lambda, steps, rank, alpha, CREward head
and backbone, mean reward before/after, prompts. ``read_lora_info`` reads it back without
ComfyUI. ``ss_network_dim`` / ``ss_network_alpha`` are also written for tools that read kohya's keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from ...models.errors import WeightsError
from ...models.output_files import atomic_output

FORMAT = "creward-creative-lora"
FORMAT_VERSION = "1"
UP, DOWN, ALPHA = ".lora_up.weight", ".lora_down.weight", ".alpha"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def lora_state_dict(
    adapters: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]],
    weight_shapes: Mapping[str, torch.Size],
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """``{module: (up [out, r], down [r, in_flat], alpha)}`` → the file's tensors.

    ``module`` is the full name in ComfyUI's model (``diffusion_model.…``); convolution factors
    are reshaped to the usual conv LoRA shapes using the base weight's shape.
    """
    tensors: dict[str, torch.Tensor] = {}
    for module, (up, down, alpha) in adapters.items():
        shape = tuple(weight_shapes[module])
        up = up.detach().to("cpu", torch.float32)
        down = down.detach().to("cpu", torch.float32)
        if len(shape) > 2:  # conv: up [out, r, 1, 1], down [r, in, kh, kw]
            kernel = shape[2:]
            up = up.reshape(up.shape[0], up.shape[1], *([1] * len(kernel)))
            down = down.reshape(down.shape[0], shape[1], *kernel)
        tensors[module + UP] = up.to(dtype).contiguous()
        tensors[module + DOWN] = down.to(dtype).contiguous()
        tensors[module + ALPHA] = torch.tensor(float(alpha), dtype=torch.float32)
    return tensors


def adapters_from_state_dict(tensors: Mapping[str, torch.Tensor], source: str = "(in memory)") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Inverse of ``lora_state_dict``: ``{module: (up [out, r], down [r, in_flat], alpha)}`` in fp32."""
    modules = sorted(key[: -len(UP)] for key in tensors if key.endswith(UP))
    expected = {m + suffix for m in modules for suffix in (UP, DOWN, ALPHA)}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{source} is not a creative LoRA in the expected key format: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]} (expected <module>{UP}, <module>{DOWN}, <module>{ALPHA})"
        )
    adapters = {}
    for module in modules:
        up, down = tensors[module + UP].float(), tensors[module + DOWN].float()
        adapters[module] = (up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), float(tensors[module + ALPHA]))
    return adapters


def atomic_save(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (``models.output_files.atomic_output``), readable like other outputs."""
    from safetensors.torch import save_file

    with atomic_output(path) as temporary:
        save_file(dict(tensors), str(temporary), metadata={key: str(value) for key, value in (metadata or {}).items()})
    return Path(path)


@dataclass
class LoraInfo:
    """What a LoRA file's metadata says (empty fields for LoRAs not written by CREward)."""

    path: str
    is_creward: bool
    base_model: str = ""
    base_architecture: str = ""
    base_signature: list = field(default_factory=list)
    axis_weights: dict[str, float] = field(default_factory=dict)
    primary_axis: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.is_creward:
            return f"{Path(self.path).name}: not a CREward creative LoRA"
        meta = self.metadata
        return (
            f"{Path(self.path).name}: axis {self.primary_axis} {self.axis_weights}, base {self.base_model or '?'} "
            f"({self.base_architecture}), steps {meta.get('creward.steps', '?')}, rank {meta.get('creward.rank', '?')}, "
            f"lambda {meta.get('creward.lambda', '?')}, mean reward {meta.get('creward.mean_reward_before', '?')} -> "
            f"{meta.get('creward.mean_reward_after', '?')}"
        )


def build_metadata(values: Mapping[str, object]) -> dict[str, str]:
    """``{"steps": 500, "axis_weights": {...}}`` → ``{"creward.steps": "500", "creward.axis_weights": "{...}"}``."""
    metadata = {"creward.format": FORMAT, "creward.format_version": FORMAT_VERSION}
    for key, value in values.items():
        if value is None:
            continue
        metadata[f"creward.{key}"] = value if isinstance(value, str) else json.dumps(value)
    if "rank" in values:
        metadata["ss_network_dim"] = str(values["rank"])
    if "alpha" in values:
        metadata["ss_network_alpha"] = str(values["alpha"])
    return metadata


def read_lora_info(path: str | os.PathLike) -> LoraInfo:
    """Read a LoRA file's metadata (any safetensors LoRA; non-CREward ones give ``is_creward=False``)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error
    if metadata.get("creward.format") != FORMAT:
        return LoraInfo(str(path), False, metadata=metadata)

    def parsed(key, default):
        try:
            return json.loads(metadata[f"creward.{key}"])
        except (KeyError, ValueError):
            return default

    return LoraInfo(
        path=str(path),
        is_creward=True,
        base_model=metadata.get("creward.base_model", ""),
        base_architecture=metadata.get("creward.base_architecture", ""),
        base_signature=parsed("base_signature", []),
        axis_weights=parsed("axis_weights", {}),
        primary_axis=metadata.get("creward.primary_axis", ""),
        metadata=metadata,
    )
