"""Tiny diffusion models, VAEs and conditioning built from ComfyUI's own classes (random weights).

Needs ``comfy`` importable (the ``comfy_inprocess`` fixture puts ComfyUI on ``sys.path``).
ComfyUI's layers skip weight initialisation, so every parameter is filled explicitly here.
"""

from __future__ import annotations

import math

import torch

TINY_CONTEXT = 32


def fill_weights(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Deterministic weights: matrices/kernels ~ N(0, gain^2 / fan_in), 1-D weights (norms) 1, biases 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2:
                fan_in = parameter.shape[1:].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * gain / math.sqrt(fan_in))
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.fill_(1.0)


def sd15_unet_config(model_channels: int = 32, context_dim: int = TINY_CONTEXT, levels: int = 2) -> dict:
    """An SD1.x-style UNet config (what ``model_detection`` would produce) with 1 res block per level."""
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [1] * levels, "transformer_depth": [1] * levels,
        "transformer_depth_output": [1] * (2 * levels), "channel_mult": [1, 2, 4, 4][:levels],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": context_dim,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


def tiny_sd15_model(seed: int = 0, model_channels: int = 32, context_dim: int = TINY_CONTEXT, levels: int = 2,
                    prediction: str = "eps"):
    """A ModelPatcher around ComfyUI's SD1.x ``BaseModel`` with a tiny UNet (fp32, CPU).

    ``prediction``: ``eps`` (SD1.x), ``v`` (SD2-v style) or ``flow`` (rectified flow sampling).
    """
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(sd15_unet_config(model_channels, context_dim, levels))
    config.set_inference_dtype(torch.float32, None)
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION,
                  "flow": comfy.model_base.ModelType.FLOW}[prediction]
    if prediction == "flow":
        config.sampling_settings = {"shift": 1.0, "multiplier": 1000}
    model = comfy.model_base.BaseModel(config, model_type=model_type)
    fill_weights(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def _calibrated_taesd(seed: int):
    """Random TAESD whose decoder output is about N(0, 0.5) (random decoders saturate the [0, 1] clamp)."""
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    fill_weights(taesd, seed)
    last = taesd.taesd_decoder[-1]
    probe = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(seed + 1)) * 0.5
    with torch.no_grad():
        out = taesd.taesd_decoder(probe)
        last.weight.mul_(0.25 / out.std())
        last.bias.sub_(taesd.taesd_decoder(probe).mean(dim=(0, 2, 3)) - 0.5)
    return taesd


def tiny_vae(seed: int = 0):
    """A random TAESD (4 latent channels, 8x upscale) as ``comfy.sd.VAE``, like ``VAELoader("taesd")``."""
    import comfy.sd

    state = dict(_calibrated_taesd(seed).state_dict())
    state["vae_scale"] = torch.tensor(0.18215)
    state["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=state)


def taesd_files(folder, seed: int = 0) -> tuple:
    """Write random ``taesd_encoder.safetensors`` / ``taesd_decoder.safetensors`` (``models/vae_approx``)."""
    from pathlib import Path

    from safetensors.torch import save_file

    taesd = _calibrated_taesd(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = folder / "taesd_encoder.safetensors", folder / "taesd_decoder.safetensors"
    save_file({k: v.contiguous() for k, v in taesd.taesd_encoder.state_dict().items()}, str(encoder))
    save_file({k: v.contiguous() for k, v in taesd.taesd_decoder.state_dict().items()}, str(decoder))
    return encoder, decoder


def tiny_conditioning(count: int, context_dim: int = TINY_CONTEXT, tokens: int = 7, seed: int = 0) -> list[list]:
    """``count`` random CONDITIONINGs (``[[tensor [1, tokens, context_dim], {}]]``), one per 'prompt'."""
    generator = torch.Generator().manual_seed(seed)
    return [[[torch.randn(1, tokens, context_dim, generator=generator), {}]] for _ in range(count)]


def detectable_sd15_unet_state_dict(seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """State dict of an SD1.x UNet that ComfyUI's detection accepts (``model_channels`` 320,
    ``context_dim`` 768) but with one level and one res block: about 26 M parameters.

    Keys are ComfyUI's (``input_blocks.…``), as in ``models/diffusion_models`` UNet files.
    """
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.SD15(sd15_unet_config(320, 768, levels=1))
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(config)
    fill_weights(model.diffusion_model, seed)
    return {k: v.to(dtype).contiguous() for k, v in model.diffusion_model.state_dict().items()}


class TinyClip:
    """Stands in for ComfyUI's CLIP in tests of code that encodes prompts: each text maps to its own
    fixed random conditioning (``[1, 7, context_dim]``, seeded by the text), like a frozen encoder."""

    def __init__(self, context_dim: int = TINY_CONTEXT, tokens: int = 7):
        self.context_dim = context_dim
        self.tokens = tokens

    def tokenize(self, text: str):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        import zlib

        generator = torch.Generator().manual_seed(zlib.crc32(tokens.encode("utf-8")))
        return [[torch.randn(1, self.tokens, self.context_dim, generator=generator), {}]]
