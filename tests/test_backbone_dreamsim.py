"""dreamsim: optional package, offline cache folder, clear errors.

Without the ``dreamsim`` package (the default environment) the loader must say how to install
it; the wrapper's own logic (file checks, no downloads, torch.hub directory restored, width read
from the output, device moves) is tested against a stand-in ``dreamsim`` module.

DreamSim cannot build its models without files even with ``pretrained=False``: it always loads
the three ViT-B/16 checkpoints and builds DINO through ``torch.hub`` from DINO's GitHub code. The
real-package test therefore writes a random cache folder (full-size ViT-B/16s, 1 GB; 1-3 minutes on
2 cores, hence ``slow``) with a stand-in DINO ``hubconf.py``, and runs only where
``dreamsim`` is installed.
"""

import importlib.machinery
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from creward.models.backbones import dreamsim as dreamsim_backbone
from creward.models.backbones.registry import load_backbone
from creward.models.errors import MissingDependencyError, WeightsError

pytestmark = pytest.mark.unit


def write_placeholder_cache(folder: Path) -> Path:
    """Every file name DreamSim's ensemble reads, with placeholder contents (for the stand-in module)."""
    for name in dreamsim_backbone.REQUIRED_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"placeholder")
    (folder / dreamsim_backbone.ADAPTER_WEIGHTS[0]).write_bytes(b"placeholder")
    return folder


class FakeExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.proj = torch.randn(4, 2)  # a plain tensor attribute, as in DreamSim
        self.device = "cpu"

    def forward(self, pixels):
        return self.linear(pixels.mean(dim=(2, 3))) @ self.proj.to(self.device)


class FakePerceptual(nn.Module):
    def __init__(self):
        super().__init__()
        self.extractor_list = nn.ModuleList([FakeExtractor(), FakeExtractor()])
        self.device = "cpu"

    def embed(self, pixels):
        return torch.cat([extractor(pixels) for extractor in self.extractor_list], dim=-1)


def stand_in_dreamsim(calls, attempt_download=False):
    module = types.ModuleType("dreamsim")
    module.__spec__ = importlib.machinery.ModuleSpec("dreamsim", None)

    def dreamsim(pretrained=True, device="cuda", cache_dir="./models", **kwargs):
        calls.append(dict(pretrained=pretrained, device=device, cache_dir=cache_dir, **kwargs))
        torch.hub.set_dir(cache_dir)  # as DreamSim does
        if attempt_download:
            torch.hub.download_url_to_file("https://example.invalid/pretrained.zip", f"{cache_dir}/pretrained.zip")
        return FakePerceptual(), None

    module.dreamsim = dreamsim
    return module


def test_missing_package_gives_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # importlib.util.find_spec → None: not installed
    with pytest.raises(MissingDependencyError, match=r"dreamsim.*pip install dreamsim"):
        load_backbone("dreamsim", write_placeholder_cache(tmp_path))


