"""Session fixtures for steering tests, built on the analytic diffusion model.

Use from a test module (conftest.py does not import this file):

    from steering_fixtures import analytic  # noqa: F401

``analytic`` (session) is a namespace:

- ``model``: EPS ``ModelPatcher`` (``analytic_model``); ``models``: ``{"eps", "v", "flow"}`` patchers.
  All share the prototypes and weights. They are shared by the whole session: ``clone()`` a
  patcher before ``set_model_sampler_*``/object patches, and call
  ``<patcher>.model.diffusion_model.reset_counts()`` before counting model evaluations
  (``calls``, ``rows``; see ``AnalyticDenoiser``).
- ``decoder`` (``LinearDecoder``, a ``comfy.sd.VAE`` stand-in), ``reward`` (``ToyReward``), ``axes``.
- ``prototypes`` ``[4, 4, 8, 8]`` (model space), ``prototypes_vae`` (what sampling returns),
  ``weights`` ``(0.4, 0.3, 0.2, 0.1)``, ``spread`` 0.05.
- ``prototype_rewards`` ``[4, 4]`` (prototype x axis), ``best`` (axis -> index of the best
  prototype); the best on ``overall`` (prototype 3) has the *smallest* weight, so plain sampling
  finds it about 1 time in 10 and steering has room to show.
- ``positive``, ``negative``: CONDITIONINGs from ``tiny_conditioning`` (context dim 32, ignored
  by the denoiser: cfg > 1 gives the same samples as cfg 1, at twice the rows).
- ``latent_shape`` ``(4, 8, 8)``; ``empty_latent(batch)`` zeros ``[batch, 4, 8, 8]``;
  ``noise(seeds)`` stacks ``comfy.sample.prepare_noise`` for each seed (what KSampler draws);
  ``nearest(samples, space="vae")`` -> ``(prototype index [B], RMS distance [B])``.
"""

from __future__ import annotations

import types

import pytest
import torch

STEERING_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
STEERING_SPREAD = 0.05


@pytest.fixture(scope="session")
def analytic(comfy_inprocess):
    import comfy.sample

    from builders import analytic_diffusion as ad
    from builders.comfy_diffusion import tiny_conditioning

    prototypes = ad.prototype_latents()
    models = {prediction: ad.analytic_model(prototypes, STEERING_WEIGHTS, STEERING_SPREAD, prediction)
              for prediction in ad.PREDICTIONS}
    model = models["eps"]
    decoder = ad.LinearDecoder()
    reward = ad.ToyReward().eval()
    rewards = ad.prototype_rewards(model, decoder, reward)
    positive, negative = tiny_conditioning(2)
    latent_shape = tuple(prototypes.shape[1:])

    def empty_latent(batch: int = 1) -> torch.Tensor:
        return torch.zeros((batch,) + latent_shape)

    def noise(seeds) -> torch.Tensor:
        return torch.cat([comfy.sample.prepare_noise(empty_latent(1), int(seed)) for seed in seeds])

    def nearest(samples: torch.Tensor, space: str = "vae"):
        return ad.nearest_prototype(model, samples, space)

    return types.SimpleNamespace(
        model=model, models=models, decoder=decoder, reward=reward, axes=ad.AXES,
        prototypes=prototypes, prototypes_vae=model.model.process_latent_out(prototypes.clone()),
        weights=torch.tensor(STEERING_WEIGHTS), spread=STEERING_SPREAD,
        prototype_rewards=rewards, best={axis: int(rewards[:, i].argmax()) for i, axis in enumerate(ad.AXES)},
        positive=positive, negative=negative, latent_shape=latent_shape,
        empty_latent=empty_latent, noise=noise, nearest=nearest,
    )
