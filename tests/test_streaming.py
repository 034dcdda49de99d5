"""Streaming scoring and monitoring on local Spark, run as a user types it (``tfos-ctr generate-stream``,
``stream-score``, ``stream-monitor``): exactly once across a killed driver, batch-equal predictions,
quarantine, late clicks, and every window equal to a batch computation over the same rows."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import hdfs_io
from cluster.processes import stop_tree
from cluster.testing import describe, run_process
from tfos_jobs import scoring
from tfos_jobs.streaming import quality
from tfos_jobs.streaming.pipeline import read_metrics
from tfos_jobs.streaming.windows import WindowSet, WindowSpec

pytestmark = pytest.mark.slow
ROWS, FILES, RATE, DELAY = 3000, 6, 1.0, 300
SPARK = ["--master", "local[2]"]
MONITOR = ["--sliding", "1200:600", "--half-life-s", "900", "--max-click-delay-s", str(DELAY)]


def ctr(*args, timeout=600):
    done = run_process([sys.executable, "-m", "tfos_jobs.ctr", *args], timeout=timeout)
    assert done.returncode == 0, describe(done)
    return done


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory):
    """A generated stream and a small (untrained) CTR export of the job's real model."""
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.export import publish_export
    root = tmp_path_factory.mktemp("stream")
    gen = json.loads(ctr("generate-stream", "--output", str(root / "gen"), "--rows", str(ROWS), "--files", str(FILES),
                         "--rows-per-s", str(RATE), "--mean-click-delay-s", "60", "--max-click-delay-s", str(DELAY),
                         "--malformed-fraction", "0.01", "--seed", "4").stdout.strip().splitlines()[-1])
    model = build_model(ModelConfig(embedding_dim=2, hidden=(8,), cross_layers=1, hash_buckets=500).validate())
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    publish_export(str(root / "export"), model, dtypes, {"auc": 0.5}, kind="ctr-export",
                   files={"ctr.json": {"hash_buckets": 500}})
    return root, gen, hdfs_io.resolve(str(root / "gen"))


def committed_batches(checkpoint):
    commits = os.path.join(checkpoint, "predictions", "commits")
    return len([n for n in os.listdir(commits) if n.isdigit()]) if os.path.isdir(commits) else 0


