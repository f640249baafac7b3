"""Running our own code inside ComfyUI's sampling set-up, and the differentiable pieces we need there.

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

import contextlib
import logging
from typing import Callable

import torch
import torch.utils.checkpoint

import comfy.samplers

logger = logging.getLogger(__name__)


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


def decode_differentiable(vae, latent: torch.Tensor) -> torch.Tensor:
    """VAE latent ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1], keeping the autograd graph.

    ``comfy.sd.VAE.decode`` would batch, tile on OOM and copy into a fresh buffer; here the
    decoder runs directly (same ``process_output`` mapping to [0, 1]).
    """
    z = latent.to(device=vae.device, dtype=vae.vae_dtype)
    images = vae.process_output(vae.first_stage_model.decode(z).float())
    if images.ndim == 5:  # video VAEs: first frame
        images = images[:, :, 0]
    return images


# -- gradient checkpointing ------------------------------------------------------------------
def _checkpoint_units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Outermost submodules that are not plain containers (ComfyUI's ``TrainLoraNode`` recipe)."""
    units = []
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)):
            units += _checkpoint_units(child)
        else:
            units.append(child)
    return units


@contextlib.contextmanager
def gradient_checkpointing(*modules: torch.nn.Module | None):
    """Recompute the blocks of ``modules`` during backward instead of storing their activations."""
    patched = []
    try:
        for module in modules:
            if module is None:
                continue
            for unit in _checkpoint_units(module):
                if "forward" in unit.__dict__:  # already patched by someone else: leave it
                    continue
                original = unit.forward

                def checkpointed(*args, _original=original, **kwargs):
                    if not torch.is_grad_enabled():
                        return _original(*args, **kwargs)
                    return torch.utils.checkpoint.checkpoint(lambda a, k: _original(*a, **k), args, kwargs, use_reentrant=False)

                unit.forward = checkpointed
                patched.append(unit)
        yield len(patched)
    finally:
        for unit in patched:
            unit.__dict__.pop("forward", None)


# -- autograd on models loaded by ComfyUI ------------------------------------------------------
def make_autograd_ready(*modules: torch.nn.Module | None) -> int:
    """Replace parameters and buffers created in inference mode by normal copies, in place.

    ComfyUI runs every node under ``torch.inference_mode()``, so a checkpoint loaded by its
    loader nodes holds inference tensors, which autograd refuses to save for backward. The copies
    hold the same values (tied tensors stay tied); ComfyUI itself swaps parameters the same way
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
                            replaced[id(parameter)] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
                        submodule._parameters[name] = replaced[id(parameter)]
                for name, buffer in list(submodule._buffers.items()):
                    if buffer is not None and buffer.is_inference():
                        if id(buffer) not in replaced:
                            replaced[id(buffer)] = buffer.clone()
                        submodule._buffers[name] = replaced[id(buffer)]
    if replaced:
        logger.info("copied %d inference-mode tensors so that autograd can use them", len(replaced))
    return len(replaced)


# -- frozen modules ---------------------------------------------------------------------------
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


def precision(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """Compute dtype for training: None keeps ComfyUI's own choice (``auto`` on CPU)."""
    if mixed_precision == "fp32":
        return torch.float32
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return None


def autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
