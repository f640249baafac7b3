"""clip: every weight format vs the official path (CLIPVisionModel.from_pretrained → pooler_output)."""

import json

import pytest
import torch

import creward.models
from builders import clip as clip_builder
from creward.models.backbones import clip as clip_backbone
from creward.models.backbones import vision_checkpoints
from creward.models.backbones.registry import load_backbone
from creward.models.errors import WeightsError
from creward.models.preprocess import load_image
from official_reference import official_head, official_scores, save_official_checkpoint, write_images

pytestmark = pytest.mark.unit

SIZE = 224
# OpenAI CLIP ViT-L/14 vision config (openai/clip-vit-large-patch14; ComfyUI's clip_vision_config_vitl.json)
VIT_L_14 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, num_channels=3,
    image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)


@pytest.mark.parametrize("fmt", clip_builder.FORMATS)
def test_scores_equal_official_path(tmp_path, fmt):
    hub = clip_builder.build(tmp_path / "clip-vit-large-patch14", "hub")
    weights = hub if fmt == "hub" else clip_builder.build(tmp_path / fmt, fmt)
    head = official_head(clip_builder.FEATURE_DIM)
    ckpt = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    images = write_images(tmp_path)

    expected = official_scores("clip", hub, head, images)
    model = creward.models.load(head=ckpt, backbone="clip", backbone_weights=weights)
    got = model.score([load_image(path) for path in images], batch_size=2)

    assert model.backbone.feature_dim == clip_builder.FEATURE_DIM
    assert not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_every_format_gives_the_hf_folder_features(tmp_path):
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = load_backbone("clip", clip_builder.build(tmp_path / "hub", "hub"))(pixels)
        for fmt in clip_builder.FORMATS:
            features = load_backbone("clip", clip_builder.build(tmp_path / fmt, fmt))(pixels)
            torch.testing.assert_close(features, reference, atol=1e-6, rtol=1e-6, msg=lambda m: f"{fmt}: {m}")


def test_feature_is_the_pooler_output_before_the_projection(tmp_path):
    from transformers import CLIPModel

    hub = clip_builder.build(tmp_path / "hub", "hub")
    pixels = torch.randn(2, 3, SIZE, SIZE)
    clip = CLIPModel.from_pretrained(hub).eval()
    with torch.no_grad():
        outputs = clip.vision_model(pixel_values=pixels)
        ours = load_backbone("clip", hub)(pixels)
        post_ln_cls = clip.vision_model.post_layernorm(outputs.last_hidden_state[:, 0])
        torch.testing.assert_close(ours, post_ln_cls, atol=1e-5, rtol=1e-5)
        embeds = clip.get_image_features(pixel_values=pixels)
        embeds = getattr(embeds, "pooler_output", embeds)  # transformers 5 returns an output object
        torch.testing.assert_close(clip.visual_projection(ours), embeds, atol=1e-5, rtol=1e-5)
        assert embeds.shape[-1] == clip_builder.PROJECTION_DIM != ours.shape[-1]


def test_open_clip_checkpoint_gives_open_clips_own_features(tmp_path):
    """Our key conversion vs open_clip's own forward on the same file (before and after ``visual.proj``)."""
    from safetensors.torch import load_file

    path = clip_builder.build(tmp_path / "oc", "open_clip")
    open_clip_model = clip_builder.open_clip_model(load_file(str(path)))
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = load_backbone("clip", path)(pixels)
        projected = open_clip_model.encode_image(pixels)
        open_clip_model.visual.proj = None  # open_clip then returns the pooled feature itself
        pooled = open_clip_model.encode_image(pixels)
    torch.testing.assert_close(ours, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours @ load_file(str(path))["visual.proj"], projected, atol=1e-5, rtol=1e-5)


def test_feature_dim_and_grid_are_read_from_the_weights(tmp_path):
    vision = dict(hidden_size=192, num_attention_heads=3, intermediate_size=320, num_hidden_layers=3, patch_size=56)
    for fmt in ("hub", "comfyui", "open_clip"):
        backbone = load_backbone("clip", clip_builder.build(tmp_path / fmt, fmt, vision=vision))
        assert backbone.feature_dim == 192
        layers = backbone.gradcam_layers()
        assert len(layers) == 3
        assert all(layer.prefix_tokens == 1 and layer.grid == (4, 4) for layer in layers)
        assert backbone.model.config.num_attention_heads == 3 and backbone.model.config.intermediate_size == 320


def test_gradcam_layer_outputs_cls_plus_grid_tokens(tmp_path):
    backbone = load_backbone("clip", clip_builder.build(tmp_path / "c", "comfyui"))
    layer = backbone.gradcam_layers()[-1]
    outputs = []
    handle = layer.module.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    backbone(torch.zeros(1, 3, SIZE, SIZE))
    handle.remove()
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    assert layer.prefix_tokens == 1 and layer.grid == (clip_builder.GRID, clip_builder.GRID)
    assert hidden.shape == (1, 1 + clip_builder.GRID ** 2, clip_builder.FEATURE_DIM)


def _meta_state(module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict())


