"""Reference set files (``creward.models.reference_set``) and the score files they are built from.

The file round-trips exactly, refuses anything malformed with a message naming the file, refuses a
reference of another head (naming both), warns about coarse groups and falls back from missing
groups to the whole set with a warning. The head hash does not depend on the file's name or format.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from creward.models.errors import CREwardError
from creward.models.head import build_head, head_hash, read_head_file, save_head
from creward.models.reference_set import ReferenceError, ReferenceMismatchError, ReferenceSet, parse_group_by
from creward.models.score_records import read_score_file
from creward.models.scorer_identity import ScorerIdentity

pytestmark = pytest.mark.unit

AXES = ("geometry", "material", "texture", "overall")
SCORER = ScorerIdentity("creward_clip.safetensors", "ab" * 32, "clip", AXES)


def scores(count: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(shift, 1.0, (count, len(AXES)))).astype(np.float32)


def grouped_reference(**kwargs) -> ReferenceSet:
    values = np.concatenate([scores(60, 1), scores(80, 2, shift=3.0)])
    groups = ["chair"] * 60 + ["lamp"] * 80
    return ReferenceSet.build(values, SCORER, "furniture", groups, "folder", **kwargs)


def test_file_round_trips_exactly_and_calibrates_the_same(tmp_path):
    reference = grouped_reference()
    path = reference.save(tmp_path / "refs" / "furniture.json")
    assert not list(path.parent.glob("*.partial"))
    loaded = ReferenceSet.load(path)
    assert loaded.to_json() == path.read_text() == reference.to_json()
    assert loaded.count == 140 and sorted(loaded.groups) == ["chair", "lamp"] and loaded.group_by == "folder"
    probe = torch.from_numpy(scores(7, 9, shift=1.5))
    for group in (None, "chair", "lamp"):
        expected, got = reference.calibrate(probe, AXES, group), loaded.calibrate(probe, AXES, group)
        torch.testing.assert_close(got.percentiles, expected.percentiles)
        torch.testing.assert_close(got.win, expected.win)
    assert ReferenceSet.load(path).path == str(path)


def test_every_score_is_kept_as_float32_and_a_reference_image_ties_with_itself():
    values = scores(10, 3)
    reference = ReferenceSet.build(values, SCORER, "ten")
    stored = np.asarray(json.loads(reference.to_json())["all"]["scores"]["texture"])
    np.testing.assert_array_equal(stored.astype(np.float32), np.sort(values[:, 2]))
    calibration = reference.calibrate(torch.from_numpy(values), AXES)
    ranks = np.argsort(np.argsort(values[:, 2]))
    np.testing.assert_allclose(calibration.percentiles[:, 2].numpy(), 100 * (ranks + 0.5) / 10, atol=1e-4)


def test_large_groups_keep_quantiles_and_small_ones_every_score(tmp_path):
    reference = ReferenceSet.build(np.concatenate([scores(3000, 4), scores(300, 5)]), SCORER, "big", ["a"] * 3000 + ["b"] * 300, "column:prompt", max_points=1000)
    data = json.loads(reference.to_json())
    assert "quantiles" in data["groups"]["a"] and len(data["groups"]["a"]["quantiles"]["overall"]) == 1001
    assert "scores" in data["groups"]["b"] and len(data["groups"]["b"]["scores"]["overall"]) == 300
    assert data["groups"]["a"]["count"] == 3000 and "quantiles" in data["all"]
    loaded = ReferenceSet.load(reference.save(tmp_path / "big.json"))
    assert not loaded.groups["a"].exact and loaded.groups["b"].exact and loaded.group_by == "column:prompt"


def test_group_percentiles_differ_from_the_whole_set():
    reference = grouped_reference()
    probe = torch.full((1, 4), 1.5)
    chair = reference.calibrate(probe, AXES, "chair")
    lamp = reference.calibrate(probe, AXES, "lamp")
    assert chair.percentiles.min() > 80 and lamp.percentiles.max() < 20  # good for a chair, poor for a lamp
    assert chair.label == "vs reference furniture (group chair, 60 images)" and chair.groups == ("chair",)
    per_row = reference.calibrate(torch.full((2, 4), 1.5), AXES, ["chair", "lamp"])
    torch.testing.assert_close(per_row.percentiles[0], chair.percentiles[0])
    torch.testing.assert_close(per_row.percentiles[1], lamp.percentiles[0])
    assert reference.groups_for(["x/chair/1.png", "y/lamp/2.png"]) == ["chair", "lamp"]
    assert reference.groups_for(["x/chair/1.png"], "lamp") == "lamp"


def test_a_missing_group_falls_back_to_the_whole_set_with_a_warning(caplog):
    reference = grouped_reference()
    probe = torch.full((1, 4), 1.5)
    with caplog.at_level(logging.WARNING):
        calibration = reference.calibrate(probe, AXES, "sofa")
    assert "has no group 'sofa'" in caplog.text and "whole set (140 images)" in caplog.text
    torch.testing.assert_close(calibration.percentiles, reference.calibrate(probe, AXES, None).percentiles)
    assert calibration.groups == (None,) and calibration.label == "vs reference furniture (140 images)"


def test_coarse_groups_warn(caplog):
    with caplog.at_level(logging.WARNING):
        reference = ReferenceSet.build(np.concatenate([scores(20, 1), scores(60, 2)]), SCORER, "r", ["few"] * 20 + ["many"] * 60, "folder")
    assert "group 'few' holds only 20 images" in caplog.text and "coarse" in caplog.text and "'many'" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reference.calibrate(torch.zeros(1, 4), AXES, "few")
    assert "group 'few' holds only 20 images" in caplog.text


def test_head_mismatch_names_both_heads():
    reference = grouped_reference()
    other = ScorerIdentity("creward_siglip2.safetensors", "cd" * 32, "siglip2", AXES)
    with pytest.raises(ReferenceMismatchError) as info:
        reference.check_scorer(other)
    message = str(info.value)
    assert "creward_clip.safetensors (sha256 abababababab, backbone clip)" in message
    assert "creward_siglip2.safetensors (sha256 cdcdcdcdcdcd, backbone siglip2)" in message
    same_weights_renamed = ScorerIdentity("renamed.safetensors", SCORER.head_hash, "clip", AXES)
    reference.check_scorer(same_weights_renamed)
    with pytest.raises(ReferenceMismatchError, match="backbone dino3"):
        reference.check_scorer(ScorerIdentity("x", SCORER.head_hash, "dino3", AXES))


def test_head_hash_is_independent_of_file_name_and_format(tmp_path):
    head = build_head(16)
    first = save_head(head, tmp_path / "a.safetensors", "clip")
    second = save_head(head, tmp_path / "b.safetensors", "clip", extra_metadata={"note": "other metadata"})
    torch.save({f"head.{key}": value for key, value in head.state_dict().items()}, tmp_path / "reward_head_best.ckpt")
    hashes = {read_head_file(path)[1].content_hash for path in (first, second, tmp_path / "reward_head_best.ckpt")}
    assert hashes == {head_hash(head.state_dict())}
    with torch.no_grad():
        head[0].weight[0, 0] += 1e-3
    assert head_hash(head.state_dict()) not in hashes
    assert ScorerIdentity.of_head_file(first).matches(ScorerIdentity.of_head_file(second))


@pytest.mark.parametrize(
    "values, groups, message",
    [
        (np.zeros((0, 4)), None, "no scores"),
        (np.array([[0.0, 1.0, np.nan, 0.0], [1.0, 1.0, 1.0, 1.0]]), None, "1 of 2 images have NaN or infinite scores"),
        (np.zeros((2, 3)), None, "shaped"),
        (np.zeros((3, 4)), ["a", "", "b"], "1 of 3 rows have no group"),
    ],
)
def test_bad_scores_and_empty_groups_are_clear_errors(values, groups, message):
    with pytest.raises(CREwardError, match=message):
        ReferenceSet.build(values, SCORER, "r", groups, "folder" if groups else None)


def _write(tmp_path, text) -> str:
    path = tmp_path / "ref.json"
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def _corrupt(mutate):
    data = json.loads(grouped_reference().to_json())
    mutate(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"format": "creward-reference", "version": 1, "name": ', "not readable JSON"),
        (b"\xff\xfe\x00garbage", "not readable JSON"),
        ('[1, 2, 3]', "not a CREward reference file"),
        ('{"format": "something-else"}', "not a CREward reference file"),
        (_corrupt(lambda d: d.update(version=99)), "version 99 is not supported"),
        (_corrupt(lambda d: d["scorer"].pop("head_hash")), "missing head_hash"),
        (_corrupt(lambda d: d["all"]["scores"]["overall"].reverse()), "'overall': a score distribution's values must be sorted"),
        (_corrupt(lambda d: d["all"]["scores"].pop("texture")), "no scores for texture"),
        (_corrupt(lambda d: d["all"].update(count=3)), "an exact distribution of 3 scores holds 140 values"),
        (_corrupt(lambda d: d["groups"]["chair"]["scores"]["geometry"].__setitem__(0, "x")), "non-empty list of finite numbers"),
        (_corrupt(lambda d: d["groups"]["chair"].update(count=59, scores={a: v[:59] for a, v in d["groups"]["chair"]["scores"].items()})), "the groups hold 139 images"),
        (_corrupt(lambda d: d.update(group_by=7)), "'group_by' should be null"),
    ],
)
def test_corrupt_reference_files_are_clear_errors(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ReferenceError) as info:
        ReferenceSet.load(path)
    assert message in str(info.value) and path in str(info.value)


def test_missing_reference_file(tmp_path):
    with pytest.raises(ReferenceError, match="reference file not found"):
        ReferenceSet.load(tmp_path / "nope.json")


def test_group_by_parsing():
    assert parse_group_by("folder") == "folder" and parse_group_by("column:prompt") == "column:prompt" and parse_group_by(None) is None
    with pytest.raises(CREwardError, match="expected 'folder'"):
        parse_group_by("column:")
    with pytest.raises(CREwardError, match="expected 'folder'"):
        parse_group_by("subject")


# -- score files ---------------------------------------------------------------------------------

def test_score_json_with_error_rows_in_either_convention(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps([
        {"path": "a/chair/1.png", "geometry": 0.1, "material": 0.2, "texture": 0.3, "overall": 0.4},
        {"path": "a/chair/broken.png", "error": "could not be decoded"},
        {"path": "a/chair/old.png", "geometry": None, "material": None, "texture": None, "overall": None, "error": "unreadable"},
    ]))
    records = read_score_file(path)
    assert records.scored.tolist() == [True, False, False]
    np.testing.assert_allclose(records.values[0], [0.1, 0.2, 0.3, 0.4])
    assert records.locations() == ["a/chair/1.png", "a/chair/broken.png", "a/chair/old.png"]


def test_score_csv_and_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet as pq

    csv_path = tmp_path / "scores.csv"
    csv_path.write_text("path,geometry,material,texture,overall,error\nx/1.png,0.1,0.2,0.3,0.4,\nx/2.png,,,,,bad file\n")
    records = read_score_file(csv_path)
    assert records.scored.tolist() == [True, False] and records.errors[1] == "bad file"
    folder = tmp_path / "dataset"
    folder.mkdir()
    metadata = {b"creward.scorer": json.dumps(SCORER.as_dict()).encode()}
    for part, (key, value) in enumerate([("k0", 0.5), ("k1", None)]):
        table = pyarrow.table({
            "key": [key], "shard": ["s.tar"], **{axis: pyarrow.array([value], pyarrow.float32()) for axis in AXES},
            "error": [None if value is not None else "corrupt member"],
        }).replace_schema_metadata(metadata)
        pq.write_table(table, folder / f"part-{part:05d}.parquet")
    (folder / ".part-00002.parquet.partial").write_text("half written")
    records = read_score_file(folder)
    assert records.scorer == SCORER and records.scored.tolist() == [True, False]
    assert records.columns["shard"] == ["s.tar", "s.tar"] and records.locations() == ["k0", "k1"]
    (folder / "part-00003.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CREwardError, match="part-00003.parquet is not a readable Parquet file"):
        read_score_file(folder)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not readable JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"path": "x.png"}]', "has none of the axis scores"),
        ('[{"path": "x.png", "geometry": "high", "material": 0, "texture": 0, "overall": 0}]', "expected a number"),
    ],
)
def test_malformed_score_json(tmp_path, content, message):
    path = tmp_path / "scores.json"
    path.write_text(content)
    with pytest.raises(CREwardError, match=message):
        read_score_file(path)


def test_acquisition_manifest_gives_one_prompt_column(tmp_path):
    manifest = {
        "format": "creward-acquire", "format_version": 1, "axes": list(AXES), "prompts": ["a chair", "a lamp"],
        "samples": [
            {"id": 0, "prompt_index": 0, "seed": 1, "file": "samples/p000_a-chair/s1.png", "scores": dict(zip(AXES, [0.1, 0.2, 0.3, 0.4]))},
            {"id": 1, "prompt_index": 1, "seed": 2, "file": "samples/p001_a-lamp/s2.png", "scores": dict(zip(AXES, [0.5, 0.6, 0.7, 0.8]))},
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    records = read_score_file(tmp_path / "manifest.json")
    assert records.column("prompt") == ["a chair", "a lamp"] and records.scored.all()
    np.testing.assert_allclose(records.values[1], [0.5, 0.6, 0.7, 0.8])
    assert records.locations()[0] == str(tmp_path / "samples/p000_a-chair/s1.png")
    with pytest.raises(CREwardError, match="has no column 'subject'"):
        records.column("subject")
