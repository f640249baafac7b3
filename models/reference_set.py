"""Reference sets: the scores of a set of images, per axis and group, to calibrate new scores against.

A reference set answers "what is a good score?" for one subject and one head: a new image's
percentile and win probability (``creward.models.calibration``) against the reference images'
scores. Built by ``creward calibrate``; used by ``creward score/select --reference`` and the
ComfyUI nodes (files in ``models/creward/references/``).

The file is JSON (small, readable, no code; never a pickle)::

    {
      "format": "creward-reference", "version": 1,
      "name": "chair",
      "scorer": {"head": "creward_clip.safetensors", "head_hash": "…", "backbone": "clip", "axes": [...]},
      "group_by": "folder",                  # or "column:NAME", or null
      "all":    {"count": 812, "scores": {"geometry": [sorted…], "material": […], …}},
      "groups": {"chair": {"count": 400, "scores": {…}}, "lamp": {"count": 412, "quantiles": {…}}}
    }

Each group (and ``all``, the whole set) keeps either ``scores`` (every score, sorted, written as
float32; up to ``max_points`` per group) or ``quantiles`` (``QUANTILE_KNOTS`` knots at
probabilities 0, 0.001, …, 1; exact to 0.1 percentile). Nothing depends on where the images were,
so building from ``creward score --json`` output or from the images directly gives the same file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .calibration import EXACT_LIMIT, Calibration, ScoreDistribution, coarse_message
from .errors import CREwardError
from .scorer_identity import ScorerIdentity

logger = logging.getLogger(__name__)

FORMAT = "creward-reference"
FORMAT_VERSION = 1
REFERENCE_SUFFIX = ".json"
FOLDER = "folder"
COLUMN_PREFIX = "column:"


class ReferenceError(CREwardError):
    """A reference file is unreadable or malformed, or does not fit the scores it is used with."""


class ReferenceMismatchError(ReferenceError):
    """The reference was built with another head (hash), backbone or axes than the scores."""


def parse_group_by(text: str | None) -> str | None:
    """``None``, ``"folder"`` or ``"column:NAME"``; anything else is an error saying what is accepted."""
    if text is None or text == "":
        return None
    if text == FOLDER:
        return FOLDER
    if text.startswith(COLUMN_PREFIX) and text[len(COLUMN_PREFIX):].strip():
        return COLUMN_PREFIX + text[len(COLUMN_PREFIX):].strip()
    raise CREwardError(f"group by {text!r}: expected 'folder' (the image's folder name) or 'column:NAME' (a column of the score file)")


def folder_group(path: str) -> str:
    """The group of an image under ``--group-by folder``: the name of the folder it is in."""
    return Path(path).parent.name or "."


@dataclass(frozen=True)
class ReferenceGroup:
    """One group's distributions, one per axis (all built from the same ``count`` images)."""

    count: int
    axes: dict[str, ScoreDistribution]

    @property
    def exact(self) -> bool:
        return all(distribution.exact for distribution in self.axes.values())

    @classmethod
    def from_scores(cls, values: np.ndarray, axes: Sequence[str], max_points: int) -> "ReferenceGroup":
        return cls(values.shape[0], {axis: ScoreDistribution.from_scores(values[:, a], max_points) for a, axis in enumerate(axes)})

    def as_dict(self) -> dict:
        key = "scores" if self.exact else "quantiles"
        return {"count": self.count, key: {axis: [_float32_text(v) for v in d.values.tolist()] for axis, d in self.axes.items()}}


