"""``--engine ray``: the same scoring on Ray Data, from one machine to a cluster.

The pipeline is Ray Data's batch-inference shape::

    from_items(work units)                          one unit = a shard, or up to 32 listed files
      .map_batches(decode_units)                    CPU tasks: list shards, read, decode, official preprocessing
      .map_batches(CREwardScorer,                   actors: CREward loaded once per actor
                   compute=ActorPoolStrategy(size=N), num_gpus=g, batch_size=B)
      .iter_batches()                               the driver gathers rows by part, writes each finished part

so decoding (CPU tasks) overlaps inference (actors), and Ray provides retries, actor restarts
and back-pressure: a killed actor is restarted and its batches are retried (Ray Data's defaults,
``max_restarts=-1``, ``max_task_retries=-1``); rows are keyed by (part, index), so none is lost
or written twice. Only scores travel back to the driver; pixels stay in the object store, in the
backbone's compute dtype when ``--dtype`` is fp16/bf16 (exactly what the model would cast them
to), else float32.

Inputs and weights are read by path on the workers: on a cluster they must be on storage every
node sees (a shared filesystem), and ``creward`` must be importable there (installed in the
image, or by the job's ``runtime_env`` pip from a checkout every node sees).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..models.errors import CREwardError, ImageError, MissingDependencyError
from .inputs import Part
from .output import ScoresFolder, sample_row
from .samples import Sample

logger = logging.getLogger(__name__)

RAY_PIP = "'comfyui-creward[ray]' (or: pip install 'ray[data]')"


def require_ray():
    """``ray`` with Ray Data, or ``MissingDependencyError`` giving the pip command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("ray", "--engine ray", RAY_PIP) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. ``address``: None starts (or joins, under ``ray job submit``) a cluster,
    ``auto`` joins the running one, ``ray://host:10001`` a remote one through Ray Client."""

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0


# -- work units ----------------------------------------------------------------------------
def work_units(parts: Sequence[Part], files_per_unit: int) -> list[dict]:
    """One item per decode task: a shard, or up to ``files_per_unit`` files of a part (as JSON text)."""
    units = []
    for part in parts:
        if part.shard is not None:
            units.append({"unit": json.dumps({"part": part.id, "shard": part.shard})})
            continue
        for start in range(0, len(part.samples), files_per_unit):
            chunk = part.samples[start:start + files_per_unit]
            units.append({"unit": json.dumps({"part": part.id, "rows": len(part.samples), "samples": [sample.to_dict() for sample in chunk]})})
    return units


PIXEL_DTYPES = ("fp32", "fp16", "bf16")


def _to_transfer(pixels, pixel_dtype: str) -> np.ndarray:
    import torch

    if pixel_dtype == "bf16":
        return pixels.to(torch.bfloat16).view(torch.int16).numpy()
    if pixel_dtype == "fp16":
        return pixels.to(torch.float16).numpy()
    return pixels.numpy()


def _from_transfer(array: np.ndarray, pixel_dtype: str):
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if pixel_dtype == "bf16" else tensor


def _numpy_dtype(pixel_dtype: str):
    return {"fp32": np.float32, "fp16": np.float16, "bf16": np.int16}[pixel_dtype]


def _decode_chunk(samples: list[Sample], rows: int, preprocessing, pixel_dtype: str, columns: tuple[str, ...]) -> dict:
    from ..models.file_scoring import load_preprocessed

    size = preprocessing.image_size
    pixels = np.zeros((len(samples), 3, size, size), dtype=_numpy_dtype(pixel_dtype))
    errors: list[str | None] = []
    for position, sample in enumerate(samples):
        error = sample.error
        if error is None:
            try:
                pixels[position] = _to_transfer(load_preprocessed(sample.source(), preprocessing), pixel_dtype)
            except ImageError as failure:
                error = str(failure)
        errors.append(error)
    batch = {
        "part": [sample.part for sample in samples],
        "index": np.array([sample.index for sample in samples], dtype=np.int64),
        "part_rows": np.full(len(samples), rows, dtype=np.int64),
        "key": [sample.key for sample in samples],
        "path": [sample.path for sample in samples],
        "shard": [sample.shard for sample in samples],
        "member": [sample.member for sample in samples],
        "folder": [sample.folder for sample in samples],
        "error": errors,
        "pixels": pixels,
    }
    for name in columns:
        batch[f"column:{name}"] = [sample.columns.get(name) for sample in samples]
    return _arrow_batch(batch)


