"""Writing what a keep rule kept: ``--keep-to DIR``.

Layout::

    DIR/kept.parquet    the kept rows (every output column, plus value, rank, group), best first per group
    DIR/keys.txt        their keys, one a line, in the same order
    DIR/summary.json    the rule, and per group: rows, scored, kept, lowest kept value
    DIR/images/...      with --copy-images: the kept images (files keep their key's relative path;
                        tar members become <shard name>/<member>)
    DIR/shards/*.tar    with --write-shards: WebDataset shards of just the kept samples, one per
                        input part: every member of a kept sample, plus <key>.creward.json (scores)

The folder is built under a temporary name beside ``DIR`` and renamed into place at the end
(an earlier ``DIR`` is replaced only then), so it is never seen half-written. Copying and shard
writing run one task per input part: in this process, or as Ray tasks with ``--engine ray``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np

from ..models.errors import CREwardError
from .filtering import KeepDecision, KeepRule
from .output import ScoresFolder, require_pyarrow

logger = logging.getLogger(__name__)

MARKER = "creward.kept"


def _safe_relative(text: str) -> PurePosixPath:
    """A relative path that stays inside its folder (no leading /, no ``..``)."""
    parts = [part for part in PurePosixPath(text.replace("\\", "/")).parts if part not in ("/", "..", ".", "")]
    return PurePosixPath(*parts) if parts else PurePosixPath("unnamed")


def _unique(path: PurePosixPath, taken: set[str]) -> PurePosixPath:
    candidate, number = path, 1
    while str(candidate) in taken:
        number += 1
        candidate = path.with_name(f"{path.stem}~{number}{path.suffix}")
    taken.add(str(candidate))
    return candidate


def _sample_key(relative: PurePosixPath) -> str:
    """A WebDataset key for a file: its path without suffix, dots in the name replaced (webdataset splits at the first)."""
    name = relative.name[: -len(relative.suffix)] if relative.suffix else relative.name
    name = name.replace(".", "_") or "unnamed"
    return str(relative.with_name(name)) if str(relative.parent) != "." else name


def decide(folder: ScoresFolder, part_ids: Sequence[str], rule: KeepRule):
    """Read the scores of these parts and apply the rule: ``(table, decision)``."""
    table = folder.read(part_ids)
    if rule.group_by is not None and rule.group_by not in table.column_names:
        raise CREwardError(
            f"cannot group by {rule.group_by!r}: the scores have columns {', '.join(table.column_names)} "
            f"(carry a list's or the shards' .json column with --columns NAME)"
        )
    missing = [name for name in rule.columns if name not in table.column_names]
    if missing:
        raise CREwardError(
            f"cannot keep by {', '.join(missing)}: the scores have no such column (calibrated columns are written with --reference REF)"
        )
    axes = folder.axes
    scores = np.stack([_floats(table, axis) for axis in axes], axis=1) if len(table) else np.zeros((0, len(axes)))
    groups = table.column(rule.group_by).to_pylist() if rule.group_by else None
    return table, rule.apply(scores, groups, {name: _floats(table, name) for name in rule.columns})


def _floats(table, name: str) -> np.ndarray:
    """A float column as float64, nulls as NaN."""
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _copy_task(task: dict) -> int:
    staging = Path(task["staging"])
    members = None
    done = 0
    for item in task["items"]:
        target = staging / "images" / item["target"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if item["shard"] is not None:
            if members is None:  # a task is one part: one shard, listed once
                from .samples import shard_members

                members = {m.member: m for sample in shard_members(item["shard"]).values() for m in sample}
            member = members.get(item["member"])
            if member is None:
                raise CREwardError(f"{item['shard']}:{item['member']} is no longer in the shard")
            target.write_bytes(member.read())
        else:
            shutil.copy2(item["path"], target)
        done += 1
    return done


def _shard_task(task: dict) -> int:
    staging = Path(task["staging"]) / "shards"
    staging.mkdir(parents=True, exist_ok=True)
    members_by_key = None
    if task["shard"] is not None:
        from .samples import shard_members

        members_by_key = shard_members(task["shard"])
    with tarfile.open(staging / task["name"], "w", format=tarfile.PAX_FORMAT) as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))

        for item in task["items"]:
            if members_by_key is not None:
                key = item["key"]
                for member in members_by_key.get(key, []):
                    add(member.member, member.read())
            else:
                key = item["sample_key"]
                add(f"{key}{Path(item['path']).suffix.lower()}", Path(item["path"]).read_bytes())
            add(f"{key}.creward.json", json.dumps(item["record"], sort_keys=True).encode())
    return len(task["items"])


def _record(row: dict, axes: Sequence[str]) -> dict:
    record = {"key": row["key"], "source": row["path"] or f"{row['shard']}:{row['member']}", "value": row["value"], "rank": row["rank"]}
    record.update({axis: row[axis] for axis in axes})
    from .calibrated import calibrated_columns

    record.update({name: row[name] for name in calibrated_columns(axes) if name in row})
    if row.get("group") is not None:
        record["group"] = row["group"]
    return record


def write_kept(
    folder: ScoresFolder,
    part_ids: Sequence[str],
    rule: KeepRule,
    keep_to: str | os.PathLike,
    copy_images: bool = False,
    write_shards: bool = False,
    run_tasks: Callable[[Callable[[dict], int], list[dict]], int] | None = None,
) -> dict:
    """Apply ``rule`` to the finished parts and write ``keep_to`` (see the module docstring).

    ``run_tasks(function, tasks)`` runs the copy/shard tasks (default: here, one after another).
    Returns the summary written to ``summary.json``.
    """
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    keep_to = Path(keep_to)
    if keep_to.exists() and (not keep_to.is_dir() or (any(keep_to.iterdir()) and not _is_ours(keep_to))):
        raise CREwardError(f"--keep-to {keep_to} exists and was not written by creward score-dataset; choose a new folder")
    table, decision = decide(folder, part_ids, rule)
    if decision.kept == 0:
        logger.warning("no image passed %s (%d row(s) looked at); %s gets an empty kept.parquet", rule.describe(), len(table), keep_to)
    axes = folder.axes
    group_values = table.column(rule.group_by).to_pylist() if rule.group_by else [None] * len(table)
    chosen = np.flatnonzero(decision.keep)
    order = sorted(chosen.tolist(), key=lambda row: ("" if group_values[row] is None else str(group_values[row]), decision.rank[row]))
    kept = table.take(pa.array(order, type=pa.int64())) if order else table.slice(0, 0)
    kept = kept.append_column("value", pa.array([float(decision.values[row]) for row in order], type=pa.float64()))
    kept = kept.append_column("rank", pa.array([int(decision.rank[row]) for row in order], type=pa.int64()))
    kept = kept.append_column("group", pa.array([None if group_values[row] is None else str(group_values[row]) for row in order], type=pa.string()))
    kept = kept.replace_schema_metadata({**(table.schema.metadata or {}), b"creward.kept_rule": rule.describe().encode()})

    keep_to.parent.mkdir(parents=True, exist_ok=True)
    staging = keep_to.parent / f".{keep_to.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        pq.write_table(kept, staging / "kept.parquet")
        (staging / "keys.txt").write_text("".join(f"{key}\n" for key in kept.column("key").to_pylist()), encoding="utf-8")
        rows = kept.to_pylist()
        run = run_tasks or (lambda function, tasks: sum(function(task) for task in tasks))
        if copy_images and rows:
            taken: set[str] = set()
            by_part: dict[str, list[dict]] = {}
            for row in rows:
                relative = _safe_relative(f"{Path(row['shard']).stem}/{row['member']}" if row["shard"] else row["key"])
                by_part.setdefault(row["part"], []).append(
                    {"target": str(_unique(relative, taken)), "path": row["path"], "shard": row["shard"], "member": row["member"], "key": row["key"]}
                )
            copied = run(_copy_task, [{"staging": str(staging), "items": items} for items in by_part.values()])
            logger.info("copied %d kept image(s) to %s", copied, keep_to / "images")
        if write_shards and rows:
            names: set[str] = set()
            tasks: dict[str, dict] = {}
            for row in rows:
                task = tasks.get(row["part"])
                if task is None:
                    stem = Path(row["shard"]).stem if row["shard"] else row["part"].split(":", 1)[0] + "-" + row["part"].rsplit("#", 1)[-1]
                    name = str(_unique(PurePosixPath(f"{_safe_relative(stem).name}.tar"), names))
                    task = tasks[row["part"]] = {"staging": str(staging), "name": name, "shard": row["shard"], "items": [], "keys": set()}
                item = {"key": row["key"], "path": row["path"], "record": _record(row, axes)}
                if row["shard"] is None:
                    item["sample_key"] = str(_unique(PurePosixPath(_sample_key(_safe_relative(row["key"]))), task["keys"]))
                task["items"].append(item)
            for task in tasks.values():
                task.pop("keys")
            written = run(_shard_task, list(tasks.values()))
            logger.info("wrote %d kept sample(s) into %d shard(s) in %s", written, len(tasks), keep_to / "shards")
        summary = {
            MARKER: 1,
            "rule": rule.describe(),
            "rows": len(table),
            "kept": decision.kept,
            "groups": {name: vars(outcome) for name, outcome in decision.groups.items()},
            "copied_images": bool(copy_images),
            "wrote_shards": bool(write_shards),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        _swap_into_place(staging, keep_to)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _is_ours(folder: Path) -> bool:
    try:
        return MARKER in json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _swap_into_place(staging: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["KeepDecision", "decide", "write_kept"]
