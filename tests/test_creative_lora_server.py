"""Creative LoRAs with a real ComfyUI server and the tiny SD1.x checkpoint ``CheckpointLoaderSimple`` detects.

- the CLIs (``creward train lora`` / ``creward train acquire``) on that checkpoint file;
- the LoRA they write loads in the server's ``LoraLoader`` with no "lora key not loaded" line in
  the log, changes the sampled latent, and strength 0 gives the base model's latent bit for bit;
- the example workflows' API twins run as shipped but shrunk for the CPU (``shrink``), and the UI
  workflows describe the same graphs (also checked in the web UI when Chromium is there).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import comfyui_harness as harness
import nodes_setup

pytestmark = pytest.mark.integration

WORKFLOWS = ("train_creative_lora", "creative_lora_sliders")
UNLOADED = ("lora key not loaded", "NOT LOADED")


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess, comfyui_path):
    files = nodes_setup.install_weights(comfy_base_dir)
    checkpoint = nodes_setup.install_checkpoint(comfy_base_dir)

    class Env:
        client = comfyui_server
        base = comfy_base_dir
        comfyui = comfyui_path

    Env.files = files
    Env.checkpoint = checkpoint
    return Env


def shrink(graph: dict) -> dict:
    """The example workflows at CPU size: 64x64, a couple of steps, tiny training."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64, batch_size=1)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 2
        if node["class_type"] == "CREwardTrainCreativeLoRA":
            inputs.update(steps=2, width=64, height=64, samples_per_prompt=1, sample_steps=1, eval_seeds=1, eval_steps=1,
                          checkpoint_every=1, learning_rate=1e-2, resume=False)
    return graph


def sampled_latent(client, history, node_id) -> torch.Tensor:
    from safetensors.torch import load_file

    (path,) = client.output_files(history, node_id, key="latents")
    return load_file(str(path))["latent_tensor"]


def unloaded_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(marker in line for marker in UNLOADED)]


