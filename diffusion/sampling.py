"""Sampling with ComfyUI exactly as its ``KSampler`` node does, for the training pool, the
held-out evaluation and creative sample acquisition.

Imports ComfyUI: only import this module where ``comfy`` is importable.
"""

from __future__ import annotations

import torch

import comfy.sample
import comfy.samplers

from ..models.errors import CREwardError
from .prompts import zero_conditioning


def empty_latent(model_patcher, vae, batch: int, width: int, height: int) -> torch.Tensor:
    """Zeros in the VAE's latent shape for ``width`` x ``height`` images (``EmptyLatentImage``)."""
    latent_format = model_patcher.get_model_object("latent_format")
    if latent_format.latent_dimensions != 2:
        raise CREwardError(
            f"{type(model_patcher.model).__name__} works on {latent_format.latent_dimensions}-D latents (video/audio); "
            "creative LoRAs support image models only"
        )
    factor = vae.spacial_compression_decode() if vae is not None else 8
    if width % factor or height % factor:
        raise CREwardError(f"width and height must be multiples of {factor} for this VAE, got {width}x{height}")
    latent = torch.zeros(batch, 4, height // factor, width // factor)
    return comfy.sample.fix_empty_latent_channels(model_patcher, latent)


def check_sampler(sampler_name: str, scheduler: str) -> None:
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise CREwardError(f"unknown sampler {sampler_name!r}; expected one of {', '.join(comfy.samplers.KSampler.SAMPLERS)}")
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise CREwardError(f"unknown scheduler {scheduler!r}; expected one of {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")


@torch.no_grad()
def sample_latents(
    model_patcher,
    vae,
    positive: list,
    negative: list | None,
    seed: int,
    batch: int,
    width: int,
    height: int,
    steps: int,
    cfg: float,
    sampler_name: str = "euler",
    scheduler: str = "normal",
) -> torch.Tensor:
    """``batch`` samples of one prompt, noise from ``seed`` as ``KSampler`` draws it (batch index i = i-th draw).

    Returns VAE latents (what ``VAEDecode`` takes) on the intermediate device.
    """
    check_sampler(sampler_name, scheduler)
    if negative is None:
        negative = zero_conditioning(positive)
    latent = empty_latent(model_patcher, vae, batch, width, height)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model_patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
        seed=seed, disable_pbar=True,
    )


@torch.no_grad()
def sample_latents_seeded(
    model_patcher,
    vae,
    positive: list,
    negative: list | None,
    seeds: list[int],
    width: int,
    height: int,
    steps: int,
    cfg: float,
    sampler_name: str = "euler",
    scheduler: str = "normal",
) -> torch.Tensor:
    """One sample per seed, in one batch; sample ``i`` equals ``KSampler`` run alone with ``seeds[i]``
    (exactly for samplers that add no noise while sampling, such as euler or dpmpp_2m)."""
    check_sampler(sampler_name, scheduler)
    if negative is None:
        negative = zero_conditioning(positive)
    latent = empty_latent(model_patcher, vae, len(seeds), width, height)
    noise = torch.cat([comfy.sample.prepare_noise(latent[:1], seed) for seed in seeds])
    return comfy.sample.sample(
        model_patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
        seed=seeds[0], disable_pbar=True,
    )


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents → ComfyUI IMAGE ``[B, H, W, 3]`` in [0, 1] (``VAEDecode``)."""
    images = vae.decode(latents)
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images
