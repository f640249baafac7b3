"""The analytic diffusion model (tests/builders/analytic_diffusion.py) as a real ComfyUI MODEL.

In-process ComfyUI; the whole file runs in about half a minute on two CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from creward.models.errors import CREwardError
from steering_fixtures import analytic  # noqa: F401

STEPS = 20


def _sample(model, analytic, seeds, cfg=1.0, steps=STEPS):
    import comfy.sample

    noise = analytic.noise(seeds)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", analytic.positive, analytic.negative,
                               analytic.empty_latent(len(seeds)), disable_pbar=True)


def _alpha_beta(prediction, sigma):
    """x_t = alpha x0 + beta eps, written out per parameterisation (the module derives it from noise_scaling)."""
    if prediction == "flow":
        return 1 - sigma, sigma
    return torch.ones_like(sigma), sigma


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_apply_model_returns_the_tweedie_posterior_mean(analytic, prediction):
    """BaseModel.apply_model = E[x0 | x_t], checked against Tweedie's formula on the mixture density
    (autograd of log p_t), independent of the module's closed form."""
    model = analytic.models[prediction].model
    denoiser = model.diffusion_model
    generator = torch.Generator().manual_seed(1)
    s = analytic.spread
    for sigma_value in (0.05, 0.5, 0.9) if prediction == "flow" else (0.05, 1.0, 7.0):
        sigma = torch.full((3,), sigma_value)
        alpha, beta = _alpha_beta(prediction, sigma)
        x0 = analytic.prototypes[[0, 2, 3]] + s * torch.randn(3, *analytic.latent_shape, generator=generator)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + beta.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)

        x = x_t.clone().requires_grad_(True)
        variance = (alpha ** 2 * s ** 2 + beta ** 2).view(-1, 1)
        mu = analytic.prototypes.flatten(1)
        d2 = (x.flatten(1).unsqueeze(1) - alpha.view(-1, 1, 1) * mu).pow(2).sum(-1)
        log_p = torch.logsumexp(analytic.weights.log() - d2 / (2 * variance), dim=1)
        (score,) = torch.autograd.grad(log_p.sum(), x)
        tweedie = (x_t + beta.view(-1, 1, 1, 1) ** 2 * score) / alpha.view(-1, 1, 1, 1)

        denoiser.reset_counts()
        with torch.no_grad():
            denoised = model.apply_model(x_t, sigma, c_crossattn=analytic.positive[0][0].expand(3, -1, -1),
                                         transformer_options={"sigmas": sigma})
        assert denoiser.calls == 1 and denoiser.rows == 3 and denoiser.sigma_fallbacks == 0
        assert torch.allclose(denoised, tweedie, atol=2e-4, rtol=1e-4), (prediction, sigma_value)


def test_without_exact_sigmas_the_denoiser_falls_back_to_the_timestep(analytic):
    model = analytic.model.model
    denoiser = model.diffusion_model
    sigma = torch.full((2,), 1.0)
    x_t = analytic.prototypes[:2] + torch.randn(2, *analytic.latent_shape, generator=torch.Generator().manual_seed(2))
    denoiser.reset_counts()
    with torch.no_grad():
        fallback = model.apply_model(x_t, sigma)
        exact = model.apply_model(x_t, sigma, transformer_options={"sigmas": sigma})
        mean, _ = denoiser.posterior(x_t, sigma)
    assert denoiser.sigma_fallbacks == 1 and denoiser.calls == 2
    assert torch.allclose(exact, mean, atol=1e-5)
    # SD1.x timesteps are rounded to the 1000-step grid: close, not exact
    assert torch.allclose(fallback, mean, atol=0.05)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_sampling_lands_on_prototypes_with_the_mixture_weights(analytic, prediction):
    model = analytic.models[prediction]
    seeds = range(256)
    samples = _sample(model, analytic, seeds)
    index, rms = analytic.nearest(samples)
    # sample = prototype + N(0, s^2) in model space: per-element RMS about s (Euler shrinks it a bit)
    assert float(rms.max()) < 2 * analytic.spread / 0.18215
    frequency = torch.bincount(index, minlength=4).float() / len(seeds)
    _assert_frequencies(frequency, analytic.weights, len(seeds))


