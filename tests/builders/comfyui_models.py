"""Weights for the node tests, written where a real ComfyUI reads them (nothing downloaded).

- :func:`install_creward_clip`: a tiny random CREward ``clip`` head in ``models/creward/`` and the
  tiny CLIP backbone of ``builders.clip`` in ``models/creward/backbones/clip-vit-large-patch14/``
  (where the loader's ``auto`` finds it), as a user lays them out.
- :func:`install_taesd`: a random TAESD in ``models/vae_approx/`` (loads through VAELoader as
  ``taesd``).
- :func:`install_sd15_checkpoint`: a checkpoint that ``CheckpointLoaderSimple`` detects as SD1.x:
  a one-level UNet (model_channels 320, context 768, about 15 M parameters), a full-size random
  CLIP-L text encoder (SD1.x's text encoder has a fixed architecture) and a TAESD as its VAE;
  fp16, about 290 MB. Needs ComfyUI importable (the ``comfy_inprocess`` fixture).

ComfyUI's own layers skip weight initialisation: every tensor is filled explicitly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import clip as clip_builder

HEAD_NAME = "creward_clip.safetensors"
BACKBONE_FOLDER = "clip-vit-large-patch14"
CHECKPOINT_NAME = "v1-5-pruned-emaonly-fp16.safetensors"


def write_clip_head(path: str | Path, seed: int = 0, feature_dim: int = clip_builder.FEATURE_DIM, spread: float = 4.0) -> Path:
    """A random head for the tiny clip backbone; ``spread`` scales the last layer so scores differ visibly."""
    from creward.models.head import build_head, save_head

    torch.manual_seed(seed)
    head = build_head(feature_dim)
    with torch.no_grad():
        head[-1].weight.mul_(spread)
    return save_head(head, path, "clip")


def install_creward_clip(models_dir: str | Path, seed: int = 0, head_name: str = HEAD_NAME, vision: dict | None = None) -> dict:
    """Head in ``models/creward/<head_name>``, backbone in ``models/creward/backbones/clip-vit-large-patch14``.

    Returns ``{"head": path, "backbone": path}`` for ``creward.models.load`` (the core) on the same files.
    """
    models_dir = Path(models_dir)
    backbone = models_dir / "creward" / "backbones" / BACKBONE_FOLDER
    if not (backbone / "config.json").is_file():
        clip_builder.build(backbone, "hub", seed=seed, vision=vision)
    width = (vision or {}).get("hidden_size", clip_builder.FEATURE_DIM)
    head = write_clip_head(models_dir / "creward" / head_name, seed=seed, feature_dim=width)
    return {"head": head, "backbone": backbone}


def install_taesd(models_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    from .comfy_diffusion import taesd_files

    return taesd_files(Path(models_dir) / "vae_approx", seed=seed)


def install_sd15_checkpoint(models_dir: str | Path, seed: int = 0, name: str = CHECKPOINT_NAME) -> Path:
    """A tiny SD1.x checkpoint in ``models/checkpoints/<name>`` (see the module docstring)."""
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    from .comfy_diffusion import detectable_sd15_unet_state_dict, fill_weights

    path = Path(models_dir) / "checkpoints" / name
    if path.is_file():
        return path
    state = {f"model.diffusion_model.{key}": value for key, value in detectable_sd15_unet_state_dict(seed).items()}
    text = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    fill_weights(text.transformer, seed + 1)
    for key, value in text.transformer.state_dict().items():
        state[f"cond_stage_model.transformer.{key}"] = value.half().contiguous()
    del text
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    fill_weights(taesd, seed + 2, gain=1.4)
    for key, value in taesd.state_dict().items():
        if key.startswith(("taesd_encoder.", "taesd_decoder.")):
            state[f"first_stage_model.{key}"] = value.half().contiguous()
    state["first_stage_model.vae_scale"] = torch.tensor(0.18215)
    state["first_stage_model.vae_shift"] = torch.tensor(0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial))
    partial.rename(path)
    return path
