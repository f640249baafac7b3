"""Grad-CAM (models/gradcam.py): where the maps point, their range, inference mode, every backbone family."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from creward.models.errors import CREwardError, ImageError
from creward.models.gradcam import axis_sheet, colorize, gradcam, gradcam_multi, normalize_maps, overlay
from builders.gradcam_toy import GREEN_PATCH, RED_PATCH, colour_model, patch_box, planted_image
from builders.toy import toy_model


def _argmax_cell(heatmap: torch.Tensor) -> tuple[int, int]:
    row, col = divmod(int(heatmap.argmax()), heatmap.shape[-1])
    return row, col


def _in_box(point, box) -> bool:
    rows, cols = box
    return rows.start <= point[0] < rows.stop and cols.start <= point[1] < cols.stop


def _mean_in(heatmap, patch) -> float:
    rows, cols = patch_box(patch)
    return float(heatmap[rows, cols].mean())


@pytest.mark.unit
@pytest.mark.parametrize("layout", ["tokens", "map"])
def test_heatmap_peaks_where_the_axis_looks_and_not_elsewhere(layout):
    model = colour_model(layout)
    heatmaps, scores = gradcam_multi(model, planted_image(), ["geometry", "material"])
    geometry, material = heatmaps[0]
    # geometry reads only red content: its peak is on the red square
    assert _in_box(_argmax_cell(geometry), patch_box(RED_PATCH))
    assert _mean_in(geometry, RED_PATCH) > 0.5 and _mean_in(geometry, GREEN_PATCH) < 0.05
    # material ignores the red square: its peak is on the green one, nothing on the red
    assert _in_box(_argmax_cell(material), patch_box(GREEN_PATCH))
    assert not _in_box(_argmax_cell(material), patch_box(RED_PATCH))
    assert _mean_in(material, RED_PATCH) < 0.05
    assert scores.shape == (1, 4)


@pytest.mark.unit
def test_default_block_skips_a_last_block_whose_patches_do_not_reach_the_score(caplog):
    """CLS-pooled backbones (CLIP, DINOv3): the last block's patch outputs have zero gradient."""
    model = colour_model("cls")
    image = planted_image()
    heatmaps = gradcam(model, image, "geometry").heatmaps[0]  # default block: falls back to the one before
    torch.testing.assert_close(heatmaps, gradcam(colour_model("tokens"), image, "geometry").heatmaps[0])
    torch.testing.assert_close(heatmaps, gradcam(model, image, "geometry", block=0).heatmaps[0])
    with caplog.at_level("WARNING", logger="creward.models.gradcam"):
        explicit_last = gradcam(model, image, "geometry", block=1).heatmaps[0]
    assert torch.equal(explicit_last, torch.zeros_like(explicit_last))
    assert "all gradients zero" in caplog.text


@pytest.mark.unit
def test_weighted_mix_lights_both_regions_and_accepts_every_spelling():
    model = colour_model()
    image = planted_image()
    mixed = gradcam(model, image, "1,1,0,0").heatmaps[0]
    assert _mean_in(mixed, RED_PATCH) > 0.3 and _mean_in(mixed, GREEN_PATCH) > 0.3
    for spelling in ({"geometry": 1.0, "material": 1.0}, [1, 1, 0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0])):
        torch.testing.assert_close(gradcam(model, image, spelling).heatmaps[0], mixed)
    # a mix leaning to geometry moves the peak to the red square
    leaning = gradcam(model, image, "1,0.05,0,0").heatmaps[0]
    assert _in_box(_argmax_cell(leaning), patch_box(RED_PATCH))


