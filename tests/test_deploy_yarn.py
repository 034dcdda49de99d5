"""tfos-deploy for real on the pseudo-cluster's YARN: the packed environment is what the driver, the
executors and the TF node processes use; the generated EMR steps run the CTR job in cluster deploy mode
with its data on HDFS; bad input fails fast and clearly, and nothing stays ACCEPTED."""
from __future__ import annotations

import concurrent.futures
import json
import time
import uuid

import pytest

import cluster
from cluster import config, deploy, emr
from cluster.deploy import DeployError, Resources
from cluster.testing import run_process
from cluster.testing import bounded

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# 4 GiB / 4 vcores NodeManager: AM 1 GiB + 2 executors of 1.25 GiB
SMALL = Resources(tf_nodes=2, executor_memory="512m", executor_memory_overhead="768m",
                  driver_memory="512m", driver_memory_overhead="512m")



@pytest.fixture(scope="module")
def shipped(pseudo_cluster):
    """The package, built once (cached by constraints.txt + setup.cfg) and uploaded to HDFS once."""
    dest = f"{pseudo_cluster['hdfs']['uri']}/apps/tfos-deploy-test"
    t0 = time.monotonic()
    pkg = deploy.package()
    uris = deploy.upload(pkg, dest)
    print(f"package: {pkg.env_bytes / 2**20:.0f} MiB environment ({'cached' if pkg.cached else 'built'}), "
          f"built+uploaded in {time.monotonic() - t0:.0f} s")
    return {"pkg": pkg, "uris": uris, "dest": dest, "env": cluster.client_env(pseudo_cluster),
            "conf": deploy.loopback_conf(pseudo_cluster["hadoop_conf_dir"])}


def argv_for(shipped, module, args, mode="cluster", res=SMALL, env_uri=None):
    u = shipped["uris"]
    return deploy.submit_argv(module, args, env_uri=env_uri or u["env_archive"], code_uri=u["code_zip"],
                              entry_uri=u["entry"], deploy_mode=mode, res=res, tag=f"tfos-{uuid.uuid4().hex[:10]}",
                              extra_conf=shipped["conf"], spark_submit=deploy.spark_submit_path())


def read_json(uri):
    import hdfs_io

    def read():
        with hdfs_io.open(uri, "rb") as fh:
            return json.loads(fh.read().decode())
    return bounded(read)


def run_emr_steps(cfg, tmp_path, shipped, pseudo_cluster):
    """Generate and validate the EMR artefacts of ``cfg``, run its steps on the pseudo-cluster's YARN and
    check that every step's application finished and succeeded there; returns (steps, results)."""
    paths = emr.generate(cfg, tmp_path / "emr", pkg=shipped["pkg"])
    steps = json.loads(open(paths["steps.json"]).read())
    emr.validate_steps(steps)
    t0 = time.monotonic()
    results = emr.run_steps(paths["steps.json"], env=shipped["env"], timeout=600, accept_timeout=240)
    took = time.monotonic() - t0
    print("steps:", [(r["name"], r["ok"], r["wall_s"]) for r in results], f"total {took:.0f} s")
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed[0]["error"][-6000:]
    assert len(results) == len(cfg["steps"]) and all(r["final_status"] == "SUCCEEDED" for r in results)
    web = pseudo_cluster["yarn"]["web"]
    for r in results:
        app = config.http_json(f"{web}/ws/v1/cluster/apps/{r['app_id']}")["app"]
        assert app["state"] == "FINISHED" and app["finalStatus"] == "SUCCEEDED", app
        assert cfg["name"] in app["name"]
    return steps, results


@pytest.mark.parametrize("mode", ["client", "cluster"])
def test_probe_uses_the_shipped_environment(shipped, pseudo_cluster, mode):
    out = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy/{uuid.uuid4().hex}/probe.json"
    sub = deploy.submit(argv_for(shipped, "cluster.probe", [out], mode), env=shipped["env"], timeout=400,
                        accept_timeout=240, res=SMALL)
    assert sub.final_status == "SUCCEEDED", sub.output[-3000:]
    r = read_json(out)
    assert r["master"] == "yarn" and r["deploy_mode"] == mode
    assert len(r["executors"]) == 2
    for e in r["executors"] + ([r["driver"]] if mode == "cluster" else []):
        # unpacked by YARN into the container, not the developer's virtual environment
        assert "/usercache/" in e["executable"] and e["executable"].endswith("/tfenv/bin/python"), e
        assert "/tfos-code-" in e["tfos_jobs"] and ".venv" not in e["tfos_jobs"], e
    for e in r["executors"]:
        node = e["tf_node"]     # a child process of the Python worker, as tfos_jobs.node starts TF
        assert "/tfenv/lib/python3" in node["tf_file"] and "/tfenv/lib/python3" in node["tensorflowonspark"]
        assert "/tfos-code-" in node["tfos_jobs"] and "/tfos-code-" in node["hdfs_io"]
    if mode == "client":
        assert ".venv" in r["driver"]["executable"] or "/tfenv/" not in r["driver"]["executable"]


