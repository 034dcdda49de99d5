"""What every job's command line shares: argument types, Spark options, the session and the error
contract (bad input: one line and exit 2; a failed run: the error and exit 1; never a Spark traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

from tfos_jobs.config import (DROPOUT_RATE, FRACTION, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT,
                              POSITIVE_INT, Kind, LoopConfig, RunConfig, ScalingConfig, from_flags)
from tfos_jobs.spark import java_version, local_cluster_master, spark_session


class JobParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag (``prog cmd: error: argument --x: ...``),
    exit 2; the usage stays one ``--help`` away. Subcommand parsers inherit the class."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def bounded_number(text: str, parse: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> Any:
    """``parse(text)`` if it is finite and ``ok``; otherwise argparse's one-line error ``must be <what>``."""
    return Kind(what, parse, ok)(text)


# Argument types: the configs' kinds, so a flag and a library keyword are checked by the same code.
positive_int = POSITIVE_INT
non_negative_int = NON_NEGATIVE_INT
positive_float = POSITIVE_FLOAT
non_negative_float = NON_NEGATIVE_FLOAT
fraction = FRACTION
dropout_rate = DROPOUT_RATE


def layer_sizes(text: str) -> tuple[int, ...]:
    """``256,128`` -> (256, 128)."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,128, got {text!r}")
    return sizes


def add_spark_args(parser: argparse.ArgumentParser, executor_memory_mb: int = 2048) -> None:
    parser.add_argument("--master", help="Spark master (default: spark-submit's, else $TFOS_SPARK_MASTER, "
                                         "else local-cluster with enough executors)")
    parser.add_argument("--executor-memory-mb", type=positive_int, default=executor_memory_mb,
                        help="memory per local-cluster executor (default: %(default)s)")


def job_session(args: argparse.Namespace, prog: str, executors: int) -> Any:
    """The SparkSession for one command: ``--master``, else spark-submit's (``spark_session`` reads
    it once its gateway is up), else ``$TFOS_SPARK_MASTER``, else a local-cluster of ``executors``."""
    java_version()
    master = args.master
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not master and not submitted and not os.environ.get("TFOS_SPARK_MASTER"):
        master = local_cluster_master(executors, memory_mb=args.executor_memory_mb)
    return spark_session(master, app_name=f"{prog}-{args.command}")


def trigger(text: str) -> Any:
    """``--trigger``: seconds between micro-batches, or ``available-now``."""
    from tfos_jobs.streaming.pipeline import AVAILABLE_NOW   # lazy: ~3 s of imports the other commands skip
    return AVAILABLE_NOW if text == AVAILABLE_NOW else Kind(f"positive seconds or {AVAILABLE_NOW!r}", float,
                                                             lambda v: v > 0)(text)


def add_scoring_export_args(parser: argparse.ArgumentParser) -> None:
    """The export a scoring stream uses: a URI, or a registered model's alias that it follows."""
    parser.add_argument("--export", required=True, help="the export URI, or a registered model's alias to follow "
                                                        "(URI@champion: a promotion switches the stream to it)")
    parser.add_argument("--follow-s", type=POSITIVE_FLOAT, default=30.0,
                        help="with URI@alias: look for a promotion this often (default: %(default)s)")


def add_stream_args(parser: argparse.ArgumentParser) -> None:
    """What every streaming command shares (:class:`~tfos_jobs.streaming.pipeline.StreamConfig`)."""
    parser.add_argument("--checkpoint", required=True, help="URI of the queries' checkpoints (re-use it to "
                                                            "resume where the last run stopped)")
    parser.add_argument("--trigger", type=trigger, default=10.0,
                        help="seconds between micro-batches, or 'available-now': process what is there and exit "
                             "(default: %(default)s)")
    parser.add_argument("--max-files-per-trigger", type=POSITIVE_INT,
                        help="files (Kafka: records) per micro-batch at most")
    parser.add_argument("--watermark-s", type=NON_NEGATIVE_FLOAT, default=600.0,
                        help="event-time lateness accepted before state is dropped (default: %(default)s)")
    parser.add_argument("--state-partitions", type=POSITIVE_INT,
                        help="partitions of the stateful queries' state, fixed at a checkpoint's first run "
                             "(default: the executors' cores)")
    parser.add_argument("--run-for-s", type=POSITIVE_FLOAT,
                        help="stop gracefully after this long (default: until interrupted, or the end of "
                             "'available-now')")


def window_pairs(text: str) -> tuple:
    try:
        pairs = tuple(tuple(float(x) for x in item.split(":")) for item in text.split(",") if item.strip())
        if not pairs or any(len(p) != 2 or not 0 < p[1] <= p[0] for p in pairs):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LENGTH_S:SLIDE_S[,...] with 0 < slide <= length, got {text!r}") from None
    return pairs


def add_monitor_args(parser: argparse.ArgumentParser) -> None:
    """What every monitoring command shares: where the labeled rows and the metrics go, and the windows."""
    parser.add_argument("--labeled", help="Parquet URI of the labeled predictions (default: <predictions>.labeled)")
    parser.add_argument("--metrics", required=True, help="URI of the metrics records (JSON lines)")
    parser.add_argument("--sliding", type=window_pairs, default=((3600.0, 900.0),),
                        help="sliding windows LENGTH_S:SLIDE_S[,...] (default: 3600:900)")
    parser.add_argument("--half-life-s", type=POSITIVE_FLOAT, default=3600.0,
                        help="fading window (default: %(default)s)")
    parser.add_argument("--tilted", choices=["calendar", "logarithmic"], default="calendar",
                        help="calendar: 4 x 15 min, 24 h, 31 days; logarithmic: 8 levels from 15 min, doubling")
    parser.add_argument("--quiet", action="store_true", help="no console line per window")
    add_stream_args(parser)


