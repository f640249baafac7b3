"""The CREward module's plumbing: batching, preprocessing, file scoring, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from creward.models.errors import ImageError, WeightsError
from creward.models.file_scoring import collect_image_paths, score_files
from creward.models.head import HeadInfo, build_head
from creward.models.model import CREward
from creward.models.backbones.registry import get_spec
from builders.toy import ToyBackbone, toy_model

pytestmark = pytest.mark.unit


def test_batched_scores_equal_one_by_one_for_mixed_sizes():
    model = toy_model()
    images = [torch.rand(3, 100 + 13 * i, 80 + 7 * i) for i in range(5)]
    batched = model.score(images, batch_size=2)
    single = torch.cat([model.score([image], batch_size=1) for image in images])
    assert batched.shape == (5, 4)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_channels_last_input_matches_channels_first():
    model = toy_model()
    images = torch.rand(3, 3, 64, 48)
    torch.testing.assert_close(model.score(images), model.score(images.permute(0, 2, 3, 1), channels_last=True))


def test_forward_is_differentiable_in_the_image():
    model = toy_model()
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    model(image)[:, 3].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_empty_batch_is_a_clear_error():
    with pytest.raises(ImageError, match="empty"):
        toy_model().score([])


def test_head_backbone_width_mismatch_names_both_widths():
    head = build_head(16)
    info = HeadInfo(path="h.safetensors", backbone="clip", axes=("geometry", "material", "texture", "overall"), feature_dim=16, version="1")
    with pytest.raises(WeightsError, match="16-wide.*8-wide"):
        CREward(ToyBackbone(8), head, info, get_spec("clip"), backbone_source="tiny-clip/")


def test_score_files_keeps_order_and_skips_corrupt_files(tmp_path):
    model = toy_model()
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.rand(40 + i, 50, 3) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("hello")
    images, skipped = collect_image_paths([tmp_path])
    assert [p.name for p in images] == [f"img{i}.png" for i in range(5)]
    assert [p.name for p in skipped] == ["notes.txt"]
    results = score_files(model, images, batch_size=2, workers=2)
    assert [r.path for r in results] == [str(p) for p in images]
    assert results[2].scores is None and results[2].error == "not a readable image (no image format PIL knows)"
    assert results[2].as_dict(model.axes) == {"path": str(images[2]), **{axis: None for axis in model.axes}, "error": results[2].error}
    # a file named explicitly is kept whatever its extension (decoded by content)
    assert collect_image_paths([tmp_path / "notes.txt"]) == ([tmp_path / "notes.txt"], [])
    good = [r for r in results if r.scores is not None]
    expected = model.score([__import__("creward.models.preprocess", fromlist=["x"]).load_image(images[i]) for i in (0, 1, 3, 4)])
    got = torch.tensor([[r.scores[a] for a in model.axes] for r in good])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "backbone, file_dtype",
    [("clip", None), ("siglip2", None), ("siglip-gemma3", None), ("siglip-gemma3", torch.bfloat16), ("dino3", None), ("vgg16", None)],
    ids=["clip", "siglip2", "siglip-gemma3", "siglip-gemma3-bf16-files", "dino3", "vgg16"],
)
def test_bf16_load_builds_the_backbone_in_bf16_and_scores_near_the_official_fp32(tmp_path, monkeypatch, backbone, file_dtype):
    """``load(dtype="bf16")`` builds the backbone directly in bf16 (no float32 module first, then a cast)
    and scores close to the official float32 path (loose: bf16 keeps ~3 significant digits)."""
    import creward.models
    from creward.models import loader
    from creward.models.backbones.registry import load_backbone
    from creward.models.preprocess import load_image
    from builders import build_backbone_weights
    from builders import siglip_gemma3 as gemma_builder
    from official_reference import official_head, official_scores, save_official_checkpoint, write_images

    if file_dtype is None:
        weights = build_backbone_weights(backbone, tmp_path / "backbone")
    else:  # the Hub's gemma-3-4b-it files are bf16
        weights = gemma_builder.build(tmp_path / "backbone", "hub", dtype=file_dtype)
    head = official_head(load_backbone(backbone, weights).feature_dim)
    checkpoint = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    paths = write_images(tmp_path, sizes=((320, 240), (100, 150)))

    built = []

    def spy(name, path, dtype=None):
        module = load_backbone(name, path, dtype=dtype)
        built.append({tensor.dtype for tensor in [*module.parameters(), *module.buffers()] if tensor.is_floating_point()})
        return module

    monkeypatch.setattr(loader, "load_backbone", spy)
    model = creward.models.load(head=checkpoint, backbone=backbone, backbone_weights=weights, dtype="bf16")
    assert built == [{torch.bfloat16}]  # as load_backbone returned it, before CREward.place
    assert model.dtype == torch.bfloat16 and {p.dtype for p in model.head.parameters()} == {torch.float32}
    got = model.score([load_image(path) for path in paths])
    expected = official_scores(backbone, weights, head, paths)
    assert got.dtype == torch.float32 and not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_huge_images_are_reduced_before_preprocessing_and_small_ones_are_not(tmp_path):
    from creward.models.preprocess import load_image

    array = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "big.png")
    exact = load_image(tmp_path / "big.png")
    assert exact.shape == (3, 300, 400)
    torch.testing.assert_close(exact, torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    reduced = load_image(tmp_path / "big.png", max_pixels=200 * 150)
    assert reduced.shape == (3, 150, 200)  # box-reduced by 2: memory bounded by max_pixels
    Image.fromarray(array).save(tmp_path / "big.jpg", quality=95)
    assert load_image(tmp_path / "big.jpg", max_pixels=100 * 75).shape[1:] == (75, 100)


def test_reducing_a_huge_image_is_a_warning_and_can_be_turned_off(tmp_path, caplog):
    from creward.models.preprocess import load_image

    Image.fromarray((np.random.default_rng(1).random((300, 400, 3)) * 255).astype(np.uint8)).save(tmp_path / "big.png")
    with caplog.at_level("WARNING", logger="creward"):
        load_image(tmp_path / "big.png", max_pixels=200 * 150)
    [record] = [record for record in caplog.records if "big.png" in record.getMessage()]
    assert record.levelname == "WARNING" and "400x300" in record.getMessage() and "--max-pixels 0" in record.getMessage()
    caplog.clear()
    for off in (None, 0):
        assert load_image(tmp_path / "big.png", max_pixels=off).shape == (3, 300, 400)
    assert not caplog.records
    model = toy_model()  # through score_files (the CLI's path) too
    [reduced] = score_files(model, [tmp_path / "big.png"], workers=0, max_pixels=200 * 150)
    [full] = score_files(model, [tmp_path / "big.png"], workers=0, max_pixels=None)
    expected = model.score([load_image(tmp_path / "big.png", max_pixels=None)])[0]
    torch.testing.assert_close(torch.tensor([full.scores[a] for a in model.axes]), expected, atol=1e-5, rtol=0)
    assert reduced.scores != full.scores


@pytest.mark.parametrize("scale, hint", [(255.0, "divide them by 255"), (None, "(x + 1) / 2")])
def test_images_clearly_outside_zero_one_are_refused(scale, hint):
    model = toy_model()
    images = torch.rand(2, 3, 32, 32)
    images = images * scale if scale else images * 2 - 1
    with pytest.raises(ImageError, match=r"values in \[0, 1\].*" + hint.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        model.score(images)
    with pytest.raises(ImageError, match="values in"):
        model.score(list(images))
    model.score(torch.rand(2, 3, 32, 32) * 1.1 - 0.05)  # resampling overshoot is fine


def test_non_finite_features_are_an_error_naming_the_precision():
    model = toy_model()
    model.backbone.embed.bias.data[0] = float("inf")  # what an fp16 overflow gives
    model.place("cpu", torch.float16)
    with pytest.raises(WeightsError, match=r"inf/NaN features in float16: fp16 has a small range.*bf16 or fp32"):
        model.score(torch.rand(1, 3, 32, 32))


def test_sixteen_bit_grayscale_uses_its_full_range(tmp_path):
    from creward.models.preprocess import load_image

    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    assert image.shape == (3, 1, 3)
    torch.testing.assert_close(image[0, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))
