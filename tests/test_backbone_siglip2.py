"""siglip2: every weight format vs the official path (SiglipVisionModel.from_pretrained → pooler_output)."""

import json

import pytest
import torch

import creward.models
from builders import siglip2 as siglip_builder
from creward.models.backbones import siglip2 as siglip_backbone
from creward.models.backbones import vision_checkpoints
from creward.models.backbones.registry import load_backbone
from creward.models.errors import WeightsError
from creward.models.preprocess import load_image
from official_reference import official_head, official_scores, save_official_checkpoint, write_images

pytestmark = pytest.mark.unit

SIZE = 384
COVERED = siglip_builder.COVERED
# google/siglip2-so400m-patch14-384's vision_config (transformers' SigLIP defaults written out)
SO400M_14_384 = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, num_channels=3,
    image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True,
)


@pytest.mark.parametrize("fmt", siglip_builder.FORMATS)
def test_scores_equal_official_path(tmp_path, fmt):
    hub = siglip_builder.build(tmp_path / "siglip2-so400m-patch14-384", "hub")
    weights = hub if fmt == "hub" else siglip_builder.build(tmp_path / fmt, fmt)
    head = official_head(siglip_builder.FEATURE_DIM)
    ckpt = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    images = write_images(tmp_path, sizes=((300, 200), (97, 131), (SIZE, SIZE)))

    expected = official_scores("siglip2", hub, head, images)
    model = creward.models.load(head=ckpt, backbone="siglip2", backbone_weights=weights)
    got = model.score([load_image(path) for path in images], batch_size=2)

    assert model.backbone.feature_dim == siglip_builder.FEATURE_DIM
    assert not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_every_format_gives_the_hf_folder_features(tmp_path):
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = load_backbone("siglip2", siglip_builder.build(tmp_path / "hub", "hub"))(pixels)
        for fmt in siglip_builder.FORMATS:
            features = load_backbone("siglip2", siglip_builder.build(tmp_path / fmt, fmt))(pixels)
            torch.testing.assert_close(features, reference, atol=1e-6, rtol=1e-6, msg=lambda m: f"{fmt}: {m}")


def test_open_clip_conversion_equals_open_clips_own_features(tmp_path):
    """Our conversion vs open_clip's own forward (timm trunk, MAP pool, no projection) on the same file.

    timm runs the exact (erf) GELU where transformers' SigLIP runs the tanh approximation: with the
    activation matched, the converted model equals open_clip to 1e-5; with CREward's (transformers')
    activation the features differ by the approximation only.
    """
    from safetensors.torch import load_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    path = siglip_builder.build(tmp_path / "oc", "open_clip")
    open_clip_model = siglip_builder.open_clip_model(load_file(str(path)))
    pixels = torch.randn(2, 3, SIZE, SIZE)
    config, state = siglip_backbone.read_weights(path, SIZE)
    assert config["hidden_act"] == "gelu_pytorch_tanh"
    erf_model = SiglipVisionModel(SiglipVisionConfig(**dict(config, hidden_act="gelu"))).eval()
    vision_checkpoints.hf_target(erf_model).load_state_dict(state, strict=True)
    with torch.no_grad():
        # open_clip/timm are built for the 336 px the 6 patches cover; transformers' conv ignores the rest of 384
        theirs = open_clip_model.encode_image(pixels[..., :COVERED, :COVERED])
        converted = erf_model(pixel_values=pixels).pooler_output
        ours = load_backbone("siglip2", path)(pixels)
    torch.testing.assert_close(converted, theirs, atol=1e-5, rtol=1e-5)
    difference = (ours - theirs).abs().max().item()
    assert 0 < difference < 5e-3