@pytest.fixture(scope="module")
def scored(stream_root):
    """Impression files land one by one; the scoring driver is SIGKILLed after two micro-batches and
    re-started with the same checkpoint."""
    root, gen, data = stream_root
    landing = root / "landing"
    landing.mkdir()
    args = ["stream-score", "--export", str(root / "export"), "--input", str(landing), "--output",
            str(root / "pred"), "--checkpoint", str(root / "ckpt"), "--max-files-per-trigger", "1", *SPARK]
    log = open(root / "first-run.log", "w")
    first = subprocess.Popen([sys.executable, "-m", "tfos_jobs.ctr", *args, "--trigger", "1"], stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for i in range(FILES):
            shutil.copy(os.path.join(data, "impressions", f"part-{i:05d}.tsv"), landing / f".part-{i}.tmp")
            os.rename(landing / f".part-{i}.tmp", landing / f"part-{i:05d}.tsv")   # lands whole
            if i == 2:
                deadline = time.monotonic() + 240
                while committed_batches(root / "ckpt") < 2 and time.monotonic() < deadline and first.poll() is None:
                    time.sleep(0.5)
                assert committed_batches(root / "ckpt") >= 2, (root / "first-run.log").read_text()[-3000:]
                os.killpg(first.pid, signal.SIGKILL)     # the driver dies mid-stream, no clean stop
                first.wait(30)
    finally:
        stop_tree(first)
        log.close()
    second = ctr(*args, "--trigger", "available-now")
    return root, gen, data, second


def committed_rows(spark, path):
    """A Spark file sink's committed rows (Spark reads its ``_spark_metadata`` log), as pandas.
    Tests share the session's ``local_spark``: stopping a session of their own would stop that one."""
    return spark.read.parquet(f"file://{path}").toPandas()


def test_every_impression_is_scored_once_like_batch_scoring(scored, local_spark):
    root, gen, data, _ = scored
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.stream import encode_impressions
    spark = local_spark
    stream = spark.read.parquet(f"file://{root}/pred").toPandas()   # committed files only (_spark_metadata)
    quarantine = spark.read.parquet(f"file://{root}/pred.quarantine").toPandas()
    lines = spark.read.text(f"file://{data}/impressions").withColumn("source", __import__(
        "pyspark.sql.functions", fromlist=["lit"]).lit(""))
    good = encode_impressions(lines, 500).where("reason_code IS NULL")
    batch = scoring.score_dataframe(good, str(root / "export"), schema.FEATURES, keep=["id"]).toPandas()
    assert stream["id"].is_unique, stream["id"][stream["id"].duplicated()].head()
    assert len(stream) == gen["well_formed"] and len(quarantine) == gen["malformed"], (len(stream), len(quarantine), gen)
    assert set(quarantine["reason_code"]) <= {"field_count", *[f"I{i}" for i in range(1, 14)],
                                              *[f"C{i}" for i in range(1, 27)]}
    merged = stream.merge(batch, on="id", suffixes=("", "_batch"))
    assert len(merged) == len(stream)
    np.testing.assert_allclose(merged["prediction"], merged["prediction_batch"], rtol=1e-6)
    assert (merged["model_version"] == merged["model_version_batch"]).all()
    assert stream["event_time"].min() == pd.Timestamp(gen["start_ms"], unit="ms")


@pytest.fixture(scope="module")
def monitored(scored):
    root, gen, data, _ = scored
    clicks = root / "clicklog"
    shutil.copytree(os.path.join(data, "clicks"), clicks)
    done = ctr("stream-monitor", "--predictions", str(root / "pred"), "--clicks", str(clicks), "--metrics",
               str(root / "metrics"), "--checkpoint", str(root / "ckpt-monitor"), "--trigger", "available-now",
               "--watermark-s", "60", *MONITOR, *SPARK)
    return root, gen, data, done


def test_late_clicks_label_each_prediction_once(monitored, local_spark):
    root, gen, data, done = monitored
    labeled = committed_rows(local_spark, root / "pred.labeled")
    clicked = {line.split("\t")[0] for i in range(FILES)
               for line in open(os.path.join(data, "clicks", f"part-{i:05d}.tsv")).read().splitlines()}
    assert labeled["id"].is_unique and len(labeled) > 0.8 * gen["well_formed"], (len(labeled), describe(done))
    expected = labeled["id"].isin(clicked).astype("float32")
    assert (labeled["label"].to_numpy() == expected.to_numpy()).all()
    # unbiased: the labeled rows' click rate is the generated one (not inflated by early clicks)
    assert abs(labeled["label"].mean() - gen["ctr"]) < 0.03, (labeled["label"].mean(), gen["ctr"])


def test_every_window_equals_the_batch_computation(monitored, local_spark):
    root, gen, data, done = monitored
    labeled = committed_rows(local_spark, root / "pred.labeled")
    t = labeled["event_time"].astype("datetime64[ms]").astype("int64").to_numpy()
    y, p = labeled["label"].to_numpy(), labeled["prediction"].to_numpy()
    records = read_metrics(str(root / "metrics"))
    kinds = {r["window_kind"] for r in records}
    assert kinds == {"sliding", "landmark", "fading", "tilted"}, (kinds, describe(done))
    checked = 0
    for r in [r for r in records if r["window_kind"] == "sliding"]:
        inside = (t >= r["window_start_ms"]) & (t < r["window_end_ms"])
        want = quality.summary(quality.sketch(y[inside], p[inside]))
        for name, value in want.items():
            assert r[name] == pytest.approx(value, rel=1e-6, abs=1e-9), (r, name, value)
        checked += 1
    from tfos_jobs.streaming.windows import CALENDAR
    reference = WindowSet(WindowSpec(half_life_s=900, tilted=CALENDAR))
    reference.update(t, y, p)
    want = {(w["window_kind"], w["window"], w["window_start_ms"]): w for w in reference.records()}
    got = {(r["window_kind"], r["window"], r["window_start_ms"]): r for r in records if r["window_kind"] != "sliding"}
    assert set(got) == set(want)
    for key, w in want.items():
        for name in quality.summary(quality.empty(1)):
            assert got[key][name] == pytest.approx(w[name], rel=1e-6, abs=1e-9), (key, name)
        checked += 1
    assert checked >= 6
    # the console shows a line per window
    assert "[tfos-stream] landmark" in done.stdout and "[tfos-stream] sliding" in done.stdout, describe(done)
