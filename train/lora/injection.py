"""Trainable LoRAs on a ComfyUI model, through ComfyUI's own weight adapters.

Why ComfyUI's weight wrappers and not peft: peft replaces ``nn.Linear`` modules with its own
wrapper modules, but ComfyUI's layers are ``comfy.ops`` subclasses that cast, offload
(low-VRAM) and patch their weights themselves; replacing them breaks that machinery, and peft's
``base_model.model.…lora_A.default.weight`` keys would need renaming for every architecture.
ComfyUI instead lets a ``ModelPatcher`` carry *weight wrappers* (``add_weight_wrapper``) that
every ``comfy.ops`` layer applies to its weight on each forward. We attach ComfyUI's
``comfy.weight_adapter.lora.LoraDiff`` (``w + alpha / rank * up @ down``), the same approach as
ComfyUI's ``TrainLoraNode``, so the model stays intact (any architecture ComfyUI loads, any
dtype, low-VRAM offloading) and the math is the one ``LoraLoader`` applies to the saved file.

Imports ComfyUI: only import this module where ``comfy`` is importable.
"""

from __future__ import annotations

import logging
import math

import torch

from comfy.weight_adapter.lora import LoraDiff

from .config import LoraConfigError

logger = logging.getLogger(__name__)

ATTENTION_MARKERS = ("attn", "attention")


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)


def _is_conv(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.conv._ConvNd)


def select_modules(model_patcher, targets: str) -> list[tuple[str, torch.nn.Module]]:
    """Layers of the diffusion model that get a LoRA, as ``(full name, module)``.

    Only ``comfy.ops`` layers (those with ``weight_function``) qualify: ComfyUI applies weight
    wrappers on them. ``attention``: linear layers whose path has an attention block
    (``attn1``/``attn2`` in UNets, ``img_attn``/``txt_attn``/``attn`` in DiTs); ``linear``:
    every linear layer; ``all``: linear and convolution layers.
    """
    chosen = []
    for name, module in model_patcher.model.named_modules():
        if not name.startswith("diffusion_model.") or not hasattr(module, "weight_function"):
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim < 2:
            continue
        if targets == "all":
            ok = _is_linear(module) or _is_conv(module)
        elif targets == "linear":
            ok = _is_linear(module)
        else:
            ok = _is_linear(module) and any(marker in name.lower() for marker in ATTENTION_MARKERS)
        if ok:
            chosen.append((name, module))
    if not chosen:
        raise LoraConfigError(
            f"no layer of this {type(model_patcher.model).__name__} model matches targets={targets!r}; "
            f"try targets='linear' or 'all'"
        )
    return chosen


class LoraSet:
    """The trainable LoRAs of one run: ``{module name: LoraDiff}`` plus the base weight shapes."""

    def __init__(self, adapters: dict[str, LoraDiff], weight_shapes: dict[str, torch.Size], rank: int, alpha: float):
        self.adapters = adapters
        self.weight_shapes = weight_shapes
        self.rank = rank
        self.alpha = alpha

    @classmethod
    def create(cls, model_patcher, targets: str, rank: int, alpha: float, seed: int, device=None) -> "LoraSet":
        """New LoRAs: ``down`` Kaiming-uniform from ``seed``, ``up`` zero (the update starts at exactly 0)."""
        generator = torch.Generator().manual_seed(seed)
        adapters, shapes = {}, {}
        for name, module in select_modules(model_patcher, targets):
            weight = module.weight
            out_dim, in_dim = weight.shape[0], weight.shape[1:].numel()
            effective_rank = min(rank, out_dim, in_dim)
            bound = 1.0 / math.sqrt(in_dim)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear's default
            down = (torch.rand(effective_rank, in_dim, generator=generator) * 2 - 1) * bound
            up = torch.zeros(out_dim, effective_rank)
            adapters[name] = _lora_diff(up, down, alpha * effective_rank / rank)
            shapes[name] = weight.shape
        lora_set = cls(adapters, shapes, rank, alpha)
        if device is not None:
            lora_set.to(device)
        logger.info("LoRA rank %d on %d layers (%s), %d trainable parameters", rank, len(adapters), targets, lora_set.num_parameters())
        return lora_set

    def load_factors(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]], source: str) -> None:
        """Copy saved ``(up, down, alpha)`` factors in (resume); keys and shapes must match exactly."""
        missing, unexpected = sorted(set(self.adapters) - set(factors)), sorted(set(factors) - set(self.adapters))
        if missing or unexpected:
            raise LoraConfigError(
                f"{source} does not fit this model's LoRA layers: missing {missing[:4]}, unexpected {unexpected[:4]} "
                f"(was it trained on another model or with other targets?)"
            )
        with torch.no_grad():
            for name, adapter in self.adapters.items():
                up, down, _ = factors[name]
                if up.shape != adapter.lora_up.weight.shape or down.shape != adapter.lora_down.weight.shape:
                    raise LoraConfigError(
                        f"{source}: {name} has factors {tuple(up.shape)} x {tuple(down.shape)}, expected "
                        f"{tuple(adapter.lora_up.weight.shape)} x {tuple(adapter.lora_down.weight.shape)} (another rank?)"
                    )
                adapter.lora_up.weight.copy_(up)
                adapter.lora_down.weight.copy_(down)

    def attach(self, model_patcher) -> None:
        """Register every LoRA as a weight wrapper of ``model_patcher`` (a clone the caller owns)."""
        for name, adapter in self.adapters.items():
            model_patcher.add_weight_wrapper(f"{name}.weight", adapter)

    def parameters(self) -> list[torch.nn.Parameter]:
        params = []
        for adapter in self.adapters.values():
            params += [adapter.lora_up.weight, adapter.lora_down.weight]
        return params

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def to(self, device) -> "LoraSet":
        for adapter in self.adapters.values():
            adapter.to(device=device, dtype=torch.float32)
        return self

    def requires_grad_(self, flag: bool) -> "LoraSet":
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """``{module: (up, down, alpha)}`` with ``alpha`` such that ``alpha / rank_i`` is the scale used."""
        return {
            name: (adapter.lora_up.weight, adapter.lora_down.weight, float(adapter.alpha))
            for name, adapter in self.adapters.items()
        }


def _lora_diff(up: torch.Tensor, down: torch.Tensor, alpha: float) -> LoraDiff:
    adapter = LoraDiff((up, down, alpha, None, None, None))
    adapter.to(torch.float32)
    adapter.lora_up.weight.requires_grad_(True)
    adapter.lora_down.weight.requires_grad_(True)
    return adapter
