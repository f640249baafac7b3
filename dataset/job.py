"""A whole ``creward score-dataset`` run: resolve the model, expand inputs, skip finished parts,
score the rest on the chosen engine, then (optionally) apply a keep rule and write what it kept.

Example (Python)::

    from creward.dataset.job import DatasetJob, run_job
    summary = run_job(DatasetJob(inputs=["shards/*.tar"], output="scores/", head="creward_clip.safetensors",
                                 backbone_weights="clip-vit-large-patch14/"))
    print(summary.describe())
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..models.errors import CREwardError, WeightsError
from .filtering import KeepRule
from .inputs import describe_parts, expand_inputs
from .output import ScoresFolder, require_pyarrow, TEXT_COLUMNS
from .ray_engine import CREwardScorer, RayOptions

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class DatasetJob:
    """Everything a run needs (the CLI's options; see ``creward score-dataset --help``).

    ``rule`` is a :class:`KeepRule`, or a function of the head's axes returning one (the axes are
    known once the head is read), or None for no filtering.

    ``reference`` is a reference-set file (``creward calibrate``): the output gains calibrated
    columns (``creward.dataset.calibrated``), and rules may use them (``CalibratedValue``);
    ``group`` compares every row with that group of it.
    """

    inputs: Sequence[str]
    output: str | os.PathLike
    engine: str = "local"
    path_column: str = "path"
    columns: tuple[str, ...] = ()
    part_size: int = 1000
    head: str | os.PathLike | None = None
    backbone: str | None = None
    backbone_weights: str | os.PathLike | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    workers: int = 2
    ray: RayOptions = field(default_factory=RayOptions)
    overwrite: bool = False
    rule: KeepRule | Callable[[tuple[str, ...]], KeepRule] | None = None
    keep_to: str | os.PathLike | None = None
    copy_images: bool = False
    write_shards: bool = False
    progress: bool = True
    reference: str | os.PathLike | None = None
    group: str | None = None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise CREwardError(f"engine should be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.batch_size <= 0:
            raise CREwardError(f"--batch-size should be positive, got {self.batch_size}")
        self.columns = tuple(self.columns)
        from ..models.axes import AXES
        from .calibrated import calibrated_columns

        reserved = [name for name in self.columns if name in (*TEXT_COLUMNS, *AXES, *calibrated_columns(AXES), "error", "value", "rank", "group", "index")]
        if reserved:
            raise CREwardError(f"--columns cannot carry a column named {reserved[0]!r}: the output has its own")
        if (self.rule is None) != (self.keep_to is None):
            raise CREwardError("filtering needs both a rule (--keep-top-percent / --min-score) and --keep-to DIR")
        if (self.copy_images or self.write_shards) and self.keep_to is None:
            raise CREwardError("--copy-images and --write-shards need a rule and --keep-to DIR")
        if self.group and self.reference is None:
            raise CREwardError("--group names a group of the reference: it needs --reference REF")


@dataclass
class JobSummary:
    """What a run did. ``images``/``errors``/``seconds`` count this run's scoring only."""

    output: Path
    parts: int
    parts_skipped: int
    images: int
    errors: int
    seconds: float
    kept: dict | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        text = (
            f"scored {self.images} image(s), {self.errors} unreadable, in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s); {self.parts - self.parts_skipped} part(s) scored, "
            f"{self.parts_skipped} already finished; scores in {self.output}"
        )
        if self.kept is not None:
            text += f"; kept {self.kept['kept']} of {self.kept['rows']} ({self.kept['rule']})"
        return text


def _identity(job: DatasetJob):
    """Resolve head and backbone weights (nothing loaded) → (head path, backbone, weights path, identity)."""
    from ..models.backbones.registry import get_spec
    from ..models.head import read_head_file
    from ..models.identity import file_digest, weights_identity
    from ..models.locate import find_backbone_weights, find_head

    head_path = find_head(job.head, job.backbone)
    _, info = read_head_file(head_path, job.backbone)
    if info.backbone is None:
        raise WeightsError(
            f"{head_path} does not say which backbone it was trained on (official .ckpt files carry no metadata): "
            f"pass --backbone NAME, or convert it once with `creward convert {head_path} --backbone NAME`"
        )
    spec = get_spec(info.backbone)
    weights_path = find_backbone_weights(spec.name, job.backbone_weights)
    if job.engine == "local":
        from ..models.device import resolve_device, resolve_dtype

        dtype_name = str(resolve_dtype(job.dtype, resolve_device(job.device))).replace("torch.", "")
    elif job.dtype == "auto":
        dtype_name = "auto (GPU)" if job.ray.gpus_per_actor else "float32"
    else:
        dtype_name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(job.dtype, job.dtype)
    identity = {
        "axes": list(info.axes),
        "head_name": head_path.name,
        "head_sha256": file_digest(head_path),
        "backbone": spec.name,
        "backbone_weights": str(weights_path),
        "backbone_weights_id": weights_identity(weights_path),
        "dtype": dtype_name,
        "columns": list(job.columns),
    }
    return head_path, spec, weights_path, identity


