"""Steering and guidance under ComfyUI's real execution (a server running the tiny SD1.x
checkpoint, TAESD from models/vae_approx and the tiny clip CREward), and ``creward train acquire
--steer`` on the same files.

- guidance: scale 0 gives KSampler's latent bit for bit; a positive scale changes it, and the
  server's log shows a non-zero reward gradient (gradients flow although ComfyUI executes nodes
  under ``torch.inference_mode()``);
- bad input: each a clear execution error naming the input, and the server serves the next prompt;
- the command line: steered acquisition writes its folder and lineage; bad steering settings are
  usage errors (exit 2) before anything is loaded.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import comfyui_harness as harness
import nodes_setup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess, comfyui_path):
    files = nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_taesd(comfy_base_dir)
    checkpoint = nodes_setup.install_checkpoint(comfy_base_dir)

    class Env:
        client = comfyui_server
        base = comfy_base_dir
        comfyui = comfyui_path

    Env.files = files
    Env.checkpoint = checkpoint
    return Env


def base_graph(steps: int = 3, seed: int = 7, batch: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": nodes_setup.comfyui_models.CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a chair", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "CREwardLoader", "inputs": {"head": "creward_clip.safetensors", "backbone": "auto",
                                                         "backbone_weights": "auto", "device": "auto", "dtype": "auto"}},
        "7": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "creward_steering_test/latent"}},
    }


def with_guidance(graph: dict, scale: float, **settings) -> dict:
    graph = json.loads(json.dumps(graph))
    graph["6"] = {"class_type": "CREwardGuidance", "inputs": {
        "model": ["1", 0], "creward": ["5", 0], "axis": "overall", "scale": scale, "start_percent": 0.0, "end_percent": 1.0,
        "every": 1, "weighting": "constant", "max_grad_rms": 1.0, "preview_decoder": "taesd", **settings}}
    graph["7"]["inputs"]["model"] = ["6", 0]
    return graph


def saved_latent(client, history: dict, node: str = "8") -> torch.Tensor:
    from safetensors.torch import load_file

    (path,) = client.output_files(history, node, key="latents")
    return load_file(str(path))["latent_tensor"]


def execution_error(client, graph) -> dict:
    with pytest.raises(harness.ComfyUIPromptError) as info:
        client.run(graph)
    messages = info.value.details["status"]["messages"]
    return next(data for kind, data in messages if kind == "execution_error")


def expect_ok(client) -> None:
    history = client.run(base_graph(steps=1))
    assert saved_latent(client, history).shape == (1, 4, 8, 8)


def test_guidance_in_the_server_changes_the_sample_and_scale_zero_does_not(env):
    client = env.client
    plain = saved_latent(client, client.run(base_graph()))
    zero = saved_latent(client, client.run(with_guidance(base_graph(), 0.0)))
    assert torch.equal(zero, plain)
    log_before = len(client.log_text())
    guided = saved_latent(client, client.run(with_guidance(base_graph(), 0.5)))
    assert not torch.equal(guided, plain)
    lines = [line for line in client.log_text()[log_before:].splitlines() if "CREward guidance:" in line]
    assert lines, client.log_tail()
    norm = float(re.search(r"gradient norm ([0-9.e+-]+)", lines[-1]).group(1))
    assert norm > 0, lines


def creative_graph(**settings) -> dict:
    graph = base_graph()
    graph["7"] = {"class_type": "CREwardCreativeKSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "creward": ["5", 0],
        "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler_ancestral", "scheduler": "normal", "mode": "prune",
        "particles": 4, "axis": "overall", "checkpoint_every": 1, "start_percent": 0.2, "end_percent": 0.8, "survivors": 2,
        "potential": "sum", "fk_lambda": 10.0, "preview_decoder": "taesd", "keep": 2, **settings}}
    return graph


def test_creative_ksampler_in_the_server_returns_the_kept_particles(env):
    history = env.client.run(creative_graph())
    latent = saved_latent(env.client, history)
    assert latent.shape == (2, 4, 8, 8)
    assert not torch.equal(latent[0], latent[1])


@pytest.mark.parametrize("settings, message", [
    ({"keep": 5}, "keep (k=5) is larger than particles (N=4)"),
    ({"checkpoint_steps": "2, 9"}, "checkpoint step 9 is outside the schedule of 4 steps"),
    ({"mode": "prune", "survivors": 1, "keep": 2}, "keep (k=2)"),
    ({"axis": "weighted sum", "weights": "colour=1"}, "colour"),
])
def test_bad_steering_input_is_an_execution_error_naming_it(env, settings, message):
    error = execution_error(env.client, creative_graph(**settings))
    assert error["node_type"] == "CREwardCreativeKSampler" and message in error["exception_message"], error
    expect_ok(env.client)


# -- the command line -----------------------------------------------------------------------
def acquire_args(env, out, *extra) -> list[str]:
    return ["train", "acquire", "--comfyui", str(env.comfyui), "--checkpoint", str(env.checkpoint),
            "--head", str(env.files["head"]), "--backbone-weights", str(env.files["backbone"]),
            "--prompt", "a chair", "-n", "2", "--top-k", "1", "--steps", "4", "--cfg", "1.0",
            "--width", "64", "--height", "64", "--seed", "5", "-o", str(out), "--no-progress", *extra]


def test_cli_acquire_with_pruning_writes_the_folder_and_the_lineage(env, tmp_path):
    from creward.cli.main import main

    out = tmp_path / "steered"
    args = acquire_args(env, out, "--steer", "prune", "--particles", "3", "--checkpoint-steps", "1,2",
                        "--sampler", "euler_ancestral", "--preview-decoder", "vae")
    with torch.inference_mode(False):
        assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation"]["steer"] == "prune" and "3 particles" in manifest["generation"]["plan"]
    lineage = (out / "lineage.txt").read_text()
    assert lineage.count("seed ") == 2 and "returned (best first)" in lineage


def test_cli_acquire_with_guidance_runs(env, tmp_path):
    from creward.cli.main import main

    out = tmp_path / "guided"
    with torch.inference_mode(False):
        assert main(acquire_args(env, out, "--steer", "guide", "--guidance-scale", "0.2", "--preview-decoder", "vae")) == 0
    assert json.loads((out / "manifest.json").read_text())["generation"]["steer"] == "guide"


@pytest.mark.parametrize("extra, message", [
    (["--steer", "prune", "--checkpoint-steps", "1,9"], "outside the schedule"),
    (["--steer", "resample", "--particles", "2", "--survivors", "1", "--checkpoint-steps", "x"], "--checkpoint-steps"),
    (["--steer", "guide", "--steer-start", "0.9", "--steer-end", "0.1"], "start_percent"),
    (["--steer", "prune", "--steer-axis", "colour"], "--steer-axis"),
])
def test_cli_bad_steering_settings_exit_2_before_loading(env, tmp_path, capsys, extra, message):
    from creward.cli.main import main

    args = acquire_args(env, tmp_path / "never", *extra)
    args[args.index("--checkpoint") + 1] = str(tmp_path / "missing.safetensors")  # would fail with 1 if loaded
    assert main(args) == 2
    assert message in capsys.readouterr().err
