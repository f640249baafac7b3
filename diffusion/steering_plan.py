"""The plan of a steered sampling run, FK potentials, resampling / pruning and particle lineage.

Plain PyTorch: this module imports nothing from ComfyUI (``diffusion/steering_sampler.py`` runs the
plan inside ComfyUI's sampling).

N particles per latent are sampled as one batch. At checkpoint steps each particle's one-step
clean estimate x̂0 is decoded and scored by a reward, then the particles are

- ``resample``: FK steering (Singhal et al., ICML 2025, "A General Framework for Inference-time
  Scaling and Steering of Diffusion Models"): N particles are drawn with replacement, with
  probability proportional to ``exp(potential)``; the count stays N.
- ``prune``: the best are kept and the rest stop costing model evaluations; the count falls
  geometrically from N to ``survivors`` (m) at the last checkpoint.
- ``best-of-n``: no checkpoints; the k best are chosen at the end.

Potentials (FK's ``add`` / ``diff`` / ``max``), from the reward history of each current particle
(a ``[checkpoints_so_far, N]`` tensor, reindexed along lineage):

- ``sum``: ``lambda * sum_t r_t``
- ``diff``: ``lambda * (r_t - r_{t-1})`` with ``r_{-1} = 0``
- ``max``: ``lambda * max_t r_t``

Example::

    plan = SteeringPlan(mode="prune", particles=8, survivors=2, keep=1)
    plan.checkpoints(20)            # [4, 8, 12]
    plan.alive_after(20)            # [5, 3, 2]
    plan.evaluations_per_latent(20) # 86  (8*5 + 5*4 + 3*4 + 2*7)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.errors import CREwardError

MODES = ("resample", "prune", "best-of-n")
POTENTIALS = ("sum", "diff", "max")

# Floating tolerance of the start/end fractions, so that e.g. 0.2 * 20 selects step 4.
_EPS = 1e-9


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_checkpoint_steps(text: str | None) -> tuple[int, ...] | None:
    """``"4, 8, 12"`` → ``(4, 8, 12)``; empty → None (use the every-k rule). Plain Python."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise CREwardError(f"expected whole numbers separated by commas, e.g. 4,8,12, got {text!r}") from None