def test_emr_steps_run_the_ctr_job_in_cluster_mode(shipped, pseudo_cluster, tmp_path):
    from tfos_jobs.ctr.generator import generate
    base = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy/{uuid.uuid4().hex}"
    bounded(lambda: generate(f"{base}/raw", 4000, files=2, overwrite=True))
    cfg = {
        "name": "ctr-yarn-test", "job": "tfos_jobs.ctr", "code_uri": shipped["dest"],
        "node_python": shipped["pkg"].node_python, "deploy_mode": "cluster",
        "action_on_failure": "CANCEL_AND_WAIT",
        "resources": {"tf_nodes": 2, "executor_memory": "512m", "executor_memory_overhead": "768m",
                      "driver_memory": "512m", "driver_memory_overhead": "512m"},
        "spark_conf": shipped["conf"],
        "steps": [
            {"name": "prep", "args": ["prep", "--input", f"{base}/raw", "--output", f"{base}/prep",
                                      "--hash-buckets", "200", "--partitions", "2"]},
            {"name": "train", "args": ["train", "--prep", f"{base}/prep", "--model-dir", f"{base}/model",
                                       "--export", f"{base}/export", "--strategy", "mwms", "--workers", "2",
                                       "--steps", "20", "--batch-size", "64", "--embedding-dim", "4",
                                       "--hidden", "16", "--checkpoint-every", "10", "--log-every", "5"]},
            {"name": "evaluate", "tf_nodes": 1, "args": ["evaluate", "--export", f"{base}/export", "--data",
                                                         f"{base}/prep/valid"]},
            {"name": "score", "args": ["score", "--export", f"{base}/export", "--input", f"{base}/prep/valid",
                                       "--output", f"{base}/scores"]},
        ],
    }
    run_emr_steps(cfg, tmp_path, shipped, pseudo_cluster)
    evaluation = read_json(f"{base}/export/evaluation.json")
    assert 0.0 <= evaluation.get("auc", evaluation.get("metrics", {}).get("auc", -1)) <= 1.0, evaluation
    import hdfs_io
    assert bounded(lambda: hdfs_io.list_data_files(f"{base}/scores")), "no scores written"


def test_emr_steps_run_the_survey_job_in_client_mode(shipped, pseudo_cluster, tmp_path):
    """The survey job's four steps as EMR steps, in YARN client deploy mode: the driver runs here (its
    stdout comes back in spark-submit's output), executors and TF nodes in YARN containers."""
    import hdfs_io
    import numpy as np
    from tfos_jobs.survey import data
    base = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy/{uuid.uuid4().hex}"
    data_uri, spec_uri = bounded(lambda: data.write_example(f"{base}/example"))
    new = data.anes96_table().drop(["vote", "PID", "selfLR"]).slice(100, 30)
    bounded(lambda: hdfs_io.write_parquet(new, f"{base}/new", rows_per_file=15))
    cfg = {
        "name": "survey-yarn-test", "job": "tfos_jobs.survey", "code_uri": shipped["dest"],
        "node_python": shipped["pkg"].node_python, "deploy_mode": "client",
        "action_on_failure": "CANCEL_AND_WAIT",
        "resources": {"tf_nodes": 2, "executor_memory": "512m", "executor_memory_overhead": "768m",
                      "driver_memory": "512m", "driver_memory_overhead": "512m"},
        "spark_conf": shipped["conf"],
        "steps": [
            {"name": "prep", "args": ["prep", "--data", data_uri, "--spec", spec_uri, "--out", f"{base}/prep",
                                      "--files", "2"]},
            {"name": "train", "args": ["train", "--prep", f"{base}/prep", "--model-dir", f"{base}/model",
                                       "--export", f"{base}/export", "--strategy", "mwms", "--workers", "2",
                                       "--steps", "20", "--batch-size", "32", "--embedding-dim", "4",
                                       "--hidden", "16", "--checkpoint-every", "10", "--log-every", "5"]},
            {"name": "evaluate", "tf_nodes": 1, "args": ["evaluate", "--prep", f"{base}/prep", "--export",
                                                         f"{base}/export", "--out", f"{base}/eval"]},
            {"name": "predict", "tf_nodes": 1, "args": ["predict", "--prep", f"{base}/prep", "--export",
                                                        f"{base}/export", "--data", f"{base}/new",
                                                        "--out", f"{base}/pred"]},
        ],
    }
    steps, results = run_emr_steps(cfg, tmp_path, shipped, pseudo_cluster)
    assert all(s["Args"][s["Args"].index("--deploy-mode") + 1] == "client" for s in steps)
    # client mode: the driver ran here, so what the job's CLI printed is in spark-submit's output
    prep_out, train_out, _, predict_out = (r["output"] for r in results)
    assert '"targets": ["vote", "PID", "selfLR"]' in prep_out, prep_out[-3000:]
    trained = json.loads(next(line for line in train_out.splitlines() if line.startswith('{"attempts"')))
    assert trained["steps"] == 20 and trained["nodes"] == ["chief:0", "worker:0"], trained
    assert json.loads(next(line for line in predict_out.splitlines() if line.startswith("{")))["rows"] == 30
    metrics = read_json(f"{base}/export/metrics.json")
    assert metrics, "empty metrics.json"
    evaluation = read_json(f"{base}/eval/evaluation.json")
    assert set(evaluation["targets"]) == {"vote", "PID", "selfLR"}, evaluation
    for name, entry in evaluation["targets"].items():
        assert 0.0 <= entry["model"]["accuracy"] <= 1.0 and entry["model"]["rows"] > 0, (name, entry)
    table = bounded(lambda: hdfs_io.read_parquet(f"{base}/pred"))
    assert table.num_rows == 30
    vote = np.stack([table.column(f"vote__p_{c}").to_numpy() for c in ("0", "1")], axis=1)
    np.testing.assert_allclose(vote.sum(axis=1), 1.0, rtol=1e-4)


