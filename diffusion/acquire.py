"""Acquisition: generate, score and keep the most (and least) creative samples (``creward train acquire``).

For each prompt, ``samples_per_prompt`` images are generated with a ComfyUI checkpoint (one seed
per sample, so any of them can be remade with a ``KSampler`` on that seed), decoded, scored by
CREward, and the top-k (optionally bottom-k) per axis are kept. The folder is meant to be browsed
(design inspiration) and reused (a training pool for creative LoRAs)::

    <out>/index.html                 every prompt and axis, top and bottom rows, with scores
    <out>/contact_sheet.png          one row per prompt and axis: top-k | bottom-k thumbnails
    <out>/manifest.json              settings, prompts, every sample (file, seed, scores), selections
    <out>/latents.safetensors        every sample's VAE latent (``latents``, ``prompt_index``, ``seed``)
    <out>/samples/pNNN_<prompt>/sSEED.png         every sample (PNG text: prompt, seed, scores)
    <out>/top/<axis>/pNNN_rR_sSEED.png            the selections (hard links to the samples)
    <out>/bottom/<axis>/...

``creward train lora --pool <out> --pool-axis texture`` trains from the top-k latents of an axis.
The generation needs ComfyUI (``--comfyui PATH``); reading a folder back does not.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..models.errors import CREwardError
from .contact_sheet import Row, Tile, contact_sheet
from .prompts import slug

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATENTS = "latents.safetensors"
CONTACT_SHEET = "contact_sheet.png"
INDEX = "index.html"
FORMAT = "creward-acquire"
FORMAT_VERSION = 1


@dataclass
class AcquireSettings:
    """How samples are made and kept. See ``acquire_samples``."""

    samples_per_prompt: int = 16
    top_k: int = 4
    bottom_k: int = 0
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    batch_size: int = 4

    def __post_init__(self):
        checks = [
            (self.samples_per_prompt > 0, f"`samples_per_prompt` should be positive, got {self.samples_per_prompt}"),
            (self.top_k >= 0, f"`top_k` should be >= 0, got {self.top_k}"),
            (self.bottom_k >= 0, f"`bottom_k` should be >= 0, got {self.bottom_k}"),
            (self.top_k + self.bottom_k > 0, "`top_k` and `bottom_k` are both 0: nothing would be kept"),
            (self.steps > 0, f"`steps` should be positive, got {self.steps}"),
            (self.batch_size > 0, f"`batch_size` should be positive, got {self.batch_size}"),
            (self.width > 0 and self.height > 0, f"width and height should be positive, got {self.width}x{self.height}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CREwardError(message)

    def seed_of(self, prompt_index: int, sample_index: int) -> int:
        return self.seed + prompt_index * self.samples_per_prompt + sample_index


@dataclass
class AcquireResult:
    folder: Path
    manifest: dict
    contact_sheet: object  # PIL image
    top_images: torch.Tensor  # ComfyUI IMAGE [K, H, W, 3]: every prompt's top-k of every axis (from the PNGs)
    scores: torch.Tensor  # [N, axes]
    selections: dict = field(default_factory=dict)


def _rank(scores: torch.Tensor, k: int, largest: bool) -> list[int]:
    k = min(k, scores.numel())
    if k == 0:
        return []
    order = torch.argsort(scores, descending=largest, stable=True)
    return order[:k].tolist()


def _save_png(image: torch.Tensor, path: Path, text: dict[str, str]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    array = (image.clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, pnginfo=info, compress_level=4)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def acquire_samples(
    model,
    vae,
    positive: Sequence[list],
    prompts: Sequence[str],
    score_images: Callable[[torch.Tensor], torch.Tensor],
    axes: Sequence[str],
    out_dir: str | os.PathLike,
    settings: AcquireSettings,
    negative: list | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    checkpoint_name: str = "",
    head_name: str = "",
    make_latents: Callable[[list, list | None, list[int]], torch.Tensor] | None = None,
    generation: dict | None = None,
) -> AcquireResult:
    """Generate, score and select; write the browsable folder ``out_dir``.

    Args:
        model, vae: ComfyUI MODEL and VAE.
        positive: one CONDITIONING per prompt; ``prompts`` their texts.
        score_images: ComfyUI IMAGE ``[B, H, W, 3]`` → scores ``[B, len(axes)]``
            (``CREward.score(..., channels_last=True)`` or ``ManagedCREward.score_images``).
        axes: the score columns' axis names.
        out_dir: the folder to write (created; files of an earlier run there are replaced).
        settings: ``AcquireSettings``.
        negative: CONDITIONING for CFG (default: zeroed prompt conditioning).
        on_progress: ``(samples done, total)`` after each batch.
        make_latents: ``(conditioning, negative, seeds) -> VAE latents [len(seeds), ...]``, one sample
            per seed; default plain sampling (``sample_latents_seeded``). Steered generation
            (``creward train acquire --steer``) passes its own.
        generation: how the samples were made (steering settings), recorded in the manifest.

    Returns:
        ``AcquireResult`` with the manifest, the contact sheet and the top images.
    """
    from safetensors.torch import save_file

    from ..models.output_files import write_text_atomically
    from .sampling import decode, sample_latents_seeded

    if len(positive) != len(prompts):
        raise CREwardError(f"{len(prompts)} prompts but {len(positive)} conditionings")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("samples", "top", "bottom"):
        shutil.rmtree(out / stale, ignore_errors=True)
    total = len(prompts) * settings.samples_per_prompt
    started = time.monotonic()
    samples, all_latents, all_scores = [], [], []
    done = 0
    for p, (cond, prompt) in enumerate(zip(positive, prompts)):
        folder = out / "samples" / f"p{p:03d}_{slug(prompt, 32)}"
        for start in range(0, settings.samples_per_prompt, settings.batch_size):
            seeds = [settings.seed_of(p, j) for j in range(start, min(start + settings.batch_size, settings.samples_per_prompt))]
            if make_latents is not None:
                latents = make_latents(cond, negative, seeds)
            else:
                latents = sample_latents_seeded(
                    model, vae, cond, negative, seeds, settings.width, settings.height, settings.steps, settings.cfg,
                    settings.sampler_name, settings.scheduler,
                )
            images = decode(vae, latents)
            scores = score_images(images).float().cpu()
            for i, seed in enumerate(seeds):
                sample_id = len(samples)
                path = folder / f"s{seed}.png"
                row = {axis: round(float(value), 6) for axis, value in zip(axes, scores[i].tolist())}
                _save_png(images[i], path, {"prompt": prompt, "seed": str(seed), "creward": json.dumps(row)})
                samples.append({"id": sample_id, "prompt_index": p, "seed": seed,
                                "file": str(path.relative_to(out)), "scores": row})
            all_latents.append(latents.float().cpu())
            all_scores.append(scores)
            done += len(seeds)
            if on_progress is not None:
                on_progress(done, total)
        logger.info("acquire: prompt %d/%d done (%d samples, %.1f s so far)", p + 1, len(prompts), done, time.monotonic() - started)

    scores = torch.cat(all_scores)
    latents = torch.cat(all_latents)
    prompt_index = torch.tensor([s["prompt_index"] for s in samples])
    selections: dict[str, dict[str, dict[str, list[int]]]] = {}
    rows, top_ids = [], []
    kept: dict[int, object] = {}  # sample id -> PIL image, read back from its PNG (only the kept ones)

    def picture(sample_id: int):
        if sample_id not in kept:
            from PIL import Image

            with Image.open(out / samples[sample_id]["file"]) as image:
                kept[sample_id] = image.convert("RGB")
        return kept[sample_id]

    for p, prompt in enumerate(prompts):
        members = (prompt_index == p).nonzero().flatten()
        selections[str(p)] = {}
        for a, axis in enumerate(axes):
            column = scores[members, a]
            top = [int(members[i]) for i in _rank(column, settings.top_k, True)]
            bottom = [int(members[i]) for i in _rank(column, settings.bottom_k, False)]
            selections[str(p)][axis] = {"top": top, "bottom": bottom}
            for kind, chosen in (("top", top), ("bottom", bottom)):
                for rank, sample_id in enumerate(chosen, start=1):
                    sample = samples[sample_id]
                    _link(out / sample["file"], out / kind / axis / f"p{p:03d}_r{rank:02d}_s{sample['seed']}.png")
            top_ids += top
            rows.append(Row(
                label=f"{axis}: {prompt}",
                groups=[
                    [Tile(picture(i), f"#{r} {samples[i]['scores'][axis]:.3f}") for r, i in enumerate(top, 1)],
                    [Tile(picture(i), f"-{r} {samples[i]['scores'][axis]:.3f}") for r, i in enumerate(bottom, 1)],
                ],
            ))
    sheet = contact_sheet(rows, title=f"CREward acquisition: top {settings.top_k}"
                          + (f" | bottom {settings.bottom_k}" if settings.bottom_k else "") + " per prompt and axis")
    sheet.save(out / CONTACT_SHEET)
    save_file({"latents": latents.contiguous(), "prompt_index": prompt_index,
               "seed": torch.tensor([s["seed"] for s in samples], dtype=torch.int64)}, str(out / LATENTS))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "checkpoint": checkpoint_name,
        "head": head_name,
        "axes": list(axes),
        "prompts": list(prompts),
        "settings": settings.__dict__,
        "generation": generation or {"steer": "none"},
        "samples": samples,
        "selections": selections,
        "seconds": round(time.monotonic() - started, 2),
    }
    write_text_atomically(out / INDEX, _index_html(manifest))
    write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    top_images = (torch.stack([torch.from_numpy(np.asarray(picture(i), dtype=np.float32) / 255.0) for i in top_ids])
                  if top_ids else torch.zeros(0, settings.height, settings.width, 3))
    logger.info("acquire: %d samples scored, selections in %s (%.1f s)", len(samples), out, manifest["seconds"])
    return AcquireResult(out, manifest, sheet, top_images, scores, selections)


def _index_html(manifest: dict) -> str:
    samples = manifest["samples"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>CREward acquisition</title>",
        "<style>body{font-family:sans-serif;margin:16px} img{width:160px;display:block} figure{display:inline-block;"
        "margin:4px;font-size:12px} h3{margin:18px 0 4px} .bottom{opacity:.8}</style>",
        f"<h1>CREward acquisition</h1><p>checkpoint {html.escape(manifest['checkpoint'] or '?')}, head "
        f"{html.escape(manifest['head'] or '?')}, settings {html.escape(json.dumps(manifest['settings']))}</p>",
        f"<p><a href='{CONTACT_SHEET}'>contact sheet</a> · <a href='{MANIFEST}'>manifest</a></p>",
    ]
    for p, prompt in enumerate(manifest["prompts"]):
        parts.append(f"<h2>{html.escape(prompt)}</h2>")
        for axis in manifest["axes"]:
            chosen = manifest["selections"][str(p)][axis]
            parts.append(f"<h3>{axis}</h3>")
            for kind in ("top", "bottom"):
                for rank, sample_id in enumerate(chosen[kind], start=1):
                    sample = samples[sample_id]
                    scores = ", ".join(f"{a[:3]} {v:.3f}" for a, v in sample["scores"].items())
                    parts.append(
                        f"<figure class='{kind}'><img src='{html.escape(sample['file'])}' loading='lazy'>"
                        f"<figcaption>{kind} {rank} · seed {sample['seed']}<br>{html.escape(scores)}</figcaption></figure>"
                    )
    return "\n".join(parts) + "\n"


def read_acquired_pool(folder: str | os.PathLike, axis: str, which: str = "top") -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The latents an acquisition kept for ``axis`` (``which``: top or bottom).

    Returns ``(latents [K, C, h, w], prompts, prompt_index [K])``; plain Python, no ComfyUI.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise CREwardError(f"{folder} is not a `creward train acquire` folder ({MANIFEST}: {error})") from error
    if manifest.get("format") != FORMAT:
        raise CREwardError(f"{folder / MANIFEST} is not an acquisition manifest (format {manifest.get('format')!r})")
    if axis not in manifest["axes"]:
        raise CREwardError(f"{folder} has no {axis!r} selections; axes: {', '.join(manifest['axes'])}")
    if which not in ("top", "bottom"):
        raise CREwardError(f"which must be 'top' or 'bottom', got {which!r}")
    ids = [i for p in sorted(manifest["selections"], key=int) for i in manifest["selections"][p][axis][which]]
    if not ids:
        raise CREwardError(f"{folder} kept no {which} samples for {axis}")
    tensors = load_file(str(folder / LATENTS))
    index = torch.tensor(ids)
    return tensors["latents"][index], list(manifest["prompts"]), tensors["prompt_index"][index]
