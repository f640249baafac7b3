"""The output folder of ``creward score-dataset``: a Parquet dataset written part by part.

Layout::

    OUT/part-<hash>.parquet    one file per finished input part (a shard, or up to --part-size files)
    OUT/_creward_job.json      which head, backbone weights, dtype and carried columns scored it
    OUT/_creward_parts.jsonl   the manifest: one line per finished part (id, file, fingerprint, rows)

Readers that open ``OUT`` as a dataset (``pyarrow.dataset``, ``pandas.read_parquet``,
``ray.data.read_parquet``) skip the ``_``- and ``.``-prefixed files. Each part file is written
under a temporary ``.``-name and renamed into place, then its manifest line is appended (and
synced), so a killed job leaves only whole part files; on a rerun the parts in the manifest are
skipped. Columns, one row per image::

    key, path, shard, member, folder, part, <axes...> (float32, null when unreadable),
    [with --reference: <axis>_percentile..., <axis>_win..., reference_group], error, <carried columns>

and the file metadata (``creward.*`` keys) name and hash the head and the backbone weights (and,
with a reference, the reference: ``creward.reference.*``, see ``creward.dataset.calibrated``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from ..models.errors import CREwardError, MissingDependencyError
from .inputs import part_file_name

logger = logging.getLogger(__name__)

JOB_FILE = "_creward_job.json"
MANIFEST_FILE = "_creward_parts.jsonl"
FORMAT_VERSION = "1"
TEXT_COLUMNS = ("key", "path", "shard", "member", "folder", "part")
# What must match for a rerun to add to an existing output instead of mixing results.
IDENTITY_FIELDS = ("axes", "head_sha256", "backbone", "backbone_weights_id", "dtype", "columns")


class DatasetOutputError(CREwardError):
    """The output folder cannot be used (holds other files, or another model's scores)."""


def require_pyarrow(feature: str = "creward score-dataset"):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError("pyarrow", feature, "'comfyui-creward[parquet]' (or: pip install pyarrow)") from None
    import pyarrow

    return pyarrow


def schema(axes: Sequence[str], columns: Sequence[str], metadata: dict[str, str] | None = None, calibrated: bool = False):
    """The part files' schema; ``calibrated`` adds the columns of ``creward.dataset.calibrated``."""
    from .calibrated import GROUP_COLUMN, calibrated_columns

    pa = require_pyarrow()
    fields = [pa.field(name, pa.string()) for name in TEXT_COLUMNS]
    fields += [pa.field(axis, pa.float32()) for axis in axes]
    if calibrated:
        fields += [pa.field(name, pa.string() if name == GROUP_COLUMN else pa.float32()) for name in calibrated_columns(axes)]
    fields.append(pa.field("error", pa.string()))
    fields += [pa.field(name, pa.string()) for name in columns]
    return pa.schema(fields, metadata={f"creward.{key}": str(value) for key, value in (metadata or {}).items()})


def rows_to_table(rows: Sequence[dict], axes: Sequence[str], columns: Sequence[str], metadata: dict[str, str] | None = None,
                  calibrated: bool = False):
    """Output rows (dicts with the column names; missing scores as None) → a pyarrow Table."""
    pa = require_pyarrow()
    target = schema(axes, columns, metadata, calibrated)
    data = {}
    for name in target.names:
        values = [row.get(name) for row in rows]
        if pa.types.is_floating(target.field(name).type):
            values = [None if value is None or value != value else float(value) for value in values]
        data[name] = values
    return pa.Table.from_pydict(data, schema=target)


def _fsync_append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _readable_by_all(path: str | os.PathLike) -> None:
    """``mkstemp`` creates files 0600; give them the permissions a normal file would get."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _write_json_atomically(path: Path, data: dict) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1)
            stream.write("\n")
        _readable_by_all(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ScoresFolder:
    """An output folder: checks it belongs to this job, lists finished parts, writes new ones.

    Args:
        path: the folder (created when missing).
        identity: what scored it (``IDENTITY_FIELDS`` plus names for people); a rerun with another
            identity is refused unless ``overwrite``.
        overwrite: delete the parts and manifest of an earlier job first.
        calibration: a ``DatasetCalibration`` (``--reference``): every part written gets its
            calibrated columns; finished parts calibrated otherwise are brought up to date by
            :meth:`recalibrate`. Without one, a folder whose parts are calibrated is refused.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, overwrite: bool = False, calibration=None):
        require_pyarrow()
        self.path = Path(path)
        self.identity = dict(identity)
        self.axes = tuple(identity["axes"])
        self.columns = tuple(identity.get("columns", ()))
        self.calibration = calibration
        self._job: dict = {}
        self._open(overwrite)

    # -- opening ---------------------------------------------------------------------------
    def _ours(self, child: Path) -> bool:
        name = child.name
        return child.is_file() and (
            name in (JOB_FILE, MANIFEST_FILE)
            or (name.startswith("part-") and name.endswith(".parquet"))
            or (name.startswith(".") and name.endswith(".partial"))
        )

    def _open(self, overwrite: bool) -> None:
        job_file = self.path / JOB_FILE
        if self.path.exists() and not self.path.is_dir():
            raise DatasetOutputError(f"output {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        children = list(self.path.iterdir())
        foreign = [child for child in children if not self._ours(child)]
        if foreign and not job_file.is_file():
            raise DatasetOutputError(
                f"output folder {self.path} is not empty and was not written by creward score-dataset "
                f"(it holds {foreign[0].name}); choose a new or empty folder"
            )
        for child in children:  # temporary files of a killed run: never finished, never listed
            if child.name.startswith(".") and child.name.endswith(".partial"):
                child.unlink(missing_ok=True)
        if overwrite:
            for child in self.path.iterdir():
                if self._ours(child):
                    child.unlink()
            logger.info("--overwrite: removed the earlier parts in %s", self.path)
        elif job_file.is_file():
            try:
                earlier = json.loads(job_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise DatasetOutputError(f"{job_file} is unreadable ({error}); pass --overwrite to start over") from None
            changed = [name for name in IDENTITY_FIELDS if _normal(earlier.get(name)) != _normal(self.identity.get(name))]
            if changed:
                details = "; ".join(f"{name}: was {earlier.get(name)!r}, now {self.identity.get(name)!r}" for name in changed)
                raise DatasetOutputError(
                    f"{self.path} holds scores from another setup ({details}); pass --overwrite to rescore everything, "
                    f"or write to another folder"
                )
            recorded = earlier.get("reference")
            if recorded is not None and self.calibration is None:
                where = f" ({recorded.get('path')})" if recorded.get("path") else ""
                raise DatasetOutputError(
                    f"{self.path} holds percentiles against reference {recorded.get('name')!r}{where}: pass --reference again "
                    f"(the same file, or another one to recalibrate the finished parts from their scores), or --overwrite to "
                    f"rescore without a reference"
                )
            self._job = earlier
            return
        self._job = {"format": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.identity,
                     "reference": self.calibration.record() if self.calibration is not None else None}
        _write_json_atomically(job_file, self._job)

    # -- calibration -----------------------------------------------------------------------
    def _part_calibration(self, file: Path) -> dict | None:
        """``{"sha256", "group"}`` of the reference a part file was calibrated against, or None."""
        import pyarrow.parquet as pq

        metadata = pq.read_schema(file).metadata or {}
        digest = metadata.get(b"creward.reference.sha256")
        if not digest:
            return None
        return {"sha256": digest.decode(), "group": metadata.get(b"creward.reference.group", b"").decode() or None}

    def recalibrate(self) -> int:
        """Bring the finished parts to this folder's calibration, from their stored scores (no
        rescoring): each part calibrated against another reference (or none) is rewritten in
        place, atomically. Returns how many were rewritten. Safe to interrupt: the job file says
        a recalibration is under way until every part is done, so the next run finishes it.
        """
        import pyarrow.parquet as pq

        if self.calibration is None:
            return 0
        recorded = self._job.get("reference")
        current = self.calibration.key
        if not self._job.get("recalibrating") and recorded is not None and {"sha256": recorded.get("sha256"), "group": recorded.get("group")} == current:
            return 0
        finished = self.finished()
        self._job.update(reference=self.calibration.record(), recalibrating=True)
        _write_json_atomically(self.path / JOB_FILE, self._job)
        rewritten = 0
        for record in finished.values():
            file = self.path / record["file"]
            if self._part_calibration(file) == current:
                continue
            rows = pq.read_table(file).to_pylist()
            self._write_table(record["file"], rows)
            rewritten += 1
        if rewritten:
            was = f"reference {recorded.get('name')!r}" if recorded else "no reference"
            logger.info("recalibrated %d finished part(s) against %s (they had %s); no image was rescored",
                        rewritten, self.calibration.describe(), was)
        self._job["recalibrating"] = False
        _write_json_atomically(self.path / JOB_FILE, self._job)
        return rewritten

    # -- the manifest ----------------------------------------------------------------------
    def finished(self) -> dict[str, dict]:
        """Finished parts by id (their file present), from the manifest; a torn last line is ignored."""
        manifest = self.path / MANIFEST_FILE
        records: dict[str, dict] = {}
        if not manifest.is_file():
            return records
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                records[record["part"]] = record
            except (ValueError, KeyError, TypeError):
                logger.warning("%s line %d is damaged (a killed write?); ignoring it", manifest, number)
        return {part: record for part, record in records.items() if (self.path / record["file"]).is_file()}

    def file_metadata(self) -> dict[str, str]:
        calibration = self.calibration.file_metadata() if self.calibration is not None else {}
        return {
            "format": FORMAT_VERSION,
            "axes": json.dumps(list(self.axes)),
            "head.name": self.identity.get("head_name", ""),
            "head.sha256": self.identity.get("head_sha256", ""),
            "backbone.name": self.identity.get("backbone", ""),
            "backbone.weights": self.identity.get("backbone_weights", ""),
            "backbone.weights_id": self.identity.get("backbone_weights_id", ""),
            "dtype": self.identity.get("dtype", ""),
            **calibration,
        }

    def write_part(self, part_id: str, fingerprint: str, rows: Sequence[dict]) -> dict:
        """Write one part (rows in order) atomically, then record it in the manifest."""
        name = part_file_name(part_id)
        self._write_table(name, rows)
        errors = sum(row.get("error") is not None for row in rows)
        record = {"part": part_id, "file": name, "fingerprint": fingerprint, "rows": len(rows), "errors": errors}
        _fsync_append(self.path / MANIFEST_FILE, json.dumps(record))
        return record

    def _write_table(self, name: str, rows: Sequence[dict]) -> None:
        """Write ``rows`` (with their calibrated columns, if calibrating) as the part file ``name``, atomically."""
        import pyarrow.parquet as pq

        if self.calibration is not None:
            rows = self.calibration.add_columns(rows, self.axes)
        table = rows_to_table(rows, self.axes, self.columns, self.file_metadata(), self.calibration is not None)
        handle, temporary = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".partial")
        os.close(handle)
        try:
            pq.write_table(table, temporary)
            _readable_by_all(temporary)
            os.replace(temporary, self.path / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read(self, part_ids: Iterable[str], columns: Sequence[str] | None = None):
        """The rows of these finished parts as one pyarrow Table (in the order of ``part_ids``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        finished = self.finished()
        tables = [pq.read_table(self.path / finished[part]["file"], columns=columns) for part in part_ids if part in finished]
        if not tables:
            empty = schema(self.axes, self.columns, calibrated=self.calibration is not None).empty_table()
            return empty if columns is None else empty.select(list(columns))
        return pa.concat_tables(tables)


def _normal(value):
    """Compare identities read back from JSON with fresh ones (tuples vs lists)."""
    if isinstance(value, (list, tuple)):
        return [_normal(item) for item in value]
    return value


def sample_row(sample, axes: Sequence[str], scores: Sequence[float] | None = None, error: str | None = None) -> dict:
    """The output row of a sample: its names, its scores (None when unreadable) and the error."""
    row = {
        "key": sample.key, "path": sample.path, "shard": sample.shard, "member": sample.member,
        "folder": sample.folder, "part": sample.part, "error": error if error is not None else sample.error,
        **sample.columns,
    }
    for index, axis in enumerate(axes):
        row[axis] = None if scores is None or row["error"] is not None else scores[index]
    return row