def _arrow_batch(batch: dict):
    """A batch as a pyarrow Table with fixed types: text columns stay strings even when all null
    (numpy batches would turn an all-None column into floats, and blocks would not concatenate)."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    data = {}
    for name, values in batch.items():
        if name == "pixels":
            data[name] = ArrowTensorArray.from_numpy(values)
        elif name in ("index", "part_rows"):
            data[name] = pa.array(values, type=pa.int64())
        elif isinstance(values, np.ndarray) and values.dtype == np.float32:
            data[name] = pa.array(values, type=pa.float32())
        else:
            data[name] = pa.array([_text(value) for value in values], type=pa.string())
    return pa.table(data)


def decode_units(batch: dict, preprocessing: dict, pixel_dtype: str, columns: Sequence[str], chunk: int) -> Iterator[dict]:
    """A Ray Data task: work units → batches of preprocessed pixels plus each row's names and errors."""
    from ..models.preprocess import Preprocessing
    from .samples import list_shard

    spec = Preprocessing(**preprocessing)
    columns = tuple(columns)
    for text in batch["unit"]:
        unit = json.loads(text)
        if "shard" in unit:
            samples = list_shard(unit["shard"], unit["part"], columns)
            rows = len(samples)
        else:
            samples = [Sample.from_dict(item) for item in unit["samples"]]
            rows = unit["rows"]
        for start in range(0, len(samples), chunk):
            yield _decode_chunk(samples[start:start + chunk], rows, spec, pixel_dtype, columns)


class CREwardScorer:
    """A Ray Data callable class: loads CREward once per actor, scores batches of pixels.

    Rows with an ``error`` pass through unscored (NaN scores). ``threads`` sets torch's CPU
    threads (the actor's CPUs) when running on a CPU.
    """

    def __init__(self, load_kwargs: dict, pixel_dtype: str, axes: Sequence[str], threads: int | None = None):
        import torch

        from ..models.loader import load

        if threads:
            torch.set_num_threads(threads)
        self.model = load(**load_kwargs)
        self.pixel_dtype = pixel_dtype
        self.axes = tuple(axes)
        if tuple(self.model.axes) != self.axes:
            raise RuntimeError(f"the actor's head has axes {self.model.axes}, the job expected {self.axes}")

    def __call__(self, batch: dict) -> dict:
        from ..models.file_scoring import score_pixel_batch

        pixels = batch.pop("pixels")
        count = len(batch["key"])
        scores = np.full((count, len(self.axes)), np.nan, dtype=np.float32)
        readable = [row for row in range(count) if _text(batch["error"][row]) is None]
        if readable:
            scores[readable] = np.asarray(score_pixel_batch(self.model, _from_transfer(pixels[readable], self.pixel_dtype)), dtype=np.float32)
        for position, axis in enumerate(self.axes):
            batch[axis] = scores[:, position]
        return _arrow_batch(batch)


# -- the driver ----------------------------------------------------------------------------
class _PartAssembler:
    """Gathers scored rows by part and writes each part once all its rows have arrived."""

    def __init__(self, parts: Sequence[Part], folder: ScoresFolder, axes: Sequence[str], columns: Sequence[str], on_part):
        self.parts = {part.id: part for part in parts}
        self.folder = folder
        self.axes = tuple(axes)
        self.columns = tuple(columns)
        self.on_part = on_part
        self.rows: dict[str, dict[int, dict]] = {}
        self.expected: dict[str, int] = {}
        self.written: set[str] = set()
        self.duplicates = 0
        self.total_rows = self.total_errors = 0

    def add(self, batch: dict) -> None:
        for row in range(len(batch["key"])):
            part = str(batch["part"][row])
            index = int(batch["index"][row])
            if part in self.written or index in self.rows.get(part, {}):
                self.duplicates += 1
                continue
            sample = Sample(
                part, index, str(batch["key"][row]), path=_text(batch["path"][row]), shard=_text(batch["shard"][row]),
                member=_text(batch["member"][row]), folder=_text(batch["folder"][row]) or "",
                columns={name: _text(batch[f"column:{name}"][row]) for name in self.columns},
            )
            error = _text(batch["error"][row])
            scores = None if error is not None else [float(batch[axis][row]) for axis in self.axes]
            self.rows.setdefault(part, {})[index] = sample_row(sample, self.axes, scores, error)
            self.expected[part] = int(batch["part_rows"][row])
            if len(self.rows[part]) == self.expected[part]:
                self._write(part)

    def _write(self, part_id: str) -> None:
        rows = self.rows.pop(part_id)
        ordered = [rows[index] for index in sorted(rows)]
        record = self.folder.write_part(part_id, self.parts[part_id].fingerprint, ordered)
        self.written.add(part_id)
        self.total_rows += record["rows"]
        self.total_errors += record["errors"]
        if self.on_part is not None:
            self.on_part(record)

    def missing(self) -> list[str]:
        return [part for part in self.parts if part not in self.written]


def _text(value) -> str | None:
    """A text cell of a Ray batch: None stays None; a column that was all None arrives as NaN floats."""
    if value is None or (isinstance(value, (float, np.floating)) and value != value):
        return None
    return str(value)


