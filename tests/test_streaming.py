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
    try:
        done = run_process([sys.executable, "-m", "tfos_jobs.ctr", *args], timeout=timeout)
    except subprocess.TimeoutExpired as e:
        output = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        pytest.fail(f"tfos-ctr {args[0]} ran past {timeout} s; its output:\n{output[-6000:]}", pytrace=False)
    assert done.returncode == 0, describe(done)
    return done


def fitted_export(uri, spark, train_gen):
    """The job's model (small) fitted in-process on a generated pre-drift stream, then exported: the
    windows have a real model's quality to lose when the click model drifts."""
    import keras
    from pyspark.sql import functions as F
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.ctr.stream import encode_impressions
    from tfos_jobs.export import publish_export
    lines = spark.read.text(f"file://{train_gen}/impressions").withColumn("source", F.lit(""))
    rows = encode_impressions(lines, 500).where("reason_code IS NULL").select("id", *schema.FEATURES).toPandas()
    clicked = {line.split("\t")[0] for name in os.listdir(os.path.join(train_gen, "clicks"))
               for line in open(os.path.join(train_gen, "clicks", name)) if line.strip()}
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(embedding_dim=4, hidden=(16,), cross_layers=1, hash_buckets=500).validate())
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit({n: rows[n].to_numpy(dtypes[n]) for n in schema.FEATURES}, rows["id"].isin(clicked).to_numpy("float32"),
              batch_size=256, epochs=3, verbose=0)
    publish_export(uri, model, dtypes, {}, kind="ctr-export", files={"ctr.json": {"hash_buckets": 500}})


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory, local_spark):
    """A generated stream whose click model drifts halfway, and the job's model fitted before the drift."""
    root = tmp_path_factory.mktemp("stream")
    common = ["--rows-per-s", str(RATE), "--mean-click-delay-s", "60", "--max-click-delay-s", str(DELAY)]
    ctr("generate-stream", "--output", str(root / "train-gen"), "--rows", "20000", "--files", "2", "--seed", "5",
        *common)
    fitted_export(str(root / "export"), local_spark, hdfs_io.resolve(str(root / "train-gen")))
    gen = json.loads(ctr("generate-stream", "--output", str(root / "gen"), "--rows", str(ROWS), "--files", str(FILES),
                         "--malformed-fraction", "0.01", "--seed", "4", "--drift-at-row", str(ROWS // 2),
                         *common).stdout.strip().splitlines()[-1])
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
    # Spark takes a directory's files in modification-time order (milliseconds): the copies share one
    # millisecond, and a click log taken out of order is behind the watermark. Land them as a log does.
    now = time.time()
    for i, name in enumerate(sorted(os.listdir(clicks))):
        os.utime(clicks / name, (now + i, now + i))
    done = ctr("stream-monitor", "--predictions", str(root / "pred"), "--clicks", str(clicks), "--metrics",
               str(root / "metrics"), "--checkpoint", str(root / "ckpt-monitor"), "--trigger", "available-now",
               "--watermark-s", "60", "--max-files-per-trigger", "1", *MONITOR, *SPARK)
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


def test_the_report_shows_every_window_losing_auc_after_the_drift(monitored):
    """`tfos-ctr stream-report`: a PNG of every window's AUC over time, and its numbers: the windows
    after the click model drifted score lower than before it."""
    root, gen, _, _ = monitored
    done = ctr("stream-report", "--metrics", str(root / "metrics"), "--out", str(root / "auc.png"),
               "--stream", str(root / "gen"))
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["drift_at_ms"] == gen["drift_at_ms"], describe(done)
    assert open(root / "auc.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    kinds = {name.split()[0] for name in out["series"]}
    assert kinds == {"sliding", "landmark", "fading", "tilted"}, out
    sliding = [v for k, v in out["series"].items() if k.startswith("sliding")][0]
    assert sliding["mean_auc_before"] > sliding["mean_auc_after"] + 0.03, (out, gen)
    fading = [v for k, v in out["series"].items() if k.startswith("fading")][0]
    assert fading["mean_auc_before"] > fading["last_auc"] + 0.03, (out, gen)


def two_untrained_versions(registry):
    """Versions 1 and 2 of ``registry``: the job's model (small), untrained, from two seeds."""
    import keras
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.export import publish_export
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = build_model(ModelConfig(embedding_dim=2, hidden=(8,), cross_layers=1, hash_buckets=500).validate())
        publish_export(registry.uri, model, dtypes, {}, kind="ctr-export", version="auto",
                       files={"ctr.json": {"hash_buckets": 500}})


def test_a_stream_following_the_champion_switches_at_a_micro_batch_boundary(stream_root, local_spark):
    """``--export URI@champion``: a promotion while the stream runs is picked up between micro-batches
    (the query restarts from its checkpoint); each prediction says the version that made it."""
    from tfos_jobs.registry import ModelRegistry
    root, gen, data = stream_root
    registry = ModelRegistry(str(root / "registry" / "ctr"))
    two_untrained_versions(registry)
    registry.promote(1)
    landing, out, ckpt = root / "landing-follow", root / "pred-follow", root / "ckpt-follow"
    landing.mkdir()
    log_path = root / "follow.log"
    log = open(log_path, "w")
    driver = subprocess.Popen([sys.executable, "-m", "tfos_jobs.ctr", "stream-score", "--export",
                               f"{registry.uri}@champion", "--follow-s", "1", "--input", str(landing), "--output",
                               str(out), "--checkpoint", str(ckpt), "--max-files-per-trigger", "1", "--trigger", "1",
                               *SPARK], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def land(i):
        shutil.copy(os.path.join(data, "impressions", f"part-{i:05d}.tsv"), landing / f".part-{i}.tmp")
        os.rename(landing / f".part-{i}.tmp", landing / f"part-{i:05d}.tsv")

    def wait_until(what, ok, limit=240):
        deadline = time.monotonic() + limit
        while not ok() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
        assert ok(), f"{what}; the driver's output:\n{log_path.read_text()[-4000:]}"
    try:
        land(0)
        wait_until("no micro-batch committed", lambda: committed_batches(ckpt) >= 1)
        registry.promote(2)
        wait_until("the promotion was not picked up", lambda: "switching from" in log_path.read_text(), 60)
        land(1)
        wait_until("the second file was not scored", lambda: committed_batches(ckpt) >= 2)
        driver.send_signal(signal.SIGTERM)
        driver.wait(120)
    finally:
        stop_tree(driver)
        log.close()
    assert driver.returncode == 0, log_path.read_text()[-4000:]
    rows = committed_rows(local_spark, out)
    part = rows["id"].map(lambda i: int(i.split("-")[1], 16) * FILES // ROWS)
    versions = rows.groupby(part)[scoring.VERSION_COLUMN].agg(set).to_dict()
    assert versions == {0: {"1"}, 1: {"2"}}, versions
    assert rows["id"].is_unique, rows["id"].value_counts().head()


def test_the_shadow_hook_scores_the_challenger_on_the_champions_live_rows(monitored, local_spark):
    """``CtrRetraining.shadow`` (shadow mode of the autopilot): the champion's live labelled predictions
    after ``since_ms`` and the challenger's on the same impressions, per window of the policy's length,
    equal the same figures computed here from the labelled rows and a batch scoring of the impressions."""
    from pyspark.sql import functions as F
    from tfos_jobs.autopilot import policy as policies
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.autopilot import CtrRetraining
    from tfos_jobs.ctr.stream import encode_impressions
    from tfos_jobs.registry import CHALLENGER, CHAMPION, ModelRegistry
    root, gen, data, _ = monitored
    # the stream's labelled rows, as if the registry's version 1 had made them
    (local_spark.read.parquet(f"file://{root}/pred.labeled").withColumn(scoring.VERSION_COLUMN, F.lit("1"))
     .write.parquet(f"file://{root}/shadow/labeled"))
    labeled = committed_rows(local_spark, root / "shadow" / "labeled")
    registry = ModelRegistry(str(root / "shadow" / "registry"))
    two_untrained_versions(registry)
    policy = policies.parse({"model": registry.uri, "metric": "auc", "window": "sliding 600s every 600s",
                             "shadow_windows": 2})
    hooks = CtrRetraining(local_spark, policy, f"file://{data}/impressions", f"file://{root}/shadow/labeled",
                          f"file://{root}/metrics", f"file://{root}/shadow/work")
    t = labeled["event_time"].astype("datetime64[ms]").astype("int64").to_numpy()
    since = int(np.quantile(t, 0.4))
    got = hooks.shadow({"id": 7}, {CHAMPION: 1, CHALLENGER: 2}, since)
    # here: the challenger's batch predictions of every good impression, joined to the labelled rows
    lines = local_spark.read.text(f"file://{data}/impressions").withColumn("source", F.lit(""))
    good = encode_impressions(lines, 500).where("reason_code IS NULL")
    batch = scoring.score_dataframe(good, registry.version_uri(2), schema.FEATURES, keep=["id"],
                                    prediction_column=CHALLENGER).toPandas()
    rows = labeled[t >= since].merge(batch[["id", CHALLENGER]], on="id")
    assert len(rows) == (t >= since).sum() > 0, (len(rows), (t >= since).sum())
    end = (rows["event_time"].astype("datetime64[ms]").astype("int64") // 600_000 + 1) * 600_000
    want = []
    for window_end, part in rows.groupby(end):
        y = part["label"].to_numpy()
        figures = {role: quality.summary(quality.sketch(y, part[column].to_numpy()))
                   for role, column in ((CHAMPION, "prediction"), (CHALLENGER, CHALLENGER))}
        want.append({"window_end_ms": int(window_end), "count": figures[CHAMPION]["count"],
                     CHAMPION: figures[CHAMPION]["auc"], CHALLENGER: figures[CHALLENGER]["auc"]})
    assert len(want) >= 2 and [w["window_end_ms"] for w in got] == [w["window_end_ms"] for w in want], (got, want)
    for g, w in zip(got, want):
        assert g["count"] == w["count"], (g, w)
        for role in (CHAMPION, CHALLENGER):
            assert g[role] == pytest.approx(w[role], rel=1e-6), (role, g, w)
    assert any(abs(g[CHAMPION] - g[CHALLENGER]) > 0.05 for g in got), got    # two different models were read
