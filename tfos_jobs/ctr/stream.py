"""The CTR job on a stream: impressions scored as they land, clicks joined when they come, quality
per window (:mod:`tfos_jobs.streaming`).

Records (``tfos-ctr generate-stream`` writes both):

* an impression: ``id <TAB> event time (epoch ms) <TAB>`` the 39 Criteo fields without the label,
  encoded by the batch prep's own :func:`tfos_jobs.ctr.prep.parse` with the export's settings;
* a click: ``id <TAB> click time (epoch ms)``. An impression without a click within
  ``max_delay_s`` is a negative.
"""
from __future__ import annotations

from typing import Any, Sequence

from tfos_jobs import registry, scoring
from tfos_jobs.ctr import prep, schema, steps
from tfos_jobs.streaming import pipeline
from tfos_jobs.streaming.pipeline import Pipeline, StreamConfig
from tfos_jobs.streaming.windows import WindowSpec


def encode_impressions(lines: Any, hash_buckets: int) -> Any:
    """``id``, ``event_time``, ``reason_code``/``reason`` (null when good), the features and the raw
    record (``line``) of each impression line (``value``)."""
    from pyspark.sql import functions as F
    parts = F.split(F.col("value"), "\t", 3)
    ts = F.get(parts, 1)
    split = lines.select(F.col("value").alias("record"), "source", F.get(parts, 0).alias("id"), ts.alias("ts"),
                         F.timestamp_millis(ts.try_cast("bigint")).alias("event_time"),
                         F.coalesce(F.get(parts, 2), F.lit("")).alias("value"))
    parsed = prep.parse(split, hash_buckets, labeled=False, carry=("record", "id", "ts", "event_time"))
    bad_id = F.col("id").isNull() | (F.col("id") == "")
    bad_time = F.col("event_time").isNull()
    code = F.when(bad_id, F.lit("id")).when(bad_time, F.lit("event_time")).otherwise(F.col("reason_code"))
    reason = (F.when(bad_id, F.lit("impression id is empty"))
              .when(bad_time, F.concat(F.lit("event time is not epoch milliseconds: '"),
                                       F.substring(F.coalesce(F.col("ts"), F.lit("")), 1, 40), F.lit("'")))
              .otherwise(F.col("reason")))
    return parsed.withColumn("reason_code", code).withColumn("reason", reason).withColumn("line", F.col("record"))


def read_clicks(spark: Any, source: str, config: StreamConfig) -> Any:
    """Labels (``id``, ``label_time``, ``label`` = 1) from click records; malformed ones are skipped."""
    from pyspark.sql import functions as F
    parts = F.split(F.col("value"), "\t")
    clicks = pipeline.read_lines(spark, source, config).select(
        F.get(parts, 0).alias("id"), F.timestamp_millis(F.get(parts, 1).try_cast("bigint")).alias("label_time"))
    return clicks.where(F.col("label_time").isNotNull() & (F.col("id") != "")).withColumn("label", F.lit(1.0))


def stream_score(spark: Any, export_uri: str, input_uri: str, output_uri: str, quarantine_uri: str,
                 config: StreamConfig, batch_size: int = 4096, follow_s: float = 30.0) -> Pipeline:
    """Score impressions landing at ``input_uri`` (a directory or ``kafka://host:port/topic``) with the
    export, encoded with the export's own prep settings. ``export_uri`` may name a registry alias
    (``URI@champion``): the stream follows it, looking every ``follow_s`` seconds."""
    export = registry.resolver(export_uri)
    first = export()
    job = steps.read_config(first)
    encoded = encode_impressions(pipeline.read_lines(spark, input_uri, config), int(job["hash_buckets"]))

    def score(good, directory):
        return scoring.score_dataframe(good, directory, schema.FEATURES, keep=["id", "event_time"],
                                       batch_size=batch_size)

    def check(directory):   # the stream's encoding was fixed at its start
        buckets = int(steps.read_config(directory)["hash_buckets"])
        return None if buckets == int(job["hash_buckets"]) else (
            f"its hash_buckets {buckets} differ from the {job['hash_buckets']} this stream encodes with: restart it")
    following = registry.parse_ref(export_uri)[1] is not None
    return pipeline.start_scoring(encoded, score=score, export=export, output_uri=output_uri,
                                  quarantine_uri=quarantine_uri, config=config,
                                  follow_s=follow_s if following else None, check=check)


def stream_monitor(spark: Any, predictions_uri: str, clicks_uri: str, labeled_uri: str, metrics_uri: str,
                   config: StreamConfig, *, max_delay_s: float = 900.0, unmatched: str = "negative",
                   sliding: Sequence[tuple[float, float]] = ((3600.0, 900.0),), spec: WindowSpec = WindowSpec(),
                   console: bool = True) -> Pipeline:
    """Join the predictions at ``predictions_uri`` with the clicks at ``clicks_uri`` (into
    ``labeled_uri``), and write the quality of every window to ``metrics_uri``."""
    labeling = pipeline.start_labeling(pipeline.read_predictions(spark, predictions_uri, config),
                                       read_clicks(spark, clicks_uri, config), output_uri=labeled_uri,
                                       config=config, max_delay_s=max_delay_s, unmatched=unmatched)
    if config.trigger == pipeline.AVAILABLE_NOW:   # a catch-up run: label everything there first
        labeling.wait()
    labeled = pipeline.read_predictions(spark, labeled_uri, config, labeled=True)
    monitor = pipeline.start_monitor(labeled, metrics_uri=metrics_uri, config=config, sliding=sliding,
                                     spec=spec, console=console)
    return Pipeline(labeling.queries + monitor.queries)
