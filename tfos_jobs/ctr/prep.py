"""Spark prep of Criteo-format click logs (plain text or gzip, any storage URI Spark reads).

Every line is validated (field count, label, integers, categorical hex values); a malformed line goes
to ``<out>/quarantine`` with the file it came from and the reason, and is counted by reason. The job
fails (:class:`~tfos_jobs.sparkprep.BadInputError`) only when the malformed fraction exceeds the limit.
Good lines are transformed (signed ``log1p`` integers with missing flags, hashed categoricals),
split deterministically by a hash of the line, and written as Parquet:

``train/``, ``valid/``, ``quarantine/`` and ``prep.json`` (counts and the transform settings that
training and scoring read back), published at ``<out>`` as one unit (:func:`hdfs_io.staged_output`,
kind ``ctr-prep``): all written into a new version directory, the bad-fraction check passed, then
switched to in one step. A failed run (too many bad lines, an exception) leaves the previous prep as it
was; the quarantine of an over-limit input goes to ``<out>.rejected`` instead. Readers resolve ``<out>``
once (:func:`prep_dir`, :func:`read_report`) and read every part from that version.
"""
from __future__ import annotations

import time
from typing import Any

import hdfs_io
from tfos_jobs import sparkprep
from tfos_jobs.ctr import schema
from tfos_jobs.encoding import spark_columns

# pyspark (heavy) is imported inside the functions that build Spark columns.
REPORT_FILE = "prep.json"
KIND = "ctr-prep"
PARTS = ("train", "valid", "quarantine")
RERUN = "re-run `tfos-ctr prep` (with --overwrite) to re-create it"
DEFAULT_BUCKETS = 10_000


def parse(df: Any, hash_buckets: int = DEFAULT_BUCKETS, labeled: bool = True, line_column: str = "value",
          carry: tuple = ()) -> Any:
    """Validate and transform a DataFrame of raw lines (``spark.read.text``'s ``value`` column).

    Returns a DataFrame with ``line``, ``source``, ``reason_code``, ``reason`` (null when good), the
    ``carry`` columns of ``df`` as they are, the feature columns (:data:`schema.FEATURES`) and, when
    ``labeled``, ``label`` (float32). Batch prep and batch and streaming scoring all encode with this;
    the online server runs the same :func:`schema.encoding` on single records.
    """
    return spark_columns.encode(df, schema.encoding(hash_buckets, labeled), record_column=line_column, carry=carry)


def read_lines(spark: Any, input_uri: str) -> Any:
    """Raw lines (``value``) and their file (``source``) of the Criteo files under ``input_uri`` (a file,
    a directory or a glob; ``.gz`` files are decompressed)."""
    from pyspark.sql import functions as F
    check_input(input_uri)
    path = input_uri if any(ch in input_uri for ch in "*?[") else sparkprep.data_dir(input_uri)
    return spark.read.text(sparkprep.spark_uri(path)).select("value", F.col("_metadata.file_path").alias("source"))


def rejected_uri(output_uri: str) -> str:
    """Where the quarantine of an over-limit input goes (beside ``output_uri``: a failed prep leaves
    the output itself untouched)."""
    return output_uri.rstrip("/") + ".rejected"


def check_output(output_uri: str, overwrite: bool) -> None:
    """Before any work: refuse an existing output without ``overwrite``, and any output that is not a
    CTR prep (an export, a model dir, ...) even with it."""
    sparkprep.check_prep_target(output_uri, KIND, REPORT_FILE, overwrite)


def prep(spark: Any, input_uri: str, output_uri: str, *, validation_fraction: float = 0.1,
         hash_buckets: int = DEFAULT_BUCKETS, max_bad_fraction: float = 0.01, seed: int = 0,
         partitions: int | None = None, overwrite: bool = False) -> dict:
    """Run the prep (see module doc); returns the report dict (also written to ``prep.json``, its part
    URIs inside the published version)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    started = time.monotonic()
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    check_output(output_uri, overwrite)
    raw = read_lines(spark, input_uri)
    parsed = parse(raw, hash_buckets=hash_buckets)
    parsed = parsed.withColumn("_valid", sparkprep.hash_split(["line"], validation_fraction, seed))
    parsed = parsed.persist(StorageLevel.DISK_ONLY)
    try:
        counts = {(r["reason_code"], r["_valid"]): r["count"]
                  for r in parsed.groupBy("reason_code", "_valid").count().collect()}
        total = sum(counts.values())
        if total == 0:
            raise sparkprep.BadInputError(f"{input_uri}: no lines to read")
        by_reason = {}
        for (code, _), n in counts.items():
            if code is not None:
                by_reason[code] = by_reason.get(code, 0) + n
        bad = sum(by_reason.values())
        quarantine = parsed.where(F.col("reason_code").isNotNull()) \
            .select("source", "reason_code", "reason", "line").coalesce(1)
        if bad / total > max_bad_fraction:   # fails below; the rows go beside the output, never into it
            rejected = rejected_uri(output_uri)
            sparkprep.write_parquet(quarantine, rejected, overwrite=True, kind="ctr-rejected")
            sparkprep.check_bad_fraction(total, bad, max_bad_fraction, by_reason, rejected, what=input_uri)
        good = parsed.where(F.col("reason_code").isNull())
        columns = schema.FEATURES + [schema.LABEL]
        with hdfs_io.staged_output(output_uri, overwrite=overwrite, kind=KIND) as version:
            uris = {part: hdfs_io.join(version, part) for part in PARTS}
            sparkprep.write_part(quarantine, uris["quarantine"])
            sparkprep.write_part(good.where(~F.col("_valid")).select(*columns), uris["train"], partitions)
            sparkprep.write_part(good.where(F.col("_valid")).select(*columns), uris["valid"], partitions)
            report = {
                "input": input_uri, "output": output_uri, "rows": total, "good": total - bad, "bad": bad,
                "bad_fraction": bad / total, "bad_by_reason": by_reason, "max_bad_fraction": max_bad_fraction,
                "train_rows": counts.get((None, False), 0), "valid_rows": counts.get((None, True), 0),
                "validation_fraction": validation_fraction, "seed": seed, "hash_buckets": hash_buckets,
                "features": schema.FEATURES, "label": schema.LABEL, **uris,
                "seconds": round(time.monotonic() - started, 2),
            }
            report["rows_per_s"] = total / max(report["seconds"], 1e-9)
            sparkprep.write_json(report, hdfs_io.join(version, REPORT_FILE))
    finally:
        parsed.unpersist()
    return report


def prep_dir(prep_uri: str) -> str:
    """The directory of the prep's current version (see :func:`sparkprep.prep_dir`)."""
    return sparkprep.prep_dir(prep_uri, REPORT_FILE, RERUN)


def read_report(prep_uri: str) -> dict:
    """The prep's report, its ``train``/``valid``/``quarantine`` URIs in the version it was read from."""
    directory = prep_dir(prep_uri)
    uri = hdfs_io.join(directory, REPORT_FILE)
    report = sparkprep.read_json(uri, missing=f"{prep_uri} is not a prep output: {uri} does not exist ({RERUN})")
    report.update({part: hdfs_io.join(directory, part) for part in PARTS})
    return report


def check_input(input_uri: str) -> None:
    if any(ch in input_uri for ch in "*?["):
        if not hdfs_io.glob(input_uri):
            raise FileNotFoundError(f"input {input_uri} matches no file")
    elif not hdfs_io.exists(input_uri):
        raise FileNotFoundError(f"input {input_uri} does not exist")