@pytest.mark.unit
def test_matches_a_direct_grad_cam_computation():
    """Independent reference: build the graph by hand (no hooks) and apply the Grad-CAM formula."""
    model = colour_model("tokens")
    image = planted_image(seed=3).unsqueeze(0)
    backbone = model.backbone
    pixels = model.preprocess(image)
    patches = backbone.embed(pixels)
    tokens = torch.cat([backbone.cls.expand(1, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
    activations = backbone.block(tokens).detach().requires_grad_(True)
    scores = model.score_features(activations[:, 1:].mean(dim=1))
    for axis_number in range(4):
        (gradient,) = torch.autograd.grad(scores[:, axis_number].sum(), activations, retain_graph=True)
        weights = gradient[:, 1:].mean(dim=1, keepdim=True)
        cam = F.relu((activations[:, 1:] * weights).sum(-1)).view(1, 1, 7, 7)
        cam = F.interpolate(cam, size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        got = gradcam(model, image, model.axes[axis_number])
        torch.testing.assert_close(got.heatmaps[0], cam.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.scores, scores.detach())


@pytest.mark.unit
def test_maps_have_image_size_range_and_contrast_and_batching_does_not_change_them():
    model = toy_model()
    images = torch.rand(3, 3, 150, 100)
    heatmaps, scores = gradcam(model, images, "texture", batch_size=2)
    assert heatmaps.shape == (3, 150, 100) and heatmaps.dtype == torch.float32
    assert torch.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    for heatmap in heatmaps:
        assert heatmap.std() > 0.01
    torch.testing.assert_close(scores, model.score(images))
    one_by_one = torch.cat([gradcam(model, image, "texture").heatmaps for image in images])
    torch.testing.assert_close(heatmaps, one_by_one, atol=1e-5, rtol=1e-5)


@pytest.mark.unit
def test_channels_last_input_gives_the_same_maps():
    model = colour_model()
    image = planted_image().unsqueeze(0)
    torch.testing.assert_close(
        gradcam(model, image.permute(0, 2, 3, 1), "geometry", channels_last=True).heatmaps,
        gradcam(model, image, "geometry").heatmaps,
    )


@pytest.mark.unit
def test_works_under_inference_mode_with_a_model_built_in_inference_mode():
    """ComfyUI builds models and runs nodes under torch.inference_mode()."""
    with torch.inference_mode():
        model = colour_model()
        image = planted_image().unsqueeze(0)
        assert image.is_inference() and model.backbone.embed.weight.is_inference()
        reference = model.score(image)
        heatmaps, scores = gradcam(model, image, "geometry")
    assert heatmaps.abs().sum() > 0 and heatmaps.max() == 1.0
    assert _in_box(_argmax_cell(heatmaps[0]), patch_box(RED_PATCH))
    torch.testing.assert_close(scores, reference)
    # frozen parameters stay frozen and collect no gradients
    assert all(not parameter.requires_grad and parameter.grad is None for parameter in model.parameters())
    # and the model still scores under inference mode afterwards
    with torch.inference_mode():
        torch.testing.assert_close(model.score(image), reference)


@pytest.mark.unit
def test_map_without_contrast_is_all_zero():
    # a uniform image gives identical tokens, hence a constant CAM: documented as zeros
    heatmaps, _ = gradcam(colour_model(), torch.full((1, 3, 64, 64), 0.3), "geometry")
    assert torch.equal(heatmaps, torch.zeros(1, 64, 64))
    assert torch.equal(normalize_maps(torch.full((2, 5, 5), 7.0)), torch.zeros(2, 5, 5))
    ramp = normalize_maps(torch.arange(6.0).view(1, 2, 3) + 10)
    torch.testing.assert_close(ramp, torch.arange(6.0).view(1, 2, 3) / 5)


@pytest.mark.unit
def test_hooks_are_removed_even_when_the_forward_fails():
    model = colour_model()
    layer = model.backbone.block
    gradcam(model, planted_image(), "geometry")
    assert not layer._forward_hooks

    def broken(_):
        raise RuntimeError("head failed")

    model.score_features = broken
    with pytest.raises(RuntimeError, match="head failed"):
        gradcam(model, planted_image(), "geometry")
    assert not layer._forward_hooks


@pytest.mark.unit
def test_block_choice_and_clear_errors():
    model = colour_model()
    image = planted_image()
    # block 0 (the patch embedding: a [B, C, h, w] map) works too
    assert _in_box(_argmax_cell(gradcam(model, image, "geometry", block=0).heatmaps[0]), patch_box(RED_PATCH))
    with pytest.raises(CREwardError, match="block 2 is out of range.*2 blocks"):
        gradcam(model, image, "geometry", block=2)
    with pytest.raises(CREwardError, match="unknown axis 'colour'"):
        gradcam(model, image, "colour")
    with pytest.raises(CREwardError, match="not all zero"):
        gradcam(model, image, "0,0,0,0")
    with pytest.raises(CREwardError, match="expected 4 axis weights"):
        gradcam(model, image, [1.0, 2.0])
    with pytest.raises(ImageError, match=r"\[B, 3, H, W\]"):
        gradcam(model, torch.rand(1, 4, 32, 32), "geometry")


@pytest.mark.unit
def test_colormap_overlay_and_sheet():
    ends = colorize(torch.tensor([[0.0, 1.0]]))  # [3, 1, 2]
    assert ends[2, 0, 0] > 0.4 and ends[0, 0, 0] == 0  # 0 → blue
    assert ends[0, 0, 1] > 0.4 and ends[2, 0, 1] == 0  # 1 → red
    assert colorize(torch.rand(2, 8, 8), "turbo").shape == (2, 3, 8, 8)
    images, heatmaps = torch.rand(2, 3, 20, 30), torch.rand(2, 20, 30)
    torch.testing.assert_close(overlay(images, heatmaps, alpha=0.0), images)
    torch.testing.assert_close(overlay(images, heatmaps, alpha=1.0), colorize(heatmaps))
    with pytest.raises(ImageError, match="same size"):
        overlay(images, torch.rand(2, 10, 10))
    sheet = axis_sheet(images[0], torch.rand(4, 20, 30), ["geometry 0.1", "material 0.2", "texture 0.3", "overall 0.4"], tile_height=40)
    assert sheet.mode == "RGB" and sheet.height > 40 and sheet.width == 5 * 60 + 4 * 4
    labels = sheet.crop((0, 0, sheet.width, sheet.height - 40))
    assert min(low for low, _ in labels.getextrema()) < 128  # dark captions on the white band


# -- every registry backbone family whose tiny builder exists -----------------------------------
FAMILIES = ("clip", "siglip2", "siglip-gemma3", "dino3", "vgg16")


def _tiny_backbone(name: str, folder):
    from creward.models.backbones.registry import get_spec, load_backbone

    builder = importlib.import_module(f"builders.{get_spec(name).module}")  # tests/builders/<module>.py
    return load_backbone(name, builder.build(folder))


def _model_for(backbone, name):
    from creward.models.backbones.registry import get_spec
    from creward.models.head import HeadInfo, build_head
    from creward.models.model import CREward

    torch.manual_seed(0)
    info = HeadInfo(path=None, backbone=name, axes=("geometry", "material", "texture", "overall"), feature_dim=backbone.feature_dim, version="1")
    return CREward(backbone, build_head(backbone.feature_dim).eval(), info, get_spec(name))


@pytest.mark.unit
@pytest.mark.parametrize("name", FAMILIES)
def test_every_backbone_family_gives_proper_maps_under_inference_mode(name, tmp_path):
    with torch.inference_mode():  # as ComfyUI: the model is built and used in inference mode
        model = _model_for(_tiny_backbone(name, tmp_path / name), name)
        layers = model.backbone.gradcam_layers()
        images = torch.rand(2, 3, 72, 96)
        for block in sorted({0, -1}):
            heatmaps, scores = gradcam_multi(model, images, ["geometry", "overall"], block=block)
            assert heatmaps.shape == (2, 2, 72, 96), (name, block)
            assert torch.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
            for image_maps in heatmaps:
                for heatmap in image_maps:
                    assert heatmap.std() > 1e-3, f"{name}: block {block} of {len(layers)} gives a map without contrast"
            torch.testing.assert_close(scores, model.score(images), atol=1e-4, rtol=1e-4)
        assert all(not layer.module._forward_hooks for layer in layers)


# -- CLI ------------------------------------------------------------------------------------------
def _write_png(path, image: torch.Tensor):
    from PIL import Image

    Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A tiny random clip backbone folder and a head file for it (what users pass to the CLI)."""
    from creward.models.head import build_head, save_head
    from builders import clip as clip_builder

    folder = tmp_path_factory.mktemp("explain_clip")
    weights = clip_builder.build(folder / "clip-vit-large-patch14", "hub")
    torch.manual_seed(1)
    head = save_head(build_head(clip_builder.FEATURE_DIM).eval(), folder / "creward_clip.safetensors", backbone="clip")
    return head, weights


@pytest.mark.unit
def test_cli_writes_overlay_and_sheet_pngs(tmp_path, clip_files, capsys):
    from PIL import Image

    from creward.cli.main import main

    head, weights = clip_files
    (tmp_path / "in").mkdir()
    first = _write_png(tmp_path / "in" / "cat.png", planted_image(seed=1)[:, :150, :200])
    second = _write_png(tmp_path / "in" / "dog.png", torch.rand(3, 64, 48))
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "in"), "--axis", "texture", "--out", str(out), "--head", str(head),
                 "--backbone-weights", str(weights), "--device", "cpu"])
    assert code == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == ["cat_sheet.png", "cat_texture_gradcam.png", "dog_sheet.png", "dog_texture_gradcam.png"]
    with Image.open(out / "cat_texture_gradcam.png") as picture:
        assert picture.size == (200, 150) and picture.mode == "RGB"
        assert len(picture.getcolors(1 << 16) or range(2)) > 1
    with Image.open(out / "dog_texture_gradcam.png") as picture:
        assert picture.size == (48, 64)
    with Image.open(out / "cat_sheet.png") as sheet:
        assert sheet.width > 4 * sheet.height // 2  # five tiles side by side
    summary = capsys.readouterr().out
    assert "cat.png" in summary and "dog.png" in summary and "broken.png" not in summary
    # a weighted mix names its overlay "weighted"; mixing --weights with a named axis is refused
    assert main(["explain", str(first), "--weights", "1,0,0.5,0", "--out", str(out), "--head", str(head),
                 "--backbone-weights", str(weights), "--device", "cpu", "--block", "0"]) == 0
    assert (out / "cat_weighted_gradcam.png").is_file()
    assert main(["explain", str(first), "--axis", "geometry", "--weights", "1,0,0,0", "--head", str(head)]) == 2
    assert not list(out.glob(".*.partial"))  # atomic writes leave no temporary files


# -- ComfyUI: the node in a real ComfyUI ---------------------------------------------------------
WORKFLOWS = __import__("pathlib").Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def comfy_example_files(comfy_base_dir):
    """The files the example workflows name (tiny clip CREward, input/example.png 96x128), shared set-up."""
    import nodes_setup

    return nodes_setup.install_weights(comfy_base_dir)


@pytest.mark.integration
def test_node_in_process_returns_overlay_mask_and_scores(comfy_inprocess, comfy_example_files):
    nodes = comfy_inprocess
    loader = nodes.NODE_CLASS_MAPPINGS["CREwardLoader"]()
    explain = nodes.NODE_CLASS_MAPPINGS["CREwardExplain"]()
    score = nodes.NODE_CLASS_MAPPINGS["CREwardScore"]()
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        (creward,) = loader.load(comfy_example_files["head"].name, "auto", "auto", "cpu", "fp32")["result"]
        images = torch.rand(3, 80, 100, 3)
        images[1, 10:40, 20:50] = torch.tensor([1.0, 0.0, 0.0])
        pictures, heatmaps, scores = explain.explain(creward, images, "geometry")
        mixed = explain.explain(creward, images, "weighted", weights="0,1,0,1", block=0, alpha=1.0)
        expected = score.score(creward, images)["result"][0]
    assert pictures.shape == (3, 80, 100, 3) and heatmaps.shape == (3, 80, 100)
    assert torch.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    for heatmap in heatmaps:  # gradients flowed under inference mode: no all-zero or flat map
        assert heatmap.std() > 1e-3
    torch.testing.assert_close(scores.values, expected.values, atol=1e-4, rtol=1e-4)
    assert scores.axes == ("geometry", "material", "texture", "overall") and len(scores) == 3
    assert mixed[1].shape == (3, 80, 100) and not torch.equal(mixed[1], heatmaps)
    assert mixed[1].flatten(1).std(dim=1).min() > 1e-3
    assert pictures.min() >= 0 and pictures.max() <= 1 and not torch.equal(mixed[0], pictures)


@pytest.mark.integration
def test_node_runs_in_the_server_from_the_api_workflow(comfyui_server, comfy_example_files):
    """workflows/api/explain.json, unchanged, in ComfyUI's executor (which runs under inference mode)."""
    import json

    from PIL import Image

    info = comfyui_server.object_info("CREwardExplain")
    assert info["category"] == "CREward" and info["output"] == ["IMAGE", "MASK", "CREWARD_SCORES"]
    prompt = json.loads((WORKFLOWS / "api" / "explain.json").read_text())
    history = comfyui_server.run(prompt, timeout=300)
    (overlay_file,) = comfyui_server.output_files(history, "4")
    (mask_file,) = comfyui_server.output_files(history, "5")
    with Image.open(comfy_example_files["images"][0]) as source:
        size = source.size
    with Image.open(overlay_file) as picture:
        assert picture.size == size
    with Image.open(mask_file) as mask:
        assert mask.size == size
        low, high = mask.convert("L").getextrema()
    assert high == 255 and low < high  # normalised map with contrast: gradients flowed in the executor


@pytest.mark.integration
def test_ui_workflow_matches_its_api_twin_and_the_node_schemas(comfyui_server):
    """The UI-format explain template and workflows/api/explain.json describe the same graph."""
    import json

    import nodes_setup

    ui = nodes_setup.ui_workflow("explain")
    api = json.loads((WORKFLOWS / "api" / "explain.json").read_text())
    assert ui["version"] == 0.4
    assert {str(node["id"]): node["type"] for node in ui["nodes"]} == {key: node["class_type"] for key, node in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        schema = comfyui_server.object_info(node["type"])
        inputs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        widgets = [name for name, spec in inputs.items()
                   if (isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"))
                   and not (len(spec) > 1 and spec[1].get("forceInput"))]
        api_inputs = api[str(node["id"])]["inputs"]
        assert dict(zip(widgets, node["widgets_values"])) == {name: api_inputs[name] for name in widgets if name in api_inputs}
        for slot in node["inputs"]:
            assert slot["name"] in inputs
            if slot.get("link") is not None:
                _, origin, origin_slot, target, _, kind = links[slot["link"]]
                assert target == node["id"] and api_inputs[slot["name"]] == [str(origin), origin_slot]
                assert schema["input"]["required"].get(slot["name"], [kind])[0] == kind
        for index, output in enumerate(node["outputs"]):
            assert schema["output"][index] == output["type"]
