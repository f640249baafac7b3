"""A diffusion model whose denoiser is known in closed form, as a real ComfyUI ``MODEL``.

The data distribution is a mixture of ``K`` latent prototypes with isotropic spread ``s``:
``x0 ~ sum_k w_k N(mu_k, s^2 I)``. For a forward process ``x_t = alpha(sigma) x0 + beta(sigma) eps``
the optimal denoiser ``E[x0 | x_t]`` is analytic:

    r_k(x_t)  ∝ w_k N(x_t; alpha mu_k, (alpha^2 s^2 + beta^2) I)          (softmax in log space)
    E[x0|x_t] = sum_k r_k (mu_k + g (x_t - alpha mu_k)),   g = alpha s^2 / (alpha^2 s^2 + beta^2)

``alpha`` and ``beta`` come from the model's own ``noise_scaling`` (EPS and V_PREDICTION:
``x_t = x0 + sigma eps``, so alpha = 1, beta = sigma; FLOW/CONST: ``x_t = (1 - sigma) x0 + sigma eps``),
and the output (eps, v or flow velocity) is obtained by inverting the model's own affine
``calculate_denoised(sigma, out, x_t) = A x_t + B out``, so ``BaseModel.apply_model`` returns the
posterior mean for every prediction type, including a ``model_sampling`` swapped in by an object
patch (``ModelSamplingDiscrete``/``ModelSamplingSD3`` nodes).

Latent spaces: the model is SD1.x-shaped (``comfy.supported_models.SD15``, latent format scale
0.18215). **Prototypes live in the model's space** (after ``process_latent_in``), entries of
order 1; what ``comfy.sample.sample`` returns and ``VAEDecode`` receives is VAE space,
``process_latent_out(prototypes) = prototypes / 0.18215``. ``LinearDecoder`` decodes VAE space.

Sigma recovery: ComfyUI 0.3.75 hands the diffusion model ``t = model_sampling.timestep(sigma)``,
which for discrete (SD1.x) schedules is *rounded to the 1000-step grid*, so ``sigma(t)`` is not
the sigma the sampler used. The sampler also puts the exact per-sample sigmas in
``transformer_options["sigmas"]`` (one per latent, repeated over the cond/uncond chunks); the
denoiser uses those when ``timestep(sigmas)`` reproduces the ``t`` it was given, and falls back to
``model_sampling.sigma(t)`` otherwise (``denoiser.sigma_fallbacks`` counts those calls).

Needs ``comfy`` importable (the ``comfy_inprocess`` fixture); every ComfyUI import is inside a
function.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F

from creward.models.errors import CREwardError

AXES = ("geometry", "material", "texture", "overall")
PREDICTIONS = ("eps", "v", "flow")
SD15_SCALE_FACTOR = 0.18215

# ComfyUI's SD1.x latent -> RGB preview factors (comfy/latent_formats.py, SD15.latent_rgb_factors),
# rows = latent channels, columns = R, G, B; applied to model-space latents.
_SD15_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def prototype_latents(count: int = 4, channels: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``count`` distinct, well separated latent patterns ``[count, channels, size, size]`` (model space).

    Each prototype is a coarse 2x2-block pattern (what decides its colours, hence its reward)
    plus a finer random texture, with per-element RMS about 1. Distinct prototypes are at a
    per-element RMS distance of about 1.4 from each other, far above the default spread 0.05.

    Raises:
        CREwardError: a non-positive count/channels, or a size that is not a positive even number.
    """
    if count < 1 or channels < 1:
        raise CREwardError(f"prototype_latents: count and channels must be positive, got {count} and {channels}")
    if size < 2 or size % 2:
        raise CREwardError(f"prototype_latents: size must be a positive even number, got {size}")
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, channels, 2, 2, generator=generator)
    coarse = F.interpolate(coarse, size=(size, size), mode="nearest")
    fine = torch.randn(count, channels, size, size, generator=generator)
    prototypes = (coarse + 0.5 * fine) / math.sqrt(1.25)
    return prototypes


