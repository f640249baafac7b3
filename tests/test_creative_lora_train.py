"""Creative-LoRA training in a real (imported) ComfyUI 0.3.75 with tiny models built from its classes.

Models: ComfyUI's SD1.x ``BaseModel`` with a tiny UNet (random weights, eps/v/flow prediction),
a random TAESD, random conditionings, and the tiny random CLIP CREward of ``builders.clip``.
Everything is created and trained under ``torch.inference_mode()``, as nodes run in the server.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from builders.comfy_diffusion import tiny_conditioning, tiny_sd15_model, tiny_vae
from builders.comfyui_models import install_creward_clip

pytestmark = pytest.mark.integration

# Effect size the reward test requires: the held-out mean reward must rise by at least this many
# standard deviations of the per-sample held-out rewards at step 0 (measured: 1.5 to 2.5).
REWARD_MARGIN_STD = 1.0


@pytest.fixture(scope="module")
def tiny(comfy_inprocess, tmp_path_factory):
    from creward.models import load

    files = install_creward_clip(tmp_path_factory.mktemp("creward_models"))

    class Tiny:
        creward = load(files["head"], backbone_weights=files["backbone"])

    with torch.inference_mode():
        Tiny.models = {kind: tiny_sd15_model(seed=1, prediction=kind) for kind in ("eps", "v", "flow")}
        Tiny.vae = tiny_vae()
        Tiny.conds = tiny_conditioning(2)
    return Tiny


def config(**overrides):
    from creward.train.lora.config import CreativeLoraConfig

    settings = dict(
        axis_weights="texture", denoise_weight=0.0, rank=4, alpha=4.0, learning_rate=1e-2, steps=16, batch_size=2,
        seed=0, width=32, height=32, targets="all", checkpoint_every=100, eval_seeds=4, eval_steps=2,
        samples_per_prompt=2, sample_steps=2, cfg=1.0, gradient_checkpointing=False, save_dtype="fp32",
    )
    settings.update(overrides)
    return CreativeLoraConfig(**settings)


def train(tiny, run_dir, kind="v", **kwargs):
    from creward.train.lora.trainer import train_creative_lora

    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("output", "resume", "on_step", "prompts", "latents",
                                                                       "latent_prompt_index")}
    with torch.inference_mode():
        return train_creative_lora(tiny.models[kind], tiny.vae, tiny.creward, tiny.conds, config(**overrides), run_dir,
                                   progress=False, **kwargs)


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_one_step_estimate_uses_comfyuis_model_sampling(tiny, kind):
    """x_t = noise_scaling(sigma, eps, x0); x0_hat = calculate_denoised(sigma, model(calculate_input(x_t)), x_t)."""
    from creward.diffusion.clean_estimate import run_in_session

    model = tiny.models[kind]
    sampling = model.get_model_object("model_sampling")
    generator = torch.Generator().manual_seed(3)
    clean, noise = torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 4, 4, 4, generator=generator)
    context = tiny.conds[1][0][0]

    def body(session):
        sigma = torch.tensor([session.sigma_at(0.3), session.sigma_at(0.8)])
        x_t = session.noisy(sigma, noise, clean)
        estimate = session.denoise(x_t, sigma, "creward_prompt_1")
        unet = session.base_model.diffusion_model
        output = unet(sampling.calculate_input(sigma, x_t), sampling.timestep(sigma).float(), context=context.repeat(2, 1, 1))
        expected = sampling.calculate_denoised(sigma, output.float(), x_t)
        return sigma, x_t, estimate, expected

    with torch.inference_mode():
        sigma, x_t, estimate, expected = run_in_session(
            model, {"positive": tiny.conds[0], "creward_prompt_1": tiny.conds[1]}, (2, 4, 4, 4), body)
    if kind == "flow":
        torch.testing.assert_close(x_t, sigma.view(-1, 1, 1, 1) * noise + (1 - sigma.view(-1, 1, 1, 1)) * clean)
    else:
        torch.testing.assert_close(x_t, clean + sigma.view(-1, 1, 1, 1) * noise)
    assert sigma[0] > sigma[1] > 0
    torch.testing.assert_close(estimate, expected, rtol=1e-4, atol=1e-4)


def test_training_raises_held_out_reward_and_lambda_keeps_denoising(tiny, tmp_path):
    reward_only = train(tiny, tmp_path / "lambda0", output=tmp_path / "lambda0.safetensors", denoise_weight=0.0)
    with_lambda = train(tiny, tmp_path / "lambda10", denoise_weight=10.0)

    before, after = reward_only.evals[0], reward_only.evals[-1]
    assert before["step"] == 0 and after["step"] == 16 and len(reward_only.history) == 16
    # The held-out reward (fresh seeds, full sampler) rises by a clear margin.
    assert after["reward"] - before["reward"] > REWARD_MARGIN_STD * before["reward_std"], (before, after)
    # Lambda pulls the other way: with it, the model stays a denoiser (held-out denoising error
    # lower than without it, and no worse than the base model's).
    assert with_lambda.evals[0]["denoise"] == pytest.approx(before["denoise"])
    assert with_lambda.evals[-1]["denoise"] < after["denoise"]
    assert with_lambda.evals[-1]["denoise"] <= before["denoise"]
    assert after["denoise"] > before["denoise"]  # reward only: the denoising error grows

    info = __import__("creward.train.lora.export", fromlist=["read_lora_info"]).read_lora_info(reward_only.lora_path)
    assert info.primary_axis == "texture" and info.base_architecture == "SD15"
    assert float(info.metadata["creward.mean_reward_before"]) == pytest.approx(before["reward"])
    assert float(info.metadata["creward.mean_reward_after"]) == pytest.approx(after["reward"])
    assert json.loads(info.metadata["creward.lambda"]) == 0.0 and info.metadata["creward.steps"] == "16"
    assert (tmp_path / "lambda0" / "reward_curve.png").is_file()
    # the evaluation's settings, seeds and spread travel with the numbers (paired: same samples before/after)
    evaluation = json.loads(info.metadata["creward.eval"])
    pairs = torch.tensor(after["rewards"]) - torch.tensor(before["rewards"])
    assert evaluation["samples"] == len(before["rewards"]) == pairs.numel() > 1
    assert evaluation["paired_change"] == pytest.approx(float(pairs.mean()), abs=1e-5)
    assert evaluation["paired_change_stderr"] == pytest.approx(float(pairs.std()) / pairs.numel() ** 0.5, abs=1e-5)
    assert evaluation["improved_fraction"] == pytest.approx(float((pairs > 0).float().mean()))
    assert evaluation["seeds"] and evaluation["sampler"] and evaluation["steps"] > 0


def test_resume_after_interruption_continues_from_the_last_checkpoint(tiny, tmp_path):
    from creward.train.lora.config import LoraConfigError

    settings = dict(steps=5, checkpoint_every=2, eval_seeds=0, samples_per_prompt=1)
    whole = train(tiny, tmp_path / "whole", **settings)

    class Interrupted(Exception):
        pass

    def stop_at_3(info):
        if info.step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tiny, tmp_path / "cut", on_step=stop_at_3, **settings)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step_000002"]
    with pytest.raises(LoraConfigError, match="setting rank: 4 != 8"):
        train(tiny, tmp_path / "cut", **{**settings, "rank": 8})
    resumed = train(tiny, tmp_path / "cut", **settings)
    assert resumed.resumed_from == 2 and resumed.steps == 5
    assert [entry["step"] for entry in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.lora_tensors.keys() == whole.lora_tensors.keys()
    for key, value in whole.lora_tensors.items():
        torch.testing.assert_close(resumed.lora_tensors[key], value, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step_000004", "step_000005"]
    again = train(tiny, tmp_path / "cut", **settings)  # already done: nothing more is trained
    assert again.resumed_from == 5 and len(again.history) == 5


def test_gradient_checkpointing_gives_the_same_update(tiny, tmp_path):
    settings = dict(steps=1, eval_seeds=0, samples_per_prompt=1, targets="attention", learning_rate=1e-3)
    plain = train(tiny, tmp_path / "plain", gradient_checkpointing=False, **settings)
    checkpointed = train(tiny, tmp_path / "ckpt", gradient_checkpointing=True, **settings)
    assert any(value.abs().sum() > 0 for key, value in plain.lora_tensors.items() if key.endswith("lora_up.weight"))
    for key, value in plain.lora_tensors.items():
        torch.testing.assert_close(checkpointed.lora_tensors[key], value, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_eps_and_flow_models_train(tiny, tmp_path, kind):
    result = train(tiny, tmp_path / kind, kind=kind, steps=2, eval_seeds=1, eval_steps=1, samples_per_prompt=1)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in result.history)
    assert any(value.abs().sum() > 0 for key, value in result.lora_tensors.items() if key.endswith("lora_up.weight"))


def test_given_latents_are_the_pool(tiny, tmp_path):
    from creward.train.lora.trainer import CreativeLoraTrainer

    latents = torch.randn(3, 4, 4, 4)
    with torch.inference_mode():
        trainer = CreativeLoraTrainer(tiny.models["v"], tiny.vae, tiny.creward, tiny.conds, config(steps=1, eval_seeds=0),
                                      tmp_path, latents=latents, latent_prompt_index=torch.tensor([1, 1, 0]))
        trainer.prepare()
    assert trainer.pool.source == "given" and torch.equal(trainer.pool.latents, latents)
    assert trainer.pool.prompt_index.tolist() == [1, 1, 0]
    assert not (tmp_path / "pool.safetensors").exists()


def test_exported_lora_loads_in_loraloader_without_unloaded_keys(tiny, comfy_inprocess, comfy_base_dir, tmp_path, caplog):
    """What was trained is what ComfyUI's LoraLoader applies; strength 0 is the base model exactly."""
    from creward.diffusion.clean_estimate import run_in_session
    from creward.train.lora.trainer import CreativeLoraTrainer

    base = tiny.models["v"]
    with torch.inference_mode():
        trainer = CreativeLoraTrainer(base, tiny.vae, tiny.creward, tiny.conds,
                                      config(steps=3, eval_seeds=0, samples_per_prompt=1), tmp_path / "run")
        trainer.prepare(resume=False)
        trainer.train(progress=False)
        trainer.export(comfy_base_dir / "models" / "loras" / "creward_test_texture.safetensors")

    generator = torch.Generator().manual_seed(5)
    x_t, sigma = torch.randn(2, 4, 4, 4, generator=generator), torch.tensor([2.0, 0.5])

    def predict(model):
        with torch.inference_mode():
            return run_in_session(model, {"positive": tiny.conds[0], "creward_prompt_0": tiny.conds[0]}, (2, 4, 4, 4),
                                  lambda session: session.denoise(x_t, sigma, "creward_prompt_0"))

    loader = comfy_inprocess.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]()
    with caplog.at_level(logging.WARNING):
        with torch.inference_mode():
            full = loader.load_lora_model_only(base, "creward_test_texture.safetensors", 1.0)[0]
            negative = loader.load_lora_model_only(base, "creward_test_texture.safetensors", -1.0)[0]
            zero = comfy_inprocess.NODE_CLASS_MAPPINGS["LoraLoader"]().load_lora(
                base, None, "creward_test_texture.safetensors", 0.0, 0.0)[0]
    problems = [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    assert problems == []
    assert len(full.patches) == len(trainer.lora.adapters) > 0

    base_out, full_out, negative_out, zero_out, trained_out = map(predict, (base, full, negative, zero, trainer.patcher))
    assert torch.equal(zero_out, base_out)
    assert not torch.allclose(full_out, base_out, atol=1e-4)
    torch.testing.assert_close(full_out, trained_out, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(negative_out, base_out, atol=1e-4) and not torch.allclose(negative_out, full_out, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tiny, tmp_path, precision):
    """Compute in bf16 (autocast) or fp16 (autocast + loss scaling); the LoRA itself stays fp32."""
    result = train(tiny, tmp_path / precision, steps=2, eval_seeds=0, samples_per_prompt=1, mixed_precision=precision,
                   targets="attention", learning_rate=1e-3)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in result.history)
    ups = [value for key, value in result.lora_tensors.items() if key.endswith("lora_up.weight")]
    assert all(value.dtype == torch.float32 for value in ups) and any(value.abs().sum() > 0 for value in ups)
