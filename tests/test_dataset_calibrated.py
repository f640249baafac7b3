"""``creward score-dataset --reference REF``: calibrated columns, --min-percentile / --min-win, resume.

Local engine; the Ray engine's equality is ``tests/test_dataset_calibrated_ray.py``. The
references are built here from made-up scores spread over the range the tiny model gives, so
percentiles spread over 0-100 and no image ties a reference score.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

import dataset_checks as checks  # noqa: E402
from creward.cli.main import main  # noqa: E402
from test_dataset_local import built, model_args, weights  # noqa: F401  (built and weights are fixtures)

pytestmark = pytest.mark.unit
AXES = checks.AXES
CALIBRATED = [f"{axis}_percentile" for axis in AXES] + [f"{axis}_win" for axis in AXES]




def _spread(expected: dict, count: int, shift: float, seed: int) -> np.ndarray:
    """``count`` made-up scores per axis over (a bit more than) the range of the real ones."""
    values = np.asarray(list(expected.values()), dtype=np.float64)
    low, high = values.min(axis=0), values.max(axis=0)
    span = np.maximum(high - low, 1e-3)
    rng = np.random.default_rng(seed)
    return low - 0.3 * span + shift * span + rng.random((count, len(AXES))) * 1.6 * span


@pytest.fixture(scope="module")
def references(weights, dataset_expected, tmp_path_factory):
    from creward.models.head import build_head, save_head
    from creward.models.reference_set import ReferenceSet
    from creward.models.scorer_identity import ScorerIdentity

    root = tmp_path_factory.mktemp("references")
    scorer = ScorerIdentity.of_head_file(weights["head"])
    # by folder: images in folder "sub" and in shard 00000 have a group, the others fall back to the whole set
    values = np.concatenate([_spread(dataset_expected, 60, 0.0, 1), _spread(dataset_expected, 60, 0.25, 2)])
    grouped = ReferenceSet.build(values, scorer, "grouped", ["sub"] * 60 + ["00000"] * 60, "folder")
    whole = ReferenceSet.build(_spread(dataset_expected, 80, -0.2, 3), scorer, "whole")
    by_site = ReferenceSet.build(values, scorer, "sites", ["a"] * 60 + ["z"] * 60, "column:site")
    other_head = root / "other.safetensors"
    save_head(build_head(128), other_head, "clip")
    mismatched = ReferenceSet.build(values, ScorerIdentity.of_head_file(other_head), "other")
    files = {}
    for name, reference in (("grouped", grouped), ("whole", whole), ("sites", by_site), ("other", mismatched)):
        files[name] = root / f"{name}.json"
        reference.save(files[name])
    return {name: (files[name], ReferenceSet.load(files[name])) for name in files}


@pytest.fixture(scope="module")
def calibrated(built, weights, references, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "out"
    code = main(["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption",
                 "--reference", str(references["grouped"][0]), *model_args(weights)])
    return code, out


def _good_files(built) -> list[Path]:
    return built["folder"] + built["listed"] + [file for files in built["extracted"].values() for file in files]


def test_calibrated_columns_equal_creward_score_reference_json(calibrated, built, weights, references):
    code, out = calibrated
    assert code == 0
    path, reference = references["grouped"]
    items = checks.score_json(_good_files(built), weights, "--reference", str(path))
    table = checks.read_output(out)
    checks.check_complete(out, table)
    assert table.column_names[table.column_names.index("overall") + 1:][:9] == [*CALIBRATED, "reference_group"]
    pairs = checks.good_rows(table, built)
    assert len(pairs) == 4 + 3 + 6
    files = [str(file) for _, file in pairs]
    json_scores = np.asarray([[items[file][axis] for axis in AXES] for file in files], dtype=np.float32)
    # the same library call on the same scores, unrounded (creward score prints 3 and 5 decimals)
    direct = reference.calibrate(json_scores, AXES, reference.groups_for(files))
    for position, (row, file) in enumerate(pairs):
        item = items[str(file)]
        np.testing.assert_allclose([row[a] for a in AXES], [item[a] for a in AXES], atol=1e-5, rtol=0)
        np.testing.assert_allclose([row[f"{a}_win"] for a in AXES], [item[f"{a}_win"] for a in AXES], atol=1e-5, rtol=0)
        np.testing.assert_allclose([row[f"{a}_percentile"] for a in AXES], [item[f"{a}_percentile"] for a in AXES], atol=5e-4 + 1e-6, rtol=0)
        np.testing.assert_allclose([row[f"{a}_percentile"] for a in AXES], direct.percentiles[position].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose([row[f"{a}_win"] for a in AXES], direct.win[position].numpy(), atol=1e-5, rtol=0)
        assert row["reference_group"] == item["reference_group"], (row, item)
    used = {row["reference_group"] for row, _ in pairs}
    assert used == {"sub", "00000", None}  # shard 00000's members count as files in a folder 00000; "folder", "listed", "00001": whole set
    percentiles = np.asarray([[row[f"{a}_percentile"] for a in AXES] for row, _ in pairs])
    assert 0 < percentiles.min() and percentiles.max() < 100 and percentiles.std() > 5  # not degenerate
    assert all(row[name] is None for row in table.to_pylist() if row["error"] for name in [*CALIBRATED, "reference_group"])
    metadata = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
    assert metadata[b"creward.head.name"] == weights["head"].name.encode()
    assert metadata[b"creward.reference.name"] == b"grouped"
    assert metadata[b"creward.reference.group_by"] == b"folder"
    assert metadata[b"creward.reference.head_hash"] == reference.scorer.head_hash.encode()
    assert metadata[b"creward.reference.sha256"].startswith(b"sha256:")
    job = json.loads((out / "_creward_job.json").read_text())
    assert job["reference"]["name"] == "grouped" and job["reference"]["sha256"] == metadata[b"creward.reference.sha256"].decode()


def test_min_percentile_and_min_win_keep_exactly_the_expected_keys(calibrated, built, weights, references, tmp_path, caplog):
    _, out = calibrated
    before = {child.name: child.stat().st_mtime_ns for child in out.glob("part-*.parquet")}
    base = ["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption",
            "--reference", str(references["grouped"][0]), *model_args(weights)]
    assert main([*base, "--min-percentile", "50", "--axis", "texture", "--keep-to", str(tmp_path / "k1")]) == 0
    assert {child.name: child.stat().st_mtime_ns for child in out.glob("part-*.parquet")} == before  # resumed: nothing rescored
    assert "scored 0 image(s)" in caplog.text
    rows = checks.read_output(out).to_pylist()
    kept = pq.read_table(tmp_path / "k1" / "kept.parquet").to_pylist()
    expected = {(row["shard"], row["key"]) for row in rows if row["texture_percentile"] is not None and row["texture_percentile"] >= 50}
    assert 0 < len(expected) < len([row for row in rows if row["error"] is None])
    assert {(row["shard"], row["key"]) for row in kept} == expected
    summary = json.loads((tmp_path / "k1" / "summary.json").read_text())
    assert summary["rule"] == "texture percentile >= 50" and summary["kept"] == len(expected)

    # a weighted mean of two axes' win probabilities, with a top percent by the weighted score
    mean = {(row["shard"], row["key"]): (row["geometry_win"] + 3 * row["texture_win"]) / 4 for row in rows if row["error"] is None}
    minimum = float(np.median(list(mean.values())))
    args = [*base, "--min-win", f"{minimum!r}", "--weights", "1,0,3,0", "--keep-top-percent", "100", "--keep-to", str(tmp_path / "k2")]
    assert main(args) == 0
    kept = pq.read_table(tmp_path / "k2" / "kept.parquet").to_pylist()
    assert {(row["shard"], row["key"]) for row in kept} == {key for key, value in mean.items() if value >= minimum}
    assert "weighted mean of win probability (1*geometry, 3*texture) >=" in json.loads((tmp_path / "k2" / "summary.json").read_text())["rule"]
    # the rewritten shards carry the calibrated values too
    shard_kept = [row for row in kept if row["shard"] and row["shard"].endswith(("00000.tar", "00001.tar"))]
    assert shard_kept  # the data are seeded: some samples of the good shards pass
    assert main([*args[:-2], "--keep-to", str(tmp_path / "k3"), "--write-shards"]) == 0
    record_of = {}
    for shard in (tmp_path / "k3" / "shards").iterdir():
        with tarfile.open(shard) as archive:
            for name in archive.getnames():
                if name.endswith(".creward.json"):
                    record_of[name[: -len(".creward.json")]] = json.loads(archive.extractfile(name).read())
    for row in shard_kept:
        record = record_of[row["key"]]
        assert record["texture_win"] == pytest.approx(row["texture_win"]) and record["reference_group"] == row["reference_group"]


def test_calibrated_minimums_without_a_reference_are_usage_errors(built, tmp_path, capsys):
    # a head that does not exist: the usage error comes before anything is loaded
    absent = ["--head", str(tmp_path / "absent.safetensors"), "--device", "cpu"]
    cases = [
        (["--min-percentile", "90", "--keep-to", str(tmp_path / "k")], "--min-percentile compare with a reference set: give --reference REF"),
        (["--min-win", "0.7", "--keep-to", str(tmp_path / "k")], "--min-win compare with a reference set"),
        (["--group", "sub"], "--group names a group of the reference set"),
        (["--min-percentile", "90", "--weights", "1,-1,0,0", "--reference", str(tmp_path / "r.json"), "--keep-to", str(tmp_path / "k")],
         "give weights >= 0"),
        (["--min-percentile", "101", "--reference", str(tmp_path / "r.json"), "--keep-to", str(tmp_path / "k")], "between 0 and 100"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["score-dataset", built["inputs"][0], "-o", str(tmp_path / "out"), *absent, *extra])
        assert exit_info.value.code == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "out").exists() and not (tmp_path / "k").exists()


def test_a_reference_of_another_head_is_refused_before_anything_is_written(built, weights, references, tmp_path, caplog, monkeypatch):
    import creward.models.loader as loader

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the reference was checked")

    monkeypatch.setattr(loader, "load", no_loading)
    out = tmp_path / "out"
    args = ["score-dataset", *built["inputs"][:2], "-o", str(out), "--reference", str(references["other"][0]), *model_args(weights)]
    assert main(args) == 1
    assert "reference 'other'" in caplog.text and "scores of different heads are not comparable" in caplog.text
    assert "creward calibrate IMAGES --head" in caplog.text
    assert not out.exists()
    caplog.clear()
    assert main([*args[:-len(model_args(weights)) - 2], "--reference", str(tmp_path / "missing.json"), *model_args(weights)]) == 1
    assert "reference file not found" in caplog.text and not out.exists()


def test_adding_or_changing_the_reference_recalibrates_finished_parts_without_rescoring(
    calibrated, built, weights, references, tmp_path, caplog, monkeypatch
):
    out = tmp_path / "out"
    base = ["score-dataset", built["inputs"][0], "-o", str(out), "--part-size", "2", *model_args(weights)]
    assert main(base) == 0  # scored without a reference first
    names = sorted(child.name for child in out.glob("part-*.parquet"))
    assert "geometry_percentile" not in checks.read_output(out).column_names
    caplog.clear()
    assert main([*base, "--reference", str(references["grouped"][0])]) == 0
    assert "scored 0 image(s)" in caplog.text and f"recalibrated {len(names)} finished part(s)" in caplog.text
    assert sorted(child.name for child in out.glob("part-*.parquet")) == names
    # the same values as scoring with the reference from the start
    fresh = {row["path"]: row for row in checks.read_output(calibrated[1]).to_pylist() if row["path"]}
    for row in checks.read_output(out).to_pylist():
        for name in [*AXES, *CALIBRATED]:
            assert (row[name] is None) == (fresh[row["path"]][name] is None)
            if row[name] is not None:
                assert row[name] == pytest.approx(fresh[row["path"]][name], abs=1e-5), name
        assert row["reference_group"] == fresh[row["path"]]["reference_group"]
    caplog.clear()
    assert main([*base, "--reference", str(references["grouped"][0])]) == 0  # unchanged: nothing rewritten
    assert "recalibrated" not in caplog.text

    path, whole = references["whole"]
    assert main([*base, "--reference", str(path)]) == 0
    table = checks.read_output(out)
    rows = [row for row in table.to_pylist() if row["error"] is None]
    direct = whole.calibrate(np.asarray([[row[a] for a in AXES] for row in rows], dtype=np.float32), AXES)
    np.testing.assert_allclose([[row[f"{a}_percentile"] for a in AXES] for row in rows], direct.percentiles.numpy(), atol=1e-5)
    np.testing.assert_allclose([[row[f"{a}_win"] for a in AXES] for row in rows], direct.win.numpy(), atol=1e-5)
    assert {row["reference_group"] for row in rows} == {None}
    assert {pq.read_schema(file).metadata[b"creward.reference.name"] for file in out.glob("part-*.parquet")} == {b"whole"}

    caplog.clear()
    assert main(base) == 2  # calibrated parts, no reference: refused, nothing changed
    assert "holds percentiles against reference 'whole'" in caplog.text and "--reference" in caplog.text

    # a recalibration interrupted after its first part is finished by the next run
    from creward.dataset.output import ScoresFolder

    original, written = ScoresFolder._write_table, []

    def interrupted(self, name, rows):
        if written:
            raise KeyboardInterrupt
        written.append(name)
        return original(self, name, rows)

    monkeypatch.setattr(ScoresFolder, "_write_table", interrupted)
    assert main([*base, "--reference", str(references["grouped"][0])]) == 130
    monkeypatch.undo()
    assert sorted(pq.read_schema(file).metadata[b"creward.reference.name"] for file in out.glob("part-*.parquet")) == sorted(
        [b"grouped"] + [b"whole"] * (len(names) - 1))
    caplog.clear()
    assert main([*base, "--reference", str(references["grouped"][0])]) == 0
    assert f"recalibrated {len(names) - 1} finished part(s)" in caplog.text and "scored 0 image(s)" in caplog.text
    assert {pq.read_schema(file).metadata[b"creward.reference.name"] for file in out.glob("part-*.parquet")} == {b"grouped"}


def test_a_column_grouped_reference_uses_the_carried_column(built, weights, references, tmp_path, caplog):
    lists = built["inputs"][1:3]  # the Parquet list (site a, b, c) and the CSV list (site z)
    path, by_site = references["sites"]
    out = tmp_path / "out"
    args = ["score-dataset", *lists, "-o", str(out), "--reference", str(path), *model_args(weights)]
    assert main(args) == 1
    assert "grouped by column:site" in caplog.text and "--columns site" in caplog.text and not out.exists()
    caplog.clear()
    assert main([*args, "--columns", "site"]) == 0
    rows = [row for row in checks.read_output(out).to_pylist() if row["error"] is None]
    assert {row["site"]: row["reference_group"] for row in rows} == {"a": "a", "b": None, "z": "z"}
    assert "has no group 'b'" in caplog.text
    for row in rows:
        expected = by_site.calibrate(np.asarray([[row[a] for a in AXES]], dtype=np.float32), AXES, [row["site"]])
        np.testing.assert_allclose([row[f"{a}_percentile"] for a in AXES], expected.percentiles[0].numpy(), atol=1e-5)
    forced = tmp_path / "forced"
    assert main(["score-dataset", *lists, "-o", str(forced), "--reference", str(path), "--group", "z", *model_args(weights)]) == 0
    assert {row["reference_group"] for row in checks.read_output(forced).to_pylist() if row["error"] is None} == {"z"}
