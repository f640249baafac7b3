"""Steered sampling as ComfyUI's ``KSampler`` would run it: noise from the seed, the scheduler's
sigmas, ``comfy.sample.sample_custom`` with a ``SteeringSampler``; shared by the Creative KSampler
node and ``creward train acquire --steer``.

Imports ComfyUI: only import this module where ``comfy`` is importable.
"""

from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from .decoders import preview_decoder
from .reward import LatentReward, RewardSpec
from .steering_plan import SteeringPlan
from .steering_sampler import SteeringReport, SteeringSampler


def ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas ``KSampler`` uses (``denoise`` < 1 keeps the last ``steps`` of a longer schedule)."""
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        from ..models.errors import CREwardError

        raise CREwardError(f"scheduler {scheduler!r}: unknown; expected one of {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")
    sampling = model.get_model_object("model_sampling")
    discard = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    total = steps if denoise >= 0.9999 else int(steps / max(denoise, 1e-4))
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, total + (1 if discard else 0)).cpu()
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas[-(steps + 1):]


def reward_builder(scorer, spec: RewardSpec, decoder_choice: str, vae=None, decode_batch: int = 4,
                   before: Callable[[], None] | None = None, on_batch: Callable[[], None] | None = None):
    """``base_model -> LatentReward``: the preview decoder is chosen when sampling starts (TAESD
    depends on the model's latent format). ``before`` runs then too (e.g. load CREward to its device)."""

    def build(base_model) -> LatentReward:
        decoder = preview_decoder(decoder_choice, base_model.latent_format, vae,
                                  comfy.model_management.get_torch_device(), chunk=decode_batch)
        if before is not None:
            before()
        return LatentReward(scorer, spec, decoder, batch_size=decode_batch, on_batch=on_batch)

    return build


def creative_sample(model, positive, negative, latent: torch.Tensor, seed: int, steps: int, cfg: float,
                    sampler_name: str, scheduler: str, plan: SteeringPlan, reward, keep: int = 1, denoise: float = 1.0,
                    noise_mask: torch.Tensor | None = None, batch_index=None, callback=None,
                    disable_pbar: bool = True, keep_images: bool = False) -> tuple[torch.Tensor, SteeringReport]:
    """Steered samples of ``latent`` (VAE latents ``[B, C, h, w]``): returns the ``keep`` best per
    latent, latent-major and best first (VAE latents, what ``VAEDecode`` takes), and the report.

    Particle 0 of each latent uses the noise ``KSampler`` would draw for ``seed``. With
    ``keep_images`` the report also holds the returned samples as the preview decoder decoded them.
    """
    sampler = SteeringSampler(sampler_name, plan, reward, keep=keep, keep_images=keep_images)
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed, batch_index)
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                         noise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples, sampler.report


class SteeredGeneration:
    """One steered sample per seed, as ``diffusion.acquire.acquire_samples(make_latents=...)`` wants.

    With a ``plan`` (resample / prune), each seed's sample is the best of ``plan.particles``
    particles (``creative_sample`` with that seed: the Creative KSampler node on that seed gives
    the same); with ``guidance`` settings, the model is patched with reward guidance and sampled
    plainly. ``lineage`` collects one text per steered sample.
    """

    def __init__(self, model, vae, width: int, height: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                 reward, plan: SteeringPlan | None = None, guidance=None):
        from .guidance import guided_model

        if (plan is None) == (guidance is None):
            raise ValueError("give exactly one of plan and guidance")
        self.model, self.vae = model, vae
        self.size = (width, height)
        self.steps, self.cfg, self.sampler_name, self.scheduler = steps, cfg, sampler_name, scheduler
        self.plan, self.reward = plan, reward
        self.guided = guided_model(model, reward, guidance)[0] if guidance is not None else None
        self.guidance = guidance
        self.lineage: list[str] = []
        self.evaluations = 0

    def describe(self) -> dict:
        if self.plan is not None:
            return {"steer": self.plan.mode, "plan": self.plan.describe(), "settings": {
                key: value for key, value in self.plan.__dict__.items()}}
        return {"steer": "guide", "settings": dict(self.guidance.__dict__)}

    def __call__(self, positive: list, negative: list | None, seeds: list[int]) -> torch.Tensor:
        from .prompts import zero_conditioning
        from .sampling import empty_latent, sample_latents_seeded

        width, height = self.size
        if negative is None:
            negative = zero_conditioning(positive)
        if self.guided is not None:
            return sample_latents_seeded(self.guided, self.vae, positive, negative, seeds, width, height, self.steps,
                                         self.cfg, self.sampler_name, self.scheduler)
        results = []
        for seed in seeds:
            latent = empty_latent(self.model, self.vae, 1, width, height)
            samples, report = creative_sample(self.model, positive, negative, latent, seed, self.steps, self.cfg,
                                              self.sampler_name, self.scheduler, self.plan, self.reward)
            self.lineage.append(f"seed {seed}\n{report.lineage_text()}")
            self.evaluations += report.evaluations
            results.append(samples)
        return torch.cat(results)
