"""Creative LoRAs without ComfyUI: settings, the LoRA file format and metadata, curve, prompts, contact sheets."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from creward.models.errors import CREwardError, WeightsError
from creward.diffusion.contact_sheet import Row, Tile, contact_sheet
from creward.train.lora.config import CreativeLoraConfig, LoraConfigError, normalize_axis_weights
from creward.train.lora.curve import reward_curve
from creward.train.lora.export import (
    adapters_from_state_dict, atomic_save, build_metadata, lora_state_dict, read_lora_info,
)
from creward.diffusion.prompts import parse_prompts, read_prompts, slug, zero_conditioning

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("spec, expected", [
    ("texture", {"geometry": 0.0, "material": 0.0, "texture": 1.0, "overall": 0.0}),
    ("geometry=1,texture=0.5", {"geometry": 1.0, "material": 0.0, "texture": 0.5, "overall": 0.0}),
    ("1,0,-0.5,0", {"geometry": 1.0, "material": 0.0, "texture": -0.5, "overall": 0.0}),
    ({"overall": 2}, {"geometry": 0.0, "material": 0.0, "texture": 0.0, "overall": 2.0}),
])
def test_axis_weights_forms(spec, expected):
    assert normalize_axis_weights(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("colour", "unknown axis"),
    ("geometry=x", "axis=number"),
    ("0,0,0,0", "all zero"),
    ("1,2", "expected 4 axis weights"),
])
def test_bad_axis_weights_say_what_is_wrong(spec, message):
    with pytest.raises(CREwardError, match=message):
        normalize_axis_weights(spec)


@pytest.mark.parametrize("field, value, message", [
    ("rank", 0, "`rank` should be positive, got 0"),
    ("denoise_weight", -1.0, "lambda"),
    ("width", 100, "multiple of 8"),
    ("targets", "convs", "attention, linear, all"),
    ("timestep_range", (0.5, 0.2), "0 <= low < high <= 1"),
    ("mixed_precision", "fp8", "auto, fp32, bf16, fp16"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(LoraConfigError, match=message):
        CreativeLoraConfig(**{field: value})


def test_config_round_trip_and_run_defining_differences():
    config = CreativeLoraConfig(axis_weights="geometry=1,texture=.5", rank=4, steps=10, timestep_range=(0.1, 0.9))
    again = CreativeLoraConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.primary_axis() == "mix"
    assert CreativeLoraConfig(axis_weights="texture").primary_axis() == "texture"
    longer = CreativeLoraConfig.from_dict({**config.to_dict(), "steps": 99, "checkpoint_every": 7})
    assert longer.differences(config) == []  # more steps / other checkpointing: same run
    other = CreativeLoraConfig.from_dict({**config.to_dict(), "rank": 8, "learning_rate": 1e-3})
    assert [d.split(":")[0] for d in other.differences(config)] == ["rank", "learning_rate"]


def test_lora_file_keys_shapes_and_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(0)
    factors = {
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q": (
            torch.randn(32, 4, generator=generator), torch.randn(4, 32, generator=generator), 4.0),
        "diffusion_model.input_blocks.1.0.in_layers.2": (
            torch.randn(32, 4, generator=generator), torch.randn(4, 16 * 9, generator=generator), 2.0),
    }
    shapes = {"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q": torch.Size([32, 32]),
              "diffusion_model.input_blocks.1.0.in_layers.2": torch.Size([32, 16, 3, 3])}
    tensors = lora_state_dict(factors, shapes)
    conv = "diffusion_model.input_blocks.1.0.in_layers.2"
    assert tensors[f"{conv}.lora_down.weight"].shape == (4, 16, 3, 3)
    assert tensors[f"{conv}.lora_up.weight"].shape == (32, 4, 1, 1)
    assert float(tensors[f"{conv}.alpha"]) == 2.0
    assert len(tensors) == 6
    metadata = build_metadata({"base_model": "sd15.safetensors", "base_architecture": "SD15", "rank": 4, "alpha": 4.0,
                               "axis_weights": normalize_axis_weights("texture"), "primary_axis": "texture",
                               "mean_reward_before": 0.1, "mean_reward_after": None, "base_signature": [["k", 0.0, 1.0]]})
    path = atomic_save(tensors, tmp_path / "lora.safetensors", metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]  # no temporary file left
    back = adapters_from_state_dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(path)))
    for name, (up, down, alpha) in factors.items():
        assert torch.equal(back[name][0], up) and torch.equal(back[name][1], down) and back[name][2] == alpha
    info = read_lora_info(path)
    assert info.is_creward and info.base_architecture == "SD15" and info.primary_axis == "texture"
    assert info.axis_weights["texture"] == 1.0 and info.base_signature == [["k", 0.0, 1.0]]
    assert "creward.mean_reward_after" not in info.metadata and info.metadata["ss_network_dim"] == "4"
    assert "texture" in info.describe()


def test_foreign_and_broken_lora_files(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(plain))
    assert not read_lora_info(plain).is_creward
    with pytest.raises(WeightsError, match="missing"):
        adapters_from_state_dict({"m.lora_up.weight": torch.zeros(2, 1)}, "x.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        read_lora_info(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        read_lora_info(tmp_path / "bad.safetensors")


def test_reward_curve_and_contact_sheet_draw():
    curve = reward_curve([(i, 0.1 * i) for i in range(1, 20)], [(0, 0.0), (10, 1.0), (19, 2.0)], title="t")
    assert curve.size == (720, 420)
    pixels = curve.convert("RGB").getcolors(maxcolors=100000)
    assert any(colour == (215, 80, 30) for _, colour in pixels)  # evaluation dots drawn
    assert reward_curve([], []).size == (720, 420)
    tiles = [Tile(Image.new("RGB", (40, 30), (i * 40, 0, 0)), f"#{i}") for i in range(3)]
    sheet = contact_sheet([Row("texture: a chair", [tiles, tiles[:1]]), Row("overall", [tiles[:2], []])], thumb=32, title="x")
    assert sheet.width >= 200 + 4 * 32 and sheet.height >= 2 * 32


def test_prompts(tmp_path):
    assert parse_prompts("a chair\n\n# comment\n  a teapot  \n") == ["a chair", "a teapot"]
    file = tmp_path / "p.txt"
    file.write_text("one\n#x\ntwo\n")
    assert read_prompts(["zero"], [file]) == ["zero", "one", "two"]
    with pytest.raises(CREwardError, match="no prompts"):
        read_prompts([], [])
    with pytest.raises(CREwardError, match="cannot read prompts file"):
        read_prompts([], [tmp_path / "missing.txt"])
    assert slug("A Chair, made of  glass!") == "a_chair_made_of_glass"
    cond = [[torch.ones(1, 3, 4), {"pooled_output": torch.ones(1, 4), "other": 1}]]
    zero = zero_conditioning(cond)
    assert zero[0][0].abs().sum() == 0 and zero[0][1]["pooled_output"].abs().sum() == 0 and zero[0][1]["other"] == 1
    assert cond[0][1]["pooled_output"].sum() == 4  # the input is untouched
