"""Creativity steering during sampling: ``CREwardSteeringSampler`` (a SAMPLER for SamplerCustom /
SamplerCustomAdvanced) and ``CREwardCreativeKSampler`` (KSampler's inputs plus CREward's).

Thin adapters over ``creward.diffusion.steering_sampler``: N particles per latent run as one batch;
at checkpoint steps each particle's clean estimate is decoded (TAESD from ``models/vae_approx`` or
the VAE), scored by CREward and the particles are resampled (FK steering) or pruned.
"""

from __future__ import annotations

import logging

import torch

from ..models.axes import AXES
from ..models.errors import CREwardError
from ..models.score_table import ScoreTable

logger = logging.getLogger(__name__)

CATEGORY = "CREward/sampling"
WEIGHTED = "weighted sum"
DECODERS = ("auto", "taesd", "vae")


def steering_inputs(modes: tuple[str, ...]) -> dict:
    """The steering options both nodes share (names are a public API: saved workflows use them)."""
    from ..diffusion.steering_plan import POTENTIALS

    return {
        "mode": (list(modes), {"default": modes[0], "tooltip":
            "resample: FK steering, particles are resampled by their reward at checkpoints (needs an ancestral/SDE "
            "sampler; with a deterministic one it prunes instead). prune: keep the best at checkpoints, the rest stop "
            "costing model evaluations. best-of-n: N independent samples, the best kept."}),
        "particles": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "Particles (N) per latent, run as one batch."}),
        "axis": (list(AXES) + [WEIGHTED], {"default": "overall", "tooltip":
            "The reward: one CREward axis, or 'weighted sum' of the axes with the 'weights' input."}),
        "checkpoint_every": ("INT", {"default": 4, "min": 1, "max": 1000, "tooltip":
            "A checkpoint (decode, score, resample/prune) every k steps between start_percent and end_percent."}),
        "start_percent": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01}),
        "end_percent": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01}),
        "survivors": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip":
            "prune: particles left after the last checkpoint (m); the count falls geometrically from N to m."}),
        "potential": (list(POTENTIALS), {"default": "sum", "tooltip":
            "resample: FK potential. sum: exp(lambda * sum of rewards so far); diff: exp(lambda * reward change); "
            "max: exp(lambda * best reward so far)."}),
        "fk_lambda": ("FLOAT", {"default": 10.0, "min": 0.01, "max": 1000.0, "step": 0.1, "tooltip":
            "resample: FK temperature lambda; larger = greedier resampling."}),
        "preview_decoder": (list(DECODERS), {"default": "auto", "tooltip":
            "How clean estimates are decoded for scoring: auto = TAESD from models/vae_approx when there is one for "
            "this model, else the VAE input; taesd; vae (exact, slower)."}),
    }


def optional_steering_inputs() -> dict:
    return {
        "vae": ("VAE", {"tooltip": "The model's VAE: decodes previews when there is no TAESD (or preview_decoder is vae)."}),
        "checkpoint_steps": ("STRING", {"default": "", "tooltip":
            "Explicit checkpoint steps, e.g. '4, 8, 12' (0-based, of this run's steps); empty = every k steps."}),
        "weights": ("STRING", {"default": "geometry=1,material=1,texture=1,overall=0", "tooltip":
            "Axis weights for 'weighted sum', e.g. 'geometry=1,texture=0.5' or '1,0,0.5,0'."}),
        "decode_batch": ("INT", {"default": 4, "min": 1, "max": 256, "advanced": True, "tooltip":
            "Clean estimates decoded and scored at a time (bounds memory for many particles)."}),
    }


def reward_spec(creward, axis: str, weights: str):
    from ..diffusion.reward import RewardSpec

    return RewardSpec.parse(weights if axis == WEIGHTED else axis, creward.axes)


def make_plan(mode, particles, keep, survivors, potential, fk_lambda, checkpoint_every, start_percent, end_percent,
              checkpoint_steps, seed):
    from ..diffusion.steering_plan import SteeringPlan, parse_checkpoint_steps

    try:
        steps = parse_checkpoint_steps(checkpoint_steps)
    except CREwardError as error:
        raise CREwardError(f"checkpoint_steps: {error}") from None
    return SteeringPlan(
        mode=mode, particles=particles, keep=keep, survivors=survivors, potential=potential, temperature=fk_lambda,
        checkpoint_steps=steps, every=checkpoint_every, start_percent=start_percent, end_percent=end_percent, seed=seed,
    )


def reward_factory(creward, spec, preview_decoder: str, vae, decode_batch: int):
    """``base_model -> LatentReward`` for a ``ManagedCREward`` (loaded to its device when sampling starts)."""
    import comfy.model_management

    from ..diffusion.creative_sampling import reward_builder

    return reward_builder(creward.model, spec, preview_decoder, vae, decode_batch, before=lambda: creward.load(decode_batch),
                          on_batch=comfy.model_management.throw_exception_if_processing_interrupted)


