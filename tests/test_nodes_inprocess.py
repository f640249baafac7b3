"""The CREward node classes inside a real (imported, not mocked) ComfyUI 0.3.75: fast edge cases.

Nodes run under ``torch.inference_mode()`` as in the server. Scores are compared with the core
(``creward.models.load`` on the same files, same images).
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

import nodes_setup
from builders import clip as clip_builder
from builders import comfyui_models
from creward.models import load
from creward.models.head import build_head, save_head

pytestmark = pytest.mark.integration

HEAD = comfyui_models.HEAD_NAME


@pytest.fixture(scope="module")
def env(comfy_inprocess, comfy_base_dir):
    files = nodes_setup.install_weights(comfy_base_dir)
    nodes_setup.install_taesd(comfy_base_dir)
    creward_dir = comfy_base_dir / "models" / "creward"
    save_head(build_head(64), creward_dir / "creward_clip_narrow.safetensors", "clip")  # width mismatch
    save_head(build_head(16), creward_dir / "creward_siglip2_tiny.safetensors", "siglip2")  # no weights anywhere
    save_head(build_head(16), creward_dir / "creward_dreamsim_tiny.safetensors", "dreamsim")  # optional package
    (creward_dir / "backbones" / "dreamsim").mkdir(parents=True, exist_ok=True)
    torch.save(build_head(clip_builder.FEATURE_DIM).state_dict(), creward_dir / "reward_head_best.ckpt")  # no metadata
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(creward_dir / "not_a_head.safetensors"))
    state = {key: value.contiguous() for key, value in build_head(clip_builder.FEATURE_DIM).state_dict().items()}
    save_file(state, str(creward_dir / "creward_bad_axes.safetensors"),
              metadata={"creward.backbone": "clip", "creward.axes": "geometry,material,texture,overall", "creward.version": "1"})
    (creward_dir / "notes.txt").write_text("not weights")
    mappings = comfy_inprocess.NODE_CLASS_MAPPINGS
    core = load(files["head"], backbone_weights=files["backbone"])

    class Env:
        nodes = comfy_inprocess
        M = mappings
        base = comfy_base_dir
        head = files["head"]
        backbone = files["backbone"]

    Env.core = core
    with torch.inference_mode():
        Env.creward = result(mappings["CREwardLoader"]().load(HEAD, "auto", "auto", "auto", "auto"))[0]
        Env.vae = mappings["VAELoader"]().load_vae("taesd")[0]
    return Env


def pack_module(node_class, name: str):
    """A module of our pack as ComfyUI loaded it (a different module object from ``creward.*``)."""
    package = node_class.__module__.rsplit(".", 2)[0]
    return sys.modules[f"{package}.{name}"]


def run(node_type, env, method, *args, **kwargs):
    with torch.inference_mode():
        return getattr(env.M[node_type](), method)(*args, **kwargs)


def result(output):
    return output["result"] if isinstance(output, dict) else output


# -- loader -----------------------------------------------------------------------------------

def test_loader_lists_only_head_files_and_registers_extensions(env):
    import folder_paths

    inputs = env.M["CREwardLoader"].INPUT_TYPES()["required"]
    heads = inputs["head"][0]
    assert HEAD in heads and "creward_clip_narrow.safetensors" in heads and "reward_head_best.ckpt" in heads
    assert not any(name.startswith("backbones") or name in ("not_a_head.safetensors", "notes.txt") for name in heads)
    assert folder_paths.folder_names_and_paths["creward"][1] >= {".safetensors", ".ckpt"}
    assert inputs["backbone_weights"][0][:2] == ["auto", comfyui_models.BACKBONE_FOLDER]


def test_loader_validation_says_what_is_wrong_with_a_head(env):
    validate = env.M["CREwardLoader"].VALIDATE_INPUTS
    assert validate(head=HEAD) is True
    assert "is not a CREward head" in validate(head="not_a_head.safetensors")
    bad_axes = validate(head="creward_bad_axes.safetensors")  # not a bare "Expecting value: line 1 column 1"
    assert "creward_bad_axes.safetensors" in bad_axes and "'creward.axes'" in bad_axes and "JSON list" in bad_axes
    assert "not found" in validate(head="missing.safetensors") and HEAD in validate(head="missing.safetensors")


def test_loader_picks_devices_and_dtype_from_comfy(env):
    loader = pack_module(env.M["CREwardLoader"], "nodes.loader")
    assert env.creward.load_device.type == "cpu" and env.creward.model.dtype == torch.float32
    assert loader.choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert loader.choose_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize(
    "head, backbone, message",
    [
        ("creward_clip_narrow.safetensors", "auto", r"expects 64-wide features .* gives 128-wide"),
        ("creward_siglip2_tiny.safetensors", "auto", r"backbone_weights: no weights for backbone 'siglip2'"),
        ("reward_head_best.ckpt", "auto", r"choose it in 'backbone'"),
        ("not_a_head.safetensors", "auto", r"head: .*not a CREward head"),
    ],
    ids=["width-mismatch", "missing-backbone", "ckpt-without-backbone", "not-a-head"],
)
def test_loader_errors_name_the_problem(env, head, backbone, message):
    with pytest.raises(Exception, match=message):
        run("CREwardLoader", env, "load", head, backbone, "auto", "auto", "auto")


def test_missing_optional_package_is_a_node_error_not_an_import_failure(env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dreamsim", None)  # as if the package were not installed
    with pytest.raises(Exception, match=r"pip install"):
        run("CREwardLoader", env, "load", "creward_dreamsim_tiny.safetensors", "auto", "auto", "auto", "auto")


def test_official_ckpt_head_loads_with_backbone_chosen(env):
    output = run("CREwardLoader", env, "load", "reward_head_best.ckpt", "clip", "auto", "cpu", "fp32")
    creward = result(output)[0]
    assert creward.model.spec.name == "clip"
    # the node shows what it loaded and in which precision
    assert output["ui"]["creward_loaded"] == [{"text": "clip on cpu, fp32 (the official precision)"}]


# -- scoring images -------------------------------------------------------------------------

def test_score_equals_core_with_batch_mean_outputs_and_ui(env):
    images = torch.rand(5, 80, 112, 3)
    output = run("CREwardScore", env, "score", env.creward, images, batch_size=2)
    scores, *floats, summary = output["result"][:6]
    expected = env.core.score(images.permute(0, 3, 1, 2))
    torch.testing.assert_close(scores.values, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(floats), expected.mean(dim=0), atol=1e-5, rtol=1e-5)
    assert all(math.isnan(value) for value in output["result"][6:])  # the *_percentile outputs need a reference
    assert scores.ids == tuple(range(5)) and "#4" in summary and "mean" in summary
    lines = summary.splitlines()  # a Markdown table: header, rule, one line per image, the mean; then what pct/win are
    table = lines[:8]
    assert all(line.startswith("|") and line.endswith("|") for line in table)
    assert [cell.strip() for cell in table[0].split("|")[1:6]] == ["image", "geometry", "material", "texture", "overall"]
    assert len({len(line) for line in table}) == 1  # padded: aligned as plain text too
    assert lines[9].startswith("| percentile ") and lines[17].startswith("| win prob. ")  # the batch-relative view, same width
    assert lines[-1] == "percentile (0-100), win probability (0-1): within this batch (5 images)"
    payload = output["ui"]["creward_scores"][0]
    assert payload["axes"] == ["geometry", "material", "texture", "overall"] and len(payload["scores"]) == 5
    [chart] = payload["charts"]  # what web/creward.js draws
    assert chart["series"] == payload["axes"] and chart["labels"] == [f"#{i}" for i in range(5)]
    assert chart["values"] == payload["scores"] and chart["value_label"] == "score" and chart["value_range"] is None
    assert chart["note"] == "clip, fp32"
    json.dumps(output["ui"])  # the UI payload must be JSON


def test_score_accepts_rgba_and_grey_images(env):
    rgb = torch.rand(2, 64, 64, 3)
    rgba = torch.cat([rgb, torch.rand(2, 64, 64, 1)], dim=-1)
    base = result(run("CREwardScore", env, "score", env.creward, rgb))[0].values
    torch.testing.assert_close(result(run("CREwardScore", env, "score", env.creward, rgba))[0].values, base)
    grey = torch.rand(1, 64, 64, 1)
    torch.testing.assert_close(
        result(run("CREwardScore", env, "score", env.creward, grey))[0].values,
        env.core.score(grey.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


def test_empty_image_batch_is_a_clear_error(env):
    with pytest.raises(Exception, match="images: the image batch is empty"):
        run("CREwardScore", env, "score", env.creward, torch.zeros(0, 64, 64, 3))


def test_scoring_goes_through_comfy_model_management(env):
    import comfy.model_management

    run("CREwardScore", env, "score", env.creward, torch.rand(1, 32, 32, 3))
    assert env.creward.patcher in comfy.model_management.loaded_models()


def test_progress_bar_and_interrupt(env):
    import comfy.model_management
    import comfy.utils

    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        run("CREwardScore", env, "score", env.creward, torch.rand(5, 32, 32, 3), batch_size=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run("CREwardScore", env, "score", env.creward, torch.rand(3, 32, 32, 3), batch_size=1)
    finally:
        comfy.model_management.interrupt_current_processing(False)


# -- scoring latents ------------------------------------------------------------------------

def test_score_latent_equals_core_on_decoded_images_in_any_chunking(env):
    torch.manual_seed(0)
    latent = {"samples": torch.randn(5, 4, 8, 8), "batch_index": [10, 11, 12, 13, 14]}
    chunked = result(run("CREwardScoreLatent", env, "score", env.creward, latent, env.vae, decode_batch_size=2))[0]
    whole = result(run("CREwardScoreLatent", env, "score", env.creward, latent, env.vae, decode_batch_size=8))[0]
    with torch.inference_mode():
        decoded = env.vae.decode(latent["samples"])
    expected = env.core.score(decoded.permute(0, 3, 1, 2))
    torch.testing.assert_close(chunked.values, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.values, chunked.values, atol=1e-5, rtol=1e-5)
    assert chunked.ids == (10, 11, 12, 13, 14)


def test_score_latent_noise_mask_area(env):
    torch.manual_seed(1)
    samples = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 8:40, 16:48] = 1.0  # image 0: a box; image 1: empty mask -> whole image
    latent = {"samples": samples, "noise_mask": mask}
    scores = result(run("CREwardScoreLatent", env, "score", env.creward, latent, env.vae, region="noise_mask area"))[0]
    with torch.inference_mode():
        decoded = env.vae.decode(samples)
    expected = torch.cat([
        env.core.score(decoded[0:1, 8:40, 16:48].permute(0, 3, 1, 2)),
        env.core.score(decoded[1:2].permute(0, 3, 1, 2)),
    ])
    torch.testing.assert_close(scores.values, expected, atol=1e-5, rtol=1e-5)
    whole = result(run("CREwardScoreLatent", env, "score", env.creward, latent, env.vae))[0]
    torch.testing.assert_close(whole.values, env.core.score(decoded.permute(0, 3, 1, 2)), atol=1e-5, rtol=1e-5)


def test_latent_channel_mismatch_and_empty_latent_are_clear_errors(env):
    with pytest.raises(Exception, match=r"latent: the latent has 16 channels .* 4-channel"):
        run("CREwardScoreLatent", env, "score", env.creward, {"samples": torch.randn(1, 16, 8, 8)}, env.vae)
    with pytest.raises(Exception, match="latent: the latent batch is empty"):
        run("CREwardScoreLatent", env, "score", env.creward, {"samples": torch.zeros(0, 4, 8, 8)}, env.vae)


# -- selection ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch(env):
    torch.manual_seed(2)
    images = torch.rand(6, 48, 64, 3)
    scores = result(run("CREwardScore", env, "score", env.creward, images))[0]
    return images, scores


def select(env, images, scores=None, **kwargs):
    options = dict(rank_by="overall", top_k=2, use_minimum=False, minimum=0.0, when_none_pass="error")
    options.update(kwargs)
    return run("CREwardSelectBest", env, "select", images, scores=scores, **options)


def test_select_best_takes_the_same_rows_of_images_latent_and_mask(env, batch):
    images, scores = batch
    latent = {
        "samples": torch.randn(6, 4, 6, 8),
        "noise_mask": torch.rand(6, 1, 48, 64),
        "batch_index": [20, 21, 22, 23, 24, 25],
    }
    mask = torch.rand(6, 48, 64)
    output = select(env, images, scores, top_k=3, latent=latent, mask=mask)
    chosen_images, chosen_latent, chosen_mask, rejected, indices, chosen_scores = output["result"]
    expected = torch.argsort(scores.values[:, 3], descending=True, stable=True)[:3].tolist()
    assert indices == ",".join(map(str, expected))
    torch.testing.assert_close(chosen_images, images[expected])
    torch.testing.assert_close(chosen_latent["samples"], latent["samples"][expected])
    torch.testing.assert_close(chosen_latent["noise_mask"], latent["noise_mask"][expected])
    assert chosen_latent["batch_index"] == [20 + row for row in expected]
    torch.testing.assert_close(chosen_mask, mask[expected])
    others = [row for row in range(6) if row not in expected]
    torch.testing.assert_close(rejected, images[others])
    assert chosen_scores.ids == tuple(expected)
    payload = output["ui"]["creward_selection"][0]
    assert payload["chosen"] == expected and payload["rejected"] == others
    json.dumps(output["ui"])


def test_select_best_broadcasts_single_masks_and_fills_missing_mask(env, batch):
    images, scores = batch
    latent = {"samples": torch.randn(6, 4, 6, 8), "noise_mask": torch.rand(1, 1, 48, 64)}
    one_mask = torch.rand(48, 64)
    _, chosen_latent, chosen_mask, *_ = select(env, images, scores, latent=latent, mask=one_mask)["result"]
    torch.testing.assert_close(chosen_latent["noise_mask"], latent["noise_mask"])
    torch.testing.assert_close(chosen_mask, one_mask.unsqueeze(0))
    chosen = [int(i) for i in select(env, images, scores)["result"][4].split(",")]
    assert chosen_latent["batch_index"] == chosen
    _, no_latent, zeros, *_ = select(env, images, scores)["result"]
    assert no_latent is None and zeros.shape == (2, 48, 64) and zeros.abs().sum() == 0


def test_select_best_weighted_sum_and_minimum(env, batch):
    images, scores = batch
    weights = dict(geometry_weight=1.0, material_weight=0.0, texture_weight=0.5, overall_weight=0.0)
    values = scores.values[:, 0] + 0.5 * scores.values[:, 2]
    output = select(env, images, scores, rank_by="weighted sum", top_k=0, use_minimum=True,
                    minimum=float(values.median()), **weights)
    expected = [row for row in torch.argsort(values, descending=True, stable=True).tolist() if values[row] >= values.median()]
    assert output["result"][4] == ",".join(map(str, expected))
    with pytest.raises(Exception, match="every \\*_weight is 0"):
        select(env, images, scores, rank_by="weighted sum", geometry_weight=0.0, material_weight=0.0,
               texture_weight=0.0, overall_weight=0.0)


def test_select_best_when_none_pass(env, batch):
    images, scores = batch
    best = int(torch.argmax(scores.values[:, 3]))
    with pytest.raises(Exception, match=r"minimum: no image reached the minimum: overall >= 100 .*scored .* \(image %d\).*keep best" % best):
        select(env, images, scores, use_minimum=True, minimum=100.0)
    output = select(env, images, scores, use_minimum=True, minimum=100.0, when_none_pass="keep best", top_k=3)
    assert output["result"][4] == str(best) and output["result"][0].shape[0] == 1
    assert output["ui"]["creward_selection"][0]["fell_back"] is True
    assert output["ui"]["text"][0].startswith("WARNING")


def test_select_best_scores_the_images_itself_when_given_creward(env, batch):
    images, scores = batch
    with_model = select(env, images, creward=env.creward)["result"]
    assert with_model[4] == select(env, images, scores)["result"][4]
    with pytest.raises(Exception, match="connect 'scores'"):
        select(env, images)


def test_select_best_mismatched_batches_are_errors(env, batch):
    images, scores = batch
    with pytest.raises(Exception, match="scores: 6 rows of scores for 3 images"):
        select(env, images[:3], scores)
    with pytest.raises(Exception, match="latent: 2 samples for 6 images"):
        select(env, images, scores, latent={"samples": torch.randn(2, 4, 6, 8)})
    with pytest.raises(Exception, match="mask: 4 masks for 6 images"):
        select(env, images, scores, mask=torch.rand(4, 48, 64))


def test_every_image_chosen_gives_an_empty_rejected_batch(env, batch):
    images, scores = batch
    output = select(env, images, scores, top_k=0)["result"]
    assert output[0].shape[0] == 6 and output[3].shape == (0, 48, 64, 3)


# -- plot -----------------------------------------------------------------------------------

def test_plot_scores_node(env, batch):
    _, scores = batch
    plot = run("CREwardPlotScores", env, "plot", scores, 240, 0, highlight="2,0")[0]
    assert plot.shape[0] == 1 and plot.shape[1] == 240 and plot.shape[3] == 3
    assert 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0
    with pytest.raises(Exception, match="highlight: position 9 is outside"):
        run("CREwardPlotScores", env, "plot", scores, 240, 0, highlight="9")


# -- CLIP_VISION input ----------------------------------------------------------------------

def comfy_clip_vision(tmp_path, vision: dict):
    """ComfyUI's own ClipVisionModel (what Load CLIP Vision returns) holding the tiny weights."""
    import comfy.clip_vision
    import comfy.utils

    config = dict(clip_builder.VISION, **vision, model_type="clip_vision_model", num_channels=3, projection_dim=clip_builder.PROJECTION_DIM)
    config_path = tmp_path / "tiny_clip_vision.json"
    config_path.write_text(json.dumps(config))
    weights = clip_builder.build(tmp_path / "comfy", "comfyui", vision=vision)
    clip_vision = comfy.clip_vision.ClipVisionModel(str(config_path))
    clip_vision.load_sd(comfy.utils.load_torch_file(str(weights)))
    return clip_vision, weights


