"""The CREward nodes in a real ComfyUI server, through ``POST /prompt`` and ``/history``.

Weights: tiny random CREward (clip) in ``models/creward/``, a tiny SD1.x checkpoint (see
``builders.comfyui_models``) under the example workflows' checkpoint name, a random TAESD.
The example workflows' API twins (``workflows/api/``) run as shipped, except that the sampler
workflows are shrunk to 64x64 latents and 2 steps for the CPU (``nodes_setup.small_sampling``);
some tests add nodes (SaveImage/SaveLatent of the whole batch) to check what was selected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import comfyui_harness as harness
import nodes_setup
from creward.models import load
from creward.models.head import build_head, save_head
from creward.models.preprocess import load_image

pytestmark = pytest.mark.integration

AXES = ["geometry", "material", "texture", "overall"]


@pytest.fixture(scope="module")
def env(comfyui_server, comfy_base_dir, comfy_inprocess):
    files = nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_taesd(comfy_base_dir)
    checkpoint = nodes_setup.install_checkpoint(comfy_base_dir)
    creward_dir = comfy_base_dir / "models" / "creward"
    save_head(build_head(64), creward_dir / "creward_clip_narrow.safetensors", "clip")
    save_head(build_head(16), creward_dir / "creward_siglip2_tiny.safetensors", "siglip2")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(creward_dir / "not_a_head.safetensors"))  # weights, not a head

    class Env:
        client = comfyui_server
        base = comfy_base_dir
        core = load(files["head"], backbone_weights=files["backbone"])

    Env.checkpoint = checkpoint
    return Env


def ui(history: dict, node: str, key: str) -> dict:
    return harness.ComfyUIClient.outputs(history, node)[key][0]


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def saved_latent(client, history: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    item = ui(history, node, "latents")
    return load_file(str(client.base_dir / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def expect_ok(client) -> None:
    """The server still runs a good prompt after a bad one."""
    graph = nodes_setup.api_workflow("creward_score_images")
    graph["2"]["inputs"]["image"] = "creward_c.png"
    history = client.run(graph)
    assert len(ui(history, "5", "creward_scores")["scores"]) == 2


# -- the example workflows ------------------------------------------------------------------

def test_template_browser_serves_the_ui_workflows_but_not_the_api_twins(env):
    served = env.client.example_workflows()
    assert set(served) == set(nodes_setup.TEMPLATE_NAMES.values())  # the api/ twins are not listed
    for name in nodes_setup.TEMPLATE_NAMES:
        assert served[nodes_setup.TEMPLATE_NAMES[name]] == nodes_setup.ui_workflow(name)
    assert "/extensions/comfyui-creward/creward.js" in env.client.extensions()


def test_score_images_workflow_scores_equal_the_core(env):
    graph = nodes_setup.api_workflow("creward_score_images")
    history = env.client.run(graph)  # as shipped: example.png twice
    graph["2"]["inputs"]["image"], graph["3"]["inputs"]["image"] = "creward_a.png", "creward_b.png"
    history = env.client.run(graph)
    payload = ui(history, "5", "creward_scores")
    assert payload["axes"] == AXES and payload["ids"] == [0, 1]
    first = load_image(env.base / "input" / "creward_a.png")
    second = load_image(env.base / "input" / "creward_b.png")
    # ImageBatch resizes the second image to the first one's size (bilinear, like ComfyUI's common_upscale).
    import comfy.utils

    second = comfy.utils.common_upscale(second.unsqueeze(0), first.shape[2], first.shape[1], "bilinear", "center")[0]
    expected = env.core.score(torch.stack([first, second]))
    torch.testing.assert_close(torch.tensor(payload["scores"]), expected, atol=1e-5, rtol=1e-5)
    assert payload["mean"] == pytest.approx(expected.mean(dim=0).tolist(), abs=1e-5)
    text = harness.ComfyUIClient.outputs(history, "5")["text"][0]
    assert "#1" in text and "mean" in text
    assert harness.ComfyUIClient.outputs(history, "8")["text"][0] == text  # the STRING output, previewed
    plot = png(env.client.output_files(history, "7")[0])
    assert plot.shape[0] == 360 and plot.shape[1] >= 420


def test_best_of_n_workflow_returns_exactly_the_top_k_with_latents_and_masks(env):
    graph = nodes_setup.small_sampling(nodes_setup.api_workflow("creward_best_of_n"), batch=5)
    graph["9"]["inputs"]["top_k"] = 2
    graph["9"]["inputs"]["mask"] = ["20", 0]
    graph.update({
        "20": {"class_type": "ImageToMask", "inputs": {"image": ["6", 0], "channel": "red"}},
        "21": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "test/all"}},
        "22": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "test/all"}},
        "23": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 1], "filename_prefix": "test/best"}},
        "24": {"class_type": "MaskToImage", "inputs": {"mask": ["9", 2]}},
        "25": {"class_type": "SaveImage", "inputs": {"images": ["24", 0], "filename_prefix": "test/best_mask"}},
    })
    history = env.client.run(graph, timeout=300)
    scores = torch.tensor(ui(history, "8", "creward_scores")["scores"])
    expected = torch.argsort(scores[:, 3], descending=True, stable=True)[:2].tolist()
    selection = ui(history, "9", "creward_selection")
    assert selection["chosen"] == expected and selection["criterion"] == "overall"
    assert selection["rejected"] == [row for row in range(5) if row not in expected]
    everything = [png(path) for path in env.client.output_files(history, "21")]
    best = [png(path) for path in env.client.output_files(history, "10")]
    rejected = env.client.output_files(history, "11")
    assert len(everything) == 5 and len(best) == 2 and len(rejected) == 3
    for picked, row in zip(best, expected):
        np.testing.assert_array_equal(picked, everything[row])
    all_latents = saved_latent(env.client, history, "22")
    torch.testing.assert_close(saved_latent(env.client, history, "23"), all_latents[expected])
    masks = [png(path) for path in env.client.output_files(history, "25")]
    for mask, row in zip(masks, expected):
        np.testing.assert_array_equal(mask[..., 0], everything[row][..., 0])  # mask = red channel of that image
    plot = png(env.client.output_files(history, "13")[0])
    assert plot.shape[0] == 360


def test_score_latents_workflow_equals_the_core_on_the_decoded_latents(env):
    import comfy.sd
    import comfy.utils

    graph = nodes_setup.small_sampling(nodes_setup.api_workflow("creward_score_latents"), batch=3)
    graph["7"]["inputs"]["decode_batch_size"] = 2
    graph["30"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "test/latents"}}
    history = env.client.run(graph, timeout=300)
    payload = ui(history, "7", "creward_scores")
    assert payload["ids"] == [0, 1, 2] and len(payload["scores"]) == 3
    latents = saved_latent(env.client, history, "30")
    state = comfy.utils.load_torch_file(str(env.checkpoint))
    vae = comfy.sd.VAE(sd={k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")})
    with torch.inference_mode():
        images = vae.decode(latents)
    expected = env.core.score(images.permute(0, 3, 1, 2))
    torch.testing.assert_close(torch.tensor(payload["scores"]), expected, atol=1e-4, rtol=1e-4)
    assert "mean" in harness.ComfyUIClient.outputs(history, "10")["text"][0]


def test_a_second_run_with_new_images_reuses_the_loaded_model(env):
    graph = nodes_setup.api_workflow("creward_score_images")
    graph["2"]["inputs"]["image"], graph["3"]["inputs"]["image"] = "creward_b.png", "creward_c.png"
    env.client.run(graph)
    before = env.client.log_text().count("CREward loaded")
    graph["2"]["inputs"]["image"] = "creward_a.png"
    history = env.client.run(graph)
    cached = [data["nodes"] for kind, data in history["status"]["messages"] if kind == "execution_cached"][0]
    assert "1" in cached  # the loader did not run again
    assert env.client.log_text().count("CREward loaded") == before


# -- bad input: clear errors, and the server keeps serving ---------------------------------

def execution_error(client, graph) -> dict:
    with pytest.raises(harness.ComfyUIPromptError) as info:
        client.run(graph)
    messages = info.value.details["status"]["messages"]
    return next(data for kind, data in messages if kind == "execution_error")


def test_empty_batch_is_an_execution_error_naming_the_input(env):
    graph = nodes_setup.api_workflow("creward_score_images")
    graph["9"] = {"class_type": "CREwardSelectBest", "inputs": {
        "images": ["4", 0], "scores": ["5", 0], "rank_by": "overall", "top_k": 0, "use_minimum": False, "minimum": 0.0,
        "when_none_pass": "error", "geometry_weight": 1.0, "material_weight": 1.0, "texture_weight": 1.0, "overall_weight": 0.0}}
    graph["10"] = {"class_type": "CREwardScore", "inputs": {"creward": ["1", 0], "images": ["9", 3]}}
    error = execution_error(env.client, graph)
    assert error["node_type"] == "CREwardScore" and "images: the image batch is empty" in error["exception_message"]
    expect_ok(env.client)


def test_latent_channels_that_do_not_match_the_vae(env):
    graph = {
        "1": nodes_setup.api_workflow("creward_score_images")["1"],
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "4": {"class_type": "CREwardScoreLatent", "inputs": {"creward": ["1", 0], "latent": ["2", 0], "vae": ["3", 0]}},
    }
    error = execution_error(env.client, graph)
    assert "latent: the latent has 16 channels" in error["exception_message"]
    assert "4-channel" in error["exception_message"]
    expect_ok(env.client)


def test_a_file_that_is_not_a_head_is_a_validation_error(env):
    graph = nodes_setup.api_workflow("creward_score_images")
    graph["1"]["inputs"]["head"] = "not_a_head.safetensors"
    with pytest.raises(harness.ComfyUIPromptError) as info:
        env.client.queue(graph)
    errors = info.value.details["node_errors"]["1"]["errors"]
    assert errors[0]["extra_info"]["input_name"] == "head"
    assert "not_a_head.safetensors is not a CREward head" in errors[0]["details"]
    expect_ok(env.client)


@pytest.mark.parametrize(
    "head, message",
    [
        ("creward_siglip2_tiny.safetensors", "backbone_weights: no weights for backbone 'siglip2'"),
        ("creward_clip_narrow.safetensors", "expects 64-wide features"),
    ],
)
def test_missing_backbone_and_width_mismatch_are_execution_errors(env, head, message):
    graph = nodes_setup.api_workflow("creward_score_images")
    graph["1"]["inputs"]["head"] = head
    error = execution_error(env.client, graph)
    assert error["node_type"] == "CREwardLoader" and message in error["exception_message"]
    expect_ok(env.client)


def test_every_template_has_a_readable_title_and_a_thumbnail(env):
    """The template browser titles a template by its file name and shows <name>.jpg beside it."""
    from urllib.parse import quote

    client = env.client
    listed = client.get("/workflow_templates").json()[harness.PACK_LINK_NAME]
    assert sorted(listed) == sorted(nodes_setup.TEMPLATE_NAMES.values())
    for name in listed:
        assert "_" not in name and name[0].isupper(), name
        response = client.get(f"/api/workflow_templates/{harness.PACK_LINK_NAME}/{quote(name)}.jpg")
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg", name
        with Image.open(__import__("io").BytesIO(response.content)) as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.size == (512, 320), name
            assert len(thumbnail.convert("RGB").getcolors(1 << 20)) > 500, name  # a real render, not a flat fill
