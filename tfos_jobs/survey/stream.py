"""The survey job on a stream: respondents answered as their records land (:mod:`tfos_jobs.streaming`).

A record is one JSON object per line (a file line or a Kafka message): the respondent's id (the
plan's id column, else ``"id"``), their answers by question column, and optionally ``event_time``
(epoch milliseconds; the time Spark read the record otherwise). Answers are encoded by the batch
prep's own :func:`tfos_jobs.survey.prep.transform` with the plan published with the export, and
scored by :func:`tfos_jobs.survey.steps.score_respondents`, as ``tfos-survey predict`` does. A line
that is not a JSON object, has no id or a bad event time goes to the quarantine with its reason;
unknown or missing answers are encoded as batch prediction encodes them (as missing), not refused.
"""
from __future__ import annotations

from typing import Any

from tfos_jobs.streaming import pipeline
from tfos_jobs.streaming.pipeline import Pipeline, StreamConfig
from tfos_jobs.survey import prep, steps

EVENT_TIME = "event_time"


def id_column(plan: dict) -> str:
    return plan.get("id") or "id"


def encode_records(lines: Any, plan: dict) -> Any:
    """``id``, ``event_time``, ``reason_code``/``reason`` (null when good), ``source``, ``line`` and the
    features of each JSON record (``value``) of a :func:`~tfos_jobs.streaming.pipeline.read_lines` stream."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType
    rid = id_column(plan)
    questions = list(dict.fromkeys(f["column"] for f in plan["features"]))
    fields = list(dict.fromkeys([rid, EVENT_TIME, *questions]))
    # every answer as text, as batch prep reads a CSV: codes ("refused", 98) compare as written
    record = F.from_json("value", StructType([StructField(c, StringType()) for c in fields]))
    df = lines.select(F.col("value").alias("__line"), F.col("source").alias("__source"),
                      F.json_object_keys("value").isNull().alias("__not_object"), record.alias("__r"))
    ts = F.col("__r")[EVENT_TIME]
    event_time = F.when(ts.isNull(), F.current_timestamp()).otherwise(F.timestamp_millis(ts.try_cast("bigint")))
    df = df.select("__line", "__source", "__not_object", F.col("__r")[rid].alias("__id"),
                   F.substring(F.coalesce(ts, F.lit("")), 1, 40).alias("__ts"), event_time.alias("__time"),
                   *[prep.canonical_col_of(F.col("__r")[c]).alias(c) for c in questions])
    carried = ["__line", "__source", "__not_object", "__id", "__ts", "__time"]
    encoded = prep.transform(df, plan, with_labels=False, keep=carried)
    bad_id = F.col("__id").isNull() | (F.trim(F.col("__id")) == "")
    code = (F.when(F.col("__not_object"), F.lit("record")).when(bad_id, F.lit("id"))
            .when(F.col("__time").isNull(), F.lit(EVENT_TIME)))
    reason = (F.when(F.col("__not_object"), F.lit("the record is not a JSON object"))
              .when(bad_id, F.lit(f"the record has no '{rid}' (respondent id)"))
              .when(F.col("__time").isNull(), F.concat(F.lit(f"{EVENT_TIME} is not epoch milliseconds: '"),
                                                       F.col("__ts"), F.lit("'"))))
    features = [c for c in encoded.columns if c not in carried]
    return encoded.select(F.col("__id").alias("id"), F.col("__time").alias("event_time"), code.alias("reason_code"),
                          reason.alias("reason"), F.col("__source").alias("source"), F.col("__line").alias("line"),
                          *features)


def stream_predict(spark: Any, export_uri: str, input_uri: str, output_uri: str, quarantine_uri: str,
                   config: StreamConfig, batch_size: int = 4096) -> Pipeline:
    """Answer probabilities for the respondents whose records land at ``input_uri`` (a directory or
    ``kafka://host:port/topic``), with the plan published with the export."""
    plan = steps.export_plan(export_uri)
    steps.check_export(plan, export_uri)
    encoded = encode_records(pipeline.read_lines(spark, input_uri, config), plan)

    def score(good):
        return steps.score_respondents(good, plan, export_uri, keep=["id", "event_time"], batch_size=batch_size)
    return pipeline.start_scoring(encoded, score=score, output_uri=output_uri, quarantine_uri=quarantine_uri,
                                  config=config)
