"""``tfos-ctr``: the click-through-rate job, step by step or all at once.

    tfos-ctr generate --output URI --rows N          Criteo-format files from a known model (+ Bayes AUC)
    tfos-ctr prep     --input URI --output URI       Spark: validate, quarantine, transform, split -> Parquet
    tfos-ctr train    --prep URI --model-dir URI --export URI    distributed training (ps or mwms)
    tfos-ctr evaluate --export URI --data URI        AUC / log loss -> <export>/evaluation.json
    tfos-ctr score    --export URI --input URI --output URI      Spark batch scoring -> Parquet
    tfos-ctr demo     [--work-dir URI]               all of the above on a small embedded default
    tfos-ctr generate-stream --output URI --rows N   impressions with event times + a late click log
    tfos-ctr stream-score   --export URI --input DIR|kafka://host:port/topic --output URI --checkpoint URI
    tfos-ctr stream-monitor --predictions URI --clicks DIR|kafka://... --metrics URI --checkpoint URI
    tfos-ctr stream-report  --metrics URI --out PNG [--stream URI]   every window's AUC over time

Every input and output is a storage URI (hdfs://, s3://, s3a://, file:// or a path). Also runnable as
``python -m tfos_jobs.ctr ...`` or ``spark-submit tfos_jobs/ctr/cli.py ...`` (the master then comes from
spark-submit).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

if __package__ in (None, ""):   # spark-submit runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import hdfs_io  # noqa: E402
from tfos_jobs.cli import (JobParser, add_autopilot_args, add_monitor_args, add_scoring_export_args,  # noqa: E402
                           add_spark_args, add_stream_args, dropout_rate, fraction, job_session, layer_sizes,
                           non_negative_float, non_negative_int, positive_float, positive_int, print_train_result,
                           run_command, run_monitor_stream, run_autopilot, run_scoring_stream, training_configs)
from tfos_jobs.config import STRATEGY, LoopConfig, RunConfig, ScalingConfig, add_flags, from_flags  # noqa: E402
from tfos_jobs.ctr import prep, steps, stream, synthetic  # noqa: E402
from tfos_jobs.ctr.model import ModelConfig  # noqa: E402
from tfos_jobs.spark import java_version  # noqa: E402

PROG = "tfos-ctr"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=["deepfm", "dcn"], default="dcn")
    parser.add_argument("--embedding-dim", type=positive_int, default=16)
    parser.add_argument("--hidden", type=layer_sizes, default=(256, 128), help="MLP sizes (default: 256,128)")
    parser.add_argument("--cross-layers", type=non_negative_int, default=3, help="DCN cross layers (default: %(default)s)")
    parser.add_argument("--dropout", type=dropout_rate, default=0.0)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--embedding-l2", type=non_negative_float, default=0.0,
                        help="L2 on the embedding tables: curbs over-fitting of rare values after the first "
                             "epoch, but makes their gradients dense (slow under ps)")


def _training_args(parser: argparse.ArgumentParser) -> None:
    """The runtime's training flags (``tfos_jobs.config``), with this job's defaults (``steps.SCALING/LOOP``)."""
    add_flags(parser, ScalingConfig, **dataclasses.asdict(steps.SCALING))
    add_flags(parser, LoopConfig, **dataclasses.asdict(steps.LOOP))
    add_flags(parser, RunConfig)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write Criteo-format files from a known generating model")
    p.add_argument("--output", required=True, help="directory URI for the part files")
    p.add_argument("--rows", type=positive_int, required=True)
    p.add_argument("--files", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0, help="sample seed (use another one for a test set)")
    p.add_argument("--model-seed", type=int, default=7, help="the generating model's parameters")
    p.add_argument("--malformed-fraction", type=fraction, default=0.0)
    p.add_argument("--compression", choices=["none", "gzip"], default="none")
    p.add_argument("--overwrite", action="store_true")


def _add_prep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="Spark: validate, quarantine, transform, split, write Parquet")
    p.add_argument("--input", required=True, help="Criteo text/gzip file, directory or glob URI")
    p.add_argument("--output", required=True, help="directory URI: train/, valid/, quarantine/, prep.json, "
                                                   "published together (see `hdfs_io.resolve`)")
    p.add_argument("--validation-fraction", type=fraction, default=0.1)
    p.add_argument("--hash-buckets", type=positive_int, default=10_000, help="per categorical field")
    p.add_argument("--max-bad-fraction", type=fraction, default=0.01,
                   help="fail when more than this fraction of lines is malformed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--partitions", type=positive_int, help="Parquet files per split (default: Spark's)")
    p.add_argument("--overwrite", action="store_true")
    add_spark_args(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="distributed training through the runtime; exports the model")
    p.add_argument("--prep", required=True, help="prep output URI")
    p.add_argument("--model-dir", required=True, help="URI for checkpoints and TensorBoard events")
    p.add_argument("--export", required=True, help="URI the model is exported to")
    _model_args(p)
    _training_args(p)
    add_spark_args(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="AUC and log loss of an export on prepped Parquet data")
    p.add_argument("--export", required=True)
    p.add_argument("--data", required=True, help="prepped Parquet URI (e.g. <prep>/valid)")
    p.add_argument("--output", help="JSON URI (default: <export>/evaluation.json)")
    p.add_argument("--max-rows", type=positive_int, help="score at most this many rows")


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="Spark batch scoring of Parquet or Criteo data")
    p.add_argument("--export", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="Parquet URI for the predictions (written atomically)")
    p.add_argument("--format", choices=["parquet", "criteo"], default="parquet")
    p.add_argument("--unlabeled", action="store_true", help="Criteo lines have no label field")
    p.add_argument("--keep", help="comma-separated input columns to copy to the output")
    p.add_argument("--batch-size", type=positive_int, default=4096)
    p.add_argument("--partitions", type=positive_int)
    p.add_argument("--overwrite", action="store_true")
    add_spark_args(p)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate, prep, train, evaluate on a small embedded default",
                       description="Generate Criteo-format rows, prep them and train through the same parsers as "
                                   "`prep` and `train` (their defaults, plus the few overrides in DEMO_PREP and "
                                   "DEMO_TRAIN), then print the export and its validation AUC.")
    p.add_argument("--work-dir", default=os.path.join(REPO, "work", "demo"), help="default: %(default)s")
    p.add_argument("--rows", type=positive_int, default=40_000)
    p.add_argument("--epochs", type=positive_float, default=2.0)
    p.add_argument("--strategy", choices=STRATEGY.choices, default=steps.SCALING.strategy)
    add_spark_args(p)


def _add_generate_stream(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate-stream", help="impressions with ids and event times, and a click log whose "
                                               "clicks come later (optionally with a drift)")
    p.add_argument("--output", required=True, help="directory URI: impressions/, clicks/, _generator.json")
    p.add_argument("--rows", type=positive_int, required=True)
    p.add_argument("--files", type=positive_int, default=10, help="parts of consecutive rows (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-seed", type=int, default=7)
    p.add_argument("--rows-per-s", type=positive_float, default=100.0, help="event-time rate (default: %(default)s)")
    p.add_argument("--mean-click-delay-s", type=positive_float, default=120.0)
    p.add_argument("--max-click-delay-s", type=positive_float, default=900.0)
    p.add_argument("--malformed-fraction", type=fraction, default=0.0)
    p.add_argument("--drift-at-row", type=positive_int, help="from this row on, clicks follow a drifted model")
    p.add_argument("--drift-share", type=fraction, default=0.7, help="share of each effect drawn anew at the drift")
    p.add_argument("--overwrite", action="store_true")


def _add_stream_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream-score", help="Structured Streaming: score impressions as they land")
    add_scoring_export_args(p)
    p.add_argument("--input", required=True, help="directory URI new impression files land in, or "
                                                  "kafka://host:port/topic")
    p.add_argument("--output", required=True, help="Parquet URI of the predictions (Spark file sink)")
    p.add_argument("--quarantine", help="Parquet URI of malformed records (default: <output>.quarantine)")
    p.add_argument("--batch-size", type=positive_int, default=4096)
    add_stream_args(p)
    add_spark_args(p)


def _add_stream_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream-monitor", help="Structured Streaming: join late clicks, quality per window")
    p.add_argument("--predictions", required=True, help="what `stream-score --output` writes")
    p.add_argument("--clicks", required=True, help="directory URI click files land in, or kafka://host:port/topic")
    p.add_argument("--max-click-delay-s", type=positive_float, default=900.0,
                   help="an impression without a click this long after it is a negative (default: %(default)s)")
    p.add_argument("--unmatched", choices=["negative", "drop"], default="negative")
    add_monitor_args(p)
    add_spark_args(p)


def _add_stream_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream-report", help="plot every window's AUC over time from stream-monitor's metrics (PNG)")
    p.add_argument("--metrics", required=True, help="what `stream-monitor --metrics` writes")
    p.add_argument("--out", required=True, help="URI of the PNG")
    p.add_argument("--stream", help="a `generate-stream` output: its drift time is marked on the plot")


def _add_autopilot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("autopilot", help="watch the champion's live quality; retrain, check and promote when it falls")
    add_autopilot_args(p)
    p.add_argument("--impressions", required=True, help="the impression lines the stream scores")
    p.add_argument("--labeled", required=True, help="what `stream-monitor --labeled` writes")
    _model_args(p)
    add_flags(p, ScalingConfig, **dataclasses.asdict(steps.SCALING))
    add_flags(p, LoopConfig, **dataclasses.asdict(steps.LOOP))
    add_spark_args(p)


def build_parser() -> JobParser:
    parser = JobParser(prog=PROG, description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.splitlines()[2:13]))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_generate, _add_prep, _add_train, _add_evaluate, _add_score, _add_demo, _add_generate_stream,
                _add_stream_score, _add_stream_monitor, _add_stream_report, _add_autopilot):
        add(sub)
    return parser


def _model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(arch=args.arch, embedding_dim=args.embedding_dim, hidden=args.hidden,
                       cross_layers=args.cross_layers, dropout=args.dropout, learning_rate=args.learning_rate,
                       embedding_l2=args.embedding_l2)


def cmd_generate(args: argparse.Namespace) -> int:
    report = synthetic.generate(args.output, args.rows, files=args.files, seed=args.seed,
                                malformed_fraction=args.malformed_fraction, compression=args.compression,
                                params=synthetic.ModelParams(model_seed=args.model_seed), overwrite=args.overwrite)
    print(json.dumps(report, sort_keys=True))
    return 0


def _prep(args: argparse.Namespace, spark) -> dict:
    return prep.prep(spark, args.input, args.output, validation_fraction=args.validation_fraction,
                     hash_buckets=args.hash_buckets, max_bad_fraction=args.max_bad_fraction, seed=args.seed,
                     partitions=args.partitions, overwrite=args.overwrite)


def cmd_prep(args: argparse.Namespace) -> int:
    prep.check_input(args.input)          # before Spark starts: a wrong URI is the first and only error
    prep.check_output(args.output, args.overwrite)   # and so is a target that is not a CTR prep
    spark = job_session(args, PROG, 2)
    try:
        report = _prep(args, spark)
    finally:
        spark.stop()
    print(json.dumps(report, sort_keys=True))
    return 0


def _train(args: argparse.Namespace, spark):
    return steps.train(spark.sparkContext, args.prep, _model_config(args), **training_configs(args))


def cmd_train(args: argparse.Namespace) -> int:
    scaling = training_configs(args)["scaling"]   # flags first: `--strategy ps --ps 0` fails before any I/O
    prep.read_report(args.prep)
    spark = job_session(args, PROG, scaling.num_nodes)
    try:
        result = _train(args, spark)
    finally:
        spark.stop()
    print_train_result(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    print(json.dumps(steps.evaluate(args.export, args.data, args.output, max_rows=args.max_rows), sort_keys=True))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    keep = [c.strip() for c in args.keep.split(",") if c.strip()] if args.keep is not None else None
    steps.read_config(args.export)
    spark = job_session(args, PROG, 2)
    try:
        result = steps.score(spark, args.export, args.input, args.output, input_format=args.format,
                             labeled=not args.unlabeled, keep=keep, batch_size=args.batch_size,
                             overwrite=args.overwrite, partitions=args.partitions)
    finally:
        spark.stop()
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_generate_stream(args: argparse.Namespace) -> int:
    report = synthetic.generate_stream(
        args.output, args.rows, files=args.files, seed=args.seed, rows_per_s=args.rows_per_s,
        mean_click_delay_s=args.mean_click_delay_s, max_click_delay_s=args.max_click_delay_s,
        malformed_fraction=args.malformed_fraction, drift_at_row=args.drift_at_row, drift_share=args.drift_share,
        params=synthetic.ModelParams(model_seed=args.model_seed), overwrite=args.overwrite)
    print(json.dumps(report, sort_keys=True))
    return 0


def cmd_stream_score(args: argparse.Namespace) -> int:
    from tfos_jobs.registry import resolver
    steps.read_config(resolver(args.export)())   # before Spark starts: not an export is the one error
    return run_scoring_stream(args, PROG, lambda spark, quarantine, config: stream.stream_score(
        spark, args.export, args.input, args.output, quarantine, config, batch_size=args.batch_size,
        follow_s=args.follow_s))


def cmd_stream_monitor(args: argparse.Namespace) -> int:
    return run_monitor_stream(args, PROG, lambda spark, labeled, config, windows: stream.stream_monitor(
        spark, args.predictions, args.clicks, labeled, args.metrics, config, max_delay_s=args.max_click_delay_s,
        unmatched=args.unmatched, **windows))


def cmd_stream_report(args: argparse.Namespace) -> int:
    from tfos_jobs.streaming import report   # lazy: ~3 s of streaming imports the other commands skip
    mark = synthetic.read_report(args.stream).get("drift_at_ms") if args.stream else None
    summary = report.plot_auc(args.metrics, args.out, mark_ms=mark)
    print(json.dumps({"out": args.out, "drift_at_ms": mark, "series": summary}, sort_keys=True))
    return 0


# What the demo changes from the `prep` and `train` defaults: a small DCN on 2000 hash buckets, so that it
# trains in a few minutes on two cores. Everything else comes from those parsers, flags added later included.
DEMO_PREP = ("--hash-buckets", "2000", "--overwrite")
DEMO_TRAIN = ("--workers", "2", "--ps", "1", "--batch-size", "256", "--embedding-dim", "8", "--hidden", "64,32",
              "--cross-layers", "2", "--checkpoint-every", "200", "--log-every", "50")


def demo_commands(args: argparse.Namespace) -> tuple[argparse.Namespace, argparse.Namespace]:
    """The demo's `prep` and `train` arguments, parsed by the same parser as ``tfos-ctr prep|train``."""
    root = args.work_dir
    spark = ["--executor-memory-mb", str(args.executor_memory_mb)] + (["--master", args.master] if args.master else [])
    parser = build_parser()
    prep_args = parser.parse_args(["prep", "--input", hdfs_io.join(root, "raw"), "--output", hdfs_io.join(root, "prep"),
                                   *DEMO_PREP, *spark])
    train_args = parser.parse_args(["train", "--prep", prep_args.output, "--model-dir", hdfs_io.join(root, "model"),
                                    "--export", hdfs_io.join(root, "export"), "--strategy", args.strategy,
                                    "--epochs", repr(args.epochs), *DEMO_TRAIN, *spark])
    return prep_args, train_args


