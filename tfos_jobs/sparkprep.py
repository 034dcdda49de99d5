"""Generic Spark prep helpers shared by the jobs (CTR, survey): validation with reasons, quarantine,
bad-fraction limit, deterministic train/validation split and atomic Parquet output.

Validation is expressed as ``checks``: a list of ``(bad_condition, reason_code, message)`` Spark
columns; :func:`first_failure` turns them into a ``reason_code`` / ``reason`` pair (null for a good row)
so bad rows can be quarantined with the reason and counted by code, all in Spark SQL (no Python UDF).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import hdfs_io

# pyspark (heavy) is imported inside the functions that build Spark columns.
SPLIT_BUCKETS = 1_000_000


class BadInputError(ValueError):
    """Too large a fraction of the input rows was malformed (see the quarantine for the rows)."""


def spark_uri(uri: str) -> str:
    """A URI Spark reads and writes as meant: plain paths become ``file://`` (a cluster's default file
    system may be HDFS), ``s3://`` becomes ``s3a://``."""
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://"):]
    return uri


def first_failure(checks: list[tuple[Any, Any, Any]]) -> tuple[Any, Any]:
    """``(reason_code, reason)`` columns: the first failing check's code and message, null when all pass.

    ``checks`` is a list of ``(bad_condition, code, message)``; ``code`` and ``message`` may be
    strings or string columns. A null condition counts as passing.
    """
    from pyspark.sql import functions as F

    def as_col(value):
        return F.lit(value) if isinstance(value, str) else value
    if not checks:
        return F.lit(None).cast("string"), F.lit(None).cast("string")
    code = F.coalesce(*[F.when(cond, as_col(c)) for cond, c, _ in checks])
    message = F.coalesce(*[F.when(cond, as_col(m)) for cond, _, m in checks])
    return code, message


def hash_split(key_columns: Sequence[Any], validation_fraction: float, seed: int = 0) -> Any:
    """A boolean column, true for the validation split: a hash of ``key_columns`` (deterministic across
    runs, partitionings and clusters) compared with ``validation_fraction``."""
    from pyspark.sql import functions as F
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
    keys = [F.col(k) if isinstance(k, str) else k for k in key_columns]
    bucket = F.pmod(F.xxhash64(F.lit(int(seed)), *keys), F.lit(SPLIT_BUCKETS))
    return bucket < F.lit(int(round(validation_fraction * SPLIT_BUCKETS)))


def check_bad_fraction(total: int, bad: int, limit: float, by_reason: dict[str, int] | None = None,
                       quarantine_uri: str | None = None, what: str = "input") -> float:
    """Raise :class:`BadInputError` when ``bad / total`` exceeds ``limit``; return the fraction."""
    if total == 0:
        raise BadInputError(f"{what}: no rows at all")
    fraction = bad / total
    if fraction > limit:
        reasons = ", ".join(f"{code}: {n}" for code, n in sorted((by_reason or {}).items(), key=lambda kv: -kv[1])[:5])
        where = f"; the rows and their reasons are in {quarantine_uri}" if quarantine_uri else ""
        raise BadInputError(f"{what}: {bad} of {total} rows ({fraction:.2%}) are malformed, above the limit of "
                            f"{limit:.2%} (--max-bad-fraction){' (' + reasons + ')' if reasons else ''}{where}")
    return fraction


def count_by(df: Any, column: str) -> dict:
    """``{value: count}`` for one column (small cardinality expected)."""
    return {row[0]: row[1] for row in df.groupBy(column).count().collect()}


def write_parquet(df: Any, uri: str, overwrite: bool = False, partitions: int | None = None) -> str:
    """Write a DataFrame as Parquet to ``uri`` atomically: Spark writes into a hidden sibling that is
    committed (renamed, or copied on S3) only when every task succeeded; ``_SUCCESS`` marks it."""
    if partitions:
        df = df.repartition(partitions)
    with hdfs_io.staged_output(uri, overwrite=overwrite) as tmp:
        df.write.mode("overwrite").parquet(spark_uri(tmp))
    return uri


def write_json(obj: Any, uri: str) -> str:
    """A small JSON report, written atomically."""
    with hdfs_io.open(uri, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
    return uri


def read_json(uri: str, missing: str | None = None) -> Any:
    """A JSON file's content; with ``missing``, a file that does not exist raises FileNotFoundError(missing)."""
    if missing is not None and not hdfs_io.exists(uri):
        raise FileNotFoundError(missing)
    with hdfs_io.open(uri, "r") as handle:
        return json.load(handle)
