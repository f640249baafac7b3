"""``CREwardGuidance``: MODEL → MODEL with reward guidance (``creward.diffusion.guidance``).

Patch a model once and use it with any sampler node (KSampler, SamplerCustom ...): for the steps
between start and end percent, each step's clean estimate is moved along the gradient of the
CREward reward of its (TAESD-)decoded image.
"""

from __future__ import annotations

from ..models.axes import AXES
from .steering import DECODERS, WEIGHTED, reward_factory, reward_spec

CATEGORY = "CREward/sampling"


class CREwardGuidance:
    """Reward-gradient guidance on the denoised prediction, as a model patch."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..diffusion.guidance import WEIGHTINGS

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to patch."}),
                "creward": ("CREWARD", {"tooltip": "The reward model from CREward Loader."}),
                "axis": (list(AXES) + [WEIGHTED], {"default": "overall", "tooltip":
                    "The reward: one CREward axis, or 'weighted sum' of the axes with the 'weights' input."}),
                "scale": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.01, "tooltip":
                    "Step size along the reward gradient, in latent units per guided step when normalize is on "
                    "(0 = off: exactly the unpatched model)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "end_percent": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01}),
                "every": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Guide every k-th step of that range."}),
                "weighting": (list(WEIGHTINGS), {"default": WEIGHTINGS[0], "tooltip":
                    "σ-dependent weight: noise fraction σ²/(σ²+1) (strong early, fading out), constant, or σ."}),
                "max_grad_rms": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "tooltip":
                    "Gradient clipping: per-sample root-mean-square of the gradient at most this (0 = off)."}),
                "preview_decoder": (list(DECODERS), {"default": "auto", "tooltip":
                    "Differentiable decoder: auto = TAESD from models/vae_approx when there is one, else the VAE input."}),
            },
            "optional": {
                "normalize": ("BOOLEAN", {"default": True, "advanced": True, "tooltip":
                    "Rescale each sample's gradient to unit root-mean-square before clipping, so scale is the step size."}),
                "vae": ("VAE", {"tooltip": "The model's VAE, used when there is no TAESD (or preview_decoder is vae)."}),
                "weights": ("STRING", {"default": "geometry=1,material=1,texture=1,overall=0", "tooltip":
                    "Axis weights for 'weighted sum', e.g. 'geometry=1,texture=0.5'."}),
                "decode_batch": ("INT", {"default": 4, "min": 1, "max": 256, "advanced": True}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with CREward guidance; use it with any sampler.",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Reward guidance: after CFG, each guided step's clean estimate is decoded differentiably, scored by CREward, and "
        "moved along the reward's gradient (with σ weighting and gradient clipping). Works with every sampler."
    )

    def patch(self, model, creward, axis, scale, start_percent, end_percent, every, weighting, max_grad_rms,
              preview_decoder, normalize=True, vae=None, weights="", decode_batch=4):
        from ..diffusion.guidance import GuidanceSettings, guided_model

        settings = GuidanceSettings(scale=scale, start_percent=start_percent, end_percent=end_percent, every=every,
                                    weighting=weighting, max_grad_rms=max_grad_rms, normalize=normalize)
        spec = reward_spec(creward, axis, weights)
        patched, _ = guided_model(model, reward_factory(creward, spec, preview_decoder, vae, decode_batch), settings)
        return (patched,)
