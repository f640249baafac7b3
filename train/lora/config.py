"""What a creative-LoRA run is: every setting, validated, with the subset that defines the run.

Plain Python (no ComfyUI): the CLI builds it from flags, the node from its inputs, and a resumed
run compares the stored one with the new one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Sequence

from ...models.axes import AXES, axis_weights
from ...models.errors import CREwardError

TARGETS = ("attention", "linear", "all")
MIXED_PRECISION = ("auto", "fp32", "bf16", "fp16")
SAVE_DTYPES = ("fp16", "bf16", "fp32")

# Settings that change what is trained; a resumed run must agree on all of them.
RUN_DEFINING = (
    "axis_weights",
    "denoise_weight",
    "rank",
    "alpha",
    "learning_rate",
    "batch_size",
    "seed",
    "width",
    "height",
    "targets",
    "timestep_range",
    "mixed_precision",
    "samples_per_prompt",
    "sample_steps",
    "cfg",
    "sampler_name",
    "scheduler",
    "max_grad_norm",
    "weight_decay",
)


class LoraConfigError(CREwardError):
    """A creative-LoRA setting is out of range, or a resumed run does not match its checkpoint."""


def normalize_axis_weights(spec: str | Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """Axis choice → ``{axis: w}`` over all axes.

    Accepts an axis name (``"texture"``), ``"geometry=1,texture=0.5"``, ``"1,0,0.5,0"``, a mapping
    or a sequence of four numbers.
    """
    try:
        weights = axis_weights(spec)
    except CREwardError as error:
        raise LoraConfigError(str(error)) from None
    if not bool(weights.abs().sum() > 0):
        raise LoraConfigError(f"axis weights {spec!r} are all zero: at least one axis needs a weight")
    return {axis: float(value) for axis, value in zip(AXES, weights.tolist())}


@dataclass
class CreativeLoraConfig:
    """Settings of one reward-guided LoRA run.

    Loss per sample (the paper's objective)::

        loss = - sum_c w_c * CREward_c(decode(x0_hat)) + denoise_weight * mean((x0_hat - x0) ** 2)

    with ``x0_hat`` the model's one-step clean estimate at a random noise level, computed in the
    model's own latent space with ComfyUI's model-sampling maths.

    Attributes:
        axis_weights: ``w``, one weight per axis (geometry, material, texture, overall); negative
            weights train *less* creative on that axis. Any form ``normalize_axis_weights`` accepts.
        denoise_weight: ``lambda``, weight of the denoising term that keeps the model a denoiser.
        rank: LoRA rank (> 0).
        alpha: LoRA alpha; the update is ``alpha / rank * up @ down`` (ComfyUI's convention).
        learning_rate: AdamW learning rate of the LoRA weights.
        steps: optimiser steps in total (a resumed run may raise it).
        batch_size: samples per optimiser step.
        seed: seeds LoRA initialisation, the sample pool, and each step's noise (step ``i``
            always draws the same noise, so a resumed run continues exactly).
        width, height: image size in pixels of the pool samples (multiples of 8).
        targets: which layers get a LoRA: ``attention`` (linear layers of attention blocks),
            ``linear`` (every linear layer) or ``all`` (linear and convolution layers).
        timestep_range: fraction of the sampling schedule to draw noise levels from,
            ``(0, 1)`` = everything from pure noise to clean.
        gradient_checkpointing: recompute diffusion-model and VAE-decoder blocks in backward.
        mixed_precision: ``auto`` (bf16 on GPUs that have it, else fp32), ``fp32``, ``bf16``,
            ``fp16`` (with loss scaling).
        checkpoint_every: save a resumable checkpoint every N steps (and at the end).
        keep_checkpoints: how many checkpoints to keep (oldest removed first).
        eval_every: evaluate the held-out reward every N steps (0: at every checkpoint).
        eval_seeds: held-out noise seeds per prompt for the evaluation.
        eval_steps: sampler steps of the evaluation samples.
        samples_per_prompt: clean latents per prompt in the training pool when the pool is the
            model's own samples (ignored when latents are given).
        sample_steps: sampler steps used to make the pool.
        cfg, sampler_name, scheduler: sampler settings of the pool and evaluation samples.
        max_grad_norm: gradient clipping (0: off).
        weight_decay: AdamW weight decay.
        save_dtype: dtype of the exported LoRA (checkpoints are always fp32).
    """

    axis_weights: dict[str, float] | str | Sequence[float] = "overall"
    denoise_weight: float = 1.0
    rank: int = 8
    alpha: float = 8.0
    learning_rate: float = 1e-4
    steps: int = 500
    batch_size: int = 1
    seed: int = 0
    width: int = 512
    height: int = 512
    targets: str = "attention"
    timestep_range: tuple[float, float] = (0.0, 1.0)
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_seeds: int = 2
    eval_steps: int = 20
    samples_per_prompt: int = 2
    sample_steps: int = 20
    cfg: float = 7.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    save_dtype: str = "fp16"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.axis_weights = normalize_axis_weights(self.axis_weights)
        self.timestep_range = tuple(float(value) for value in self.timestep_range)
        checks = [
            (self.rank > 0, f"`rank` should be positive, got {self.rank}"),
            (self.alpha > 0, f"`alpha` should be positive, got {self.alpha}"),
            (self.learning_rate > 0, f"`learning_rate` should be positive, got {self.learning_rate}"),
            (self.steps > 0, f"`steps` should be positive, got {self.steps}"),
            (self.batch_size > 0, f"`batch_size` should be positive, got {self.batch_size}"),
            (self.denoise_weight >= 0, f"`denoise_weight` (lambda) should be >= 0, got {self.denoise_weight}"),
            (self.width > 0 and self.width % 8 == 0, f"`width` should be a positive multiple of 8, got {self.width}"),
            (self.height > 0 and self.height % 8 == 0, f"`height` should be a positive multiple of 8, got {self.height}"),
            (self.targets in TARGETS, f"`targets` should be one of {', '.join(TARGETS)}, got {self.targets!r}"),
            (self.mixed_precision in MIXED_PRECISION,
             f"`mixed_precision` should be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"),
            (self.save_dtype in SAVE_DTYPES, f"`save_dtype` should be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}"),
            (len(self.timestep_range) == 2 and 0.0 <= self.timestep_range[0] < self.timestep_range[1] <= 1.0,
             f"`timestep_range` should be (low, high) with 0 <= low < high <= 1, got {self.timestep_range}"),
            (self.checkpoint_every > 0, f"`checkpoint_every` should be positive, got {self.checkpoint_every}"),
            (self.keep_checkpoints > 0, f"`keep_checkpoints` should be positive, got {self.keep_checkpoints}"),
            (self.eval_every >= 0, f"`eval_every` should be >= 0, got {self.eval_every}"),
            (self.eval_seeds >= 0, f"`eval_seeds` should be >= 0, got {self.eval_seeds}"),
            (self.eval_steps > 0, f"`eval_steps` should be positive, got {self.eval_steps}"),
            (self.samples_per_prompt > 0, f"`samples_per_prompt` should be positive, got {self.samples_per_prompt}"),
            (self.sample_steps > 0, f"`sample_steps` should be positive, got {self.sample_steps}"),
            (self.max_grad_norm >= 0, f"`max_grad_norm` should be >= 0, got {self.max_grad_norm}"),
            (self.weight_decay >= 0, f"`weight_decay` should be >= 0, got {self.weight_decay}"),
            (math.isfinite(self.cfg), f"`cfg` should be a finite number, got {self.cfg}"),
        ]
        for ok, message in checks:
            if not ok:
                raise LoraConfigError(message)

    @property
    def eval_interval(self) -> int:
        return self.eval_every or self.checkpoint_every

    def primary_axis(self) -> str:
        """The single axis trained on, or ``"mix"`` when several axes have weights."""
        used = [axis for axis, weight in self.axis_weights.items() if weight != 0]
        return used[0] if len(used) == 1 else "mix"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["timestep_range"] = list(self.timestep_range)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "CreativeLoraConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def differences(self, other: "CreativeLoraConfig") -> list[str]:
        """Run-defining settings that differ from ``other``, as ``name: ours != theirs``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{name}: {theirs[name]!r} != {mine[name]!r}" for name in RUN_DEFINING if mine[name] != theirs[name]]
