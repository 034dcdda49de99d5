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
    ``labeled``, ``label`` (float32). Batch prep and streaming scoring both encode with this.
    """
    from pyspark.sql import functions as F
    if hash_buckets < 2:
        raise ValueError(f"hash_buckets must be at least 2, got {hash_buckets}")
    line = F.regexp_replace(F.col(line_column), "\r$", "")
    source = F.col("source") if "source" in df.columns else F.lit("")
    df = df.select(line.alias("line"), source.alias("source"), *carry)
    fields = F.split(F.col("line"), "\t", -1)
    df = df.withColumn("_f", fields)
    offset = 1 if labeled else 0
    expected = schema.NUM_FIELDS - (0 if labeled else 1)

    def field(i):
        return F.get(F.col("_f"), i)
    checks = [(F.size("_f") != expected, "field_count",
               F.concat(F.lit(f"expected {expected} tab-separated fields, found "), F.size("_f").cast("string")))]
    if labeled:
        checks.append((~field(0).rlike(schema.LABEL_PATTERN), "label",
                       F.concat(F.lit("label must be 0 or 1, found '"), F.substring(field(0), 1, 20), F.lit("'"))))
    for i, name in enumerate(schema.INTEGER):
        value = field(offset + i)
        checks.append(((value != "") & ~value.rlike(schema.INTEGER_PATTERN), name,
                       F.concat(F.lit(f"{name} is not an integer: '"), F.substring(value, 1, 40), F.lit("'"))))
    for j, name in enumerate(schema.CATEGORICAL):
        value = field(offset + schema.NUM_INTEGER + j)
        checks.append(((value != "") & ~value.rlike(schema.CATEGORICAL_PATTERN), name,
                       F.concat(F.lit(f"{name} is not a hex string: '"), F.substring(value, 1, 40), F.lit("'"))))
    code, message = sparkprep.first_failure(checks, passes=F.col("line").rlike(schema.line_pattern(labeled)))
    columns = [F.col("line"), F.col("source"), code.alias("reason_code"), message.alias("reason"), *carry]
    if labeled:
        columns.append(field(0).try_cast("float").alias(schema.LABEL))
    for i, name in enumerate(schema.INTEGER):
        raw = F.when(field(offset + i) != "", field(offset + i)).try_cast("bigint").cast("double")
        columns.append(F.coalesce(F.signum(raw) * F.log1p(F.abs(raw)), F.lit(0.0)).cast("float").alias(name))
        columns.append(raw.isNull().cast("float").alias(name + schema.MISSING_SUFFIX))
    for j, name in enumerate(schema.CATEGORICAL):
        value = F.lower(field(offset + schema.NUM_INTEGER + j))
        hashed = F.pmod(F.xxhash64(F.lit(j), value), F.lit(hash_buckets - 1)) + 1
        columns.append(F.when((value == "") | value.isNull(), F.lit(0)).otherwise(hashed).cast("bigint").alias(name))
    return df.select(*columns)


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

