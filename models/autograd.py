"""Autograd on modules that were loaded under ``torch.inference_mode()`` (as ComfyUI loads every
model), and freezing modules for the duration of a backward pass. Plain PyTorch.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


def make_autograd_ready(*modules: torch.nn.Module | None) -> int:
    """Replace parameters and buffers created in inference mode by normal copies, in place.

    ComfyUI runs every node under ``torch.inference_mode()``, so a checkpoint loaded by its
    loader nodes holds inference tensors, which autograd refuses to save for backward. The copies
    hold the same values and ``requires_grad`` flags (tied tensors stay tied); ComfyUI itself swaps parameters the same way
    when it patches weights. Returns how many tensors were copied.
    """
    replaced: dict[int, torch.Tensor] = {}
    with torch.inference_mode(False):
        for module in modules:
            if module is None:
                continue
            for submodule in module.modules():
                for name, parameter in list(submodule._parameters.items()):
                    if parameter is not None and parameter.is_inference():
                        if id(parameter) not in replaced:
                            replaced[id(parameter)] = torch.nn.Parameter(parameter.clone(), requires_grad=parameter.requires_grad)
                        submodule._parameters[name] = replaced[id(parameter)]
                for name, buffer in list(submodule._buffers.items()):
                    if buffer is not None and buffer.is_inference():
                        if id(buffer) not in replaced:
                            replaced[id(buffer)] = buffer.clone()
                        submodule._buffers[name] = replaced[id(buffer)]
    if replaced:
        logger.info("copied %d inference-mode tensors so that autograd can use them", len(replaced))
    return len(replaced)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module | None):
    """``requires_grad_(False)`` on ``modules`` for the duration; the previous flags come back after."""
    saved = []
    try:
        for module in modules:
            if module is None:
                continue
            for parameter in module.parameters():
                saved.append((parameter, parameter.requires_grad))
                parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)