def _assert_frequencies(frequency, weights, n):
    """Within 4 binomial standard deviations plus 0.05 of the weights. The 0.05 is the sampler's own
    bias, measured with 1024 seeds: SD1.x's sigma_max (14.6) is not infinite, so EPS/V start from
    N(0, 1 + sigma_max^2) rather than the true noisy marginal (0.40/0.25/0.24/0.11 for
    0.4/0.3/0.2/0.1), and 20 flow steps shrink the rarest component (0.08 for 0.1)."""
    tolerance = 4 * (weights * (1 - weights) / n).sqrt() + 0.05
    assert bool(((frequency - weights).abs() <= tolerance).all()), (frequency.tolist(), tolerance.tolist())


def test_sample_frequencies_follow_the_weights(analytic):
    """Same seeds, reversed weights: the frequencies reverse (the weights are not ignored)."""
    from builders import analytic_diffusion as ad

    reversed_weights = analytic.weights.flip(0)
    model = ad.analytic_model(analytic.prototypes, reversed_weights, analytic.spread, "flow")
    index, _ = analytic.nearest(_sample(model, analytic, range(256)))
    frequency = torch.bincount(index, minlength=4).float() / 256
    _assert_frequencies(frequency, reversed_weights, 256)
    assert frequency[3] > 0.3 and frequency[0] < 0.2


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_clean_estimate_predicts_the_final_prototype_early(analytic, prediction):
    model = analytic.models[prediction].clone()
    captured = []

    def capture(args):
        captured.append(args["denoised"].detach().clone())
        return args["denoised"]

    model.set_model_sampler_post_cfg_function(capture)
    seeds = range(64)
    final, _ = analytic.nearest(_sample(model, analytic, seeds))
    assert len(captured) == STEPS
    agreement = [float((analytic.nearest(d, space="model")[0] == final).float().mean()) for d in captured]
    assert agreement[math.ceil(0.4 * STEPS)] >= 0.95, agreement
    assert agreement[-1] == 1.0
    assert agreement[0] < 1.0  # at the first step the outcome is not yet decided for every seed


def test_counts_model_evaluations(analytic):
    """cfg 1: one call of B rows per euler step; cfg > 1: cond and uncond batched, 2 B rows per step.
    The context is ignored, so cfg does not change the samples."""
    denoiser = analytic.model.model.diffusion_model
    seeds = range(3)
    denoiser.reset_counts()
    plain = _sample(analytic.model, analytic, seeds, cfg=1.0)
    assert (denoiser.calls, denoiser.rows) == (STEPS, STEPS * 3)
    denoiser.reset_counts()
    guided = _sample(analytic.model, analytic, seeds, cfg=5.0)
    assert (denoiser.calls, denoiser.rows) == (STEPS, 2 * STEPS * 3)
    assert torch.allclose(plain, guided, atol=1e-4)
    denoiser.reset_counts()
    assert (denoiser.calls, denoiser.rows, denoiser.sigma_fallbacks) == (0, 0, 0)


