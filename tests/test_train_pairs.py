"""Pair datasets: JSONL labels, CreBench arrays (encodings, shapes), splits, CreBench round trip."""

import json

import numpy as np
import pytest

from creward.train.pairs import (
    PairDataError,
    decode_labels,
    encode_labels,
    find_pair_images,
    load_pair_set,
    majority,
    parse_split,
    positional_split,
    random_split,
    write_crebench,
)
from pair_data import render_pairs, write_jsonl

pytestmark = pytest.mark.unit


@pytest.fixture
def pairs_dir(tmp_path):
    folder, labels, _ = render_pairs(tmp_path / "chair", pairs=6, seed=3, pixels=32)
    return folder, labels


def test_jsonl_labels_map_a_b_tie_and_the_last_record_wins(pairs_dir):
    folder, labels = pairs_dir
    path = write_jsonl(folder / "labels.jsonl", labels)
    with open(path, "a") as handle:  # a relabel of pair 2 (geometry flipped to "tie"), then a truncated line
        record = {"pair": 2, "image_0": "pair_0002_0.png", "image_1": "pair_0002_1.png", "status": "ok",
                  "labels": {"geometry": "tie", "material": "A", "texture": "B", "overall": "A"}}
        handle.write(json.dumps(record) + "\n")
        handle.write('{"pair": 3, "image_0": "pair_0003_0.png", "lab')
    pair_set = load_pair_set([folder], [path])
    expected = labels.copy()
    expected[2] = [0, 1, -1, 1]
    assert len(pair_set) == 6
    np.testing.assert_array_equal(pair_set.labels, expected)
    assert [p.name for p in pair_set.image_0] == [f"pair_{i:04d}_0.png" for i in range(6)]
    assert pair_set.sources[0].kind == "jsonl"


def test_the_labeller_and_the_dataset_read_labels_files_by_the_same_rules(tmp_path):
    """``creward train label``'s reader and the pair datasets share one reader: newest record per
    pair wins; blank lines, non-records (a bool pair, an unknown status) and a truncated line are skipped."""
    from creward.train.label import read_labels
    from creward.train.pair_files import read_label_records

    path = tmp_path / "labels.jsonl"
    lines = [
        {"pair": 0, "status": "ok", "labels": {"geometry": "A"}},
        {"pair": 1, "status": "malformed", "labels": None},
        {"pair": True, "status": "ok"},
        {"pair": 2, "status": "maybe"},
        {"pair": 0, "status": "ok", "labels": {"geometry": "B"}},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + '\n\n["not", "a record"]\n{"pair": 3, "sta')
    records, skipped = read_label_records(path)
    assert sorted(records) == [0, 1] and records[0]["labels"] == {"geometry": "B"}
    assert skipped == 4
    assert read_labels(path) == records

def test_malformed_and_missing_records_are_left_out_and_counted(pairs_dir, caplog):
    folder, labels = pairs_dir
    path = write_jsonl(folder / "labels.jsonl", labels[:5], malformed={1})
    pair_set = load_pair_set([folder], [path])
    assert list(pair_set.index) == [0, 2, 3, 4]
    source = pair_set.sources[0]
    assert (source.malformed, source.unlabelled, source.pairs_in_folder) == (1, 1, 6)
    assert "malformed" in caplog.text and "no label record" in caplog.text


def test_jsonl_naming_a_missing_image_is_an_error_naming_it(pairs_dir):
    folder, labels = pairs_dir
    path = write_jsonl(folder / "labels.jsonl", labels)
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["image_1"] = "gone.png"
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(PairDataError, match=r"gone\.png"):
        load_pair_set([folder], [path])


def test_bad_jsonl_label_value_names_file_and_pair(pairs_dir):
    folder, labels = pairs_dir
    path = write_jsonl(folder / "labels.jsonl", labels)
    path.write_text(path.read_text().replace('"geometry": "A"', '"geometry": "left"', 1))
    with pytest.raises(PairDataError, match=r"labels\.jsonl.*pair \d+.*'geometry'.*'left'"):
        load_pair_set([folder], [path])


def test_missing_partner_image_is_an_error_naming_it(pairs_dir):
    folder, _ = pairs_dir
    (folder / "pair_0004_1.png").unlink()
    with pytest.raises(PairDataError, match=r"pair_0004_1\.png"):
        find_pair_images(folder)