def _float32_text(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (scores are float32)."""
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class ReferenceSet:
    """Reference scores of one subject for one scorer, per axis, for the whole set and per group.

    Attributes:
        name: the reference's name (shown in labels, e.g. ``"vs reference chair"``).
        scorer: the head/backbone that produced the scores.
        group_by: how images were grouped (``"folder"``, ``"column:NAME"``) or None.
        whole: the whole set (every group together).
        groups: per group name; empty when not grouped.
        path: the file it was read from, if any.
    """

    name: str
    scorer: ScorerIdentity
    group_by: str | None
    whole: ReferenceGroup
    groups: dict[str, ReferenceGroup] = field(default_factory=dict)
    path: str | None = None

    @property
    def axes(self) -> tuple[str, ...]:
        return self.scorer.axes

    @property
    def count(self) -> int:
        return self.whole.count

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        values,
        scorer: ScorerIdentity,
        name: str,
        groups: Sequence[str] | None = None,
        group_by: str | None = None,
        max_points: int = EXACT_LIMIT,
    ) -> "ReferenceSet":
        """A reference from scores ``[N, len(scorer.axes)]`` (and each row's group when grouped).

        Raises ``CREwardError`` for no scores, NaN/infinite scores (naming how many rows), a
        missing group for some rows, or a wrong shape. Warns when a group is coarse (< 50 images).
        """
        values = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
        axes = scorer.axes
        if values.ndim != 2 or values.shape[1] != len(axes):
            raise CREwardError(f"reference scores should be shaped [N, {len(axes)}] ({', '.join(axes)}), got {values.shape}")
        if values.shape[0] == 0:
            raise CREwardError("no scores to build a reference from (every input was empty or unreadable)")
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise CREwardError(
                f"{rows.size} of {values.shape[0]} images have NaN or infinite scores (first: row {rows[0]}): the model gave no "
                f"usable score for them; drop those rows (or images) and build the reference again"
            )
        if max_points < 2:
            raise CREwardError(f"max_points should be at least 2, got {max_points}")
        whole = ReferenceGroup.from_scores(values, axes, max_points)
        by_group: dict[str, ReferenceGroup] = {}
        if groups is not None:
            groups = list(groups)
            if len(groups) != values.shape[0]:
                raise CREwardError(f"{len(groups)} group names given for {values.shape[0]} rows of scores")
            empty = [row for row, group in enumerate(groups) if group is None or str(group) == ""]
            if empty:
                raise CREwardError(
                    f"{len(empty)} of {len(groups)} rows have no group (first: row {empty[0]}) under group by "
                    f"{group_by or '?'}: give every row a group, or build without --group-by"
                )
            names = np.asarray([str(group) for group in groups], dtype=object)
            for group in sorted(set(names.tolist())):
                by_group[group] = ReferenceGroup.from_scores(values[names == group], axes, max_points)
        reference = cls(name, scorer, group_by if groups is not None else None, whole, by_group)
        for message in reference.coarse_warnings():
            logger.warning("%s", message)
        return reference

    def coarse_warnings(self) -> list[str]:
        messages = []
        if not self.groups:
            message = coarse_message(f"reference {self.name!r}", self.count)
            if message:
                messages.append(message)
        for group, data in self.groups.items():
            message = coarse_message(f"reference {self.name!r} group {group!r}", data.count)
            if message:
                messages.append(message)
        return messages

    # -- files ---------------------------------------------------------------------------------
    def as_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "scorer": self.scorer.as_dict(),
            "group_by": self.group_by,
            "all": self.whole.as_dict(),
            "groups": {group: self.groups[group].as_dict() for group in sorted(self.groups)},
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically, with the usual permissions (``models.output_files``)."""
        from .output_files import write_text_atomically

        return write_text_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceSet":
        """Read and validate a reference file; ``ReferenceError`` naming the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise ReferenceError(f"reference file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ReferenceError(f"{path} is not a CREward reference file (not readable JSON: {error})") from None
        except OSError as error:
            raise ReferenceError(f"{path} could not be read: {error}") from None
        return cls.from_dict(data, str(path), path=str(path))

    @classmethod
    def from_dict(cls, data, source: str = "reference", path: str | None = None) -> "ReferenceSet":
        """Parse the file's dict form; ``source`` names it in errors."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ReferenceError(f"{source} is not a CREward reference file (expected \"format\": \"{FORMAT}\", found {found!r}); build one with `creward calibrate`")
        version = data.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ReferenceError(f"{source}: reference format version {version!r} is not supported (this CREward reads version {FORMAT_VERSION})")
        try:
            scorer = ScorerIdentity.from_dict(data.get("scorer"), f"{source}: 'scorer'")
        except CREwardError as error:
            raise ReferenceError(str(error)) from None
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ReferenceError(f"{source}: 'name' should be a non-empty string, got {name!r}")
        group_by = data.get("group_by")
        if group_by is not None and not isinstance(group_by, str):
            raise ReferenceError(f"{source}: 'group_by' should be null, 'folder' or 'column:NAME', got {group_by!r}")
        try:
            group_by = parse_group_by(group_by)
        except CREwardError as error:
            raise ReferenceError(f"{source}: {error}") from None
        whole = _group_from_dict(data.get("all"), scorer.axes, f"{source}: 'all'")
        raw_groups = data.get("groups", {})
        if not isinstance(raw_groups, Mapping):
            raise ReferenceError(f"{source}: 'groups' should be an object of group name -> scores, got {type(raw_groups).__name__}")
        groups = {str(name_): _group_from_dict(item, scorer.axes, f"{source}: group {name_!r}") for name_, item in raw_groups.items()}
        if groups and sum(group.count for group in groups.values()) != whole.count:
            raise ReferenceError(f"{source}: the groups hold {sum(g.count for g in groups.values())} images but 'all' holds {whole.count}")
        return cls(name, scorer, group_by if groups else None, whole, groups, path=path)

    # -- use -----------------------------------------------------------------------------------
    def check_scorer(self, scorer: ScorerIdentity) -> None:
        """Refuse scores from another head/backbone: ``ReferenceMismatchError`` naming both."""
        if scorer.matches(self.scorer):
            return
        what = "axes" if (scorer.head_hash, scorer.backbone) == (self.scorer.head_hash, self.scorer.backbone) else "head"
        detail = f" (axes {', '.join(self.scorer.axes)} vs {', '.join(scorer.axes)})" if what == "axes" else ""
        raise ReferenceMismatchError(
            f"reference {self.name!r}{f' ({self.path})' if self.path else ''} was built with {self.scorer.describe()}, but these "
            f"scores come from {scorer.describe()}{detail}: scores of different heads are not comparable. Build a reference with "
            f"this head (creward calibrate IMAGES --head {scorer.head} -o REF.json)"
        )

    def group(self, name: str | None) -> tuple[ReferenceGroup, str | None]:
        """The distributions for group ``name`` (None: the whole set) and the group actually used.

        A group the reference does not have falls back to the whole set, with a warning.
        """
        if name is None or name == "":
            return self.whole, None
        if name in self.groups:
            return self.groups[name], name
        known = ", ".join(sorted(self.groups)[:12]) + (" ..." if len(self.groups) > 12 else "") if self.groups else "none: it is not grouped"
        logger.warning(
            "reference %r has no group %r (groups: %s); comparing with the whole set (%d images)", self.name, name, known, self.count
        )
        return self.whole, None

    def groups_for(self, paths: Sequence[str], group: str | None = None) -> str | list[str] | None:
        """Which group each image at ``paths`` is compared with.

        ``group`` given: that group for all. Else, for a reference grouped by folder, each image's
        folder name; for one grouped by a column (images have no columns), the whole set, with a
        warning saying to pass a group.
        """
        if group:
            return group
        if self.group_by == FOLDER:
            return [folder_group(path) for path in paths]
        if self.group_by:
            logger.warning(
                "reference %r is grouped by %s (groups: %s); no group given, so comparing with the whole set (%d images)",
                self.name, self.group_by, ", ".join(sorted(self.groups)[:12]), self.count,
            )
        return None

    def describe(self, group: str | None = None) -> str:
        data = self.groups[group] if group in self.groups else self.whole
        where = f"group {group}, " if group in self.groups else ""
        return f"vs reference {self.name} ({where}{data.count} images)"

    def calibrate(self, values, axes: Sequence[str], groups: str | Sequence[str | None] | None = None) -> Calibration:
        """Percentiles and win probabilities of scores ``[N, len(axes)]`` against this reference.

        Args:
            values: scores, one row per image (NaN rows give NaN).
            axes: the axes of the columns; each must be one of the reference's axes.
            groups: one group name for every row, one per row, or None for the whole set.
                Unknown groups fall back to the whole set (one warning per group).
        """
        values = torch.as_tensor(values).detach().double().cpu().numpy()
        axes = tuple(axes)
        missing = [axis for axis in axes if axis not in self.axes]
        if missing:
            raise ReferenceError(f"reference {self.name!r} has no {', '.join(missing)} scores (its axes: {', '.join(self.axes)})")
        if values.ndim != 2 or values.shape[1] != len(axes):
            raise CREwardError(f"scores should be shaped [N, {len(axes)}], got {values.shape}")
        count = values.shape[0]
        if groups is None or isinstance(groups, str):
            per_row = [groups or None] * count
        else:
            per_row = [group or None for group in groups]
            if len(per_row) != count:
                raise CREwardError(f"{len(per_row)} group names for {count} rows of scores")
        percentiles = np.full(values.shape, np.nan)
        win = np.full(values.shape, np.nan)
        used: list[str | None] = [None] * count
        warned: set[str] = set()
        for requested in dict.fromkeys(per_row):
            rows = [row for row, group in enumerate(per_row) if group == requested]
            data, actual = self.group(requested)
            message = coarse_message(f"reference {self.name!r}" + (f" group {actual!r}" if actual else ""), data.count)
            if message and (actual or "") not in warned:
                warned.add(actual or "")
                logger.warning("%s", message)
            for a, axis in enumerate(axes):
                percentiles[rows, a] = data.axes[axis].percentile(values[rows, a])
                win[rows, a] = data.axes[axis].win_probability(values[rows, a])
            for row in rows:
                used[row] = actual
        distinct = sorted({group for group in used if group is not None})
        if len(distinct) == 1 and all(group is not None for group in used):
            label = self.describe(distinct[0])
        elif distinct:
            label = f"vs reference {self.name} (per group: {', '.join(distinct[:4])}{' ...' if len(distinct) > 4 else ''})"
        else:
            label = self.describe(None)
        return Calibration(torch.from_numpy(percentiles), torch.from_numpy(win), label, self.name, tuple(used))


def _group_from_dict(item, axes: Sequence[str], source: str) -> ReferenceGroup:
    if not isinstance(item, Mapping):
        raise ReferenceError(f"{source} should be an object with 'count' and 'scores' or 'quantiles', got {type(item).__name__}")
    count = item.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ReferenceError(f"{source}: 'count' should be a whole number >= 1, got {count!r}")
    exact = "scores" in item
    table = item.get("scores" if exact else "quantiles")
    if not isinstance(table, Mapping):
        raise ReferenceError(f"{source}: expected 'scores' (every score) or 'quantiles', an object of axis -> list of numbers")
    missing = [axis for axis in axes if axis not in table]
    if missing:
        raise ReferenceError(f"{source}: no scores for {', '.join(missing)} (the scorer's axes are {', '.join(axes)})")
    distributions = {}
    for axis in axes:
        column = table[axis]
        if not isinstance(column, list) or not column or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in column
        ):
            raise ReferenceError(f"{source}: {axis!r} should be a non-empty list of finite numbers")
        try:
            distributions[axis] = ScoreDistribution(np.asarray(column, dtype=np.float64).astype(np.float32).astype(np.float64), count, exact)
        except CREwardError as error:
            raise ReferenceError(f"{source}: {axis!r}: {error}") from None
    return ReferenceGroup(count, distributions)
