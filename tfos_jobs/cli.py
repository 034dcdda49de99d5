"""What every job's command line shares: argument types, Spark options, the session and the error
contract (bad input: one line and exit 2; a failed run: the error and exit 1; never a Spark traceback).
"""
import argparse
import math
import os
import sys


class JobParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag (``prog cmd: error: argument --x: ...``),
    exit 2; the usage stays one ``--help`` away. Subcommand parsers inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def bounded_number(text, parse, what, ok):
    """``parse(text)`` if it is finite and ``ok``; otherwise argparse's one-line error ``must be <what>``."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text):
    return bounded_number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text):
    """``--steps``: 0 means "derive from --epochs"; a negative count is a typo, not a request."""
    return bounded_number(text, int, "a non-negative integer", lambda v: v >= 0)


def positive_float(text):
    """``--epochs``, ``--learning-rate``: finite and above zero (``nan`` and ``inf`` parse as floats)."""
    return bounded_number(text, float, "a positive finite number", lambda v: v > 0)


def non_negative_float(text):
    """Regularization strengths: 0 turns them off."""
    return bounded_number(text, float, "a non-negative finite number", lambda v: v >= 0)


def fraction(text):
    """A share of rows in [0, 1] (validation split, malformed lines)."""
    return bounded_number(text, float, "between 0 and 1", lambda v: 0 <= v <= 1)


def dropout_rate(text):
    return bounded_number(text, float, "in [0, 1)", lambda v: 0 <= v < 1)


def layer_sizes(text):
    """``256,128`` -> (256, 128)."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,128, got {text!r}")
    return sizes


def add_spark_args(parser, executor_memory_mb=2048):
    parser.add_argument("--master", help="Spark master (default: spark-submit's, else $TFOS_SPARK_MASTER, "
                                         "else local-cluster with enough executors)")
    parser.add_argument("--executor-memory-mb", type=positive_int, default=executor_memory_mb,
                        help="memory per local-cluster executor (default: %(default)s)")


def job_session(args, prog, executors):
    """The SparkSession for one command: ``--master``, else spark-submit's (``spark_session`` reads
    it once its gateway is up), else ``$TFOS_SPARK_MASTER``, else a local-cluster of ``executors``."""
    from tfos_jobs.spark import java_version, local_cluster_master, spark_session
    java_version()
    master = args.master
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not master and not submitted and not os.environ.get("TFOS_SPARK_MASTER"):
        master = local_cluster_master(executors, memory_mb=args.executor_memory_mb)
    return spark_session(master, app_name=f"{prog}-{args.command}")


def run_command(prog, parser, commands, argv=None):
    args = parser.parse_args(argv)
    try:
        return commands[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:   # bad input errors are ValueErrors
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:   # JavaNotFound, TrainingFailed (with the node's traceback), ...
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 1
