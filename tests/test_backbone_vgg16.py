"""vgg16: our loader vs torchvision's VGG16 with ``classifier = classifier[:-1]``."""

import pytest
import torch
from torch import nn

import creward.models
from builders import vgg16 as vgg_builder
from creward.models.backbones.registry import load_backbone
from creward.models.errors import WeightsError
from creward.models.preprocess import load_image
from official_reference import official_head, official_scores, save_official_checkpoint, write_images

pytestmark = pytest.mark.unit

SIZE = 224


def check_scores_equal_official(tmp_path, weights_file, reference_file, feature_dim):
    """Our scores vs torchvision's VGG16 (its own class and forward) loaded from ``reference_file``."""
    head = official_head(feature_dim)
    ckpt = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    images = write_images(tmp_path, sizes=((300, 200), (97, 131)))
    expected = official_scores("vgg16", reference_file, head, images)
    model = creward.models.load(head=ckpt, backbone="vgg16", backbone_weights=weights_file)
    got = model.score([load_image(path) for path in images])
    assert model.backbone.feature_dim == feature_dim
    assert not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_scores_equal_torchvision_path_on_small_vgg16_shaped_weights(tmp_path, fmt):
    weights = vgg_builder.build(tmp_path / "backbones", fmt)
    reference = vgg_builder.build(tmp_path / "reference", "pth")  # the same tensors (same seed), as torchvision reads them
    check_scores_equal_official(tmp_path, weights, reference, feature_dim=vgg_builder.TINY_FEATURE_DIM)


@pytest.mark.slow
def test_scores_equal_torchvision_vgg16_full_size(tmp_path):
    weights = vgg_builder.build(tmp_path / "backbones", "full_pth")
    check_scores_equal_official(tmp_path, weights, weights, feature_dim=4096)


def test_folder_holding_the_file_is_accepted(tmp_path):
    weights = vgg_builder.build(tmp_path / "backbones", "pth")
    backbone = load_backbone("vgg16", weights.parent)
    assert backbone.feature_dim == vgg_builder.TINY_FEATURE_DIM


def test_module_keeps_torchvision_keys_and_drops_only_the_last_linear(tmp_path):
    backbone = load_backbone("vgg16", vgg_builder.build(tmp_path, "pth"))
    state = vgg_builder.random_state_dict()
    kept = {key for key in state if not key.startswith("classifier.6.")}
    assert set(backbone.state_dict()) == kept
    assert len(backbone.classifier) == 6 and isinstance(backbone.classifier[-1], nn.Dropout)


def test_gradcam_layer_is_the_last_conv_block_output(tmp_path):
    backbone = load_backbone("vgg16", vgg_builder.build(tmp_path, "pth"))
    layers = backbone.gradcam_layers()
    assert len(layers) == 5 and all(layer.grid is None and layer.prefix_tokens == 0 for layer in layers)
    last = layers[-1].module
    assert last is backbone.features[29] and isinstance(last, nn.ReLU) and not last.inplace
    assert isinstance(backbone.features[30], nn.MaxPool2d)
    outputs = []
    handle = last.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    backbone(torch.zeros(1, 3, SIZE, SIZE))
    handle.remove()
    assert outputs[0].shape == (1, vgg_builder.TINY_LAYOUT[-2], 14, 14)


def test_head_and_backbone_width_mismatch_names_the_files(tmp_path):
    weights = vgg_builder.build(tmp_path / "backbones", "pth")
    ckpt = save_official_checkpoint(official_head(4096), tmp_path / "reward_head_best.ckpt")
    with pytest.raises(WeightsError, match=r"reward_head_best\.ckpt.*4096-wide.*vgg16-397923af\.pth.*20-wide"):
        creward.models.load(head=ckpt, backbone="vgg16", backbone_weights=weights)


def test_missing_and_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="vgg16-397923af.pth"):
        load_backbone("vgg16", tmp_path / "vgg16-397923af.pth")
    state = vgg_builder.random_state_dict()

    batch_norm = dict(state, **{"features.1.running_mean": torch.zeros(4)})
    torch.save(batch_norm, tmp_path / "vgg16_bn.pth")
    with pytest.raises(WeightsError, match=r"vgg16_bn\.pth.*batch-norm"):
        load_backbone("vgg16", tmp_path / "vgg16_bn.pth")

    vgg11 = {key: value for key, value in state.items() if not key.startswith(("features.14.", "features.21.", "features.28."))}
    torch.save(vgg11, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other\.pth is not a torchvision VGG16"):
        load_backbone("vgg16", tmp_path / "other.pth")

    no_classifier = {key: value for key, value in state.items() if not key.startswith("classifier.3.")}
    torch.save(no_classifier, tmp_path / "headless.pth")
    with pytest.raises(WeightsError, match=r"headless\.pth.*classifier\.3\.weight"):
        load_backbone("vgg16", tmp_path / "headless.pth")

    torch.save(torchvision_vgg_module_pickle(), tmp_path / "module.pth")
    with pytest.raises(WeightsError, match=r"module\.pth.*weights-only"):
        load_backbone("vgg16", tmp_path / "module.pth")


def torchvision_vgg_module_pickle():
    """A whole pickled module (not a state dict): must be refused by the weights-only load."""
    return nn.Sequential(nn.Linear(2, 2))


def test_gradcam_runs_end_to_end(tmp_path):
    from creward.models.gradcam import gradcam

    weights = vgg_builder.build(tmp_path / "backbones", "pth")
    ckpt = save_official_checkpoint(official_head(vgg_builder.TINY_FEATURE_DIM), tmp_path / "reward_head_best.ckpt")
    model = creward.models.load(head=ckpt, backbone="vgg16", backbone_weights=weights)
    heatmaps, scores = gradcam(model, torch.rand(2, 3, 64, 80), "texture")
    assert heatmaps.shape == (2, 64, 80) and scores.shape == (2, 4)
    assert heatmaps.amax() > 0
