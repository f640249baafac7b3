"""ComfyUI as the host of generation: putting a ComfyUI folder on ``sys.path`` and loading a
base model (MODEL, CLIP, VAE) through its own loader.

Importing this module does not import ComfyUI; its functions do.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..models.errors import CREwardError

logger = logging.getLogger(__name__)


def setup_comfyui(path: str | os.PathLike, cpu: bool = False) -> Path:
    """Put the ComfyUI folder ``path`` first on ``sys.path`` and configure it before any ``comfy`` import.

    ``--cpu`` mode is chosen when asked or when no CUDA GPU is present (ComfyUI's model management
    calls CUDA otherwise).
    """
    import torch

    root = Path(path).expanduser().resolve()
    if not (root / "comfy" / "model_management.py").is_file() or not (root / "main.py").is_file():
        raise CREwardError(f"--comfyui {path}: not a ComfyUI folder (expected main.py and comfy/ in it)")
    if "comfy" in sys.modules:
        loaded = Path(sys.modules["comfy"].__path__[0]).resolve().parent
        if loaded != root:
            raise CREwardError(f"ComfyUI from {loaded} is already imported; cannot switch to {root}")
        return root
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = bool(cpu or not torch.cuda.is_available())
    return root


@dataclass
class Base:
    model: object
    clip: object
    vae: object
    name: str
    path: Path


def checkpoint_path(checkpoint: str) -> Path:
    """A checkpoint file, or a name in ComfyUI's ``models/checkpoints`` folders (clear error otherwise)."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    import folder_paths

    found = folder_paths.get_full_path("checkpoints", checkpoint)
    if found is None:
        available = folder_paths.get_filename_list("checkpoints")
        raise CREwardError(
            f"--checkpoint {checkpoint}: no such file, nor a checkpoint in {', '.join(folder_paths.get_folder_paths('checkpoints'))} "
            f"(available: {', '.join(available[:20]) or 'none'})"
        )
    return Path(found)


def load_checkpoint(checkpoint: str, vae_file: str | os.PathLike | None = None) -> Base:
    """The checkpoint's MODEL, CLIP and VAE through ComfyUI's loader (``CheckpointLoaderSimple``);
    ``vae_file`` replaces the checkpoint's VAE (``VAELoader``)."""
    import comfy.sd
    import comfy.utils
    import folder_paths

    path = checkpoint_path(checkpoint)
    logger.info("loading %s with ComfyUI", path)
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
    except RuntimeError as error:
        raise CREwardError(f"ComfyUI could not load {path}: {error}") from error
    if vae_file:
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_file), safe_load=True))
    if vae is None:
        raise CREwardError(f"{path} holds no VAE; give one with --vae FILE")
    return Base(model, clip, vae, path.name, path)
