"""One row of a dataset job (a *sample*) and reading WebDataset tar shards.

A sample is one image to score: a file (``path``) or the image member of a WebDataset sample
inside a tar shard (``shard`` + ``member``). Tar shards are read the way ``webdataset`` reads them
(and Ray's ``read_webdataset``): regular members in archive order, each split by the same rule
into a key and an extension (``dir/000123.jpg`` → key ``dir/000123``, extension ``jpg``; the
extension lower-cased), consecutive members with the same key forming one sample, and
``__...__`` meta members skipped. A sample's image is its first member whose extension is an
image type (jpg, jpeg, png, webp, bmp, tif, tiff, gif). Members are read by offset from the
uncompressed tar (what img2dataset writes), so listing a shard reads only its headers.

Problems never stop a job: a shard that is not a tar, a truncated shard, a sample without an
image or with two members of the same name each become rows with an ``error`` naming the shard.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def split_key(member: str) -> tuple[str | None, str | None]:
    """``"a/000123.seg.png"`` → ``("a/000123", "seg.png")``, as webdataset splits member names."""
    match = _KEY_AND_EXTENSION.match(member)
    if not match:
        return None, None
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class TarMember:
    """One member of an uncompressed tar, read by offset (an ``OpenableImage`` for file_scoring)."""

    shard: str
    member: str
    offset: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.shard}:{self.member}"

    def read(self) -> bytes:
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"member data truncated: {len(data)} of {self.size} bytes present")
        return data

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.read())


@dataclass(frozen=True)
class Sample:
    """One image of a job, with what the output row says about it.

    Attributes:
        part: id of the input part this sample belongs to.
        index: position inside the part (rows of a part are written in this order).
        key: the sample's name: path relative to its input folder, the path as written in a list,
            or the WebDataset key inside a shard.
        path: the image file (None for tar members).
        shard: the tar shard (None for files).
        member: the image member inside ``shard``.
        folder: the sample's subfolder (relative to its input folder, or of its key); ``""`` at the top.
        columns: carried columns (from a Parquet/CSV list, or a shard sample's ``.json``), as text.
        error: why this sample cannot be scored (set when listing found the problem).
        offset, size: where ``member``'s bytes are inside ``shard``.
    """

    part: str
    index: int
    key: str
    path: str | None = None
    shard: str | None = None
    member: str | None = None
    folder: str = ""
    columns: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None
    offset: int | None = None
    size: int | None = None

    def source(self):
        """What ``creward.models.file_scoring`` reads: the file path or the tar member."""
        if self.shard is not None:
            return TarMember(self.shard, self.member, self.offset, self.size)
        return self.path

    def to_dict(self) -> dict:
        return {
            "part": self.part, "index": self.index, "key": self.key, "path": self.path, "shard": self.shard,
            "member": self.member, "folder": self.folder, "columns": dict(self.columns), "error": self.error,
            "offset": self.offset, "size": self.size,
        }

    @staticmethod
    def from_dict(data: dict) -> "Sample":
        return Sample(**data)


@dataclass
class _Group:
    key: str
    members: list[tarfile.TarInfo] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)
    duplicate: str | None = None


def _shard_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an uncompressed tar shard, or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except FileNotFoundError:
        return f"shard not found: {path}"
    except OSError as error:
        return f"cannot read shard {path}: {error.strerror or error}"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return f"{path} is a compressed tar: only uncompressed .tar shards are read (decompress it first, e.g. gunzip)"
    return None


def _iter_groups(path: Path, problems: list[str]) -> Iterable[_Group]:
    """Consecutive members with the same key, as webdataset groups them; problems appended as text."""
    current: _Group | None = None
    try:
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if not info.isreg():
                    continue
                name = info.name
                if _META_MEMBER.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__")):
                    continue
                key, extension = split_key(name)
                if key is None:
                    continue
                extension = extension.lower()
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = _Group(key)
                if extension in current.extensions:
                    current.duplicate = current.duplicate or name
                    continue
                current.members.append(info)
                current.extensions.append(extension)
            end = archive.offset
        # tarfile stops quietly at a header cut short; a whole tar ends with two zero blocks
        with open(path, "rb") as handle:
            handle.seek(end)
            tail = handle.read(2 * tarfile.BLOCKSIZE)
        if tail != bytes(2 * tarfile.BLOCKSIZE):
            where = f"after sample {current.key!r}" if current is not None else "at its start"
            problems.append(f"{path}: tar ends early or is damaged {where} (no end-of-archive marker at byte {end})")
    except tarfile.ReadError as error:
        problems.append(f"{path} is not a readable tar shard ({error})" if current is None else f"{path}: tar ends early or is damaged after sample {current.key!r} ({error})")
    except (OSError, EOFError) as error:
        problems.append(f"{path}: tar could not be read to the end ({error})")
    if current is not None:
        yield current


def _json_columns(path: Path, info: tarfile.TarInfo | None, columns: tuple[str, ...]) -> tuple[dict[str, str | None], str | None]:
    if not columns:
        return {}, None
    values: dict[str, str | None] = {name: None for name in columns}
    if info is None:
        return values, None
    try:
        data = json.loads(TarMember(str(path), info.name, info.offset_data, info.size).read())
    except (OSError, ValueError) as error:
        return values, f"{path}:{info.name} is not readable JSON ({error})"
    if isinstance(data, dict):
        for name in columns:
            if data.get(name) is not None:
                value = data[name]
                values[name] = value if isinstance(value, str) else json.dumps(value)
    return values, None


def list_shard(path: str | os.PathLike, part: str, columns: tuple[str, ...] = ()) -> list[Sample]:
    """The samples of one tar shard, in archive order; problems become samples with an ``error``.

    ``columns`` are read from each sample's ``.json`` member (values as text; None when absent).
    A shard with no samples, or that is not a tar, gives one error row whose key is the shard's name.
    """
    path = Path(path)
    shard = str(path)
    problem = _shard_problem(path)
    if problem is not None:
        return [Sample(part, 0, path.name, shard=shard, columns={name: None for name in columns}, error=problem)]
    problems: list[str] = []
    samples: list[Sample] = []
    file_size = path.stat().st_size
    for group in _iter_groups(path, problems):
        by_extension = dict(zip(group.extensions, group.members))
        values, json_error = _json_columns(path, by_extension.get("json"), columns)
        folder = group.key.rsplit("/", 1)[0] if "/" in group.key else ""
        base = Sample(part, len(samples), group.key, shard=shard, folder=folder, columns=values)
        image = next((info for extension, info in zip(group.extensions, group.members) if extension in IMAGE_EXTENSIONS), None)
        if group.duplicate is not None:
            samples.append(replace(base, error=f"{shard}: sample {group.key!r} has two members named like {group.duplicate!r}"))
        elif image is None:
            samples.append(replace(base, error=f"{shard}: sample {group.key!r} has no image member (found: {', '.join(group.extensions)})"))
        elif image.offset_data + image.size > file_size:
            samples.append(replace(base, member=image.name, error=f"{shard}:{image.name} is truncated (the shard ends inside it)"))
        else:
            samples.append(replace(base, member=image.name, offset=image.offset_data, size=image.size, error=json_error))
    for problem in problems:  # keyed by the shard's file name, which no WebDataset key can be (it has a dot)
        logger.warning("%s", problem)
        samples.append(Sample(part, len(samples), path.name, shard=shard, columns={name: None for name in columns}, error=problem))
    if not samples:
        samples.append(Sample(part, 0, path.name, shard=shard, columns={name: None for name in columns}, error=f"{shard} holds no samples"))
    return samples


def shard_members(path: str | os.PathLike) -> dict[str, list[TarMember]]:
    """Every member of every sample of a shard, by key (for rewriting shards of kept samples)."""
    path = Path(path)
    members: dict[str, list[TarMember]] = {}
    for group in _iter_groups(path, []):
        members.setdefault(group.key, []).extend(TarMember(str(path), info.name, info.offset_data, info.size) for info in group.members)
    return members
