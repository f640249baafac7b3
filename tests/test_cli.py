"""The `creward` command line end to end, on tiny random CLIP weights built by the tests."""

import csv
import json

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
    assert all(set(item) == {"path", *AXES} for item in items)
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
    assert not list(target.parent.glob("*.partial"))
    assert main(["score", str(folder), *common]) == 0
    table = capsys.readouterr().out
    assert "geometry" in table and str(paths[0]) in table


def test_bad_images_are_skipped_with_a_warning_and_the_rest_scored(weights, images, capsys):
    folder, paths = images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(folder / "rgba.png")
    Image.fromarray(np.arange(1600, dtype=np.uint8).reshape(40, 40)).convert("P").save(folder / "palette.png")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "gray.png")
    (folder / "readme.txt").write_text("not an image")
    code, items = run_json(capsys, ["score", str(folder), "--head", str(weights["converted"]), "--backbone-weights", str(weights["backbone"]), "--json"])
    assert code == 0
    by_name = {item["path"].rsplit("/", 1)[-1]: item for item in items}
    assert "error" in by_name["broken.png"] and "broken.png" in by_name["broken.png"]["error"]
    for name in ("rgba.png", "palette.png", "sixteen.png", "gray.png"):
        assert all(np.isfinite(by_name[name][axis]) for axis in AXES)
    assert "readme.txt" not in by_name
    assert "readme.txt" in run_json.last_err and "broken.png" in run_json.last_err


def test_no_images_exits_2(weights, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(tmp_path / "empty"), "--head", str(weights["converted"])])
    assert exit_info.value.code == 2
    assert "no images found" in capsys.readouterr().err


def test_missing_backbone_weights_say_what_and_where(weights, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CREWARD_MODELS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CREWARD_BACKBONE_WEIGHTS", raising=False)
    folder, _ = images
    assert main(["score", str(folder), "--head", str(weights["converted"])]) == 1
    err = capsys.readouterr().err
    assert "backbone weights for 'clip' not found" in err and "clip-vit-large-patch14" in err and str(tmp_path / "nowhere") in err


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