def lora_graph(lora: str | None, strength: float, seed: int = 3) -> dict:
    """Checkpoint -> (LoraLoader) -> KSampler 64x64, 2 steps -> SaveLatent."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": nodes_setup.comfyui_models.CHECKPOINT_NAME}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a chair", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["2", 0] if lora else ["1", 0],
                                                   "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0]}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"creward_lora_test/{strength}"}},
    }
    if lora:
        graph["2"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                             "strength_model": strength, "strength_clip": strength}}
    return graph


def test_cli_trained_lora_loads_in_the_servers_loraloader_with_no_unloaded_keys(env, tmp_path):
    from creward.cli.main import main
    from creward.train.lora.export import read_lora_info

    output = env.base / "models" / "loras" / "creward_cli_texture.safetensors"
    args = ["train", "lora", "--comfyui", str(env.comfyui), "--checkpoint", str(env.checkpoint),
            "--head", str(env.files["head"]), "--backbone-weights", str(env.files["backbone"]),
            "--prompt", "a chair", "--prompt", "a teapot", "--axis", "texture", "--lambda", "1.0", "--rank", "4",
            "--steps", "2", "--lr", "1e-3", "--width", "64", "--height", "64", "--samples-per-prompt", "1",
            "--sample-steps", "1", "--eval-seeds", "1", "--eval-steps", "1", "--cfg", "1.0", "--targets", "all",
            "--checkpoint-every", "1", "--run-dir", str(tmp_path / "run"), "--output", str(output), "--no-progress"]
    with torch.inference_mode(False):
        assert main(args) == 0
    info = read_lora_info(output)
    assert info.base_model == env.checkpoint.name and info.base_architecture == "SD15"
    assert info.metadata["creward.steps"] == "2" and info.metadata["creward.head"] == env.files["head"].name
    assert (tmp_path / "run" / "reward_curve.png").is_file()
    with torch.inference_mode(False):
        assert main(args) == 0  # the same command again: resumes, nothing left to train

    client = env.client
    log_before = client.log_text()
    base = sampled_latent(client, client.run(lora_graph(None, 0.0), timeout=300), "7")
    zero = sampled_latent(client, client.run(lora_graph(output.name, 0.0), timeout=300), "7")
    full = sampled_latent(client, client.run(lora_graph(output.name, 1.0), timeout=300), "7")
    minus = sampled_latent(client, client.run(lora_graph(output.name, -1.0), timeout=300), "7")
    new_log = client.log_text()[len(log_before):]
    assert unloaded_lines(new_log) == []
    assert torch.equal(zero, base)
    assert not torch.allclose(full, base, atol=1e-4) and not torch.allclose(minus, base, atol=1e-4)

    # The log check does see ComfyUI's warning: a key the model lacks is reported.
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(output))
    tensors["diffusion_model.no_such_block.lora_up.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(output.with_name("creward_cli_bogus.safetensors")))
    log_before = client.log_text()
    client.run(lora_graph("creward_cli_bogus.safetensors", 1.0), timeout=300)
    assert unloaded_lines(client.log_text()[len(log_before):]) == [
        line for line in client.log_text()[len(log_before):].splitlines() if "no_such_block" in line]
    assert any("no_such_block" in line for line in unloaded_lines(client.log_text()[len(log_before):]))


def test_cli_acquire_writes_a_browsable_folder(env, tmp_path):
    from creward.cli.main import main
    from creward.diffusion.acquire import read_acquired_pool

    out = tmp_path / "acquired"
    args = ["train", "acquire", "--comfyui", str(env.comfyui), "--checkpoint", str(env.checkpoint),
            "--head", str(env.files["head"]), "--backbone-weights", str(env.files["backbone"]),
            "--prompt", "a chair", "-n", "3", "--top-k", "1", "--bottom-k", "1", "--steps", "1", "--cfg", "1.0",
            "--width", "64", "--height", "64", "--seed", "5", "-o", str(out), "--no-progress"]
    with torch.inference_mode(False):
        assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"] == env.checkpoint.name and [s["seed"] for s in manifest["samples"]] == [5, 6, 7]
    assert (out / "contact_sheet.png").is_file() and (out / "index.html").is_file()
    latents, prompts, _ = read_acquired_pool(out, "overall")
    assert prompts == ["a chair"] and latents.shape == (1, 4, 8, 8)
    with torch.inference_mode(False):
        assert main(args) == 2  # not empty: a usage error, said before loading anything


def test_example_workflows_train_then_apply_in_the_server(env):
    client = env.client
    log_before = client.log_text()
    history = client.run(shrink(nodes_setup.api_workflow("train_creative_lora")), timeout=600)
    lora = env.base / "models" / "loras" / "creward_texture.safetensors"
    assert lora.is_file()
    (curve,) = client.output_files(history, "4")
    (trained_image,) = client.output_files(history, "10")
    assert curve.is_file() and trained_image.is_file()
    from creward.train.lora.export import read_lora_info

    info = read_lora_info(lora)
    assert info.primary_axis == "texture" and info.metadata["creward.steps"] == "2"

    sliders = shrink(nodes_setup.api_workflow("creative_lora_sliders"))
    on = client.run(sliders, timeout=300)
    (on_image,) = client.output_files(on, "8")
    off_graph = copy.deepcopy(sliders)
    off_graph["2"]["inputs"]["texture_strength"] = 0.0
    off = client.run(off_graph, timeout=300)
    (off_image,) = client.output_files(off, "8")
    plain_graph = copy.deepcopy(sliders)
    plain_graph["6"]["inputs"]["model"] = ["1", 0]
    plain_graph["3"]["inputs"]["clip"] = ["1", 1]
    plain_graph["4"]["inputs"]["clip"] = ["1", 1]
    plain_graph["8"]["inputs"]["filename_prefix"] = "creward/plain"
    plain = client.run(plain_graph, timeout=300)
    (plain_image,) = client.output_files(plain, "8")
    pixels = {name: nodes_setup_png(path) for name, path in (("on", on_image), ("off", off_image), ("plain", plain_image))}
    assert (pixels["off"] == pixels["plain"]).all()
    assert not (pixels["on"] == pixels["plain"]).all()
    summary = harness.ComfyUIClient.outputs(on, "10")
    assert "creward_scores" in summary
    assert unloaded_lines(client.log_text()[len(log_before):]) == []


def nodes_setup_png(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_matches_its_api_twin_and_the_node_schemas(env, name):
    nodes_setup.check_ui_workflow_against_schemas(env.client, name)


@pytest.mark.browser
@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_loads_in_the_web_ui_as_its_api_twin(env, browser_page, name):
    nodes_setup.check_ui_workflow_in_web_ui(browser_page, env.client, name)
