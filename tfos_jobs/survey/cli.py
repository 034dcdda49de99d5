"""``tfos-survey``: the survey modelling job, step by step.

    tfos-survey example  --out URI [--name anes96|synthetic]      write an example data set + spec
    tfos-survey prep     --data URI --spec URI --out URI          Spark: profile, encode, split -> Parquet
    tfos-survey train    --prep URI --model-dir URI --export URI  multi-task model on the runtime (mwms/ps)
    tfos-survey evaluate --prep URI --export URI --out URI        model vs majority vs logistic regression
    tfos-survey predict  --export URI --data URI --out URI        answer probabilities, atomically
    tfos-survey stream-predict --export URI --input DIR|kafka://host:port/topic --output URI --checkpoint URI
                                                                  Structured Streaming: JSON records as they land
    tfos-survey stream-monitor --export URI --predictions URI --answers DIR|kafka://... --metrics URI --checkpoint URI
                                                                  later answers: accuracy, log loss per question per window
    tfos-survey autopilot --policy URI --records DIR --answers DIR --metrics URI --work URI
                                                                  retrain, check, promote when live accuracy falls

Every input and output is a storage URI (hdfs://, s3://, s3a://, file:// or a path). Bad input (a
spec that does not parse, a target missing from the data or with a single answer, a missing prep or
export) is reported before Spark starts. Also runnable as ``python -m tfos_jobs.survey ...`` or
``spark-submit tfos_jobs/survey/cli.py ...`` (the master then comes from spark-submit).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

if __package__ in (None, ""):   # spark-submit runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import hdfs_io  # noqa: E402
from tfos_jobs.cli import (JobParser, add_autopilot_args, add_monitor_args, add_scoring_export_args,  # noqa: E402
                           add_spark_args, add_stream_args, bounded_number, dropout_rate, job_session, layer_sizes,
                           non_negative_float, positive_float, positive_int, print_train_result, run_autopilot,
                           run_command, run_monitor_stream, run_scoring_stream, training_configs)
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig, add_flags, from_flags  # noqa: E402
from tfos_jobs.survey import prep, schema, steps, synthetic  # noqa: E402

PROG = "tfos-survey"
EXECUTOR_MEMORY_MB = 1536


def _open_fraction(text: str) -> float:
    """The validation share: both splits must keep rows."""
    return bounded_number(text, float, "between 0 and 1 (exclusive)", lambda v: 0 < v < 1)


def _add_example(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("example", help="write an example survey (real ANES 1996 or synthetic) and its spec",
                       description="Write responses + spec.yaml under --out: 'anes96' is the 1996 American "
                                   "National Election Study sample shipped in statsmodels (944 respondents); "
                                   "'synthetic' a high-dimensional survey with missing/refused/not-asked answers.")
    p.add_argument("--out", required=True, help="storage URI of a directory to write into")
    p.add_argument("--name", choices=["anes96", "synthetic"], default="anes96")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--rows", type=positive_int, default=5000, help="synthetic only (default: %(default)s)")
    p.add_argument("--questions", type=positive_int, default=300, help="synthetic only (default: %(default)s)")
    p.add_argument("--targets", type=positive_int, default=3, help="synthetic only (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)


def _add_prep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="Spark: profile, infer column types, encode, split -> Parquet + prep.json",
                       description="Check the spec against the data (before Spark), then encode every column "
                                   "and write <out>/train, <out>/valid (Parquet) and <out>/prep.json.")
    p.add_argument("--data", required=True, help="responses: a CSV or Parquet file or directory (any storage URI)")
    p.add_argument("--spec", required=True, help="the spec file (YAML or JSON)")
    p.add_argument("--out", required=True, help="output directory URI")
    p.add_argument("--format", choices=["auto", "csv", "parquet"], default="auto")
    p.add_argument("--files", type=positive_int, default=4,
                   help="Parquet files per split; at least the number of TF workers (default: %(default)s)")
    p.add_argument("--validation-fraction", type=_open_fraction, help="overrides the spec's split.validation_fraction")
    p.add_argument("--seed", type=int, help="overrides the spec's split.seed")
    p.add_argument("--fold", type=int, help="overrides the spec's split.fold: with --validation-fraction 1/k, "
                                            "folds 0..k-1 are k-fold cross-validation")
    p.add_argument("--overwrite", action="store_true")
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the model: a logistic regression per target plus a shared network's residual",
                       description="Fits the logistic regressions on the driver, then trains the network through the "
                                   "runtime, keeping the weights that do best on held-out training rows; exports "
                                   "SavedModel, model.keras and metrics.json (validation accuracy / log loss per "
                                   "target, of the model and of its LR) to --export.")
    p.add_argument("--prep", required=True, help="output directory of `prep`")
    p.add_argument("--model-dir", required=True, help="checkpoints and TensorBoard events (resumed if present)")
    p.add_argument("--export", required=True, help="where the trained model is published")
    # the runtime's training flags (tfos_jobs.config), with this job's defaults (steps.SCALING/LOOP)
    add_flags(p, ScalingConfig, **dataclasses.asdict(steps.SCALING))
    add_flags(p, LoopConfig, **dataclasses.asdict(steps.LOOP))
    add_flags(p, RunConfig)
    _model_args(p)
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=layer_sizes, help="trunk layer sizes, e.g. 128,64 (default: the spec's or 128,64)")
    p.add_argument("--embedding-dim", type=positive_int)
    p.add_argument("--dropout", type=dropout_rate)
    p.add_argument("--learning-rate", type=positive_float)


def _model_options(args: argparse.Namespace) -> dict:
    return {"hidden": args.hidden, "embedding_dim": args.embedding_dim, "dropout": args.dropout,
            "learning_rate": args.learning_rate}


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-target accuracy and log loss: model vs majority vs logistic regression",
                       description="Score the validation split with the export and fit the baselines in the same "
                                   "job; write <out>/evaluation.json and <out>/evaluation.txt.")
    p.add_argument("--prep", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--out", required=True, help="output directory URI")
    p.add_argument("--lr-reg", type=non_negative_float, default=0.01, help="L2 strength of the LR baseline (default: %(default)s)")
    p.add_argument("--lr-max-iter", type=positive_int, default=100)
    p.add_argument("--overwrite", action="store_true")
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="answer probabilities for new respondents -> Parquet (atomic)",
                       description="Encode new respondents with the prep plan and score them on Spark: one "
                                   "<target>__p_<answer> column per answer and <target>__answer per target.")
    p.add_argument("--prep", help="prep output whose plan encodes the data (default: the plan published "
                                  "with the export)")
    p.add_argument("--export", required=True)
    p.add_argument("--data", required=True, help="new respondents: CSV or Parquet (target columns not needed)")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["auto", "csv", "parquet"], default="auto")
    p.add_argument("--keep", help="comma-separated input columns to copy to the output (default: the id column, "
                                  "else every input column)")
    p.add_argument("--partitions", type=positive_int)
    p.add_argument("--model", choices=steps.MODEL_CHOICES, default="model",
                   help="answer with the model, its logistic regression (lr), or per target the one with the lower "
                        "validation log loss (best); recorded in <target>__model (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true")
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def _add_stream_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream-predict", help="Structured Streaming: answer probabilities for respondents as "
                                              "their JSON records land",
                       description="Each record is one JSON object per line (file line or Kafka message): the "
                                   "id column, answers by question column, optionally event_time (epoch ms). "
                                   "Encoded with the plan published with the export.")
    add_scoring_export_args(p)
    p.add_argument("--input", required=True, help="directory URI new record files land in, or kafka://host:port/topic")
    p.add_argument("--output", required=True, help="Parquet URI of the predictions (Spark file sink)")
    p.add_argument("--quarantine", help="Parquet URI of malformed records (default: <output>.quarantine)")
    p.add_argument("--batch-size", type=positive_int, default=4096)
    add_stream_args(p)
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def _add_stream_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream-monitor",
                       help="Structured Streaming: join later answers, quality per question per window",
                       description="Answers are JSON records like stream-predict's (the id, the target questions, "
                                   "event_time: when they were given, epoch ms); each question's accuracy, log "
                                   "loss and calibration per window go to --metrics.")
    p.add_argument("--export", required=True,
                   help="the export that made the predictions, or URI@alias (its plan's targets)")
    p.add_argument("--predictions", required=True, help="what `stream-predict --output` writes")
    p.add_argument("--answers", required=True, help="directory URI answer files land in, or kafka://host:port/topic")
    p.add_argument("--max-answer-delay-s", type=positive_float, default=86400.0,
                   help="answers given later than this after the prediction are not joined (default: %(default)s)")
    add_monitor_args(p)
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def _add_autopilot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("autopilot", help="watch the champion's live accuracy; retrain, check and promote when it falls",
                       description="The policy's metric is accuracy:<question> on stream-monitor's windows; the "
                                   "retraining data are the newest respondents of --records joined with their "
                                   "--answers, prepped with the champion's plan.")
    add_autopilot_args(p)
    p.add_argument("--records", required=True, help="the respondents' records the stream answers (stream-predict's input)")
    p.add_argument("--answers", required=True, help="the answers given later (stream-monitor's --answers)")
    _model_args(p)
    add_flags(p, ScalingConfig, **dataclasses.asdict(steps.SCALING))
    add_flags(p, LoopConfig, **dataclasses.asdict(steps.LOOP))
    add_spark_args(p, executor_memory_mb=EXECUTOR_MEMORY_MB)


def build_parser() -> JobParser:
    parser = JobParser(prog=PROG, description="The survey modelling job, step by step.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_example, _add_prep, _add_train, _add_evaluate, _add_predict, _add_stream_predict,
                _add_stream_monitor, _add_autopilot):
        add(sub)
    return parser


def cmd_example(args: argparse.Namespace) -> int:
    options = {"rows": args.rows, "questions": args.questions, "targets": args.targets, "seed": args.seed} \
        if args.name == "synthetic" else {}
    data_uri, spec_uri = synthetic.write_example(args.out, args.name, fmt=args.format, **options)
    print(json.dumps({"data": data_uri, "spec": spec_uri}))
    return 0


def cmd_prep(args: argparse.Namespace) -> int:
    parsed = schema.load_spec(args.spec)
    fmt, header = schema.preflight(parsed, args.data, args.format)
    prep.resolve_split(parsed, args.validation_fraction, args.seed, args.fold)
    prep.check_output(args.out, args.overwrite)   # before Spark: an existing or foreign target
    spark = job_session(args, PROG, 2)
    try:
        plan = prep.run_prep(spark, parsed, args.data, args.out, fmt=fmt, header=header, files=args.files,
                             overwrite=args.overwrite, validation_fraction=args.validation_fraction, seed=args.seed,
                             fold=args.fold)
    finally:
        spark.stop()
    print(json.dumps({"out": args.out, "rows": plan["rows"], "inputs": len(plan["inputs"]),
                      "targets": [t["column"] for t in plan["targets"]]}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    configs = training_configs(args)
    scaling = configs["scaling"]
    directory = prep.prep_dir(args.prep)   # the plan and the splits from one version
    plan = prep.read_plan(directory)
    files = hdfs_io.list_data_files(hdfs_io.join(directory, "train"))
    if len(files) < scaling.num_workers:
        raise ValueError(f"{args.prep}/train has {len(files)} Parquet file(s) but --workers {scaling.num_workers} "
                         "each need one: prep again with --files >= workers")
    spark = job_session(args, PROG, scaling.num_nodes)
    try:
        result = steps.train(spark.sparkContext, plan, directory, _model_options(args), **configs)
    finally:
        spark.stop()
    print_train_result(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    directory = prep.prep_dir(args.prep)   # the plan and the splits from one version
    plan = prep.read_plan(directory)
    steps.check_export(plan, args.export)
    spark = job_session(args, PROG, 2)
    try:
        steps.evaluate(spark, plan, directory, args.export, args.out, overwrite=args.overwrite, lr_reg=args.lr_reg,
                       lr_max_iter=args.lr_max_iter)
    finally:
        spark.stop()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    plan = prep.read_plan(args.prep) if args.prep else steps.export_plan(args.export)
    steps.choose_heads(plan, steps.check_export(plan, args.export), args.model, args.export)
    keep = [c.strip() for c in args.keep.split(",") if c.strip()] if args.keep else None
    steps.check_inputs(plan, args.data, args.format, keep)
    spark = job_session(args, PROG, 2)
    try:
        report = steps.predict(spark, plan, args.export, args.data, args.out, fmt=args.format, keep=keep,
                               overwrite=args.overwrite, partitions=args.partitions, model=args.model)
    finally:
        spark.stop()
    print(json.dumps(report, sort_keys=True))
    return 0


def _check_export(export: str) -> None:
    """An export URI, or URI@alias (the version it points to now)."""
    from tfos_jobs.registry import resolver
    directory = resolver(export)()
    steps.check_export(steps.export_plan(directory), directory)


def cmd_stream_predict(args: argparse.Namespace) -> int:
    from tfos_jobs.survey import stream   # lazy: ~2 s of streaming imports the other commands skip
    _check_export(args.export)   # before Spark: not an export is the error
    return run_scoring_stream(args, PROG, lambda spark, quarantine, config: stream.stream_predict(
        spark, args.export, args.input, args.output, quarantine, config, batch_size=args.batch_size,
        follow_s=args.follow_s))


def cmd_stream_monitor(args: argparse.Namespace) -> int:
    from tfos_jobs.survey import stream   # lazy, as in cmd_stream_predict
    _check_export(args.export)
    return run_monitor_stream(args, PROG, lambda spark, labeled, config, windows: stream.stream_monitor(
        spark, args.export, args.predictions, args.answers, labeled, args.metrics, config,
        max_delay_s=args.max_answer_delay_s, **windows))


def cmd_autopilot(args: argparse.Namespace) -> int:
    from tfos_jobs.survey.autopilot import SurveyRetraining

    def check(policy):
        if not policy.metric.startswith("accuracy:"):
            raise ValueError(f"{args.policy}: a survey model is judged by accuracy:<question>, not {policy.metric!r}")
    scaling, loop = from_flags(ScalingConfig, args), from_flags(LoopConfig, args)
    return run_autopilot(args, PROG, scaling.num_nodes, lambda spark, policy: SurveyRetraining(
        spark, policy, args.records, args.answers, args.metrics, args.work, model=_model_options(args),
        scaling=scaling, loop=loop), check)


COMMANDS = {"example": cmd_example, "prep": cmd_prep, "train": cmd_train, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "stream-predict": cmd_stream_predict, "stream-monitor": cmd_stream_monitor,
            "autopilot": cmd_autopilot}


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
