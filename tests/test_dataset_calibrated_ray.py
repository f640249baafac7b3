"""``creward score-dataset --engine ray --reference REF``: the same calibrated columns and kept rows as the local engine.

One test on the Ray cluster fixture of ``tests/test_dataset_ray.py`` (skipped with it when the
``ray`` extra is not installed).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_dataset_ray import RAY_ARGS, cluster, model_args  # noqa: F401  (cluster is a fixture)

import pyarrow.parquet as pq  # noqa: E402

import dataset_checks as checks  # noqa: E402
from creward.cli.main import main  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.slow]
AXES = checks.AXES


def test_ray_calibrated_columns_and_kept_rows_equal_the_local_engine(cluster, dataset_inputs, dataset_weights, dataset_expected, tmp_path):  # noqa: F811
    from creward.models.reference_set import ReferenceSet
    from creward.models.scorer_identity import ScorerIdentity

    values = np.asarray(list(dataset_expected.values()), dtype=np.float64)
    rng = np.random.default_rng(4)
    spread = values.min(axis=0) + rng.random((80, len(AXES))) * (values.max(axis=0) - values.min(axis=0))
    reference_file = tmp_path / "reference.json"
    ReferenceSet.build(spread, ScorerIdentity.of_head_file(dataset_weights["head"]), "ray", ["sub"] * 40 + ["00000"] * 40, "folder").save(reference_file)
    inputs = [dataset_inputs["inputs"][0], str(dataset_inputs["shards"][0])]  # a folder (groups "folder", "sub") and shard 00000
    outputs = {}
    for engine, extra in (("local", []), ("ray", RAY_ARGS)):
        out, keep = tmp_path / f"out-{engine}", tmp_path / f"kept-{engine}"
        args = ["score-dataset", *inputs, "-o", str(out), "--part-size", "2", "--reference", str(reference_file), *extra,
                *model_args(dataset_weights), "--min-percentile", "40", "--axis", "material", "--keep-to", str(keep)]
        assert main(args) == 0, engine
        outputs[engine] = ({row["key"]: row for row in checks.read_output(out).to_pylist()}, pq.read_table(keep / "kept.parquet").column("key").to_pylist())
    (local, local_kept), (ray_rows, ray_kept) = outputs["local"], outputs["ray"]
    assert set(local) == set(ray_rows) and len(local) == 5 + 3  # 4 images + broken.png, 3 samples
    for key, row in local.items():
        other = ray_rows[key]
        assert other["error"] == row["error"] and other["reference_group"] == row["reference_group"], key
        for name in [*AXES, *(f"{a}_percentile" for a in AXES), *(f"{a}_win" for a in AXES)]:
            assert (row[name] is None) == (other[name] is None), (key, name)
            if row[name] is not None:
                assert other[name] == pytest.approx(row[name], abs=1e-5), (key, name)
    assert {row["reference_group"] for row in local.values() if row["error"] is None} == {"sub", "00000", None}
    assert sorted(ray_kept) == sorted(local_kept) and 0 < len(local_kept) < 7
