"""A batch of CREward scores with the ids of the images they belong to.

This is the value ComfyUI passes between CREward nodes as ``CREWARD_SCORES``; it is plain data
(no ComfyUI, no model), so the CLI and tests can build and read it too.

When the scores were calibrated against a reference set, ``calibration`` carries each image's
percentile and win probability (``creward.models.calibration``); without one,
:meth:`ScoreTable.calibrated` gives the batch-relative view (each image against the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .axes import AXES
from .calibration import Calibration, calibrate_within_batch
from .errors import CREwardError
from .scorer_identity import ScorerIdentity


@dataclass(frozen=True)
class ScoreTable:
    """Scores ``[N, len(axes)]`` (float32, CPU) of N images, row i belonging to image ``ids[i]``.

    ``ids`` are the images' numbers for people: row positions ``0..N-1`` for an IMAGE batch, the
    latent's ``batch_index`` entries for a LATENT batch. Selection always works on row positions.
    ``calibration``: percentiles and win probabilities against a reference set, or None.
    ``scorer``: the head/backbone that made the scores, when known (checked against references).
    """

    values: torch.Tensor
    axes: tuple[str, ...] = AXES
    ids: tuple[int, ...] | None = None
    calibration: Calibration | None = None
    scorer: ScorerIdentity | None = None

    def __post_init__(self):
        values = torch.as_tensor(self.values).detach().to(device="cpu", dtype=torch.float32)
        if values.ndim != 2 or values.shape[1] != len(self.axes):
            raise CREwardError(f"scores should be shaped [N, {len(self.axes)}] ({', '.join(self.axes)}), got {tuple(values.shape)}")
        ids = tuple(range(values.shape[0])) if self.ids is None else tuple(int(i) for i in self.ids)
        if len(ids) != values.shape[0]:
            raise CREwardError(f"{len(ids)} image ids given for {values.shape[0]} rows of scores")
        if self.calibration is not None and tuple(self.calibration.percentiles.shape) != tuple(values.shape):
            raise CREwardError(f"calibration shaped {tuple(self.calibration.percentiles.shape)} for scores shaped {tuple(values.shape)}")
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
        calibration = None if self.calibration is None else self.calibration.take(rows)
        return ScoreTable(self.values[rows] if rows else self.values[:0], self.axes, tuple(self.ids[row] for row in rows), calibration, self.scorer)

    def with_calibration(self, calibration: Calibration | None) -> "ScoreTable":
        """The same scores carrying ``calibration`` (vs a reference set)."""
        return ScoreTable(self.values, self.axes, self.ids, calibration, self.scorer)

    def calibrated(self) -> Calibration:
        """Percentiles and win probabilities: vs the reference when calibrated, else within this batch."""
        return self.calibration if self.calibration is not None else calibrate_within_batch(self.values)

    @staticmethod
    def concat(tables: Sequence["ScoreTable"]) -> "ScoreTable":
        if not tables:
            raise CREwardError("no score tables to concatenate")
        axes = tables[0].axes
        for table in tables[1:]:
            if table.axes != axes:
                raise CREwardError(f"cannot join scores over different axes: {axes} and {table.axes}")
        calibration = None
        calibrations = [table.calibration for table in tables]
        if all(c is not None for c in calibrations) and len({c.reference for c in calibrations}) == 1:
            labels = {c.label for c in calibrations}
            calibration = Calibration(
                torch.cat([c.percentiles for c in calibrations]), torch.cat([c.win for c in calibrations]),
                labels.pop() if len(labels) == 1 else f"vs reference {calibrations[0].reference}", calibrations[0].reference,
                None if any(c.groups is None for c in calibrations) else tuple(g for c in calibrations for g in c.groups),
            )
        values = torch.cat([table.values for table in tables])
        scorers = {table.scorer for table in tables}
        scorer = scorers.pop() if len(scorers) == 1 else None
        return ScoreTable(values, axes, tuple(i for table in tables for i in table.ids), calibration, scorer)

    def rows(self) -> list[dict]:
        """``[{"id": 0, "geometry": ..., ...}, ...]`` (+ ``<axis>_percentile``/``<axis>_win`` when calibrated)."""
        rows = [{"id": image_id, **dict(zip(self.axes, row))} for image_id, row in zip(self.ids, self.values.tolist())]
        if self.calibration is not None:
            for row, percentiles, win in zip(rows, self.calibration.percentiles.tolist(), self.calibration.win.tolist()):
                row.update({f"{axis}_percentile": _json_float(value) for axis, value in zip(self.axes, percentiles)})
                row.update({f"{axis}_win": _json_float(value) for axis, value in zip(self.axes, win)})
        return rows

    def summary(self, max_rows: int = 32, digits: int = 3, calibration: Calibration | None = None) -> str:
        """The scores as a Markdown table: one line per image (up to ``max_rows``), then the mean.

        Its columns are padded, so it reads as an aligned table as plain text too (Preview as
        Text in plain mode) and renders as a table where Markdown is rendered (Preview as Text in
        the bundled front end, or in Markdown mode). With ``calibration``, two tables of the same
        shape follow (percentiles 0-100, win probabilities 0-1) and a last line says what they
        are relative to; each table stays as narrow as the first.
        """
        shown = min(len(self), max_rows)
        labels = [f"#{image_id}" for image_id in self.ids[:shown]] + (["mean"] if len(self) > 1 else [])
        tables = [("image", self.values, f".{digits}f", self.mean())]
        if calibration is not None:
            relative = calibration.is_batch_relative  # the mean of batch-relative values says nothing
            tables.append(("percentile", calibration.percentiles, ".1f", None if relative else calibration.percentiles.nanmean(0)))
            tables.append(("win prob.", calibration.win, ".2f", None if relative else calibration.win.nanmean(0)))
        parts = []
        for name, values, spec, mean in tables:
            with_mean = len(self) > 1 and mean is not None
            rows = values.tolist()[:shown] + ([mean.tolist()] if with_mean else [])
            parts.append(_markdown_table([name, *self.axes], labels if with_mean else labels[:shown], rows, spec))
        text = "\n\n".join(parts)
        if len(self) > max_rows:
            text += f"\n\n{len(self) - max_rows} more image(s) not listed."
        if calibration is not None:
            text += f"\n\npercentile (0-100), win probability (0-1): {calibration.label}"
        return text

    def to_payload(self, calibration: Calibration | None = None) -> dict:
        """JSON-safe form (the ComfyUI front end draws bars from it).

        With ``calibration``: ``percentiles`` and ``win`` (``[N, axes]``, null for NaN) and
        ``calibration`` = ``{"label", "reference", "batch_relative"}`` saying what they are relative to.
        """
        payload = {
            "axes": list(self.axes),
            "ids": list(self.ids),
            "scores": [[_json_float(value) for value in row] for row in self.values.tolist()],
            "mean": [_json_float(value) for value in self.mean().tolist()] if len(self) else [],
        }
        if calibration is not None:
            payload["percentiles"] = [[_json_float(value) for value in row] for row in calibration.percentiles.tolist()]
            payload["win"] = [[_json_float(value) for value in row] for row in calibration.win.tolist()]
            payload["calibration"] = {
                "label": calibration.label,
                "reference": calibration.reference,
                "batch_relative": calibration.is_batch_relative,
            }
        return payload

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

    def charts(self, title: str, highlight: Sequence[int] = (), note: str | None = None) -> list[dict]:
        """The charts the nodes show: the scores, then, when calibrated against a reference, the percentiles."""
        charts = [self.chart(title, highlight=highlight, note=note)]
        if self.calibration is not None:
            charts.append(self.chart(
                title, self.calibration.percentiles, "percentile", (0.0, 100.0), highlight, self.calibration.label,
            ))
        return charts


def _markdown_table(names: Sequence[str], labels: Sequence[str], rows: Sequence[Sequence[float | None]], spec: str) -> str:
    """A padded Markdown table: the first column left-aligned labels, the others right-aligned numbers."""
    cells = [[label] + ["" if value is None else "nan" if value != value else f"{value:{spec}}" for value in row] for label, row in zip(labels, rows)]
    widths = [max(len(name), *(len(row[column]) for row in cells)) for column, name in enumerate(names)]
    lines = [
        "| " + " | ".join([names[0].ljust(widths[0]), *(name.rjust(width) for name, width in zip(names[1:], widths[1:]))]) + " |",
        "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (width + 1) + ":" for width in widths[1:]) + "|",
    ]
    lines += ["| " + " | ".join([row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))]) + " |" for row in cells]
    return "\n".join(lines)


def _json_float(value: float) -> float | None:
    """NaN/inf are not JSON: send them as null."""
    return value if value == value and value not in (float("inf"), float("-inf")) else None