@dataclass(frozen=True)
class SteeringPlan:
    """What a steered run does: mode, particle counts, checkpoints and the FK potential.

    Args:
        mode: ``"resample"`` (FK steering), ``"prune"`` (early-pruned best-of-N) or ``"best-of-n"``.
        particles: particles per latent (N), run as one batch.
        keep: samples returned per latent (k), best first; ``1 <= k <= N``, and ``k <= m`` when pruning.
        survivors: prune: particles alive after the last checkpoint (m), ``k <= m <= N``. Other modes
            do not use it (it must be a whole number >= 1).
        potential: resample: ``"sum"``, ``"diff"`` or ``"max"`` (FK's add / diff / max).
        temperature: resample: FK's lambda (> 0); larger is greedier.
        checkpoint_steps: explicit 0-based step indices where the reward is evaluated, or None to
            use ``every`` / ``start_percent`` / ``end_percent``. Checked against the schedule by
            ``checkpoints(steps)``.
        every: the default rule places a checkpoint every ``every`` steps ...
        start_percent: ... from the first step ``i`` with ``i / (steps - 1) >= start_percent`` ...
        end_percent: ... up to ``i / (steps - 1) <= end_percent`` (0 = first step, 1 = last step).
        seed: seed of the resampling generator.

    Raises:
        CREwardError: a field is out of range; the message names the field, its value and what is
            expected.
    """

    mode: str = "resample"
    particles: int = 4
    keep: int = 1
    survivors: int = 1
    potential: str = "sum"
    temperature: float = 10.0
    checkpoint_steps: tuple[int, ...] | None = None
    every: int = 4
    start_percent: float = 0.2
    end_percent: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise CREwardError(f"mode {self.mode!r}: unknown; expected one of {', '.join(MODES)}")
        if not _is_int(self.particles) or self.particles < 1:
            raise CREwardError(f"particles (N={self.particles!r}): expected a whole number >= 1")
        if not _is_int(self.keep) or self.keep < 1:
            raise CREwardError(f"keep (k={self.keep!r}): expected a whole number >= 1")
        if self.keep > self.particles:
            raise CREwardError(f"keep (k={self.keep}) is larger than particles (N={self.particles})")
        if not _is_int(self.survivors) or self.survivors < 1:
            raise CREwardError(f"survivors (m={self.survivors!r}): expected a whole number >= 1")
        if self.mode == "prune":
            if self.survivors > self.particles:
                raise CREwardError(f"survivors (m={self.survivors}) is larger than particles (N={self.particles}); "
                                   f"expected keep <= survivors <= particles ({self.keep}..{self.particles})")
            if self.survivors < self.keep:
                raise CREwardError(f"survivors (m={self.survivors}) is smaller than keep (k={self.keep}): pruning must leave "
                                   f"at least the k returned samples; expected {self.keep}..{self.particles}")
        if self.potential not in POTENTIALS:
            raise CREwardError(f"potential {self.potential!r}: unknown; expected one of {', '.join(POTENTIALS)}")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise CREwardError(f"temperature (lambda={self.temperature!r}): expected a finite number > 0")
        if self.checkpoint_steps is not None:
            if isinstance(self.checkpoint_steps, (str, bytes)) or not hasattr(self.checkpoint_steps, "__iter__"):
                raise CREwardError(f"checkpoint_steps {self.checkpoint_steps!r}: expected a sequence of step indices or None")
            steps = tuple(self.checkpoint_steps)
            for step in steps:
                if not _is_int(step):
                    raise CREwardError(f"checkpoint_steps: {step!r} is not a whole number; expected 0-based step indices")
                if step < 0:
                    raise CREwardError(f"checkpoint_steps: step {step} is negative; expected 0-based step indices (0 = first step)")
            if not steps:
                raise CREwardError("checkpoint_steps is empty: give at least one step, None for the default rule "
                                   "(every / start_percent / end_percent), or mode 'best-of-n' for no checkpoints")
            object.__setattr__(self, "checkpoint_steps", steps)  # a list becomes a tuple: the plan stays hashable
        if not _is_int(self.every) or self.every < 1:
            raise CREwardError(f"every ({self.every!r}): expected a whole number of steps >= 1")
        for name in ("start_percent", "end_percent"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise CREwardError(f"{name} ({value!r}): expected a fraction of the schedule between 0 and 1")
        if self.start_percent > self.end_percent:
            raise CREwardError(f"start_percent ({self.start_percent}) is after end_percent ({self.end_percent}); "
                               f"expected start_percent <= end_percent")
        if not _is_int(self.seed):
            raise CREwardError(f"seed ({self.seed!r}): expected a whole number")

    # -- schedule -----------------------------------------------------------------------------
    def checkpoints(self, steps: int) -> list[int]:
        """Sorted unique 0-based step indices in ``[0, steps - 2]`` where the reward is evaluated.

        Explicit ``checkpoint_steps`` are checked against the schedule. The default rule takes the
        steps ``i`` with ``start_percent <= i / (steps - 1) <= end_percent``, every ``every``-th
        from the first of them. The last step (``steps - 1``) is never a checkpoint: nothing could
        change after it (the default rule leaves it out; an explicit one is an error).
        ``best-of-n`` has no checkpoints.

        Raises:
            CREwardError: ``steps`` < 1, or an explicit step is outside the schedule or is its last step.
        """
        if not _is_int(steps) or steps < 1:
            raise CREwardError(f"steps ({steps!r}): expected a whole number of sampling steps >= 1")
        if self.mode == "best-of-n":
            return []
        last = steps - 1
        if self.checkpoint_steps is not None:
            for step in self.checkpoint_steps:
                if step > last:
                    raise CREwardError(f"checkpoint step {step} is outside the schedule of {steps} steps (0..{last})")
                if step == last:
                    raise CREwardError(f"checkpoint step {step} is the last step of the schedule of {steps} steps: nothing can "
                                       f"change after it; expected steps 0..{last - 1}")
            return sorted(set(self.checkpoint_steps))
        if last == 0:
            return []
        first = math.ceil(self.start_percent * last - _EPS)
        final = min(math.floor(self.end_percent * last + _EPS), last - 1)
        return list(range(first, final + 1, self.every))

    def alive_after(self, steps: int) -> list[int]:
        """Particles alive after each checkpoint of ``checkpoints(steps)``.

        prune: a geometric schedule from N to m, ``round(N * (m / N) ** ((c + 1) / C))`` after
        checkpoint ``c`` of ``C`` (so the count falls by about the same factor at every checkpoint
        and is exactly m after the last one); non-increasing, never below m. Other modes: N at
        every checkpoint.
        """
        checkpoints = self.checkpoints(steps)
        count = len(checkpoints)
        n, m = self.particles, self.survivors
        if self.mode != "prune":
            return [n] * count
        alive, previous = [], n
        for c in range(count):
            target = m if c == count - 1 else round(n * (m / n) ** ((c + 1) / count))
            previous = min(previous, max(m, int(target)))
            alive.append(previous)
        return alive

    def evaluations_per_latent(self, steps: int) -> int:
        """Particle-model-evaluations of one latent over ``steps`` steps (one model call per step).

        One model call on one particle at one step counts 1 (CFG's cond/uncond pass counts once;
        samplers that call the model twice per step, e.g. Heun, double every term). At a
        checkpoint step ``i`` the model is called on the particles alive before the decision; the
        decision is applied to x_t and x̂0 right after that call, before the step's update, so the
        new count applies from step ``i + 1`` on. best-of-n and resample: ``N * steps``.
        """
        checkpoints = self.checkpoints(steps)
        alive = self.alive_after(steps)
        total, count, start = 0, self.particles, 0
        for step, after in zip(checkpoints, alive):
            total += count * (step + 1 - start)
            count, start = after, step + 1
        return total + count * (steps - start)

    def describe(self, steps: int | None = None) -> str:
        """One line for logs, e.g. ``"resample 4 particles (sum potential, lambda 10) at steps 4, 8, 12; keep 1"``.

        With ``steps`` the checkpoint steps (and, pruning, the counts alive) are listed; without,
        the explicit steps or the default rule.
        """
        if self.mode == "best-of-n":
            return f"best-of-n: {self.particles} particles, no checkpoints; keep {self.keep}"
        if steps is not None:
            checkpoints = self.checkpoints(steps)
            where = f"at steps {', '.join(map(str, checkpoints))}" if checkpoints else f"no checkpoint fits {steps} steps"
        elif self.checkpoint_steps is not None:
            where = f"at steps {', '.join(map(str, sorted(set(self.checkpoint_steps))))}"
        else:
            where = (f"every {self.every} steps from {self.start_percent:.0%} to {self.end_percent:.0%} of the schedule")
        if self.mode == "resample":
            return (f"resample {self.particles} particles ({self.potential} potential, lambda {self.temperature:g}) "
                    f"{where}; keep {self.keep}")
        alive = ""
        if steps is not None and self.checkpoints(steps):
            alive = f" (alive {', '.join(map(str, self.alive_after(steps)))})"
        return f"prune {self.particles} particles to {self.survivors} {where}{alive}; keep {self.keep}"


# -- potentials and selection -------------------------------------------------------------------
def log_potential(history: torch.Tensor, potential: str, temperature: float) -> torch.Tensor:
    """The log FK weight of each current particle, ``[N]``, from its reward history ``[checkpoints, N]``.

    sum: ``lambda * history.sum(0)``; diff: ``lambda * (r_t - r_{t-1})`` (``r_{-1} = 0``);
    max: ``lambda * history.max(0)``.
    """
    if potential not in POTENTIALS:
        raise CREwardError(f"potential {potential!r}: unknown; expected one of {', '.join(POTENTIALS)}")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise CREwardError(f"temperature (lambda={temperature!r}): expected a finite number > 0")
    if history.ndim != 2 or history.shape[0] < 1 or history.shape[1] < 1:
        raise CREwardError(f"reward history: expected a [checkpoints >= 1, particles >= 1] tensor, got shape {tuple(history.shape)}")
    history = history.double()
    if potential == "sum":
        value = history.sum(0)
    elif potential == "max":
        value = history.max(0).values
    else:
        previous = history[-2] if history.shape[0] > 1 else torch.zeros_like(history[-1])
        value = history[-1] - previous
    return temperature * value


def resample_indices(log_weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N indices drawn with replacement with probability ``softmax(log_weights)``, sorted (CPU, long).

    The maximum is subtracted before exponentiating, so large lambdas do not overflow. Sorting
    keeps copies of a particle next to each other, so the lineage stays readable. The same
    generator state gives the same indices. ``generator`` is a CPU ``torch.Generator``.

    Raises:
        CREwardError: ``log_weights`` is not a non-empty vector, or holds NaN or infinite values.
    """
    if log_weights.ndim != 1 or log_weights.numel() < 1:
        raise CREwardError(f"log_weights: expected a non-empty [particles] vector, got shape {tuple(log_weights.shape)}")
    weights = log_weights.detach().double().cpu()
    if not torch.isfinite(weights).all():
        bad = [i for i, w in enumerate(weights.tolist()) if not math.isfinite(w)]
        raise CREwardError(f"log_weights: particles {bad} have non-finite log weights ({weights.tolist()}); "
                           f"the reward returned NaN or infinity")
    probabilities = torch.exp(weights - weights.max())
    probabilities = probabilities / probabilities.sum()
    drawn = torch.multinomial(probabilities, weights.numel(), replacement=True, generator=generator)
    return torch.sort(drawn).values.long()


def _ranked(values: torch.Tensor, keep: int, name: str) -> torch.Tensor:
    if values.ndim != 1 or values.numel() < 1:
        raise CREwardError(f"{name}: expected a non-empty [particles] vector of rewards, got shape {tuple(values.shape)}")
    if not _is_int(keep) or not 1 <= keep <= values.numel():
        raise CREwardError(f"{name}: keep ({keep!r}) must be between 1 and the number of particles ({values.numel()})")
    values = values.detach().double().cpu()
    if torch.isnan(values).any():
        raise CREwardError(f"{name}: rewards contain NaN ({values.tolist()})")
    return torch.sort(values, descending=True, stable=True).indices[:keep].long()


def prune_indices(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (CPU, long) of the ``keep`` largest ``values``, best first; ties keep the lower index first."""
    return _ranked(values, keep, "prune_indices")


def final_order(values: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` best particles by ``values``, best first (ties: lower index first)."""
    return _ranked(values, keep, "final_order").tolist()


# -- lineage ------------------------------------------------------------------------------------
class Population:
    """The particles of one latent along a steered run: where each came from and its rewards.

    ``origin[j]`` is the initial index of current particle ``j``; ``history`` holds one reward
    tensor per checkpoint, kept aligned to the current particles (reindexed at every
    ``select``); ``events`` holds one dict per checkpoint: ``step``, ``mode``, ``values``
    (rewards of the particles before the decision), ``scores`` (per axis, or None), ``axes``,
    ``origins_before``, ``chosen`` (indices into the particles before) and ``origins_after``.
    """

    def __init__(self, count: int):
        if not _is_int(count) or count < 1:
            raise CREwardError(f"Population: count ({count!r}) must be a whole number >= 1")
        self.origin: list[int] = list(range(count))
        self.history: list[torch.Tensor] = []
        self.events: list[dict] = []
        self.final: dict | None = None
        self._open = False  # a recorded checkpoint waiting for its select

    @property
    def count(self) -> int:
        return len(self.origin)

    def record(self, step: int, values: torch.Tensor, scores: torch.Tensor | None = None, axes=()) -> None:
        """Record the rewards ``values`` ``[n]`` (and per-axis ``scores`` ``[n, A]``) at checkpoint ``step``."""
        values = torch.as_tensor(values).detach().float().cpu()
        if values.shape != (self.count,):
            raise CREwardError(f"Population.record: values must have shape [{self.count}] (one per particle), "
                               f"got {tuple(values.shape)}")
        if scores is not None:
            scores = torch.as_tensor(scores).detach().float().cpu()
            if scores.ndim != 2 or scores.shape[0] != self.count:
                raise CREwardError(f"Population.record: scores must have shape [{self.count}, axes], got {tuple(scores.shape)}")
            if axes and len(axes) != scores.shape[1]:
                raise CREwardError(f"Population.record: {len(axes)} axis names ({', '.join(axes)}) for "
                                   f"{scores.shape[1]} score columns")
        self.history.append(values)
        self.events.append({
            "step": int(step), "mode": None, "values": values.tolist(),
            "scores": None if scores is None else scores.tolist(), "axes": tuple(axes),
            "origins_before": list(self.origin), "chosen": None, "origins_after": None,
        })
        self._open = True

    def select(self, indices: torch.Tensor, mode: str | None = None) -> None:
        """Keep the particles ``indices`` (duplicates allowed), in that order: origin and history follow.

        ``mode`` names the decision in the lineage (default: ``prune`` when fewer remain, else ``resample``).
        """
        chosen = [int(i) for i in torch.as_tensor(indices).flatten().tolist()]
        if not chosen:
            raise CREwardError("Population.select: no particles chosen; at least one must survive")
        bad = [i for i in chosen if not 0 <= i < self.count]
        if bad:
            raise CREwardError(f"Population.select: indices {bad} outside the {self.count} current particles (0..{self.count - 1})")
        if mode is None:
            mode = "prune" if len(chosen) < self.count else "resample"
        if not self._open:  # a decision without rewards at this point
            self.events.append({"step": None, "mode": None, "values": None, "scores": None, "axes": (),
                                "origins_before": list(self.origin), "chosen": None, "origins_after": None})
        index = torch.tensor(chosen, dtype=torch.long)
        self.origin = [self.origin[i] for i in chosen]
        self.history = [h[index] for h in self.history]
        self.events[-1].update(mode=mode, chosen=chosen, origins_after=list(self.origin))
        self._open = False

    def history_tensor(self) -> torch.Tensor:
        """The rewards of the current particles at every past checkpoint, ``[checkpoints, n]``."""
        if not self.history:
            return torch.zeros(0, self.count)
        return torch.stack(self.history)

    def record_final(self, values: torch.Tensor, order: list[int]) -> None:
        """Record the final rewards ``[n]`` and the returned particles ``order`` (best first) for the lineage."""
        values = torch.as_tensor(values).detach().float().cpu()
        if values.shape != (self.count,):
            raise CREwardError(f"Population.record_final: values must have shape [{self.count}], got {tuple(values.shape)}")
        self.final = {"values": values.tolist(), "order": [int(i) for i in order]}

    def lineage_text(self, axes=()) -> str:
        """Per checkpoint, which particles (by initial index, ``p2``) were kept, duplicated or dropped,
        with their rewards (3 decimals; per axis when scores were recorded), then the returned (or
        alive) particles."""
        lines = []
        for event in self.events:
            before, chosen = event["origins_before"], event["chosen"] or []
            after = event["origins_after"] if event["origins_after"] is not None else before
            step = "?" if event["step"] is None else event["step"]
            mode = event["mode"] or "scored"
            lines.append(f"step {step} ({mode}): {len(before)} -> {len(after)} particles")
            copies = [chosen.count(j) for j in range(len(before))]
            values = event["values"]
            order = range(len(before)) if values is None else sorted(range(len(before)), key=lambda j: (-values[j], j))
            names = tuple(event["axes"]) or tuple(axes)
            for j in order:
                reward = "" if values is None else f" {values[j]:.3f}"
                detail = ""
                if event["scores"] is not None:
                    row = event["scores"][j]
                    labels = names if len(names) == len(row) else [f"axis{a}" for a in range(len(row))]
                    detail = " [" + ", ".join(f"{label} {score:.3f}" for label, score in zip(labels, row)) + "]"
                if event["chosen"] is None:
                    fate = "scored"
                elif copies[j] == 0:
                    fate = "dropped"
                elif copies[j] == 1:
                    fate = "kept"
                else:
                    fate = f"duplicated x{copies[j]}"
                lines.append(f"  p{before[j]}{reward}{detail}: {fate}")
        if self.final is not None:
            picks = ", ".join(f"p{self.origin[i]} ({self.final['values'][i]:.3f})" for i in self.final["order"])
            lines.append(f"returned (best first): {picks}")
        else:
            lines.append(f"alive at the end: {', '.join(f'p{o}' for o in self.origin)}")
        return "\n".join(lines)
