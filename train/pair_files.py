"""Pair images and JSONL label records on disk: the one finder and the one reader.

Used by ``creward train label`` (which writes the labels) and by the pair datasets of
``train.pairs`` (which read them); standard library only, so neither pulls anything heavy.

- Pair images: ``pair_{idx:04d}_0.png`` and ``pair_{idx:04d}_1.png`` in one folder (.jpg, .jpeg
  and .webp accepted too).
- Label records (the format is documented in ``train.label``): one JSON object per line with an
  integer ``pair`` and a ``status`` of ``"ok"`` or ``"malformed"``. The last record of a pair wins;
  lines that are not such records (e.g. a truncated last line left by a killed run) are skipped.

Each caller passes its own error class (``LabelError``, ``PairDataError``), so messages name the
file in the caller's terms.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..models.errors import CREwardError

PAIR_IMAGE = re.compile(r"^pair_(\d+)_([01])\.(png|jpg|jpeg|webp)$", re.IGNORECASE)
EXPECTED_NAMES = "pair_{idx:04d}_0.png and pair_{idx:04d}_1.png (e.g. pair_0000_0.png, pair_0000_1.png)"
STATUSES = ("ok", "malformed")


@dataclass(frozen=True)
class PairImages:
    """One pair's two image files; ``index`` is the idx in ``pair_{idx:04d}_{0,1}``."""

    index: int
    image_0: Path
    image_1: Path


def find_pair_images(pairs_dir: str | os.PathLike, error: type[CREwardError] = CREwardError) -> list[PairImages]:
    """Every pair in ``pairs_dir`` sorted by idx (CreBench's file order).

    Raises ``error`` when the folder is missing, holds no pairs, holds two images for one side
    of a pair, or an image lacks its partner (naming the missing file).
    """
    folder = Path(pairs_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise error(f"pairs folder {folder} {what}; expected a folder of images named {EXPECTED_NAMES}")
    halves: dict[int, dict[int, Path]] = {}
    stems: dict[int, tuple[str, str]] = {}  # idx -> (digits as written, extension), to name a missing partner
    for path in folder.iterdir():
        match = PAIR_IMAGE.match(path.name)
        if match and path.is_file():
            index, side = int(match.group(1)), int(match.group(2))
            if side in halves.get(index, {}):
                raise error(
                    f"{folder}: two images for pair {index} side {side}: {halves[index][side].name} and {path.name}; "
                    "expected exactly one"
                )
            halves.setdefault(index, {})[side] = path
            stems.setdefault(index, (match.group(1), match.group(3)))
    if not halves:
        raise error(f"no pairs found in {folder}; expected images named {EXPECTED_NAMES}")
    missing = [
        folder / f"pair_{stems[index][0]}_{side}.{stems[index][1]}"
        for index, sides in sorted(halves.items())
        for side in (0, 1)
        if side not in sides
    ]
    if missing:
        raise error(
            f"{len(missing)} pair image(s) missing their partner in {folder}: {some(missing)} not found "
            "(each pair needs _0 and _1)"
        )
    return [PairImages(index, sides[0], sides[1]) for index, sides in sorted(halves.items())]


def parse_label_record(line: bytes | str) -> dict[str, Any] | None:
    """A label record from one line, or None if the line is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return None
    pair = record.get("pair")
    if not isinstance(pair, int) or isinstance(pair, bool):
        return None
    return record


def parse_label_lines(lines: Iterable[bytes | str]) -> tuple[dict[int, dict[str, Any]], int]:
    """Label records by pair idx (the last record of a pair wins), and how many non-blank lines
    were not records (skipped)."""
    records: dict[int, dict[str, Any]] = {}
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        record = parse_label_record(line)
        if record is None:
            skipped += 1
        else:
            records[record["pair"]] = record
    return records, skipped


def read_label_records(
    path: str | os.PathLike, error: type[CREwardError] = CREwardError
) -> tuple[dict[int, dict[str, Any]], int]:
    """:func:`parse_label_lines` of a labels JSONL. Read-only; an unreadable file raises ``error``."""
    try:
        with open(path, "rb") as handle:
            return parse_label_lines(handle)
    except OSError as failure:
        raise error(f"cannot read labels file {path}: {failure.strerror or failure}") from None


def some(paths, limit: int = 5) -> str:
    """The first ``limit`` paths, comma-separated, and how many more."""
    paths = [str(path) for path in paths]
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
