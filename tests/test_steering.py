"""Particle steering and reward guidance on the analytic diffusion model (in-process ComfyUI).

The model's data are four latent prototypes (``steering_fixtures``): its clean estimate at an
intermediate step predicts where a sample lands, and the reward of each prototype is known, so
each mechanism can be checked against what it should do:

- pruning uses exactly the model evaluations its plan says (counted by the denoiser) and returns
  the k best survivors, scored as the reward scores them;
- resampling keeps N particles, reproduces with a seed and, at equal model evaluations, ends with
  a higher mean reward than independent best-of-N;
- guidance at a small scale raises the mean reward over held-out seeds; scale 0 is bit-identical.
"""

from __future__ import annotations

import pytest
import torch

from steering_fixtures import analytic  # noqa: F401

from creward.models.errors import CREwardError

STEPS = 12


def make_reward(analytic, axis="overall", batch_size=4):
    from creward.diffusion.decoders import PreviewDecoder
    from creward.diffusion.reward import LatentReward, RewardSpec

    return LatentReward(analytic.reward, RewardSpec.parse(axis, analytic.axes), PreviewDecoder(analytic.decoder, "vae", "linear"),
                        batch_size=batch_size)


def plan(**settings):
    from creward.diffusion.steering_plan import SteeringPlan

    return SteeringPlan(**settings)


def steer(analytic, model, seed, the_plan, sampler="euler_ancestral", keep=1, batch=1, cfg=1.0, steps=STEPS, axis="overall", **kwargs):
    from creward.diffusion.creative_sampling import creative_sample

    return creative_sample(model, analytic.positive, analytic.negative, analytic.empty_latent(batch), seed, steps, cfg, sampler,
                           "normal", the_plan, make_reward(analytic, axis), keep=keep, **kwargs)


def true_reward(analytic, vae_latents, axis="overall"):
    from builders.analytic_diffusion import decode_images

    with torch.no_grad():
        return analytic.reward(decode_images(analytic.decoder, vae_latents))[:, analytic.axes.index(axis)]


def test_one_particle_is_exactly_the_plain_sampler(analytic):
    import comfy.sample

    samples, report = steer(analytic, analytic.model, 5, plan(mode="best-of-n", particles=1), sampler="euler")
    latent = analytic.empty_latent(1)
    plain = comfy.sample.sample(analytic.model, comfy.sample.prepare_noise(latent, 5), STEPS, 1.0, "euler", "normal",
                                analytic.positive, analytic.negative, latent, seed=5, disable_pbar=True)
    assert torch.equal(samples, plain)
    assert report.evaluations == STEPS


@pytest.mark.parametrize("particles, survivors, keep, checkpoints", [(8, 2, 2, (3, 6, 9)), (6, 3, 1, (2, 5)), (4, 1, 1, None)])
def test_pruning_uses_exactly_the_planned_model_evaluations_and_returns_the_best_survivors(analytic, particles, survivors, keep, checkpoints):
    the_plan = plan(mode="prune", particles=particles, survivors=survivors, keep=keep, checkpoint_steps=checkpoints, every=3)
    denoiser = analytic.model.model.diffusion_model
    denoiser.reset_counts()
    samples, report = steer(analytic, analytic.model, 11, the_plan, sampler="euler", keep=keep)
    expected = the_plan.evaluations_per_latent(STEPS)
    assert denoiser.rows == expected == report.evaluations < particles * STEPS  # cfg 1: one row per particle per step
    # the alive counts follow the plan, and the survivors are the best at each checkpoint
    population = report.populations[0]
    assert [len(event["origins_after"]) for event in population.events] == the_plan.alive_after(STEPS)
    for event in population.events:
        values = torch.tensor(event["values"])
        kept = values[torch.tensor(event["chosen"])]
        assert kept.min() >= values.max() if len(kept) == len(values) else kept.min() >= values.topk(len(kept)).values.min()
    # k returned, best first, and their scores are what the reward gives the returned latents
    assert samples.shape[0] == keep
    truth = true_reward(analytic, samples)
    assert torch.allclose(report.final_values, truth, atol=1e-5)
    assert torch.all(report.final_values[:-1] >= report.final_values[1:])


