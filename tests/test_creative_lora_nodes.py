"""The creative-LoRA nodes inside a real (imported) ComfyUI 0.3.75, called as the executor calls them
(under ``torch.inference_mode()``), with tiny models built from ComfyUI's classes.

``TinyClip`` stands in for the text encoder (the tiny UNet's context is 32 wide); the server tests
run the same nodes on a real checkpoint with its CLIP.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import nodes_setup
from builders.comfy_diffusion import TinyClip, tiny_sd15_model, tiny_vae
from builders.comfyui_models import HEAD_NAME

pytestmark = pytest.mark.integration

LORA = "creward_node_texture"


@pytest.fixture(scope="module")
def env(comfy_inprocess, comfy_base_dir):
    nodes_setup.install_weights(comfy_base_dir)

    class Env:
        M = comfy_inprocess.NODE_CLASS_MAPPINGS
        base = comfy_base_dir
        clip = TinyClip()

    with torch.inference_mode():
        Env.creward = Env.M["CREwardLoader"]().load(HEAD_NAME, "auto", "auto", "auto", "auto")["result"][0]
        Env.model = tiny_sd15_model(seed=1, prediction="v")
        Env.other_model = tiny_sd15_model(seed=7, prediction="v")
        Env.vae = tiny_vae()
    return Env


def call(env, node_type, method, **inputs):
    with torch.inference_mode():
        output = getattr(env.M[node_type](), method)(**inputs)
    return output["result"] if isinstance(output, dict) else output


def train_inputs(env, **overrides):
    inputs = dict(
        model=env.model, clip=env.clip, vae=env.vae, creward=env.creward, prompts="a chair\n# skipped\na teapot",
        axis="texture", denoise_weight=0.0, rank=4, alpha=4.0, learning_rate=1e-2, steps=3, batch_size=2, seed=0,
        width=32, height=32, lora_name=LORA, samples_per_prompt=1, sample_steps=1, cfg=1.0, eval_seeds=1, eval_steps=1,
        targets="all", checkpoint_every=2, save_dtype="fp32",
    )
    inputs.update(overrides)
    return inputs


def predict(model, clip):
    from creward.diffusion.clean_estimate import run_in_session

    cond = clip.encode_from_tokens_scheduled("a chair")
    x_t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        return run_in_session(model, {"positive": cond, "p": cond}, (1, 4, 4, 4),
                              lambda session: session.denoise(x_t, torch.tensor([1.0]), "p"))


@pytest.fixture(scope="module")
def trained(env):
    return call(env, "CREwardTrainCreativeLoRA", "train", **train_inputs(env))


def test_train_node_writes_the_lora_and_returns_the_patched_model(env, trained):
    from creward.train.lora.export import read_lora_info

    model, name, curve, summary = trained
    path = env.base / "models" / "loras" / f"{LORA}.safetensors"
    assert name == f"{LORA}.safetensors" and path.is_file()
    info = read_lora_info(path)
    assert info.primary_axis == "texture" and json.loads(info.metadata["creward.prompts"]) == ["a chair", "a teapot"]
    assert info.metadata["creward.head"] == HEAD_NAME and info.metadata["creward.backbone"] == "clip"
    assert curve.shape == (1, 420, 720, 3) and 0 <= float(curve.min()) and float(curve.max()) <= 1
    assert "texture" in summary and "3 steps" in summary and "->" in summary
    run = env.base / "output" / "creward_lora_runs" / LORA
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    assert len(model.patches) > 0 and not torch.equal(predict(model, env.clip), predict(env.model, env.clip))


def test_train_node_resumes_a_longer_run(env, trained):
    _, _, _, summary = call(env, "CREwardTrainCreativeLoRA", "train", **train_inputs(env, steps=4))
    assert "4 steps (resumed at 3)" in summary
    with pytest.raises(Exception, match="setting rank"):
        call(env, "CREwardTrainCreativeLoRA", "train", **train_inputs(env, steps=5, rank=2))
    _, _, _, fresh = call(env, "CREwardTrainCreativeLoRA", "train", **train_inputs(env, steps=3, rank=2, resume=False))
    assert "resumed" not in fresh
    call(env, "CREwardTrainCreativeLoRA", "train", **train_inputs(env, resume=False))  # the module LoRA again (rank 4, 3 steps)


def slots(**chosen):
    inputs = {}
    for axis in ("geometry", "material", "texture", "overall"):
        name, strength = chosen.get(axis, ("None", 1.0))
        inputs[f"{axis}_lora"], inputs[f"{axis}_strength"] = name, strength
    return inputs


def test_sliders_none_or_zero_strength_is_the_base_model(env, trained):
    model, clip, summary = call(env, "CREwardCreativeLoRA", "apply", model=env.model, clip=None, **slots())
    assert model is env.model and clip is None and "no creative LoRA applied" in summary
    model, _, _ = call(env, "CREwardCreativeLoRA", "apply", model=env.model,
                       **slots(texture=(f"{LORA}.safetensors", 0.0)))
    assert model is env.model


def test_sliders_apply_signed_strengths_like_loraloader(env, trained):
    name = f"{LORA}.safetensors"
    up, _, summary = call(env, "CREwardCreativeLoRA", "apply", model=env.model, **slots(texture=(name, 1.0)))
    down, _, _ = call(env, "CREwardCreativeLoRA", "apply", model=env.model, **slots(texture=(name, -1.0)))
    with torch.inference_mode():
        reference = env.M["LoraLoaderModelOnly"]().load_lora_model_only(env.model, name, 1.0)[0]
    assert "warning" not in summary and "texture: +1.00" in summary
    base, plus, minus = predict(env.model, env.clip), predict(up, env.clip), predict(down, env.clip)
    assert torch.equal(plus, predict(reference, env.clip))
    assert not torch.allclose(plus, base, atol=1e-5) and not torch.allclose(minus, base, atol=1e-5)
    both, _, summary = call(env, "CREwardCreativeLoRA", "apply", model=env.model,
                            **slots(texture=(name, 0.5), overall=(name, 0.5)))
    assert "overall: +0.50" in summary and "trained for the texture axis but sits in the overall slot" in summary
    assert torch.allclose(predict(both, env.clip), plus, atol=1e-4)  # 0.5 + 0.5 of one LoRA = 1 x it


def test_sliders_warn_about_another_base_model(env, trained, tmp_path):
    from safetensors.torch import load_file, save_file

    name = f"{LORA}.safetensors"
    _, _, summary = call(env, "CREwardCreativeLoRA", "apply", model=env.other_model, **slots(texture=(name, 1.0)))
    assert "trained on a different SD15 base model" in summary
    loras = env.base / "models" / "loras"
    from safetensors import safe_open

    with safe_open(str(loras / name), "pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(str(loras / name)), str(loras / "creward_node_sdxl.safetensors"),
              metadata={**metadata, "creward.base_architecture": "SDXL"})
    save_file(load_file(str(loras / name)), str(loras / "creward_node_plain.safetensors"))
    _, _, summary = call(env, "CREwardCreativeLoRA", "apply", model=env.model,
                         **slots(geometry=("creward_node_sdxl.safetensors", 1.0), material=("creward_node_plain.safetensors", 1.0)))
    assert "was trained on a SDXL model" in summary and "not a CREward creative LoRA" in summary
    with pytest.raises(Exception, match="texture_lora: 'gone.safetensors' is not in models/loras"):
        call(env, "CREwardCreativeLoRA", "apply", model=env.model, **slots(texture=("gone.safetensors", 1.0)))


def test_acquire_node_keeps_the_top_and_bottom_samples(env):
    from creward.diffusion.acquire import read_acquired_pool

    sheet, top, folder = call(
        env, "CREwardAcquireSamples", "acquire", model=env.model, clip=env.clip, vae=env.vae, creward=env.creward,
        prompts="a chair\na teapot", samples_per_prompt=3, top_k=2, bottom_k=1, seed=10, steps=2, cfg=1.0,
        sampler_name="euler", scheduler="normal", width=32, height=32, folder="creward_acquire_test", batch_size=2,
    )
    from pathlib import Path

    folder = Path(folder)
    assert folder.parent == env.base / "output" / "creward_acquire_test" and folder.name.startswith("run_")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / "index.html").is_file() and (folder / "contact_sheet.png").is_file()
    assert sheet.shape[0] == 1 and sheet.shape[-1] == 3
    assert top.shape == (2 * 4 * 2, 32, 32, 3)
    samples = manifest["samples"]
    assert [s["seed"] for s in samples] == [10, 11, 12, 13, 14, 15]
    for p in ("0", "1"):
        members = [s for s in samples if str(s["prompt_index"]) == p]
        for axis in manifest["axes"]:
            ranked = sorted(members, key=lambda s: -s["scores"][axis])
            assert manifest["selections"][p][axis]["top"] == [s["id"] for s in ranked[:2]]
            assert manifest["selections"][p][axis]["bottom"] == [ranked[-1]["id"]]
    assert len(list((folder / "top" / "texture").iterdir())) == 4 and len(list((folder / "bottom" / "texture").iterdir())) == 2
    # The stored scores are the CREward scores of the saved images.
    first = samples[0]
    with Image.open(folder / first["file"]) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
        assert json.loads(image.text["creward"]) == first["scores"]
    rescored = env.creward.score_images(pixels, 1)[0]
    assert rescored.tolist() == pytest.approx([first["scores"][a] for a in manifest["axes"]], abs=2e-2)
    # A sample is remade by a KSampler with its seed (one image, same settings).
    from creward.diffusion.prompts import zero_conditioning

    cond = env.clip.encode_from_tokens_scheduled("a chair")
    with torch.inference_mode():
        latent = env.M["EmptyLatentImage"]().generate(32, 32, 1)[0]
        remade = env.M["KSampler"]().sample(env.model, first["seed"], 2, 1.0, "euler", "normal", cond,
                                            zero_conditioning(cond), latent)[0]
        image = env.M["VAEDecode"]().decode(env.vae, remade)[0]
    assert torch.allclose(image, pixels, atol=1.5 / 255)
    latents, prompts, index = read_acquired_pool(folder, "texture")
    assert prompts == ["a chair", "a teapot"] and latents.shape == (4, 4, 4, 4) and index.tolist() == [0, 0, 1, 1]
