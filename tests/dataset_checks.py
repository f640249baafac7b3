"""Checks shared by the ``creward score-dataset`` tests of both engines.

``mixed_inputs`` builds one input of every kind (folder, Parquet list, CSV list, WebDataset
shards) plus the bad inputs the issue names; ``expected_scores`` gets the reference numbers
from ``creward score --json`` on the same image files; ``check_scores`` compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
from PIL import Image

import dataset_data as data
from creward.cli.main import main

AXES = ["geometry", "material", "texture", "overall"]


def mixed_inputs(root: Path, bad: bool = True) -> dict:
    """Inputs of every kind under ``root``; with ``bad``, also the broken ones (see the keys)."""
    folder_images = data.image_folder(root / "folder", count=4)
    listed = data.image_folder(root / "listed", count=3, seed=5)
    # the Parquet list holds absolute paths, the CSV list paths relative to its own folder
    parquet = data.path_list(root / "lists" / "list.parquet", listed[:2] + ([root / "listed" / "missing.png"] if bad else []),
                             extra={"site": ["a", "b", "c"][: 2 + bad]})
    csv_list = data.path_list(root / "lists" / "list.csv", [Path("..") / "listed" / p.relative_to(root / "listed") for p in listed[2:]],
                              extra={"site": ["z"]})
    shards = data.webdataset_shards(root / "shards", shards=2, per_shard=3)
    extracted = {shard.name: data.extract_images(shard, root / "extracted" / shard.stem) for shard in shards}
    inputs = [str(root / "folder"), str(parquet), str(csv_list), str(root / "shards" / "*.tar")]
    result = {"inputs": inputs, "folder": folder_images, "listed": listed, "shards": shards, "extracted": extracted}
    if bad:
        (root / "folder" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        bad_dir = root / "bad"
        bad_dir.mkdir()
        good = data.encode(data.random_image(np.random.default_rng(9), 40, 40))
        data.write_tar(bad_dir / "corrupt-member.tar", [("a.jpg", good), ("b.jpg", b"\xff\xd8\xff garbage"), ("c.json", b"{}")])
        (bad_dir / "not-a-tar.tar").write_bytes(b"this is not a tar file at all" * 40)
        whole = data.write_tar(bad_dir / "whole.tar", [(f"{i:03d}.jpg", good) for i in range(4)])
        (bad_dir / "truncated.tar").write_bytes(whole.read_bytes()[: 512 * 3 + 100])
        whole.unlink()
        inputs += [str(bad_dir / "corrupt-member.tar"), str(bad_dir / "not-a-tar.tar"), str(bad_dir / "truncated.tar")]
        result["bad_dir"] = bad_dir
    return result


def score_json(paths: list[Path], weights: dict, *extra: str) -> dict[str, dict]:
    """``creward score --json`` items (``extra`` arguments added, e.g. ``--reference REF``) on these
    files, in a subprocess (its own stdout), by path."""
    command = [sys.executable, "-m", "creward.cli", "score", *map(str, paths), "--json", "--device", "cpu",
               "--head", str(weights["head"]), "--backbone-weights", str(weights["backbone"]), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return {item["path"]: item for item in json.loads(completed.stdout)}


def expected_scores(paths: list[Path], weights: dict) -> dict[str, list[float]]:
    """``creward score --json`` on these files, by path: the four scores."""
    return {path: [item[axis] for axis in AXES] for path, item in score_json(paths, weights).items()}


def good_rows(table, built: dict) -> list[tuple[dict, Path]]:
    """``(output row, image file)`` for every good image of ``built`` (a tar member: its extracted file)."""
    rows = table.to_pylist()
    by_path = {row["path"]: row for row in rows if row["path"]}
    by_member = {(Path(row["shard"]).name, row["member"]): row for row in rows if row["shard"] and row["member"]}
    pairs = [(by_path[str(path.resolve())], path) for path in built["folder"] + built["listed"] if str(path.resolve()) in by_path]
    for shard, files in built["extracted"].items():
        pairs += [(by_member[(shard, file.name)], file) for file in files if (shard, file.name) in by_member]
    return pairs


def read_output(folder: Path):
    return pads.dataset(str(folder), format="parquet").to_table()


def check_scores(table, built: dict, expected: dict[str, list[float]]) -> None:
    """Every good image of ``built`` has one row whose scores equal ``creward score --json`` to 1e-5."""
    rows = table.to_pylist()
    by_path = {row["path"]: row for row in rows if row["path"]}
    by_member = {(Path(row["shard"]).name, row["member"]): row for row in rows if row["shard"] and row["member"]}
    compared = 0
    for path in built["folder"] + built["listed"]:
        row = by_path[str(path.resolve())]
        assert row["error"] is None, row
        np.testing.assert_allclose([row[a] for a in AXES], expected[str(path)], atol=1e-5, rtol=0)
        compared += 1
    for shard, files in built["extracted"].items():
        for file in files:
            row = by_member[(shard, file.name)]
            assert row["error"] is None and row["key"] == file.stem, row
            np.testing.assert_allclose([row[a] for a in AXES], expected[str(file)], atol=1e-5, rtol=0)
            compared += 1
    assert compared == 4 + 3 + 6


def check_bad_rows(table, built: dict) -> None:
    """The broken inputs became error rows naming what is wrong; nothing was dropped."""
    rows = table.to_pylist()
    errors = {(row["shard"] and Path(row["shard"]).name, row["key"]): row["error"] for row in rows if row["error"]}
    assert "broken.png" in errors[(None, "broken.png")]
    assert "not found" in errors[(None, str(built["bad_dir"].parent / "listed" / "missing.png"))]
    corrupt = [row for row in rows if row["shard"] and row["shard"].endswith("corrupt-member.tar")]
    assert {row["key"]: row["error"] is None for row in corrupt} == {"a": True, "b": False, "c": False}
    assert "no image member" in errors[("corrupt-member.tar", "c")]
    assert "corrupt-member.tar:b.jpg" in errors[("corrupt-member.tar", "b")]
    assert "not-a-tar.tar" in errors[("not-a-tar.tar", "not-a-tar.tar")] and "not a readable tar" in errors[("not-a-tar.tar", "not-a-tar.tar")]
    truncated = [row for row in rows if row["shard"] and row["shard"].endswith("truncated.tar")]
    assert truncated and any(row["error"] and "truncated.tar" in row["error"] for row in truncated), truncated
    assert all(row["geometry"] is None for row in rows if row["error"])


def check_complete(folder: Path, table) -> None:
    """No temporary files; every row exactly once; the manifest lists every part file."""
    assert not [child.name for child in folder.iterdir() if child.name.startswith(".")], list(folder.iterdir())
    identities = [(row["part"], row["shard"], row["key"], row["path"]) for row in table.to_pylist()]
    assert len(identities) == len(set(identities))
    manifest = [json.loads(line) for line in (folder / "_creward_parts.jsonl").read_text().splitlines()]
    assert sorted(record["file"] for record in manifest) == sorted(child.name for child in folder.glob("part-*.parquet"))
    assert sum(record["rows"] for record in manifest) == len(identities)


def image_pixels_equal(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def run_cli(args: list[str]) -> int:
    return main(args)
