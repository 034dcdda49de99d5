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
from cluster.pseudo import config
from cluster.pseudo.testing import bounded, chance_auc_sd, describe, majority_baseline, run_process

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LOCAL_CLUSTER = "local-cluster[2,1,1024]"
# Enough training for the models to learn, measured in-process on the same data and models: 20 steps at the
# default rate (what these tests ran before) left the CTR model near chance (AUC 0.53) and the survey model
# below the majority class on `vote`. CTR, 20,000 generated rows (about 2,000 validation rows, on which chance
# is 0.5 +- 0.015): AUC 0.77 after 100 steps at 0.003 (Bayes-optimal 0.86; untrained 0.51; at 0.001, 0.68-0.72).
# Survey (ANES, 230 validation rows), 100 steps at
# 0.01: `vote` accuracy 0.71-0.76 (majority 0.62) and a mean log-loss gain over the class prior of about 0.09
# per target; an untrained model's gain is about -0.2, a constant predictor's at most 0.
CTR_ROWS, CTR_STEPS, CTR_LEARNING_RATE = 20_000, "100", "0.003"
SURVEY_STEPS, SURVEY_LEARNING_RATE, SURVEY_MIN_GAIN = "100", "0.01", 0.03



def deploy_submit(conn, master, module, args, timeout=420):
    """``tfos-deploy submit`` (the CLI, in a child process stopped with everything it started); returns
    the JSON line the job printed. Standalone workers hold 1 core / 1 GiB each: 512m executors."""
    argv = [sys.executable, "-m", "cluster.deployment.cli", "submit", "--master", master, "--executor-memory", "512m",
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
    from tfos_jobs.ctr.synthetic import generate
    from tfos_jobs.survey import synthetic as data
    base = f"{pseudo_cluster['hdfs']['uri']}/tmp/test_deploy_spark/{uuid.uuid4().hex}"
    bounded(lambda: generate(f"{base}/ctr/raw", CTR_ROWS, files=2, overwrite=True))
    data_uri, spec_uri = bounded(lambda: data.write_example(f"{base}/survey/example"))
    master = pseudo_cluster["spark"]["master"]
    out = deploy_submit(pseudo_cluster, master, "tfos_jobs.ctr",
                        ["prep", "--input", f"{base}/ctr/raw", "--output", f"{base}/ctr/prep",
                         "--hash-buckets", "200", "--partitions", "2"])
    assert bounded(lambda: hdfs_io.is_published(f"{base}/ctr/prep")), out
    out = deploy_submit(pseudo_cluster, master, "tfos_jobs.survey",
                        ["prep", "--data", data_uri, "--spec", spec_uri, "--out", f"{base}/survey/prep",
                         "--files", "2"])
    assert out["targets"] == ["vote", "PID", "selfLR"] and out["rows"]["total"] == 944, out
    yield base
    bounded(lambda: hdfs_io.delete(base, recursive=True, missing_ok=True))


def train_both(conn, master, base, name, jobs=("ctr", "survey")):
    """Train each of ``jobs`` with 2 TF workers on ``master``; check the exports and metrics on HDFS."""
    import hdfs_io
    common = ["--strategy", "mwms", "--workers", "2", "--embedding-dim", "4", "--hidden", "16",
              "--checkpoint-every", "50", "--log-every", "20"]
    runs = {
        "ctr": ("tfos_jobs.ctr", ["train", "--prep", f"{base}/ctr/prep", "--model-dir", f"{base}/ctr/model-{name}",
                                  "--export", f"{base}/ctr/export-{name}", "--batch-size", "64", "--steps",
                                  CTR_STEPS, "--learning-rate", CTR_LEARNING_RATE, *common]),
        "survey": ("tfos_jobs.survey", ["train", "--prep", f"{base}/survey/prep", "--model-dir",
                                        f"{base}/survey/model-{name}", "--export", f"{base}/survey/export-{name}",
                                        "--batch-size", "32", "--steps", SURVEY_STEPS, "--learning-rate",
                                        SURVEY_LEARNING_RATE, *common]),
    }
    for job, (module, args) in ((job, runs[job]) for job in jobs):
        export = f"{base}/{job}/export-{name}"
        out = deploy_submit(conn, master, module, args)
        steps = int(CTR_STEPS if job == "ctr" else SURVEY_STEPS)
        assert out["steps"] == steps and out["nodes"] == ["chief:0", "worker:0"] and out["attempts"] == 1, out
        assert out["export"].rstrip("/") == export, out
        assert bounded(lambda: hdfs_io.is_published(export)), f"{export} not published"
        assert bounded(lambda: hdfs_io.exists(f"{base}/{job}/model-{name}/checkpoints/checkpoint"))
        metrics = read_json(f"{export}/metrics.json")
        # the metrics the chief published are the ones the job printed (which adds its own timings)
        assert metrics and {k: out["metrics"].get(k) for k in metrics} == metrics, (metrics, out)
        (check_ctr_learned if job == "ctr" else check_survey_learned)(base, out["metrics"])


def check_ctr_learned(base, metrics):
    """The trained model's validation AUC (the job's own evaluation) against what scores with no information
    get on the same rows (0.5 and the null's spread, from the rows' labels) and the generator's Bayes AUC."""
    import hdfs_io
    labels = bounded(lambda: hdfs_io.read_parquet(f"{base}/ctr/prep/valid", columns=["label"])).column("label")
    assert metrics["eval_rows"] == len(labels), metrics
    assert_ctr_learned(metrics["auc"], labels.to_numpy(), read_json(f"{base}/ctr/raw/_generator.json")["bayes_auc"])


def assert_ctr_learned(measured, labels, bayes):
    """``measured`` AUC on rows with ``labels``: well above chance (0.5 + 3.5 sd of what scores carrying no
    information get on these rows) and at least a third of the way from 0.5 to the Bayes-optimal AUC of the
    generated data (an untrained model: 0.51; trained as here: about 0.77 of 0.86), and not above Bayes
    beyond noise (a label leak would be)."""
    sd = chance_auc_sd(labels)
    floor = max(0.5 + 3.5 * sd, 0.5 + (bayes - 0.5) / 3)
    print(f"CTR validation AUC {measured:.4f} on {len(labels)} rows (floor {floor:.3f}, Bayes {bayes:.4f})")
    assert floor < measured < bayes + 3.5 * sd, \
        f"AUC {measured:.3f}: needs > {floor:.3f} (chance 0.5 +- {sd:.3f} on {len(labels)} rows, Bayes-optimal " \
        f"{bayes:.3f}) and < {bayes + 3.5 * sd:.3f}"


def check_survey_learned(base, metrics):
    """Per target, the model against the best constant predictor on the same validation rows (computed here
    from the labels): its log loss must be lower (an untrained model's is far higher: 0.7-0.94 on `vote`
    against the prior's 0.668) and it must not lose accuracy to the majority class on `vote`."""
    import hdfs_io
    plan = read_json(f"{base}/survey/prep/prep.json")
    labels = [t["label"] for t in plan["targets"]]
    valid = bounded(lambda: hdfs_io.read_parquet(f"{base}/survey/prep/valid", columns=labels))
    seen = {}
    for label in labels:
        base_line = majority_baseline(valid.column(label).to_numpy())
        model = {k: metrics[f"valid/{label}/{k}"] for k in ("rows", "accuracy", "log_loss")}
        assert model["rows"] == base_line["rows"], (label, model, base_line)
        seen[label] = (model, base_line)
    gain = sum(b["log_loss"] - m["log_loss"] for m, b in seen.values()) / len(seen)
    print(f"survey: mean log-loss gain over the class prior {gain:.3f}; (model, constant) per target: {seen}")
    assert gain > SURVEY_MIN_GAIN, f"mean log-loss gain over the class prior {gain:.3f}: {seen}"
    vote_model, vote_majority = seen["y_vote"]
    assert vote_model["accuracy"] >= vote_majority["accuracy"], seen["y_vote"]


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


def test_a_job_trains_on_local_cluster(pseudo_cluster, prepped):
    """What differs from the standalone run is the master alone: one job shows it (CI's time)."""
    before = {a["id"] for a in standalone_apps(pseudo_cluster)}
    t0 = time.monotonic()
    train_both(pseudo_cluster, LOCAL_CLUSTER, prepped, "local-cluster", jobs=("ctr",))
    print(f"local-cluster: the CTR train in {time.monotonic() - t0:.0f} s")
    # TFOS_SPARK_MASTER (the standalone master) is in the environment: spark-submit's master won
    assert {a["id"] for a in standalone_apps(pseudo_cluster)} == before
