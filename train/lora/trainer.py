"""Reward-guided LoRA training with CREward (the trainer core).

For a prompt ``p``, a clean latent ``x0`` from the pool (the base model's own samples, or
latents given by the caller), noise ``eps`` and a noise level ``sigma``:

1. ``x_t = noise_scaling(sigma, eps, x0)`` and ``x0_hat = model(x_t, sigma, p)``, the model's
   one-step clean estimate (``calculate_denoised``), both from ComfyUI's model sampling, so eps-,
   v- and flow-prediction models work alike (see ``session.py``);
2. ``images = VAE.decode(x0_hat)`` with gradients, ``scores = CREward(images)``
   (differentiable preprocessing);
3. ``loss = -sum_c w_c * scores_c + lambda * mean((x0_hat - x0) ** 2)``, averaged over the batch;
   only the LoRA weights get gradients. The one-step estimate avoids back-propagating through the
   sampling chain.

The denoising term is the usual diffusion loss written in ``x0``-space (for eps models it is the
eps loss weighted by ``sigma ** 2``), the same parameterisation ComfyUI's ``TrainLoraNode`` uses;
it keeps the LoRA a good denoiser while the reward term pushes creativity.

A run lives in a folder: ``run.json`` (settings, prompts, base model), ``pool.safetensors`` (the
clean latents), ``checkpoints/step_NNNNNN/`` (``lora.safetensors`` in the export format,
``optimizer.pt``, ``state.json``) and ``reward_curve.png``. Calling ``train_creative_lora`` again
on the same folder resumes from the newest checkpoint; step ``i`` always draws the same noise,
so a resumed run ends where an uninterrupted one would.

Imports ComfyUI: only import this module where ``comfy`` is importable (the CLI puts ComfyUI on
``sys.path`` first; nodes run inside ComfyUI).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import comfy.model_management
import torch
from tqdm.auto import tqdm

from ...diffusion.clean_estimate import run_in_session
from ...diffusion.decoders import decode_differentiable
from ...diffusion.sampling import decode, sample_latents
from ...models.autograd import frozen, make_autograd_ready
from ...models.errors import CREwardError
from ...models.output_files import write_text_atomically
from . import base_model
from .config import CreativeLoraConfig, LoraConfigError
from .curve import reward_curve
from .export import DTYPES, adapters_from_state_dict, atomic_save, build_metadata, lora_state_dict
from .injection import LoraSet
from .precision import autocast, gradient_checkpointing, precision

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
POOL_FILE = "pool.safetensors"
CHECKPOINT_DIR = "checkpoints"
CURVE_FILE = "reward_curve.png"
RUN_FORMAT = 1
EVAL_PERCENTS = (0.25, 0.5, 0.75)
EVAL_DENOISE_ITEMS = 8
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def paired_change(evals: list[dict]) -> dict:
    """Before vs after on the same held-out samples: the mean per-sample change with its standard
    error, the fraction of samples that improved, and each side's spread (empty without both)."""
    first = next((e for e in evals if e["step"] == 0 and e.get("rewards")), None)
    last = evals[-1] if evals and evals[-1]["step"] > 0 and evals[-1].get("rewards") else None
    if first is None or last is None or len(first["rewards"]) != len(last["rewards"]):
        return {}
    before, after = torch.tensor(first["rewards"]), torch.tensor(last["rewards"])
    change = after - before
    count = change.numel()
    stderr = float(change.std() / count ** 0.5) if count > 1 else float("nan")
    return {
        "samples": count,
        "reward_std_before": round(float(before.std()) if count > 1 else 0.0, 6),
        "reward_std_after": round(float(after.std()) if count > 1 else 0.0, 6),
        "paired_change": round(float(change.mean()), 6),
        "paired_change_stderr": round(stderr, 6) if stderr == stderr else None,
        "improved_fraction": round(float((change > 0).float().mean()), 4),
    }


@dataclass
class StepInfo:
    """What the progress callback gets after every optimiser step."""

    step: int
    total: int
    loss: float
    reward: float
    denoise: float


