"""What a dataset job reads: inputs expanded into *parts*, the unit of output and of resuming.

Each ``INPUT`` of ``creward score-dataset`` is one of:

- a folder: its image files, recursively, sorted; key = path relative to the folder;
- a glob (``data/**/*.png``, ``shards/*.tar``; quote it): each match is taken as below, images
  keyed relative to the glob's fixed leading folder;
- an image file: key = the path as given;
- a WebDataset shard ``*.tar``: one part per shard (see ``creward.dataset.samples``);
- a list ``*.parquet`` / ``*.csv`` with one image path per row in ``path_column``; relative
  paths are relative to the list's folder; key = the path as written.

Image files (folders, globs, lists) are cut into parts of ``part_size`` files in input order. A
part's ``fingerprint`` changes when its files change (listed names) or its shard changes (size,
modification time), so a rerun rescoring only what changed is possible.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from ..models.errors import CREwardError, MissingDependencyError
from ..models.preprocess import is_image_file
from .samples import Sample

logger = logging.getLogger(__name__)

LIST_SUFFIXES = (".parquet", ".csv")
SHARD_SUFFIXES = (".tar",)
COMPRESSED_SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


class DatasetInputError(CREwardError):
    """An input cannot be used at all (missing, unsupported, a list without its path column)."""


@dataclass(frozen=True)
class Part:
    """A unit of work and of output: one shard, or up to ``part_size`` image files.

    ``samples`` are known up front for files; a shard's samples are listed when it is read
    (``samples`` is empty and ``shard`` is set).
    """

    id: str
    fingerprint: str
    samples: tuple[Sample, ...] = ()
    shard: str | None = None

    @property
    def size(self) -> int | None:
        """Number of samples, or None for a shard not yet listed."""
        return None if self.shard is not None else len(self.samples)


def _is_glob(text: str) -> bool:
    return glob.has_magic(text)


def _fixed_root(pattern: str) -> Path:
    parts = PurePosixPath(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _folder_of(key: str) -> str:
    parent = PurePosixPath(key).parent.as_posix()
    return "" if parent == "." else parent


def _digest(items: Iterable[str]) -> str:
    digest = hashlib.sha1()
    for item in items:
        digest.update(item.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:20]


def _shard_part(path: Path) -> Part:
    absolute = path.resolve()
    try:
        stat = absolute.stat()
        fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        fingerprint = "unreadable"
    return Part(f"shard:{absolute}", fingerprint, shard=str(absolute))


def _file_parts(prefix: str, rows: Sequence[tuple[str, str, dict]], part_size: int) -> list[Part]:
    """``rows`` of (key, absolute path, columns) → parts of ``part_size``."""
    parts = []
    for number, start in enumerate(range(0, len(rows), part_size)):
        part_id = f"{prefix}#{number:05d}"
        chunk = rows[start:start + part_size]
        samples = tuple(
            Sample(part_id, index, key, path=path, folder=_folder_of(key), columns=columns)
            for index, (key, path, columns) in enumerate(chunk)
        )
        parts.append(Part(part_id, _digest(f"{key}\0{path}" for key, path, _ in chunk), samples))
    return parts


def _read_list(path: Path, path_column: str, columns: tuple[str, ...]) -> list[tuple[str, str, dict]]:
    """(key, absolute path, carried columns) of every row of a Parquet/CSV list; None paths become errors later."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            names = reader.fieldnames or []
            present = _check_columns(path, names, path_column, columns)
            records = [(row.get(path_column), {name: (row.get(name) or None) if name in present else None for name in columns}) for row in reader]
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingDependencyError("pyarrow", "reading Parquet path lists", "'comfyui-creward[parquet]' (or: pip install pyarrow)") from None
        try:
            schema = pq.read_schema(path)
        except Exception as error:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
            raise DatasetInputError(f"{path} is not a readable Parquet file: {error}") from None
        present = _check_columns(path, schema.names, path_column, columns)
        table = pq.read_table(path, columns=[path_column, *[name for name in present if name != path_column]])
        paths = table.column(path_column).to_pylist()
        carried = {
            name: [None if value is None else str(value) for value in table.column(name).to_pylist()] if name in present else [None] * len(paths)
            for name in columns
        }
        records = [(value, {name: carried[name][row] for name in columns}) for row, value in enumerate(paths)]
    rows = []
    for value, carried_values in records:
        key = "" if value is None else str(value)
        resolved = str((path.parent / key).resolve()) if key else ""
        rows.append((key, resolved, carried_values))
    return rows