def test_missing_folder_and_labels_file_are_errors(tmp_path, pairs_dir):
    folder, _ = pairs_dir
    np.save(tmp_path / "x.npy", np.zeros((6, 4), dtype=np.int64) + 2)
    with pytest.raises(PairDataError, match="pairs folder .*nowhere does not exist"):
        load_pair_set([tmp_path / "nowhere"], [tmp_path / "x.npy"])
    with pytest.raises(PairDataError, match=r"labels file not found: .*none\.npy"):
        load_pair_set([folder], [tmp_path / "none.npy"])
    with pytest.raises(PairDataError, match="one labels file per folder"):
        load_pair_set([folder, folder], [tmp_path / "none.npy"])


@pytest.mark.parametrize("encoding", ["index", "signed"])
def test_crebench_arrays_in_both_encodings_read_the_same(pairs_dir, encoding):
    folder, labels = pairs_dir
    labels = labels.copy()
    labels[0] = [1, -1, 0, 1]  # make sure every value occurs, so detection is unambiguous
    path = folder.parent / f"gemma27b_results_chair_mass_{encoding}.npy"
    np.save(path, encode_labels(labels, encoding))
    pair_set = load_pair_set([folder], [path])
    np.testing.assert_array_equal(pair_set.labels, labels)
    assert pair_set.sources[0].encoding == encoding


def test_json_array_labels_are_accepted(pairs_dir):
    folder, labels = pairs_dir
    labels = labels.copy()
    labels[0, 0] = 0
    path = folder.parent / "labels.json"
    path.write_text(json.dumps(encode_labels(labels, "index").tolist()))
    np.testing.assert_array_equal(load_pair_set([folder], [path]).labels, labels)


def test_ambiguous_zero_one_array_needs_the_flag(pairs_dir):
    folder, _ = pairs_dir
    array = np.zeros((6, 4), dtype=np.int64)
    array[::2] = 1
    path = folder.parent / "l.npy"
    np.save(path, array)
    with pytest.raises(PairDataError, match=r"l\.npy holds only 0 and 1.*--label-encoding"):
        load_pair_set([folder], [path])
    as_index = load_pair_set([folder], [path], encoding="index").labels
    as_signed = load_pair_set([folder], [path], encoding="signed").labels
    np.testing.assert_array_equal(as_index, np.where(array == 0, 1, -1))
    np.testing.assert_array_equal(as_signed, array)


def test_ambiguous_array_takes_the_encoding_of_the_others(tmp_path):
    first, labels_a, _ = render_pairs(tmp_path / "a", pairs=3, seed=1, pixels=16, labels_name=None)
    second, _, _ = render_pairs(tmp_path / "b", pairs=3, seed=2, pixels=16, labels_name=None)
    np.save(tmp_path / "a.npy", np.array([[0, 1, 2, 0]] * 3))
    np.save(tmp_path / "b.npy", np.array([[0, 1, 1, 0]] * 3))
    pair_set = load_pair_set([first, second], [tmp_path / "a.npy", tmp_path / "b.npy"])
    np.testing.assert_array_equal(pair_set.labels[3:], [[1, -1, -1, 1]] * 3)


@pytest.mark.parametrize("shape", [(5, 4), (6, 3), (6,), (2, 5, 4)])
def test_wrong_array_shape_names_file_and_expected_shape(pairs_dir, shape):
    folder, _ = pairs_dir
    path = folder.parent / "bad.npy"
    np.save(path, np.zeros(shape, dtype=np.int64))
    with pytest.raises(PairDataError, match=r"bad\.npy: label array has shape .*expected \[6, 4\]"):
        load_pair_set([folder], [path])


def test_out_of_range_or_mixed_values_are_errors(pairs_dir):
    folder, _ = pairs_dir
    path = folder.parent / "bad.npy"
    np.save(path, np.full((6, 4), 3))
    with pytest.raises(PairDataError, match=r"bad\.npy: label values \[3\]"):
        load_pair_set([folder], [path])
    mixed = np.zeros((6, 4), dtype=np.int64)
    mixed[0, 0], mixed[1, 1] = 2, -1
    np.save(path, mixed)
    with pytest.raises(PairDataError, match="mixes 2 and -1"):
        load_pair_set([folder], [path])
    np.save(path, np.full((6, 4), 0.5))
    with pytest.raises(PairDataError, match="non-integer"):
        load_pair_set([folder], [path])


