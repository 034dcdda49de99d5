"""Executor loss, again and again (not a test; the last line is one JSON object).

For each strategy, ``--runs`` training runs on Spark ``local-cluster``; in each, one random executor
that hosts a TF node is SIGKILLed at a random step after the first checkpoint. Reported per run:
whether ``fit`` returned with the planned step count, the attempts it took, and the recovery time:
from the kill to the first progress report of the next TF cluster (which resumed from the checkpoint).
Goal (issue #18): every run finishes, each recovery under 90 s.

Usage: python benchmarks/executor_loss.py [--runs 5] [--strategies mwms,ps] [--steps 400]
"""
import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hdfs_io  # noqa: E402
from tfos_jobs.driver import trainer  # noqa: E402
from tfos_jobs.task import ParquetSource  # noqa: E402
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr  # noqa: E402


class NoEvalTask(DemoCTRTask):
    def evaluate(self, model, context):   # recovery is timed, not the model
        return {}


def tf_node_executors():
    """(TF node process, its executor JVM) pairs among this process's descendants."""
    ours = {p.pid: p for p in psutil.Process().children(recursive=True)}
    pairs = []
    for proc in ours.values():
        try:
            if "tfos_jobs.tfnode" not in " ".join(proc.cmdline()):
                continue
            executor = next((p for p in proc.parents() if p.pid in ours
                             and "CoarseGrainedExecutorBackend" in " ".join(p.cmdline())), None)
            if executor is not None:
                pairs.append((proc, executor))
        except psutil.Error:
            continue
    return pairs


def one_run(sc, strategy, data, steps, seed, root):
    rng = random.Random(seed)
    progress = []    # (monotonic time, attempt, step)
    original = trainer._print_progress

    def record(event):
        progress.append((time.monotonic(), event.get("attempt"), event["step"]))
        original(event)
    trainer._print_progress = record
    kill_at = rng.randrange(steps // 4, steps * 3 // 4)
    killed = {}

    def killer():
        while not killed and time.monotonic() < deadline:
            if progress and progress[-1][2] >= kill_at:
                pairs = tf_node_executors()
                if pairs:
                    node, executor = rng.choice(pairs)
                    killed.update(time=time.monotonic(), attempt=progress[-1][1], step=progress[-1][2],
                                  node=" ".join(node.cmdline())[-60:])
                    executor.kill()
                    return
            time.sleep(0.05)
    deadline = time.monotonic() + 900
    threading.Thread(target=killer, daemon=True).start()
    scaling = dict(num_workers=2) if strategy == "mwms" else dict(num_workers=1, num_ps=1)
    out = {"strategy": strategy, "kill_at_step": kill_at}
    try:
        result = trainer.fit(sc, NoEvalTask(""), ParquetSource(data, NUMERIC + CATEGORICAL, "label"),
                             strategy=strategy, model_dir=os.path.join(root, f"model-{strategy}-{seed}"),
                             batch_size=64, steps=steps, checkpoint_every=20, log_every=10, max_attempts=4,
                             start_timeout_s=180, **scaling)
        out.update(finished=result.steps == steps, steps=result.steps, attempts=result.attempts,
                   resumed_from=result.resumed_from)
    except Exception as err:  # noqa: BLE001 - a failed run is a figure here
        out.update(finished=False, error=f"{type(err).__name__}: {str(err)[:300]}")
    finally:
        trainer._print_progress = original
    if killed:
        after = [t for t, attempt, _ in progress if t > killed["time"] and attempt != killed["attempt"]]
        out.update(killed_step=killed["step"], killed_node=killed["node"],
                   recovery_s=round(after[0] - killed["time"], 1) if after else None)
    print(json.dumps(out), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--strategies", default="mwms,ps")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    from tfos_jobs.spark import local_cluster_master, spark_session
    spark = spark_session(local_cluster_master(executors=3, memory_mb=1024), app_name="tfos-executor-loss")
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="tfos-executor-loss-") as root:
            data = os.path.join(root, "train")
            hdfs_io.write_parquet(synthetic_ctr(20_000, seed=1), data, rows_per_file=5_000)
            for strategy in args.strategies.split(","):
                for seed in range(args.runs):
                    runs.append(one_run(spark.sparkContext, strategy, data, args.steps, seed, root))
    finally:
        spark.stop()
    summary = {}
    for strategy in args.strategies.split(","):
        mine = [r for r in runs if r["strategy"] == strategy]
        recoveries = [r["recovery_s"] for r in mine if r.get("recovery_s") is not None]
        summary[strategy] = {"finished": f"{sum(bool(r.get('finished')) for r in mine)}/{len(mine)}",
                             "recovery_s": recoveries, "max_recovery_s": max(recoveries) if recoveries else None}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