def test_samples_under_inference_mode_and_follows_a_patched_model_sampling(analytic):
    """ComfyUI nodes run under inference_mode; a ModelSamplingSD3-style shift patch (where
    model_sampling.sigma(t) is no longer the inverse of timestep) still samples the mixture."""
    import comfy.model_sampling

    class ShiftedFlow(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    shifted = ShiftedFlow(analytic.models["flow"].model.model_config)
    shifted.set_parameters(shift=3.0, multiplier=1000)
    model = analytic.models["flow"].clone()
    model.add_object_patch("model_sampling", shifted)
    denoiser = model.model.diffusion_model
    denoiser.reset_counts()
    with torch.inference_mode():
        samples = _sample(model, analytic, range(16))
    _, rms = analytic.nearest(samples)
    assert float(rms.max()) < 2 * analytic.spread / 0.18215
    assert denoiser.sigma_fallbacks == 0 and denoiser.calls == STEPS


def test_posterior_is_differentiable(analytic):
    denoiser = analytic.model.model.diffusion_model
    x_t = (analytic.prototypes[:2] + torch.randn(2, *analytic.latent_shape)).requires_grad_(True)
    mean, responsibilities = denoiser.posterior(x_t, torch.tensor([2.0, 2.0]))
    assert torch.allclose(responsibilities.sum(1), torch.ones(2))
    (gradient,) = torch.autograd.grad(mean.square().sum(), x_t)
    assert gradient.abs().sum() > 0


def test_prototypes_are_distinct_and_far_apart_relative_to_the_spread(analytic):
    distances = torch.cdist(analytic.prototypes.flatten(1), analytic.prototypes.flatten(1)) / 16
    off_diagonal = distances[~torch.eye(4, dtype=torch.bool)]
    assert float(off_diagonal.min()) > 20 * analytic.spread


def test_decoder_matches_its_differentiable_path_and_vae_interface(analytic):
    from builders import analytic_diffusion as ad

    decoder = analytic.decoder
    images = decoder.decode(analytic.prototypes_vae)
    assert images.shape == (4, 64, 64, 3) and float(images.min()) >= 0 and float(images.max()) <= 1
    latents = analytic.prototypes_vae.clone().requires_grad_(True)
    differentiable = ad.decode_images(decoder, latents)
    assert torch.allclose(differentiable.movedim(1, -1), images)
    assert float(images.std(dim=(1, 2)).min()) > 0.05  # not saturated: the prototypes look different
    assert (decoder.latent_channels, decoder.upscale_ratio, decoder.latent_dim) == (4, 8, 2)
    assert decoder.spacial_compression_decode() == 8
    assert decoder.vae_dtype == torch.float32 and decoder.device == decoder.output_device

    scores = analytic.reward(differentiable)
    assert scores.shape == (4, 4) and analytic.reward.axes == analytic.axes
    (gradient,) = torch.autograd.grad(scores[:, 3].sum(), latents)
    assert gradient.abs().sum() > 0


def test_reward_gradient_with_respect_to_images(analytic):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    scores = analytic.reward(images)
    for axis in range(4):
        (gradient,) = torch.autograd.grad(scores[:, axis].sum(), images, retain_graph=True)
        assert gradient.abs().sum() > 0


def test_landscape_has_one_clear_overall_winner_and_different_winners_per_axis(analytic):
    rewards = analytic.prototype_rewards
    assert rewards.shape == (4, 4)
    overall = rewards[:, analytic.axes.index("overall")].sort(descending=True).values
    assert float(overall[0] - overall[1]) > 0.2
    assert float((overall[1:-1] - overall[2:]).min()) > 0.1  # the others spread out
    assert len(set(analytic.best.values())) == 4
    assert analytic.best["overall"] == int(analytic.weights.argmin())


def test_clear_errors(analytic):
    from builders import analytic_diffusion as ad

    with pytest.raises(CREwardError, match="eps, v, flow"):
        ad.analytic_model(prediction="x0")
    with pytest.raises(CREwardError, match="4 positive numbers"):
        ad.analytic_model(weights=[1.0, 0.0, 1.0, 1.0])
    with pytest.raises(CREwardError, match=r"\[K, 4, H, W\]"):
        ad.analytic_model(torch.zeros(2, 3, 8, 8))
    with pytest.raises(CREwardError, match="spread"):
        ad.analytic_model(spread=0.0)
    with pytest.raises(CREwardError, match=r"\[B, 4, h, w\]"):
        analytic.decoder.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(CREwardError, match=r"\[B, 3, H, W\]"):
        analytic.reward(torch.zeros(1, 64, 64, 3))
