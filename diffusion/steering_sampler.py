"""Particle steering inside ComfyUI's sampling: a ``comfy.samplers.Sampler`` that runs N particles
per latent as one batch and, at checkpoint steps, scores each particle's clean estimate x̂0 with
CREward and resamples (FK steering) or prunes the particles.

How it runs: the schedule is cut at the checkpoints into segments, and each segment is sampled
by ComfyUI's own sampler function (``comfy.samplers.ksampler(name)``), so every sampler, scheduler
and model type (eps, v, flow) ComfyUI has keeps its maths. At a checkpoint the model is called
once on the particles (that call gives x̂0 by the model's own ``calculate_denoised``); the
decision is applied to x_t and x̂0, and the next segment's first model call is served from that
result, so a checkpoint costs no extra model evaluation. Multistep samplers (``dpmpp_2m``, ``deis``
...) restart their history at each checkpoint (one first-order step), as after any resampling.

Particle layout: row ``j * B + g`` is particle ``j`` of latent ``g`` (``B`` latents in the
batch), so conditioning batches (one per latent) tile over particles as ComfyUI tiles them.
Particle 0 uses the noise ComfyUI gives the sampler: with one particle the result is that of the
plain sampler. Other particles draw their own noise from the seed.

Imports ComfyUI: only import this module where ``comfy`` is importable.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.samplers

from ..models.errors import CREwardError
from .reward import LatentReward
from .steering_plan import Population, SteeringPlan, final_order, log_potential, prune_indices, resample_indices

logger = logging.getLogger(__name__)

# Samplers that add fresh noise at every step: resampled copies of a particle diverge again.
_STOCHASTIC_WORDS = ("ancestral", "sde")
_STOCHASTIC_NAMES = {"ddpm", "lcm", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"}
# Samplers whose steps are not the schedule's: checkpoints cannot be placed.
UNSUPPORTED_SAMPLERS = {"dpm_adaptive": "it chooses its own step sizes, so checkpoint steps do not exist"}
_MASK64 = (1 << 64) - 1


def is_stochastic(sampler_name: str) -> bool:
    """True when ``sampler_name`` adds noise while sampling (needed for FK resampling)."""
    return sampler_name in _STOCHASTIC_NAMES or any(word in sampler_name for word in _STOCHASTIC_WORDS)


def check_sampler_name(sampler_name: str) -> None:
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise CREwardError(f"sampler_name {sampler_name!r}: unknown; expected one of {', '.join(comfy.samplers.KSampler.SAMPLERS)}")
    if sampler_name in UNSUPPORTED_SAMPLERS:
        raise CREwardError(f"sampler_name {sampler_name!r} cannot be steered: {UNSUPPORTED_SAMPLERS[sampler_name]}")


def mix_seed(seed: int, stream: int) -> int:
    """A 64-bit seed for ``stream`` derived from ``seed`` (splitmix64), so that runs with nearby
    seeds share no particle noise."""
    z = (int(seed) + (int(stream) + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def particle_noise(noise: torch.Tensor, particles: int, seed: int) -> torch.Tensor:
    """``[particles * B, ...]``: rows ``0..B-1`` are ``noise``; particle ``j`` draws from ``mix_seed(seed, j)``."""
    rows = [noise]
    for j in range(1, particles):
        generator = torch.Generator().manual_seed(mix_seed(seed, j))
        rows.append(torch.randn(noise.shape, generator=generator, dtype=torch.float32).to(device=noise.device, dtype=noise.dtype))
    return torch.cat(rows)


@dataclass
class SteeringReport:
    """What a steered run did (for the lineage text, tests and the benchmark)."""

    plan: str
    sampler: str
    mode: str  # the mode that ran (``prune`` when resampling fell back)
    note: str = ""  # why the mode changed, if it did
    checkpoints: list[int] = field(default_factory=list)
    evaluations: int = 0  # model evaluations, counted in batch rows (CFG's cond/uncond count once)
    evaluations_per_latent: float = 0.0
    populations: list[Population] = field(default_factory=list)  # one per latent of the batch
    final_scores: torch.Tensor | None = None  # [B * keep, axes], latent-major, best first
    final_images: torch.Tensor | None = None  # [B * keep, 3, H, W] as scored (preview decoder), when asked
    final_values: torch.Tensor | None = None  # [B * keep]
    origins: list[list[int]] = field(default_factory=list)  # per latent: initial particle of each returned sample
    axes: tuple[str, ...] = ()
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # decoding + scoring at checkpoints and at the end

    def lineage_text(self) -> str:
        lines = [f"CREward steering: {self.plan}; sampler {self.sampler}"]
        if self.note:
            lines.append(f"note: {self.note}")
        lines.append(
            f"{self.evaluations} model evaluations ({self.evaluations_per_latent:g} per latent), "
            f"{self.seconds:.1f} s, of which scoring {self.checkpoint_seconds:.1f} s"
        )
        for g, population in enumerate(self.populations):
            if len(self.populations) > 1:
                lines.append(f"-- latent {g}")
            lines.append(population.lineage_text(self.axes))
        return "\n".join(lines)


class _ReusingModel:
    """The sampler's model, counting evaluated rows and serving one primed result again.

    After a checkpoint, the next segment's first call is at the same ``x`` and σ as the call
    the checkpoint made: that call is answered from the primed result instead of the model.
    """

    def __init__(self, inner):
        self.inner = inner
        self.rows = 0
        self._primed: tuple[torch.Tensor, float, torch.Tensor] | None = None

    def __getattr__(self, name):  # samplers read model.inner_model.inner_model.model_sampling
        return getattr(self.inner, name)

    def prime(self, x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> None:
        self._primed = (x, sigma, denoised)

    def __call__(self, x, sigma, **kwargs):
        primed, self._primed = self._primed, None
        if primed is not None:
            px, psigma, denoised = primed
            if px.shape == x.shape and math.isclose(float(sigma.flatten()[0]), psigma, rel_tol=1e-6, abs_tol=1e-9) and torch.equal(px, x):
                return denoised
        self.rows += int(x.shape[0])
        return self.inner(x, sigma, **kwargs)


class SteeringSampler(comfy.samplers.Sampler):
    """A ComfyUI SAMPLER that steers ``plan.particles`` particles per latent with ``reward``.

    Args:
        sampler_name: ComfyUI sampler whose steps are used (``euler_ancestral``, ``dpmpp_2m_sde`` ...).
        plan: ``SteeringPlan`` (mode, particles, checkpoints, potentials ...).
        reward: ``LatentReward`` (preview decoder + CREward + axis weights), or a function
            ``reward(base_model) -> LatentReward`` called when sampling starts (the preview decoder
            depends on the model's latent format, known only then).
        keep: samples returned per latent (best first); SAMPLER outputs for ``SamplerCustom`` keep 1.
        extra_options: passed to the sampler function (``eta``, ``s_noise`` ...).
        keep_images: also keep the returned samples' decoded images (the final scoring's) in the report.

    After ``sample``, ``report`` holds a ``SteeringReport``.
    """

    def __init__(self, sampler_name: str, plan: SteeringPlan, reward: LatentReward, keep: int = 1, extra_options: dict | None = None,
                 keep_images: bool = False):
        check_sampler_name(sampler_name)
        if keep < 1 or keep > plan.particles:
            raise CREwardError(f"keep (k={keep}) must be between 1 and the number of particles (N={plan.particles})")
        if plan.mode == "prune" and keep > plan.survivors:
            raise CREwardError(f"keep (k={keep}) is larger than the survivors of pruning (m={plan.survivors})")
        self.sampler_name = sampler_name
        self.plan = plan
        self.reward = reward
        self.keep = keep
        self.keep_images = keep_images
        self.inner = comfy.samplers.sampler_object(sampler_name)
        if extra_options:
            self.inner.extra_options = dict(self.inner.extra_options, **extra_options)
        self.report: SteeringReport | None = None

    # -- ComfyUI's Sampler interface ---------------------------------------------------------
    def max_denoise(self, model_wrap, sigmas):
        return self.inner.max_denoise(model_wrap, sigmas)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        started = time.monotonic()
        plan, base = self.plan, model_wrap.inner_model
        reward = self.reward if isinstance(self.reward, LatentReward) else self.reward(base)
        steps = len(sigmas) - 1
        if steps < 1:
            raise CREwardError("steering needs at least one sampling step")
        if latent_image is None:
            latent_image = torch.zeros_like(noise)
        reward.decoder.check_latents(base.process_latent_out(latent_image[:1].float()), "latent")
        seed = int(extra_args.get("seed") or 0)
        batch = noise.shape[0]
        count = plan.particles

        mode, note = plan.mode, ""
        if mode == "resample" and not is_stochastic(self.sampler_name):
            mode = "prune"
            note = (f"sampler {self.sampler_name!r} adds no noise while sampling, so resampled copies of a particle would "
                    f"stay identical: pruned to the best {plan.survivors} instead (use an ancestral or SDE sampler to resample)")
            logger.warning("CREward steering: %s", note)
        checkpoints = [] if mode == "best-of-n" else plan.checkpoints(steps)
        run_plan = plan if mode == plan.mode else _with_mode(plan, mode)
        alive_after = run_plan.alive_after(steps) if mode == "prune" else [count] * len(checkpoints)

        # particles: row j * batch + g
        x_noise = particle_noise(noise, count, seed)
        latents = latent_image.repeat(count, *([1] * (latent_image.ndim - 1)))
        mask = denoise_mask
        if mask is not None and mask.shape[0] == batch and batch > 1:
            mask = mask.repeat(count, *([1] * (mask.ndim - 1)))
        per_row_mask = mask is not None and mask.shape[0] == count * batch and count * batch > 1

        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latents
        if self.inner.inpaint_options.get("random", False):
            generator = torch.Generator().manual_seed(seed + 1)  # KSAMPLER's draw, without reseeding torch's global RNG
            model_k.noise = torch.randn(x_noise.shape, generator=generator, device="cpu").to(x_noise.dtype).to(x_noise.device)
        else:
            model_k.noise = x_noise
        model = _ReusingModel(model_k)
        sampling = base.model_sampling
        x = sampling.noise_scaling(sigmas[0], x_noise, latents, self.max_denoise(model_wrap, sigmas))

        populations = [Population(count) for _ in range(batch)]
        generator = torch.Generator().manual_seed(mix_seed(seed, 0x5EED + plan.seed))
        scoring_seconds = 0.0
        bounds = [0] + checkpoints + [steps]
        for segment, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            if end > start:
                args = dict(extra_args, seed=mix_seed(seed, 1000 + segment) if segment else seed,
                            denoise_mask=mask)

                def k_callback(info, _offset=start):
                    if callback is not None:
                        callback(_offset + info["i"], info["denoised"], info["x"], steps)

                x = self.inner.sampler_function(model, x, sigmas[start:end + 1], extra_args=args, callback=k_callback,
                                                disable=True, **self.inner.extra_options)
            if end == steps:
                break
            # checkpoint at step `end`: the model call of that step gives x̂0
            comfy.model_management.throw_exception_if_processing_interrupted()
            sigma = sigmas[end]
            args = dict(extra_args, denoise_mask=mask)
            denoised = model(x, sigma * x.new_ones([x.shape[0]]), **args)
            scored = time.monotonic()
            scores = reward.scores(base.process_latent_out(denoised.float()))
            values = reward.values(scores)
            scoring_seconds += time.monotonic() - scored
            alive = x.shape[0] // batch
            rows = []
            target = alive_after[checkpoints.index(end)]
            for g, population in enumerate(populations):
                group_rows = torch.arange(alive) * batch + g
                population.record(end, values[group_rows], scores[group_rows], reward.axes)
                if mode == "resample":
                    chosen = resample_indices(log_potential(population.history_tensor(), plan.potential, plan.temperature), generator)
                else:  # prune (best-of-n has no checkpoints)
                    chosen = prune_indices(values[group_rows], target) if target < alive else torch.arange(alive)
                population.select(chosen, mode)
                rows.append(chosen)
            index = torch.stack(rows, dim=1).flatten()  # new row j * batch + g <- old row chosen[g][j] * batch + g
            old_rows = (index * batch + torch.arange(batch).repeat(len(rows[0]))).to(x.device)
            x, denoised = x[old_rows], denoised[old_rows]
            model_k.latent_image = model_k.latent_image[old_rows]
            model_k.noise = model_k.noise[old_rows]
            if per_row_mask:
                mask = mask[old_rows]
            model.prime(x, float(sigma), denoised)
            comfy.model_management.throw_exception_if_processing_interrupted()

        x = sampling.inverse_noise_scaling(sigmas[-1], x)
        scored = time.monotonic()
        images = [] if self.keep_images else None
        final_scores = reward.scores(base.process_latent_out(x.float()), images)
        scoring_seconds += time.monotonic() - scored
        values = reward.values(final_scores)
        alive = x.shape[0] // batch
        keep = min(self.keep, alive)
        picks, origins = [], []
        for g, population in enumerate(populations):
            group_rows = torch.arange(alive) * batch + g
            order = final_order(values[group_rows], keep)
            population.record_final(values[group_rows], order)
            picks += [int(group_rows[i]) for i in order]
            origins.append([population.origin[i] for i in order])
        pick = torch.tensor(picks)
        self.report = SteeringReport(
            plan=run_plan.describe(steps), sampler=self.sampler_name, mode=mode, note=note, checkpoints=checkpoints,
            evaluations=model.rows, evaluations_per_latent=model.rows / batch, populations=populations,
            final_scores=final_scores[pick], final_values=values[pick], origins=origins, axes=tuple(reward.axes),
            final_images=torch.cat(images)[pick] if images else None,
            seconds=time.monotonic() - started, checkpoint_seconds=scoring_seconds,
        )
        logger.info("CREward steering: %s, %d model evaluations, %.1f s", run_plan.describe(steps), model.rows, self.report.seconds)
        chosen = x[pick.to(x.device)]
        if callback is not None:  # the last step's x0 again, as the returned rows (SamplerCustom's denoised_output)
            callback(steps - 1, chosen, chosen, steps)
        return chosen


def _with_mode(plan: SteeringPlan, mode: str) -> SteeringPlan:
    import dataclasses

    return dataclasses.replace(plan, mode=mode, survivors=min(max(plan.survivors, plan.keep), plan.particles))
