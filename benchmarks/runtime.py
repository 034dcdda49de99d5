"""Runtime overhead and throughput, measured in one run (not a test; the last line is one JSON object).

* ``start_s`` / ``shutdown_s``: our runtime, 2-node MWMS job — from launching the Spark job to every
  node having reserved its port, and from the chief's ``done`` to ``fit`` returning.
* ``tfos_start_s`` / ``tfos_shutdown_s``: stock ``TFCluster.run`` / ``TFCluster.shutdown`` for a
  job of the same size whose nodes return at once.
* ``throughput_ratio``: our 2-worker training examples/s ÷ a single-process Keras ``fit`` of the same
  model on the same rows with the same global batch.

With ``--repeat N`` the job runs N times and ``start_s``/``shutdown_s`` are the worst of the N (each
run's figures are listed too): shutdown must be fast in every run, not in most.

Usage: python benchmarks/runtime.py [--rows 200000] [--steps 600] [--repeat 5]
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hdfs_io  # noqa: E402
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr  # noqa: E402
from tfos_jobs.task import ParquetSource  # noqa: E402


HIDDEN = (256, 128, 64)  # a CTR-sized MLP: compute, not per-step overhead, should dominate


def trivial_tfos_node(args, ctx):
    """What a stock TFoS node does in this measurement: nothing, so only the lifecycle is timed."""
    return None


def stock_tfos(sc, nodes):
    from tfos_jobs.compat import import_tfos
    import_tfos()
    from tensorflowonspark import TFCluster
    started = time.monotonic()
    cluster = TFCluster.run(sc, trivial_tfos_node, [], nodes, 0, input_mode=TFCluster.InputMode.TENSORFLOW,
                            master_node="chief")
    ran = time.monotonic()
    cluster.shutdown()
    return ran - started, time.monotonic() - ran


class FlatTask(DemoCTRTask):
    def evaluate(self, model, context):  # the timing is about training, not evaluation
        return {}


def warm_up(sc, executors):
    """Start every executor's Python worker and import TFoS there, so both runtimes start warm."""
    def imports(_):
        from tfos_jobs.compat import import_tfos
        import_tfos()
        return []
    sc.parallelize(range(executors), executors).foreachPartition(imports)


def single_process_rate(train_uri, global_batch, steps):
    import keras
    table = hdfs_io.read_parquet(train_uri)
    features = {n: table.column(n).to_numpy() for n in NUMERIC + CATEGORICAL}
    labels = table.column("label").to_numpy()
    model = FlatTask("", hidden=HIDDEN).build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(features, labels, batch_size=global_batch, epochs=1, steps_per_epoch=20, verbose=0)  # warm-up
    steps_per_epoch = table.num_rows // global_batch
    epochs = max(1, steps // steps_per_epoch)
    started = time.monotonic()
    model.fit(features, labels, batch_size=global_batch, epochs=epochs, verbose=0)
    return epochs * steps_per_epoch * global_batch / (time.monotonic() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=1024, help="per worker")
    parser.add_argument("--repeat", type=int, default=1, help="training runs; start/shutdown are the worst")
    args = parser.parse_args()
    from tfos_jobs.spark import local_cluster_master, spark_session
    from tfos_jobs.trainer import fit

    root = tempfile.mkdtemp(prefix="tfos-bench-runtime-")
    train = os.path.join(root, "train")
    hdfs_io.write_parquet(synthetic_ctr(args.rows, seed=1), train, rows_per_file=args.rows // 8)
    spark = spark_session(local_cluster_master(2, memory_mb=2048), app_name="bench-runtime")
    try:
        warm_up(spark.sparkContext, 2)
        runs = [fit(spark.sparkContext, FlatTask("", hidden=HIDDEN), ParquetSource(train, NUMERIC + CATEGORICAL, "label"),
                    strategy="mwms", num_workers=2, batch_size=args.batch_size, steps=args.steps,
                    checkpoint_every=args.steps, log_every=max(args.steps // 4, 1)) for _ in range(args.repeat)]
        tfos_start, tfos_shutdown = stock_tfos(spark.sparkContext, 2)
    finally:
        spark.stop()
    single = single_process_rate(train, args.batch_size * 2, args.steps)
    ours = max(r.metrics["examples_per_s"] for r in runs)
    figures = {
        "start_s": round(max(r.timings["start_s"] for r in runs), 2),
        "shutdown_s": round(max(r.timings["shutdown_s"] for r in runs), 2),
        "start_s_each": [round(r.timings["start_s"], 2) for r in runs],
        "shutdown_s_each": [round(r.timings["shutdown_s"], 2) for r in runs],
        "tfos_start_s": round(tfos_start, 2),
        "tfos_shutdown_s": round(tfos_shutdown, 2),
        "examples_per_s": round(ours),
        "single_process_examples_per_s": round(single),
        "throughput_ratio": round(ours / single, 3),
        "rows": args.rows, "steps": args.steps, "global_batch": args.batch_size * 2,
    }
    print(f"ours: start {figures['start_s']} s, shutdown {figures['shutdown_s']} s, {ours:,.0f} examples/s")
    print(f"stock TFoS: start {figures['tfos_start_s']} s, shutdown {figures['tfos_shutdown_s']} s")
    print(f"single-process Keras fit: {single:,.0f} examples/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
