"""siglip-gemma3: our vision-only loader vs the official path through the whole Gemma 3 model."""

import json

import pytest
import torch

import creward.models
from builders import siglip_gemma3 as gemma_builder
from creward.models.backbones.registry import load_backbone
from creward.models.errors import WeightsError
from creward.models.preprocess import load_image
from official_reference import official_embedder, official_head, official_scores, save_official_checkpoint, write_images

pytestmark = pytest.mark.unit

SIZE = 896


@pytest.mark.parametrize("fmt", ["hub", "save_pretrained", "module"])
def test_scores_equal_official_path(tmp_path, fmt):
    folder = gemma_builder.build(tmp_path / "gemma-3-4b-it", fmt)
    head = official_head(gemma_builder.FEATURE_DIM)
    ckpt = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    images = write_images(tmp_path, sizes=((300, 200), (97, 131)))

    # the official path: PIL → v1 transforms → whole Gemma3ForConditionalGeneration → mean → head
    expected = official_scores("siglip-gemma3", folder, head, images)
    model = creward.models.load(head=ckpt, backbone="siglip-gemma3", backbone_weights=folder)
    got = model.score([load_image(path) for path in images])

    assert model.backbone.feature_dim == gemma_builder.FEATURE_DIM
    assert expected.abs().max() > 0 and not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_vision_head_tensors_are_skipped_and_features_unchanged(tmp_path):
    vision = dict(gemma_builder.VISION, vision_use_head=True)
    folder = gemma_builder.build(tmp_path / "g", "save_pretrained", config=gemma_builder.hub_config(vision=vision))
    assert any("head.probe" in key for key in json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])

    pixels = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    backbone = load_backbone("siglip-gemma3", folder)
    reference = official_embedder("siglip-gemma3", folder)
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixels), reference(pixels), atol=1e-5, rtol=1e-5)


def test_feature_dim_is_read_from_the_weights(tmp_path):
    text = dict(gemma_builder.TEXT, hidden_size=40, head_dim=20)
    folder = gemma_builder.build(tmp_path / "g", "hub", config=gemma_builder.hub_config(text=text))
    backbone = load_backbone("siglip-gemma3", folder)
    assert backbone.feature_dim == 40
    assert backbone(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 40)


def test_language_model_is_never_built_nor_read(tmp_path, monkeypatch):
    from transformers.models.gemma3 import modeling_gemma3

    folder = gemma_builder.build(tmp_path / "g", "hub")

    def refuse(*args, **kwargs):
        raise AssertionError("the language model must not be built")

    monkeypatch.setattr(modeling_gemma3.Gemma3TextModel, "__init__", refuse)
    monkeypatch.setattr(modeling_gemma3.Gemma3ForConditionalGeneration, "__init__", refuse)
    read_keys = []
    from creward.models.backbones import siglip_gemma3

    original = siglip_gemma3.read_safetensors

    def spy(paths, prefixes=None):
        state = original(paths, prefixes)
        read_keys.extend(state)
        return state

    monkeypatch.setattr(siglip_gemma3, "read_safetensors", spy)
    backbone = load_backbone("siglip-gemma3", folder)
    assert read_keys and all(key.startswith(("vision_tower.", "multi_modal_projector.")) for key in read_keys)
    assert not any("language_model" in key or "embed_tokens" in key for key in backbone.state_dict())


def test_gradcam_layers_are_the_siglip_blocks(tmp_path):
    backbone = load_backbone("siglip-gemma3", gemma_builder.build(tmp_path / "g", "hub"))
    layers = backbone.gradcam_layers()
    assert len(layers) == gemma_builder.VISION["num_hidden_layers"]
    grid = SIZE // gemma_builder.VISION["patch_size"]
    outputs = []
    handle = layers[-1].module.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    backbone(torch.zeros(1, 3, SIZE, SIZE))
    handle.remove()
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    assert all(layer.prefix_tokens == 0 and layer.grid == (grid, grid) for layer in layers)
    assert hidden.shape == (1, grid * grid, gemma_builder.VISION["hidden_size"])


def test_folder_without_vision_tensors_is_a_clear_error(tmp_path):
    folder = gemma_builder.build(tmp_path / "gemma-text", "text_only")
    with pytest.raises(WeightsError, match=r"gemma-text.*no vision tower tensors.*text-only"):
        load_backbone("siglip-gemma3", folder)


def test_text_only_config_is_a_clear_error(tmp_path):
    folder = gemma_builder.build(tmp_path / "g", "hub")
    (folder / "config.json").write_text(json.dumps(dict(gemma_builder.TEXT, model_type="gemma3_text")))
    with pytest.raises(WeightsError, match=r"config\.json.*'gemma3_text'.*no vision tower"):
        load_backbone("siglip-gemma3", folder)


def test_head_and_backbone_width_mismatch_names_the_files(tmp_path):
    folder = gemma_builder.build(tmp_path / "gemma-3-4b-it", "hub")
    ckpt = save_official_checkpoint(official_head(2560), tmp_path / "reward_head_best.ckpt")
    with pytest.raises(WeightsError, match=r"reward_head_best\.ckpt.*2560-wide.*gemma-3-4b-it.*48-wide"):
        creward.models.load(head=ckpt, backbone="siglip-gemma3", backbone_weights=folder)


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="nowhere"):
        load_backbone("siglip-gemma3", tmp_path / "nowhere")
    folder = gemma_builder.build(tmp_path / "g", "hub")
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightsError, match="model-00002-of-00003.safetensors"):
        load_backbone("siglip-gemma3", folder)
    (folder / "config.json").unlink()
    with pytest.raises(WeightsError, match="config.json"):
        load_backbone("siglip-gemma3", folder)


def test_wrong_image_size_in_config_is_a_clear_error(tmp_path):
    vision = dict(gemma_builder.VISION, image_size=448)
    folder = gemma_builder.build(tmp_path / "g", "hub", config=gemma_builder.hub_config(vision=vision))
    with pytest.raises(WeightsError, match=r"image_size is 448.*896"):
        load_backbone("siglip-gemma3", folder)


def test_gradcam_runs_end_to_end(tmp_path):
    from creward.models.gradcam import gradcam

    folder = gemma_builder.build(tmp_path / "g", "hub")
    ckpt = save_official_checkpoint(official_head(gemma_builder.FEATURE_DIM), tmp_path / "reward_head_best.ckpt")
    model = creward.models.load(head=ckpt, backbone="siglip-gemma3", backbone_weights=folder)
    heatmaps, scores = gradcam(model, torch.rand(2, 3, 64, 80), "texture")
    assert heatmaps.shape == (2, 64, 80) and scores.shape == (2, 4)
    assert heatmaps.amax() > 0


def test_bf16_hub_files_load_as_float32_exactly(tmp_path):
    folder = gemma_builder.build(tmp_path / "g", "hub", dtype=torch.bfloat16)  # the Hub's files are bf16
    backbone = load_backbone("siglip-gemma3", folder)
    assert {parameter.dtype for parameter in backbone.parameters()} == {torch.float32}
    reference = official_embedder("siglip-gemma3", folder)  # the official load: dtype=torch.float32
    pixels = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixels), reference(pixels), atol=1e-5, rtol=1e-5)
