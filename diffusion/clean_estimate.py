"""The model's one-step clean estimate, computed inside ComfyUI's own sampling set-up.

``run_in_session`` hands a ``Session`` to a function while ComfyUI's ``CFGGuider`` has the model
loaded, its patches and weight wrappers applied and every conditioning processed for the
model (cross-attention, SDXL's pooled/size vectors, Flux guidance ...). It is the mechanism
ComfyUI's own ``TrainLoraNode`` uses: a ``comfy.samplers.Sampler`` whose ``sample`` runs the
training instead of a sampling loop. Through it, the one-step estimate uses ComfyUI's model
sampling (``noise_scaling`` to make ``x_t``, the model call, ``calculate_denoised``), so eps-,
v- and flow-prediction models all work unchanged.

Imports ComfyUI: only import this module where ``comfy`` is importable.
"""

from __future__ import annotations

from typing import Callable

import torch

import comfy.samplers


class Session:
    """What a function run inside ComfyUI's sampling set-up can do with the model."""

    def __init__(self, model_wrap, extra_args: dict):
        self.model_wrap = model_wrap
        self.extra_args = extra_args
        self.base_model = model_wrap.inner_model
        self.model_sampling = self.base_model.model_sampling

    @property
    def device(self) -> torch.device:
        return self.model_wrap.model_patcher.load_device

    def latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE latent → the model's latent space (scale/shift of the latent format)."""
        return self.base_model.process_latent_in(latent)

    def latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        """The model's latent space → VAE latent (what ``VAEDecode`` takes)."""
        return self.base_model.process_latent_out(latent)

    def sigma_at(self, percent: float) -> float:
        """Noise level at ``percent`` of the schedule (0 = pure noise, 1 = clean), clamped to the model's range."""
        sampling = self.model_sampling
        sigma = float(sampling.percent_to_sigma(float(percent)))
        return min(max(sigma, float(sampling.sigma_min)), float(sampling.sigma_max))

    def noisy(self, sigma: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """``x_t`` for each sample (ComfyUI's ``noise_scaling``; ``clean`` in the model's latent space)."""
        return self.model_sampling.noise_scaling(sigma, noise, clean, False)

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, cond_key: str) -> torch.Tensor:
        """The model's one-step clean estimate ``x0_hat`` (``calculate_denoised``), conditioned on ``cond_key``."""
        self.model_wrap.conds["positive"] = self.model_wrap.conds[cond_key]
        self.model_wrap.cfg = 1.0
        return self.model_wrap(x_t, sigma, **self.extra_args)


class _RunInside(comfy.samplers.Sampler):
    def __init__(self, body: Callable[[Session], object]):
        self.body = body
        self.result = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        self.result = self.body(Session(model_wrap, extra_args))
        return torch.zeros_like(noise)


def run_in_session(model_patcher, conds: dict[str, list], latent_shape: tuple[int, ...], body: Callable[[Session], object], seed: int = 0):
    """Run ``body(session)`` with ``model_patcher`` loaded and ``conds`` (``{key: CONDITIONING}``) processed.

    ``latent_shape`` is the batch shape used for memory estimates and the conditioning's
    default sizes. Returns what ``body`` returns.
    """
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.inner_set_conds(conds)
    sampling = model_patcher.get_model_object("model_sampling")
    sigmas = torch.tensor([float(sampling.sigma_max), 0.0])
    zeros = torch.zeros(latent_shape)
    runner = _RunInside(body)
    guider.sample(zeros, zeros.clone(), runner, sigmas, seed=seed, disable_pbar=True)
    return runner.result
