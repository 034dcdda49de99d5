"""The survey job on a stream: respondents answered as their records land (:mod:`tfos_jobs.streaming`).

A record is one JSON object per line (a file line or a Kafka message): the respondent's id (the
plan's id column, else ``"id"``), their answers by question column, and optionally ``event_time``
(epoch milliseconds; the time Spark read the record otherwise). Answers are encoded by the batch
prep's own :func:`tfos_jobs.survey.prep.transform` with the plan published with the export, and
scored by :func:`tfos_jobs.survey.steps.score_respondents`, as ``tfos-survey predict`` does. A line
that is not a JSON object, has no id or a bad event time goes to the quarantine with its reason;
unknown or missing answers are encoded as batch prediction encodes them (as missing), not refused.

Answers given later (the same JSON records, holding the target questions, with the time they were
given as ``event_time``) label the predictions: :func:`stream_monitor` writes each question's
accuracy, log loss and calibration per window (:mod:`tfos_jobs.streaming.quality` says how a
multi-class answer becomes a sketch row).
"""
from __future__ import annotations

from typing import Any, Sequence

from tfos_jobs import registry, scoring
from tfos_jobs.streaming import pipeline, quality
from tfos_jobs.streaming.pipeline import Pipeline, StreamConfig
from tfos_jobs.streaming.windows import WindowSpec
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
                   config: StreamConfig, batch_size: int = 4096, follow_s: float = 30.0) -> Pipeline:
    """Answer probabilities for the respondents whose records land at ``input_uri`` (a directory or
    ``kafka://host:port/topic``), with the plan published with the export. ``export_uri`` may name a
    registry alias (``URI@champion``): the stream follows it, looking every ``follow_s`` seconds."""
    export = registry.resolver(export_uri)
    first = export()
    plan = steps.export_plan(first)
    steps.check_export(plan, first)
    encoded = encode_records(pipeline.read_lines(spark, input_uri, config), plan)

    def score(good, directory):
        return steps.score_respondents(good, plan, directory, keep=["id", "event_time"], batch_size=batch_size)

    def check(directory):   # the stream's encoding was fixed at its start
        other = steps.export_plan(directory)
        return None if prep.plan_id(other) == prep.plan_id(plan) else (
            "its prep plan encodes respondents differently from the one this stream started with: restart it")
    following = registry.parse_ref(export_uri)[1] is not None
    return pipeline.start_scoring(encoded, score=score, export=export, output_uri=output_uri,
                                  quarantine_uri=quarantine_uri, config=config,
                                  follow_s=follow_s if following else None, check=check)


# ------------------------------------------------------------------------------ later answers


def prediction_schema(plan: dict) -> Any:
    """The schema :func:`stream_predict` writes: ``id``, ``event_time``, ``<target>__p_<answer>`` per
    answer, ``<target>__answer`` per target and the model version."""
    from pyspark.sql.types import FloatType, StringType, StructField
    schema = pipeline.prediction_schema()
    fields = [f for f in schema.fields if f.name != "prediction"]
    for t in plan["targets"]:
        fields += [StructField(f"{t['column']}__p_{c}", FloatType()) for c in t["classes"]]
        fields.append(StructField(f"{t['column']}__answer", StringType()))
    return type(schema)(fields)


def labeled_schema() -> Any:
    from pyspark.sql.types import DoubleType, StringType, StructField
    return pipeline.labeled_schema().add(StructField(pipeline.SERIES, StringType())).add(
        StructField(pipeline.LOSS, DoubleType()))


def read_answers(spark: Any, source: str, plan: dict, config: StreamConfig) -> Any:
    """Later answers (``id``, ``label_time`` and each target's canonical answer) from JSON records
    like the ones :func:`stream_predict` reads (``event_time``: when the answers were given); records
    without an id or a time are skipped."""
    return answers_of(pipeline.read_lines(spark, source, config), plan)


