"""Every CLI subcommand's success path, typed as a user would: the installed console scripts in child
processes (stopped by PID with everything they started), chained on one tiny data set, Spark steps on
the test session's standalone master. A subcommand added later joins this file.

A failing step shows the command and the tail of its output (``describe``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

import cluster
from cluster.testing import describe, run_process
import hdfs_io
from tfos_jobs.export import export_dir

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BIN = Path(sys.executable).parent   # the console scripts installed beside this interpreter


def cli(conn, *argv: str, timeout: float = 600):
    """Run ``tfos-... args`` as typed in a shell with the cluster's client environment; exit 0 or fail
    with its output."""
    proc = run_process([str(BIN / argv[0]), *argv[1:]], env=cluster.client_env(conn), timeout=timeout)
    assert proc.returncode == 0, describe(proc)
    return proc


def printed_json(proc):
    """The (possibly indented) JSON document a command printed after its log lines."""
    start = min(i for i in (proc.stdout.find("{"), proc.stdout.find("[")) if i >= 0)
    return json.JSONDecoder().raw_decode(proc.stdout[start:])[0]


def last_json(proc) -> dict:
    """The JSON object a command printed last (Spark's log lines never start with '{')."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in the output\n{describe(proc)}"
    return json.loads(lines[-1])


def parquet_rows(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in path.rglob("*.parquet"))


def test_ctr_generate_prep_train_evaluate_score(pseudo_cluster, tmp_path):
    master = ["--master", pseudo_cluster["spark"]["master"]]
    raw, prep, model, export, scores = (tmp_path / n for n in ("raw", "prep", "model", "export", "scores"))

    gen = last_json(cli(pseudo_cluster, "tfos-ctr", "generate", "--output", str(raw), "--rows", "6000",
                        "--files", "2", "--malformed-fraction", "0.002"))
    assert gen["rows"] == 6000 and gen["malformed"] > 0, gen

    prepped = last_json(cli(pseudo_cluster, "tfos-ctr", "prep", "--input", str(raw), "--output", str(prep),
                            "--hash-buckets", "500", "--partitions", "2", *master))
    assert prepped["bad"] == gen["malformed"] and prepped["rows"] == 6000, prepped
    assert prepped["train_rows"] + prepped["valid_rows"] == prepped["good"] and prepped["valid_rows"] > 0, prepped

    trained = last_json(cli(pseudo_cluster, "tfos-ctr", "train", "--prep", str(prep), "--model-dir", str(model),
                            "--export", str(export), "--strategy", "mwms", "--workers", "2",
                            "--batch-size", "128", "--epochs", "2", "--embedding-dim", "8", "--hidden", "32,16",
                            "--cross-layers", "1", *master))
    assert trained["attempts"] == 1 and trained["nodes"] == ["chief:0", "worker:0"], trained
    unit = Path(export_dir(str(export)))
    assert (unit / "saved_model" / "saved_model.pb").exists() and (unit / "ctr.json").exists(), sorted(os.listdir(unit))

    evaluated = last_json(cli(pseudo_cluster, "tfos-ctr", "evaluate", "--export", str(export),
                              "--data", str(prep / "valid")))
    # the same rows as the chief's own validation at the end of training: the same AUC
    assert evaluated["eval_rows"] == prepped["valid_rows"], (evaluated, prepped)
    assert evaluated["auc"] == pytest.approx(trained["metrics"]["auc"], abs=2e-3), (evaluated, trained)
    assert json.loads((unit / "evaluation.json").read_text())["auc"] == evaluated["auc"]

    scored = last_json(cli(pseudo_cluster, "tfos-ctr", "score", "--export", str(export), "--input",
                           str(prep / "valid"), "--output", str(scores), "--keep", "label", *master))
    assert scored["rows"] == prepped["valid_rows"], scored
    assert parquet_rows(scores) == prepped["valid_rows"]


def test_survey_example_prep_train_evaluate_predict(pseudo_cluster, tmp_path):
    master = ["--master", pseudo_cluster["spark"]["master"]]
    example = last_json(cli(pseudo_cluster, "tfos-survey", "example", "--out", str(tmp_path / "example")))
    prep, model, export = tmp_path / "prep", tmp_path / "model", tmp_path / "export"

    prepped = last_json(cli(pseudo_cluster, "tfos-survey", "prep", "--data", example["data"], "--spec",
                            example["spec"], "--out", str(prep), "--files", "2", "--fold", "1", *master))
    assert prepped["rows"]["total"] == 944 and prepped["targets"] == ["vote", "PID", "selfLR"], prepped

    trained = last_json(cli(pseudo_cluster, "tfos-survey", "train", "--prep", str(prep), "--model-dir", str(model),
                            "--export", str(export), "--workers", "2", "--epochs", "3", *master))
    assert trained["attempts"] == 1 and trained["steps"] > 0, trained

    cli(pseudo_cluster, "tfos-survey", "evaluate", "--prep", str(prep), "--export", str(export),
        "--out", str(tmp_path / "evaluation"), *master)
    evaluation = Path(hdfs_io.resolve(str(tmp_path / "evaluation")))   # a published unit: its current version
    report = json.loads((evaluation / "evaluation.json").read_text())
    assert set(report["targets"]) == {"vote", "PID", "selfLR"}, report
    assert (evaluation / "evaluation.txt").read_text().strip()

    # no --prep: the plan published with the export encodes the new respondents
    predicted = last_json(cli(pseudo_cluster, "tfos-survey", "predict", "--export", str(export), "--data",
                              example["data"], "--out", str(tmp_path / "predictions"), "--model", "best", *master))
    assert predicted["rows"] == 944, predicted
    assert parquet_rows(tmp_path / "predictions") == 944
    # --model best answers each question with the better of the model and its LR on validation
    chosen = hdfs_io.read_parquet(str(tmp_path / "predictions"), columns=["PID__model"]).column(0).unique().to_pylist()
    assert chosen == [report["targets"]["PID"]["better"]], (chosen, report["targets"]["PID"])


def test_ctr_demo(tmp_path):
    """What `make demo` runs, at a smaller size: it must print the export and the validation AUC."""
    # as typed in a plain shell: no TFOS_SPARK_MASTER (the session's standalone master has 2 executors, the
    # demo's ps topology needs 4), so the demo starts its own local-cluster
    env = {k: v for k, v in os.environ.items() if k != "TFOS_SPARK_MASTER"}
    proc = subprocess.run([str(BIN / "tfos-ctr"), "demo", "--work-dir", str(tmp_path / "demo"), "--rows", "6000",
                           "--epochs", "1", "--executor-memory-mb", "1024"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, describe(proc)
    exported = re.search(r"^exported model: (\S+)$", proc.stdout, re.M)
    auc = re.search(r"^validation AUC: (0\.\d{4})", proc.stdout, re.M)
    assert exported and auc, describe(proc)
    assert Path(export_dir(exported.group(1)).removeprefix("file://"), "saved_model", "saved_model.pb").exists(), \
        describe(proc)


def test_cluster_status_env_fetch(pseudo_cluster):
    status = cli(pseudo_cluster, "tfos-cluster", "status", "--json")
    rows = printed_json(status)
    assert {r["service"] for r in rows} >= {"namenode", "datanode", "resourcemanager", "nodemanager",
                                            "spark-master", "s3"}, rows
    assert all(r["healthy"] for r in rows), rows
    table = cli(pseudo_cluster, "tfos-cluster", "status").stdout
    assert re.search(r"^namenode\s+\d+\s+\d+.*\bok\b", table, re.M), table

    env = cli(pseudo_cluster, "tfos-cluster", "env").stdout
    assert f"HADOOP_CONF_DIR={pseudo_cluster['hadoop_conf_dir']}" in env.replace("'", ""), env
    cli(pseudo_cluster, "tfos-cluster", "fetch")     # the jars are cached: a no-op that must succeed


def test_cluster_up_status_down_private(pseudo_cluster, tmp_path, monkeypatch):
    """`up` and `down` typed as a user would, on a private cluster (own state directory and port block)
    beside the session's; whatever happens, the test stops what it started (by PID, manager.down)."""
    from cluster import manager
    monkeypatch.setenv("TFOS_CLUSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TFOS_CLUSTER_PORT_BASE", "20900")
    env = dict(os.environ, TFOS_CLUSTER_HOME=str(tmp_path / "home"), TFOS_CLUSTER_PORT_BASE="20900")

    def tfos_cluster(*args, timeout=120):
        # not run_process: that stops every process the command started, and `up` starts daemons to keep
        proc = subprocess.run([str(BIN / "tfos-cluster"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, describe(proc)
        return proc
    try:
        conn = printed_json(tfos_cluster("up", "--workers", "1", "--json", timeout=300))
        assert conn["hdfs"]["uri"] == "hdfs://127.0.0.1:20900", conn
        status = tfos_cluster("status", "--json")
        rows = printed_json(status)
        assert rows and all(r["healthy"] for r in rows), describe(status)
        pids = [r["pid"] for r in rows]
        down = tfos_cluster("down")
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not left, f"still running after down: {left}\n{describe(down)}"
    finally:
        manager.down()     # whatever happened above: every process of the private cluster, by PID


def test_deploy_package_emr_submit_dry_run(pseudo_cluster, tmp_path):
    pkg = printed_json(cli(pseudo_cluster, "tfos-deploy", "package", "--out", str(tmp_path / "pkg")))
    for key in ("env_archive", "code_zip", "entry"):
        assert Path(pkg[key]).is_file(), pkg

    config = tmp_path / "ctr.json"
    config.write_text(json.dumps({
        "name": "ctr-daily", "job": "tfos_jobs.ctr", "code_uri": "s3://my-bucket/tfos/pkg",
        "steps": [{"name": "prep", "args": ["prep", "--input", "s3://my-bucket/raw", "--output", "s3://my-bucket/prep"]}],
    }))
    paths = printed_json(cli(pseudo_cluster, "tfos-deploy", "emr", str(config), "--out", str(tmp_path / "emr")))
    steps = json.loads(Path(paths["steps.json"]).read_text())
    assert [s["Name"] for s in steps] == ["ctr-daily: prep"] and steps[0]["Args"][0] == "spark-submit", steps

    proc = cli(pseudo_cluster, "tfos-deploy", "submit", "--dry-run", "--package-dir", str(tmp_path / "pkg"),
               "--conf", "spark.yarn.maxAppAttempts=1", "tfos_jobs.ctr", "prep", "--input", "hdfs:///raw",
               "--output", "hdfs:///prep")
    command = proc.stdout.strip().splitlines()[-1]
    assert "spark-submit" in command and "--archives" in command and "spark.yarn.maxAppAttempts=1" in command, \
        describe(proc)
    assert command.endswith("tfos_jobs.ctr prep --input hdfs:///raw --output hdfs:///prep"), describe(proc)