class AnalyticDenoiser(torch.nn.Module):
    """The posterior-mean denoiser of a prototype mixture, in the place of a ``BaseModel``'s UNet.

    Called as ``diffusion_model(xc, t, context=..., control=..., transformer_options=..., **kw)``
    by ``BaseModel._apply_model``; ``context`` (the cross-attention conditioning) is ignored, so
    positive and negative conditioning give the same output.

    Counting: ``calls`` is the number of forward calls, ``rows`` the number of batch rows they
    processed. With ``cfg == 1.0`` ComfyUI skips the negative prompt, so one sampler step with a
    latent batch of ``B`` is 1 call of ``B`` rows; with ``cfg != 1.0`` ComfyUI concatenates cond
    and uncond into one call of ``2 B`` rows whenever its memory estimate allows (always on CPU
    here), so a step is 1 call of ``2 B`` rows (more calls of the same total rows if it splits).
    ``reset_counts()`` zeroes both (and ``sigma_fallbacks``).
    """

    def __init__(self, prototypes: torch.Tensor, weights: torch.Tensor, spread: float):
        super().__init__()
        self.register_buffer("prototypes", prototypes.detach().clone().float())
        self.register_buffer("log_weights", weights.detach().clone().float().log())
        self.spread = float(spread)
        self._base_model = None
        self.calls = 0
        self.rows = 0
        self.sigma_fallbacks = 0

    @property
    def dtype(self) -> torch.dtype:  # BaseModel.get_dtype() reads diffusion_model.dtype
        return self.prototypes.dtype

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def attach(self, base_model) -> None:
        """Follow ``base_model.model_sampling`` (a weak reference: the model owns this module)."""
        self._base_model = weakref.ref(base_model)

    def reset_counts(self) -> None:
        self.calls = 0
        self.rows = 0
        self.sigma_fallbacks = 0

    def model_sampling(self):
        base_model = self._base_model() if self._base_model is not None else None
        if base_model is None:
            raise CREwardError("AnalyticDenoiser is not attached to a live BaseModel; build it with analytic_model()")
        return base_model.model_sampling

    # -- the closed form -------------------------------------------------------------------
    def posterior(self, x_t: torch.Tensor, sigma: torch.Tensor,
                  model_sampling=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[x0 | x_t], responsibilities [B, K])`` for model-space ``x_t`` at per-row ``sigma``.

        Differentiable in ``x_t``.
        """
        ms = model_sampling if model_sampling is not None else self.model_sampling()
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != tuple(self.prototypes.shape[1:]):
            expected = ", ".join(map(str, self.prototypes.shape[1:]))
            raise CREwardError(f"AnalyticDenoiser: expected latents [B, {expected}], got {list(x_t.shape)}")
        batch = x_t.shape[0]
        x = x_t.float()
        sigma = _per_row(sigma, batch, x.device)
        unit = torch.ones(batch, 1, 1, 1, device=x.device)
        alpha = ms.noise_scaling(sigma, torch.zeros_like(unit), unit.clone()).reshape(batch, 1)
        beta = ms.noise_scaling(sigma, unit.clone(), torch.zeros_like(unit)).reshape(batch, 1)
        mu = self.prototypes.to(x.device).flatten(1)  # [K, D]
        flat = x.flatten(1)  # [B, D]
        variance = alpha ** 2 * self.spread ** 2 + beta ** 2  # [B, 1]
        distance2 = (flat.unsqueeze(1) - alpha.unsqueeze(-1) * mu.unsqueeze(0)).pow(2).sum(-1)  # [B, K]
        responsibilities = torch.softmax(self.log_weights.to(x.device) - distance2 / (2 * variance), dim=1)
        gain = alpha * self.spread ** 2 / variance  # [B, 1]
        mean = (1 - gain * alpha) * (responsibilities @ mu) + gain * flat
        return mean.view_as(x), responsibilities

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        self.calls += 1
        self.rows += x.shape[0]
        ms = self.model_sampling()
        sigma = self._sigma(timesteps, transformer_options, ms, x.shape[0], x.device)
        sigma = sigma.clamp(min=1e-6)  # the output is irrelevant at sigma 0 (denoised = x_t there)
        unit = torch.ones(x.shape[0], 1, 1, 1, device=x.device)
        x_t = x.float() / ms.calculate_input(sigma, unit)
        mean, _ = self.posterior(x_t, sigma, ms)
        # calculate_denoised(sigma, out, x_t) = A x_t + B out, affine in (out, x_t): invert it.
        offset = ms.calculate_denoised(sigma, torch.zeros_like(x_t), x_t)
        slope = ms.calculate_denoised(sigma, unit, torch.zeros_like(unit))
        return ((mean - offset) / slope).to(x.dtype)

    def _sigma(self, timesteps, transformer_options, ms, rows, device) -> torch.Tensor:
        exact = (transformer_options or {}).get("sigmas")
        timesteps = timesteps.float().reshape(-1)
        if torch.is_tensor(exact) and exact.numel() > 0 and rows % exact.numel() == 0:
            candidate = exact.float().reshape(-1).repeat(rows // exact.numel()).to(device)
            reproduced = ms.timestep(candidate).float().to(timesteps.device).reshape(-1)
            if reproduced.shape == timesteps.shape and torch.allclose(reproduced, timesteps, rtol=1e-5, atol=1e-4):
                return candidate
        self.sigma_fallbacks += 1
        return _per_row(ms.sigma(timesteps).float(), rows, device)


def _per_row(sigma, batch: int, device) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(batch)
    if sigma.numel() != batch:
        raise CREwardError(f"AnalyticDenoiser: expected 1 or {batch} sigmas, got {sigma.numel()}")
    return sigma


def analytic_model(prototypes: torch.Tensor | None = None, weights=None, spread: float = 0.05,
                   prediction: str = "eps"):
    """A ``ModelPatcher`` around ComfyUI's SD1.x ``BaseModel`` whose UNet is an ``AnalyticDenoiser``.

    Args:
        prototypes: ``[K, 4, H, W]`` model-space means (default ``prototype_latents()``).
        weights: ``K`` positive mixture weights, normalised here (default uniform).
        spread: isotropic standard deviation ``s`` of each component (model space), > 0.
        prediction: ``eps`` (SD1.x), ``v`` (V_PREDICTION) or ``flow`` (FLOW, shift 1, multiplier 1000).

    The denoiser is ``patcher.model.diffusion_model`` (counts: ``calls``, ``rows``, ``reset_counts()``).
    fp32 on CPU.

    Raises:
        CREwardError: an unknown prediction, a badly shaped prototype tensor, weights that do not
            match it or are not positive, or a non-positive spread.
    """
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    if prediction not in PREDICTIONS:
        raise CREwardError(f"analytic_model: prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    if prototypes is None:
        prototypes = prototype_latents()
    prototypes = torch.as_tensor(prototypes, dtype=torch.float32)
    if prototypes.ndim != 4 or prototypes.shape[1] != 4:
        raise CREwardError(
            f"analytic_model: prototypes must be [K, 4, H, W] (SD1.x latents), got {list(prototypes.shape)}")
    count = prototypes.shape[0]
    if weights is None:
        weights = torch.full((count,), 1.0 / count)
    weights = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    if weights.numel() != count or not bool((weights > 0).all()):
        raise CREwardError(
            f"analytic_model: weights must be {count} positive numbers (one per prototype), got {weights.tolist()}")
    if not spread > 0:
        raise CREwardError(f"analytic_model: spread must be positive, got {spread}")

    from .comfy_diffusion import sd15_unet_config

    unet_config = dict(sd15_unet_config(), disable_unet_model_creation=True)
    config = comfy.supported_models.SD15(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION,
                  "flow": comfy.model_base.ModelType.FLOW}[prediction]
    if prediction == "flow":
        config.sampling_settings = {"shift": 1.0, "multiplier": 1000}
    model = comfy.model_base.BaseModel(config, model_type=model_type)
    model.diffusion_model = AnalyticDenoiser(prototypes, weights / weights.sum(), spread)
    model.diffusion_model.attach(model)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class LinearDecoderModel(torch.nn.Module):
    """``decode(z)``: VAE-space latents ``[B, 4, h, w]`` -> ``tanh`` of a fixed 4->3 channel mix of
    the model-space latent (``z * scale_factor``, SD1.x preview colours times ``gain``), upsampled x8:
    ``[B, 3, 8h, 8w]`` in (-1, 1). Differentiable; no trainable parameters."""

    def __init__(self, scale_factor: float = SD15_SCALE_FACTOR, gain: float = 1.5, upscale: int = 8,
                 mode: str = "nearest"):
        super().__init__()
        self.register_buffer("mix", torch.tensor(_SD15_LATENT_RGB, dtype=torch.float32).t() * gain)  # [3, 4]
        self.register_buffer("bias", torch.zeros(3))
        self.scale_factor = float(scale_factor)
        self.upscale = int(upscale)
        self.mode = mode

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.mix.shape[1]:
            raise CREwardError(
                f"LinearDecoder: expected VAE latents [B, {self.mix.shape[1]}, h, w], got {list(z.shape)}")
        mixed = torch.einsum("oc,bchw->bohw", self.mix.to(z.dtype), z * self.scale_factor)
        mixed = mixed + self.bias.to(z.dtype).view(1, -1, 1, 1)
        return F.interpolate(torch.tanh(mixed), scale_factor=self.upscale, mode=self.mode)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)


class LinearDecoder:
    """Stands in for ``comfy.sd.VAE`` where our code decodes latents (previews, differentiable decoding).

    Mirrors the attributes used: ``first_stage_model.decode(z)`` ([B,3,H,W] in (-1, 1)),
    ``process_output`` ((x+1)/2 clamped to [0, 1]), ``decode(latents)`` (ComfyUI IMAGE
    [B,H,W,3]), ``device``, ``vae_dtype``, ``output_device``, ``latent_channels`` 4,
    ``output_channels`` 3, ``upscale_ratio``/``downscale_ratio`` 8, ``latent_dim`` 2,
    ``spacial_compression_decode()`` 8 and a lazy ``patcher`` (a ``ModelPatcher``). Decodes VAE-space
    latents (what ``VAEDecode`` receives, after ``process_latent_out``).
    """

    def __init__(self, scale_factor: float = SD15_SCALE_FACTOR, gain: float = 1.5, mode: str = "nearest",
                 device=None):
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.vae_dtype = torch.float32
        self.output_device = self.device
        self.first_stage_model = LinearDecoderModel(scale_factor, gain, 8, mode).to(self.device).eval()
        self.latent_channels = 4
        self.output_channels = 3
        self.upscale_ratio = 8
        self.downscale_ratio = 8
        self.latent_dim = 2
        self.disable_offload = False
        self._patcher = None

    @staticmethod
    def process_output(image: torch.Tensor) -> torch.Tensor:
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def throw_exception_if_invalid(self) -> None:
        return None

    @property
    def patcher(self):
        if self._patcher is None:
            import comfy.model_patcher

            self._patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                             offload_device=self.device)
        return self._patcher

    def decode(self, samples_in: torch.Tensor, vae_options: dict | None = None) -> torch.Tensor:
        """VAE-space latents ``[B, 4, h, w]`` -> IMAGE ``[B, 8h, 8w, 3]`` in [0, 1] (like ``comfy.sd.VAE.decode``)."""
        samples = samples_in.to(device=self.device, dtype=self.vae_dtype)
        images = self.process_output(self.first_stage_model.decode(samples).to(self.output_device).float())
        return images.movedim(1, -1)


class ToyReward(torch.nn.Module):
    """Stands in for CREward: ``forward(images [B, 3, H, W] in [0, 1]) -> [B, 4]`` scores in (0, 1)
    for ``axes`` = geometry, material, texture, overall.

    Each axis is ``sigmoid(gain * <w_axis, f>)`` where ``f`` is the image average-pooled to
    ``pool x pool``, mapped to [-1, 1] and flattened, and ``w_axis`` a fixed random unit vector
    (seeded). Smooth and differentiable in the images; no trainable parameters.

    The defaults (seed 181, gain 2) were picked so that the default prototypes decoded by the
    default ``LinearDecoder`` give an interesting landscape (``prototype_rewards``, pinned by
    tests/test_analytic_diffusion.py): prototype 3 is clearly best on ``overall`` (0.78 vs 0.47,
    0.29, 0.13) while geometry, material and texture are won by prototypes 1, 0 and 2.
    """

    axes = AXES

    def __init__(self, seed: int = 181, pool: int = 4, gain: float = 2.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(len(AXES), 3 * pool * pool, generator=generator)
        self.register_buffer("directions", directions / directions.norm(dim=1, keepdim=True))
        self.pool = int(pool)
        self.gain = float(gain)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise CREwardError(f"ToyReward: expected images [B, 3, H, W] in [0, 1], got {list(images.shape)}")
        return F.adaptive_avg_pool2d(images.float() * 2 - 1, self.pool).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gain * self.features(images) @ self.directions.t().to(images.device))


def nearest_prototype(model_patcher, samples: torch.Tensor, space: str = "vae") -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [B], per-element RMS distance [B])`` of the prototype nearest each latent.

    ``space``: ``vae`` for what ``comfy.sample.sample`` returns (compared with
    ``process_latent_out(prototypes)``), ``model`` for model-space latents such as a post-CFG
    function's ``args["denoised"]``. RMS distances are in the units of that space.
    """
    if space not in ("vae", "model"):
        raise CREwardError(f"nearest_prototype: space must be 'vae' or 'model', got {space!r}")
    base_model = model_patcher.model
    prototypes = base_model.diffusion_model.prototypes.detach().clone()
    if space == "vae":
        prototypes = base_model.process_latent_out(prototypes)
    flat = samples.detach().float().flatten(1).to(prototypes.device)
    if flat.shape[1] != prototypes[0].numel():
        raise CREwardError(f"nearest_prototype: expected latents [B, {', '.join(map(str, prototypes.shape[1:]))}], "
                           f"got {list(samples.shape)}")
    distances = torch.cdist(flat, prototypes.flatten(1)) / math.sqrt(flat.shape[1])
    rms, index = distances.min(dim=1)
    return index, rms


def decode_images(decoder: LinearDecoder, vae_latents: torch.Tensor) -> torch.Tensor:
    """The differentiable path: ``process_output(first_stage_model.decode(z))`` -> [B, 3, H, W] in [0, 1]."""
    z = vae_latents.to(device=decoder.device, dtype=decoder.vae_dtype)
    return decoder.process_output(decoder.first_stage_model.decode(z).float())


def prototype_rewards(model_patcher, decoder: LinearDecoder, reward: ToyReward) -> torch.Tensor:
    """``[K, 4]``: the reward of each prototype decoded (the known landscape), rows in prototype order."""
    base_model = model_patcher.model
    with torch.no_grad():
        vae_latents = base_model.process_latent_out(base_model.diffusion_model.prototypes.clone())
        return reward(decode_images(decoder, vae_latents)).float().cpu()
