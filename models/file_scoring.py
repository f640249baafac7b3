"""Scoring image files: folder walking, background decoding, batched inference, bounded memory.

Images are decoded, resized and normalised in worker threads (PIL and torch release the GIL)
while the model runs on the previous batch; at most ``prefetch`` preprocessed images wait in
memory at any time, each already at the backbone's size, so memory does not grow with the
number or size of the files. Unreadable files are reported, never fatal: the rest are scored.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .errors import ImageError
from .model import CREward
from .preprocess import Preprocessing, is_image_file, load_image, resize_and_normalize

logger = logging.getLogger(__name__)


@dataclass
class FileScore:
    path: str
    scores: dict[str, float] | None  # None when the file could not be read
    error: str | None = None

    def as_dict(self) -> dict:
        item = {"path": self.path}
        if self.scores is not None:
            item.update(self.scores)
        else:
            item["error"] = self.error
        return item


def collect_image_paths(paths: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into image files (sorted within each folder).

    Returns ``(images, skipped)`` where ``skipped`` are files that are not images by extension.
    Raises ``ImageError`` for a path that does not exist.
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.glob("*")
            for child in sorted(walker):
                if child.is_file():
                    (images if is_image_file(child) else skipped).append(child)
        elif path.is_file():
            (images if is_image_file(path) else skipped).append(path)
        else:
            raise ImageError(f"no such file or folder: {path}")
    return images, skipped


def load_preprocessed(path: str | os.PathLike, preprocessing: Preprocessing) -> torch.Tensor:
    """One file → normalised ``[3, S, S]`` float32 tensor."""
    return resize_and_normalize(load_image(path), preprocessing)[0]


def iter_preprocessed(
    paths: list[Path],
    preprocessing: Preprocessing,
    workers: int = 2,
    prefetch: int = 16,
) -> Iterator[tuple[int, torch.Tensor | None, str | None]]:
    """Yield ``(index, pixels or None, error or None)`` in input order, decoding ahead in threads."""
    if workers <= 0:
        for index, path in enumerate(paths):
            try:
                yield index, load_preprocessed(path, preprocessing), None
            except ImageError as error:
                yield index, None, str(error)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="creward-decode") as pool:
        pending: deque[tuple[int, Future]] = deque()
        next_index = 0
        while next_index < len(paths) or pending:
            while next_index < len(paths) and len(pending) < prefetch:
                pending.append((next_index, pool.submit(load_preprocessed, paths[next_index], preprocessing)))
                next_index += 1
            index, future = pending.popleft()
            try:
                yield index, future.result(), None
            except ImageError as error:
                yield index, None, str(error)


def score_files(
    model: CREward,
    paths: list[Path],
    batch_size: int = 8,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[FileScore]:
    """Score image files in input order; unreadable ones get ``scores=None`` and a warning."""
    results: list[FileScore | None] = [None] * len(paths)
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            scores = model.score_pixels(torch.stack([pixels for _, pixels in batch])).float().cpu()
        for (index, _), row in zip(batch, scores.tolist()):
            results[index] = FileScore(str(paths[index]), dict(zip(model.axes, row)))
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for index, pixels, error in iter_preprocessed(paths, model.spec.preprocessing, workers=workers, prefetch=max(2 * batch_size, 4)):
        if pixels is None:
            logger.warning("skipping %s", error)
            results[index] = FileScore(str(paths[index]), None, error)
            if progress is not None:
                progress(1)
            continue
        batch.append((index, pixels))
        if len(batch) >= batch_size:
            flush()
    flush()
    return [result for result in results if result is not None]