def test_bad_input_fails_fast_and_clearly(shipped, pseudo_cluster, tmp_path):
    env = shipped["env"]
    # a missing archive: reported before spark-submit starts
    t0 = time.monotonic()
    with pytest.raises(DeployError, match=r"tfenv-missing.tar does not exist"):
        deploy.submit(argv_for(shipped, "cluster.probe", [], env_uri=f"{shipped['dest']}/tfenv-missing.tar"),
                      env=env, res=SMALL)
    # more TF nodes than the cluster can ever hold: the numbers, at once
    big = Resources(tf_nodes=6, executor_memory="512m", executor_memory_overhead="768m",
                    driver_memory="512m", driver_memory_overhead="512m")
    with pytest.raises(DeployError, match=r"too few YARN resources for 6 TF nodes.*MiB"):
        deploy.submit(argv_for(shipped, "cluster.probe", [], res=big), env=env, res=big)
    assert time.monotonic() - t0 < 60
    # a cluster that stays full (another application holds every container): YARN would keep ours
    # ACCEPTED for as long as that lasts; the watchdog kills it after accept_timeout and says why
    web = pseudo_cluster["yarn"]["web"]
    release = tmp_path / "release"
    hog_app = tmp_path / "hog.py"
    hog_app.write_text(
        "import os, sys, time\n"
        "from pyspark import SparkContext\n"
        "sc = SparkContext()\n"
        "deadline = time.time() + 240\n"
        "while not os.path.exists(sys.argv[1]) and time.time() < deadline:\n"
        "    time.sleep(0.5)\n"
        "sc.stop()\n")
    tag = f"hog-{uuid.uuid4().hex[:8]}"
    hog_argv = [deploy.spark_submit_path(), "--master", "yarn", "--deploy-mode", "client",
                "--conf", "spark.executor.instances=2", "--conf", "spark.executor.memory=512m",
                "--conf", "spark.executor.memoryOverhead=1024m", "--conf", "spark.yarn.am.memory=512m",
                "--conf", "spark.yarn.am.memoryOverhead=512m", "--conf", f"spark.yarn.tags={tag}",
                str(hog_app), str(release)]
    pool = concurrent.futures.ThreadPoolExecutor(1)
    hog = pool.submit(run_process, hog_argv, env=env, timeout=300)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:      # the hog holds AM + 2 executors = all 4 GiB
            app = deploy.find_app(web, tag)
            if app and app["state"] == "RUNNING" and int(app.get("allocatedMB") or 0) >= 4096:
                break
            assert not hog.done(), hog.result().stdout[-3000:]
            time.sleep(1)
        else:
            pytest.fail(f"the hog application did not fill the cluster: {app}")
        t0 = time.monotonic()
        with pytest.raises(DeployError, match=r"stayed ACCEPTED for 20 s") as err:
            deploy.submit(argv_for(shipped, "cluster.probe", []), env=env, res=SMALL, accept_timeout=20)
        assert time.monotonic() - t0 < 90
    finally:
        release.write_text("go")
        hog.result(timeout=320)
        pool.shutdown()
    app_id = str(err.value).split()[2]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = config.http_json(f"{web}/ws/v1/cluster/apps/{app_id}")["app"]["state"]
        if state == "KILLED":
            break
        time.sleep(1)
    assert state == "KILLED", state