def run_monitor_stream(args: argparse.Namespace, prog: str, start: Callable[..., Any]) -> int:
    """A job's monitoring command (``stream-monitor``): ``start(spark, labeled_uri, config,
    windows)`` starts the job's labeling and monitoring queries (``windows``: the keyword arguments
    of :func:`~tfos_jobs.streaming.pipeline.start_monitor`); they run as :func:`run_stream` says."""
    from tfos_jobs.streaming.windows import CALENDAR, WindowSpec, logarithmic   # lazy, as in trigger()
    config = stream_config(args)
    windows = {"sliding": args.sliding, "console": not args.quiet, "spec": WindowSpec(
        half_life_s=args.half_life_s, tilted=CALENDAR if args.tilted == "calendar" else logarithmic(900, 8))}
    spark = job_session(args, prog, 2)
    try:
        run_stream(start(spark, args.labeled or args.predictions.rstrip("/") + ".labeled", config, windows), args)
    finally:
        spark.stop()
    print(json.dumps({"metrics": args.metrics, "checkpoint": config.checkpoint}))
    return 0


def add_autopilot_args(parser: argparse.ArgumentParser) -> None:
    """What every job's ``autopilot`` command shares (its own data inputs come beside these)."""
    parser.add_argument("--policy", required=True, help="the retraining policy (YAML; see tfos_jobs.autopilot.policy)")
    parser.add_argument("--metrics", required=True, help="what `stream-monitor --metrics` writes")
    parser.add_argument("--work", required=True, help="URI for the retrainings' data, checkpoints and evaluations")
    parser.add_argument("--poll-s", type=POSITIVE_FLOAT, default=60.0, help="look this often (default: %(default)s)")
    parser.add_argument("--once", action="store_true", help="look once, act if called for, print the decision, exit")


def run_autopilot(args: argparse.Namespace, prog: str, executors: int, hooks: Callable[[Any, Any], Any],
                  check: Callable[[Any], None] = lambda policy: None) -> int:
    """A job's ``autopilot`` command: the policy read and ``check``-ed before Spark starts, then the
    loop with ``hooks(spark, policy)`` (:mod:`tfos_jobs.autopilot.loop`) until signalled, or one look."""
    from tfos_jobs.autopilot import policy as policies   # lazy, as in trigger()
    from tfos_jobs.autopilot.loop import Autopilot, run_until_signalled
    policy = policies.load(args.policy)
    check(policy)
    spark = job_session(args, prog, executors)
    try:
        return run_until_signalled(Autopilot(policy, hooks(spark, policy)), args.poll_s, once=args.once)
    finally:
        spark.stop()


def stream_config(args: argparse.Namespace) -> Any:
    from tfos_jobs.streaming.pipeline import StreamConfig   # lazy, as in trigger()
    return StreamConfig(checkpoint=absolute(args.checkpoint), trigger=args.trigger,
                        max_files_per_trigger=args.max_files_per_trigger, watermark_s=args.watermark_s,
                        state_partitions=args.state_partitions)


def run_scoring_stream(args: argparse.Namespace, prog: str, start: Callable[..., Any]) -> int:
    """A job's scoring stream command (``stream-score``, ``stream-predict``): ``start(spark, quarantine,
    config)`` starts the job's queries on a session of its own; they run as :func:`run_stream` says.
    The job checks ``--export`` before calling this, so that a wrong URI fails before Spark starts."""
    config = stream_config(args)
    spark = job_session(args, prog, 2)
    try:
        run_stream(start(spark, args.quarantine or args.output.rstrip("/") + ".quarantine", config), args)
    finally:
        spark.stop()
    print(json.dumps({"predictions": args.output, "checkpoint": config.checkpoint}))
    return 0


def run_stream(pipeline: Any, args: argparse.Namespace) -> None:
    """Run started queries until they end (available-now), ``--run-for-s`` passes, or SIGINT/SIGTERM;
    then stop them (a stopped query resumes from its checkpoint next time)."""
    import signal
    import threading
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = None if args.run_for_s is None else time.monotonic() + args.run_for_s
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if all(not q.isActive for q in pipeline.queries):
                break
            for q in pipeline.queries:
                if q.exception() is not None:
                    raise RuntimeError(f"streaming query {q.name} failed: {q.exception()}")
            stop.wait(1.0)
    finally:
        pipeline.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for q in pipeline.queries:
        if q.exception() is not None:
            raise RuntimeError(f"streaming query {q.name} failed: {q.exception()}")


def training_configs(args: argparse.Namespace) -> dict[str, Any]:
    """``scaling``, ``loop`` and ``run`` for a job's ``steps.train`` from the flags ``add_flags`` made,
    plus ``--model-dir`` and ``--export``."""
    return {"scaling": from_flags(ScalingConfig, args), "loop": from_flags(LoopConfig, args),
            "run": from_flags(RunConfig, args, model_dir=absolute(args.model_dir), export_uri=absolute(args.export))}


def absolute(uri: str | None) -> str | None:
    """A local path made absolute here: the TF nodes that write to it run in other directories."""
    return os.path.abspath(uri) if uri and "://" not in uri else uri


def print_train_result(result: Any) -> None:
    """The one JSON line a job's ``train`` prints (a :class:`~tfos_jobs.task.TrainResult`)."""
    print(json.dumps({"export": result.export_uri, "metrics": result.metrics, "steps": result.steps,
                      "attempts": result.attempts, "nodes": result.nodes}, sort_keys=True))


def run_command(prog: str, parser: argparse.ArgumentParser, commands: dict[str, Callable[[argparse.Namespace], int]],
                argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    try:
        return commands[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:   # bad input errors are ValueErrors
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:   # JavaNotFound, TrainingFailed (with the node's traceback), ...
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 1
