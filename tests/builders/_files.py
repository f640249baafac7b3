"""Writing the builders' random weights the way the libraries (and users) do."""

from __future__ import annotations

from pathlib import Path

import torch


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    """``state`` as one safetensors file (folders created), with transformers' ``format: pt`` metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, str(path), metadata={"format": "pt"})
    return path


def save_vision_model(vision_model_class, vision_config, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """A transformers vision-only model (``CLIPVisionModel``, ``SiglipVisionModel``) holding ``state``
    (keys relative to its vision transformer), written with ``save_pretrained``; returns the folder."""
    vision_model = vision_model_class(vision_config).eval()
    # transformers 4 nests the transformer as .vision_model; 5 holds it directly
    getattr(vision_model, "vision_model", vision_model).load_state_dict(state, strict=True)
    vision_model.save_pretrained(folder)
    return folder
