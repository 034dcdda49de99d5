"""The Spark interpreter of a :class:`~.spec.RecordEncoding`: columns over a DataFrame of records.

Used by batch prep and by batch and streaming scoring. Its twin for single requests is
:mod:`.arrays`; both follow Java's regular expressions (Spark's ``rlike``), where ``$`` also matches
before a line terminator that ends the field.
"""
from __future__ import annotations

from typing import Any

from tfos_jobs import sparkprep
from tfos_jobs.encoding.spec import HashedBucket, Number, RecordEncoding, SignedLog1p

# pyspark (heavy) is imported inside the functions.
FIELDS = "_fields"


def encode(df: Any, encoding: RecordEncoding, *, record_column: str = "value", carry: tuple = (),
           fast_path: bool = True) -> Any:
    """``line`` (the record without a trailing ``\\r``), ``source`` (``df``'s, or ""),
    ``reason_code``/``reason`` (null when good), the ``carry`` columns as they are, then the features
    in the encoding's order. ``fast_path``: try :meth:`~.spec.RecordEncoding.record_pattern` first, so
    a good record costs one match (the per-field checks run only for records that fail it)."""
    from pyspark.sql import functions as F
    line = F.regexp_replace(F.col(record_column), "\r$", "")
    source = F.col("source") if "source" in df.columns else F.lit("")
    df = df.select(line.alias("line"), source.alias("source"), *carry) \
        .withColumn(FIELDS, F.split(F.col("line"), encoding.separator, -1))
    passes = F.col("line").rlike(encoding.record_pattern()) if fast_path else None
    code, message = sparkprep.first_failure(checks(encoding), passes=passes)
    columns = [F.col("line"), F.col("source"), code.alias("reason_code"), message.alias("reason"), *carry]
    for feature in encoding.features:
        columns.extend(feature_columns(feature))
    return df.select(*columns)


def field(index: int) -> Any:
    from pyspark.sql import functions as F
    return F.get(F.col(FIELDS), index)


def checks(encoding: RecordEncoding) -> list:
    """``(bad_condition, code, message)`` per check, in order (:func:`sparkprep.first_failure`)."""
    from pyspark.sql import functions as F
    count = F.size(F.col(FIELDS))
    result = [(count != encoding.fields, "field_count",
               F.concat(F.lit(encoding.count_prefix()), count.cast("string")))]
    for rule in encoding.rules:
        value = field(rule.index)
        bad = ~value.rlike(f"^{rule.body}$")
        if rule.allow_empty:
            bad = (value != "") & bad
        result.append((bad, rule.code,
                       F.concat(F.lit(rule.message), F.substring(value, 1, rule.quote), F.lit("'"))))
    return result


def feature_columns(feature: Any) -> list:
    from pyspark.sql import functions as F
    value = field(feature.index)
    if isinstance(feature, Number):
        return [value.try_cast("float").alias(feature.name)]
    if isinstance(feature, SignedLog1p):
        raw = F.when(value != "", value).try_cast("bigint").cast("double")
        return [F.coalesce(F.signum(raw) * F.log1p(F.abs(raw)), F.lit(0.0)).cast("float").alias(feature.name),
                raw.isNull().cast("float").alias(feature.missing)]
    if isinstance(feature, HashedBucket):
        lowered = F.lower(value)
        hashed = F.pmod(F.xxhash64(F.lit(feature.salt), lowered), F.lit(feature.buckets - 1)) + 1
        return [F.when((lowered == "") | lowered.isNull(), F.lit(0)).otherwise(hashed).cast("bigint")
                .alias(feature.name)]
    raise TypeError(f"not a feature of an encoding: {feature!r}")