def answers_of(lines: Any, plan: dict) -> Any:
    """:func:`read_answers` of text records (``value``) already read, as a stream or a batch."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType
    rid, targets = id_column(plan), [t["column"] for t in plan["targets"]]
    fields = list(dict.fromkeys([rid, EVENT_TIME, *targets]))
    record = F.from_json("value", StructType([StructField(c, StringType()) for c in fields])).alias("r")
    answers = lines.select(record).select(
        F.col("r")[rid].alias("id"), F.timestamp_millis(F.col("r")[EVENT_TIME].try_cast("bigint")).alias("label_time"),
        *[prep.canonical_col_of(F.col("r")[c]).alias(f"__a_{i}") for i, c in enumerate(targets)])
    return answers.where(F.col("label_time").isNotNull() & (F.trim(F.col("id")) != ""))


def per_question(joined: Any, plan: dict) -> Any:
    """One labeled row per (respondent, target answered with one of its classes): ``label`` 1 when the
    answer is the predicted one, ``prediction`` the predicted answer's probability, ``loss`` the
    multi-class log loss of the answer given, ``series`` the question."""
    from pyspark.sql import functions as F
    rows = None
    for i, t in enumerate(plan["targets"]):
        answer, q = F.col(f"__a_{i}"), t["column"]
        probs = F.array(*[F.col(f"`{q}__p_{c}`").cast("double") for c in t["classes"]])
        given = F.array_position(F.lit(t["classes"]).cast("array<string>"), answer)
        p_given = F.least(F.greatest(F.element_at(probs, F.greatest(given, F.lit(1)).cast("int")), F.lit(quality.EPS)),
                          F.lit(1 - quality.EPS))
        part = joined.where(prep.kind_col(answer, t["codes"]).isNull() & (given > 0)).select(
            "id", "event_time", F.array_max(probs).cast("float").alias("prediction"), scoring.VERSION_COLUMN,
            (answer == F.col(f"`{q}__answer`")).cast("float").alias("label"), "label_time",
            F.lit(q).alias(pipeline.SERIES), (-F.log(p_given)).alias(pipeline.LOSS))
        rows = part if rows is None else rows.unionByName(part)
    return rows


def start_labeling(predictions: Any, answers: Any, plan: dict, *, output_uri: str, config: StreamConfig,
                   max_delay_s: float) -> Pipeline:
    """Join predictions with the answers given up to ``max_delay_s`` after them (Spark's stream-stream
    inner join: a respondent who never answers has no label, and the watermark on both sides bounds
    the join's state to ``max_delay_s`` plus the watermark), one row per question answered."""
    from pyspark.sql import functions as F
    if max_delay_s <= 0:
        raise ValueError(f"max_delay_s must be positive, got {max_delay_s}")
    delay = f"{config.watermark_s} seconds"
    pipeline.use_state_partitions(predictions, config)
    p = predictions.withWatermark("event_time", delay).alias("p")
    a = answers.withColumnRenamed("id", "answer_id").withWatermark("label_time", delay).alias("a")
    joined = p.join(a, F.expr(f"answer_id = id AND label_time >= event_time AND "
                              f"label_time <= event_time + INTERVAL {float(max_delay_s)} SECONDS"), "inner")
    # one file per micro-batch, as the clicks' labeling does (pipeline.start_labeling says why)
    return Pipeline([pipeline.start_parquet(per_question(joined, plan).coalesce(1), output_uri, config, "labeled")])


def stream_monitor(spark: Any, export_uri: str, predictions_uri: str, answers_uri: str, labeled_uri: str,
                   metrics_uri: str, config: StreamConfig, *, max_delay_s: float = 86400.0,
                   sliding: Sequence[tuple[float, float]] = ((3600.0, 900.0),), spec: WindowSpec = WindowSpec(),
                   console: bool = True) -> Pipeline:
    """Join the predictions at ``predictions_uri`` with the answers landing at ``answers_uri`` (into
    ``labeled_uri``) and write each question's accuracy, log loss and calibration per window to
    ``metrics_uri`` (one metrics series per question)."""
    plan = steps.export_plan(registry.resolver(export_uri)())   # an alias's versions share the plan
    labeling = start_labeling(
        pipeline.read_predictions(spark, predictions_uri, config, schema=prediction_schema(plan)),
        read_answers(spark, answers_uri, plan, config), plan, output_uri=labeled_uri, config=config,
        max_delay_s=max_delay_s)
    if config.trigger == pipeline.AVAILABLE_NOW:   # a catch-up run: label everything there first
        labeling.wait()
    labeled = pipeline.read_predictions(spark, labeled_uri, config, schema=labeled_schema())
    monitor = pipeline.start_monitor(labeled, metrics_uri=metrics_uri, config=config, sliding=sliding,
                                     spec=spec, console=console)
    return Pipeline(labeling.queries + monitor.queries)