def test_human_array_keeps_raters_and_uses_the_majority(pairs_dir):
    folder, _ = pairs_dir
    raters = np.zeros((3, 6, 4), dtype=np.int8)
    raters[:, 0, 0] = [1, 1, -1]  # majority A
    raters[:, 1, 0] = [1, -1, 0]  # equal votes: tie
    raters[:, 2, 1] = [-1, -1, 0]  # majority B
    path = folder.parent / "human_chair.npy"
    np.save(path, encode_labels(raters, "index"))
    pair_set = load_pair_set([folder], [path])
    assert pair_set.rater_labels.shape == (3, 6, 4)
    np.testing.assert_array_equal(pair_set.rater_labels, raters)
    assert pair_set.labels[0, 0] == 1 and pair_set.labels[1, 0] == 0 and pair_set.labels[2, 1] == -1
    np.testing.assert_array_equal(majority(raters), pair_set.labels)
    subset = pair_set.subset([2, 0])
    assert subset.rater_labels.shape == (3, 2, 4) and subset.labels[0, 1] == -1


def test_human_arrays_do_not_mix_with_single_judge_labels(tmp_path):
    first, labels, _ = render_pairs(tmp_path / "a", pairs=3, seed=1, pixels=16)
    second, _, _ = render_pairs(tmp_path / "b", pairs=3, seed=2, pixels=16, labels_name=None)
    np.save(tmp_path / "human.npy", np.zeros((2, 3, 4), dtype=np.int64) + 2)
    with pytest.raises(PairDataError, match="cannot be mixed"):
        load_pair_set([first, second], [first / "labels.jsonl", tmp_path / "human.npy"])


def test_crebench_round_trip_from_jsonl(tmp_path):
    folder, labels, _ = render_pairs(tmp_path / "pairs", pairs=7, seed=5, pixels=24, labels_name=None)
    write_jsonl(folder / "labels.jsonl", labels, malformed={3})
    original = load_pair_set([folder], [folder / "labels.jsonl"])
    [(images, labels_file)] = write_crebench(original, tmp_path / "crebench", objects=["vase"])
    assert labels_file == tmp_path / "crebench" / "gemma27b_results_vase_mass.npy"
    stored = np.load(labels_file)
    assert stored.shape == (6, 4) and set(np.unique(stored)) <= {0, 1, 2}
    again = load_pair_set([images], [labels_file])
    np.testing.assert_array_equal(again.labels, original.labels)
    for before, after in zip(original.image_0 + original.image_1, again.image_0 + again.image_1):
        assert before.read_bytes() == after.read_bytes()
    assert [p.name for p in again.image_0] == [f"pair_{i:04d}_0.png" for i in range(6)]
    with pytest.raises(PairDataError, match="already holds pair images"):
        write_crebench(original, tmp_path / "crebench", objects=["vase"])


def test_crebench_round_trip_of_a_human_set_in_signed_encoding(tmp_path, pairs_dir):
    folder, _ = pairs_dir
    raters = np.random.default_rng(0).integers(-1, 2, (5, 6, 4))
    np.save(tmp_path / "human.npy", raters)
    original = load_pair_set([folder], [tmp_path / "human.npy"], encoding="signed")
    [(images, labels_file)] = write_crebench(original, tmp_path / "out", encoding="signed", base="human")
    assert labels_file.name == "human_chair.npy"
    again = load_pair_set([images], [labels_file])
    np.testing.assert_array_equal(again.rater_labels, original.rater_labels)


def test_positional_split_follows_file_order_per_folder(tmp_path):
    first, _, _ = render_pairs(tmp_path / "a", pairs=10, seed=1, pixels=16)
    second, _, _ = render_pairs(tmp_path / "b", pairs=10, seed=2, pixels=16)
    pair_set = load_pair_set([first, second], [first / "labels.jsonl", second / "labels.jsonl"])
    parts = positional_split(pair_set, parse_split("6,2,2"))
    assert [len(parts[name]) for name in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(parts["test"].index.tolist()) == [8, 8, 9, 9]
    assert parse_split("crebench") == (800, 100, 100)
    with pytest.raises(PairDataError, match="TRAIN,VAL"):
        parse_split("a,b")


def test_random_split_is_seeded(pairs_dir):
    folder, labels = pairs_dir
    pair_set = load_pair_set([folder], [write_jsonl(folder / "labels.jsonl", labels)])
    first = random_split(pair_set, 0.34, seed=7)
    second = random_split(pair_set, 0.34, seed=7)
    assert first["val"].index.tolist() == second["val"].index.tolist()
    assert len(first["val"]) == 2 and len(first["train"]) == 4
    assert set(first["val"].index) | set(first["train"].index) == set(range(6))


def test_encode_decode_are_inverse():
    labels = np.array([[1, -1, 0, 1]], dtype=np.int8)
    for encoding in ("index", "signed"):
        np.testing.assert_array_equal(decode_labels(encode_labels(labels, encoding), encoding), labels)
    np.testing.assert_array_equal(encode_labels(labels, "index"), [[0, 1, 2, 0]])
