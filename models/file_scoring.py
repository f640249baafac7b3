"""Scoring image files: folder walking, background decoding, batched inference, bounded memory.

Images are decoded, resized and normalised in worker threads (PIL and torch release the GIL)
while the model runs on the previous batch; at most ``prefetch`` preprocessed images wait in
memory at any time, each already at the backbone's size, so memory does not grow with the
number or size of the files. Unreadable files are reported, never fatal: the rest are scored.

Which files are scored (``collect_image_paths``): every file named explicitly, whatever its
extension (it is decoded by content; one that is not an image gets an error), and in folders
(recursively) the files with an image extension (``IMAGE_SUFFIXES``); other files in folders
are left out and counted.

An image source is a file path, or any object with a ``name`` (used in results and messages)
and an ``open()`` returning a binary file (a member of a tar shard, see
``creward.dataset.samples``): ``creward score`` and ``creward score-dataset`` share this code.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol, Sequence, Union

import torch

from .errors import ImageError
from .model import CREward
from .preprocess import MAX_DECODE_PIXELS, Preprocessing, is_image_file, load_image, resize_and_normalize

logger = logging.getLogger(__name__)


class OpenableImage(Protocol):
    """An image that is not a file of its own (a tar member): a name and a way to read its bytes."""

    name: str

    def open(self) -> BinaryIO: ...


ImageSource = Union[str, os.PathLike, OpenableImage]


def source_name(source: ImageSource) -> str:
    """How results and messages name a source: the path as given, or the source's ``name``."""
    return str(source) if isinstance(source, (str, os.PathLike)) else source.name


@dataclass
class FileScore:
    """One file's scores, or why it has none.

    ``as_dict`` is one row of ``creward score --json`` / ``--csv``: ``path``, every axis (null
    when the file could not be read) and ``error`` (null for a scored file).
    """

    path: str
    scores: dict[str, float] | None  # None when the file could not be read
    error: str | None = None  # what is wrong with the file (without its path)

    def as_dict(self, axes: Sequence[str]) -> dict:
        scores = self.scores or {}
        return {"path": self.path, **{axis: scores.get(axis) for axis in axes}, "error": self.error}


def collect_image_paths(paths: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into the files to score.

    Files named in ``paths`` are always kept (decoded by content, whatever their extension);
    folders contribute their files with an image extension, sorted. Returns ``(images,
    left_out)``, ``left_out`` being the folders' other files. Raises ``ImageError`` for a path
    that does not exist.
    """
    images: list[Path] = []
    left_out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.glob("*")
            for child in sorted(walker):
                if child.is_file():
                    (images if is_image_file(child) else left_out).append(child)
        elif path.is_file():
            images.append(path)
        else:
            raise ImageError("no such file or folder", path)
    return images, left_out


def load_preprocessed(source: ImageSource, preprocessing: Preprocessing, max_pixels: int | None = MAX_DECODE_PIXELS) -> torch.Tensor:
    """One file (or openable source) → normalised ``[3, S, S]`` float32 tensor (see ``load_image`` for ``max_pixels``)."""
    if isinstance(source, (str, os.PathLike)):
        return resize_and_normalize(load_image(source, max_pixels), preprocessing)[0]
    try:
        stream = source.open()
    except OSError as error:
        raise ImageError(f"cannot be read: {error.strerror or error}", source.name) from None
    with stream:
        return resize_and_normalize(load_image(stream, max_pixels, name=source.name), preprocessing)[0]


def score_pixel_batch(model: CREward, pixels: torch.Tensor) -> list[list[float]]:
    """Preprocessed ``[B, 3, S, S]`` pixels → one row of ``len(model.axes)`` float32 scores per image."""
    with torch.inference_mode():
        return model.score_pixels(pixels).float().cpu().tolist()


def iter_preprocessed(
    paths: Sequence[ImageSource],
    preprocessing: Preprocessing,
    workers: int = 2,
    prefetch: int = 16,
    max_pixels: int | None = MAX_DECODE_PIXELS,
) -> Iterator[tuple[int, torch.Tensor | None, ImageError | None]]:
    """Yield ``(index, pixels or None, error or None)`` in input order, decoding ahead in threads."""
    if workers <= 0:
        for index, path in enumerate(paths):
            try:
                yield index, load_preprocessed(path, preprocessing, max_pixels), None
            except ImageError as error:
                yield index, None, error
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="creward-decode") as pool:
        pending: deque[tuple[int, Future]] = deque()
        next_index = 0
        while next_index < len(paths) or pending:
            while next_index < len(paths) and len(pending) < prefetch:
                pending.append((next_index, pool.submit(load_preprocessed, paths[next_index], preprocessing, max_pixels)))
                next_index += 1
            index, future = pending.popleft()
            try:
                yield index, future.result(), None
            except ImageError as error:
                yield index, None, error


def score_files(
    model: CREward,
    paths: Sequence[ImageSource],
    batch_size: int = 8,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    max_pixels: int | None = MAX_DECODE_PIXELS,
) -> list[FileScore]:
    """Score image files (or openable sources) in input order; unreadable ones get ``scores=None``, the reason and a warning."""
    results: list[FileScore | None] = [None] * len(paths)
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        scores = score_pixel_batch(model, torch.stack([pixels for _, pixels in batch]))
        for (index, _), row in zip(batch, scores):
            results[index] = FileScore(source_name(paths[index]), dict(zip(model.axes, row)))
        if progress is not None:
            progress(len(batch))
        batch.clear()

    prefetch = max(2 * batch_size, 4)
    for index, pixels, error in iter_preprocessed(paths, model.spec.preprocessing, workers, prefetch, max_pixels):
        if pixels is None:
            logger.warning("skipping %s", error)
            results[index] = FileScore(source_name(paths[index]), None, error.reason)
            if progress is not None:
                progress(1)
            continue
        batch.append((index, pixels))
        if len(batch) >= batch_size:
            flush()
    flush()
    return [result for result in results if result is not None]