def test_missing_files_are_listed_before_anything_is_built(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "dreamsim", stand_in_dreamsim(calls))
    folder = write_placeholder_cache(tmp_path / "dreamsim")
    (folder / "clip_vitb16_pretrain.pth.tar").unlink()
    (folder / "checkpoints" / "dino_vitbase16_pretrain.pth").unlink()
    (folder / "ensemble_lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(WeightsError) as error:
        load_backbone("dreamsim", folder)
    message = str(error.value)
    for name in ("clip_vitb16_pretrain.pth.tar", "checkpoints/dino_vitbase16_pretrain.pth", "adapter_model.safetensors"):
        assert name in message
    assert "open_clip_vitb16_pretrain" not in message and str(folder) in message
    assert calls == []
    with pytest.raises(WeightsError, match="not a folder"):
        load_backbone("dreamsim", tmp_path / "nowhere")


def test_loads_offline_restores_torch_hub_dir_and_reads_width(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "dreamsim", stand_in_dreamsim(calls))
    folder = write_placeholder_cache(tmp_path / "dreamsim")
    hub_dir = torch.hub.get_dir()
    backbone = load_backbone("dreamsim", folder)
    assert calls == [dict(pretrained=True, device="cpu", cache_dir=str(folder))]
    assert torch.hub.get_dir() == hub_dir
    assert backbone.feature_dim == 4  # two members, 2 wide each: read from the output, not a table
    assert backbone(torch.rand(3, 3, 224, 224)).shape == (3, 4)

    backbone.to(torch.float64)  # the projections (plain tensors in DreamSim) follow .to()
    assert all(extractor.proj.dtype == torch.float64 for extractor in backbone.model.extractor_list)
    assert backbone(torch.rand(1, 3, 224, 224, dtype=torch.float64)).dtype == torch.float64


def test_a_download_attempt_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dreamsim", stand_in_dreamsim([], attempt_download=True))
    folder = write_placeholder_cache(tmp_path / "dreamsim")
    original = torch.hub.download_url_to_file
    with pytest.raises(WeightsError, match=r"tried to download https://example.invalid/pretrained.zip"):
        load_backbone("dreamsim", folder)
    assert torch.hub.download_url_to_file is original
    assert not (folder / "pretrained.zip").exists()


# -- with the real dreamsim package ------------------------------------------------------------

STAND_IN_HUBCONF = '''\
"""Stand-in for github.com/facebookresearch/dino's hubconf.py (tests only): same model, same cache file."""
import torch
from dreamsim.feature_extraction import vision_transformer as vits


def dino_vitb16(pretrained=True, **kwargs):
    model = vits.vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        state_dict = torch.hub.load_state_dict_from_url(
            url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
            map_location="cpu",
        )
        model.load_state_dict(state_dict, strict=True)
    return model
'''


def write_random_dreamsim_cache(folder: Path) -> Path:
    """A DreamSim ensemble cache folder with random full-size weights in DreamSim's formats."""
    from dreamsim import PerceptualModel
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import DINOHead, vit_base
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "facebookresearch_dino_main").mkdir()
    (folder / "facebookresearch_dino_main" / "hubconf.py").write_text(STAND_IN_HUBCONF)
    (folder / "checkpoints").mkdir()
    torch.save(vit_base(patch_size=16, num_classes=0).state_dict(), folder / "checkpoints" / "dino_vitbase16_pretrain.pth")
    head = DINOHead(768, 2048)
    student = {f"module.head.mlp.{i}.{kind}": head.mlp[i].state_dict()[kind] for i in (0, 2, 4) for kind in ("weight", "bias")}
    student["module.head.last_layer.weight"] = torch.randn(2048, 256) * 0.02
    torch.save({"student": student}, folder / "dino_vitb16_pretrain.pth")
    for name in ("clip", "open_clip"):
        vit = vit_base(patch_size=16)
        vit.pos_drop = nn.LayerNorm(768)
        state = dict(vit.state_dict(), proj=torch.randn(768, 512) * 0.03)
        torch.save({"state_dict": state}, folder / f"{name}_vitb16_pretrain.pth.tar")
    model = PerceptualModel(**dreamsim_args["model_config"]["ensemble"], device="cpu", load_dir=str(folder), normalize_embeds=True)
    lora = LoraConfig(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)  # LoRA B starts at zero; make the adapter matter
    peft_model.save_pretrained(str(folder / "ensemble_lora"))
    return folder


@pytest.mark.slow
def test_real_dreamsim_package_embed_and_scores(tmp_path):
    pytest.importorskip("dreamsim")
    from dreamsim import dreamsim

    import creward.models
    from creward.models.preprocess import load_image
    from official_reference import official_head, official_pixels, save_official_checkpoint, write_images

    folder = write_random_dreamsim_cache(tmp_path / "dreamsim")
    hub_dir = torch.hub.get_dir()
    official, _ = dreamsim(pretrained=True, device="cpu", cache_dir=str(folder))
    torch.hub.set_dir(hub_dir)
    head = official_head(1792)
    ckpt = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    paths = write_images(tmp_path, sizes=((300, 200), (97, 131)))
    # DreamSim normalises inside each ensemble member: the official transform is ToTensor + bicubic Resize only
    pixels = official_pixels(paths, 224, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], bicubic=True)
    with torch.no_grad():
        expected = head(official.embed(pixels))
    model = creward.models.load(head=ckpt, backbone="dreamsim", backbone_weights=folder)
    assert torch.hub.get_dir() == hub_dir
    assert model.backbone.feature_dim == 1792
    got = model.score([load_image(path) for path in paths])
    assert not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert len(model.backbone.gradcam_layers()) == 36
