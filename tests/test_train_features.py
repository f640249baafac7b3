"""The feature cache: content keys, resume, identity checks, same pixels as scoring."""

import json
import shutil

import pytest
import torch

from creward.models.errors import ImageError
from creward.models.file_scoring import load_preprocessed
from creward.models.backbones.registry import get_spec
from creward.train.features import FeatureCache, FeatureCacheError, cache_features, file_sha256, weights_identity
from builders.toy import ToyBackbone
from pair_data import one_thread, render_pairs  # noqa: F401 (one_thread: autouse fixture)

pytestmark = pytest.mark.unit


class CountingBackbone(ToyBackbone):
    def __init__(self, width=8):
        torch.manual_seed(0)
        super().__init__(width)
        self.seen = 0

    def forward(self, pixel_values):
        self.seen += len(pixel_values)
        return super().forward(pixel_values)


@pytest.fixture
def images(tmp_path):
    folder, _, _ = render_pairs(tmp_path / "pairs", pairs=5, seed=0, pixels=48, labels_name=None)
    return sorted(folder.glob("*.png"))


def test_features_are_the_backbone_on_the_official_preprocessing(tmp_path, images):
    backbone = CountingBackbone().freeze()
    cache = FeatureCache(tmp_path / "cache", "clip", "weights-1")
    summary = cache_features(images, cache, backbone_module=backbone, batch_size=3, device="cpu", progress=False)
    assert (summary.images, summary.unique, summary.cached, summary.computed) == (10, 10, 0, 10)
    expected = backbone(torch.stack([load_preprocessed(path, get_spec("clip").preprocessing) for path in images]))
    torch.testing.assert_close(cache.features_for(images), expected, atol=1e-5, rtol=1e-5)
    assert cache.lookup([file_sha256(images[0])]).shape == (1, 8)


def test_second_run_computes_nothing_and_a_new_image_only_itself(tmp_path, images):
    backbone = CountingBackbone().freeze()
    cache_features(images[:6], FeatureCache(tmp_path / "cache", "clip", "w"), backbone_module=backbone, device="cpu", progress=False)
    assert backbone.seen == 6

    class Exploding(ToyBackbone):
        def forward(self, pixel_values):
            raise AssertionError("the backbone ran although everything was cached")

    reopened = FeatureCache(tmp_path / "cache", "clip", "w")
    summary = cache_features(images[:6], reopened, backbone_module=Exploding(), device="cpu", progress=False)
    assert (summary.cached, summary.computed, summary.shards_written) == (6, 0, [])
    summary = cache_features(images, FeatureCache(tmp_path / "cache", "clip", "w"), backbone_module=backbone, device="cpu", progress=False)
    assert (summary.cached, summary.computed) == (6, 4) and backbone.seen == 10
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 2


def test_duplicate_and_renamed_images_are_computed_once(tmp_path, images):
    copy = tmp_path / "renamed.png"
    shutil.copyfile(images[0], copy)
    backbone = CountingBackbone().freeze()
    cache = FeatureCache(tmp_path / "cache", "clip", "w")
    summary = cache_features([images[0], copy, images[0]], cache, backbone_module=backbone, device="cpu", progress=False)
    assert (summary.images, summary.unique, summary.computed, backbone.seen) == (3, 1, 1, 1)
    torch.testing.assert_close(cache.features_for([copy]), cache.features_for([images[0]]))