DECODE_CHUNK = 32  # images a decoding task turns into one block (and files per decoding task)
DECODE_WORKER_BASE_MEMORY = 768 * 1024**2  # a worker process with torch and torchvision imported (~600 MB seen)


def decode_task_memory(image_size: int, chunk: int) -> int:
    """Bytes a decoding task's process may hold: its imports, two copies of a chunk of float32
    pixels, and one image decoded at ``MAX_DECODE_PIXELS`` (float32, and its PIL original)."""
    from ..models.preprocess import MAX_DECODE_PIXELS

    return DECODE_WORKER_BASE_MEMORY + 2 * chunk * 3 * image_size * image_size * 4 + MAX_DECODE_PIXELS * (3 * 4 + 4)


def transfer_dtype(dtype: str) -> str:
    """The dtype pixels travel in: the model's compute dtype when given as fp16/bf16, else fp32."""
    return dtype if dtype in ("fp16", "bf16") else "fp32"


def score_parts_on_ray(
    parts: Sequence[Part],
    folder: ScoresFolder,
    load_kwargs: dict,
    preprocessing,
    axes: Sequence[str],
    columns: tuple[str, ...] = (),
    batch_size: int = 8,
    options: RayOptions = RayOptions(),
    on_part: Callable[[dict], None] | None = None,
    scorer_class: type = CREwardScorer,
) -> tuple[int, int]:
    """Score and write every part on Ray; returns ``(rows, error rows)``.

    Runs inside :func:`ray_session` (nested sessions reuse the outer one).
    ``scorer_class`` is the actor class (a subclass of :class:`CREwardScorer`, e.g. with extra logging).
    """
    ray = require_ray()
    if options.actors <= 0:
        raise ValueError(f"--actors should be positive, got {options.actors}")
    with ray_session(options):
        pixel_dtype = transfer_dtype(load_kwargs.get("dtype") or "fp32")
        preprocessing_fields = {
            "image_size": preprocessing.image_size, "mean": tuple(preprocessing.mean), "std": tuple(preprocessing.std),
            "interpolation": preprocessing.interpolation,
        }
        chunk = min(batch_size, DECODE_CHUNK)  # the actors' batches are re-formed from these by Ray Data
        units = work_units(parts, chunk)
        threads = max(1, int(options.cpus_per_actor)) if not options.gpus_per_actor else None
        dataset = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
        dataset = dataset.map_batches(
            decode_units,
            batch_size=1,
            num_cpus=options.decode_cpus,
            # what one decoding task holds at most (a chunk of pixels, one image decoded at the largest
            # size decoding allows); reserving it also keeps Ray Data from fusing decoding into the
            # scoring actors (which reserve no memory), so decoding stays in CPU tasks upstream
            memory=decode_task_memory(preprocessing.image_size, chunk),
            fn_kwargs={"preprocessing": preprocessing_fields, "pixel_dtype": pixel_dtype, "columns": list(columns), "chunk": chunk},
        )
        dataset = dataset.map_batches(
            scorer_class,
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            batch_size=batch_size,  # explicit: with GPUs, the actors' batch is the GPU batch
            num_gpus=options.gpus_per_actor or None,
            num_cpus=options.cpus_per_actor,
            fn_constructor_kwargs={"load_kwargs": load_kwargs, "pixel_dtype": pixel_dtype, "axes": list(axes), "threads": threads},
        )
        assembler = _PartAssembler(parts, folder, axes, columns, on_part)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            assembler.add(batch)
        if assembler.duplicates:
            logger.warning("%d row(s) arrived twice (a retried task) and were written once", assembler.duplicates)
        missing = assembler.missing()
        if missing:
            raise CREwardError(f"{len(missing)} part(s) did not arrive whole from Ray (first: {missing[0]}); rerun the command to score them")
        return assembler.total_rows, assembler.total_errors


@contextmanager
def ray_session(options: RayOptions):
    """Ray for the duration of a job: joins ``options.address`` unless Ray is already initialised
    here (then that one is used and left running); a cluster started here is shut down at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=options.address)
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_each(batch: dict, function: Callable[[dict], int]) -> dict:
    return {"done": np.array([function(json.loads(text)) for text in batch["task"]], dtype=np.int64)}


def run_tasks_on_ray(function: Callable[[dict], int], tasks: Sequence[dict], options: RayOptions) -> int:
    """``function(task)`` for every task as Ray Data CPU tasks (one task each); returns the sum of their results."""
    with ray_session(options) as ray:
        if not tasks:
            return 0
        dataset = ray.data.from_items([{"task": json.dumps(task)} for task in tasks], override_num_blocks=len(tasks))
        dataset = dataset.map_batches(_run_each, batch_size=1, num_cpus=options.decode_cpus, fn_kwargs={"function": function})
        return int(sum(int(row["done"]) for row in dataset.take_all()))