def _check_columns(path: Path, names: Sequence[str], path_column: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The carried columns this list has (a missing one is carried as null, with a warning)."""
    if path_column not in names:
        raise DatasetInputError(
            f"{path} has no column {path_column!r} (columns: {', '.join(names) or 'none'}); "
            f"pass --path-column NAME for the column holding the image paths"
        )
    missing = [name for name in columns if name not in names]
    if missing:
        logger.warning("%s has no column %s: carried as empty", path, ", ".join(repr(name) for name in missing))
    return tuple(name for name in columns if name in names)


def expand_inputs(
    inputs: Sequence[str],
    part_size: int = 1000,
    path_column: str = "path",
    columns: tuple[str, ...] = (),
) -> list[Part]:
    """Every input as parts, in input order. Raises ``DatasetInputError`` naming a bad input."""
    if part_size <= 0:
        raise DatasetInputError(f"part size should be positive, got {part_size}")
    parts: list[Part] = []
    loose: list[tuple[str, str, dict]] = []  # image files named one by one, gathered into parts
    no_columns = {name: None for name in columns}

    def add_path(path: Path, key: str | None, origin: str) -> None:
        name = path.name.lower()
        if path.is_dir():
            add_folder(path)
        elif name.endswith(COMPRESSED_SHARD_SUFFIXES):
            raise DatasetInputError(f"{path} is a compressed tar: only uncompressed .tar shards are read (decompress it first)")
        elif name.endswith(SHARD_SUFFIXES):
            parts.append(_shard_part(path))
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            rows = _read_list(path, path_column, columns)
            if not rows:
                logger.warning("%s lists no images", path)
            parts.extend(_file_parts(f"list:{path.resolve()}", rows, part_size))
        elif is_image_file(path) and path.is_file():
            loose.append((key or str(path), str(path.resolve()), dict(no_columns)))
        elif not path.exists():
            raise DatasetInputError(f"no such file or folder: {path}{origin}")
        elif is_image_file(path):
            raise DatasetInputError(f"{path}{origin} is not a regular file")
        else:
            raise DatasetInputError(
                f"unsupported input {path}{origin}: expected a folder, an image, a WebDataset shard (.tar), "
                f"a list of paths (.parquet or .csv) or a glob of these"
            )

    def add_folder(folder: Path) -> None:
        children = [child for child in folder.rglob("*") if child.is_file()]
        files = sorted(child for child in children if is_image_file(child))
        shards = [child for child in children if child.name.lower().endswith(SHARD_SUFFIXES)]
        if shards:
            logger.warning("%s holds %d .tar file(s), which a folder input does not read: pass them as shards ('%s/*.tar')", folder, len(shards), folder)
        if not files:
            logger.warning("no image files in %s", folder)
        rows = [(child.relative_to(folder).as_posix(), str(child.resolve()), dict(no_columns)) for child in files]
        parts.extend(_file_parts(f"folder:{folder.resolve()}", rows, part_size))

    for raw in inputs:
        if _is_glob(raw) and not Path(raw).exists():
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise DatasetInputError(f"no files match {raw!r}")
            root = _fixed_root(raw)
            images = [Path(match) for match in matches if Path(match).is_file() and is_image_file(match)]
            if images:
                rows = [(_relative_key(image, root), str(image.resolve()), dict(no_columns)) for image in images]
                parts.extend(_file_parts(f"glob:{Path(raw).absolute()}", rows, part_size))
            for match in matches:
                path = Path(match)
                if path.is_file() and is_image_file(path):
                    continue
                if path.is_dir():
                    continue  # a glob's folders are walked only when named directly
                add_path(path, None, f" (matched by {raw!r})")
        else:
            add_path(Path(raw), raw, "")
    if loose:
        parts.extend(_file_parts("files:" + _digest(path for _, path, _ in loose)[:12], loose, part_size))
    seen: dict[str, int] = {}
    for part in parts:
        seen[part.id] = seen.get(part.id, 0) + 1
    repeated = [part_id for part_id, count in seen.items() if count > 1]
    if repeated:
        raise DatasetInputError(f"the same input is given twice: {repeated[0].split(':', 1)[1].split('#')[0]}")
    return parts


def _relative_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def samples_of(part: Part, columns: tuple[str, ...] = ()) -> list[Sample]:
    """The part's samples; a shard is listed now. Listed files that are missing become error rows later."""
    if part.shard is None:
        return [sample if sample.path else Sample(**{**sample.to_dict(), "error": f"empty path in {part.id.split(':', 1)[1]}"}) for sample in part.samples]
    from .samples import list_shard

    return list_shard(part.shard, part.id, columns)


def describe_parts(parts: Sequence[Part]) -> str:
    shards = sum(part.shard is not None for part in parts)
    files = sum(len(part.samples) for part in parts)
    text = []
    if files:
        text.append(f"{files} image file(s) in {len(parts) - shards} part(s)")
    if shards:
        text.append(f"{shards} shard(s)")
    return ", ".join(text) or "nothing"


def part_file_name(part_id: str) -> str:
    """The output file of a part: ``part-<hash of its id>.parquet`` (ids are paths: not file names)."""
    return f"part-{hashlib.sha1(part_id.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.parquet"
