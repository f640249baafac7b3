"""``creward score-dataset --engine local``: equality with ``creward score``, bad inputs, resume, filtering.

Tiny random CLIP weights and small datasets built here (``dataset_data``, ``dataset_checks``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

import dataset_checks as checks  # noqa: E402
import dataset_data as data  # noqa: E402
from creward.cli.main import main  # noqa: E402

pytestmark = pytest.mark.unit
AXES = checks.AXES


@pytest.fixture(scope="module")
def weights(dataset_weights):
    return dataset_weights


@pytest.fixture(scope="module")
def built(dataset_inputs):
    return dataset_inputs


@pytest.fixture(scope="module")
def expected(dataset_expected):
    return dataset_expected


def model_args(weights):
    return ["--head", str(weights["head"]), "--backbone-weights", str(weights["backbone"]), "--device", "cpu", "--batch-size", "3"]


@pytest.fixture(scope="module")
def scored(built, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "out"
    code = main(["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption", *model_args(weights)])
    return code, out


def test_scores_equal_creward_score_for_folders_lists_and_shards(scored, built, expected):
    code, out = scored
    assert code == 0
    table = checks.read_output(out)
    checks.check_scores(table, built, expected)
    checks.check_complete(out, table)
    rows = table.to_pylist()
    # keys: relative to the folder, the path as written in a list, the WebDataset key in a shard
    assert {row["key"] for row in rows if row["path"] and "folder" in row["path"]} >= {"img_00.png", "sub/img_01.jpg"}
    assert {row["folder"] for row in rows if row["path"] and "/folder/" in row["path"]} >= {"", "sub"}
    assert {row["site"] for row in rows if row["path"] and "/listed/" in row["path"]} == {"a", "b", "c", "z"}
    assert {row["caption"] for row in rows if row["shard"] and row["shard"].endswith("00000.tar")} == {"image 0", "image 1", "image 2"}


def test_parquet_metadata_names_and_hashes_head_and_backbone(scored, weights):
    _, out = scored
    import hashlib

    from creward.models.identity import weights_identity

    metadata = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
    assert metadata[b"creward.head.name"] == weights["head"].name.encode()
    assert metadata[b"creward.head.sha256"] == ("sha256:" + hashlib.sha256(weights["head"].read_bytes()).hexdigest()).encode()
    assert metadata[b"creward.backbone.name"] == b"clip"
    assert metadata[b"creward.backbone.weights_id"] == weights_identity(weights["backbone"]).encode()
    assert json.loads(metadata[b"creward.axes"]) == AXES


def test_bad_inputs_become_error_rows_not_a_crash(scored, built):
    code, out = scored
    assert code == 0  # some images were unreadable, most were scored
    checks.check_bad_rows(checks.read_output(out), built)


def test_rerun_skips_finished_parts_and_another_head_is_refused(scored, built, weights, tmp_path, caplog):
    _, out = scored
    before = {child.name: child.stat().st_mtime_ns for child in out.glob("part-*.parquet")}
    assert main(["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption", *model_args(weights)]) == 0
    assert {child.name: child.stat().st_mtime_ns for child in out.glob("part-*.parquet")} == before
    assert "scored 0 image(s)" in caplog.text and f"{len(before)} already finished" in caplog.text
    other = tmp_path / "other.safetensors"
    from creward.models.head import build_head, save_head

    save_head(build_head(128), other, "clip")
    caplog.clear()
    args = ["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption", "--head", str(other),
            "--backbone-weights", str(weights["backbone"]), "--device", "cpu"]
    assert main(args) == 2
    assert "holds scores from another setup" in caplog.text and "head_sha256" in caplog.text and "--overwrite" in caplog.text
    assert {child.name: child.stat().st_mtime_ns for child in out.glob("part-*.parquet")} == before


def test_unusable_inputs_are_clear_messages_with_exit_2(weights, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["score-dataset", str(tmp_path / "nowhere"), "-o", str(out), *model_args(weights)]) == 2
    assert "no such file or folder" in caplog.text and "nowhere" in caplog.text
    listing = data.path_list(tmp_path / "list.parquet", [tmp_path / "a.png"])
    caplog.clear()
    assert main(["score-dataset", str(listing), "-o", str(out), "--path-column", "file", *model_args(weights)]) == 2
    assert "has no column 'file'" in caplog.text and "columns: path" in caplog.text
    (tmp_path / "notes.txt").write_text("hello")
    caplog.clear()
    assert main(["score-dataset", str(tmp_path / "notes.txt"), "-o", str(out), *model_args(weights)]) == 2
    assert "unsupported input" in caplog.text
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    data.image_folder(tmp_path / "imgs", count=1)
    caplog.clear()
    assert main(["score-dataset", str(tmp_path / "imgs"), "-o", str(foreign), *model_args(weights)]) == 2
    assert "was not written by creward score-dataset" in caplog.text and (foreign / "mine.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as exit_info:
        main(["score-dataset", str(tmp_path / "imgs"), "-o", str(out), "--keep-top-percent", "10", *model_args(weights)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["score-dataset", str(tmp_path / "imgs"), "-o", str(out), "--keep-top-percent", "0", "--keep-to", str(tmp_path / "k")])
    assert exit_info.value.code == 2


def test_filter_keeps_top_percent_per_group_and_writes_images_and_shards(scored, built, weights, tmp_path):
    _, out = scored
    keep = tmp_path / "kept"
    args = ["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption", *model_args(weights),
            "--keep-top-percent", "50", "--weights", "1,0,0.5,1", "--min-score", "-1000", "--per-group", "shard",
            "--keep-to", str(keep), "--copy-images", "--write-shards"]
    assert main(args) == 0
    table = checks.read_output(out).to_pylist()
    value = lambda row: row["geometry"] + 0.5 * row["texture"] + row["overall"]  # noqa: E731
    expected = set()
    groups: dict = {}
    for position, row in enumerate(table):
        if row["error"] is None:
            groups.setdefault(row["shard"] or "", []).append((position, row))
    for members in groups.values():
        ranked = sorted(members, key=lambda item: (-value(item[1]), item[0]))
        expected |= {(row["shard"], row["key"]) for _, row in ranked[: int(np.ceil(len(ranked) / 2))]}
    kept = pq.read_table(keep / "kept.parquet").to_pylist()
    assert {(row["shard"], row["key"]) for row in kept} == expected
    np.testing.assert_allclose([row["value"] for row in kept], [value(row) for row in kept], rtol=1e-5)
    assert (keep / "keys.txt").read_text().splitlines() == [row["key"] for row in kept]
    summary = json.loads((keep / "summary.json").read_text())
    assert summary["kept"] == len(expected) and summary["rule"] == "top 50% by 1*geometry + 0.5*texture + 1*overall and 1*geometry + 0.5*texture + 1*overall >= -1000 per shard"
    # copied images: files under their key, tar members under <shard>/<member>, bytes unchanged
    for row in kept:
        if row["shard"]:
            copy = keep / "images" / Path(row["shard"]).stem / row["member"]
            with tarfile.open(row["shard"]) as archive:
                assert copy.read_bytes() == archive.extractfile(row["member"]).read()
        else:
            inside = Path(*[part for part in Path(row["key"]).parts if part not in ("/", "..", ".")])
            assert (keep / "images" / inside).read_bytes() == Path(row["path"]).read_bytes()
    # new shards: every member of each kept sample, plus its scores
    shard = keep / "shards" / "00000.tar"
    with tarfile.open(shard) as archive:
        names = archive.getnames()
        kept_keys = sorted(row["key"] for row in kept if row["shard"] and row["shard"].endswith("00000.tar"))
        assert sorted({name.split(".")[0] for name in names}) == kept_keys
        for key in kept_keys:
            assert {f"{key}.jpg", f"{key}.json", f"{key}.txt", f"{key}.creward.json"} <= set(names)
            record = json.loads(archive.extractfile(f"{key}.creward.json").read())
            assert record["key"] == key and set(AXES) <= set(record)
    assert not [child for child in keep.parent.iterdir() if child.name.startswith(".")]
    # a second run replaces the folder whole
    assert main([*args[:-2], "--keep-top-percent", "100"]) == 0
    assert not (keep / "shards").exists() and len(pq.read_table(keep / "kept.parquet")) == sum(len(m) for m in groups.values())


def test_killed_driver_resumes_without_rescoring_finished_parts(built, weights, tmp_path):
    out = tmp_path / "out"
    inputs = [str(built["inputs"][0]), str(built["shards"][0]), str(built["shards"][1])]
    script = textwrap.dedent(f"""
        import sys, time
        sys.argv = ["creward"]
        from creward.dataset.job import DatasetJob, run_job
        job = DatasetJob(inputs={inputs!r}, output={str(out)!r}, head={str(weights['head'])!r},
                         backbone_weights={str(weights['backbone'])!r}, device="cpu", part_size=1, progress=False)
        run_job(job, on_part=lambda record: time.sleep(30))  # stands still after the first part: killed here
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "_creward_parts.jsonl"
    deadline = time.monotonic() + 240
    while not (manifest.is_file() and manifest.read_text().strip()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    finished = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(finished) == 1
    first = out / finished[0]["file"]
    stamp = first.stat().st_mtime_ns
    records = []
    from creward.dataset.job import DatasetJob, run_job

    summary = run_job(DatasetJob(inputs=inputs, output=out, head=weights["head"], backbone_weights=weights["backbone"], device="cpu", part_size=1,
                                 progress=False), on_part=records.append)
    assert summary.parts_skipped == 1 and summary.parts == 7 and len(records) == 6  # 5 files (one broken) + 2 shards
    assert finished[0]["part"] not in {record["part"] for record in records}
    assert first.stat().st_mtime_ns == stamp
    table = checks.read_output(out)
    checks.check_complete(out, table)
    assert len(table) == 4 + 1 + 3 + 3  # 4 images + broken.png, and 3 samples in each shard


def test_missing_ray_extra_names_the_pip_command(weights, built, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the `ray` extra were not installed
    assert main(["score-dataset", built["inputs"][0], "-o", str(tmp_path / "out"), "--engine", "ray", *model_args(weights)]) == 1
    assert "pip install" in caplog.text and "ray" in caplog.text
    assert not (tmp_path / "out").exists()


def test_help_does_not_import_ray_or_pyarrow():
    code = "import sys; from creward.cli.main import build_parser; build_parser(); print(sorted(m for m in ('ray', 'pyarrow', 'creward.dataset.job') if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_pixels_travel_to_ray_actors_in_the_backbones_dtype_exactly():
    import torch

    from creward.dataset.ray_engine import _from_transfer, _to_transfer, transfer_dtype

    pixels = torch.randn(2, 3, 8, 8)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        assert transfer_dtype(name) == name
        assert torch.equal(_from_transfer(_to_transfer(pixels, name), name), pixels.to(dtype))  # what the model casts to anyway
    assert transfer_dtype("auto") == "fp32"
