"""The `creward` command line end to end, on tiny random CLIP weights built by the tests."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from builders import clip as clip_builder
from creward.cli.main import main
from official_reference import official_head, official_scores, save_official_checkpoint, write_images

pytestmark = pytest.mark.unit

AXES = ["geometry", "material", "texture", "overall"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    backbone = clip_builder.build(folder / "clip-hub", "hub")
    head = official_head(clip_builder.FEATURE_DIM)
    checkpoint = save_official_checkpoint(head, folder / "reward_head_best.ckpt")
    converted = folder / "creward_clip.safetensors"
    assert main(["convert", str(checkpoint), "--backbone", "clip", "-o", str(converted)]) == 0
    return {"backbone": backbone, "head": head, "checkpoint": checkpoint, "converted": converted}


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    paths = write_images(folder, sizes=((300, 200), (97, 131), (224, 224)))
    paths += write_images(folder / "nested", sizes=((64, 400),), seed=3)
    return folder, sorted(paths)


def run_json(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    run_json.last_err = captured.err
    return code, (json.loads(captured.out) if code == 0 else captured.out)


def test_score_json_reproduces_the_official_formula(weights, images, capsys):
    folder, paths = images
    code, items = run_json(capsys, ["score", str(folder), "--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"]), "--json", "--device", "cpu", "--batch-size", "3"])
    assert code == 0
    assert [item["path"] for item in items] == [str(path) for path in paths]
    assert all(list(item) == ["path", *AXES, "error"] and item["error"] is None for item in items)  # the documented schema
    got = torch.tensor([[item[axis] for axis in AXES] for item in items])
    expected = official_scores("clip", weights["backbone"], weights["head"], paths)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_official_ckpt_is_accepted_directly_with_backbone(weights, images, capsys):
    folder, paths = images
    code, items = run_json(capsys, ["score", str(paths[0]), "--head", str(weights["checkpoint"]), "--backbone", "clip", "--backbone-weights", str(weights["backbone"]), "--json"])
    assert code == 0 and len(items) == 1
    expected = official_scores("clip", weights["backbone"], weights["head"], paths[:1])
    torch.testing.assert_close(torch.tensor([[items[0][a] for a in AXES]]), expected, atol=1e-4, rtol=0)


def test_official_ckpt_without_backbone_says_to_pass_it(weights, images, capsys):
    folder, _ = images
    assert main(["score", str(folder), "--head", str(weights["checkpoint"]), "--backbone-weights", str(weights["backbone"])]) == 1
    assert "--backbone" in capsys.readouterr().err


def test_weights_found_through_environment_and_models_folder(weights, images, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    (models / "backbones").mkdir(parents=True)
    (models / "creward_clip.safetensors").write_bytes(weights["converted"].read_bytes())
    (models / "backbones" / "clip").symlink_to(weights["backbone"], target_is_directory=True)
    monkeypatch.setenv("CREWARD_MODELS_DIR", str(models))
    folder, paths = images
    code, items = run_json(capsys, ["score", str(paths[0]), "--json"])
    assert code == 0 and len(items) == 1


def test_csv_and_table_outputs(weights, images, tmp_path, capsys):
    folder, paths = images
    target = tmp_path / "out" / "scores.csv"
    common = ["--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"])]
    assert main(["score", str(folder), "--csv", str(target), *common]) == 0
    rows = list(csv.DictReader(target.open()))
    assert [row["path"] for row in rows] == [str(p) for p in paths] and all(row["error"] == "" for row in rows)
    assert list(rows[0]) == ["path", *AXES, "error"]
    assert not list(target.parent.glob("*.partial"))
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # like any file the user creates
    assert main(["score", str(folder), *common]) == 0
    table = capsys.readouterr().out
    assert "geometry" in table and str(paths[0]) in table


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_unreadable_files_keep_their_row_with_null_scores_in_json_and_csv(weights, images, tmp_path, capsys):
    folder, paths = images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(folder / "rgba.png")
    Image.fromarray(np.arange(1600, dtype=np.uint8).reshape(40, 40)).convert("P").save(folder / "palette.png")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "gray.png")
    (folder / "readme.txt").write_text("not an image")
    named = tmp_path / "notes.txt"  # named explicitly: always gets a row
    named.write_text("not an image either")
    common = ["--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"])]
    code, items = run_json(capsys, ["score", str(folder), str(named), "--json", *common])
    assert code == 0
    by_name = {item["path"].rsplit("/", 1)[-1]: item for item in items}
    for name in ("broken.png", "notes.txt"):
        row = by_name[name]
        assert list(row) == ["path", *AXES, "error"] and all(row[axis] is None for axis in AXES)
        assert row["error"] and name not in row["error"]  # the reason; the path is its own field
    assert by_name["notes.txt"]["error"] == "not a readable image (no image format PIL knows)"
    assert by_name["broken.png"]["error"].startswith("could not be decoded")
    for name in ("rgba.png", "palette.png", "sixteen.png", "gray.png"):
        assert all(np.isfinite(by_name[name][axis]) for axis in AXES) and by_name[name]["error"] is None
    assert "readme.txt" not in by_name  # a folder's non-image file is left out, with one warning
    err = run_json.last_err
    assert "WARNING: left out 1 file(s) in the folders that are not images by their extension" in err and "readme.txt" in err
    assert f"WARNING: skipping {folder / 'broken.png'}: could not be decoded" in err

    target = tmp_path / "scores.csv"
    assert main(["score", str(folder), str(named), "--csv", str(target), *common]) == 0
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(target.open())}
    assert rows.keys() == by_name.keys()
    assert [rows["broken.png"][axis] for axis in AXES] == [""] * 4 and rows["broken.png"]["error"] == by_name["broken.png"]["error"]


def test_nothing_scored_exits_1_and_no_images_exits_2(weights, tmp_path, capsys):
    (tmp_path / "odd").mkdir()
    empty = tmp_path / "odd" / "empty.jpg"
    empty.write_bytes(b"")
    code, output = run_json(capsys, ["score", str(empty), "--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"]), "--json"])
    assert code == 1
    assert json.loads(output)[0]["error"].startswith("not a readable image")  # the row is still printed
    assert "ERROR: none of the 1 file(s) could be read as an image" in run_json.last_err
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty"), "--head", str(weights["converted"])]) == 2
    err = capsys.readouterr().err
    assert "usage: creward score" in err and "creward score: error: no images found" in err


def test_missing_backbone_weights_say_what_and_where(weights, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CREWARD_MODELS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CREWARD_BACKBONE_WEIGHTS", raising=False)
    folder, _ = images
    assert main(["score", str(folder), "--head", str(weights["converted"])]) == 1
    err = capsys.readouterr().err
    assert "backbone weights for 'clip' not found" in err and "clip-vit-large-patch14" in err and str(tmp_path / "nowhere") in err


def test_files_that_are_not_weights_say_so_without_torch_load_advice(weights, images, tmp_path, capsys):
    folder, paths = images
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    assert main(["info", str(photo)]) == 1
    err = capsys.readouterr().err
    assert f"ERROR: {photo} is not a CREward head" in err and "weights_only" not in err and "False" not in err
    assert main(["score", str(paths[0]), "--head", str(weights["converted"]), "--backbone-weights", str(photo)]) == 1
    err = capsys.readouterr().err
    assert str(photo) in err and "weights_only" not in err and "will likely succeed" not in err


def test_head_with_axes_metadata_that_is_not_a_json_list_names_the_file_and_field(weights, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights["converted"]), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = dict(handle.metadata())
    bad = tmp_path / "bad_axes.safetensors"
    save_file(state, str(bad), metadata={**metadata, "creward.axes": "geometry,material,texture,overall"})
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad_axes.safetensors" in err and "'creward.axes'" in err and "JSON list" in err and "Expecting value" not in err


def test_head_files_get_the_usual_permissions(weights):
    assert weights["converted"].stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_info_aligns_its_fields(weights, capsys):
    assert main(["info", str(weights["converted"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1, lines  # every value starts in the same column
    assert lines[0].startswith("file:") and any(line.startswith("feature width:") for line in lines)


def test_truncated_and_foreign_head_files_are_clear_errors(weights, images, tmp_path, capsys):
    folder, _ = images
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights["converted"].read_bytes()[:200])
    assert main(["score", str(folder), "--head", str(truncated), "--backbone-weights", str(weights["backbone"])]) == 1
    assert "truncated.safetensors" in capsys.readouterr().err
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2, 2)}, str(foreign))
    assert main(["info", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert "foreign.safetensors is not a CREward head" in err and "encoder.weight" in err


def test_wrong_head_width_names_both_widths_and_files(weights, images, tmp_path, capsys):
    folder, _ = images
    wide = tmp_path / "wide.ckpt"
    save_official_checkpoint(official_head(clip_builder.FEATURE_DIM * 2), wide)
    assert main(["score", str(folder), "--head", str(wide), "--backbone", "clip", "--backbone-weights", str(weights["backbone"])]) == 1
    err = capsys.readouterr().err
    assert f"{clip_builder.FEATURE_DIM * 2}-wide" in err and f"{clip_builder.FEATURE_DIM}-wide" in err and "wide.ckpt" in err


def test_unknown_backbone_is_refused_by_the_parser(weights, capsys):
    with pytest.raises(SystemExit):
        main(["convert", str(weights["checkpoint"]), "--backbone", "resnet"])
    assert "invalid choice" in capsys.readouterr().err


def test_pickle_with_code_is_refused_by_convert(tmp_path, capsys):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"0.weight": Payload()}))
    assert main(["convert", str(evil), "--backbone", "clip", "-o", str(tmp_path / "out.safetensors")]) == 1
    captured = capsys.readouterr()
    assert "weights-only" in captured.err and "this must never run" not in captured.out
    assert not (tmp_path / "out.safetensors").exists()


def test_info_shows_metadata(weights, capsys):
    assert main(["info", str(weights["converted"]), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["backbone"] == "clip" and record["axes"] == AXES and record["feature_dim"] == clip_builder.FEATURE_DIM
    assert record["metadata"]["creward.source"] == "reward_head_best.ckpt"


def test_select_copies_top_k_with_manifest(weights, images, tmp_path, capsys):
    folder, paths = images
    out = tmp_path / "picked"
    common = ["--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"])]
    assert main(["select", str(folder), "--top-k", "2", "--axis", "texture", "--out", str(out), *common]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    expected = official_scores("clip", weights["backbone"], weights["head"], paths)[:, 2]
    best = expected.argsort(descending=True)[:2].tolist()
    assert [item["source"] for item in manifest["images"]] == [str(paths[i].resolve()) for i in best]
    assert [item["rank"] for item in manifest["images"]] == [1, 2]
    for item in manifest["images"]:
        assert (out / item["file"]).read_bytes() == open(item["source"], "rb").read()
    capsys.readouterr()
    # a minimum nothing reaches: exit 1, a message, nothing copied
    out2 = tmp_path / "none"
    assert main(["select", str(folder), "--top-k", "2", "--weights", "1,0,0,1", "--min", "1e9", "--out", str(out2), *common]) == 1
    assert "no image reached" in capsys.readouterr().err and not out2.exists()


def test_select_twice_keeps_the_folder_equal_to_its_manifest(weights, images, tmp_path, capsys):
    folder, paths = images
    out = tmp_path / "picked"
    common = ["--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"])]
    assert main(["select", str(folder), "--top-k", "3", "--out", str(out), *common]) == 0
    first = sorted(path.name for path in out.iterdir())
    assert len(first) == 4
    # again without --overwrite: refused before anything loads, the folder untouched
    assert main(["select", str(folder), "--top-k", "1", "--out", str(out), "--head", str(tmp_path / "nowhere.safetensors")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == first
    # with --overwrite: exactly the new selection, nothing of the first run left
    assert main(["select", str(folder), "--top-k", "1", "--axis", "material", "--out", str(out), "--overwrite", *common]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(path.name for path in out.iterdir()) == sorted(["manifest.json", *(item["file"] for item in manifest["images"])])
    assert len(manifest["images"]) == 1 and manifest["criterion"] == "material"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".picked")]  # no staging folder left
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    # a folder holding other files is never replaced, even with --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["select", str(folder), "--top-k", "1", "--out", str(other), "--overwrite", *common]) == 2
    assert "not a creward select output" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"
    # --out inside the searched folder: its images are not scored again
    inside = folder / "picked"
    assert main(["select", str(folder), "--top-k", "0", "--out", str(inside), *common]) == 0
    assert main(["select", str(folder), "--top-k", "0", "--out", str(inside), "--overwrite", *common]) == 0
    assert len(json.loads((inside / "manifest.json").read_text())["images"]) == len(paths)


@pytest.mark.parametrize("argv, message", [
    (["score", "{image}", "--batch-size", "0"], "--batch-size: expected a number >= 1"),
    (["score", "{image}", "--device", "gpu"], "--device: expected auto, cpu, cuda, cuda:N or mps"),
    (["score", "{image}", "--csv", "{folder}"], "is a folder"),
    (["score", "{missing}"], "no such file or folder"),
    (["select", "{image}", "--top-k", "-1", "--out", "{out}"], "--top-k: expected a number >= 0"),
    (["select", "{image}", "--top-k", "1", "--weights", "1,0", "--out", "{out}"], "expected 4 axis weights"),
    (["select", "{image}", "--top-k", "1", "--weights", "0,0,0,0", "--out", "{out}"], "every weight"),
    (["explain", "{image}", "--alpha", "2"], "--alpha: expected a number between 0 and 1"),
    (["explain", "{image}", "--axis", "texture", "--weights", "1,0,0,0"], "cannot be combined"),
    (["explain", "{image}", "--axis", "weighted"], "--axis weighted needs --weights"),
    (["score", "{image}", "--max-pixels", "-5"], "--max-pixels: expected a number >= 0"),
])
def test_usage_errors_exit_2_before_anything_is_loaded(argv, message, images, tmp_path, capsys):
    folder, paths = images
    values = {"image": str(paths[0]), "folder": str(folder), "missing": str(tmp_path / "missing.png"), "out": str(tmp_path / "out")}
    # a head that does not exist: were anything loaded first, the error would be that (exit 1)
    argv = [part.format(**values) for part in argv] + ["--head", str(tmp_path / "nowhere.safetensors")]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"usage: creward {argv[0]}" in err and message in err, err


def test_cuda_device_on_a_machine_without_cuda_is_a_usage_error(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder, paths = images
    assert main(["score", str(paths[0]), "--device", "cuda:0", "--head", str(tmp_path / "nowhere.safetensors")]) == 2
    assert "--device: device 'cuda:0' was requested but CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--help"], ["--version"], ["score", "--help"], ["select", "--help"], ["calibrate", "--help"], ["explain", "--help"], ["convert", "--help"],
    ["info", "--help"], ["download", "--help"], ["train", "--help"], ["train", "label", "--help"],
    ["train", "features", "--help"], ["train", "fit", "--help"], ["train", "eval", "--help"],
    ["train", "lora", "--help"], ["train", "acquire", "--help"],
    ["train", "acquire", "--comfyui", "c", "--checkpoint", "k", "-o", "o", "--prompt", "p", "--steer", "prune", "--particles", "0"],
    ["score", "x.png", "--batch-size", "0"], ["select", "x.png", "--top-k", "1", "--out", "o", "--weights", "1,2"],
])
def test_help_version_and_usage_errors_never_import_torch(argv):
    code = (
        "import sys\n"
        "from creward.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(name for name in ('torch', 'torchvision', 'transformers', 'safetensors', 'openai') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", (argv, result.stdout[-500:], result.stderr[-500:])


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_is_written_for_users(capsys):
    texts = {}
    for command in ("score", "select", "calibrate", "explain", "convert", "info", "download", "train"):
        texts[command] = help_text(capsys, command)
        assert "``" not in texts[command] and "models." not in texts[command] and "temporary file" not in texts[command], texts[command]
    assert "one before the last" in texts["explain"]  # what --block's default really is for CLS-pooled models
    assert "fp32 gives the official numbers" in texts["score"]  # the precision choice is explained
    top = help_text(capsys)
    assert all(command in top for command in texts)


def test_log_lines_have_one_prefix_style(weights, images, capsys):
    folder, paths = images
    (folder / "broken.png").write_bytes(b"garbage")
    main(["score", str(folder), "--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"]), "--json"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.split(":", 1)[0] in ("DEBUG", "INFO", "WARNING", "ERROR")]
    assert lines and all(line.split(":", 1)[1].startswith(" ") for line in lines)
    assert not [line for line in lines if line.split(":", 1)[0].count(" ")], lines  # no logger names without --verbose
    assert any(line.startswith("INFO: CREward clip on cpu, fp32 (the official precision)") for line in lines)


@pytest.mark.parametrize("backbone", ["clip", "siglip2", "siglip-gemma3", "dino3", "vgg16"])
def test_score_json_reproduces_the_official_formula_for_every_backbone(backbone, tmp_path, capsys):
    from builders import build_backbone_weights
    from creward.models.backbones.registry import load_backbone

    weights_path = build_backbone_weights(backbone, tmp_path / "backbone")
    feature_dim = load_backbone(backbone, weights_path).feature_dim
    head = official_head(feature_dim, seed=5)
    checkpoint = save_official_checkpoint(head, tmp_path / "reward_head_best.ckpt")
    paths = write_images(tmp_path, sizes=((320, 240), (100, 150)))
    code, items = run_json(capsys, ["score", *map(str, paths), "--head", str(checkpoint), "--backbone", backbone, "--backbone-weights", str(weights_path), "--json", "--device", "cpu"])
    assert code == 0
    got = torch.tensor([[item[axis] for axis in AXES] for item in items])
    torch.testing.assert_close(got, official_scores(backbone, weights_path, head, paths), atol=1e-4, rtol=0)


def test_the_cli_default_pixel_limit_is_the_library_one():
    from creward.cli.common import MAX_PIXELS_DEFAULT
    from creward.models.preprocess import MAX_DECODE_PIXELS

    assert MAX_PIXELS_DEFAULT == MAX_DECODE_PIXELS  # kept apart only so that parsing needs no torch
