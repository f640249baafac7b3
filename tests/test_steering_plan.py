"""The steering plan (creward.diffusion.steering_plan): validation, checkpoints, pruning schedule,
model-evaluation counts, FK potentials, resampling / pruning and the lineage. Plain PyTorch."""

import ast
from pathlib import Path

import pytest
import torch

from creward.diffusion.steering_plan import (
    MODES, POTENTIALS, Population, SteeringPlan, final_order, log_potential, prune_indices, resample_indices,
)
from creward.models.errors import CREwardError

pytestmark = pytest.mark.unit


def simulated_evaluations(plan: SteeringPlan, steps: int) -> int:
    """Count particle-model-evaluations step by step: the model runs on the particles alive before a
    checkpoint's decision; the new count applies from the next step."""
    checkpoints, alive_after = plan.checkpoints(steps), plan.alive_after(steps)
    alive, total = plan.particles, 0
    for step in range(steps):
        total += alive
        if step in checkpoints:
            alive = alive_after[checkpoints.index(step)]
    return total


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"keep": 5, "particles": 4}, "keep (k=5) is larger than particles (N=4)"),
    ({"keep": 0}, "keep (k=0): expected a whole number >= 1"),
    ({"particles": 0}, "particles (N=0): expected a whole number >= 1"),
    ({"mode": "greedy"}, "mode 'greedy': unknown; expected one of resample, prune, best-of-n"),
    ({"potential": "add"}, "potential 'add': unknown; expected one of sum, diff, max"),
    ({"temperature": 0.0}, "temperature (lambda=0.0): expected a finite number > 0"),
    ({"temperature": -1.0}, "temperature (lambda=-1.0)"),
    ({"temperature": float("nan")}, "temperature (lambda=nan)"),
    ({"mode": "prune", "particles": 4, "survivors": 5}, "survivors (m=5) is larger than particles (N=4)"),
    ({"mode": "prune", "particles": 4, "keep": 2, "survivors": 1}, "survivors (m=1) is smaller than keep (k=2)"),
    ({"survivors": 0}, "survivors (m=0)"),
    ({"checkpoint_steps": (3, -1)}, "checkpoint_steps: step -1 is negative"),
    ({"checkpoint_steps": (3, 2.5)}, "checkpoint_steps: 2.5 is not a whole number"),
    ({"checkpoint_steps": ()}, "checkpoint_steps is empty"),
    ({"every": 0}, "every (0): expected a whole number of steps >= 1"),
    ({"start_percent": 1.5}, "start_percent (1.5): expected a fraction of the schedule between 0 and 1"),
    ({"start_percent": 0.8, "end_percent": 0.2}, "start_percent (0.8) is after end_percent (0.2)"),
    ({"particles": True}, "particles (N=True)"),
])
def test_invalid_fields_are_named_with_value_and_expectation(kwargs, message):
    with pytest.raises(CREwardError) as error:
        SteeringPlan(**kwargs)
    assert message in str(error.value)


def test_valid_plans_and_survivors_only_bound_when_pruning():
    SteeringPlan(mode="prune", particles=4, keep=2, survivors=2)
    SteeringPlan(mode="prune", particles=4, keep=4, survivors=4)
    # resample / best-of-n do not use survivors: the default 1 does not conflict with keep=2
    SteeringPlan(mode="resample", particles=4, keep=2)
    SteeringPlan(mode="best-of-n", particles=4, keep=4)
    assert MODES == ("resample", "prune", "best-of-n") and POTENTIALS == ("sum", "diff", "max")


def test_explicit_checkpoints_become_a_hashable_tuple():
    plan = SteeringPlan(checkpoint_steps=[8, 4, 8])
    assert plan.checkpoint_steps == (8, 4, 8)
    hash(plan)
    assert plan.checkpoints(20) == [4, 8]


def test_explicit_checkpoints_outside_the_schedule_or_at_its_end():
    plan = SteeringPlan(checkpoint_steps=(4, 30))
    with pytest.raises(CREwardError, match=r"checkpoint step 30 is outside the schedule of 20 steps \(0\.\.19\)"):
        plan.checkpoints(20)
    with pytest.raises(CREwardError, match=r"checkpoint step 19 is the last step of the schedule of 20 steps.*0\.\.18"):
        SteeringPlan(checkpoint_steps=(19,)).checkpoints(20)
    assert SteeringPlan(checkpoint_steps=(0, 18)).checkpoints(20) == [0, 18]
    with pytest.raises(CREwardError, match=r"steps \(0\)"):
        SteeringPlan().checkpoints(0)


