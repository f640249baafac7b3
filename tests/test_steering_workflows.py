"""The creativity-steering example workflows (issue 9) in a real ComfyUI server and its web UI.

- ``creative_ksampler_pruned``: CREward Creative KSampler returns its ``keep`` best particles
  (latents, decoded images, scores) and a lineage naming each checkpoint step;
- ``fk_steering_custom_sampler``: CREward Steering Sampler in SamplerCustomAdvanced returns one
  sample per input latent;
- ``guidance_ksampler``: CREward Guidance patches the model for a plain KSampler, and the result
  is scored;
- each UI workflow describes its API twin (schemas) and loads in the web UI as that twin.

Weights: the tiny SD1.x checkpoint, random TAESD and tiny clip CREward of ``nodes_setup``; the
graphs are shrunk for the CPU (``shrink``: 64x64 latents, 4 steps, 3-4 particles).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import comfyui_harness as harness
import nodes_setup

pytestmark = pytest.mark.integration

WORKFLOWS = ("creative_ksampler_pruned", "fk_steering_custom_sampler", "guidance_ksampler")
STEPS = 4


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess):
    nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_taesd(comfy_base_dir)
    nodes_setup.install_checkpoint(comfy_base_dir)
    return comfyui_server


def shrink(graph: dict, batch: int = 1, particles: int = 4) -> dict:
    """An example workflow at CPU size: 64x64 latents, 4 steps, a checkpoint every step, few particles."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64, batch_size=batch)
        if node["class_type"] in ("KSampler", "CREwardCreativeKSampler", "BasicScheduler"):
            inputs["steps"] = STEPS
        if node["class_type"] in ("CREwardCreativeKSampler", "CREwardSteeringSampler"):
            inputs.update(particles=particles, checkpoint_every=1, start_percent=0.0, end_percent=1.0)
    return graph


def saved_latents(client, history: dict, node: str) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [load_file(str(path))["latent_tensor"] for path in client.output_files(history, node, key="latents")]


def test_creative_ksampler_returns_the_kept_particles_scores_and_a_lineage_of_its_checkpoints(env):
    from creward.nodes.steering import make_plan

    graph = shrink(nodes_setup.api_workflow("creative_ksampler_pruned"), batch=1, particles=4)
    sampler = graph["6"]["inputs"]
    keep = sampler["keep"]
    assert keep == 2 and sampler["mode"] == "prune" and sampler["survivors"] == 2  # as shipped
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "creward_test/creative"}}
    graph["21"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 2], "filename_prefix": "creward_test/creative_preview"}}
    history = env.run(graph, timeout=600)

    (latent,) = saved_latents(env, history, "20")
    assert latent.shape == (keep, 4, 8, 8)
    assert len(env.output_files(history, "8")) == keep  # the VAE-decoded kept particles
    assert len(env.output_files(history, "21")) == keep  # the sampler's own preview decodes
    assert len(env.output_files(history, "10")) == 1  # the score plot

    (lineage,) = harness.ComfyUIClient.outputs(history, "11")["text"]
    plan = make_plan("prune", 4, keep, 2, "sum", 10.0, 1, 0.0, 1.0, "", 0)
    checkpoints = plan.checkpoints(STEPS)
    assert checkpoints, "the shrunk graph should have checkpoints"
    logged = [int(step) for step in re.findall(r"^step (\d+) \(", lineage, flags=re.MULTILINE)]
    assert logged == list(checkpoints), lineage
    (returned,) = [line for line in lineage.splitlines() if line.startswith("returned (best first):")]
    assert len(re.findall(r"p\d+ \(-?\d", returned)) == keep, lineage


def test_fk_steering_in_samplercustomadvanced_returns_one_sample_per_latent(env):
    graph = shrink(nodes_setup.api_workflow("fk_steering_custom_sampler"), batch=2, particles=3)
    assert graph["6"]["inputs"]["mode"] == "resample" and graph["10"]["inputs"]["sampler"] == ["6", 0]
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "creward_test/fk"}}
    history = env.run(graph, timeout=600)
    (latent,) = saved_latents(env, history, "20")
    assert latent.shape == (2, 4, 8, 8)
    assert torch.isfinite(latent).all() and not torch.equal(latent[0], latent[1])
    assert len(env.output_files(history, "12")) == 2


def test_guidance_workflow_runs_and_scores_its_guided_sample(env):
    graph = shrink(nodes_setup.api_workflow("guidance_ksampler"))
    assert graph["7"]["inputs"]["model"] == ["6", 0]  # the KSampler samples the patched model
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "creward_test/guided"}}
    plain = copy.deepcopy(graph)
    plain["7"]["inputs"]["model"] = ["1", 0]
    plain["20"]["inputs"]["filename_prefix"] = "creward_test/unguided"

    guided_history = env.run(graph, timeout=600)
    assert len(env.output_files(guided_history, "9")) == 1
    scores = harness.ComfyUIClient.outputs(guided_history, "10")["creward_scores"][0]
    assert len(scores["scores"]) == 1
    (guided,) = saved_latents(env, guided_history, "20")
    (unguided,) = saved_latents(env, env.run(plain, timeout=600), "20")
    assert guided.shape == unguided.shape == (1, 4, 8, 8)
    assert not torch.allclose(guided, unguided, atol=1e-5)  # the guidance moved the sample


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_matches_its_api_twin_and_the_node_schemas(env, name):
    nodes_setup.check_ui_workflow_against_schemas(env, name)


@pytest.mark.browser
@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_loads_in_the_web_ui_as_its_api_twin(env, browser_page, name):
    nodes_setup.check_ui_workflow_in_web_ui(browser_page, env, name)
