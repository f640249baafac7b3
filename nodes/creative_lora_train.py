"""``CREwardTrainCreativeLoRA``: reward-guided LoRA training with CREward, inside ComfyUI.

A thin adapter over ``creward.train.lora.trainer``: the prompts are encoded with the CLIP input,
the LoRA is written to ``models/loras/<lora_name>.safetensors`` and the run (checkpoints, pool,
reward curve) to ``output/creward_lora_runs/<lora_name>/``; queueing the same graph again after
an interruption resumes from the newest checkpoint. The MODEL output is the input model with the
new LoRA applied (strength 1), as ``LoraLoader`` would load it.
"""

from __future__ import annotations

import logging
import os

import torch

from ..models.axes import AXES
from ..models.errors import CREwardError
from ..train.lora.config import MIXED_PRECISION, SAVE_DTYPES, TARGETS, CreativeLoraConfig
from ..diffusion.prompts import parse_prompts

logger = logging.getLogger(__name__)

CATEGORY = "CREward/creative LoRA"
CUSTOM = "custom (axis_weights)"
RUNS_FOLDER = "creward_lora_runs"


def _samplers():
    import comfy.samplers

    return comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


def _image_tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


class CREwardTrainCreativeLoRA:
    """Train a creative LoRA: the model learns to make images CREward scores as more creative."""

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = _samplers()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model (any image model ComfyUI loads: SD1.x, SDXL, ...)."}),
                "clip": ("CLIP", {"tooltip": "The base model's text encoder, to encode the prompts."}),
                "vae": ("VAE", {"tooltip": "The base model's VAE: the model's estimates are decoded with it for CREward."}),
                "creward": ("CREWARD", {"tooltip": "The reward model from CREward Loader."}),
                "prompts": ("STRING", {
                    "multiline": True, "default": "a chair\na teapot",
                    "tooltip": "Training prompts, one per line (lines starting with # are skipped).",
                }),
                "axis": ([*AXES, CUSTOM], {
                    "default": "overall",
                    "tooltip": "The creativity axis to raise; 'custom' uses the axis_weights text for a mix.",
                }),
                "denoise_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                    "tooltip": "lambda: weight of the denoising loss that keeps the model a good denoiser "
                    "(0 = reward only; higher = closer to the base model).",
                }),
                "rank": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "LoRA rank."}),
                "alpha": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 1024.0, "step": 0.01,
                                    "tooltip": "LoRA alpha; the update is scaled by alpha / rank."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-6,
                                            "tooltip": "AdamW learning rate."}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 100000, "tooltip": "Training (optimiser) steps."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Samples per step."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seeds the LoRA initialisation, the training pool and every step's noise."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                  "tooltip": "Width of the training images (pool samples)."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Height of the training images (pool samples)."}),
                "lora_name": ("STRING", {"default": "creward_creative",
                                         "tooltip": "File name (without .safetensors) in models/loras/; also names the run folder."}),
            },
            "optional": {
                "axis_weights": ("STRING", {
                    "default": "geometry=1,texture=0.5",
                    "tooltip": "With axis 'custom': weights per axis, 'geometry=1,texture=0.5' or '1,0,0.5,0' "
                    "(geometry, material, texture, overall); negative = less creative.",
                }),
                "latents": ("LATENT", {"tooltip": "Optional clean latents to train from instead of the model's own samples "
                                       "(latent i goes with prompt i mod the number of prompts)."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "Negative prompt of the pool/evaluation samples (empty = zeroed)."}),
                "samples_per_prompt": ("INT", {"default": 2, "min": 1, "max": 256, "advanced": True,
                                               "tooltip": "Base-model samples per prompt in the training pool."}),
                "sample_steps": ("INT", {"default": 20, "min": 1, "max": 200, "advanced": True,
                                         "tooltip": "Sampler steps of the pool samples."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "advanced": True,
                                  "tooltip": "CFG of the pool and evaluation samples."}),
                "sampler_name": (samplers, {"default": "euler", "advanced": True}),
                "scheduler": (schedulers, {"default": "normal", "advanced": True}),
                "targets": (list(TARGETS), {"default": "attention", "advanced": True,
                                            "tooltip": "Layers with a LoRA: attention, every linear, or all (linear + conv)."}),
                "timestep_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                             "tooltip": "Noise levels are drawn from this part of the schedule (0 = pure noise)."}),
                "timestep_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                           "tooltip": "... to this part (1 = clean)."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True, "advanced": True,
                                                       "tooltip": "Recompute activations in backward: less memory, slower."}),
                "mixed_precision": (list(MIXED_PRECISION), {"default": "auto", "advanced": True,
                                                            "tooltip": "Training compute dtype (auto: bf16 on GPUs that have it)."}),
                "checkpoint_every": ("INT", {"default": 50, "min": 1, "max": 100000, "advanced": True,
                                             "tooltip": "Save a resumable checkpoint every N steps."}),
                "eval_seeds": ("INT", {"default": 2, "min": 0, "max": 64, "advanced": True,
                                       "tooltip": "Held-out samples per prompt for the reward curve (0 = none)."}),
                "eval_steps": ("INT", {"default": 20, "min": 1, "max": 200, "advanced": True,
                                       "tooltip": "Sampler steps of the held-out samples."}),
                "resume": ("BOOLEAN", {"default": True, "advanced": True,
                                       "tooltip": "Continue the run of the same name from its newest checkpoint."}),
                "save_dtype": (list(SAVE_DTYPES), {"default": "fp16", "advanced": True,
                                                   "tooltip": "Precision of the saved LoRA file."}),
            },
        }

    RETURN_TYPES = ("MODEL", "STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "lora_name", "reward_curve", "summary")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied at strength 1.",
        "The LoRA's name in models/loras/ (for LoRA loaders and CREward Creative LoRA).",
        "Training reward per step and held-out reward at each checkpoint.",
        "What was trained, and the held-out mean reward before and after.",
    )
    FUNCTION = "train"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = (
        "Trains a LoRA that makes the model more creative on one CREward axis (or a mix): the model's one-step clean "
        "estimate is decoded and scored by CREward, and a denoising loss (lambda) keeps it a good denoiser. Writes "
        "models/loras/<lora_name>.safetensors; rerun to resume after an interruption."
    )
    SEARCH_ALIASES = ["creative lora", "reward fine-tuning", "train lora creativity"]

    def train(self, model, clip, vae, creward, prompts, axis, denoise_weight, rank, alpha, learning_rate, steps,
              batch_size, seed, width, height, lora_name, axis_weights="", latents=None, negative_prompt="",
              samples_per_prompt=2, sample_steps=20, cfg=7.0, sampler_name="euler", scheduler="normal",
              targets="attention", timestep_start=0.0, timestep_end=1.0, gradient_checkpointing=True,
              mixed_precision="auto", checkpoint_every=50, eval_seeds=2, eval_steps=20, resume=True, save_dtype="fp16"):
        import comfy.model_management as model_management
        import comfy.sd
        import comfy.utils
        import folder_paths

        from ..diffusion.prompts import encode_prompts
        from ..train.lora.trainer import train_creative_lora

        texts = parse_prompts(prompts)
        if not texts:
            raise CREwardError("prompts: no prompt given (one per line)")
        name = os.path.basename(lora_name.strip()).removesuffix(".safetensors")
        if not name:
            raise CREwardError("lora_name: give a file name for the LoRA")
        config = CreativeLoraConfig(
            axis_weights=axis_weights if axis == CUSTOM else axis, denoise_weight=denoise_weight, rank=rank,
            alpha=alpha, learning_rate=learning_rate, steps=steps, batch_size=batch_size, seed=seed, width=width,
            height=height, targets=targets, timestep_range=(timestep_start, timestep_end),
            gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision,
            checkpoint_every=checkpoint_every, eval_seeds=eval_seeds, eval_steps=eval_steps,
            samples_per_prompt=samples_per_prompt, sample_steps=sample_steps, cfg=cfg, sampler_name=sampler_name,
            scheduler=scheduler, save_dtype=save_dtype,
        )
        positive = encode_prompts(clip, texts)
        negative = encode_prompts(clip, [negative_prompt])[0] if negative_prompt.strip() else None
        output = os.path.join(folder_paths.get_folder_paths("loras")[0], f"{name}.safetensors")
        run_dir = os.path.join(folder_paths.get_output_directory(), RUNS_FOLDER, name)
        bar = comfy.utils.ProgressBar(steps)

        def on_step(info):
            bar.update_absolute(info.step, steps)
            model_management.throw_exception_if_processing_interrupted()

        creward.load(batch_size)
        result = train_creative_lora(
            model, vae, creward.model, positive, config, run_dir, output=output, prompts=texts, negative=negative,
            latents=None if latents is None else latents["samples"],
            head_name=os.path.basename(creward.model.head_info.path or ""),
            resume=resume, on_step=on_step, keep_loaded=(creward.patcher,),
        )
        trained, _ = comfy.sd.load_lora_for_models(model, None, result.lora_tensors, 1.0, 0.0)
        before, after = result.reward_before, result.reward_after
        change = f"{before:.4f} -> {after:.4f}" if before is not None and after is not None else "not evaluated"
        summary = (
            f"{name}.safetensors: {config.primary_axis()} {config.axis_weights}, {result.steps} steps"
            f"{f' (resumed at {result.resumed_from})' if result.resumed_from else ''}, rank {rank}, lambda {denoise_weight}; "
            f"held-out mean reward {change}"
        )
        logger.info("CREward creative LoRA: %s", summary)
        return {"ui": {"text": [summary]},
                "result": (trained, f"{name}.safetensors", _image_tensor(result.curve), summary)}