class CREwardSteeringSampler:
    """A SAMPLER that steers particles with CREward, for SamplerCustom / SamplerCustomAdvanced."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "creward": ("CREWARD", {"tooltip": "The reward model from CREward Loader."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler_ancestral", "tooltip":
                    "The sampler whose steps are used. Resampling needs one that adds noise (ancestral, SDE)."}),
                **steering_inputs(("resample", "prune")),
            },
            "optional": optional_steering_inputs(),
        }

    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("A sampler for SamplerCustom / SamplerCustomAdvanced: returns the best particle per latent.",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "CREward steering as a SAMPLER: N particles per latent, scored by CREward at checkpoint steps (their clean "
        "estimates, decoded by TAESD or the VAE) and resampled (FK steering) or pruned; the best particle is returned."
    )

    def build(self, creward, sampler_name, mode, particles, axis, checkpoint_every, start_percent, end_percent,
              survivors, potential, fk_lambda, preview_decoder, vae=None, checkpoint_steps="", weights="", decode_batch=4):
        from ..diffusion.steering_sampler import SteeringSampler

        spec = reward_spec(creward, axis, weights)
        plan = make_plan(mode, particles, 1, survivors, potential, fk_lambda, checkpoint_every, start_percent, end_percent,
                         checkpoint_steps, 0)
        return (SteeringSampler(sampler_name, plan, reward_factory(creward, spec, preview_decoder, vae, decode_batch), keep=1),)


class CREwardCreativeKSampler:
    """KSampler with CREward steering: the k most creative particles of N, with scores and lineage."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising."}),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT", {"tooltip": "The latent to denoise (empty latent for text-to-image)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seeds the noise (particle 0 = KSampler's noise for this seed) and the resampling."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler_ancestral"}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal"}),
                "creward": ("CREWARD", {"tooltip": "The reward model from CREward Loader."}),
                **steering_inputs(("prune", "resample", "best-of-n")),
                "keep": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Samples returned per latent (k), best first."}),
            },
            "optional": {
                **optional_steering_inputs(),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "decode_images": ("BOOLEAN", {"default": True, "tooltip":
                    "Also output the returned samples decoded by the preview decoder (else a 1-pixel placeholder)."}),
            },
        }

    RETURN_TYPES = ("LATENT", "CREWARD_SCORES", "IMAGE", "STRING")
    RETURN_NAMES = ("latent", "scores", "images", "lineage")
    OUTPUT_TOOLTIPS = (
        "The k best particles of each latent, best first (latent 0's k, then latent 1's ...).",
        "Their CREward scores (of the preview-decoded samples), for CREward Select Best / Plot Scores.",
        "The returned samples decoded by the preview decoder (decode the latent with VAE Decode for full quality).",
        "Which particle survived which checkpoint, with its rewards.",
    )
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "A KSampler that steers N particles toward creative results with CREward: at checkpoint steps each particle's "
        "clean estimate is decoded, scored, and the particles are pruned (early best-of-N) or resampled (FK steering). "
        "Returns the k best, their scores and the lineage."
    )

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, creward, mode,
               particles, axis, checkpoint_every, start_percent, end_percent, survivors, potential, fk_lambda,
               preview_decoder, keep, vae=None, checkpoint_steps="", weights="", decode_batch=4, denoise=1.0,
               decode_images=True):
        import comfy.model_management
        import comfy.utils
        import latent_preview

        from ..diffusion.creative_sampling import creative_sample

        if keep > particles:
            raise CREwardError(f"keep (k={keep}) is larger than particles (N={particles}): at most N samples can be returned")
        spec = reward_spec(creward, axis, weights)
        plan = make_plan(mode, particles, keep, survivors, potential, fk_lambda, checkpoint_every, start_percent, end_percent,
                         checkpoint_steps, 0)
        plan.checkpoints(steps)  # explicit steps outside the schedule: say so before sampling
        factory = reward_factory(creward, spec, preview_decoder, vae, decode_batch)
        latent = latent_image["samples"]
        batch_index = latent_image.get("batch_index")
        noise_mask = latent_image.get("noise_mask")
        samples, report = creative_sample(
            model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, plan, factory, keep=keep,
            denoise=denoise, noise_mask=noise_mask, batch_index=batch_index,
            callback=latent_preview.prepare_callback(model, steps), disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            keep_images=decode_images,
        )
        batch = latent.shape[0]
        out = {key: value for key, value in latent_image.items() if key not in ("samples", "noise_mask", "batch_index")}
        out["samples"] = samples
        rows = [g for g in range(batch) for _ in range(len(report.origins[g]))]
        if noise_mask is not None:
            out["noise_mask"] = noise_mask[[min(g, noise_mask.shape[0] - 1) for g in rows]] if noise_mask.shape[0] > 1 else noise_mask
        if batch_index is not None:
            out["batch_index"] = [batch_index[g] for g in rows]
        table = ScoreTable(report.final_scores, tuple(creward.axes), scorer=creward.scorer)
        if decode_images:  # the final scoring's decode of the returned samples
            images = report.final_images.movedim(1, -1).to(comfy.model_management.intermediate_device())
        else:
            images = torch.zeros(1, 1, 1, 3)
        return (out, table, images, report.lineage_text())