def test_feature_is_the_attention_pooled_pooler_output(tmp_path):
    from transformers import SiglipModel

    hub = siglip_builder.build(tmp_path / "hub", "hub")
    pixels = torch.randn(2, 3, SIZE, SIZE)
    siglip = SiglipModel.from_pretrained(hub).eval()
    with torch.no_grad():
        outputs = siglip.vision_model(pixel_values=pixels)
        ours = load_backbone("siglip2", hub)(pixels)
        pooled = siglip.vision_model.head(outputs.last_hidden_state)
    torch.testing.assert_close(ours, pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, outputs.last_hidden_state.mean(dim=1), atol=1e-3)


def test_feature_dim_and_grid_are_read_from_the_weights(tmp_path):
    vision = dict(hidden_size=48, num_attention_heads=3, intermediate_size=80, num_hidden_layers=3, patch_size=64)
    for fmt in ("hub", "vision"):
        backbone = load_backbone("siglip2", siglip_builder.build(tmp_path / fmt, fmt, vision=vision))
        assert backbone.feature_dim == 48
        layers = backbone.gradcam_layers()
        assert len(layers) == 3
        assert all(layer.prefix_tokens == 0 and layer.grid == (6, 6) for layer in layers)
        assert backbone.model.config.num_attention_heads == 3 and backbone.model.config.intermediate_size == 80


def test_gradcam_layer_outputs_grid_tokens(tmp_path):
    backbone = load_backbone("siglip2", siglip_builder.build(tmp_path / "oc", "open_clip"))
    layer = backbone.gradcam_layers()[-1]
    outputs = []
    handle = layer.module.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    backbone(torch.zeros(1, 3, SIZE, SIZE))
    handle.remove()
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    assert layer.prefix_tokens == 0 and layer.grid == (siglip_builder.GRID, siglip_builder.GRID)
    assert hidden.shape == (1, siglip_builder.GRID ** 2, siglip_builder.FEATURE_DIM)


def test_official_so400m_layouts_convert_to_the_official_config():
    """so400m/14 shapes (meta device): timm's trunk converts to exactly SiglipVisionModel's keys and shapes,
    and the config inferred from it — heads from the official-width table, or from the timm model open_clip
    names — is google/siglip2-so400m-patch14-384's."""
    import timm
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        reference = SiglipVisionModel(SiglipVisionConfig(**SO400M_14_384))
        trunk = timm.create_model("vit_so400m_patch14_siglip_378", pretrained=False, num_classes=0)
    expected = {key: tuple(value.shape) for key, value in vision_checkpoints.hf_target(reference).state_dict().items()}
    converted = vision_checkpoints.timm_siglip_to_hf(dict(trunk.state_dict()))
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert siglip_backbone.OFFICIAL_HEADS[1152] == 16
    assert siglip_backbone.timm_num_heads("vit_so400m_patch14_siglip_378", 1152, "so400m") == 16
    assert siglip_backbone.infer_config(converted, SIZE, heads=16, source="so400m") == SO400M_14_384


def test_heads_come_from_the_timm_model_named_in_open_clip_config(tmp_path):
    path = siglip_builder.build(tmp_path / "oc", "open_clip")
    config, _ = siglip_backbone.read_weights(path, SIZE)
    assert config["num_attention_heads"] == siglip_builder.VISION["num_attention_heads"]

    (tmp_path / "oc" / "open_clip_config.json").unlink()
    with pytest.raises(WeightsError, match=r"open_clip_model\.safetensors: cannot tell the attention heads of a width-32"):
        load_backbone("siglip2", path)

    timm_folder = siglip_builder.build(tmp_path / "timm", "timm")
    config = json.loads((timm_folder / "config.json").read_text())
    (timm_folder / "config.json").write_text(json.dumps(dict(config, architecture="vit_base_patch16_siglip_224")))
    with pytest.raises(WeightsError, match=r"vit_base_patch16_siglip_224.*width 768.*width 32"):
        load_backbone("siglip2", timm_folder)


