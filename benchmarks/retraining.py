"""Automated retraining on a drifting stream, in one run (not a test; the last line is one JSON object).

The scenario, on local Spark, every step as a user types it:
1. a champion (version 1) trained on generated rows before the drift (``--train-rows``), promoted;
2. a stream of ``--stream-rows`` impressions, ``--rate`` a second, whose click model drifts at
   ``--drift-at`` (``generate-stream --drift-at-row``); its first files are the live stream, scored by
   ``stream-score --export URI@champion`` and measured by ``stream-monitor`` (sliding windows of
   ``--window-s``); the last ``--after-files`` files are kept back as the rows after the promotion;
3. ``tfos-ctr autopilot --once`` with the default policy below: it catches the drop, retrains on the
   newest ``--last-rows`` labelled rows, judges, promotes.

Figures:
* ``detect_windows``: the champion's windows that end after the drift, up to the one at which a loop
  looking after every window would have fired (the policy's judgement on the windows as they
  arrived); ``detect_event_s``: from the drift to the end of that window (event time);
* ``retrain_wall_s``: the autopilot's run (prep, training, evaluation, promotion), wall clock;
  ``recovery_s`` = ``detect_event_s`` + ``retrain_wall_s`` (drift to the promoted model serving, when
  event time runs at wall-clock speed);
* ``auc_before`` / ``auc_after``: the old and the new champion on the rows after the promotion (the kept
  files), scored in process with the NumPy encoding the server uses; ``bayes_after``: the generator's
  Bayes-optimal AUC after the drift (over all post-drift rows); ``recovered_ratio`` = after / bayes
  (goal >= 0.97 at a size that lets the model learn the new click model).

The default scenario is sized so that the models can learn the click model (the CTR quality benchmark
reaches 0.98 of Bayes from about 1M rows in one epoch): a champion from 1M rows, 1.6M streamed
impressions at 100 a second drifting at row 200k, retraining on the newest 1M labelled rows; about
20 minutes on 2 cores.

Usage: python benchmarks/retraining.py [--train-rows N] [--stream-rows N] [--steps N --model '...']
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hdfs_io  # noqa: E402
from tfos_jobs import metrics  # noqa: E402
from tfos_jobs.autopilot import decide, policy as policies  # noqa: E402
from tfos_jobs.ctr import schema  # noqa: E402
from tfos_jobs.encoding import arrays  # noqa: E402
from tfos_jobs.registry import ModelRegistry  # noqa: E402
from tfos_jobs.streaming.pipeline import read_metrics  # noqa: E402

BIN = os.path.dirname(sys.executable)


def cli(*argv, log=None):
    done = subprocess.run([os.path.join(BIN, argv[0]), *argv[1:]], capture_output=True, text=True, timeout=3600)
    if log:
        with open(log, "w") as handle:
            handle.write(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    found = []
    for line in done.stdout.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue              # log lines, and tfos-registry's indented document
    return found


def scored_auc(export_dir, lines, labels, buckets):
    import tensorflow as tf
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    encoded = arrays.encode(lines, schema.encoding(buckets, labeled=False))
    ok = encoded.good                       # features hold the good records only, in order
    predictions = serve(**{k: tf.constant(v) for k, v in encoded.features.items()})["prediction"].numpy().ravel()
    return metrics.auc(labels[ok], predictions), int(ok.sum())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=1_000_000, help="the champion's (pre-drift) rows")
    p.add_argument("--stream-rows", type=int, default=1_600_000)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--after-files", type=int, default=2, help="files kept back: the rows after the promotion")
    p.add_argument("--rate", type=float, default=100.0, help="impressions per second of event time")
    p.add_argument("--drift-at", type=int, default=200_000)
    p.add_argument("--window-s", type=int, default=600)
    p.add_argument("--seed", type=int, default=4, help="the stream's seed: its rows and the drifted click model")
    p.add_argument("--last-rows", type=int, default=1_000_000, help="the policy's retrain.last_rows")
    p.add_argument("--hash-buckets", type=int, default=20_000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=0, help="instead of --epochs (small trial runs)")
    p.add_argument("--model", default="", help="model flags for small trial runs, e.g. '--embedding-dim 8'")
    p.add_argument("--master", default="", help="Spark master for training (default: the job's own local cluster)")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="tfos-bench-retrain-")
    # the job's defaults (strategy, model, batch size): what a user gets without tuning
    length = ["--steps", str(args.steps)] if args.steps else ["--epochs", repr(args.epochs)]
    train = [*length, *args.model.split(), *(["--master", args.master] if args.master else [])]
    registry = f"{root}/registry/ctr"
    try:
        cli("tfos-ctr", "generate", "--output", f"{root}/raw", "--rows", str(args.train_rows), "--seed", "11")
        cli("tfos-ctr", "prep", "--input", f"{root}/raw", "--output", f"{root}/prep", "--hash-buckets",
            str(args.hash_buckets), "--validation-fraction", "0.1", "--partitions", "4", "--master", "local[2]")
        cli("tfos-ctr", "train", "--prep", f"{root}/prep", "--model-dir", f"{root}/m1", "--export", registry,
            "--version", "auto", *train, log=f"{root}/train.log")
        cli("tfos-registry", "promote", registry, "1")
        stream = cli("tfos-ctr", "generate-stream", "--output", f"{root}/stream", "--rows", str(args.stream_rows),
                     "--files", str(args.files), "--seed", str(args.seed), "--rows-per-s", str(args.rate), "--drift-at-row",
                     str(args.drift_at), "--mean-click-delay-s", "60", "--max-click-delay-s", "300")[-1]
        data = hdfs_io.resolve(f"{root}/stream")
        live = f"{root}/live"
        os.makedirs(live)
        names = sorted(os.listdir(f"{data}/impressions"))
        for name in names[:-args.after_files]:
            shutil.copy(f"{data}/impressions/{name}", f"{live}/{name}")
        spark = ["--master", "local[2]"]
        cli("tfos-ctr", "stream-score", "--export", f"{registry}@champion", "--input", live, "--output",
            f"{root}/pred", "--checkpoint", f"{root}/ck-score", "--trigger", "available-now", *spark)
        cli("tfos-ctr", "stream-monitor", "--predictions", f"{root}/pred", "--clicks", f"{data}/clicks", "--labeled",
            f"{root}/labeled", "--metrics", f"{root}/metrics", "--checkpoint", f"{root}/ck-monitor", "--trigger",
            "available-now", "--sliding", f"{args.window_s}:{args.window_s}", "--max-click-delay-s", "300",
            "--watermark-s", "60", "--quiet", *spark)
        policy = {"model": registry, "metric": "auc", "window": f"sliding {args.window_s}s every {args.window_s}s",
                  "trigger": {"baseline_windows": 2, "drop": 0.02, "consecutive": 2, "min_count": 300},
                  "retrain": {"last_rows": args.last_rows, "holdout_fraction": 0.1}, "cooldown_s": 0,
                  "blessing": {"min_change": 0.0}}
        with open(f"{root}/policy.yaml", "w") as handle:
            json.dump(policy, handle)
        started = time.monotonic()
        decision = cli("tfos-ctr", "autopilot", "--policy", f"{root}/policy.yaml", "--impressions", live, "--labeled",
                       f"{root}/labeled", "--metrics", f"{root}/metrics", "--work", f"{root}/work", "--once", *train,
                       log=f"{root}/autopilot.log")[-1]["decision"]
        retrain_wall_s = time.monotonic() - started
        if not decision or decision["op"] not in ("promoted", "rejected"):
            raise SystemExit(f"the autopilot did not retrain: {json.dumps(decision)}")
        # When a loop looking after every window would have fired: the same judgement on the windows
        # as they arrived (the --once run above saw them all at once, and judged the last ones).
        rules = policies.parse(policy)
        champion_windows = decide.champion_windows(rules, read_metrics(f"{root}/metrics"), "1", since_ms=0)
        baseline = decide.live_baseline(rules, champion_windows)
        fired = next(n for n in range(1, len(champion_windows) + 1)
                     if decide.judge(rules, champion_windows[:n], baseline).retrain)
        drift_ms, last_end = stream["drift_at_ms"], champion_windows[fired - 1]["window_end_ms"]
        windows = [w for w in champion_windows[:fired] if w["window_end_ms"] > drift_ms]
        clicked = {line.split("\t")[0] for name in os.listdir(f"{data}/clicks")
                   for line in open(f"{data}/clicks/{name}") if line.strip()}
        after = [line.rstrip("\n") for name in names[-args.after_files:] for line in open(f"{data}/impressions/{name}")]
        labels = np.array([line.split("\t", 1)[0] in clicked for line in after], dtype=np.float32)
        lines = [line.split("\t", 2)[2] for line in after]
        state = ModelRegistry(registry).state()
        before, rows = scored_auc(ModelRegistry(registry).version_uri(1), lines, labels, args.hash_buckets)
        after_auc, _ = scored_auc(ModelRegistry(registry).version_uri(state.alias("champion")), lines, labels,
                                  args.hash_buckets)
        bayes = stream["bayes_auc_after_drift"]
        detect_event_s = (last_end - drift_ms) / 1000.0
        print(json.dumps({
            "scenario": {k: getattr(args, k) for k in vars(args)}, "policy": policy,
            "decision": {k: decision[k] for k in ("op", "champion", "challenger", "reason", "numbers")},
            "detect_windows": len(windows), "detect_event_s": detect_event_s, "retrain_wall_s": round(retrain_wall_s, 1),
            "recovery_s": round(detect_event_s + retrain_wall_s, 1), "after_rows": rows,
            "auc_before": round(before, 4), "auc_after": round(after_auc, 4), "bayes_after": round(bayes, 4),
            "old_model_bayes_after": round(stream["old_model_auc_after_drift"], 4),
            "recovered_ratio": round(after_auc / bayes, 4),
        }, sort_keys=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
