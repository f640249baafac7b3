"""``--engine local``: score the parts in this process, one after another (no Ray needed).

Exactly the code path of ``creward score``: ``creward.models.file_scoring.score_files`` decodes
in background threads and runs the model in batches; each finished part is written at once.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from ..models.file_scoring import score_files
from .inputs import Part, samples_of
from .output import ScoresFolder, sample_row

logger = logging.getLogger(__name__)


def score_parts_locally(
    model,
    parts: Sequence[Part],
    folder: ScoresFolder,
    columns: tuple[str, ...] = (),
    batch_size: int = 8,
    workers: int = 2,
    bar=None,
    on_part: Callable[[dict], None] | None = None,
) -> tuple[int, int]:
    """Score and write every part; returns ``(rows, error rows)``.

    ``bar`` is a tqdm-like progress bar (``update(n)``, ``total``), grown as shards are listed;
    ``on_part(record)`` is called after each part is written.
    """
    rows_total = errors_total = 0
    update = bar.update if bar is not None else None
    for part in parts:
        samples = samples_of(part, columns)
        if part.size is None and bar is not None:
            bar.total = (bar.total or 0) + len(samples)
            bar.refresh()
        readable = [sample for sample in samples if sample.error is None]
        for sample in samples:
            if sample.error is not None:
                logger.warning("skipping %s", sample.error)
        if update is not None:
            update(len(samples) - len(readable))
        results = iter(score_files(model, [sample.source() for sample in readable], batch_size=batch_size, workers=workers, progress=update))
        rows = []
        for sample in samples:
            if sample.error is not None:
                rows.append(sample_row(sample, model.axes))
                continue
            result = next(results)
            scores = None if result.scores is None else [result.scores[axis] for axis in model.axes]
            error = None if result.scores is not None else f"{result.path}: {result.error}"  # the file named, as the Ray engine's
            rows.append(sample_row(sample, model.axes, scores, error))
        record = folder.write_part(part.id, part.fingerprint, rows)
        rows_total += record["rows"]
        errors_total += record["errors"]
        if on_part is not None:
            on_part(record)
    return rows_total, errors_total