def test_single_transformers_layout_file(tmp_path):
    """A ``vision_model.*`` file: the SigLIP config.json beside it is used; alone, heads follow the table."""
    import shutil

    hub = siglip_builder.build(tmp_path / "hub", "hub")
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(
            load_backbone("siglip2", hub / "model.safetensors")(pixels), load_backbone("siglip2", hub)(pixels),
            atol=1e-6, rtol=1e-6,
        )
    alone = tmp_path / "alone" / "siglip2_vision.safetensors"
    alone.parent.mkdir()
    shutil.copy(hub / "model.safetensors", alone)
    with pytest.raises(WeightsError, match=r"siglip2_vision\.safetensors: cannot tell the attention heads of a width-32"):
        load_backbone("siglip2", alone)


# ------------------------------------------------------------------------------------------
# Bad input


def test_missing_path_and_wrong_model_types(tmp_path):
    with pytest.raises(WeightsError, match="nowhere"):
        load_backbone("siglip2", tmp_path / "nowhere")
    hub = siglip_builder.build(tmp_path / "hub", "hub")
    config = json.loads((hub / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps(dict(config, model_type="siglip2")))
    with pytest.raises(WeightsError, match=r"config\.json.*'siglip2'.*NaFlex.*google/siglip2-so400m-patch14-384"):
        load_backbone("siglip2", hub)
    (hub / "config.json").write_text(json.dumps(dict(config, model_type="clip")))
    with pytest.raises(WeightsError, match=r"'clip'.*use backbone 'clip'"):
        load_backbone("siglip2", hub)


def test_truncated_safetensors_is_refused_naming_the_file(tmp_path):
    path = siglip_builder.build(tmp_path / "oc", "open_clip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"open_clip_model\.safetensors.*not a readable safetensors"):
        load_backbone("siglip2", path)


def test_foreign_keys_are_refused_naming_the_file_and_keys(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(()), "lora_unet_down.lora_up.weight": torch.zeros(4, 2)}, str(path))
    with pytest.raises(WeightsError, match=r"lora\.safetensors holds no SigLIP vision tower.*lora_unet_down\.alpha"):
        load_backbone("siglip2", path)


def test_clip_weights_given_to_siglip2_point_to_clip(tmp_path):
    from builders import clip as clip_builder

    for fmt in ("comfyui", "open_clip"):
        path = clip_builder.build(tmp_path / fmt, fmt)
        with pytest.raises(WeightsError, match=r"holds no SigLIP vision tower.*use backbone 'clip'"):
            load_backbone("siglip2", path)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    from builders import clip as clip_builder

    path = clip_builder.torchscript_archive(tmp_path / "siglip.pt")
    with pytest.raises(WeightsError, match=r"siglip\.pt is a TorchScript archive.*google/siglip2-so400m-patch14-384"):
        load_backbone("siglip2", path)


def test_missing_head_and_other_resolutions_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = siglip_builder.build(tmp_path / "oc", "open_clip")
    state = {key: value for key, value in load_file(str(path)).items() if ".attn_pool." not in key}
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"no attention-pooling head"):
        load_backbone("siglip2", path)

    vision_only = siglip_builder.build(tmp_path / "nohead", "hub", vision=dict(vision_use_head=False))
    with pytest.raises(WeightsError, match=r"vision_use_head is false"):
        load_backbone("siglip2", vision_only)

    small = siglip_builder.build(tmp_path / "224", "hub", vision=dict(image_size=224, patch_size=56))
    with pytest.raises(WeightsError, match=r"224 px images \(4 patches per side\).*384 px \(6 patches per side\)"):
        load_backbone("siglip2", small)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    path = siglip_builder.build(tmp_path / "oc", "open_clip")
    state = load_file(str(path))
    del state["visual.trunk.blocks.1.norm2.weight"]
    state["visual.trunk.norm_pre.weight"] = torch.ones(siglip_builder.FEATURE_DIM)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"missing keys \['encoder\.layers\.1\.layer_norm2\.weight'\].*norm_pre\.weight"):
        load_backbone("siglip2", path)