# -- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("steps, expected", [
    (1, []),        # the only step is the last
    (2, []),        # i/(steps-1) in {0, 1}: none within [0.2, 0.8]
    (5, [1]),       # 1/4 = 0.25; 3/4 = 0.75 is next but 1 + 4 = 5 > 3
    (10, [2, 6]),   # 2/9 = 0.22 ... 7/9 = 0.78
    (20, [4, 8, 12]),  # 4/19 = 0.21 ... 15/19 = 0.79
    (21, [4, 8, 12, 16]),  # 4/20 = 0.2 and 16/20 = 0.8 exactly: both ends included
    (30, [6, 10, 14, 18, 22]),  # 6/29 = 0.207 ... 23/29 = 0.793
])
def test_default_checkpoint_rule(steps, expected):
    assert SteeringPlan().checkpoints(steps) == expected


def test_default_rule_never_uses_the_last_step_and_follows_every():
    plan = SteeringPlan(every=1, start_percent=0.0, end_percent=1.0)
    assert plan.checkpoints(5) == [0, 1, 2, 3]
    assert SteeringPlan(every=3, start_percent=0.5, end_percent=1.0).checkpoints(11) == [5, 8]
    assert SteeringPlan(every=2, start_percent=0.5, end_percent=0.5).checkpoints(11) == [5]


def test_best_of_n_has_no_checkpoints():
    plan = SteeringPlan(mode="best-of-n", particles=6, checkpoint_steps=(3,))
    assert plan.checkpoints(20) == [] and plan.alive_after(20) == []
    assert plan.evaluations_per_latent(20) == 6 * 20


# -- pruning schedule and cost ------------------------------------------------------------------
def test_alive_after_geometric_examples():
    assert SteeringPlan(mode="prune", particles=8, survivors=2).alive_after(20) == [5, 3, 2]  # 8*(1/4)^(1/3), ^(2/3)
    halving = SteeringPlan(mode="prune", particles=64, survivors=1, checkpoint_steps=(1, 2, 3, 4, 5, 6))
    assert halving.alive_after(10) == [32, 16, 8, 4, 2, 1]
    assert SteeringPlan(mode="prune", particles=8, survivors=3, checkpoint_steps=(5,)).alive_after(10) == [3]
    assert SteeringPlan(mode="prune", particles=4, survivors=4, keep=2).alive_after(20) == [4, 4, 4]
    assert SteeringPlan(mode="resample", particles=8).alive_after(20) == [8, 8, 8]


