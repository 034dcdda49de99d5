"""The survey job on the pseudo-cluster: the ANES 1996 example, spec, prep output, checkpoints, export,
evaluation and predictions all on HDFS; the CLI under spark-submit."""
import json
import os
import sys
import uuid

import numpy as np
import pytest

import hdfs_io
from cluster.testing import describe, run_process
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig
from tfos_jobs.survey import prep, steps
from tfos_jobs.survey import schema as spec
from tfos_jobs.survey import synthetic as data

from test_survey import assert_survey_model_learned


pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hdfs_root(pseudo_cluster):
    root = f"{pseudo_cluster['hdfs']['uri'].rstrip('/')}/tmp/survey-{uuid.uuid4().hex[:8]}"
    yield root
    hdfs_io.delete(root, recursive=True, missing_ok=True)


def test_anes96_end_to_end_on_hdfs(local_spark, hdfs_root, tmp_path):
    data_uri, spec_uri = data.write_example(f"{hdfs_root}/example")
    assert data_uri.startswith("hdfs://") and hdfs_io.exists(spec_uri)
    parsed = spec.load_spec(spec_uri)
    fmt, header = spec.preflight(parsed, data_uri)
    plan = prep.run_prep(local_spark, parsed, data_uri, f"{hdfs_root}/prep", fmt=fmt, header=header)
    assert hdfs_io.is_published(f"{hdfs_root}/prep") and plan["rows"]["total"] == 944
    assert prep.read_plan(f"{hdfs_root}/prep")["inputs"] == plan["inputs"]
    result = steps.train(local_spark.sparkContext, plan, f"{hdfs_root}/prep",
                         scaling=ScalingConfig(strategy="mwms", num_workers=2),
                         loop=LoopConfig(epochs=30, batch_size=64, log_every=100),
                         run=RunConfig(model_dir=f"{hdfs_root}/model", export_uri=f"{hdfs_root}/export"))
    assert result.nodes == ["chief:0", "worker:0"]
    assert hdfs_io.is_published(f"{hdfs_root}/export")
    assert hdfs_io.exists(f"{hdfs_root}/model/checkpoints/checkpoint")
    report = steps.evaluate(local_spark, plan, f"{hdfs_root}/prep", f"{hdfs_root}/export",
                                   f"{hdfs_root}/eval")
    with hdfs_io.open(f"{hdfs_root}/eval/evaluation.json", "r") as handle:
        assert json.load(handle) == json.loads(spec.dumps(report))
    with hdfs_io.open(f"{hdfs_root}/eval/evaluation.txt", "r") as handle:
        assert "acc majority" in handle.read()
    print(steps.format_table(report))
    for name, entry in report["targets"].items():
        assert entry["model"]["accuracy"] > entry["majority"]["accuracy"], (name, entry)
        assert entry["model"]["log_loss"] < entry["majority"]["log_loss"], (name, entry)
    # the same, measured here from the export's own predictions on the prepped rows read back from HDFS
    assert_survey_model_learned(plan, f"{hdfs_root}/prep", f"{hdfs_root}/export", result.metrics, margin=0.02,
                                cache=str(tmp_path / "export"))
    new = data.anes96_table().drop(["vote", "PID", "selfLR"]).slice(100, 30)
    hdfs_io.write_parquet(new, f"{hdfs_root}/new", rows_per_file=10)
    out = steps.predict(local_spark, plan, f"{hdfs_root}/export", f"{hdfs_root}/new", f"{hdfs_root}/pred")
    assert out["rows"] == 30 and hdfs_io.is_published(f"{hdfs_root}/pred")
    table = hdfs_io.read_parquet(f"{hdfs_root}/pred")
    assert sorted(int(r) for r in table.column("respondent").to_pylist()) == list(range(101, 131))
    vote = np.stack([table.column(f"vote__p_{c}").to_numpy() for c in ("0", "1")], axis=1)
    np.testing.assert_allclose(vote.sum(axis=1), 1.0, rtol=1e-4)


def _spark_submit(args, timeout=240):
    import pyspark
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PYTHONPATH": REPO}
    return run_process([submit, "--master", "local[1]", os.path.join(REPO, "tfos_jobs", "survey", "cli.py"), *args],
                       env=env, timeout=timeout, cwd=REPO)


def test_cli_runs_under_spark_submit(hdfs_root, tmp_path):
    res = _spark_submit(["predict", "--help"])
    assert res.returncode == 0 and "usage: tfos-survey predict" in res.stdout, describe(res)
    data_uri, _ = data.write_example(f"{hdfs_root}/submit")
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text("targets: [vote, turnout]\n")
    res = _spark_submit(["prep", "--data", data_uri, "--spec", str(bad_spec), "--out", f"{hdfs_root}/submit/prep"])
    assert res.returncode == 2, describe(res)
    assert "target question(s) ['turnout'] not in the data" in res.stdout, describe(res)
    assert not hdfs_io.exists(f"{hdfs_root}/submit/prep")
