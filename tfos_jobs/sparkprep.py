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
from hdfs_io.publishing import POINTER

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


def data_dir(uri: str, what: str = "input") -> str:
    """What a reader without the publish protocol (Spark, pyarrow) must be given for the data set or
    file ``uri``: the current version of a published output (``hdfs_io.resolve``), the same path in
    the current version for a path inside one (``<prep>/valid``), else ``uri`` itself (an output
    written before the protocol, raw input). ``FileNotFoundError`` naming ``what`` if there is none."""
    try:
        found = hdfs_io.info(uri)   # follows a path inside a published output
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {uri} does not exist") from None
    if found.is_dir and hdfs_io.exists(hdfs_io.join(found.uri, POINTER)):
        return hdfs_io.resolve(found.uri)
    return found.uri


def prep_dir(prep_uri: str, marker: str, rerun: str) -> str:
    """The one directory every part of the prep output ``prep_uri`` is read from (resolve it once, so
    a reader never mixes two versions): its current version, or ``prep_uri`` itself for a prep written
    before the publish protocol (its ``marker`` file, written last, present). Otherwise one line that
    says to ``rerun`` the prep."""
    try:
        return hdfs_io.resolve(prep_uri)
    except hdfs_io.NotPublishedError as exc:
        legacy = hdfs_io.exists(hdfs_io.join(prep_uri, marker)) and \
            not hdfs_io.exists(hdfs_io.join(prep_uri, POINTER))
        if legacy:
            return prep_uri
        raise hdfs_io.NotPublishedError(prep_uri, f"{exc.detail or 'no complete prep output in it'}; {rerun}") \
            from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{prep_uri} does not exist: {rerun}") from None


def check_prep_target(uri: str, kind: str, marker: str, overwrite: bool) -> None:
    """Before any work: may a prep of ``kind`` be published at ``uri``? Nothing there; or, with
    ``overwrite``, a prep of the same kind (either layout: ``marker`` is its report/plan) or an empty
    directory. Another kind of output is refused (:class:`hdfs_io.WrongKindError`), and so is a
    directory that is not an output at all (a model dir, ...): publishing would delete its files."""
    if not hdfs_io.exists(uri):
        return
    if not overwrite:
        raise FileExistsError(f"output {uri} already exists (use --overwrite to replace it)")
    if hdfs_io.exists(hdfs_io.join(uri, POINTER)):
        info = hdfs_io.published_info(uri)
        if info.kind not in (None, kind):
            raise hdfs_io.WrongKindError(uri, info.kind, kind)
        if info.kind == kind or hdfs_io.exists(hdfs_io.join(info.data_uri, marker)):
            return
    elif hdfs_io.exists(hdfs_io.join(uri, marker)) or \
            all(e.name.startswith(("_v-", ".")) for e in hdfs_io.ls(uri)):  # a legacy prep, or empty
        return
    raise FileExistsError(f"{uri} is not a {kind} output (no {marker}): refusing to replace it with one "
                          "(wrong --output? delete it first if you really mean it)")


def first_failure(checks: list[tuple[Any, Any, Any]], passes: Any = None) -> tuple[Any, Any]:
    """``(reason_code, reason)`` columns: the first failing check's code and message, null when all pass.

    ``checks`` is a list of ``(bad_condition, code, message)``; ``code`` and ``message`` may be
    strings or string columns. A null condition counts as passing. ``passes``, when given, is a cheap
    condition that is true only for rows that pass every check: such rows skip the checks (each of the
    two columns evaluates them all for a good row).
    """
    from pyspark.sql import functions as F

    def as_col(value):
        return F.lit(value) if isinstance(value, str) else value
    if not checks:
        return F.lit(None).cast("string"), F.lit(None).cast("string")
    code = F.coalesce(*[F.when(cond, as_col(c)) for cond, c, _ in checks])
    message = F.coalesce(*[F.when(cond, as_col(m)) for cond, _, m in checks])
    if passes is not None:
        skip = F.coalesce(passes, F.lit(False))
        code, message = F.when(~skip, code), F.when(~skip, message)
    return code, message


def hash_split(key_columns: Sequence[Any], validation_fraction: float, seed: int = 0, fold: int = 0) -> Any:
    """A boolean column, true for the validation split: a hash of ``key_columns`` (deterministic across
    runs, partitionings and clusters) in the ``fold``-th slice of width ``validation_fraction``, so that
    folds 0..k-1 with fraction 1/k are the disjoint validation sets of k-fold cross-validation."""
    from pyspark.sql import functions as F
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
    width = int(round(validation_fraction * SPLIT_BUCKETS))
    if fold < 0 or (fold + 1) * width > SPLIT_BUCKETS:
        raise ValueError(f"fold {fold} of width {validation_fraction} does not fit in [0, 1)")
    keys = [F.col(k) if isinstance(k, str) else k for k in key_columns]
    bucket = F.pmod(F.xxhash64(F.lit(int(seed)), *keys), F.lit(SPLIT_BUCKETS))
    return (bucket >= F.lit(fold * width)) & (bucket < F.lit((fold + 1) * width))


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


def write_parquet(df: Any, uri: str, overwrite: bool = False, partitions: int | None = None,
                  kind: str | None = None) -> str:
    """Publish a DataFrame as Parquet at ``uri`` (``hdfs_io.staged_output``): Spark writes a new
    version directory, which readers see only once every task succeeded and the pointer switched."""
    with hdfs_io.staged_output(uri, overwrite=overwrite, kind=kind) as version:
        write_part(df, version, partitions, mode="overwrite")
    return uri


def write_part(df: Any, uri: str, partitions: int | None = None, mode: str = "errorifexists") -> str:
    """Spark writes a DataFrame as Parquet into ``uri``, a directory inside a version being staged
    (a prep's ``train``, ...: the version is invisible until published, so the part needs no staging of
    its own), complete with ``_SUCCESS``."""
    if partitions:
        df = df.repartition(partitions)
    df.write.mode(mode).parquet(spark_uri(uri))
    success = hdfs_io.join(uri, hdfs_io.SUCCESS)
    if not hdfs_io.exists(success):   # Spark writes it unless told not to
        with hdfs_io.open(success, "wb"):
            pass
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
