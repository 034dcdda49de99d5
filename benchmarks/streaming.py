"""Streaming scoring against batch scoring of the same rows (not a test; the last line is one JSON object).

* ``stream_rows_per_s``: ``stream-score`` with ``available-now`` over impression files already landed
  (encoding, scoring, exactly-once file sink, quarantine query). ``batch_rows_per_s``: the same records
  as Criteo lines (the impression's id and time cut off) scored by the batch ``score`` step as
  ``tfos-ctr score --format criteo --unlabeled`` runs it (a pass that counts malformed lines, then
  the scoring pass, written atomically). ``ratio_vs_batch`` = stream / batch (goal >= 0.8). Both read
  and validate every record twice: the stream's quarantine query and the batch's count each parse it.
* ``scoring_only``: a stricter baseline with no validation pass of its own: ``score_dataframe`` of the
  impressions' good rows into Parquet (what the two paths share), and the stream's ratio to it.
* All three run in the same run, on the same Spark, each after one warm-up run,
  ``--repeat`` times interleaved; the figures are medians, ``seconds`` lists every run.
* ``latency_s.p50/p95``: files of ``--latency-rows`` impressions land every ``--land-every-s``
  seconds while the query runs with ``--trigger-s``; a record's latency is from its file landing
  (atomic rename) to the commit of the micro-batch that scored it (the checkpoint's ``commits/<n>``).
* ``state_bytes``: the fading and tilted-time window state of one key after 100k and 1M rows (goal:
  the same, whatever the rows).

The model is the CTR job's DCN with the job's default sizes (untrained: scoring cost does not
depend on the weights). Usage: python benchmarks/streaming.py [--rows 200000] [--files 20]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hdfs_io  # noqa: E402
from tfos_jobs import scoring  # noqa: E402
from tfos_jobs.ctr import schema, steps, stream, synthetic  # noqa: E402
from tfos_jobs.ctr.model import ModelConfig, build_model  # noqa: E402
from tfos_jobs.export import publish_export  # noqa: E402
from tfos_jobs.spark import local_cluster_master, spark_session  # noqa: E402
from tfos_jobs.streaming import quality  # noqa: E402
from tfos_jobs.streaming.pipeline import AVAILABLE_NOW, StreamConfig  # noqa: E402
from tfos_jobs.streaming.windows import WindowSet, WindowSpec  # noqa: E402

BUCKETS = 10_000


def make_export(root):
    model = build_model(ModelConfig(hash_buckets=BUCKETS).validate())
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    uri = os.path.join(root, "export")
    publish_export(uri, model, dtypes, {}, kind="ctr-export", files={"ctr.json": {"hash_buckets": BUCKETS}})
    return uri


def as_criteo_lines(impressions, out):
    """The impressions' records as unlabeled Criteo lines (the batch ``score`` step's input format)."""
    os.makedirs(out)
    for name in sorted(os.listdir(impressions)):
        if name.startswith(("_", ".")):
            continue
        with open(os.path.join(impressions, name)) as src, open(os.path.join(out, name), "w") as dst:
            dst.writelines(line.split("\t", 2)[2] if line.count("\t") >= 2 else line for line in src)
    return out


def batch_cli(spark, export, criteo, out):
    started = time.monotonic()
    result = steps.score(spark, export, f"file://{criteo}", f"file://{out}", input_format="criteo", labeled=False)
    return time.monotonic() - started, result["rows"]


def scoring_only(spark, export, impressions, out):
    from pyspark.sql import functions as F
    lines = spark.read.text(f"file://{impressions}").withColumn("source", F.lit(""))
    good = stream.encode_impressions(lines, BUCKETS).where("reason_code IS NULL")
    started = time.monotonic()
    scoring.score_dataframe(good, export, schema.FEATURES, keep=["id", "event_time"]).write.parquet(f"file://{out}")
    return time.monotonic() - started


def stream_throughput(spark, export, impressions, root):
    landing = os.path.join(root, "landing")
    shutil.copytree(impressions, landing)
    config = StreamConfig(checkpoint=os.path.join(root, "ckpt-throughput"), trigger=AVAILABLE_NOW)
    started = time.monotonic()
    stream.stream_score(spark, export, landing, os.path.join(root, "pred"), os.path.join(root, "quar"),
                        config).wait()
    return time.monotonic() - started


def stream_latency(spark, export, root, rows, files, every_s, trigger_s):
    gen = os.path.join(root, "latency-gen")
    synthetic.generate_stream(gen, rows * files, files=files, seed=9)
    parts = os.path.join(hdfs_io.resolve(gen), "impressions")
    landing = os.path.join(root, "latency-landing")
    os.makedirs(landing)
    checkpoint = os.path.join(root, "ckpt-latency")
    config = StreamConfig(checkpoint=checkpoint, trigger=trigger_s)
    pipeline = stream.stream_score(spark, export, landing, os.path.join(root, "latency-pred"),
                                   os.path.join(root, "latency-quar"), config)
    landed = {}
    try:
        time.sleep(10)           # the query is up and idle before the first file lands
        for i in range(files):
            name = f"part-{i:05d}.tsv"
            shutil.copy(os.path.join(parts, name), os.path.join(landing, "." + name))
            os.rename(os.path.join(landing, "." + name), os.path.join(landing, name))
            landed[name] = time.time()
            time.sleep(every_s)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _scored_files(checkpoint, landing) < files:
            time.sleep(0.5)
    finally:
        pipeline.stop()
    latencies = []
    commits = os.path.join(checkpoint, "predictions", "commits")
    for batch, names in _files_per_batch(checkpoint).items():
        committed = os.path.getmtime(os.path.join(commits, str(batch)))
        latencies += [committed - landed[n] for n in names for _ in range(rows)]
    return latencies


def _files_per_batch(checkpoint):
    """{batch id: [file names]} from the file source's log (``sources/0/<batch>``: a version line,
    then one JSON object per file), for committed batches only."""
    log = os.path.join(checkpoint, "predictions", "sources", "0")
    commits = os.path.join(checkpoint, "predictions", "commits")
    out = {}
    for name in os.listdir(log) if os.path.isdir(log) else []:
        if name.isdigit() and os.path.exists(os.path.join(commits, name)):
            with open(os.path.join(log, name)) as handle:
                entries = [json.loads(line) for line in handle.read().splitlines()[1:] if line.strip()]
            out[int(name)] = [e["path"].rsplit("/", 1)[-1] for e in entries]
    return out


def _scored_files(checkpoint, landing):
    return sum(len(v) for v in _files_per_batch(checkpoint).values())


def state_bytes(rows):
    rng = np.random.default_rng(1)
    windows = WindowSet(WindowSpec())
    start = 1_767_225_600_000
    span = 40 * 86_400_000
    for chunk in range(0, rows, 100_000):
        n = min(100_000, rows - chunk)
        t = start + (np.arange(chunk, chunk + n) * span // rows)
        p = rng.beta(2, 5, n)
        windows.update(t, (rng.random(n) < p).astype(np.int8), p)
    header, data = windows.dumps()
    per_window = quality.empty(windows.spec.bins).nbytes
    return {"fading": per_window, "tilted": len(data) - 2 * per_window, "all": len(header) + len(data),
            "tilted_slots": len(windows.slots)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs of each side (medians reported)")
    parser.add_argument("--latency-rows", type=int, default=2000, help="impressions per landing file")
    parser.add_argument("--latency-files", type=int, default=15)
    parser.add_argument("--land-every-s", type=float, default=3.0)
    parser.add_argument("--trigger-s", type=float, default=1.0)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="tfos-bench-stream-")
    spark = None
    try:
        gen = synthetic.generate_stream(os.path.join(root, "gen"), args.rows, files=args.files, seed=3)
        impressions = os.path.join(hdfs_io.resolve(os.path.join(root, "gen")), "impressions")
        export = make_export(root)
        spark = spark_session(local_cluster_master(executors=2, memory_mb=2048), app_name="bench-streaming")
        criteo = as_criteo_lines(impressions, os.path.join(root, "criteo"))
        batch_cli(spark, export, criteo, os.path.join(root, "warm-cli"))   # JVM, workers and model warm
        scoring_only(spark, export, impressions, os.path.join(root, "warm"))
        stream_throughput(spark, export, impressions, os.path.join(root, "warm-stream"))
        times = {"batch": [], "scoring_only": [], "stream": []}
        for r in range(args.repeat):      # interleaved, so a slow spell of the machine hits all three
            seconds, batch_rows = batch_cli(spark, export, criteo, os.path.join(root, f"batch-cli-{r}"))
            times["batch"].append(seconds)
            times["scoring_only"].append(scoring_only(spark, export, impressions, os.path.join(root, f"batch-{r}")))
            times["stream"].append(stream_throughput(spark, export, impressions, os.path.join(root, f"stream-{r}")))
        batch_s, scoring_s, stream_s = (float(np.median(times[k])) for k in ("batch", "scoring_only", "stream"))
        latencies = stream_latency(spark, export, root, args.latency_rows, args.latency_files,
                                   args.land_every_s, args.trigger_s)
        small, large = state_bytes(100_000), state_bytes(1_000_000)
        rows = gen["well_formed"]
        if batch_rows != rows:
            raise SystemExit(f"batch score wrote {batch_rows} rows, the stream's good rows are {rows}")
        result = {
            "rows": rows, "files": args.files, "spark": "local-cluster[2,1,2048]",
            "batch_rows_per_s": round(rows / batch_s), "stream_rows_per_s": round(rows / stream_s),
            "ratio_vs_batch": round(batch_s / stream_s, 3),
            "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "scoring_only": {"rows_per_s": round(rows / scoring_s), "stream_ratio": round(scoring_s / stream_s, 3)},
            "latency_s": {"p50": round(float(np.percentile(latencies, 50)), 2),
                          "p95": round(float(np.percentile(latencies, 95)), 2),
                          "trigger_s": args.trigger_s, "land_every_s": args.land_every_s,
                          "rows_per_file": args.latency_rows, "records": len(latencies)},
            "state_bytes": {"after_100k_rows": small, "after_1m_rows": large,
                            "constant": (small["fading"], small["tilted"]) == (large["fading"], large["tilted"])},
        }
        print(json.dumps(result, sort_keys=True))
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
