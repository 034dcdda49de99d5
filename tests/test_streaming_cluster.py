"""Streaming scoring on the pseudo-cluster: `tfos-ctr stream-score` submitted as a long-running job with
`tfos-deploy submit --long-running` on the Spark standalone master, impressions landing on HDFS, the
checkpoint and the predictions on HDFS; SIGTERM ends it gracefully, and every impression is scored once."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

import cluster
from cluster.processes import stop_tree
from cluster.pseudo.testing import bounded

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROWS, FILES = 2000, 4


def small_export(uri):
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.export import publish_export
    model = build_model(ModelConfig(embedding_dim=2, hidden=(8,), cross_layers=1, hash_buckets=500).validate())
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    publish_export(uri, model, dtypes, {}, kind="ctr-export", files={"ctr.json": {"hash_buckets": 500}})


def land(src, landing, i):
    """One impression file lands whole: written under a hidden name, then renamed (atomic on HDFS)."""
    import hdfs_io
    with hdfs_io.open(src, "rb") as fh:
        data = fh.read()
    with hdfs_io.open(f"{landing}/.part-{i}.tmp", "wb") as out:
        out.write(data)
    hdfs_io.rename(f"{landing}/.part-{i}.tmp", f"{landing}/part-{i:05d}.tsv")


def test_stream_score_long_running_on_standalone_with_hdfs(pseudo_cluster, local_spark, tmp_path):
    import hdfs_io
    from tfos_jobs.ctr.synthetic import generate_stream
    base = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_streaming_cluster/{uuid.uuid4().hex}"
    gen = bounded(lambda: generate_stream(f"{base}/gen", ROWS, files=FILES, rows_per_s=1.0, malformed_fraction=0.01,
                                          seed=3))
    bounded(lambda: small_export(f"{base}/export"))
    data, landing = hdfs_io.resolve(f"{base}/gen"), f"{base}/landing"
    hdfs_io.mkdirs(landing)
    argv = [sys.executable, "-m", "cluster.deployment.cli", "submit", "--long-running", "--master",
            pseudo_cluster["spark"]["master"], "--executor-memory", "512m", "--tf-nodes", "1", "tfos_jobs.ctr",
            "stream-score", "--export", f"{base}/export", "--input", landing, "--output", f"{base}/pred",
            "--checkpoint", f"{base}/ckpt", "--trigger", "2"]
    log_path = tmp_path / "deploy.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=cluster.client_env(pseudo_cluster), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def committed():
            try:
                return local_spark.read.parquet(f"{base}/pred").count()
            except Exception:   # noqa: BLE001 - nothing committed yet
                return 0
        for i in range(FILES):
            land(f"{data}/impressions/part-{i:05d}.tsv", landing, i)
        deadline = time.monotonic() + 360
        while committed() < gen["well_formed"] and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(3)
        assert committed() == gen["well_formed"], log_path.read_text()[-4000:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)             # the operator stops the long-running step
        assert proc.wait(120) == 0, log_path.read_text()[-4000:]
        stopped_s = time.monotonic() - t0
    finally:
        stop_tree(proc)
    output = log_path.read_text()
    status = json.loads([line for line in output.splitlines() if line.startswith('{"app_id"')][-1])
    assert status["stopped"] is True, output[-3000:]
    rows = local_spark.read.parquet(f"{base}/pred").toPandas()
    assert rows["id"].is_unique and len(rows) == gen["well_formed"], (len(rows), gen)
    quarantined = local_spark.read.parquet(f"{base}/pred.quarantine").count()
    assert quarantined == gen["malformed"], (quarantined, gen)
    print(f"stopped gracefully in {stopped_s:.1f} s")
    bounded(lambda: hdfs_io.delete(base, recursive=True, missing_ok=True))
