"""Prompts for creative LoRAs and acquisition: reading lists, encoding with a ComfyUI CLIP.

Plain Python: ``encode_prompts`` takes ComfyUI's ``CLIP`` object but imports nothing from ComfyUI.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import torch

from ..models.errors import CREwardError


def parse_prompts(text: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    prompts = [line.strip() for line in text.splitlines()]
    return [prompt for prompt in prompts if prompt and not prompt.startswith("#")]


def read_prompts(prompts: Iterable[str] = (), files: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Prompts given directly plus those in text files (one per line), in order; at least one."""
    result = [prompt.strip() for prompt in prompts if prompt and prompt.strip()]
    for file in files:
        path = Path(file)
        try:
            result += parse_prompts(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise CREwardError(f"cannot read prompts file {path}: {error}") from error
        except UnicodeDecodeError as error:
            raise CREwardError(f"prompts file {path} is not UTF-8 text: {error}") from error
    if not result:
        raise CREwardError("no prompts: give --prompt TEXT or --prompts FILE (one prompt per line)")
    return result


def encode_prompts(clip, prompts: list[str]) -> list[list]:
    """Each prompt → ComfyUI CONDITIONING, exactly as ``CLIPTextEncode`` makes it."""
    if clip is None:
        raise CREwardError(
            "no CLIP (text encoder) to encode the prompts: the checkpoint has none; load one with a CLIP loader"
        )
    return [clip.encode_from_tokens_scheduled(clip.tokenize(prompt)) for prompt in prompts]


def zero_conditioning(conditioning: list) -> list:
    """An all-zero CONDITIONING shaped like ``conditioning`` (ComfyUI's ``ConditioningZeroOut``)."""
    zeroed = []
    for tensor, options in conditioning:
        options = dict(options)
        for key in ("pooled_output", "conditioning_lyrics"):
            if isinstance(options.get(key), torch.Tensor):
                options[key] = torch.zeros_like(options[key])
        zeroed.append([torch.zeros_like(tensor), options])
    return zeroed


def slug(text: str, length: int = 48) -> str:
    """A file-name-safe short form of a prompt."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return cleaned[:length].rstrip("_") or "prompt"
