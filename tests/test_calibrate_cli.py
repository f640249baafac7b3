"""``creward calibrate`` and ``--reference`` / ``--min-percentile`` / ``--min-win`` in ``creward score`` and ``select``.

Tiny random clip weights (``builders``) and random images in two subject folders. Proves: a
reference built from ``creward score --json`` output equals, byte for byte, one built from the
images; ``score --reference`` adds percentiles and win probabilities equal to the library's, null
on error rows, in JSON, CSV and the table; ``select`` keeps exactly the images at or above a
percentile; mismatched heads, corrupt files and bad arguments are clear errors.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from builders import clip as clip_builder
from builders.comfyui_models import write_clip_head
from creward.cli.main import main
from creward.models.reference_set import ReferenceSet
from official_reference import write_images

pytestmark = pytest.mark.unit

AXES = ["geometry", "material", "texture", "overall"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("calibrate")
    backbone = clip_builder.build(base / "clip", "hub")
    head = write_clip_head(base / "creward_clip.safetensors", spread=40.0)
    other_head = write_clip_head(base / "other.safetensors", seed=5)
    images = base / "images"
    for subject, seed in (("chair", 1), ("lamp", 2)):
        (images / subject).mkdir(parents=True)
        write_images(images / subject, sizes=[(48 + 8 * i, 64 + 4 * i) for i in range(5)], seed=seed)
    model = ["--head", str(head), "--backbone-weights", str(backbone), "--device", "cpu", "--batch-size", "4"]
    return {"base": base, "backbone": backbone, "head": head, "other": other_head, "images": images, "model": model}


def run_json(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 and captured.out.strip().startswith("[") else captured.out), captured.err


@pytest.fixture(scope="module")
def scored(setup, tmp_path_factory):
    """``creward score --json`` of the images, and a folder-grouped reference built from the images."""
    out = tmp_path_factory.mktemp("scored")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["score", str(setup["images"]), "--json", *setup["model"]]) == 0
    (out / "scores.json").write_text(buffer.getvalue())
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["calibrate", str(setup["images"]), "-o", str(out / "from_images.json"), "--group-by", "folder", "--name", "furniture", *setup["model"]]) == 0
    return {"json": out / "scores.json", "reference": out / "from_images.json", "items": json.loads(buffer.getvalue())}


def test_reference_from_score_json_equals_reference_from_images(setup, scored, tmp_path, capsys):
    target = tmp_path / "refs" / "from_json.json"
    assert main(["calibrate", str(scored["json"]), "-o", str(target), "--group-by", "folder", "--name", "furniture", "--head", str(setup["head"])]) == 0
    assert "wrote" in capsys.readouterr().out
    assert target.read_bytes() == scored["reference"].read_bytes()
    reference = ReferenceSet.load(target)
    assert reference.count == 10 and sorted(reference.groups) == ["chair", "lamp"]
    assert reference.scorer.head == "creward_clip.safetensors" and reference.scorer.backbone == "clip"
    assert not list(target.parent.glob("*.partial"))


def test_reference_from_csv_matches_to_the_csv_precision(setup, scored, tmp_path):
    table = tmp_path / "scores.csv"
    assert main(["score", str(setup["images"]), "--csv", str(table), *setup["model"]]) == 0
    assert main(["calibrate", str(table), "-o", str(tmp_path / "ref.json"), "--head", str(setup["head"])]) == 0
    from_csv = ReferenceSet.load(tmp_path / "ref.json")
    from_images = ReferenceSet.load(scored["reference"])
    for axis in AXES:
        np.testing.assert_allclose(from_csv.whole.axes[axis].values, from_images.whole.axes[axis].values, atol=1e-6)


def test_score_with_reference_adds_percentiles_and_win_probabilities(setup, scored, capsys):
    broken = setup["images"] / "chair" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    try:
        code, items, _ = run_json(capsys, ["score", str(setup["images"] / "chair"), "--json", "--reference", str(scored["reference"]), *setup["model"]])
    finally:
        broken.unlink()
    assert code == 0
    reference = ReferenceSet.load(scored["reference"])
    good = [item for item in items if "error" not in item or item.get("error") is None]
    bad = [item for item in items if item.get("error")]
    assert len(good) == 5 and len(bad) == 1
    expected = reference.calibrate(torch.tensor([[item[axis] for axis in AXES] for item in good]), AXES, "chair")
    for row, item in enumerate(good):
        assert item["reference_group"] == "chair"
        for a, axis in enumerate(AXES):
            assert item[f"{axis}_percentile"] == pytest.approx(expected.percentiles[row, a].item(), abs=1e-3)
            assert item[f"{axis}_win"] == pytest.approx(expected.win[row, a].item(), abs=1e-5)
    # These images are the chair group itself: their percentiles are the mid-ranks 10, 30, ..., 90, within one
    # image's step (a score computed in another batch can differ from its reference copy in the last bits).
    assert np.abs(np.sort([item["overall_percentile"] for item in good]) - [10.0, 30.0, 50.0, 70.0, 90.0]).max() <= 10.0
    assert all(bad[0][f"{axis}_{kind}"] is None for axis in AXES for kind in ("percentile", "win"))


def test_score_with_reference_in_csv_and_table(setup, scored, tmp_path, capsys):
    target = tmp_path / "scores.csv"
    common = ["--reference", str(scored["reference"]), "--group", "lamp", *setup["model"]]
    assert main(["score", str(setup["images"] / "chair"), "--csv", str(target), *common]) == 0
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 5 and all(row["reference_group"] == "lamp" for row in rows)
    assert all(0.0 <= float(row["texture_percentile"]) <= 100.0 and 0.0 <= float(row["texture_win"]) <= 1.0 for row in rows)
    capsys.readouterr()
    assert main(["score", str(setup["images"] / "chair"), *common]) == 0
    table = capsys.readouterr().out
    assert "pct.ove" in table and "win.geo" in table and "vs reference furniture (group lamp, 5 images)" in table


def test_select_by_percentile_keeps_exactly_the_images_at_or_above_it(setup, scored, tmp_path, capsys):
    out = tmp_path / "picked"
    args = ["select", str(setup["images"]), "--top-k", "0", "--axis", "texture", "--min-percentile", "50", "--out", str(out),
            "--reference", str(scored["reference"]), *setup["model"]]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    reference = ReferenceSet.load(scored["reference"])
    items = scored["items"]
    calibration = reference.calibrate(torch.tensor([[item[axis] for axis in AXES] for item in items]), AXES,
                                      reference.groups_for([item["path"] for item in items]))
    expected = {items[row]["path"] for row in range(len(items)) if calibration.percentiles[row, 2] >= 50}
    assert {item["source"].split("images/", 1)[1] for item in manifest["images"]} == {path.split("images/", 1)[1] for path in expected}
    assert manifest["minimum_of"] == "percentile" and manifest["reference"] == "furniture"
    assert all(item["texture_percentile"] >= 50 for item in manifest["images"])
    values = [item["value"] for item in manifest["images"]]
    assert values == sorted(values, reverse=True)  # ranked by score


def test_select_by_percentile_without_reference_keeps_the_top_share(setup, tmp_path, capsys):
    out = tmp_path / "top"
    assert main(["select", str(setup["images"]), "--top-k", "0", "--min-percentile", "70", "--out", str(out), *setup["model"]]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # Within 10 images (leave-one-out), percentile >= 70 is the best 4 (100, 88.9, 77.8, 66.7 -> 3 of them).
    assert len(manifest["images"]) == 3 and manifest["calibration"] == "within this batch (10 images)"
    assert "within this batch" in capsys.readouterr().out


def test_select_by_win_probability(setup, scored, tmp_path):
    out = tmp_path / "wins"
    code = main(["select", str(setup["images"]), "--top-k", "1", "--min-win", "0.0", "--out", str(out),
                 "--reference", str(scored["reference"]), *setup["model"]])
    assert code == 0 and len(json.loads((out / "manifest.json").read_text())["images"]) == 1
    assert main(["select", str(setup["images"]), "--top-k", "1", "--min-win", "1.0", "--out", str(tmp_path / "none"),
                 "--reference", str(scored["reference"]), *setup["model"]]) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-percentile", "150"], "between 0 and 100"),
        (["--min-win", "80"], "--min-win: expected a number between 0 and 1"),
        (["--min-percentile", "90", "--weights", "1,0,0,1"], "not --weights"),
        (["--min", "0.1", "--min-percentile", "90"], "not allowed with argument"),
    ],
)
def test_select_usage_errors_exit_2(setup, tmp_path, capsys, extra, message):
    try:  # argparse's own errors raise SystemExit; a UsageError returns 2 (cli.main prints the usage)
        code = main(["select", str(setup["images"]), "--top-k", "1", "--out", str(tmp_path / "x"), *extra, *setup["model"]])
    except SystemExit as info:
        code = info.code
    assert code == 2 and message in capsys.readouterr().err


def test_reference_of_another_head_is_refused_naming_both(setup, scored, capsys):
    args = ["score", str(setup["images"]), "--reference", str(scored["reference"]),
            "--head", str(setup["other"]), "--backbone-weights", str(setup["backbone"]), "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "built with head creward_clip.safetensors" in err and "come from head other.safetensors" in err
    assert "loaded CLIP" not in err  # refused before the backbone was loaded


def test_corrupt_reference_file_is_a_clear_error(setup, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "creward-reference", "version": 1, "name": "x", "scorer": {}}')
    assert main(["score", str(setup["images"]), "--reference", str(bad), *setup["model"]]) == 1
    assert f"{bad}: 'scorer': missing head" in capsys.readouterr().err


def test_calibrate_from_parquet_with_recorded_head_and_a_mismatch(setup, scored, tmp_path, capsys):
    import pyarrow
    import pyarrow.parquet as pq

    from creward.models.scorer_identity import ScorerIdentity

    items = scored["items"]
    identity = ScorerIdentity.of_head_file(setup["head"])
    table = pyarrow.table({
        "path": [item["path"] for item in items] + ["lost.png"],
        **{axis: pyarrow.array([item[axis] for item in items] + [None], pyarrow.float32()) for axis in AXES},
        "error": [None] * len(items) + ["unreadable"],
    }).replace_schema_metadata({b"creward.scorer": json.dumps(identity.as_dict()).encode()})
    pq.write_table(table, tmp_path / "scores.parquet")
    target = tmp_path / "ref.json"
    assert main(["calibrate", str(tmp_path / "scores.parquet"), "-o", str(target), "--group-by", "folder", "--name", "furniture"]) == 0
    assert target.read_bytes() == scored["reference"].read_bytes()  # float32 columns hold the same values
    assert "skipping 1 row(s) with an error" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "scores.parquet"), "-o", str(tmp_path / "x.json"), "--head", str(setup["other"])]) == 1
    assert "was scored with head creward_clip.safetensors" in capsys.readouterr().err


def test_calibrate_from_the_dataset_jobs_parquet_checks_the_head_file(setup, scored, tmp_path, capsys):
    """The dataset job (``creward score-dataset``) records the head file's SHA-256, name and backbone in its part files."""
    import hashlib

    import pyarrow
    import pyarrow.parquet as pq

    items = scored["items"]
    metadata = {
        "creward.format": "1", "creward.axes": json.dumps(AXES), "creward.head.name": "creward_clip.safetensors",
        "creward.head.sha256": "sha256:" + hashlib.sha256(setup["head"].read_bytes()).hexdigest(), "creward.backbone.name": "clip",
    }
    out = tmp_path / "dataset"
    out.mkdir()
    for part, rows in enumerate((items[:6], items[6:])):
        table = pyarrow.table({
            "key": [item["path"] for item in rows], "path": [item["path"] for item in rows],
            **{axis: pyarrow.array([item[axis] for item in rows], pyarrow.float32()) for axis in AXES},
            "error": [None] * len(rows),
        }).replace_schema_metadata(metadata)
        pq.write_table(table, out / f"part-{part:04d}.parquet")
    (out / "_creward_job.json").write_text("{}")
    target = tmp_path / "ref.json"
    assert main(["calibrate", str(out), "-o", str(target), "--group-by", "folder", "--name", "furniture", "--head", str(setup["head"])]) == 0
    assert target.read_bytes() == scored["reference"].read_bytes()
    assert main(["calibrate", str(out), "-o", str(tmp_path / "x.json"), "--head", str(setup["other"])]) == 1
    assert "was scored with head creward_clip.safetensors (file sha256:" in capsys.readouterr().err