@pytest.mark.parametrize("particles", [1, 2, 5, 8, 17, 64])
@pytest.mark.parametrize("steps", [3, 10, 20, 50])
def test_alive_after_monotone_and_ends_at_survivors(particles, steps):
    for survivors in sorted({1, max(1, particles // 3), particles}):
        plan = SteeringPlan(mode="prune", particles=particles, survivors=survivors, every=1, start_percent=0.0, end_percent=1.0)
        alive = plan.alive_after(steps)
        assert len(alive) == len(plan.checkpoints(steps)) == steps - 1
        assert alive[-1] == survivors
        assert all(a >= b for a, b in zip([particles] + alive, alive))
        assert all(survivors <= a <= particles for a in alive)


@pytest.mark.parametrize("plan, steps, expected", [
    # checkpoints 4, 8, 12, alive 5, 3, 2: steps 0..4 with 8, 5..8 with 5, 9..12 with 3, 13..19 with 2
    (SteeringPlan(mode="prune", particles=8, survivors=2), 20, 8 * 5 + 5 * 4 + 3 * 4 + 2 * 7),
    # checkpoints 2, 5, alive round(6/sqrt(2)) = 4, then 3: 6*3 + 4*3 + 3*2
    (SteeringPlan(mode="prune", particles=6, survivors=3, checkpoint_steps=(2, 5)), 8, 6 * 3 + 4 * 3 + 3 * 2),
    # a checkpoint at step 0 still costs N there: 4 + 1*9
    (SteeringPlan(mode="prune", particles=4, survivors=1, checkpoint_steps=(0,)), 10, 4 + 9),
    (SteeringPlan(mode="prune", particles=4, survivors=1), 2, 4 * 2),  # no checkpoint fits 2 steps
    (SteeringPlan(mode="resample", particles=4), 20, 80),
    (SteeringPlan(mode="best-of-n", particles=3), 7, 21),
])
def test_evaluations_per_latent_hand_computed(plan, steps, expected):
    assert plan.evaluations_per_latent(steps) == expected
    assert simulated_evaluations(plan, steps) == expected


def test_evaluations_match_step_by_step_count_on_many_plans():
    for particles, survivors, every, steps in [(16, 1, 1, 12), (16, 4, 3, 30), (9, 2, 2, 7), (5, 5, 1, 9), (32, 3, 5, 50)]:
        plan = SteeringPlan(mode="prune", particles=particles, survivors=survivors, every=every)
        assert plan.evaluations_per_latent(steps) == simulated_evaluations(plan, steps)
        assert plan.evaluations_per_latent(steps) <= particles * steps


def test_describe():
    assert SteeringPlan().describe(20) == "resample 4 particles (sum potential, lambda 10) at steps 4, 8, 12; keep 1"
    assert SteeringPlan().describe() == ("resample 4 particles (sum potential, lambda 10) every 4 steps from 20% to 80% "
                                         "of the schedule; keep 1")
    prune = SteeringPlan(mode="prune", particles=8, survivors=2, keep=2, checkpoint_steps=(8, 4))
    assert prune.describe() == "prune 8 particles to 2 at steps 4, 8; keep 2"
    assert prune.describe(20) == "prune 8 particles to 2 at steps 4, 8 (alive 4, 2); keep 2"
    assert SteeringPlan(mode="best-of-n", particles=6, keep=2).describe() == "best-of-n: 6 particles, no checkpoints; keep 2"
    assert "no checkpoint fits 2 steps" in SteeringPlan(potential="max", temperature=2.5).describe(2)
    assert "max potential, lambda 2.5" in SteeringPlan(potential="max", temperature=2.5).describe(2)


# -- potentials ---------------------------------------------------------------------------------
HISTORY = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])  # 2 checkpoints, 3 particles


@pytest.mark.parametrize("potential, expected", [
    ("sum", [8.0, 4.0, 2.0]),   # 2 * (1+3, 2+0, 0+1)
    ("diff", [4.0, -4.0, 2.0]),  # 2 * (3-1, 0-2, 1-0)
    ("max", [6.0, 4.0, 2.0]),   # 2 * (3, 2, 1)
])
def test_potentials_on_a_hand_made_history(potential, expected):
    torch.testing.assert_close(log_potential(HISTORY, potential, 2.0), torch.tensor(expected, dtype=torch.float64))


def test_diff_potential_at_the_first_checkpoint_is_the_reward_itself():
    first = torch.tensor([[0.5, -0.25]])
    for potential in POTENTIALS:
        torch.testing.assert_close(log_potential(first, potential, 4.0), torch.tensor([2.0, -1.0], dtype=torch.float64))


def test_potential_errors():
    with pytest.raises(CREwardError, match="potential 'add'"):
        log_potential(HISTORY, "add", 1.0)
    with pytest.raises(CREwardError, match=r"expected a \[checkpoints >= 1, particles >= 1\] tensor, got shape \(0, 3\)"):
        log_potential(torch.zeros(0, 3), "sum", 1.0)
    with pytest.raises(CREwardError, match="temperature"):
        log_potential(HISTORY, "sum", 0.0)


# -- resampling and pruning ---------------------------------------------------------------------
def test_resampling_is_reproducible_sorted_and_keeps_n():
    weights = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.7, 1.1])
    first = resample_indices(weights, torch.Generator().manual_seed(7))
    again = resample_indices(weights, torch.Generator().manual_seed(7))
    assert first.dtype == torch.long and first.shape == (6,)
    assert torch.equal(first, again)
    assert torch.equal(first, torch.sort(first).values)
    assert int(first.min()) >= 0 and int(first.max()) < 6
    generator = torch.Generator().manual_seed(7)
    draws = {tuple(resample_indices(weights, generator).tolist()) for _ in range(20)}
    assert len(draws) > 1  # the generator advances: later draws differ


def test_resampling_frequencies_follow_the_weights():
    # 4000 particles in 4 groups of 1000 with weights 1:2:3:4, so a group is drawn with probability
    # 0.1, 0.2, 0.3, 0.4; the standard error of each fraction is <= sqrt(0.24/4000) = 0.0077, and
    # 0.03 is about 4 standard errors.
    groups = torch.arange(4000) // 1000
    log_weights = torch.log((groups + 1).double())
    drawn = resample_indices(log_weights, torch.Generator().manual_seed(0))
    fractions = torch.bincount(groups[drawn], minlength=4).double() / 4000
    torch.testing.assert_close(fractions, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.03, rtol=0)


def test_large_lambda_concentrates_on_the_best_without_overflow():
    rewards = torch.tensor([[0.50, 0.51, 0.30, 0.20]])
    # lambda 1000: the runner-up's weight is exp(-10) = 4.5e-5 of the best's
    log_weights = log_potential(rewards, "sum", 1000.0)
    assert resample_indices(log_weights, torch.Generator().manual_seed(3)).tolist() == [1, 1, 1, 1]
    # lambda 1e6: exp would overflow without subtracting the maximum
    huge = log_potential(rewards, "sum", 1e6)
    assert resample_indices(huge, torch.Generator().manual_seed(3)).tolist() == [1, 1, 1, 1]
    # lambda small: close to uniform, so several particles survive
    flat = resample_indices(log_potential(rewards, "sum", 1e-3), torch.Generator().manual_seed(3))
    assert len(set(flat.tolist())) > 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_resampling_rejects_non_finite_weights(bad):
    with pytest.raises(CREwardError, match=r"particles \[2\] have non-finite log weights"):
        resample_indices(torch.tensor([0.0, 1.0, bad]), torch.Generator().manual_seed(0))


