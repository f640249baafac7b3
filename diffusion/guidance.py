"""Reward guidance: move each step's clean estimate x̂0 along the gradient of the CREward reward.

A post-CFG function (``ModelPatcher.set_model_sampler_post_cfg_function``): after CFG, for the
steps between ``start_percent`` and ``end_percent`` (and every k-th of them), x̂0 is decoded
differentiably (TAESD by default), scored, and replaced by

    x̂0 + scale * w(σ) * clip(normalize(∇_x̂0 reward(decode(x̂0))))

(universal guidance / FreeDoM-style, on the denoised prediction). By default the gradient is
normalised per sample to unit root-mean-square, so ``scale`` is the size of each guided step in
the model's latent units whatever the reward's gradient magnitude (which differs by orders of
magnitude between heads, decoders and image sizes); with ``normalize`` off the raw gradient is
used, clipped to ``max_grad_rms``. Every sampler works with it,
because it only changes the denoised prediction that the sampler's own maths then uses.

ComfyUI runs nodes under ``torch.inference_mode()``: the gradient is computed with inference mode
left explicitly, on a clone of the inference tensor, with the decoder's and CREward's inference
weights copied once (``models.autograd.make_autograd_ready``). Scale 0 returns the prediction
unchanged (bit-identical to the unpatched model).

Imports nothing from ComfyUI at module level.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..models.autograd import frozen, make_autograd_ready
from ..models.errors import CREwardError
from .reward import LatentReward

logger = logging.getLogger(__name__)

WEIGHTINGS = ("noise fraction", "constant", "sigma")


@dataclass(frozen=True)
class GuidanceSettings:
    """How strongly and when the reward's gradient moves x̂0.

    Attributes:
        scale: step size of the update (0 = off: the model's prediction is returned unchanged).
        start_percent, end_percent: the part of the schedule (0 = first step, 1 = clean) with guidance.
        every: guide every k-th step of that part (1 = each).
        weighting: ``noise fraction`` w = σ²/(σ²+1) (strong early, fading out; the default),
            ``constant`` w = 1, ``sigma`` w = σ.
        max_grad_rms: the gradient is scaled down per sample so that its root-mean-square over
            the latent's elements is at most this (clipping; 0 = no clipping).
        normalize: rescale each sample's gradient to unit root-mean-square first (the default), so
            that ``scale`` is the step size in latent units.
    """

    scale: float = 0.1
    start_percent: float = 0.0
    end_percent: float = 0.8
    every: int = 1
    weighting: str = "noise fraction"
    max_grad_rms: float = 1.0
    normalize: bool = True

    def __post_init__(self):
        checks = [
            (math.isfinite(self.scale), f"`scale` should be a finite number, got {self.scale}"),
            (0.0 <= self.start_percent <= 1.0, f"`start_percent` should be in [0, 1], got {self.start_percent}"),
            (0.0 <= self.end_percent <= 1.0, f"`end_percent` should be in [0, 1], got {self.end_percent}"),
            (self.start_percent <= self.end_percent,
             f"`start_percent` ({self.start_percent}) should not be after `end_percent` ({self.end_percent})"),
            (self.every >= 1, f"`every` should be positive, got {self.every}"),
            (self.weighting in WEIGHTINGS, f"`weighting` {self.weighting!r}: expected one of {', '.join(WEIGHTINGS)}"),
            (self.max_grad_rms >= 0, f"`max_grad_rms` should be >= 0, got {self.max_grad_rms}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CREwardError(message)

    def weight(self, sigma: float) -> float:
        if self.weighting == "constant":
            return 1.0
        if self.weighting == "sigma":
            return sigma
        return sigma * sigma / (sigma * sigma + 1.0)


def clip_rms(gradient: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Scale each sample's gradient down to a root-mean-square of at most ``max_rms`` (0 = as is)."""
    if max_rms <= 0:
        return gradient
    rms = gradient.flatten(1).pow(2).mean(dim=1).sqrt()
    factor = torch.clamp(max_rms / (rms + 1e-12), max=1.0)
    return gradient * factor.view(-1, *([1] * (gradient.ndim - 1)))


class RewardGuidance:
    """The post-CFG function. ``reward`` is a ``LatentReward`` or ``reward(base_model) -> LatentReward``
    (built on first use: the preview decoder depends on the model's latent format).

    ``steps_guided`` and ``last_gradient_norm`` say what it did (tests, logs).
    """

    def __init__(self, reward: LatentReward | Callable, settings: GuidanceSettings):
        self.settings = settings
        self._reward = reward
        self._ready = False
        self.steps_guided = 0
        self.last_gradient_norm = 0.0

    def reward_for(self, base_model) -> LatentReward:
        if not isinstance(self._reward, LatentReward):
            self._reward = self._reward(base_model)
        if not self._ready:
            make_autograd_ready(*_modules(self._reward))
            self._ready = True
        return self._reward

    def active(self, sigma: float, model_sampling, sample_sigmas: torch.Tensor | None) -> bool:
        s = self.settings
        high = float(model_sampling.percent_to_sigma(s.start_percent))
        low = float(model_sampling.percent_to_sigma(s.end_percent))
        if not (low - 1e-6 * max(1.0, abs(low)) <= sigma <= high + 1e-6 * max(1.0, abs(high))):
            return False
        if s.every == 1 or sample_sigmas is None:
            return True
        steps = sample_sigmas.flatten().float().cpu()
        in_range = [i for i, value in enumerate(steps[:-1].tolist()) if low - 1e-6 <= value <= high + 1e-6]
        index = int(torch.argmin((steps - sigma).abs()))
        return index in in_range and in_range.index(index) % s.every == 0

    def _first_step(self, sigma: float, model_sampling, sample_sigmas) -> bool:
        """Whether ``sigma`` is the first guided step of this sampling run (for one log line per run)."""
        if sample_sigmas is None:
            return self.steps_guided == 1
        steps = sample_sigmas.flatten().float().cpu()[:-1].tolist()
        guided = [value for value in steps if self.active(value, model_sampling, sample_sigmas)]
        return bool(guided) and abs(guided[0] - sigma) <= 1e-6 * max(1.0, abs(sigma))

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        if self.settings.scale == 0:
            return denoised
        base = args["model"]
        sigma = float(args["sigma"].flatten()[0])
        sample_sigmas = (args.get("model_options") or {}).get("transformer_options", {}).get("sample_sigmas")
        if not self.active(sigma, base.model_sampling, sample_sigmas):
            return denoised
        reward = self.reward_for(base)
        with torch.inference_mode(False), torch.enable_grad():
            x0 = denoised.detach().clone().float().requires_grad_(True)
            with frozen(*_modules(reward)):
                value = reward.value_with_grad(base.process_latent_out(x0))
                (gradient,) = torch.autograd.grad(value.sum(), x0)
        gradient = gradient.detach()
        self.steps_guided += 1
        self.last_gradient_norm = float(gradient.flatten(1).norm(dim=1).mean())
        if self._first_step(sigma, base.model_sampling, sample_sigmas):
            logger.info("CREward guidance: %s, scale %g, %s weighting; first guided step at sigma %.4g, gradient norm %.3g",
                        reward.spec.describe(), self.settings.scale, self.settings.weighting, sigma, self.last_gradient_norm)
        if self.settings.normalize:
            rms = gradient.flatten(1).pow(2).mean(dim=1).sqrt()
            gradient = gradient / (rms + 1e-12).view(-1, *([1] * (gradient.ndim - 1)))
        gradient = clip_rms(gradient, self.settings.max_grad_rms)
        step = self.settings.scale * self.settings.weight(sigma)
        return (denoised.float() + step * gradient.to(denoised.device)).to(denoised.dtype)


def _modules(reward: LatentReward) -> list[torch.nn.Module]:
    """The decoder's and the scorer's modules (made autograd-ready once, frozen during each backward)."""
    module = reward.decoder.module
    modules = [getattr(module, "first_stage_model", module)]
    if isinstance(reward.scorer, torch.nn.Module):
        modules.append(reward.scorer)
    return modules


def guided_model(model_patcher, reward: LatentReward | Callable, settings: GuidanceSettings):
    """A clone of ``model_patcher`` with reward guidance as a post-CFG function (``RewardGuidance``)."""
    patched = model_patcher.clone()
    guidance = RewardGuidance(reward, settings)
    patched.set_model_sampler_post_cfg_function(guidance)
    return patched, guidance