def test_official_vit_l_14_layouts_convert_to_the_official_config():
    """ViT-L/14 shapes (on the meta device): open_clip keys convert to exactly CLIPVisionModel's keys and
    shapes, and the config inferred from them (ComfyUI/open_clip files) is OpenAI's."""
    import open_clip
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        reference = CLIPVisionModel(CLIPVisionConfig(**VIT_L_14))
        config = open_clip.get_model_config("ViT-L-14")
        open_clip_visual = open_clip.model.CLIP(
            config["embed_dim"], config["vision_cfg"], config["text_cfg"], quick_gelu=True
        ).visual
    expected = {key: tuple(value.shape) for key, value in vision_checkpoints.hf_target(reference).state_dict().items()}
    converted = vision_checkpoints.open_clip_visual_to_hf(_meta_state(open_clip_visual))
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert clip_backbone.infer_config(converted, SIZE, source="vit-l-14") == VIT_L_14


def test_laion_vit_h_shapes_are_named_not_guessed():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vit_h = dict(VIT_L_14, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, hidden_act="gelu")
    with torch.device("meta"):
        state = dict(vision_checkpoints.hf_target(CLIPVisionModel(CLIPVisionConfig(**vit_h))).state_dict())
    with pytest.raises(WeightsError, match=r"vit-h is LAION's ViT-H/14 \(width 1280\), not OpenAI's CLIP ViT-L/14"):
        clip_backbone.infer_config(state, SIZE, source="vit-h")


def test_file_in_a_hub_folder_uses_the_folder_config(tmp_path):
    hub = clip_builder.build(tmp_path / "hub", "hub")
    config, _ = clip_backbone.read_weights(hub / "model.safetensors", SIZE)
    assert config["num_attention_heads"] == 2 and config["hidden_act"] == "quick_gelu"


# ------------------------------------------------------------------------------------------
# Bad input


def test_missing_path_and_wrong_model_type(tmp_path):
    with pytest.raises(WeightsError, match="nowhere"):
        load_backbone("clip", tmp_path / "nowhere")
    hub = clip_builder.build(tmp_path / "hub", "hub")
    config = json.loads((hub / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps(dict(config, model_type="siglip")))
    with pytest.raises(WeightsError, match=r"config\.json.*'siglip'.*siglip2"):
        load_backbone("clip", hub)


def test_truncated_safetensors_is_refused_naming_the_file(tmp_path):
    path = clip_builder.build(tmp_path / "c", "comfyui")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"clip_vision_l\.safetensors.*not a readable safetensors"):
        load_backbone("clip", path)
    path.write_bytes(data[:6])
    with pytest.raises(WeightsError, match=r"clip_vision_l\.safetensors"):
        load_backbone("clip", path)


def test_foreign_keys_are_refused_naming_the_file_and_keys(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.bias": torch.zeros(3)}, str(path))
    expected = r"vae\.safetensors holds no CLIP vision tower.*decoder\.conv_out\.bias, encoder\.conv_in\.weight"
    with pytest.raises(WeightsError, match=expected):
        load_backbone("clip", path)


def test_siglip_weights_given_to_clip_point_to_siglip2(tmp_path):
    from builders import siglip2 as siglip_builder

    path = siglip_builder.build(tmp_path / "s", "open_clip")
    with pytest.raises(WeightsError, match=r"open_clip_model\.safetensors holds no CLIP.*use backbone 'siglip2'"):
        load_backbone("clip", path)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_torchscript_archive_is_refused_with_the_file_to_use(tmp_path):
    path = clip_builder.torchscript_archive(tmp_path / "ViT-L-14.pt")
    with pytest.raises(WeightsError, match=r"ViT-L-14\.pt is a TorchScript archive.*clip-vit-large-patch14.*clip_vision_l"):
        load_backbone("clip", path)
    # a plain torch.save zip is not mistaken for TorchScript
    assert not vision_checkpoints.is_torchscript_archive(clip_builder.build(tmp_path / "b", "open_clip_bin"))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    path = clip_builder.build(tmp_path / "oc", "open_clip")
    state = load_file(str(path))
    del state["visual.transformer.resblocks.1.ln_2.weight"]
    state["visual.ln_extra.weight"] = torch.ones(clip_builder.FEATURE_DIM)
    save_file(state, str(path))
    expected = r"open_clip_model\.safetensors.*missing keys \['encoder\.layers\.1\.layer_norm2\.weight'\].*ln_extra"
    with pytest.raises(WeightsError, match=expected):
        load_backbone("clip", path)


def test_other_resolutions_and_two_towers_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    big = clip_builder.build(tmp_path / "336", "comfyui", vision=dict(image_size=336, patch_size=48))
    with pytest.raises(WeightsError, match=r"336 px.*224 px"):
        load_backbone("clip", big)
    hub336 = clip_builder.build(tmp_path / "hub336", "hub", vision=dict(image_size=336, patch_size=48))
    with pytest.raises(WeightsError, match=r"hub336 is a CLIP model for 336 px"):
        load_backbone("clip", hub336)

    path = clip_builder.build(tmp_path / "two", "comfyui")
    state = load_file(str(path))
    state.update({f"clip_l_vision.{key}": value.clone() for key, value in state.items()})
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"holds 2 CLIP vision towers"):
        load_backbone("clip", path)
