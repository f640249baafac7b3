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
    assert results[2].scores is None and "img2.png" in results[2].error
    good = [r for r in results if r.scores is not None]
    expected = model.score([__import__("creward.models.preprocess", fromlist=["x"]).load_image(images[i]) for i in (0, 1, 3, 4)])
    got = torch.tensor([[r.scores[a] for a in model.axes] for r in good])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
