"""Choosing the device and compute dtype at call time (never at import time)."""

from __future__ import annotations

import torch

from .errors import CREwardError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else Apple MPS, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise CREwardError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CREwardError(f"device {device!r} was requested but CUDA is not available on this machine")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` → float32 on CPU; bfloat16 on CUDA GPUs that support it, else float16; float16 on MPS."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise CREwardError(f"unknown dtype {dtype!r}; expected auto, {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bf16"`` (the names ``--dtype`` and the loader node take)."""
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype).replace("torch.", ""))


def precision_note(dtype: torch.dtype, fp32_hint: str = "dtype fp32") -> str:
    """The precision in use, for people: fp32 is the official code's; anything else says how to get it."""
    if dtype == torch.float32:
        return "fp32 (the official precision)"
    return f"{dtype_name(dtype)} (faster than fp32; scores differ slightly from the official fp32 ones, which {fp32_hint} gives)"
