"""Read score files written by CREward: ``creward score --json`` / ``--csv``, Parquet, acquisition manifests.

Every reader gives :class:`ScoreRecords`: one row per image with its scores (NaN where a row has
no score), the error of rows that could not be scored, the other columns (``path``, ``key``,
``shard``, ``prompt`` ...) and, when the file records it, the :class:`ScorerIdentity` of the head
that produced the scores.

Formats:

- JSON list (``creward score --json``): ``[{"path", "geometry", ..., "error"?}, ...]``; error rows
  have no scores (or null scores) and an ``error``.
- CSV (``creward score --csv``): a header with ``path``, the axes and ``error``; empty = no value.
- Parquet (the dataset job's output; a file or a folder of part files, ``_``/``.``-prefixed files
  skipped): the axis columns, an ``error`` column, ``path``/``key``/``shard``; in the schema
  metadata either ``creward.scorer`` (a :class:`ScorerIdentity` as JSON) or the dataset job's
  ``creward.head.name`` / ``creward.head.sha256`` (SHA-256 of the head *file*) /
  ``creward.backbone.name`` keys, kept in ``ScoreRecords.head_file`` to be checked against the head
  file given. Needs ``pyarrow``.
- ``manifest.json`` of ``creward train acquire``: every sample's scores, with a ``prompt`` column.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .axes import AXES
from .errors import CREwardError, MissingDependencyError
from .scorer_identity import ScorerIdentity

logger = logging.getLogger(__name__)

SCORE_FILE_SUFFIXES = (".json", ".csv", ".parquet")
SCORER_METADATA_KEY = "creward.scorer"
ACQUIRE_FORMAT = "creward-acquire"


@dataclass
class ScoreRecords:
    """Rows of scores read from one file.

    Attributes:
        source: the file (or folder) read.
        axes: the axis columns, in order.
        values: float64 ``[N, len(axes)]``; NaN where a row has no value.
        errors: per row, its error text, or None for a scored row.
        columns: other columns, name -> list of N values (strings or None).
        scorer: the head/backbone identity recorded in the file, if any.
        head_file: what the dataset job records instead: ``{"name", "sha256", "backbone"}``
            (``sha256`` of the head file's bytes, ``"sha256:<hex>"``), if any.
    """

    source: str
    axes: tuple[str, ...]
    values: np.ndarray
    errors: list[str | None]
    columns: dict[str, list] = field(default_factory=dict)
    scorer: ScorerIdentity | None = None
    head_file: dict | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def scored(self) -> np.ndarray:
        """Boolean mask of the rows without an error."""
        return np.asarray([error is None for error in self.errors], dtype=bool)

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise CREwardError(f"{self.source} has no column {name!r} (columns: {', '.join(sorted(self.columns)) or 'none besides the scores'})")
        return self.columns[name]

    def locations(self) -> list[str | None]:
        """Each row's image path (``path``, else ``key``), for grouping by folder."""
        for name in ("path", "key", "file"):
            if name in self.columns:
                return [None if value is None else str(value) for value in self.columns[name]]
        raise CREwardError(f"{self.source} has no 'path' or 'key' column: it cannot be grouped by folder (group by a column instead)")


def is_score_file(path: str | os.PathLike) -> bool:
    """A score file by name: ``.json``/``.csv``/``.parquet``, or a folder holding ``.parquet`` parts."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in SCORE_FILE_SUFFIXES
    return path.is_dir() and bool(_parquet_parts(path))


def read_score_file(path: str | os.PathLike, axes: Sequence[str] = AXES) -> ScoreRecords:
    """Read any supported score file (see the module docstring); ``CREwardError`` naming it when malformed."""
    path = Path(path)
    if path.is_dir():
        return read_parquet(path, axes)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_json(path, axes)
    if suffix == ".csv":
        return read_csv(path, axes)
    if suffix == ".parquet":
        return read_parquet(path, axes)
    raise CREwardError(f"{path}: not a score file (expected {', '.join(SCORE_FILE_SUFFIXES)} or a folder of .parquet files)")


def _number(value, source: str, row: int, axis: str) -> float:
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool):
        raise CREwardError(f"{source}: row {row} has {axis} = {value!r}, expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CREwardError(f"{source}: row {row} has {axis} = {value!r}, expected a number") from None


def _from_items(items: list[dict], source: str, axes: Sequence[str], scorer: ScorerIdentity | None = None) -> ScoreRecords:
    axes = tuple(axes)
    values = np.full((len(items), len(axes)), np.nan)
    errors: list[str | None] = []
    names = sorted({key for item in items for key in item} - set(axes) - {"error"})
    columns: dict[str, list] = {name: [] for name in names}
    for row, item in enumerate(items):
        if not isinstance(item, dict):
            raise CREwardError(f"{source}: item {row} is {type(item).__name__}, expected an object with the axis scores")
        error = item.get("error")
        errors.append(str(error) if error not in (None, "") else None)
        for a, axis in enumerate(axes):
            values[row, a] = _number(item.get(axis), source, row, axis)
        if errors[-1] is None and np.isnan(values[row]).all() and not any(axis in item for axis in axes):
            raise CREwardError(f"{source}: item {row} has none of the axis scores ({', '.join(axes)}) and no error")
        for name in names:
            value = item.get(name)
            columns[name].append(None if value is None or value == "" else value)
    return ScoreRecords(source, axes, values, errors, columns, scorer)


def read_json(path: Path, axes: Sequence[str] = AXES) -> ScoreRecords:
    """``creward score --json`` output, or a ``creward train acquire`` manifest."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CREwardError(f"{path} is not readable JSON: {error}") from None
    except OSError as error:
        raise CREwardError(f"{path} could not be read: {error}") from None
    if isinstance(data, dict) and data.get("format") == ACQUIRE_FORMAT:
        return _read_acquire_manifest(data, Path(path), axes)
    if not isinstance(data, list):
        raise CREwardError(f"{path}: expected a JSON list of score items (creward score --json) or an acquisition manifest, got {type(data).__name__}")
    return _from_items(data, str(path), axes)


def _read_acquire_manifest(data: dict, path: Path, axes: Sequence[str]) -> ScoreRecords:
    prompts = data.get("prompts") or []
    samples = data.get("samples")
    if not isinstance(samples, list):
        raise CREwardError(f"{path}: acquisition manifest without a 'samples' list")
    items = []
    for sample in samples:
        scores = sample.get("scores") or {}
        index = sample.get("prompt_index")
        prompt = prompts[index] if isinstance(index, int) and 0 <= index < len(prompts) else None
        items.append({"path": str(path.parent / sample.get("file", "")), "prompt": prompt, **scores})
    return _from_items(items, str(path), axes)


def read_csv(path: Path, axes: Sequence[str] = AXES) -> ScoreRecords:
    """``creward score --csv`` output (or any CSV with the axis columns)."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            items = list(reader)
            header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as error:
        raise CREwardError(f"{path} is not a readable CSV file: {error}") from None
    except OSError as error:
        raise CREwardError(f"{path} could not be read: {error}") from None
    missing = [axis for axis in axes if axis not in header]
    if missing:
        raise CREwardError(f"{path}: no {', '.join(missing)} column(s) (header: {', '.join(header) or 'empty'}); expected creward score --csv output")
    return _from_items(items, str(path), axes)


def _parquet_parts(folder: Path) -> list[Path]:
    return sorted(
        child for child in folder.rglob("*.parquet")
        if child.is_file() and not any(part.startswith((".", "_")) for part in child.relative_to(folder).parts)
    )


def _scorer_from_metadata(metadata: dict | None, source: str) -> tuple[ScorerIdentity | None, dict | None]:
    """``(scorer, head_file)`` from Parquet schema metadata (see the module docstring)."""
    metadata = {key.decode("utf-8", "replace"): value.decode("utf-8", "replace") for key, value in (metadata or {}).items()}
    if SCORER_METADATA_KEY in metadata:
        try:
            data = json.loads(metadata[SCORER_METADATA_KEY])
        except json.JSONDecodeError as error:
            raise CREwardError(f"{source}: metadata {SCORER_METADATA_KEY} is not JSON: {error}") from None
        return ScorerIdentity.from_dict(data, f"{source}: metadata {SCORER_METADATA_KEY}"), None
    if metadata.get("creward.head.sha256"):
        return None, {
            "name": metadata.get("creward.head.name") or "?",
            "sha256": metadata["creward.head.sha256"],
            "backbone": metadata.get("creward.backbone.name") or None,
        }
    return None, None


def read_parquet(path: Path, axes: Sequence[str] = AXES) -> ScoreRecords:
    """A Parquet file, or a folder of Parquet part files (read in name order)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "reading Parquet score files") from None
    path = Path(path)
    parts = _parquet_parts(path) if path.is_dir() else [path]
    if not parts:
        raise CREwardError(f"{path}: no .parquet files in this folder")
    records = []
    for part in parts:
        try:
            table = pq.read_table(part)
        except Exception as error:  # pyarrow raises ArrowInvalid/OSError subclasses for corrupt files
            raise CREwardError(f"{part} is not a readable Parquet file: {error}") from None
        missing = [axis for axis in axes if axis not in table.column_names]
        if missing:
            raise CREwardError(f"{part}: no {', '.join(missing)} column(s) (columns: {', '.join(table.column_names)})")
        scorer, head_file = _scorer_from_metadata(table.schema.metadata, str(part))
        count = table.num_rows
        try:
            values = np.stack([table.column(axis).to_numpy(zero_copy_only=False).astype(np.float64) for axis in axes], axis=1) if count else np.zeros((0, len(axes)))
        except (TypeError, ValueError) as error:
            raise CREwardError(f"{part}: the axis columns should hold numbers: {error}") from None
        others = table.drop_columns([axis for axis in axes]).to_pydict()
        errors = [None if e in (None, "") else str(e) for e in others.pop("error", [None] * count)]
        records.append(ScoreRecords(str(part), tuple(axes), values.reshape(count, len(axes)), errors, others, scorer, head_file))
    return concat_records(records, str(path))


def concat_records(records: Sequence[ScoreRecords], source: str) -> ScoreRecords:
    """One :class:`ScoreRecords` of several (same axes; scorer identities must agree)."""
    if len(records) == 1:
        only = records[0]
        return ScoreRecords(source, only.axes, only.values, only.errors, only.columns, only.scorer, only.head_file)
    scorers = {record.scorer for record in records if record.scorer is not None}
    head_files = {json.dumps(record.head_file, sort_keys=True) for record in records if record.head_file is not None}
    if len(scorers) > 1 or len(head_files) > 1:
        described = "; ".join(
            f"{record.source}: {record.scorer.describe() if record.scorer else record.head_file}" for record in records
        )
        raise CREwardError(f"{source}: the parts were scored by different heads ({described})")
    names = sorted({name for record in records for name in record.columns})
    columns = {name: [value for record in records for value in record.columns.get(name, [None] * len(record))] for name in names}
    return ScoreRecords(
        source,
        records[0].axes,
        np.concatenate([record.values for record in records]),
        [error for record in records for error in record.errors],
        columns,
        next(iter(scorers)) if scorers else None,
        json.loads(head_files.pop()) if head_files else None,
    )
