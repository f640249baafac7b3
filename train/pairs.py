"""Labelled image pairs: CreBench's folder layout and CREward's JSONL labels as one dataset.

A pair is two images of the same object, ``pair_{idx:04d}_0.png`` and ``pair_{idx:04d}_1.png`` in
one folder per object. Each pair carries one label per axis (``AXES``: geometry, material, texture,
overall), held as an integer:

- ``+1``: image ``_0`` ("A") is more creative on that axis;
- ``-1``: image ``_1`` ("B") is more creative;
- ``0``: tie / no decision (masked out of training and of accuracy).

Label files accepted (always one labels file per pairs folder, matched by position):

- **JSONL** (``.jsonl``; written by ``creward train label``): one record per line,
  ``{"pair": 7, "image_0": "pair_0007_0.png", "image_1": "pair_0007_1.png",
  "labels": {"geometry": "A"|"B"|"tie", ...} | null, "status": "ok"|"malformed", ...}``.
  The last record of a pair wins; malformed records (and ``labels: null``) are left out and
  counted; lines that are not JSON records (a truncated last line) are skipped with a warning.
  Image names are relative to the pairs folder.
- **CreBench arrays** (``.npy``, or ``.json`` holding a nested list): shape ``[pairs, 4]``
  (one judge, e.g. CreBench's ``gemma27b_results_{object}_mass.npy``) or ``[raters, pairs, 4]``
  (a human-rated set, e.g. CreBench's 5-rater arrays). Row ``i`` labels the ``i``-th pair of the
  folder in file order (pairs sorted by idx, as CreBench's sorted ``*_0.png`` listing).
  Values are integers in one of two encodings:

  - ``index``: ``0`` = first image (``_0``) wins, ``1`` = second (``_1``) wins, ``2`` = tie;
  - ``signed``: ``+1`` = first wins, ``-1`` = second wins, ``0`` = tie.

  The encoding is detected: a ``2`` means ``index``, a ``-1`` means ``signed`` (both in one
  file is an error). An array holding only ``0``/``1`` reads differently in the two encodings;
  it takes the encoding detected in the other arrays of the same call, and is otherwise an
  error asking for ``encoding=`` / ``--label-encoding``. CreBench's published files do not
  document their encoding; its code loads them as ``long`` arrays of these shapes.

A human-rated set keeps every rater's labels (``PairSet.rater_labels``) and uses the per-pair
majority of the decisive votes as its labels (a rater's tie abstains; as many A as B votes: tie).

:func:`write_crebench` writes a pair set back in CreBench's layout
(``ROOT/{object}/pair_{i:04d}_{0,1}.png`` + ``ROOT/{base}_{object}_mass.npy``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..models.axes import AXES
from ..models.errors import CREwardError
from . import pair_files
from .pair_files import PAIR_IMAGE, PairImages, read_label_records, some

logger = logging.getLogger(__name__)

JSONL_LETTERS = {"A": 1, "B": -1, "tie": 0}
ENCODINGS = ("auto", "index", "signed")
ARRAY_SUFFIXES = (".npy", ".json")
CREBENCH_SPLIT = (800, 100, 100)
SPLIT_PARTS = ("train", "val", "test")


class PairDataError(CREwardError):
    """A pairs folder or labels file cannot be used; the message names the file."""


# -- images ------------------------------------------------------------------------------------
def find_pair_images(pairs_dir: str | os.PathLike) -> list[PairImages]:
    """Every pair in ``pairs_dir`` sorted by idx (CreBench's file order).

    Raises :class:`PairDataError` when the folder is missing, holds no pairs, or an image lacks
    its partner (naming the missing file).
    """
    return pair_files.find_pair_images(pairs_dir, PairDataError)


# -- the dataset ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelSource:
    """Where one folder's labels came from, with its counts (goes into head metadata)."""

    pairs_dir: str
    labels: str
    kind: str  # "jsonl", "array" or "human"
    pairs_in_folder: int
    pairs_labelled: int
    malformed: int = 0  # JSONL records without usable labels
    unlabelled: int = 0  # pairs in the folder with no label record
    encoding: str | None = None  # arrays: "index" or "signed"
    raters: int | None = None

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class PairSet:
    """Labelled pairs from one or more folders, in folder order then file order.

    ``labels[i, a]`` is +1 (image_0 wins), -1 (image_1 wins) or 0 (tie) for axis ``AXES[a]``.
    ``group[i]`` is the position of the pair's folder in ``sources``; ``position[i]`` is the
    pair's rank among all pairs of its folder (labelled or not), used by positional splits.
    """

    image_0: list[Path]
    image_1: list[Path]
    labels: np.ndarray  # [N, len(axes)] int8
    group: np.ndarray  # [N] int
    index: np.ndarray  # [N] int: the idx in pair_{idx}_*
    position: np.ndarray  # [N] int
    sources: list[LabelSource]
    rater_labels: np.ndarray | None = None  # [R, N, len(axes)] int8 for human-rated sets
    axes: tuple[str, ...] = AXES
    part: str | None = None  # which split part this is, if any

    def __len__(self) -> int:
        return len(self.image_0)

    def subset(self, rows: Sequence[int] | np.ndarray, part: str | None = None) -> "PairSet":
        rows = np.asarray(rows, dtype=np.int64)
        return PairSet(
            image_0=[self.image_0[row] for row in rows],
            image_1=[self.image_1[row] for row in rows],
            labels=self.labels[rows],
            group=self.group[rows],
            index=self.index[rows],
            position=self.position[rows],
            sources=self.sources,
            rater_labels=None if self.rater_labels is None else self.rater_labels[:, rows],
            axes=self.axes,
            part=part if part is not None else self.part,
        )

    @property
    def images(self) -> list[Path]:
        """Every image of the set, each once, in first-seen order."""
        return list(dict.fromkeys([*self.image_0, *self.image_1]))

    def decisive_counts(self) -> dict[str, int]:
        """Pairs with a decision (not a tie) per axis."""
        return {axis: int(np.count_nonzero(self.labels[:, column])) for column, axis in enumerate(self.axes)}

    def all_ties(self) -> int:
        """Pairs that are ties on every axis (they carry no signal)."""
        return int(np.count_nonzero(~self.labels.any(axis=1))) if len(self) else 0

    def describe(self) -> dict:
        """JSON-ready summary: sources, pair counts, decisive counts per axis."""
        summary = {
            "sources": [source.as_dict() for source in self.sources],
            "pairs": len(self),
            "decisive": self.decisive_counts(),
            "all_ties": self.all_ties(),
        }
        if self.part:
            summary["part"] = self.part
        if self.rater_labels is not None:
            summary["raters"] = int(self.rater_labels.shape[0])
        return summary


# -- reading labels ------------------------------------------------------------------------
def _jsonl_labels(record: dict, path: Path, axes: tuple[str, ...]) -> np.ndarray | None:
    """A record's labels as +1/-1/0, None when it has none (malformed); errors on bad values."""
    labels = record.get("labels")
    if record.get("status") != "ok" or labels is None:
        return None
    if not isinstance(labels, dict):
        raise PairDataError(f"{path}: pair {record['pair']}: 'labels' should be an object or null, got {type(labels).__name__}")
    row = np.zeros(len(axes), dtype=np.int8)
    for column, axis in enumerate(axes):
        value = labels.get(axis)
        if value not in JSONL_LETTERS:
            raise PairDataError(f"{path}: pair {record['pair']}: label for {axis!r} is {value!r}; expected \"A\", \"B\" or \"tie\"")
        row[column] = JSONL_LETTERS[value]
    return row


def _load_jsonl_folder(pairs_dir: Path, labels_path: Path, axes: tuple[str, ...]):
    pairs = find_pair_images(pairs_dir)
    position_of = {pair.index: position for position, pair in enumerate(pairs)}
    records, skipped = read_label_records(labels_path, PairDataError)
    if skipped:
        logger.warning("%s: skipped %d line(s) that are not label records", labels_path, skipped)
    if not records:
        raise PairDataError(f"{labels_path} holds no label records; expected JSON lines like {{\"pair\": 0, \"image_0\": ..., \"labels\": {{...}}, \"status\": \"ok\"}}")
    rows, malformed, missing = [], 0, []
    for index in sorted(records):
        record = records[index]
        labels = _jsonl_labels(record, labels_path, axes)
        if labels is None:
            malformed += 1
            continue
        names = [record.get("image_0") or f"pair_{index:04d}_0.png", record.get("image_1") or f"pair_{index:04d}_1.png"]
        paths = [pairs_dir / name for name in names]
        absent = [path for path in paths if not path.is_file()]
        if absent:
            missing.extend(absent)
            continue
        rows.append((index, paths[0], paths[1], labels, position_of.get(index, len(pairs) + index)))
    if missing:
        raise PairDataError(f"{labels_path} labels {len(missing)} image(s) that are not in {pairs_dir}: {some(missing)} not found")
    if malformed:
        logger.warning("%s: %d pair(s) have no usable labels (malformed answers) and are left out", labels_path, malformed)
    labelled = {row[0] for row in rows}
    unlabelled = sum(pair.index not in labelled and pair.index not in records for pair in pairs)
    if unlabelled:
        logger.warning("%s: %d of the %d pairs in %s have no label record and are left out", labels_path, unlabelled, len(pairs), pairs_dir)
    source = LabelSource(str(pairs_dir), str(labels_path), "jsonl", len(pairs), len(rows), malformed=malformed, unlabelled=unlabelled)
    return rows, source


def load_label_array(path: str | os.PathLike) -> np.ndarray:
    """A CreBench label array (``.npy`` or ``.json`` nested list) as int64, values unchecked."""
    path = Path(path)
    if not path.is_file():
        raise PairDataError(f"labels file not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as handle:
                array = np.asarray(json.load(handle))
    except (OSError, ValueError) as error:
        raise PairDataError(f"{path} is not a readable label array (.npy without pickles, or a JSON nested list): {error}") from None
    if array.dtype.kind not in "iuf":
        raise PairDataError(f"{path}: label array should hold integers, got dtype {array.dtype}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise PairDataError(f"{path}: label array holds non-integer values; expected 0/1/2 or -1/0/1")
    return array.astype(np.int64)


def detect_encoding(array: np.ndarray, path: str | os.PathLike) -> str | None:
    """``"index"`` (0/1/2), ``"signed"`` (+1/-1/0), or None when only 0/1 appear (ambiguous)."""
    values = set(np.unique(array).tolist())
    unknown = sorted(values - {-1, 0, 1, 2})
    if unknown:
        raise PairDataError(f"{path}: label values {unknown[:5]} are not labels; expected 0/1/2 (first wins/second wins/tie) or +1/-1/0")
    if 2 in values and -1 in values:
        raise PairDataError(f"{path}: label array mixes 2 and -1, which belong to different encodings (0/1/2 vs +1/-1/0)")
    if 2 in values:
        return "index"
    if -1 in values:
        return "signed"
    return None


def decode_labels(array: np.ndarray, encoding: str) -> np.ndarray:
    """Encoded labels → +1 (first wins) / -1 (second wins) / 0 (tie), int8."""
    if encoding == "signed":
        return array.astype(np.int8)
    if encoding == "index":
        out = np.zeros(array.shape, dtype=np.int8)
        out[array == 0] = 1
        out[array == 1] = -1
        return out
    raise ValueError(f"encoding should be 'index' or 'signed', got {encoding!r}")


def encode_labels(labels: np.ndarray, encoding: str = "index") -> np.ndarray:
    """+1/-1/0 labels → CreBench arrays (int64) in ``encoding``."""
    labels = np.asarray(labels)
    if encoding == "signed":
        return labels.astype(np.int64)
    if encoding == "index":
        out = np.full(labels.shape, 2, dtype=np.int64)
        out[labels > 0] = 0
        out[labels < 0] = 1
        return out
    raise ValueError(f"encoding should be 'index' or 'signed', got {encoding!r}")


def _check_array_shape(array: np.ndarray, path: Path, pairs_dir: Path, pairs: int, axes: tuple[str, ...]) -> None:
    expected = f"[{pairs}, {len(axes)}] (pairs × axes) or [raters, {pairs}, {len(axes)}] (a human-rated set)"
    if array.ndim not in (2, 3) or array.shape[-1] != len(axes) or array.shape[-2] != pairs:
        raise PairDataError(f"{path}: label array has shape {list(array.shape)}, expected {expected}: {pairs} pairs in {pairs_dir}, axes {', '.join(axes)}")
    if array.ndim == 3 and array.shape[0] < 1:
        raise PairDataError(f"{path}: human label array has no raters (shape {list(array.shape)})")


def is_array_labels(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in ARRAY_SUFFIXES


def load_pair_set(
    pairs_dirs: Sequence[str | os.PathLike],
    label_files: Sequence[str | os.PathLike],
    encoding: str = "auto",
    axes: tuple[str, ...] = AXES,
) -> PairSet:
    """Read pairs folders and their labels (one labels file per folder, by position) into one set.

    Args:
        pairs_dirs: folders of ``pair_{idx:04d}_{0,1}.png``.
        label_files: ``.jsonl`` (``creward train label``), or CreBench arrays ``.npy``/``.json``
            of shape ``[pairs, 4]`` or ``[raters, pairs, 4]`` (see the module docstring).
        encoding: for arrays: ``auto`` (detect), ``index`` (0/1/2) or ``signed`` (+1/-1/0).

    Raises:
        PairDataError: a missing folder/file/image, a wrong shape or value, mixed kinds of
            labels, or no labelled pair at all; the message names the file.
    """
    if encoding not in ENCODINGS:
        raise PairDataError(f"unknown label encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    pairs_dirs = [Path(path) for path in pairs_dirs]
    label_files = [Path(path) for path in label_files]
    if not pairs_dirs:
        raise PairDataError("no pairs folder given")
    if len(label_files) != len(pairs_dirs):
        raise PairDataError(
            f"{len(pairs_dirs)} pairs folder(s) but {len(label_files)} labels file(s): give one labels file per folder, "
            f"in the same order (folders: {', '.join(map(str, pairs_dirs))}; labels: {', '.join(map(str, label_files)) or 'none'})"
        )
    for path in label_files:
        if not path.is_file():
            raise PairDataError(f"labels file not found: {path}")
        if path.suffix.lower() not in (".jsonl", *ARRAY_SUFFIXES):
            raise PairDataError(f"{path}: unknown labels format {path.suffix!r}; expected .jsonl (creward train label) or a CreBench array (.npy / .json)")

    # Arrays first: shapes and encodings are checked across all files before decoding.
    arrays: dict[int, tuple[np.ndarray, list[PairImages], str | None]] = {}
    for number, (folder, path) in enumerate(zip(pairs_dirs, label_files)):
        if is_array_labels(path):
            pairs = find_pair_images(folder)
            array = load_label_array(path)
            _check_array_shape(array, path, folder, len(pairs), axes)
            detected = detect_encoding(array, path)
            if encoding != "auto" and detected is not None and detected != encoding:
                raise PairDataError(f"{path}: values look like the {detected!r} encoding but --label-encoding {encoding} was given")
            arrays[number] = (array, pairs, detected)
    dimensions = {array.ndim for array, _, _ in arrays.values()}
    if len(dimensions) > 1 or (3 in dimensions and len(arrays) != len(pairs_dirs)):
        raise PairDataError(
            "human-rated label arrays [raters, pairs, 4] cannot be mixed with single-judge labels ([pairs, 4] or JSONL) "
            f"in one set: {', '.join(map(str, label_files))}"
        )
    rater_counts = {array.shape[0] for array, _, _ in arrays.values() if array.ndim == 3}
    if len(rater_counts) > 1:
        raise PairDataError(f"human label arrays have different numbers of raters {sorted(rater_counts)}: {', '.join(map(str, label_files))}")
    found = {detected for _, _, detected in arrays.values() if detected}
    if encoding == "auto":
        if len(found) > 1:
            raise PairDataError(f"label arrays use different encodings ({', '.join(sorted(found))}): {', '.join(map(str, label_files))}; convert them to one")
        fallback = next(iter(found), None)
    else:
        fallback = encoding

    image_0, image_1, label_rows, groups, indices, positions, raters, sources = [], [], [], [], [], [], [], []
    for number, (folder, path) in enumerate(zip(pairs_dirs, label_files)):
        if number in arrays:
            array, pairs, detected = arrays[number]
            chosen = detected or fallback
            if chosen is None:
                raise PairDataError(
                    f"{path} holds only 0 and 1, which means different things in the two encodings "
                    f"(index: 0 = first wins, 1 = second wins; signed: 1 = first wins, 0 = tie): "
                    f"pass --label-encoding index or --label-encoding signed"
                )
            decoded = decode_labels(array, chosen)
            if decoded.ndim == 3:
                raters.append(decoded)
                rows = majority(decoded)
                kind = "human"
            else:
                rows = decoded
                kind = "array"
            for position, pair in enumerate(pairs):
                image_0.append(pair.image_0)
                image_1.append(pair.image_1)
                label_rows.append(rows[position])
                groups.append(number)
                indices.append(pair.index)
                positions.append(position)
            sources.append(LabelSource(
                str(folder), str(path), kind, len(pairs), len(pairs), encoding=chosen,
                raters=int(decoded.shape[0]) if decoded.ndim == 3 else None,
            ))
        else:
            rows, source = _load_jsonl_folder(folder, path, axes)
            for index, path_0, path_1, labels, position in rows:
                image_0.append(path_0)
                image_1.append(path_1)
                label_rows.append(labels)
                groups.append(number)
                indices.append(index)
                positions.append(position)
            sources.append(source)
    if not label_rows:
        raise PairDataError(f"no labelled pairs in {', '.join(map(str, label_files))}")
    pair_set = PairSet(
        image_0=image_0,
        image_1=image_1,
        labels=np.stack(label_rows).astype(np.int8),
        group=np.asarray(groups, dtype=np.int64),
        index=np.asarray(indices, dtype=np.int64),
        position=np.asarray(positions, dtype=np.int64),
        sources=sources,
        rater_labels=np.concatenate(raters, axis=1) if raters else None,
        axes=axes,
    )
    logger.info(
        "read %d labelled pairs from %d folder(s); decisive per axis: %s; ties on every axis: %d",
        len(pair_set), len(sources), pair_set.decisive_counts(), pair_set.all_ties(),
    )
    for axis, count in pair_set.decisive_counts().items():
        if count == 0:
            logger.warning("axis %s has no decisive pair in %s (all ties)", axis, ", ".join(map(str, label_files)))
    return pair_set


def majority(rater_labels: np.ndarray) -> np.ndarray:
    """Per-pair majority of the decisive votes in ``[raters, pairs, axes]`` +1/-1/0 labels: the sign
    of their sum (ties abstain; as many +1 as -1 votes gives 0)."""
    return np.sign(rater_labels.astype(np.int64).sum(axis=0)).astype(np.int8)


# -- splits --------------------------------------------------------------------------------
def parse_split(text: str) -> tuple[int, ...]:
    """``"crebench"`` or ``"800,100,100"`` → sizes per folder (train, val[, test])."""
    if text.strip().lower() == "crebench":
        return CREBENCH_SPLIT
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PairDataError(f"split {text!r} should be 'crebench' or TRAIN,VAL[,TEST] pair counts per folder, e.g. 800,100,100") from None
    if not 2 <= len(sizes) <= 3 or any(size < 0 for size in sizes):
        raise PairDataError(f"split {text!r} should be 2 or 3 non-negative pair counts per folder (TRAIN,VAL[,TEST])")
    return sizes


# -- command-line checks (usage errors, before anything is read) --------------------------------
def split_argument(text: str | None) -> tuple[int, ...] | None:
    """``--split`` → sizes (None when not given); a ``UsageError`` for a bad value."""
    from ..cli.arguments import UsageError

    if text is None:
        return None
    try:
        return parse_split(text)
    except PairDataError as error:
        raise UsageError(f"--split: {error}") from None


def check_label_files(pairs_dirs: Sequence[str], label_files: Sequence[str]) -> None:
    """``--labels`` must give one labels file per pairs folder; a ``UsageError`` otherwise."""
    from ..cli.arguments import UsageError

    if len(label_files) != len(pairs_dirs):
        raise UsageError(
            f"--labels: {len(pairs_dirs)} pairs folder(s) but {len(label_files)} labels file(s); give one labels file per "
            f"folder, in the same order"
        )


def positional_split(pair_set: PairSet, sizes: Sequence[int]) -> dict[str, PairSet]:
    """Split each folder in file order: the first ``sizes[0]`` pairs train, the next ``sizes[1]``
    validate, the next ``sizes[2]`` test (CreBench: 800/100/100 of 1,000 per object).

    Positions count every pair of the folder, labelled or not, so relabelling a few pairs never
    moves others between parts. Pairs beyond the sizes' total are in no part (a warning says so).
    """
    bounds = np.cumsum([0, *sizes])
    parts: dict[str, PairSet] = {}
    for number, part in enumerate(SPLIT_PARTS[: len(sizes)]):
        rows = np.flatnonzero((pair_set.position >= bounds[number]) & (pair_set.position < bounds[number + 1]))
        parts[part] = pair_set.subset(rows, part=part)
    beyond = int(np.count_nonzero(pair_set.position >= bounds[-1]))
    if beyond:
        logger.warning("split %s leaves out %d pair(s) past position %d in their folder", ",".join(map(str, sizes)), beyond, bounds[-1])
    for source in pair_set.sources:
        if source.pairs_in_folder < bounds[-1]:
            logger.warning("%s has %d pairs, fewer than the split's %d: its later parts are smaller", source.pairs_dir, source.pairs_in_folder, bounds[-1])
    return parts


def random_split(pair_set: PairSet, val_fraction: float, seed: int = 0) -> dict[str, PairSet]:
    """A seeded random train/val split (at least one validation pair when ``val_fraction > 0``)."""
    if not 0.0 <= val_fraction < 1.0:
        raise PairDataError(f"val_fraction should be in [0, 1), got {val_fraction}")
    order = list(range(len(pair_set)))
    random.Random(seed).shuffle(order)
    count = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(order))))
    if count >= len(order):
        raise PairDataError(f"{len(order)} pair(s) are too few to hold out {val_fraction:.0%} for validation")
    return {"train": pair_set.subset(sorted(order[count:]), part="train"), "val": pair_set.subset(sorted(order[:count]), part="val")}


# -- writing CreBench's layout -------------------------------------------------------------
def write_crebench(
    pair_set: PairSet,
    root: str | os.PathLike,
    objects: Sequence[str] | None = None,
    base: str = "gemma27b_results",
    encoding: str = "index",
    link: bool = True,
) -> list[tuple[Path, Path]]:
    """Write ``pair_set`` in CreBench's layout under ``root``, one object per source folder.

    Per object: ``root/{object}/pair_{i:04d}_{0,1}.png`` for the labelled pairs renumbered
    ``0..n-1`` in file order (so a sorted listing lines up with the array rows), and
    ``root/{base}_{object}_mass.npy`` ``[n, 4]`` (single judge) or ``root/{base}_{object}.npy``
    ``[raters, n, 4]`` (human set), int64 in ``encoding`` (default ``index``: 0 = first wins,
    1 = second wins, 2 = tie). PNG images are hard-linked when ``link`` and possible, else
    copied; other formats are converted to PNG. ``objects`` defaults to the folder names.

    Returns ``(images folder, labels file)`` per object.
    """
    root = Path(root)
    objects = list(objects) if objects is not None else [Path(source.pairs_dir).name for source in pair_set.sources]
    if len(objects) != len(pair_set.sources):
        raise PairDataError(f"{len(objects)} object name(s) for {len(pair_set.sources)} source folder(s)")
    if len(set(objects)) != len(objects):
        raise PairDataError(f"object names must be distinct, got {objects} (pass objects=...)")
    written = []
    for number, name in enumerate(objects):
        rows = np.flatnonzero(pair_set.group == number)
        rows = rows[np.argsort(pair_set.position[rows], kind="stable")]
        folder = root / name
        if folder.exists() and any(PAIR_IMAGE.match(path.name) for path in folder.iterdir()):
            raise PairDataError(f"{folder} already holds pair images; write to an empty folder")
        folder.mkdir(parents=True, exist_ok=True)
        for new_index, row in enumerate(rows):
            for side, source in ((0, pair_set.image_0[row]), (1, pair_set.image_1[row])):
                _place_png(source, folder / f"pair_{new_index:04d}_{side}.png", link)
        if pair_set.rater_labels is not None:
            array = encode_labels(pair_set.rater_labels[:, rows], encoding)
            labels_path = root / f"{base}_{name}.npy"
        else:
            array = encode_labels(pair_set.labels[rows], encoding)
            labels_path = root / f"{base}_{name}_mass.npy"
        partial = labels_path.with_name(labels_path.name + ".partial.npy")
        np.save(partial, array)
        os.replace(partial, labels_path)
        written.append((folder, labels_path))
        logger.info("wrote %d pairs to %s and labels %s %s", len(rows), folder, labels_path, list(array.shape))
    return written


def _place_png(source: Path, target: Path, link: bool) -> None:
    if source.suffix.lower() == ".png":
        if link:
            try:
                os.link(source, target)
                return
            except OSError:
                pass
        shutil.copyfile(source, target)
        return
    from PIL import Image

    try:
        with Image.open(source) as image:
            image.save(target, format="PNG")
    except OSError as error:
        raise PairDataError(f"cannot convert {source} to PNG for {target}: {error}") from None
