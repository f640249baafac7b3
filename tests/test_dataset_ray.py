"""``creward score-dataset --engine ray`` on a local Ray cluster that this module starts and stops.

One cluster for the module: ``ray.init(num_cpus=2)``, loopback only, no dashboard, a small object
store. Skipped only when the ``ray`` extra is not installed (CI installs it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# Before Ray is imported: keep it light and on loopback. On Linux, Ray's "no cluster" switch makes
# it use 127.0.0.1 as the node address, so every Ray server binds loopback only.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DEDUP_LOGS": "0",
}
for _name, _value in RAY_ENV.items():
    os.environ.setdefault(_name, _value)

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed: pip install 'comfyui-creward[ray]'")
pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

import dataset_checks as checks  # noqa: E402
from creward.cli.main import main  # noqa: E402
from creward.dataset.job import DatasetJob, run_job  # noqa: E402
from creward.dataset.ray_engine import CREwardScorer, RayOptions  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.slow]
RAY_PROCESS_NAMES = ("raylet", "gcs_server", "plasma_store", "ray::", "default_worker", "dashboard", "log_monitor", "runtime_env")


def _ray_processes():
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            text = " ".join([process.name(), *process.cmdline()[:2]])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(name in text for name in RAY_PROCESS_NAMES):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024**2, logging_level="WARNING", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()
    deadline = time.monotonic() + 30
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_processes(), [process.cmdline() for process in _ray_processes()]


@pytest.fixture(scope="module")
def weights(dataset_weights):
    return dataset_weights


@pytest.fixture(scope="module")
def built(dataset_inputs):
    return dataset_inputs


def model_args(weights):
    return ["--head", str(weights["head"]), "--backbone-weights", str(weights["backbone"]), "--device", "cpu", "--batch-size", "3"]


RAY_ARGS = ["--engine", "ray", "--actors", "1", "--cpus-per-actor", "1", "--decode-cpus", "1"]


def slow_scorer(markers: Path):
    """A scorer that marks each actor process it runs in and takes its time (so it can be killed mid-run)."""

    class SlowScorer(CREwardScorer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            (markers / f"actor-{os.getpid()}").write_text("")

        def __call__(self, batch):
            time.sleep(0.4)
            return super().__call__(batch)

    return SlowScorer


@pytest.fixture(scope="module")
def scored(cluster, built, weights, tmp_path_factory):
    """Every kind of input (and the bad ones) on Ray, interrupted twice: a first driver is killed
    (SIGKILL) after its first part; the rerun resumes, and its scoring actor is killed mid-run."""
    root = tmp_path_factory.mktemp("scored")
    out = root / "out"
    settings = dict(inputs=built["inputs"], output=str(out), engine="ray", part_size=2, batch_size=3, columns=("site", "caption"),
                    head=str(weights["head"]), backbone_weights=str(weights["backbone"]), device="cpu", progress=False)
    # half a CPU for the first driver's actor: the rerun need not wait for Ray to reclaim it
    script = textwrap.dedent(f"""
        import os, time
        os.environ.update({RAY_ENV!r})
        from creward.dataset.job import DatasetJob, run_job
        from creward.dataset.ray_engine import RayOptions
        job = DatasetJob(**{settings!r}, ray=RayOptions(address={cluster!r}, actors=1, cpus_per_actor=0.5, decode_cpus=0.5))
        run_job(job, on_part=lambda record: time.sleep(120))  # stands still after its first part: killed there
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "_creward_parts.jsonl"
    deadline = time.monotonic() + 300
    while not (manifest.is_file() and manifest.read_text().strip()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    first = [json.loads(line) for line in manifest.read_text().splitlines()]
    stamp = (out / first[0]["file"]).stat().st_mtime_ns

    markers = root / "markers"
    markers.mkdir()
    killed: list[int] = []
    records: list[dict] = []

    def kill_the_actor_once(record):
        records.append(record)
        if not killed:
            pid = int(next(markers.iterdir()).name.split("-")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    job = DatasetJob(**settings, ray=RayOptions(actors=1, cpus_per_actor=0.5, decode_cpus=1))
    summary = run_job(job, scorer_class=slow_scorer(markers), on_part=kill_the_actor_once)
    return {"summary": summary, "out": out, "killed": killed, "actors": sorted(path.name for path in markers.iterdir()),
            "first_driver_parts": first, "first_part_stamp": stamp, "records": records}


def test_ray_scores_equal_creward_score_and_bad_inputs_are_rows(scored, built, dataset_expected):
    table = checks.read_output(scored["out"])
    checks.check_scores(table, built, dataset_expected)
    checks.check_bad_rows(table, built)
    assert {row["caption"] for row in table.to_pylist() if row["shard"] and row["shard"].endswith("00001.tar")} == {"image 0", "image 1", "image 2"}
    assert {row["site"] for row in table.to_pylist() if row["path"] and "/listed/" in row["path"]} == {"a", "b", "c", "z"}


def test_a_killed_driver_resumes_without_rescoring_finished_parts(scored):
    first = scored["first_driver_parts"]
    assert len(first) == 1, first  # the first driver was killed after one part
    summary = scored["summary"]
    assert summary.parts_skipped == 1 and len(scored["records"]) == summary.parts - 1
    assert first[0]["part"] not in {record["part"] for record in scored["records"]}
    assert (scored["out"] / first[0]["file"]).stat().st_mtime_ns == scored["first_part_stamp"]


def test_a_killed_actor_is_restarted_and_every_row_arrives_exactly_once(scored):
    assert scored["killed"], "the actor was never killed"
    assert [name for name in scored["actors"] if name != f"actor-{scored['killed'][0]}"], "Ray did not restart the killed actor"
    table = checks.read_output(scored["out"])
    checks.check_complete(scored["out"], table)  # each row once, every part in the manifest
    # 5 folder files (one broken), 3 + 1 listed (one missing), 2 x 3 shard samples, 3 + 1 + 2 rows of the bad shards
    assert len(table) == 5 + 4 + 6 + 6 == scored["summary"].images + scored["first_driver_parts"][0]["rows"]
    assert sum(row["error"] is not None for row in table.to_pylist()) == 1 + 1 + 2 + 1 + 1


def test_filtering_runs_its_copies_as_ray_tasks(scored, built, weights, tmp_path):
    out = scored["out"]
    keep = tmp_path / "kept"
    args = ["score-dataset", *built["inputs"], "-o", str(out), "--part-size", "2", "--columns", "site,caption", *RAY_ARGS, *model_args(weights),
            "--keep-top-percent", "50", "--axis", "texture", "--per-group", "site", "--keep-to", str(keep), "--copy-images", "--write-shards"]
    assert main(args) == 0
    kept = pq.read_table(keep / "kept.parquet").to_pylist()
    summary = json.loads((keep / "summary.json").read_text())
    assert summary["kept"] == len(kept) > 0 and set(summary["groups"]) == {"", "a", "b", "c", "z"}
    assert summary["groups"]["c"] == {"rows": 1, "scored": 0, "kept": 0, "lowest_kept": None}  # c: the missing file
    assert summary["groups"]["a"]["kept"] == 1 and summary["groups"]["b"]["kept"] == 1
    for row in kept:
        target = keep / "images" / (f"{Path(row['shard']).stem}/{row['member']}" if row["shard"] else Path(*[p for p in Path(row["key"]).parts if p not in ("/", "..")]))
        assert target.is_file()
    assert sorted(path.name for path in (keep / "shards").iterdir()) and not [c for c in keep.parent.iterdir() if c.name.startswith(".")]
