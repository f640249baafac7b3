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
        """A small fixed-width text table: one line per image (up to ``max_rows``) and the mean."""
        width = max(len(axis) for axis in self.axes)
        width = max(width, digits + 4)
        header = "image  " + "  ".join(axis[:width].rjust(width) for axis in self.axes)
        lines = [header]
        for image_id, row in list(zip(self.ids, self.values.tolist()))[:max_rows]:
            lines.append(f"{('#' + str(image_id)).ljust(5)}  " + "  ".join(f"{value:{width}.{digits}f}" for value in row))
        if len(self) > max_rows:
            lines.append(f"... {len(self) - max_rows} more")
        if len(self) > 1:
            lines.append("mean   " + "  ".join(f"{value:{width}.{digits}f}" for value in self.mean().tolist()))
        return "\n".join(lines)

    def to_payload(self) -> dict:
        """JSON-safe form (the ComfyUI front end draws bars from it)."""
        return {
            "axes": list(self.axes),
            "ids": list(self.ids),
            "scores": [[_json_float(value) for value in row] for row in self.values.tolist()],
            "mean": [_json_float(value) for value in self.mean().tolist()] if len(self) else [],
        }


def _json_float(value: float) -> float | None:
    """NaN/inf are not JSON: send them as null."""
    return value if value == value and value not in (float("inf"), float("-inf")) else None