def test_calibrate_errors(setup, scored, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CREWARD_HEAD", raising=False)
    monkeypatch.setenv("CREWARD_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["calibrate", str(scored["json"]), "-o", str(tmp_path / "r.json")]) == 1
    assert "do not say which head made them in a form a reference can use: pass --head FILE" in capsys.readouterr().err
    assert main(["calibrate", str(setup["images"]), "-o", str(tmp_path / "r.json"), "--group-by", "column:prompt", *setup["model"]]) == 2
    assert "images have no columns" in capsys.readouterr().err  # usage errors: exit 2 (cli.arguments.UsageError)
    assert main(["calibrate", str(scored["json"]), "-o", str(tmp_path / "r.json"), "--group-by", "subject"]) == 2
    assert "usage: creward calibrate" in capsys.readouterr().err
    nan = tmp_path / "nan.json"
    nan.write_text('[{"path": "a.png", "geometry": NaN, "material": 0, "texture": 0, "overall": 0}]')
    assert main(["calibrate", str(nan), "-o", str(tmp_path / "r.json"), "--head", str(setup["head"])]) == 1
    assert "1 of 1 images have NaN or infinite scores (first: " + f"{nan} row 0 (a.png))" in capsys.readouterr().err
    errors_only = tmp_path / "errors.json"
    errors_only.write_text('[{"path": "a.png", "error": "unreadable"}]')
    assert main(["calibrate", str(errors_only), "-o", str(tmp_path / "r.json"), "--head", str(setup["head"])]) == 1
    assert "no scores to build a reference from" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    grouped = tmp_path / "grouped.json"
    grouped.write_text('[{"path": "a.png", "prompt": "a chair", "geometry": 0, "material": 0, "texture": 0, "overall": 0},'
                       ' {"path": "b.png", "geometry": 1, "material": 0, "texture": 0, "overall": 0}]')
    assert main(["calibrate", str(grouped), "-o", str(tmp_path / "r.json"), "--group-by", "column:prompt", "--head", str(setup["head"])]) == 1
    assert "1 of 2 rows have no group" in capsys.readouterr().err