def test_clip_vision_input_is_used_as_the_clip_backbone(env, tmp_path):
    clip_vision, weights = comfy_clip_vision(tmp_path, {"patch_size": 14})
    creward = result(run("CREwardLoader", env, "load", HEAD, "auto", "auto", "auto", "auto", clip_vision=clip_vision))[0]
    assert "CLIP_VISION" in creward.description
    images = torch.rand(3, 70, 90, 3)
    scores = result(run("CREwardScore", env, "score", creward, images))[0]
    core = load(env.head, backbone_weights=weights)  # the same weights, read from the file by the core
    torch.testing.assert_close(scores.values, core.score(images.permute(0, 3, 1, 2)), atol=1e-5, rtol=1e-5)


def test_clip_vision_that_is_not_vit_l14_is_refused(env, tmp_path):
    clip_vision, _ = comfy_clip_vision(tmp_path, {})  # patch 32
    with pytest.raises(Exception, match=r"clip_vision: .*32-px patches.*ViT-L/14"):
        run("CREwardLoader", env, "load", HEAD, "auto", "auto", "auto", "auto", clip_vision=clip_vision)
    with pytest.raises(Exception, match=r"clip_vision: .*only stand in for the 'clip' backbone"):
        run("CREwardLoader", env, "load", "creward_siglip2_tiny.safetensors", "auto", "auto", "auto", "auto",
            clip_vision=clip_vision)
