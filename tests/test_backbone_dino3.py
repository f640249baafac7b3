"""dino3: our loader vs the official path (DINOv3ViTModel.from_pretrained → CLS of last_hidden_state)."""

import json

import pytest
import torch

import creward.models
from builders import dino3 as dino_builder
from creward.models.backbones.registry import load_backbone
from creward.models.errors import WeightsError
from creward.models.preprocess import load_image
from official_reference import official_head, official_scores, save_official_checkpoint, write_images

pytestmark = pytest.mark.unit

SIZE = 224


@pytest.mark.parametrize("fmt", dino_builder.FORMATS)
def test_scores_equal_official_path(tmp_path, fmt):
    folder = dino_builder.build(tmp_path / "dinov3-vith16plus-pretrain-lvd1689m", fmt)
    head = official_head(dino_builder.FEATURE_DIM)
    ckpt = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    images = write_images(tmp_path)

    expected = official_scores("dino3", folder, head, images)
    model = creward.models.load(head=ckpt, backbone="dino3", backbone_weights=folder)
    got = model.score([load_image(path) for path in images], batch_size=2)

    assert model.backbone.feature_dim == dino_builder.FEATURE_DIM
    assert not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_hub_layout_is_what_save_pretrained_writes(tmp_path):
    keys = dino_builder.on_disk_keys(dino_builder.build(tmp_path / "d", "hub"))
    assert "layer.0.norm1.weight" in keys and not any(key.startswith("model.") for key in keys)
    module_keys = dino_builder.on_disk_keys(dino_builder.build(tmp_path / "m", "module"))
    assert "model.layer.0.norm1.weight" in module_keys


def test_feature_is_the_pooler_output_and_cls_token(tmp_path):
    from transformers import DINOv3ViTModel

    folder = dino_builder.build(tmp_path / "d", "hub")
    pixels = torch.randn(2, 3, SIZE, SIZE)
    reference = DINOv3ViTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = reference(pixel_values=pixels)
        ours = load_backbone("dino3", folder)(pixels)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])
    torch.testing.assert_close(ours, outputs.last_hidden_state[:, 0], atol=1e-5, rtol=1e-5)


def test_feature_dim_and_registers_are_read_from_the_weights(tmp_path):
    config = dict(dino_builder.CONFIG, hidden_size=48, intermediate_size=96, num_register_tokens=2)
    backbone = load_backbone("dino3", dino_builder.build(tmp_path / "d", "hub", config=config))
    assert backbone.feature_dim == 48
    layers = backbone.gradcam_layers()
    assert len(layers) == config["num_hidden_layers"]
    assert all(layer.prefix_tokens == 1 + 2 and layer.grid == (14, 14) for layer in layers)


def test_gradcam_layer_outputs_prefix_plus_grid_tokens(tmp_path):
    backbone = load_backbone("dino3", dino_builder.build(tmp_path / "d", "hub"))
    layer = backbone.gradcam_layers()[-1]
    outputs = []
    handle = layer.module.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    backbone(torch.zeros(1, 3, SIZE, SIZE))
    handle.remove()
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    rows, cols = layer.grid
    assert layer.prefix_tokens == 1 + dino_builder.REGISTERS
    assert hidden.shape == (1, layer.prefix_tokens + rows * cols, dino_builder.FEATURE_DIM)


def test_head_and_backbone_width_mismatch_names_the_files(tmp_path):
    folder = dino_builder.build(tmp_path / "dinov3", "hub")
    ckpt = save_official_checkpoint(official_head(1280), tmp_path / "reward_head_best.ckpt")
    with pytest.raises(WeightsError, match=r"reward_head_best\.ckpt.*1280-wide.*dinov3.*32-wide"):
        creward.models.load(head=ckpt, backbone="dino3", backbone_weights=folder)


def test_missing_and_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="nowhere"):
        load_backbone("dino3", tmp_path / "nowhere")
    folder = dino_builder.build(tmp_path / "d", "sharded")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(WeightsError, match=shard.name):
        load_backbone("dino3", folder)

    other = dino_builder.build(tmp_path / "o", "hub")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, model_type="dinov2")))
    with pytest.raises(WeightsError, match=r"config\.json.*dinov3_vit.*'dinov2'"):
        load_backbone("dino3", other)

    smaller = dino_builder.build(tmp_path / "s", "hub", config=dict(dino_builder.CONFIG, num_hidden_layers=1))
    (smaller / "config.json").write_text((folder / "config.json").read_text())  # config says 2 layers
    with pytest.raises(WeightsError, match=r"s\b.*missing keys \['model\.layer\.1\."):
        load_backbone("dino3", smaller)


def test_gradcam_runs_end_to_end(tmp_path):
    from creward.models.gradcam import gradcam

    folder = dino_builder.build(tmp_path / "d", "hub")
    ckpt = save_official_checkpoint(official_head(dino_builder.FEATURE_DIM), tmp_path / "reward_head_best.ckpt")
    model = creward.models.load(head=ckpt, backbone="dino3", backbone_weights=folder)
    heatmaps, scores = gradcam(model, torch.rand(2, 3, 64, 80), "texture")
    assert heatmaps.shape == (2, 64, 80) and scores.shape == (2, 4)
    assert heatmaps.amax() > 0
