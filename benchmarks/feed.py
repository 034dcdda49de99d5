"""Feed throughput: Spark DataFrame -> 2 TF workers' tf.data loops, three ways, in one run.

(a) our feed (``tfos_jobs.feed``): Spark tasks stream Arrow record batches to a receiver in each of 2 TF
    worker processes; each worker iterates ``receiver.dataset()`` (tf.data) to the end. The DataFrame is
    a plain Parquet scan, so the feeding tasks read its files with pyarrow. (a') is the same feed forced
    through Spark's own Arrow path (``mapInArrow``), which every other DataFrame takes.
(b) stock TFoS: ``TFCluster.run(..., input_mode=InputMode.SPARK)`` + ``cluster.train(rdd)``; each node's
    map function reads ``TFNode.DataFeed.next_batch`` through a ``tf.data.Dataset.from_generator`` loop.
(c) the local limit: one process reads the same Parquet files with pyarrow into the same kind of
    ``from_generator`` tf.data loop as the receiver's (chunks of several batches cut by ``rebatch``; no
    Spark, no network).
Also reported: Spark alone (``spark_alone_rows_per_s``), the last of the warm-up passes, in which the
executors only count the Arrow batches that ``mapInArrow`` hands to Python: the ceiling of (a').

Data: Criteo-like rows (float label, 13 float32 numeric, 26 int64 categorical ids) written as Parquet
and read by Spark as the DataFrame. rows/s counts rows that came out of the workers' tf.data loops,
from the moment the feed starts sending (once every worker's tf.data loop pulled for the first time:
our receivers register then, TFoS's nodes write a ready marker then) to the last row consumed. TFoS
gets fewer rows (it is much slower); the JSON says how many. Each of (a), (a'), (b), (c) runs ``--repeats``
times and the fastest run counts, because this VM's rates are bimodal (see ``best_of``).

The TF workers of (a) are plain processes started here, not Spark tasks: the feed only needs their
addresses, and this leaves both executors' slots to the feeding tasks, as in a real cluster where TF
nodes hold one slot each of multi-core executors. TFoS runs its nodes in the background on the same
two executors and feeds through them.

Usage: python benchmarks/feed.py [--rows 400000] [--epochs 2] [--tfos-rows 40000] [--batch-size 1024] [--repeats 3]
The last line of output is one JSON object.
"""
import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NUMERIC = [f"i{i}" for i in range(1, 14)]
CATEGORICAL = [f"c{i}" for i in range(1, 27)]
FEATURES = NUMERIC + CATEGORICAL
IN_FLIGHT = 8                   # the feed's max_batches_in_flight
CHUNK_BATCHES = IN_FLIGHT // 2  # batches per from_generator element in FeedReceiver.dataset()


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_data(path, rows, files=8):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    per = rows // files
    for f in range(files):
        cols = {"label": (rng.random(per) < 0.25).astype(np.float32)}
        cols.update({n: rng.lognormal(1.0, 1.5, per).astype(np.float32) for n in NUMERIC})
        cols.update({n: rng.integers(0, 1 << 20, per, dtype=np.int64) for n in CATEGORICAL})
        pq.write_table(pa.table(cols), os.path.join(path, f"part-{f:03d}.parquet"))
    return per * files


# ----------------------------------------------------------------------------------- (c) local


def local_main(path, epochs, batch_size):
    import glob

    import pyarrow.parquet as pq
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(path, "*.parquet")))
    sig = ({n: tf.TensorSpec([None], tf.float32 if n in NUMERIC else tf.int64) for n in FEATURES},
           tf.TensorSpec([None], tf.float32))

    def chunks():   # the same chunks of CHUNK_BATCHES batches, cut by rebatch, as the feed's receiver
        for _ in range(epochs):
            for name in files:
                for batch in pq.ParquetFile(name).iter_batches(batch_size=batch_size * CHUNK_BATCHES,
                                                               columns=FEATURES + ["label"]):
                    cols = {n: batch.column(n).to_numpy() for n in FEATURES}
                    yield cols, batch.column("label").to_numpy()
    rows, begun = 0, time.time()
    from tfos_jobs.tfnode.feed import no_autotune
    dataset = tf.data.Dataset.from_generator(chunks, output_signature=sig).rebatch(batch_size)
    for _, labels in dataset.with_options(no_autotune()).prefetch(2):
        rows += int(labels.shape[0])
        end = time.time()   # the last row consumed: deleting the iterator afterwards is not counted
    print(json.dumps({"rows": rows, "seconds": end - begun, "rss_mb": maxrss_mb()}))


