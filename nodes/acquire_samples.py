"""``CREwardAcquireSamples``: generate N samples per prompt, keep the most creative per axis.

A thin adapter over ``creward.diffusion.acquire.acquire_samples``: writes a browsable folder
(``index.html``, contact sheet, manifest, latents) under ``output/<folder>/run_NNNNN/`` and
returns the contact sheet and the kept images. The folder is also a training pool for
``creward train lora --pool``.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch

from ..models.errors import CREwardError
from ..diffusion.prompts import parse_prompts

logger = logging.getLogger(__name__)

CATEGORY = "CREward/creative LoRA"


def _next_run_folder(root: str) -> str:
    numbers = [int(m.group(1)) for m in (re.match(r"^run_(\d+)$", name) for name in (os.listdir(root) if os.path.isdir(root) else [])) if m]
    return os.path.join(root, f"run_{max(numbers, default=0) + 1:05d}")


class CREwardAcquireSamples:
    """Generate, score and keep the top-k (and bottom-k) samples per prompt and axis."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to sample."}),
                "clip": ("CLIP", {"tooltip": "Its text encoder, for the prompts."}),
                "vae": ("VAE", {"tooltip": "Its VAE, to decode the samples."}),
                "creward": ("CREWARD", {"tooltip": "The reward model from CREward Loader."}),
                "prompts": ("STRING", {"multiline": True, "default": "a chair\na teapot",
                                       "tooltip": "One prompt per line (lines starting with # are skipped)."}),
                "samples_per_prompt": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Samples generated per prompt."}),
                "top_k": ("INT", {"default": 4, "min": 0, "max": 256, "tooltip": "Most creative samples kept per prompt and axis."}),
                "bottom_k": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Least creative samples kept too (0 = none)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Sample j of prompt p uses seed + p * samples_per_prompt + j (remake it with a KSampler)."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler"}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal"}),
                "width": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 8}),
                "folder": ("STRING", {"default": "creward_acquire",
                                      "tooltip": "Folder in ComfyUI's output directory; each run gets a new run_NNNNN inside."}),
            },
            "optional": {
                "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Negative prompt (empty = zeroed)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 256, "advanced": True,
                                       "tooltip": "Samples per sampler call."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("contact_sheet", "top_images", "folder")
    OUTPUT_TOOLTIPS = (
        "One row per prompt and axis: the top-k, then the bottom-k samples, with their scores.",
        "Every kept top-k image (prompt by prompt, axis by axis).",
        "The folder written (index.html, contact_sheet.png, manifest.json, latents.safetensors).",
    )
    FUNCTION = "acquire"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = (
        "Generates N samples per prompt, scores them with CREward and keeps the most (and least) creative per axis in a "
        "browsable folder with a contact sheet and a manifest: design inspiration, and a training pool for creative LoRAs."
    )
    SEARCH_ALIASES = ["creative samples", "best of n creativity", "contact sheet"]

    def acquire(self, model, clip, vae, creward, prompts, samples_per_prompt, top_k, bottom_k, seed, steps, cfg,
                sampler_name, scheduler, width, height, folder, negative_prompt="", batch_size=4):
        import comfy.model_management as model_management
        import comfy.utils
        import folder_paths

        from ..diffusion.acquire import CONTACT_SHEET, AcquireSettings, acquire_samples
        from ..diffusion.prompts import encode_prompts

        texts = parse_prompts(prompts)
        if not texts:
            raise CREwardError("prompts: no prompt given (one per line)")
        output_root = os.path.abspath(folder_paths.get_output_directory())
        root = os.path.abspath(os.path.join(output_root, folder.strip() or "creward_acquire"))
        if os.path.commonpath([root, output_root]) != output_root:
            raise CREwardError(f"folder: {folder!r} leaves the output directory")
        settings = AcquireSettings(
            samples_per_prompt=samples_per_prompt, top_k=top_k, bottom_k=bottom_k, seed=seed, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, width=width, height=height, batch_size=batch_size,
        )
        positive = encode_prompts(clip, texts)
        negative = encode_prompts(clip, [negative_prompt])[0] if negative_prompt.strip() else None
        out = _next_run_folder(root)
        bar = comfy.utils.ProgressBar(len(texts) * samples_per_prompt)

        def on_progress(done, total):
            bar.update_absolute(done, total)
            model_management.throw_exception_if_processing_interrupted()

        result = acquire_samples(
            model, vae, positive, texts, lambda images: creward.score_images(images, batch_size), creward.axes, out,
            settings, negative=negative, on_progress=on_progress, head_name=os.path.basename(creward.model.head_info.path or ""),
        )
        sheet = torch.from_numpy(np.asarray(result.contact_sheet.convert("RGB"), dtype=np.float32) / 255.0)[None]
        top = result.top_images if result.top_images.shape[0] else torch.zeros(1, height, width, 3)
        subfolder = os.path.relpath(out, output_root)
        ui = {"images": [{"filename": CONTACT_SHEET, "subfolder": subfolder, "type": "output"}],
              "text": [f"{len(result.manifest['samples'])} samples scored; kept in {subfolder}"]}
        return {"ui": ui, "result": (sheet, top.to(model_management.intermediate_device()), out)}