def test_prune_indices_best_first_with_stable_ties():
    values = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1])
    assert prune_indices(values, 3).tolist() == [1, 3, 0]
    assert prune_indices(values, 5).tolist() == [1, 3, 0, 2, 4]
    assert prune_indices(values, 1).dtype == torch.long
    assert final_order(values, 2) == [1, 3]
    with pytest.raises(CREwardError, match=r"keep \(6\) must be between 1 and the number of particles \(5\)"):
        prune_indices(values, 6)
    with pytest.raises(CREwardError, match="NaN"):
        final_order(torch.tensor([0.1, float("nan")]), 1)


# -- lineage ------------------------------------------------------------------------------------
def resample_then_prune() -> Population:
    population = Population(4)
    population.record(4, torch.tensor([0.1, 0.9, 0.5, 0.3]), torch.tensor([[0.1, 0.2], [0.9, 0.8], [0.5, 0.4], [0.3, 0.2]]),
                      ("geometry", "texture"))
    population.select(torch.tensor([1, 1, 2, 3]), "resample")
    values = torch.tensor([0.8, 0.95, 0.2, 0.4])
    population.record(8, values)
    population.select(prune_indices(values, 2), "prune")
    return population


def test_population_origins_and_history_follow_the_lineage():
    population = Population(4)
    assert population.origin == [0, 1, 2, 3] and population.count == 4
    assert population.history_tensor().shape == (0, 4)
    population.record(4, torch.tensor([0.1, 0.9, 0.5, 0.3]))
    population.select(torch.tensor([1, 1, 2, 3]), "resample")
    assert population.origin == [1, 1, 2, 3]
    population.record(8, torch.tensor([0.8, 0.95, 0.2, 0.4]))
    # the sum potential sees each particle's own past: both copies of p1 carry 0.9 from step 4
    torch.testing.assert_close(log_potential(population.history_tensor(), "sum", 1.0),
                               torch.tensor([1.7, 1.85, 0.7, 0.7], dtype=torch.float64))
    population.select(torch.tensor([1, 0]), "prune")
    assert population.origin == [1, 1] and population.count == 2
    torch.testing.assert_close(population.history_tensor(), torch.tensor([[0.9, 0.9], [0.95, 0.8]]))
    first, second = population.events
    assert first == {"step": 4, "mode": "resample", "values": pytest.approx([0.1, 0.9, 0.5, 0.3]), "scores": None,
                     "axes": (), "origins_before": [0, 1, 2, 3], "chosen": [1, 1, 2, 3], "origins_after": [1, 1, 2, 3]}
    assert second["step"] == 8 and second["mode"] == "prune"
    assert second["origins_before"] == [1, 1, 2, 3] and second["chosen"] == [1, 0] and second["origins_after"] == [1, 1]


def test_population_rejects_misaligned_records_and_bad_indices():
    population = Population(3)
    with pytest.raises(CREwardError, match=r"values must have shape \[3\]"):
        population.record(0, torch.zeros(4))
    with pytest.raises(CREwardError, match=r"scores must have shape \[3, axes\]"):
        population.record(0, torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(CREwardError, match=r"indices \[3\] outside the 3 current particles"):
        population.select(torch.tensor([0, 3]))
    with pytest.raises(CREwardError, match="count"):
        Population(0)


def test_lineage_text_names_survivors_duplicates_and_drops():
    population = resample_then_prune()
    text = population.lineage_text(("geometry", "texture"))
    lines = text.splitlines()
    assert lines[0] == "step 4 (resample): 4 -> 4 particles"
    assert "  p1 0.900 [geometry 0.900, texture 0.800]: duplicated x2" in lines
    assert "  p0 0.100 [geometry 0.100, texture 0.200]: dropped" in lines
    assert "  p2 0.500 [geometry 0.500, texture 0.400]: kept" in lines
    assert "step 8 (prune): 4 -> 2 particles" in lines
    assert "  p1 0.950: kept" in lines and "  p1 0.800: kept" in lines
    assert "  p3 0.400: dropped" in lines and "  p2 0.200: dropped" in lines
    assert lines[-1] == "alive at the end: p1, p1"
    population.record_final(torch.tensor([0.61, 0.72]), final_order(torch.tensor([0.61, 0.72]), 1))
    assert population.lineage_text().splitlines()[-1] == "returned (best first): p1 (0.720)"


def test_module_imports_no_comfyui():
    source = Path(__file__).resolve().parents[1] / "diffusion" / "steering_plan.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "math", "dataclasses", "torch"}, imported