# ----------------------------------------------------------------------------------- (a) feed worker


def consumer_main(spec_path, index):
    import tensorflow as tf
    from tfos_jobs.feed import FeedReceiver
    with open(spec_path, "rb") as handle:
        spec = pickle.load(handle)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_at_start = usage.ru_utime + usage.ru_stime   # after importing TF: the feed's share only
    receiver = FeedReceiver(spec, index)
    dataset = receiver.dataset().prefetch(2)   # registers with the driver on its first pull
    rows, first, end = 0, None, None
    try:
        for _, labels in dataset:
            first = first or time.time()
            rows += int(labels.shape[0])
            end = time.time()   # the last row consumed: deleting the iterator and closing are not counted
    finally:
        receiver.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"rows": rows, "first": first, "end": end, "rss_mb": maxrss_mb(),
                      "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu_at_start, 2), **receiver.stats()}))
    _ = tf


def run_feed(sc, df, epochs, batch_size, workdir, directly=True):
    from tfos_jobs.feed import DataFrameSource, FeedDriver
    source = DataFrameSource(df, FEATURES, "label", max_batches_in_flight=IN_FLIGHT, read_parquet_directly=directly)
    driver = FeedDriver(sc, source, num_workers=2, epochs=epochs, batch_size=batch_size)
    if directly and not driver.file_groups:
        raise RuntimeError("the benchmark's DataFrame should be a plain Parquet scan")
    spec_path = os.path.join(workdir, "feed-spec.pkl")
    with open(spec_path, "wb") as handle:
        pickle.dump(driver.spec, handle)
    procs = [subprocess.Popen([sys.executable, __file__, "--consumer", spec_path, str(i)], stdout=subprocess.PIPE,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")) for i in range(2)]
    try:
        driver.start()
        stats = driver.wait(timeout=1800)
        outs = [json.loads(p.communicate(timeout=600)[0].decode().strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        driver.stop()
    rows = sum(o["rows"] for o in outs)
    seconds = max(o["end"] for o in outs) - stats["started_at"]
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "rss_mb": [o["rss_mb"] for o in outs],
            "peak_batches_in_flight": [o["peak_batches_in_flight"] for o in outs],
            "peak_bytes_in_flight": [o["peak_bytes_in_flight"] for o in outs], "partitions": stats["epochs"][0]["partitions"],
            "epoch_seconds": [e["seconds"] for e in stats["epochs"]],
            "finished_s": round(stats["finished_at"] - stats["started_at"], 2),
            "consumed_s": [round(o["end"] - stats["started_at"], 2) for o in outs],
            "first_batch_s": [round(o["first"] - stats["started_at"], 2) for o in outs],
            "consumer_cpu_s": [o["cpu_s"] for o in outs]}


# ----------------------------------------------------------------------------------- (b) TFoS


def tfos_map_fun(args, ctx):
    import numpy as np
    import tensorflow as tf
    from tensorflowonspark import TFNode
    feed = TFNode.DataFeed(ctx.mgr, False)

    def batches():
        while not feed.should_stop():
            batch = feed.next_batch(args["batch_size"])
            if len(batch) == 0:
                return
            arr = np.asarray(batch, dtype=np.float32)
            yield arr[:, 1:], arr[:, 0]
    def ready_then_batches():   # ready on the first pull, as our feed's receivers register
        with open(os.path.join(args["out"], f"ready-{ctx.task_index}-{ctx.job_name}"), "w"):
            pass
        yield from batches()
    dataset = tf.data.Dataset.from_generator(ready_then_batches, output_signature=(
        tf.TensorSpec([None, 39], tf.float32), tf.TensorSpec([None], tf.float32))).prefetch(2)
    rows = 0
    for _, labels in dataset:
        rows += int(labels.shape[0])
    with open(os.path.join(args["out"], f"done-{ctx.job_name}-{ctx.task_index}.json"), "w") as handle:
        json.dump({"rows": rows, "end": time.time(), "rss_mb": maxrss_mb()}, handle)


def run_tfos(sc, df, rows, batch_size, workdir):
    from tfos_jobs import compat
    compat.import_tfos()
    from tensorflowonspark import TFCluster
    out = os.path.join(workdir, "tfos")
    os.makedirs(out, exist_ok=True)
    rdd = df.select("label", *FEATURES).limit(rows).rdd.map(tuple).repartition(4).cache()
    rows = rdd.count()
    cluster = TFCluster.run(sc, tfos_map_fun, {"batch_size": batch_size, "out": out}, num_executors=2, num_ps=0,
                            tensorboard=False, input_mode=TFCluster.InputMode.SPARK, master_node="chief")
    deadline = time.time() + 300
    while len([f for f in os.listdir(out) if f.startswith("ready-")]) < 2 and time.time() < deadline:
        time.sleep(0.2)
    begun = time.time()
    try:
        cluster.train(rdd, num_epochs=1)
        fed = time.time()
    finally:
        try:
            cluster.shutdown(timeout=120)
        except SystemExit as err:  # TFoS calls sys.exit on errors
            print(f"TFoS shutdown exited: {err}", file=sys.stderr)
        rdd.unpersist()
    done = [json.load(open(os.path.join(out, f))) for f in os.listdir(out) if f.startswith("done-")]
    # cluster.train returns once every row was taken off the nodes' queues (TFoS joins them); the nodes'
    # own end time comes only after shutdown's end-of-feed marker, so it is not used for the rate.
    # every fed row was consumed when train returned; a node's own count may be missing if TFoS's
    # shutdown stopped it before it wrote its file
    got = rows
    return {"rows": got, "seconds": fed - begun, "rows_per_s": got / (fed - begun),
            "rss_mb": [d["rss_mb"] for d in done]}


# ----------------------------------------------------------------------------------- main


def warm_up(df, passes=3):
    """Untimed Arrow passes over the DataFrame, so that (a) and (b) both meet JIT-compiled executors
    and started Python workers. A long training amortizes the warm-up, a 400k-row benchmark does not:
    here Spark's own passes (mapInArrow, counting only) took 6.1 s, 1.7 s, then 1.0 s each."""
    def count(batches):
        import pyarrow as pa
        yield pa.RecordBatch.from_pydict({"rows": [sum(b.num_rows for b in batches)]})
    for _ in range(passes):
        started = time.time()
        rows = sum(df.select("label", *FEATURES).mapInArrow(count, "rows long").toArrow().column(0).to_pylist())
        rate = rows / (time.time() - started)
        print(f"warm-up: Spark alone (mapInArrow, count only) {rate:,.0f} rows/s", file=sys.stderr)
    return rate   # the last pass: what Spark's executors themselves deliver as Arrow, the feed's ceiling



def best_of(repeats, run, label):
    """The fastest of ``repeats`` runs (this VM's rates are bimodal: the same local loop takes 1.3 s or
    2.6 s from one process start to the next); returns (best run, every run's rows/s)."""
    results = []
    for _ in range(repeats):
        results.append(run())
        r = results[-1]
        detail = f"; epochs {r['epoch_seconds']} s, first batch {r['first_batch_s']} s" if "epoch_seconds" in r else ""
        print(f"{label}: {r['rows_per_s']:,.0f} rows/s ({r['rows']:,} rows in {r['seconds']:.1f} s{detail})",
              file=sys.stderr)
    return max(results, key=lambda r: r["rows_per_s"]), [round(r["rows_per_s"]) for r in results]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tfos-rows", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--executor-memory-mb", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each of (a), (b), (c); the best counts")
    parser.add_argument("--consumer", nargs=2)
    parser.add_argument("--local")
    args = parser.parse_args()
    if args.consumer:
        return consumer_main(args.consumer[0], int(args.consumer[1]))
    if args.local:
        return local_main(args.local, args.epochs, args.batch_size)

    from tfos_jobs.spark import local_cluster_master, spark_session
    workdir = tempfile.mkdtemp(prefix="feed-bench-")
    import atexit
    import shutil
    atexit.register(shutil.rmtree, workdir, True)
    data = os.path.join(workdir, "data")
    rows = write_data(data, args.rows)
    print(f"data: {rows:,} rows x 40 columns, {args.epochs} epochs, batch {args.batch_size}, {workdir}", file=sys.stderr)

    def run_local():
        out = json.loads(subprocess.run([sys.executable, __file__, "--local", data, "--epochs", str(args.epochs),
                                         "--batch-size", str(args.batch_size)], check=True, capture_output=True,
                                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")).stdout.decode().splitlines()[-1])
        return dict(out, rows_per_s=out["rows"] / out["seconds"])
    runs = {}
    local, runs["local"] = best_of(args.repeats, run_local, "(c) local pyarrow -> tf.data")

    spark = spark_session(local_cluster_master(executors=2, cores=1, memory_mb=args.executor_memory_mb),
                          app_name="feed-benchmark")
    try:
        df = spark.read.parquet(data)
        spark_alone = warm_up(df)
        feed, runs["feed"] = best_of(args.repeats, lambda: run_feed(spark.sparkContext, df, args.epochs,
                                                                    args.batch_size, workdir), "(a) feed")
        via_spark, runs["feed_via_spark"] = best_of(
            args.repeats, lambda: run_feed(spark.sparkContext, df, args.epochs, args.batch_size, workdir,
                                           directly=False), "(a') feed through Spark's Arrow path")
        tfos, runs["tfos"] = best_of(args.repeats, lambda: run_tfos(spark.sparkContext, df, args.tfos_rows,
                                                                    args.batch_size, workdir),
                                     "(b) TFoS InputMode.SPARK")
    finally:
        spark.stop()
    result = {
        "rows_per_s": {"feed": round(feed["rows_per_s"]), "tfos": round(tfos["rows_per_s"]),
                       "local": round(local["rows_per_s"]),
                       "feed_via_spark": round(via_spark["rows_per_s"])},
        "vs_tfos": round(feed["rows_per_s"] / tfos["rows_per_s"], 1),
        "vs_local": round(feed["rows_per_s"] / local["rows_per_s"], 2),
        "spark_alone_rows_per_s": round(spark_alone),
        "via_spark_vs_tfos": round(via_spark["rows_per_s"] / tfos["rows_per_s"], 1),
        "via_spark_vs_local": round(via_spark["rows_per_s"] / local["rows_per_s"], 2),
        "via_spark_vs_spark_alone": round(via_spark["rows_per_s"] / spark_alone, 2),
        "peak_rss_mb_per_worker": {"feed": [round(x) for x in feed["rss_mb"]],
                                   "tfos": [round(x) for x in tfos["rss_mb"]], "local": round(local["rss_mb"])},
        "rows": {"feed": feed["rows"], "tfos": tfos["rows"], "local": local["rows"]},
        "feed_peak_batches_in_flight": feed["peak_batches_in_flight"], "feed_partitions": feed["partitions"],
        "feed_epoch_seconds": feed["epoch_seconds"], "feed_finished_s": feed["finished_s"],
        "feed_consumed_s": feed["consumed_s"], "feed_first_batch_s": feed["first_batch_s"],
        "feed_consumer_cpu_s": feed["consumer_cpu_s"],
        "max_batches_in_flight": IN_FLIGHT,
        "batch_size": args.batch_size, "epochs": args.epochs, "columns": 40, "workers": 2,
        "load_avg_1m": round(os.getloadavg()[0], 1), "repeats": args.repeats,
        "rows_per_s_runs": runs,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