@dataclass
class TrainResult:
    lora_path: Path | None
    lora_tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    history: list[dict]
    evals: list[dict]
    steps: int
    resumed_from: int
    run_dir: Path
    curve: "object" = None  # PIL image of the reward curve

    @property
    def reward_before(self) -> float | None:
        return self.evals[0]["reward"] if self.evals and self.evals[0]["step"] == 0 else None

    @property
    def reward_after(self) -> float | None:
        return self.evals[-1]["reward"] if self.evals else None


@dataclass
class _Pool:
    latents: torch.Tensor  # VAE latents [N, C, h, w]
    prompt_index: torch.Tensor  # [N] long
    source: str  # "samples" or "given"


@dataclass
class _State:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 12_345) % (2**63))


def _outside_inference_mode(method):
    """Run ``method`` with autograd available even when the caller is under ``torch.inference_mode()``
    (ComfyUI runs nodes under it): LoRA weights, optimiser state and graphs must be normal tensors."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return method(*args, **kwargs)

    return wrapper


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


class CreativeLoraTrainer:
    """One run. Most callers want ``train_creative_lora``; tests and the benchmark drive steps directly."""

    @_outside_inference_mode
    def __init__(
        self,
        model,
        vae,
        creward,
        positive: list[list],
        config: CreativeLoraConfig,
        run_dir: str | Path,
        prompts: list[str] | None = None,
        negative: list | None = None,
        latents: torch.Tensor | None = None,
        base_name: str = "",
        head_name: str = "",
        keep_loaded: tuple = (),
        latent_prompt_index: torch.Tensor | None = None,
    ):
        if not positive:
            raise CREwardError("no prompts/conditioning to train on")
        if vae is None:
            raise CREwardError("creative LoRA training needs a VAE to decode the model's estimates for CREward")
        self.model = model
        self.vae = vae
        self.creward = creward
        self.positive = positive
        self.negative = negative
        self.config = config
        self.run_dir = Path(run_dir)
        self.prompts = list(prompts) if prompts is not None else [f"prompt {i}" for i in range(len(positive))]
        if len(self.prompts) != len(positive):
            raise CREwardError(f"{len(self.prompts)} prompt texts for {len(positive)} conditionings")
        self.given_latents = latents
        self.given_prompt_index = latent_prompt_index
        self.base_name = base_name
        self.head_name = head_name
        self.keep_loaded = list(keep_loaded)
        self.axis_vector = self._axis_vector()
        self.device = model.load_device
        self.compute_dtype = precision(config.mixed_precision, self.device)

        self.patcher = model.clone()
        if self.compute_dtype is not None:
            self.patcher.set_model_compute_dtype(self.compute_dtype)
        self.lora = LoraSet.create(self.patcher, config.targets, config.rank, config.alpha, config.seed, device=self.device)
        self.lora.attach(self.patcher)
        self.optimizer = torch.optim.AdamW(self.lora.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute_dtype == torch.float16)
        self.base_info = {
            "name": base_name,
            "architecture": base_model.architecture(model),
            "signature": base_model.signature(model),
        }
        self.state = _State()
        self.resumed_from = 0
        self.pool: _Pool | None = None

    # -- set-up ------------------------------------------------------------------------------
    def _axis_vector(self) -> torch.Tensor:
        axes = tuple(getattr(self.creward, "axes", ()))
        weights = self.config.axis_weights
        missing = [axis for axis, weight in weights.items() if weight != 0 and axis not in axes]
        if missing:
            raise CREwardError(f"this CREward model scores {list(axes)}; it has no {missing} axis to train on")
        return torch.tensor([weights.get(axis, 0.0) for axis in axes], dtype=torch.float32)

    def _conds(self) -> dict[str, list]:
        conds = {f"creward_prompt_{i}": cond for i, cond in enumerate(self.positive)}
        conds["positive"] = self.positive[0]
        return conds

    def _latent_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.pool.latents.shape[1:])

    def _describe_run(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "config": self.config.to_dict(),
            "prompts": self.prompts,
            "base": self.base_info,
            "head": self.head_name,
            "pool": "given" if self.given_latents is not None else "samples",
        }

    @_outside_inference_mode
    def prepare(self, resume: bool = True) -> int:
        """Create or reopen the run folder, build or load the pool, load the newest checkpoint. Returns the step."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_file = self.run_dir / RUN_FILE
        latest = self.latest_checkpoint() if resume else None
        if run_file.is_file() and resume:
            self._check_same_run(json.loads(run_file.read_text()))
        elif latest is not None:
            raise LoraConfigError(f"{self.run_dir} has checkpoints but no {RUN_FILE}; use an empty folder")
        if not resume and (self.run_dir / CHECKPOINT_DIR).exists():
            shutil.rmtree(self.run_dir / CHECKPOINT_DIR)
        write_text_atomically(run_file, json.dumps(self._describe_run(), indent=2) + "\n")
        self.pool = self._load_or_build_pool(resume)
        if latest is not None:
            self._load_checkpoint(latest)
        return self.state.step

    def _check_same_run(self, stored: dict) -> None:
        problems = []
        try:
            stored_config = CreativeLoraConfig.from_dict(stored["config"])
        except (KeyError, TypeError, CREwardError) as error:
            raise LoraConfigError(f"{self.run_dir / RUN_FILE} is not a readable run description: {error}") from error
        problems += [f"setting {d}" for d in self.config.differences(stored_config)]
        if stored.get("prompts") != self.prompts:
            problems.append(f"prompts differ ({len(stored.get('prompts', []))} stored vs {len(self.prompts)} now)")
        stored_base = stored.get("base", {})
        if stored_base.get("architecture") != self.base_info["architecture"]:
            problems.append(f"base architecture {stored_base.get('architecture')} != {self.base_info['architecture']}")
        elif not base_model.signature_matches(stored_base.get("signature", []), self.base_info["signature"]):
            problems.append("base model weights differ from the ones the run started with")
        if stored.get("pool") != ("given" if self.given_latents is not None else "samples"):
            problems.append(f"training pool was {stored.get('pool')!r}")
        if problems:
            raise LoraConfigError(
                f"cannot resume the run in {self.run_dir}: " + "; ".join(problems)
                + " (stored value first). Use the same settings, or another folder / resume=False to start over."
            )

    def _load_or_build_pool(self, resume: bool) -> _Pool:
        from safetensors.torch import load_file

        if self.given_latents is not None:
            latents = self.given_latents.detach().float().cpu()
            if latents.ndim != 4:
                raise CREwardError(f"training latents must be [N, C, h, w], got shape {tuple(latents.shape)}")
            count = latents.shape[0]
            if self.given_prompt_index is not None:
                index = torch.as_tensor(self.given_prompt_index).long().flatten()
                if index.numel() != count or int(index.min()) < 0 or int(index.max()) >= len(self.positive):
                    raise CREwardError(
                        f"latent_prompt_index must give one prompt (0..{len(self.positive) - 1}) per latent; "
                        f"got {index.numel()} entries for {count} latents")
            else:
                index = torch.arange(count) % len(self.positive)
            return _Pool(latents, index, "given")
        path = self.run_dir / POOL_FILE
        if resume and path.is_file():
            tensors = load_file(str(path))
            pool = _Pool(tensors["latents"], tensors["prompt_index"].long(), "samples")
            if int(pool.prompt_index.max()) < len(self.positive) and pool.latents.shape[0] == len(self.positive) * self.config.samples_per_prompt:
                logger.info("reusing the training pool in %s (%d latents)", path, pool.latents.shape[0])
                return pool
            logger.warning("%s does not fit this run; making a new pool", path)
        config = self.config
        latents, index = [], []
        started = time.monotonic()
        for i, cond in enumerate(self.positive):
            samples = sample_latents(
                self.model, self.vae, cond, self.negative, seed=config.seed + i, batch=config.samples_per_prompt,
                width=config.width, height=config.height, steps=config.sample_steps, cfg=config.cfg,
                sampler_name=config.sampler_name, scheduler=config.scheduler,
            )
            latents.append(samples.float().cpu())
            index += [i] * samples.shape[0]
        pool = _Pool(torch.cat(latents), torch.tensor(index), "samples")
        atomic_save({"latents": pool.latents.contiguous(), "prompt_index": pool.prompt_index}, path)
        logger.info("made the training pool: %d samples of the base model in %.1f s", pool.latents.shape[0], time.monotonic() - started)
        return pool

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        folder = self.run_dir / CHECKPOINT_DIR
        found = []
        if folder.is_dir():
            for child in folder.iterdir():
                match = _STEP_DIR.match(child.name)
                if match and (child / "state.json").is_file():
                    found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def _load_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((folder / "state.json").read_text())
        factors = adapters_from_state_dict(load_file(str(folder / "lora.safetensors")), str(folder / "lora.safetensors"))
        self.lora.load_factors({name: (up, down, alpha) for name, (up, down, alpha) in factors.items()}, str(folder))
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        _move_optimizer_state(self.optimizer, self.device)
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.state = _State(step=int(state["step"]), history=state["history"], evals=state["evals"])
        self.resumed_from = self.state.step
        logger.info("resumed %s from step %d (%s)", self.run_dir, self.state.step, folder)

    def save_checkpoint(self) -> Path:
        step = self.state.step
        root = self.run_dir / CHECKPOINT_DIR
        final = root / f"step_{step:06d}"
        partial = root / f".step_{step:06d}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        tensors = lora_state_dict(self.lora.factors(), self.lora.weight_shapes, torch.float32)
        atomic_save(tensors, partial / "lora.safetensors", self.metadata())
        torch.save({"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None},
                   partial / "optimizer.pt")
        write_text_atomically(partial / "state.json", json.dumps(
            {"step": step, "history": self.state.history, "evals": self.state.evals}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for _, old in self.checkpoints()[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        self.save_curve()
        logger.info("checkpoint at step %d: %s", step, final)
        return final

    def curve(self):
        train = [(entry["step"], entry["reward"]) for entry in self.state.history]
        evals = [(entry["step"], entry["reward"]) for entry in self.state.evals]
        axis = self.config.primary_axis()
        return reward_curve(train, evals, title=f"CREward creative LoRA: {axis} reward {self.config.axis_weights}")

    def save_curve(self) -> Path:
        path = self.run_dir / CURVE_FILE
        temporary = path.with_name(f".{path.name}.tmp.png")
        self.curve().save(temporary)
        temporary.replace(path)
        return path

    # -- the objective ---------------------------------------------------------------------
    def _batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = _step_generator(self.config.seed, step)
        indices = torch.randint(len(self.pool.latents), (batch_size,), generator=generator)
        noise = torch.randn((batch_size, *self.pool.latents.shape[1:]), generator=generator)
        low, high = self.config.timestep_range
        percents = low + (high - low) * torch.rand(batch_size, generator=generator)
        return indices, noise, percents

    def _objective(self, session, indices, noise, percents, prompt_index: int, scale: float):
        """Loss terms of the samples of one prompt (they share one model call)."""
        clean = session.latent_in(self.pool.latents[indices].to(self.device))
        sigma = torch.tensor([session.sigma_at(p) for p in percents.tolist()], device=self.device)
        x_t = session.noisy(sigma, noise.to(self.device), clean)
        with autocast(self.compute_dtype, self.device):
            estimate = session.denoise(x_t, sigma, f"creward_prompt_{prompt_index}")
        estimate = estimate.float()
        images = decode_differentiable(self.vae, session.latent_out(estimate))
        scores = self.creward(images).float()
        reward = scores @ self.axis_vector.to(scores.device)
        denoise = (estimate - clean).pow(2).flatten(1).mean(1)
        loss = (-reward.to(denoise.device) + self.config.denoise_weight * denoise).sum() * scale
        return loss, reward.detach(), denoise.detach()

    def train_step(self, session) -> dict:
        """One optimiser step (inside a session); appends to and returns the history entry."""
        started = time.perf_counter()
        step = self.state.step
        batch_size = self.config.batch_size
        indices, noise, percents = self._batch(step, batch_size)
        prompt_of = self.pool.prompt_index[indices]
        self.optimizer.zero_grad(set_to_none=True)
        losses, rewards, denoises = [], [], []
        for prompt_index in sorted(set(prompt_of.tolist())):
            members = (prompt_of == prompt_index).nonzero().flatten()
            loss, reward, denoise = self._objective(
                session, indices[members], noise[members], percents[members], prompt_index, 1.0 / batch_size)
            self.scaler.scale(loss).backward()
            losses.append(float(loss.detach()))
            rewards.append(reward)
            denoises.append(denoise)
        if self.config.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.lora.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step = step + 1
        entry = {
            "step": self.state.step,
            "loss": sum(losses),
            "reward": float(torch.cat(rewards).mean()),
            "denoise": float(torch.cat(denoises).mean()),
            "seconds": time.perf_counter() - started,
        }
        self.state.history.append(entry)
        return entry

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def _eval_denoise(self, session) -> float:
        count = min(len(self.pool.latents), EVAL_DENOISE_ITEMS)
        generator = torch.Generator().manual_seed(self.config.seed + 3_000_017)
        values = []
        for item in range(count):
            clean = session.latent_in(self.pool.latents[item:item + 1].to(self.device)).repeat(len(EVAL_PERCENTS), 1, 1, 1)
            noise = torch.randn(clean.shape, generator=generator).to(self.device)
            sigma = torch.tensor([session.sigma_at(p) for p in EVAL_PERCENTS], device=self.device)
            with autocast(self.compute_dtype, self.device):
                estimate = session.denoise(session.noisy(sigma, noise, clean), sigma, f"creward_prompt_{int(self.pool.prompt_index[item])}")
            values.append((estimate.float() - clean).pow(2).flatten(1).mean(1))
        return float(torch.cat(values).mean())

    @_outside_inference_mode
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Held-out reward: ``eval_seeds`` samples per prompt from seeds the training never uses,
        made with the current LoRA by ComfyUI's sampler, decoded and scored; plus the denoising
        error on pool latents with held-out noise at fixed noise levels."""
        config = self.config
        if config.eval_seeds == 0:
            return None
        started = time.monotonic()
        scores = []
        height, width = self._pixel_size()
        for i, cond in enumerate(self.positive):
            latents = sample_latents(
                self.patcher, self.vae, cond, self.negative, seed=config.seed + 1_000_000 + i, batch=config.eval_seeds,
                width=width, height=height, steps=config.eval_steps, cfg=config.cfg,
                sampler_name=config.sampler_name, scheduler=config.scheduler,
            )
            images = decode(self.vae, latents)
            scores.append(self.creward.score(images, channels_last=True).float().cpu())
        scores = torch.cat(scores)
        reward = scores @ self.axis_vector
        denoise = run_in_session(self.patcher, self._conds(), self._latent_shape(len(EVAL_PERCENTS)), self._eval_denoise)
        entry = {
            "step": self.state.step,
            "reward": float(reward.mean()),
            "reward_std": float(reward.std()) if reward.numel() > 1 else 0.0,
            "rewards": [round(float(value), 6) for value in reward.tolist()],  # per held-out sample, same order every time
            "axes": {axis: float(value) for axis, value in zip(self.creward.axes, scores.mean(0).tolist())},
            "denoise": denoise,
            "seconds": time.monotonic() - started,
        }
        self.state.evals = [e for e in self.state.evals if e["step"] != entry["step"]] + [entry]
        logger.info("held-out eval at step %d: reward %.4f (%s), denoise %.4g", entry["step"], entry["reward"],
                    ", ".join(f"{k} {v:.3f}" for k, v in entry["axes"].items()), denoise)
        return entry

    def _pixel_size(self) -> tuple[int, int]:
        if self.pool.source == "given":
            factor = self.vae.spacial_compression_decode()
            return self.pool.latents.shape[-2] * factor, self.pool.latents.shape[-1] * factor
        return self.config.height, self.config.width

    # -- the loop --------------------------------------------------------------------------
    @_outside_inference_mode
    def run_steps(self, count: int, on_step: Callable[[StepInfo], None] | None = None, bar=None) -> None:
        """``count`` optimiser steps in one ComfyUI session."""
        config = self.config

        def body(session):
            self.lora.to(session.device)
            _move_optimizer_state(self.optimizer, session.device)
            make_autograd_ready(session.base_model)
            decoder = getattr(self.vae.first_stage_model, "decoder", None) or getattr(self.vae.first_stage_model, "taesd_decoder", None)
            checkpointing = gradient_checkpointing(
                session.base_model.diffusion_model, decoder) if config.gradient_checkpointing else _null()
            with checkpointing, frozen(session.base_model, self.vae.first_stage_model, self.creward):
                for _ in range(count):
                    entry = self.train_step(session)
                    if bar is not None:
                        recent = [e["reward"] for e in self.state.history[-20:]]
                        bar.update(1)
                        bar.set_postfix(loss=f"{entry['loss']:.4f}", reward=f"{entry['reward']:.4f}",
                                        mean_reward=f"{sum(recent) / len(recent):.4f}")
                    if on_step is not None:
                        on_step(StepInfo(entry["step"], config.steps, entry["loss"], entry["reward"], entry["denoise"]))

        make_autograd_ready(self.vae.first_stage_model, self.creward)
        comfy.model_management.load_models_gpu(
            [self.patcher, self.vae.patcher, *self.keep_loaded], memory_required=1e20, force_full_load=True)
        run_in_session(self.patcher, self._conds(), self._latent_shape(config.batch_size), body, seed=config.seed)

    @_outside_inference_mode
    def train(self, on_step: Callable[[StepInfo], None] | None = None, progress: bool = True) -> None:
        """Train from the current step to ``config.steps``, checkpointing and evaluating on schedule."""
        config = self.config
        if self.state.step == 0 and not any(e["step"] == 0 for e in self.state.evals):
            self.evaluate()
        bar = tqdm(total=config.steps, initial=self.state.step, desc="creative LoRA", disable=not progress, dynamic_ncols=True)
        try:
            while self.state.step < config.steps:
                step = self.state.step
                next_checkpoint = (step // config.checkpoint_every + 1) * config.checkpoint_every
                next_eval = (step // config.eval_interval + 1) * config.eval_interval
                stop = min(next_checkpoint, next_eval, config.steps)
                self.run_steps(stop - step, on_step, bar)
                if self.state.step % config.eval_interval == 0 or self.state.step == config.steps:
                    self.evaluate()
                if self.state.step % config.checkpoint_every == 0 or self.state.step == config.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        if not self.state.evals or self.state.evals[-1]["step"] != self.state.step:
            self.evaluate()

    # -- export ----------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        config = self.config
        evals = self.state.evals
        before = next((e["reward"] for e in evals if e["step"] == 0), None)
        after = evals[-1]["reward"] if evals and evals[-1]["step"] > 0 else None
        spec = getattr(self.creward, "spec", None)
        return build_metadata({
            "base_model": self.base_name,
            "base_architecture": self.base_info["architecture"],
            "base_signature": self.base_info["signature"],
            "axes": list(getattr(self.creward, "axes", ())),
            "axis_weights": config.axis_weights,
            "primary_axis": config.primary_axis(),
            "lambda": config.denoise_weight,
            "steps": self.state.step,
            "rank": config.rank,
            "alpha": config.alpha,
            "targets": config.targets,
            "learning_rate": config.learning_rate,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "resolution": f"{config.width}x{config.height}",
            "timestep_range": list(config.timestep_range),
            "head": self.head_name,
            "backbone": getattr(spec, "name", None),
            "mean_reward_before": before,
            "mean_reward_after": after,
            "eval": {"seeds_per_prompt": config.eval_seeds, "steps": config.eval_steps, "cfg": config.cfg,
                     "sampler": config.sampler_name, "scheduler": config.scheduler,
                     "seeds": [config.seed + 1_000_000 + i for i in range(len(self.positive))],
                     "seeds_note": "KSampler seed of each prompt's batch of seeds_per_prompt samples",
                     **paired_change(evals)},
            "prompts": self.prompts,
            "pool": self.pool.source if self.pool else None,
        })

    def lora_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return lora_state_dict(self.lora.factors(), self.lora.weight_shapes, dtype)

    def export(self, path: str | Path) -> Path:
        """Write the LoRA (``config.save_dtype``) with metadata, atomically."""
        return atomic_save(self.lora_tensors(DTYPES[self.config.save_dtype]), path, self.metadata())


class _null:
    def __enter__(self):
        return 0

    def __exit__(self, *exc):
        return False


def train_creative_lora(
    model,
    vae,
    creward,
    positive: list[list],
    config: CreativeLoraConfig,
    run_dir: str | Path,
    output: str | Path | None = None,
    prompts: list[str] | None = None,
    negative: list | None = None,
    latents: torch.Tensor | None = None,
    base_name: str = "",
    head_name: str = "",
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
    keep_loaded: tuple = (),
    latent_prompt_index: torch.Tensor | None = None,
) -> TrainResult:
    """Train a creative LoRA on a ComfyUI model with CREward as the reward.

    Args:
        model: ComfyUI MODEL (``ModelPatcher``); it is cloned, never modified.
        vae: ComfyUI VAE of the model's latent space.
        creward: a ``creward.models.CREward`` (differentiable ``forward(images01)``, ``score``, ``axes``).
        positive: one ComfyUI CONDITIONING per prompt (``prompts.encode_prompts``).
        config: the run's settings (``CreativeLoraConfig``).
        run_dir: folder of the run; an existing run there is resumed when ``resume``.
        output: where to write the final LoRA (``.safetensors``); None writes none.
        prompts: the prompt texts (metadata and resume checks).
        negative: CONDITIONING for the pool/evaluation samples' CFG (default: zeroed positive).
        latents: clean VAE latents ``[N, C, h, w]`` to train from instead of the model's own
            samples; latent ``i`` goes with prompt ``latent_prompt_index[i]`` (default
            ``i % len(positive)``).
        base_name, head_name: names recorded in the metadata (checkpoint file, CREward head).
        resume: continue from the newest checkpoint in ``run_dir`` (False starts over).
        progress: show a tqdm bar with loss and mean reward.
        on_step: called after every step with a ``StepInfo`` (raise in it to stop; the newest
            checkpoint stays resumable).
        keep_loaded: other ComfyUI ``ModelPatcher``s that must stay on the device while training
            (the CREward model's, when ComfyUI manages it).

    Returns:
        A ``TrainResult`` (LoRA path and tensors, metadata, history, evaluations, curve image).

    Raises:
        LoraConfigError: bad settings, or ``run_dir`` holds a different run.
        CREwardError: inputs that do not fit (no VAE, missing axis, video model ...).
    """
    import torch as _torch

    with _torch.inference_mode(False), _torch.enable_grad():
        trainer = CreativeLoraTrainer(
            model, vae, creward, positive, config, run_dir, prompts=prompts, negative=negative,
            latents=latents, base_name=base_name, head_name=head_name, keep_loaded=keep_loaded,
            latent_prompt_index=latent_prompt_index,
        )
        trainer.prepare(resume=resume)
        trainer.train(on_step=on_step, progress=progress)
        path = trainer.export(output) if output is not None else None
        if path is not None:
            logger.info("creative LoRA written to %s (mean held-out reward %s -> %s)", path,
                        trainer.metadata().get("creward.mean_reward_before"), trainer.metadata().get("creward.mean_reward_after"))
        return TrainResult(
            lora_path=path,
            lora_tensors=trainer.lora_tensors(),
            metadata=trainer.metadata(),
            history=trainer.state.history,
            evals=trainer.state.evals,
            steps=trainer.state.step,
            resumed_from=trainer.resumed_from,
            run_dir=trainer.run_dir,
            curve=trainer.curve(),
        )