def test_shards_are_written_every_shard_size_images(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", "clip", "w")
    summary = cache_features(images, cache, backbone_module=CountingBackbone(), batch_size=2, shard_size=4, device="cpu", progress=False)
    assert len(summary.shards_written) == 3  # 4 + 4 + 2
    assert len(FeatureCache(tmp_path / "cache", "clip", "w")) == 10


def test_cache_of_another_backbone_is_an_error_naming_the_file(tmp_path, images):
    cache_features(images[:2], FeatureCache(tmp_path / "cache", "clip", "w"), backbone_module=CountingBackbone(), device="cpu", progress=False)
    with pytest.raises(FeatureCacheError, match=r"cache\.json holds features of backbone 'clip', not 'dino3'"):
        FeatureCache(tmp_path / "cache", "dino3", "w")
    with pytest.raises(FeatureCacheError, match=r"cache\.json holds features of other 'clip' weights"):
        FeatureCache(tmp_path / "cache", "clip", "other-weights")


def test_a_shard_from_another_cache_is_an_error_naming_the_shard(tmp_path, images):
    cache_features(images[:2], FeatureCache(tmp_path / "a", "clip", "w"), backbone_module=CountingBackbone(), device="cpu", progress=False)
    cache_features(images[2:4], FeatureCache(tmp_path / "b", "vgg16", "v"), backbone_module=CountingBackbone(), device="cpu", progress=False)
    shutil.copyfile(tmp_path / "b" / "features-00000.safetensors", tmp_path / "a" / "features-00001.safetensors")
    with pytest.raises(FeatureCacheError, match=r"features-00001\.safetensors holds features of backbone 'vgg16'"):
        FeatureCache(tmp_path / "a", "clip", "w")


def test_damaged_manifest_and_orphan_shards_are_errors(tmp_path, images):
    cache_features(images[:2], FeatureCache(tmp_path / "cache", "clip", "w"), backbone_module=CountingBackbone(), device="cpu", progress=False)
    (tmp_path / "cache" / "cache.json").write_text("{not json")
    with pytest.raises(FeatureCacheError, match=r"cache\.json is not a readable"):
        FeatureCache(tmp_path / "cache", "clip", "w")
    (tmp_path / "cache" / "cache.json").unlink()
    with pytest.raises(FeatureCacheError, match="no cache.json"):
        FeatureCache(tmp_path / "cache", "clip", "w")


def test_unreadable_image_names_the_file_and_keeps_the_others(tmp_path, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    cache = FeatureCache(tmp_path / "cache", "clip", "w")
    with pytest.raises(ImageError, match=r"broken\.png"):
        cache_features([images[0], broken, images[1]], cache, backbone_module=CountingBackbone(), device="cpu", progress=False)
    assert len(FeatureCache(tmp_path / "cache", "clip", "w")) == 2
    with pytest.raises(ImageError, match=r"missing\.png: image file not found"):
        cache_features([tmp_path / "missing.png"], cache, backbone_module=CountingBackbone(), device="cpu", progress=False)


def test_missing_features_are_an_error_naming_the_image(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", "clip", "w")
    cache_features(images[:2], cache, backbone_module=CountingBackbone(), device="cpu", progress=False)
    with pytest.raises(FeatureCacheError, match=rf"1 image\(s\) have no features .*{images[5].name}.*creward train features"):
        cache.features_for([images[0], images[5]])


def test_changed_file_is_rehashed(tmp_path, images):
    target = tmp_path / "image.png"
    shutil.copyfile(images[0], target)
    cache = FeatureCache(tmp_path / "cache", "clip", "w")
    cache_features([target], cache, backbone_module=CountingBackbone(), device="cpu", progress=False)
    shutil.copyfile(images[1], target)
    summary = cache_features([target], FeatureCache(tmp_path / "cache", "clip", "w"), backbone_module=CountingBackbone(), device="cpu", progress=False)
    assert summary.computed == 1
    index = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert index[str(target.resolve())][2] == file_sha256(images[1])


def test_weights_identity_survives_copying_and_tells_weights_apart(tmp_path):
    from safetensors.torch import save_file

    def weights_folder(name, seed):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "clip"}')
        generator = torch.Generator().manual_seed(seed)
        save_file({"w": torch.randn(1 << 19, generator=generator)}, str(folder / "model.safetensors"))  # 2 MiB: 3 samples
        return folder

    first, other = weights_folder("a", 0), weights_folder("b", 1)
    copy = shutil.copytree(first, tmp_path / "copy")
    (copy / "README.md").write_text("not a weight file")
    assert weights_identity(first) == weights_identity(copy)
    assert weights_identity(first) != weights_identity(other)
    moved = tmp_path / "moved.safetensors"
    shutil.copyfile(first / "model.safetensors", moved)
    assert weights_identity(first / "model.safetensors") == weights_identity(moved)
    assert weights_identity(moved) != weights_identity(other / "model.safetensors")