def run_job(job: DatasetJob, scorer_class: type = CREwardScorer, on_part: Callable[[dict], None] | None = None) -> JobSummary:
    """Run ``job``; returns its :class:`JobSummary` (also logged). Raises ``CREwardError`` subclasses
    for bad inputs, an output folder of another job, or missing weights; never for a bad image.

    ``scorer_class``: the Ray actor class (a :class:`CREwardScorer` subclass); ``on_part(record)``
    is called on this process after each part is written (its manifest record).
    """
    require_pyarrow()
    if job.engine == "ray":
        from .ray_engine import require_ray

        require_ray()
    head_path, spec, weights_path, identity = _identity(job)
    rule = job.rule(tuple(identity["axes"])) if callable(job.rule) and not isinstance(job.rule, KeepRule) else job.rule
    calibration = _calibration(job, head_path)
    if rule is not None and calibration is None:
        needs = [name for name in rule.columns if name.endswith(("_percentile", "_win"))]
        if needs:
            raise CREwardError(f"the rule ({rule.describe()}) reads calibrated columns ({', '.join(needs)}): it needs --reference REF")
    parts = expand_inputs(job.inputs, job.part_size, job.path_column, job.columns)
    logger.info("inputs: %s", describe_parts(parts))
    folder = ScoresFolder(job.output, identity, overwrite=job.overwrite, calibration=calibration)
    folder.recalibrate()
    finished = folder.finished()
    todo = []
    for part in parts:
        record = finished.get(part.id)
        if record is None:
            todo.append(part)
        elif record["fingerprint"] != part.fingerprint:
            logger.warning("%s changed since it was scored; scoring it again", part.id)
            todo.append(part)
    skipped = len(parts) - len(todo)
    if skipped:
        logger.info("resuming: %d of %d part(s) already finished in %s", skipped, len(parts), folder.path)
    load_kwargs = {"head": str(head_path), "backbone": spec.name, "backbone_weights": str(weights_path), "device": job.device, "dtype": job.dtype}
    start = time.perf_counter()
    images = errors = 0
    kept = None
    if job.engine == "local":
        if todo:
            images, errors = _score_locally(job, todo, folder, load_kwargs, on_part)
        seconds = time.perf_counter() - start
        if rule is not None:
            kept = _keep(job, folder, parts, rule, None)
    else:
        from .ray_engine import ray_session, run_tasks_on_ray, score_parts_on_ray

        with ray_session(job.ray):
            if todo:
                images, errors = score_parts_on_ray(
                    todo, folder, load_kwargs, spec.preprocessing, identity["axes"], job.columns,
                    batch_size=job.batch_size, options=job.ray, on_part=on_part, scorer_class=scorer_class,
                )
            seconds = time.perf_counter() - start
            if rule is not None:
                kept = _keep(job, folder, parts, rule, lambda function, tasks: run_tasks_on_ray(function, tasks, job.ray))
    summary = JobSummary(Path(job.output), len(parts), skipped, images, errors, seconds, kept)
    logger.info("%s", summary.describe())
    return summary


def _calibration(job: DatasetJob, head_path):
    """The job's reference (``DatasetCalibration``), checked against the head before anything is
    scored or written; None without ``--reference``."""
    if job.reference is None:
        return None
    from .calibrated import DatasetCalibration

    calibration = DatasetCalibration.load(job.reference, job.group, job.columns)
    calibration.check_scorer(head_path, job.backbone)  # the error `creward score --reference` gives
    logger.info("calibrating against %s", calibration.describe())
    return calibration


def _score_locally(job: DatasetJob, todo, folder: ScoresFolder, load_kwargs: dict, on_part) -> tuple[int, int]:
    from tqdm import tqdm

    from ..models.loader import load
    from .local_engine import score_parts_locally

    model = load(**load_kwargs)
    logger.info("%s", model.describe())
    known = sum(part.size or 0 for part in todo)
    with tqdm(total=known, desc="scoring", unit="img", file=sys.stderr, disable=None if job.progress else True, dynamic_ncols=True) as bar:
        return score_parts_locally(model, todo, folder, job.columns, batch_size=job.batch_size, workers=job.workers, bar=bar, on_part=on_part)


def _keep(job: DatasetJob, folder: ScoresFolder, parts, rule: KeepRule, run_tasks):
    from .kept import write_kept

    summary = write_kept(folder, [part.id for part in parts], rule, job.keep_to, job.copy_images, job.write_shards, run_tasks)
    logger.info("kept %d of %d row(s) (%s) -> %s", summary["kept"], summary["rows"], summary["rule"], job.keep_to)
    return summary
