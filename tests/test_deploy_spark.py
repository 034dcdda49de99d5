"""The CTR and survey jobs through ``tfos-deploy submit`` on the masters other than YARN: the pseudo-cluster's
Spark standalone master (spark://) and ``local-cluster[2,1,1024]``, client deploy mode (the only one
spark-submit allows for Python there), data, checkpoints and exports on HDFS, 2 TF workers (mwms) each.
The YARN modes are in test_deploy_yarn.py."""
from __future__ import annotations

import json
import sys
import time
import uuid

import pytest

import cluster
from cluster import config
from cluster.testing import bounded, describe, run_process

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LOCAL_CLUSTER = "local-cluster[2,1,1024]"



def deploy_submit(conn, master, module, args, timeout=420):
    """``tfos-deploy submit`` (the CLI, in a child process stopped with everything it started); returns
    the JSON line the job printed. Standalone workers hold 1 core / 1 GiB each: 512m executors."""
    argv = [sys.executable, "-m", "cluster.deploy", "submit", "--master", master, "--executor-memory", "512m",
            "--tf-nodes", "2", "--timeout", str(timeout - 30), module, *args]
    t0 = time.monotonic()
    res = run_process(argv, env=cluster.client_env(conn), timeout=timeout)
    took = time.monotonic() - t0
    print(f"{module} {args[0]} on {master}: exit {res.returncode} in {took:.0f} s")
    assert res.returncode == 0, describe(res)
    status = [line for line in res.stdout.splitlines() if line.startswith('{"app_id"')]
    printed = [line for line in res.stdout.splitlines() if line.startswith('{"') and not line.startswith('{"app_id"')]
    assert status and printed, f"no status line or no JSON line from the job\n{describe(res)}"
    status = json.loads(status[-1])
    assert status["returncode"] == 0 and status["app_id"] is None, (status, describe(res))  # not a YARN application
    return json.loads(printed[0])


def read_json(uri):
    import hdfs_io

    def read():
        with hdfs_io.open(uri, "rb") as fh:
            return json.loads(fh.read().decode())
    return bounded(read)


@pytest.fixture(scope="module")
def prepped(pseudo_cluster):
    """Both data sets on HDFS, prepped by the jobs' own prep steps on the standalone master."""
    import hdfs_io
    from tfos_jobs.ctr.generator import generate
    from tfos_jobs.survey import data
    base = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy_spark/{uuid.uuid4().hex}"
    bounded(lambda: generate(f"{base}/ctr/raw", 2000, files=2, overwrite=True))
    data_uri, spec_uri = bounded(lambda: data.write_example(f"{base}/survey/example"))
    master = pseudo_cluster["spark"]["master"]
    out = deploy_submit(pseudo_cluster, master, "tfos_jobs.ctr",
                        ["prep", "--input", f"{base}/ctr/raw", "--output", f"{base}/ctr/prep",
                         "--hash-buckets", "200", "--partitions", "2"])
    assert bounded(lambda: hdfs_io.is_published(f"{base}/ctr/prep/train")), out
    out = deploy_submit(pseudo_cluster, master, "tfos_jobs.survey",
                        ["prep", "--data", data_uri, "--spec", spec_uri, "--out", f"{base}/survey/prep",
                         "--files", "2"])
    assert out["targets"] == ["vote", "PID", "selfLR"] and out["rows"]["total"] == 944, out
    yield base
    bounded(lambda: hdfs_io.delete(base, recursive=True, missing_ok=True))


def train_both(conn, master, base, name):
    """Train each job with 2 TF workers on ``master``; check the exports and metrics on HDFS."""
    import hdfs_io
    common = ["--strategy", "mwms", "--workers", "2", "--steps", "20", "--embedding-dim", "4", "--hidden", "16",
              "--checkpoint-every", "10", "--log-every", "5"]
    runs = {
        "ctr": ("tfos_jobs.ctr", ["train", "--prep", f"{base}/ctr/prep", "--model-dir", f"{base}/ctr/model-{name}",
                                  "--export", f"{base}/ctr/export-{name}", "--batch-size", "64", *common]),
        "survey": ("tfos_jobs.survey", ["train", "--prep", f"{base}/survey/prep", "--model-dir",
                                        f"{base}/survey/model-{name}", "--export", f"{base}/survey/export-{name}",
                                        "--batch-size", "32", *common]),
    }
    for job, (module, args) in runs.items():
        export = f"{base}/{job}/export-{name}"
        out = deploy_submit(conn, master, module, args)
        assert out["steps"] == 20 and out["nodes"] == ["chief:0", "worker:0"] and out["attempts"] == 1, out
        assert out["export"].rstrip("/") == export, out
        assert bounded(lambda: hdfs_io.is_published(export)), f"{export} not published"
        assert bounded(lambda: hdfs_io.exists(f"{base}/{job}/model-{name}/checkpoints/checkpoint"))
        metrics = read_json(f"{export}/metrics.json")
        assert metrics and out["metrics"], (metrics, out)


def standalone_apps(conn):
    info = config.http_json(f"{conn['spark']['web']}/json/", timeout=10)
    return info.get("completedapps", []) + info.get("activeapps", [])


def test_jobs_train_on_spark_standalone(pseudo_cluster, prepped):
    master = pseudo_cluster["spark"]["master"]
    assert master.startswith("spark://")
    before = {a["id"] for a in standalone_apps(pseudo_cluster)}
    t0 = time.monotonic()
    train_both(pseudo_cluster, master, prepped, "standalone")
    print(f"standalone: both trains in {time.monotonic() - t0:.0f} s")
    # the standalone master ran both, each with the 2 one-core executors the TF nodes needed
    new = [a for a in standalone_apps(pseudo_cluster) if a["id"] not in before]
    assert sorted(a["name"] for a in new) == ["tfos_jobs.ctr train", "tfos_jobs.survey train"], new
    assert all(a["cores"] == 2 and a["state"] == "FINISHED" for a in new), new


def test_jobs_train_on_local_cluster(pseudo_cluster, prepped):
    before = {a["id"] for a in standalone_apps(pseudo_cluster)}
    t0 = time.monotonic()
    train_both(pseudo_cluster, LOCAL_CLUSTER, prepped, "local-cluster")
    print(f"local-cluster: both trains in {time.monotonic() - t0:.0f} s")
    # TFOS_SPARK_MASTER (the standalone master) is in the environment: spark-submit's master won
    assert {a["id"] for a in standalone_apps(pseudo_cluster)} == before
