"""Calibrated columns of a dataset job: ``creward score-dataset --reference REF``.

With a reference set (``creward calibrate``; ``creward.models.reference_set``), every part file
gains, computed on the driver as each part is written (so both engines give the same numbers),
the columns ``creward score --reference`` prints::

    <axis>_percentile (float32, 0-100), ... , <axis>_win (float32, 0-1), ..., reference_group (text)

``reference_group`` is the group of the reference each row was compared with (null: the whole
set). Which group a row asks for follows ``creward score --reference``:

- ``--group NAME``: that group for every row;
- a reference grouped by ``folder``: the name of the image's folder (``folder_group``); a tar
  member counts as the file ``<shard name without .tar>/<member>`` (where extracting the shard
  into a folder of its name would put it), so a member ``000123.jpg`` of ``00001.tar`` asks for
  group ``00001``;
- a reference grouped by ``column:NAME``: the row's carried column ``NAME`` (``--columns NAME``
  is required; a row without a value is compared with the whole set);
- otherwise the whole set.

A group the reference lacks falls back to the whole set with a warning (the reference's own,
logged once per job rather than once per part). The values are exactly
``ReferenceSet.calibrate`` on the stored float32 scores, unrounded (``creward score`` prints them
rounded to 3 and 5 decimals).

The reference is identified by the SHA-256 of its canonical JSON (``ReferenceSet.to_json``) and
the ``--group`` given; that identity goes into each part file's metadata (``creward.reference.*``)
and into ``_creward_job.json``. Calibrated columns are derived data: when a rerun names another
reference, the finished parts are recalibrated from their stored scores (rewritten in place,
atomically, without rescoring); see ``ScoresFolder.use_calibration``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..models.errors import CREwardError

logger = logging.getLogger(__name__)

GROUP_COLUMN = "reference_group"
KINDS = ("percentile", "win")


def calibrated_columns(axes: Sequence[str]) -> list[str]:
    """``<axis>_percentile`` for every axis, then ``<axis>_win``, then ``reference_group`` (the order of ``creward score --json``)."""
    return [f"{axis}_percentile" for axis in axes] + [f"{axis}_win" for axis in axes] + [GROUP_COLUMN]


class _OncePerJob(logging.Filter):
    """Lets each distinct message through once: the reference warns about a missing or coarse
    group on every ``calibrate`` call, and a job calls it once per part."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


class DatasetCalibration:
    """A reference set as a dataset job uses it: which group each row asks for, and the columns.

    Args:
        reference: the loaded reference set.
        group: ``--group NAME``: compare every row with this group (None: per row, see the module docstring).
        columns: the columns the job carries (a ``column:NAME`` reference needs ``NAME`` among them).

    Raises ``CREwardError`` when the reference is grouped by a column the job does not carry.
    """

    def __init__(self, reference, group: str | None = None, columns: Sequence[str] = ()):
        from ..models.reference_set import COLUMN_PREFIX

        self.reference = reference
        self.group = group or None
        self.column = None
        if self.group is None and reference.group_by and reference.group_by.startswith(COLUMN_PREFIX):
            self.column = reference.group_by[len(COLUMN_PREFIX):]
            if self.column not in tuple(columns):
                raise CREwardError(
                    f"reference {reference.name!r} ({reference.path or 'in memory'}) is grouped by {reference.group_by}: carry that "
                    f"column with --columns {self.column} (from the lists or the shards' .json members), or pass --group NAME"
                )
        self.digest = "sha256:" + hashlib.sha256(reference.to_json().encode("utf-8")).hexdigest()
        self._filter = _OncePerJob()

    @classmethod
    def load(cls, path: str | os.PathLike, group: str | None = None, columns: Sequence[str] = ()) -> "DatasetCalibration":
        """Read a reference file (``ReferenceError`` naming it when unreadable)."""
        from ..models.reference_set import ReferenceSet

        return cls(ReferenceSet.load(path), group, columns)

    def check_scorer(self, head_path: str | os.PathLike, backbone: str | None = None) -> None:
        """``ReferenceMismatchError`` (as ``creward score --reference``) unless the head at ``head_path`` made the reference."""
        from ..models.scorer_identity import ScorerIdentity

        self.reference.check_scorer(ScorerIdentity.of_head_file(head_path, backbone))

    # -- identity ------------------------------------------------------------------------------
    @property
    def key(self) -> dict:
        """What the calibrated values depend on besides the scores (compared between runs)."""
        return {"sha256": self.digest, "group": self.group}

    def describe(self) -> str:
        where = f", group {self.group}" if self.group else (f", per {self.reference.group_by}" if self.reference.group_by else "")
        return f"reference {self.reference.name} ({self.reference.count} images{where})"

    def record(self) -> dict:
        """The reference's identity, for ``_creward_job.json``."""
        return {
            **self.key, "name": self.reference.name, "path": self.reference.path, "group_by": self.reference.group_by,
            "count": self.reference.count, "scorer": self.reference.scorer.as_dict(),
        }

    def file_metadata(self) -> dict[str, str]:
        """``reference.*`` entries of the part files' metadata (prefixed ``creward.`` there)."""
        return {
            "reference.name": self.reference.name,
            "reference.sha256": self.digest,
            "reference.path": str(Path(self.reference.path).resolve()) if self.reference.path else "",
            "reference.group_by": self.reference.group_by or "",
            "reference.group": self.group or "",
            "reference.count": str(self.reference.count),
            "reference.head_hash": self.reference.scorer.head_hash,
        }

    # -- values --------------------------------------------------------------------------------
    def requested_group(self, row: dict) -> str | None:
        """The reference group a row asks for (see the module docstring)."""
        from ..models.reference_set import FOLDER, folder_group

        if self.group is not None:
            return self.group
        if self.column is not None:
            value = row.get(self.column)
            return None if value is None or value == "" else str(value)
        if self.reference.group_by == FOLDER:
            if row.get("path"):
                return folder_group(row["path"])
            if row.get("shard"):
                return folder_group(f"{Path(row['shard']).stem}/{row.get('member') or row['key']}")
            return folder_group(row["key"])
        return None

    @contextmanager
    def _quiet_repeats(self) -> Iterator[None]:
        from ..models import reference_set

        reference_set.logger.addFilter(self._filter)
        try:
            yield
        finally:
            reference_set.logger.removeFilter(self._filter)

    def add_columns(self, rows: Sequence[dict], axes: Sequence[str]) -> list[dict]:
        """``rows`` (output rows, scores None when unreadable) with the calibrated columns set."""
        axes = tuple(axes)
        rows = [dict(row) for row in rows]
        for row in rows:
            row.update(dict.fromkeys(calibrated_columns(axes)))
        scored = [index for index, row in enumerate(rows) if row.get("error") is None and all(row.get(axis) is not None for axis in axes)]
        if not scored:
            return rows
        values = np.asarray([[rows[index][axis] for axis in axes] for index in scored], dtype=np.float32)
        groups = [self.requested_group(rows[index]) for index in scored]
        with self._quiet_repeats():
            calibration = self.reference.calibrate(values, axes, groups)
        percentiles = calibration.percentiles.numpy()
        win = calibration.win.numpy()
        for position, index in enumerate(scored):
            row = rows[index]
            for a, axis in enumerate(axes):
                row[f"{axis}_percentile"] = _finite_or_none(percentiles[position, a])
                row[f"{axis}_win"] = _finite_or_none(win[position, a])
            row[GROUP_COLUMN] = calibration.groups[position]
        return rows


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


__all__ = ["DatasetCalibration", "GROUP_COLUMN", "calibrated_columns"]