def cmd_demo(args: argparse.Namespace) -> int:
    """``make demo``: generate -> prep -> train (2 TF workers) -> print the export and its AUC."""
    java_version()  # before any work, so a missing Java is the first and only error
    started = time.monotonic()
    prep_args, train_args = demo_commands(args)
    for uri in (train_args.model_dir, train_args.export):   # a demo starts fresh; `fit` itself would resume
        hdfs_io.delete(uri, recursive=True, missing_ok=True)
    report = synthetic.generate(prep_args.input, args.rows, files=2, malformed_fraction=0.002, overwrite=True)
    print(f"generated {args.rows} rows ({report['malformed']} malformed) under {prep_args.input}; "
          f"Bayes-optimal AUC {report['bayes_auc']:.4f}", file=sys.stderr)
    spark = job_session(args, PROG, training_configs(train_args)["scaling"].num_nodes)
    try:
        _prep(prep_args, spark)
        result = _train(train_args, spark)
    finally:
        spark.stop()
    print(f"exported model: {result.export_uri}")
    print(f"validation AUC: {result.metrics['auc']:.4f}  (Bayes-optimal {report['bayes_auc']:.4f}, log loss "
          f"{result.metrics['log_loss']:.4f}, {result.steps} steps, {time.monotonic() - started:.0f} s)")
    return 0


def cmd_autopilot(args: argparse.Namespace) -> int:
    from tfos_jobs.ctr.autopilot import CtrRetraining
    scaling, loop = from_flags(ScalingConfig, args), from_flags(LoopConfig, args)
    return run_autopilot(args, PROG, scaling.num_nodes, lambda spark, policy: CtrRetraining(
        spark, policy, args.impressions, args.labeled, args.metrics, args.work, model=_model_config(args),
        scaling=scaling, loop=loop))


COMMANDS = {"generate": cmd_generate, "prep": cmd_prep, "train": cmd_train, "evaluate": cmd_evaluate,
            "score": cmd_score, "demo": cmd_demo, "generate-stream": cmd_generate_stream,
            "stream-score": cmd_stream_score, "stream-monitor": cmd_stream_monitor,
            "stream-report": cmd_stream_report, "autopilot": cmd_autopilot}


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
