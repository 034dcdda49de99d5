"""tfos-deploy for real on the pseudo-cluster's YARN: the packed environment is what the driver, the
executors and the TF node processes use; the generated EMR steps run the CTR job in cluster deploy mode
with its data on HDFS; bad input fails fast and clearly, and nothing stays ACCEPTED."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import time
import uuid

import pytest

import cluster
from cluster import deploy  # the facade that re-exports cluster.deployment's API
from cluster.deployment import emr
from cluster.deployment.resources import DeployError, Resources
from cluster.pseudo import config
from cluster.pseudo.testing import auc, bounded, describe_steps, describe_submission, describe_yarn, \
    majority_baseline, run_process, yarn_report
# Training long enough to learn, as measured for test_deploy_spark (20 steps at the default rate left the
# CTR model near chance)
from test_deploy_spark import (CTR_LEARNING_RATE, CTR_ROWS, CTR_STEPS, SURVEY_LEARNING_RATE, SURVEY_MIN_GAIN,
                               SURVEY_STEPS, assert_ctr_learned)

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
    web = pseudo_cluster["yarn"]["web"]
    failed = [r for r in results if not r["ok"]]
    assert not failed, describe_steps(results, web)
    assert len(results) == len(cfg["steps"]) and all(r["final_status"] == "SUCCEEDED" for r in results), \
        describe_steps(results, web)
    for r in results:
        app = config.http_json(f"{web}/ws/v1/cluster/apps/{r['app_id']}")["app"]
        assert app["state"] == "FINISHED" and app["finalStatus"] == "SUCCEEDED", yarn_report(web, r["app_id"])
        assert cfg["name"] in app["name"], app
    return steps, results


@pytest.mark.parametrize("mode", ["client", "cluster"])
def test_probe_uses_the_shipped_environment(shipped, pseudo_cluster, mode):
    out = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy/{uuid.uuid4().hex}/probe.json"
    sub = deploy.submit(argv_for(shipped, "cluster.probe", [out], mode), env=shipped["env"], timeout=400,
                        accept_timeout=240, res=SMALL)
    assert sub.final_status == "SUCCEEDED", describe_submission(sub, pseudo_cluster["yarn"]["web"])
    r = read_json(out)
    assert r["master"] == "yarn" and r["deploy_mode"] == mode
    assert len(r["executors"]) == 2
    for e in r["executors"] + ([r["driver"]] if mode == "cluster" else []):
        # unpacked by YARN into the container, not the developer's virtual environment
        assert "/usercache/" in e["executable"] and e["executable"].endswith("/tfenv/bin/python"), e
        assert "/tfos-code-" in e["tfos_jobs"] and ".venv" not in e["tfos_jobs"], e
    for e in r["executors"]:
        node = e["tf_node"]     # a child process of the Python worker, as tfos_jobs.executor.node starts TF
        assert "/tfenv/lib/python3" in node["tf_file"] and "/tfenv/lib/python3" in node["tensorflowonspark"]
        assert "/tfos-code-" in node["tfos_jobs"] and "/tfos-code-" in node["hdfs_io"]
    if mode == "client":
        assert ".venv" in r["driver"]["executable"] or "/tfenv/" not in r["driver"]["executable"]


def test_emr_steps_run_the_ctr_job_in_cluster_mode(shipped, pseudo_cluster, tmp_path):
    from tfos_jobs.ctr.synthetic import generate
    base = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy/{uuid.uuid4().hex}"
    bounded(lambda: generate(f"{base}/raw", CTR_ROWS, files=2, overwrite=True))
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
                                       "--steps", CTR_STEPS, "--learning-rate", CTR_LEARNING_RATE,
                                       "--batch-size", "64", "--embedding-dim", "4", "--hidden", "16",
                                       "--checkpoint-every", "50", "--log-every", "20"]},
            {"name": "score", "args": ["score", "--export", f"{base}/export", "--input", f"{base}/prep/valid",
                                       "--output", f"{base}/scores"]},
        ],
    }
    run_emr_steps(cfg, tmp_path, shipped, pseudo_cluster)
    import hdfs_io
    # the chief's evaluation after training (the Keras model in one process), published with the export
    evaluation = read_json(f"{base}/export/metrics.json")
    # the score step's output: every validation row with its label and the exported model's prediction
    scores = bounded(lambda: hdfs_io.read_parquet(f"{base}/scores"))
    valid_rows = bounded(lambda: hdfs_io.read_parquet(f"{base}/prep/valid", columns=["label"])).num_rows
    assert scores.num_rows == valid_rows == evaluation["eval_rows"], (scores.num_rows, valid_rows, evaluation)
    labels, predictions = scores.column("label").to_numpy(), scores.column("prediction").to_numpy()
    measured = auc(labels, predictions)
    # the chief's evaluation and the score step (the SavedModel in Spark tasks) agree on these rows (the
    # evaluate step itself is typed as a user would in test_cli_e2e: one fewer YARN application here)
    assert measured == pytest.approx(evaluation["auc"], abs=2e-3), (measured, evaluation)
    # learned: well above chance on these rows and a good part of the way to the Bayes-optimal AUC
    assert_ctr_learned(measured, labels, read_json(f"{base}/raw/_generator.json")["bayes_auc"])


def test_emr_steps_run_the_survey_job_in_client_mode(shipped, pseudo_cluster, tmp_path):
    """The survey job's steps (prep, train, predict) as EMR steps, in YARN client deploy mode: the driver
    runs here (its stdout comes back in spark-submit's output), executors and TF nodes in YARN containers.
    (`evaluate` is typed as a user would in test_cli_e2e: one fewer YARN application here.)"""
    import hdfs_io
    import numpy as np
    from tfos_jobs.survey import synthetic as data
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
                                       "--steps", SURVEY_STEPS, "--learning-rate", SURVEY_LEARNING_RATE,
                                       "--batch-size", "32", "--embedding-dim", "4", "--hidden", "16",
                                       "--checkpoint-every", "50", "--log-every", "20"]},
            {"name": "predict", "tf_nodes": 1, "args": ["predict", "--prep", f"{base}/prep", "--export",
                                                        f"{base}/export", "--data", f"{base}/new",
                                                        "--out", f"{base}/pred"]},
        ],
    }
    steps, results = run_emr_steps(cfg, tmp_path, shipped, pseudo_cluster)
    assert all(s["Args"][s["Args"].index("--deploy-mode") + 1] == "client" for s in steps)
    # client mode: the driver ran here, so what the job's CLI printed is in spark-submit's output
    prep_out, train_out, predict_out = (r["output"] for r in results)
    assert '"targets": ["vote", "PID", "selfLR"]' in prep_out, prep_out[-3000:]
    trained = [line for line in train_out.splitlines() if line.startswith('{"attempts"')]
    assert trained, f"no result line from train\n{train_out[-3000:]}"
    trained = json.loads(trained[0])
    assert trained["steps"] == int(SURVEY_STEPS) and trained["nodes"] == ["chief:0", "worker:0"], trained
    predicted = [line for line in predict_out.splitlines() if line.startswith("{")]
    assert predicted and json.loads(predicted[0])["rows"] == 30, predict_out[-3000:]
    # learned: per target, the chief's evaluation after training (metrics.json, on every validation row)
    # against the best constant predictor on the same rows, computed here from the labels; an untrained
    # model's log loss is far higher
    metrics = read_json(f"{base}/export/metrics.json")
    plan = read_json(f"{base}/prep/prep.json")
    labels = {t["column"]: t["label"] for t in plan["targets"]}
    assert set(labels) == {"vote", "PID", "selfLR"}, plan["targets"]
    valid = bounded(lambda: hdfs_io.read_parquet(f"{base}/prep/valid", columns=list(labels.values())))
    gains, own = {}, {}
    for name, label in labels.items():
        own[name] = majority_baseline(valid.column(label).to_numpy())
        model = {k: metrics[f"valid/{label}/{k}"] for k in ("rows", "accuracy", "log_loss")}
        assert model["rows"] == own[name]["rows"] > 0, (name, model, own[name])
        gains[name] = own[name]["log_loss"] - model["log_loss"]
    print(f"survey: log-loss gain over the class prior per target {gains}")
    assert sum(gains.values()) / len(gains) > SURVEY_MIN_GAIN, (gains, metrics)
    assert metrics["valid/y_vote/accuracy"] >= own["vote"]["accuracy"], (metrics, own["vote"])
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
    with hogging(env, web, tmp_path, executor_overhead_mb=1024, holds_mb=4096):   # all 4 GiB
        with pytest.raises(DeployError, match=r"stayed ACCEPTED for 20 s") as err:
            deploy.submit(argv_for(shipped, "cluster.probe", []), env=env, res=SMALL, accept_timeout=20)
    assert_killed(web, str(err.value).split()[2])


@contextlib.contextmanager
def hogging(env, web, tmp_path, executor_overhead_mb, holds_mb):
    """Another YARN application (client mode: an AM of 1 GiB and 2 executors of 512 MiB +
    ``executor_overhead_mb``) holding its containers until the block ends; stopped by PID whatever happens."""
    release = tmp_path / f"release-{uuid.uuid4().hex[:6]}"
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
                "--conf", f"spark.executor.memoryOverhead={executor_overhead_mb}m", "--conf",
                "spark.yarn.am.memory=512m", "--conf", "spark.yarn.am.memoryOverhead=512m",
                # no UI: in client mode Spark can start its UI while the AM's filter is being added to
                # it (a ConcurrentModificationException in Jetty, seen once in CI); a hog needs no UI
                "--conf", "spark.ui.enabled=false",
                "--conf", f"spark.yarn.tags={tag}", str(hog_app), str(release)]
    pool = concurrent.futures.ThreadPoolExecutor(1)
    hog = pool.submit(run_process, hog_argv, env=env, timeout=300)
    app = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            app = deploy.find_app(web, tag)
            if app and app["state"] == "RUNNING" and int(app.get("allocatedMB") or 0) >= holds_mb:
                break
            if hog.done():
                pytest.fail(f"the hog application ended early\n{describe_yarn(hog.result(), web)}")
            time.sleep(1)
        else:
            pytest.fail(f"the hog application did not take {holds_mb} MiB: {app}")
        yield app
    finally:
        release.write_text("go")
        hog.result(timeout=320)
        pool.shutdown()


def assert_killed(web, app_id, timeout=30):
    """The watchdog killed ``app_id`` (it may take the ResourceManager a moment to say so)."""
    deadline = time.monotonic() + timeout
    while True:
        state = config.http_json(f"{web}/ws/v1/cluster/apps/{app_id}")["app"]["state"]
        if state == "KILLED" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state == "KILLED", yarn_report(web, app_id)


def test_watchdog_kills_an_application_running_short_of_executors(shipped, pseudo_cluster, tmp_path):
    """Another application holds 3 of the 4 GiB: ours gets its application master (RUNNING) but never the
    executors its 2 TF nodes need. YARN would let it wait for as long as the other one runs; the watchdog
    kills it after executor_timeout and says how many executors it got."""
    env, web = shipped["env"], pseudo_cluster["yarn"]["web"]
    # the hog: AM 1 GiB + 2 executors of 512m + 512m = 3 GiB. Ours, client mode: an AM of 512m + 384m
    # (YARN rounds it to 1 GiB: it fits), executors of 512m + 768m = 1.25 GiB each (none fits)
    with hogging(env, web, tmp_path, executor_overhead_mb=512, holds_mb=3072):
        with pytest.raises(DeployError) as err:
            deploy.submit(argv_for(shipped, "cluster.probe", [], mode="client"), env=env, res=SMALL,
                          accept_timeout=120, executor_timeout=20, timeout=240)   # without the watchdog: 240 s
    message = str(err.value)
    assert re.fullmatch(r"YARN application (application_\d+_\d+) got 0 of the 2 executors the TF nodes need "
                        r"within 20 s: too few free resources on the cluster", message), message
    assert_killed(web, message.split()[2])
