"""A batch of CREward scores with the ids of the images they belong to.

This is the value ComfyUI passes between CREward nodes as ``CREWARD_SCORES``; it is plain data
(no ComfyUI, no model), so the CLI and tests can build and read it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .axes import AXES
from .errors import CREwardError


@dataclass(frozen=True)
class ScoreTable:
    """Scores ``[N, len(axes)]`` (float32, CPU) of N images, row i belonging to image ``ids[i]``.

    ``ids`` are the images' numbers for people: row positions ``0..N-1`` for an IMAGE batch, the
    latent's ``batch_index`` entries for a LATENT batch. Selection always works on row positions.
    """

    values: torch.Tensor
    axes: tuple[str, ...] = AXES
    ids: tuple[int, ...] | None = None

    def __post_init__(self):
        values = torch.as_tensor(self.values).detach().to(device="cpu", dtype=torch.float32)
        if values.ndim != 2 or values.shape[1] != len(self.axes):
            raise CREwardError(f"scores should be shaped [N, {len(self.axes)}] ({', '.join(self.axes)}), got {tuple(values.shape)}")
        ids = tuple(range(values.shape[0])) if self.ids is None else tuple(int(i) for i in self.ids)
        if len(ids) != values.shape[0]:
            raise CREwardError(f"{len(ids)} image ids given for {values.shape[0]} rows of scores")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return self.values.shape[0]

    def column(self, axis: str) -> torch.Tensor:
        if axis not in self.axes:
            raise CREwardError(f"unknown axis {axis!r}; these scores have {', '.join(self.axes)}")
        return self.values[:, self.axes.index(axis)]

    def mean(self) -> torch.Tensor:
        """Mean over images, one value per axis (what the per-axis FLOAT outputs give for a batch)."""
        if len(self) == 0:
            raise CREwardError("no scores (empty batch)")
        return self.values.mean(dim=0)

    def take(self, rows: Sequence[int]) -> "ScoreTable":
        """The rows at these positions (in this order), keeping their ids."""
        rows = [int(row) for row in rows]
        return ScoreTable(self.values[rows] if rows else self.values[:0], self.axes, tuple(self.ids[row] for row in rows))

    @staticmethod
    def concat(tables: Sequence["ScoreTable"]) -> "ScoreTable":
        if not tables:
            raise CREwardError("no score tables to concatenate")
        axes = tables[0].axes
        for table in tables[1:]:
            if table.axes != axes:
                raise CREwardError(f"cannot join scores over different axes: {axes} and {table.axes}")
        return ScoreTable(torch.cat([table.values for table in tables]), axes, tuple(i for table in tables for i in table.ids))

    def rows(self) -> list[dict]:
        """``[{"id": 0, "geometry": ..., ...}, ...]``."""
        return [{"id": image_id, **dict(zip(self.axes, row))} for image_id, row in zip(self.ids, self.values.tolist())]

    def summary(self, max_rows: int = 32, digits: int = 3) -> str:
        """The scores as a Markdown table: one line per image (up to ``max_rows``), then the mean.

        Its columns are padded, so it reads as an aligned table as plain text too (Preview as
        Text in plain mode) and renders as a table where Markdown is rendered (Preview as Text in
        the bundled front end, or in Markdown mode).
        """
        labels = [f"#{image_id}" for image_id in self.ids[:max_rows]] + (["mean"] if len(self) > 1 else [])
        rows = self.values.tolist()[:max_rows] + ([self.mean().tolist()] if len(self) > 1 else [])
        first = max(len("image"), *(len(label) for label in labels))
        widths = [max(len(axis), digits + 3) for axis in self.axes]
        lines = [
            "| " + " | ".join(["image".ljust(first), *(axis.rjust(width) for axis, width in zip(self.axes, widths))]) + " |",
            "|:" + "-" * (first + 1) + "|" + "|".join("-" * (width + 1) + ":" for width in widths) + "|",
        ]
        for label, row in zip(labels, rows):
            cells = [f"{value:.{digits}f}" if value == value else "nan" for value in row]
            lines.append("| " + " | ".join([label.ljust(first), *(cell.rjust(width) for cell, width in zip(cells, widths))]) + " |")
        if len(self) > max_rows:
            lines.append(f"\n{len(self) - max_rows} more image(s) not listed.")
        return "\n".join(lines)

    def to_payload(self) -> dict:
        """JSON-safe form, sent to the ComfyUI front end."""
        return {
            "axes": list(self.axes),
            "ids": list(self.ids),
            "scores": [[_json_float(value) for value in row] for row in self.values.tolist()],
            "mean": [_json_float(value) for value in self.mean().tolist()] if len(self) else [],
        }

    def chart(
        self,
        title: str,
        values: torch.Tensor | None = None,
        value_label: str = "score",
        value_range: tuple[float, float] | None = None,
        highlight: Sequence[int] = (),
        note: str | None = None,
    ) -> dict:
        """One bar chart for ``web/creward.js``: a group of bars per image, a bar per axis.

        Args:
            values: what the bars show, shaped like ``self.values`` (default: the scores);
                another kind of value (percentiles, win probabilities) goes here.
            value_label: what the values are, written on the chart ("score", "percentile").
            value_range: the value axis, e.g. ``(0, 100)``; None fits the values (always with 0).
            highlight: row positions drawn on a shaded background (e.g. the chosen images).
            note: a short caption after ``value_label`` (e.g. the precision in use).
        """
        values = self.values if values is None else torch.as_tensor(values, dtype=torch.float32)
        if tuple(values.shape) != tuple(self.values.shape):
            raise CREwardError(f"chart values should be shaped {tuple(self.values.shape)} like the scores, got {tuple(values.shape)}")
        return {
            "title": title,
            "series": list(self.axes),
            "labels": [f"#{image_id}" for image_id in self.ids],
            "values": [[_json_float(value) for value in row] for row in values.tolist()],
            "value_label": value_label,
            "value_range": list(value_range) if value_range is not None else None,
            "highlight": [int(row) for row in highlight],
            "note": note,
        }


def _json_float(value: float) -> float | None:
    """NaN/inf are not JSON: send them as null."""
    return value if value == value and value not in (float("inf"), float("-inf")) else None