def test_resampling_keeps_the_particle_count_and_reproduces_with_the_seed(analytic):
    the_plan = plan(mode="resample", particles=6, checkpoint_steps=(2, 4, 6, 8), temperature=20.0)
    first, report = steer(analytic, analytic.model, 3, the_plan, keep=2)
    again, _ = steer(analytic, analytic.model, 3, the_plan, keep=2)
    other, _ = steer(analytic, analytic.model, 4, the_plan, keep=2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert report.mode == "resample" and report.evaluations == 6 * STEPS
    events = report.populations[0].events
    assert len(events) == 4 and all(len(event["origins_after"]) == 6 for event in events)
    assert any(len(set(event["origins_after"])) < 6 for event in events)  # some particle was duplicated
    assert "resample" in report.lineage_text() and "returned" in report.lineage_text()


def test_resampling_beats_best_of_n_at_equal_model_evaluations(analytic):
    # 4 particles, 12 steps each: both use 48 model evaluations per sample
    seeds = range(100, 124)
    fk = plan(mode="resample", particles=4, checkpoint_steps=(1, 2, 3, 4, 6), temperature=30.0)
    best = plan(mode="best-of-n", particles=4)
    fk_rewards, best_rewards = [], []
    for seed in seeds:
        samples, fk_report = steer(analytic, analytic.model, seed, fk)
        fk_rewards.append(float(true_reward(analytic, samples)))
        samples, best_report = steer(analytic, analytic.model, seed, best)
        best_rewards.append(float(true_reward(analytic, samples)))
        assert fk_report.evaluations == best_report.evaluations == 4 * STEPS
    fk_mean, best_mean = sum(fk_rewards) / len(seeds), sum(best_rewards) / len(seeds)
    top = float(analytic.prototype_rewards[:, analytic.axes.index("overall")].max())
    # stated margin: FK closes at least a third of best-of-N's gap to the best prototype
    assert fk_mean - best_mean >= (top - best_mean) / 3, (fk_mean, best_mean, top)


def test_resampling_with_a_deterministic_sampler_prunes_and_says_so(analytic):
    samples, report = steer(analytic, analytic.model, 1, plan(mode="resample", particles=4, checkpoint_steps=(3, 6)), sampler="euler")
    assert report.mode == "prune" and "adds no noise" in report.note and "euler" in report.note
    assert "adds no noise" in report.lineage_text()


@pytest.mark.parametrize("prediction", ["v", "flow"])
def test_steering_works_for_v_and_flow_models(analytic, prediction):
    model = analytic.models[prediction]
    samples, report = steer(analytic, model, 2, plan(mode="resample", particles=4, checkpoint_steps=(3, 6)), keep=2)
    index, distance = analytic.nearest(samples)
    assert samples.shape[0] == 2 and bool((distance < 0.5).all()), distance
    assert torch.allclose(report.final_values, true_reward(analytic, samples), atol=1e-5)


def test_a_batch_of_latents_gets_particles_each(analytic):
    samples, report = steer(analytic, analytic.model, 7, plan(mode="prune", particles=4, survivors=2, keep=2, checkpoint_steps=(4,)),
                            keep=2, batch=2, sampler="euler")
    assert samples.shape[0] == 4 and len(report.populations) == 2  # latent 0's best two, then latent 1's
    assert torch.allclose(report.final_values, true_reward(analytic, samples), atol=1e-5)
    assert report.final_values[0] >= report.final_values[1] and report.final_values[2] >= report.final_values[3]


def test_noise_mask_keeps_the_known_region_as_ksampler_does(analytic):
    latent = analytic.prototypes_vae[:1].clone()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0  # only the right half is generated
    from creward.diffusion.creative_sampling import creative_sample

    samples, _ = creative_sample(analytic.model, analytic.positive, analytic.negative, latent, 9, STEPS, 1.0, "euler_ancestral",
                                 "normal", plan(mode="resample", particles=3, checkpoint_steps=(4,)), make_reward(analytic),
                                 noise_mask=mask)
    assert torch.allclose(samples[..., :4], latent[..., :4], atol=1e-4)


def test_bad_input_is_named(analytic):
    with pytest.raises(CREwardError, match="outside the schedule"):
        steer(analytic, analytic.model, 0, plan(mode="prune", particles=4, checkpoint_steps=(30,)))
    with pytest.raises(CREwardError, match=r"keep \(k=5\).*particles \(N=4\)"):
        plan(mode="resample", particles=4, keep=5)
    with pytest.raises(CREwardError, match="this head's axes"):
        make_reward(analytic, axis="colour")
    with pytest.raises(CREwardError, match="dpm_adaptive"):
        steer(analytic, analytic.model, 0, plan(mode="prune", particles=2), sampler="dpm_adaptive")
    # a decoder for 16-channel latents (SD3/Flux) with this 4-channel model
    from creward.diffusion.creative_sampling import creative_sample
    from creward.diffusion.decoders import PreviewDecoder
    from creward.diffusion.reward import LatentReward, RewardSpec

    class SixteenChannels:
        latent_channels = 16

    reward = LatentReward(analytic.reward, RewardSpec.parse("overall"), PreviewDecoder(SixteenChannels(), "vae", "sd3 vae"))
    with pytest.raises(CREwardError, match="16-channel latents but the latent has 4 channels"):
        creative_sample(analytic.model, analytic.positive, analytic.negative, analytic.empty_latent(1), 0, 4, 1.0, "euler",
                        "normal", plan(mode="prune", particles=2), reward)


def test_interrupt_stops_at_a_checkpoint(analytic):
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            steer(analytic, analytic.model, 0, plan(mode="prune", particles=2, checkpoint_steps=(2,)), sampler="euler")
    finally:
        comfy.model_management.interrupt_current_processing(False)


# -- guidance --------------------------------------------------------------------------------
def guided_samples(analytic, scale, seeds, sampler="euler", steps=STEPS, **settings):
    import comfy.sample

    from creward.diffusion.guidance import GuidanceSettings, guided_model

    model, guidance = guided_model(analytic.model, make_reward(analytic), GuidanceSettings(scale=scale, **settings))
    latent = analytic.empty_latent(len(seeds))
    with torch.inference_mode():  # as ComfyUI runs nodes
        samples = comfy.sample.sample(model, analytic.noise(seeds), steps, 1.0, sampler, "normal", analytic.positive,
                                      analytic.negative, latent, seed=seeds[0], disable_pbar=True)
    return samples, guidance


def test_guidance_scale_zero_is_bit_identical_to_the_unpatched_model(analytic):
    import comfy.sample

    seeds = [1, 2, 3]
    guided, guidance = guided_samples(analytic, 0.0, seeds)
    latent = analytic.empty_latent(3)
    plain = comfy.sample.sample(analytic.model, analytic.noise(seeds), STEPS, 1.0, "euler", "normal", analytic.positive,
                                analytic.negative, latent, seed=1, disable_pbar=True)
    assert torch.equal(guided, plain) and guidance.steps_guided == 0


def test_guidance_raises_the_mean_reward_over_held_out_seeds(analytic):
    seeds = list(range(200, 232))
    base, _ = guided_samples(analytic, 0.0, seeds)
    guided, guidance = guided_samples(analytic, 0.3, seeds, end_percent=0.9)
    assert guidance.steps_guided > 0 and guidance.last_gradient_norm > 0  # gradients flowed under inference_mode
    before, after = true_reward(analytic, base), true_reward(analytic, guided)
    # stated margin: +0.02 mean reward (rewards lie in (0, 1); the best prototype is +0.31 above the mean) and most seeds do not get worse
    assert after.mean() - before.mean() >= 0.02, (before.mean(), after.mean())
    assert (after >= before - 1e-6).float().mean() >= 0.75


def test_guidance_every_k_and_range_guide_the_right_steps(analytic):
    _, every_step = guided_samples(analytic, 0.1, [0], start_percent=0.0, end_percent=1.0)
    _, every_third = guided_samples(analytic, 0.1, [0], start_percent=0.0, end_percent=1.0, every=3)
    assert every_step.steps_guided == STEPS
    assert every_third.steps_guided == (STEPS + 2) // 3
    with pytest.raises(CREwardError, match="start_percent"):
        from creward.diffusion.guidance import GuidanceSettings

        GuidanceSettings(start_percent=0.9, end_percent=0.1)


def test_progress_callback_sees_every_step_and_last_the_returned_rows(analytic):
    # ComfyUI's progress bar and SamplerCustom's denoised_output come from this callback
    seen = []
    steer(analytic, analytic.model, 0, plan(mode="prune", particles=4, survivors=2, checkpoint_steps=(3,)), sampler="euler",
          callback=lambda step, x0, x, total: seen.append((step, x0.shape[0], total)))
    assert {step for step, _, _ in seen} == set(range(STEPS)) and all(total == STEPS for _, _, total in seen)
    assert seen[0][1] == 4 and seen[-2][1] == 2 and seen[-1] == (STEPS - 1, 1, STEPS)
