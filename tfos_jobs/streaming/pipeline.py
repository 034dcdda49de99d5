"""The driver side of streaming: build and start the scoring, labeling and monitoring queries.

See the package doc for the data path. Every query takes a ``checkpoint`` URI (HDFS, S3, file) that
is its own; re-starting a query with the same checkpoint resumes it where it stopped.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import hdfs_io
from tfos_jobs import scoring, sparkprep
from tfos_jobs.streaming import quality
from tfos_jobs.streaming.labels import LabelBuffer
from tfos_jobs.streaming.windows import WindowSet, WindowSpec

log = logging.getLogger("tfos_jobs.streaming")
# pyspark (heavy) is imported inside the functions that build queries.
PREDICTION_COLUMNS = ("id", "event_time", "prediction", scoring.VERSION_COLUMN)
LABELED_COLUMNS = PREDICTION_COLUMNS + ("label", "label_time")
# Optional columns of a labeled stream: which series a row belongs to (a survey question; one series,
# "", for clicks) and its own loss (the binary log loss of label and prediction when absent).
SERIES, LOSS = "series", "loss"
AVAILABLE_NOW = "available-now"   # process what is there, then stop (tests, catch-up runs)


@dataclass(frozen=True)
class StreamConfig:
    """How a query runs: where its checkpoint is and how often it fires."""
    checkpoint: str
    trigger: str | float = 10.0                   # seconds between micro-batches, or AVAILABLE_NOW
    max_files_per_trigger: int | None = None      # directory sources: bound a micro-batch
    watermark_s: float = 600.0                    # event-time lateness accepted before state is dropped
    # Partitions of the stateful queries' state (labels, windows). Spark's default, 200 shuffle
    # partitions, gives every micro-batch 200 tasks that each load a state store, for a few thousand
    # rows; None: the session's default parallelism (its executors' cores). Fixed at a checkpoint's
    # first run: Spark keeps the number in the checkpoint and ignores a new one.
    state_partitions: int | None = None

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("a streaming query needs a checkpoint URI (--checkpoint)")
        if self.trigger != AVAILABLE_NOW and not (isinstance(self.trigger, (int, float)) and self.trigger > 0):
            raise ValueError(f"trigger must be positive seconds or {AVAILABLE_NOW!r}, got {self.trigger!r}")
        if self.max_files_per_trigger is not None and self.max_files_per_trigger < 1:
            raise ValueError(f"max_files_per_trigger must be positive, got {self.max_files_per_trigger}")
        if self.watermark_s < 0:
            raise ValueError(f"watermark_s must not be negative, got {self.watermark_s}")
        if self.state_partitions is not None and self.state_partitions < 1:
            raise ValueError(f"state_partitions must be positive, got {self.state_partitions}")

    def at(self, name: str) -> str:
        """The checkpoint of one query of a pipeline."""
        return sparkprep.spark_uri(hdfs_io.join(self.checkpoint, name))


def use_state_partitions(rows: Any, config: StreamConfig) -> None:
    """Set the shuffle partitions the stateful queries started next on ``rows``' session will keep."""
    spark = rows.sparkSession
    spark.conf.set("spark.sql.shuffle.partitions",
                   str(config.state_partitions or max(1, spark.sparkContext.defaultParallelism)))


def _start(writer: Any, config: StreamConfig, name: str) -> Any:
    writer = writer.option("checkpointLocation", config.at(name)).queryName(name)
    if config.trigger == AVAILABLE_NOW:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{config.trigger} seconds")
    return writer


# --------------------------------------------------------------------------------------- sources


def read_lines(spark: Any, source: str, config: StreamConfig) -> Any:
    """A stream of text records (``value``, ``source``) from a directory that new files land in
    (any storage URI Spark reads) or from Kafka (``kafka://host:port[,host:port]/topic``)."""
    from pyspark.sql import functions as F
    if source.startswith("kafka://"):
        servers, _, topic = source[len("kafka://"):].partition("/")
        if not servers or not topic:
            raise ValueError(f"--input {source}: expected kafka://host:port/topic")
        reader = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", servers)
                  .option("subscribe", topic).option("startingOffsets", "earliest"))
        if config.max_files_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", config.max_files_per_trigger)
        df = reader.load()
        return df.select(F.col("value").cast("string").alias("value"),
                         F.concat(F.lit(f"kafka:{topic}/"), F.col("partition").cast("string"), F.lit("@"),
                                  F.col("offset").cast("string")).alias("source"))
    if not hdfs_io.exists(source):
        raise FileNotFoundError(f"--input {source} does not exist (create the directory files will land in)")
    reader = spark.readStream.format("text")
    if config.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", config.max_files_per_trigger)
    df = reader.load(sparkprep.spark_uri(source))
    return df.select("value", F.col("_metadata.file_path").alias("source"))


# --------------------------------------------------------------------------------------- scoring


@dataclass
class Pipeline:
    """Running queries, stopped together."""
    queries: list

    def wait(self, timeout_s: float | None = None) -> None:
        """Until every query has stopped (``available-now`` queries stop by themselves); a failed
        query's exception is raised."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for query in self.queries:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not query.awaitTermination(left) if left is not None else query.awaitTermination():
                raise TimeoutError(f"streaming query {query.name} still running after {timeout_s} s")

    def stop(self) -> None:
        for query in self.queries:
            query.stop()


def start_scoring(encoded: Any, *, score: Callable[[Any, str], Any], export: Callable[[], str], output_uri: str,
                  quarantine_uri: str, config: StreamConfig, follow_s: float | None = None,
                  check: Callable[[str], str | None] = lambda directory: None) -> Pipeline:
    """Score the good rows of ``encoded`` (a job's encoding of a :func:`read_lines` stream: ``id``,
    ``event_time``, ``reason_code``/``reason`` (null when good), ``source``, ``line`` and the
    features) with ``score(rows, export_directory)`` (the job's batch scoring of a DataFrame, the same
    code ``score``/``predict`` run) into Parquet predictions at ``output_uri``; the bad rows go to
    ``quarantine_uri`` with their reason. Two queries.

    ``export()`` names the export directory to score with. With ``follow_s`` it is asked again every
    ``follow_s`` seconds (a registry alias that moves): the predictions query is then restarted from
    its checkpoint with the new version, so a micro-batch is scored by one version, whole (one cut off
    by the restart is scored again, by the new one: the sink commits a batch only when it is done).
    ``check(directory)`` says why a new version cannot be used by this stream (None: it can)."""
    from pyspark.sql import functions as F
    good = encoded.where(F.col("reason_code").isNull())

    def start(directory: str) -> Any:
        return _start(score(good, directory).writeStream.format("parquet"), config, "predictions").start(
            sparkprep.spark_uri(output_uri))
    predictions = Following(start, export, follow_s, check) if follow_s else start(export())
    bad = encoded.where(F.col("reason_code").isNotNull()).select("source", "reason_code", "reason", "line")
    quarantine = _start(bad.writeStream.format("parquet"), config, "quarantine").start(
        sparkprep.spark_uri(quarantine_uri))
    return Pipeline([predictions, quarantine])


class Following:
    """A streaming query that follows the export ``export()`` names: restarted from its checkpoint with
    the new export when the name moves (see :func:`start_scoring`). Answers what a query answers."""

    def __init__(self, start: Callable[[str], Any], export: Callable[[], str], poll_s: float,
                 check: Callable[[str], str | None]):
        self._start, self._export, self.poll_s, self._check = start, export, poll_s, check
        self.directory = export()
        self.query = start(self.directory)
        self.name = self.query.name
        self.switches: list[tuple[str, str]] = []
        self._switching = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"follow-{self.name}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stopped.wait(self.poll_s):
            if not self.query.isActive:
                return                         # finished (available-now) or failed: awaitTermination says
            try:
                directory = self._export()
                why = None if directory == self.directory else self._check(directory)
            except Exception as exc:   # noqa: BLE001 - storage unreachable: keep scoring, ask again later
                log.warning("stream %s: could not look for a new export: %s", self.name, exc)
                continue
            if directory == self.directory:
                continue
            if why:
                log.error("stream %s: not switching to %s: %s", self.name, directory, why)
                continue
            with self._lock:
                if self._stopped.is_set():
                    return
                self._switching = True
                try:
                    self.query.stop()
                    self.switches.append((self.directory, directory))
                    print(f"[tfos-stream] {self.name}: switching from {self.directory} to {directory}",
                          file=sys.stderr, flush=True)
                    self.directory = directory
                    self.query = self._start(directory)
                finally:
                    self._switching = False

    @property
    def isActive(self) -> bool:
        return self._switching or self.query.isActive

    def exception(self) -> Any:
        return self.query.exception()

    def awaitTermination(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            query = self.query
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = query.awaitTermination(left) if left is not None else query.awaitTermination()
            if query is self.query or self._stopped.is_set():   # not a switch: really over (or timed out)
                if ended is None or ended:
                    return True
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            self.query.stop()


def prediction_schema() -> Any:
    from pyspark.sql.types import FloatType, StringType, StructField, StructType, TimestampType
    return StructType([StructField("id", StringType()), StructField("event_time", TimestampType()),
                       StructField("prediction", FloatType()), StructField(scoring.VERSION_COLUMN, StringType())])


def read_predictions(spark: Any, uri: str, config: StreamConfig, labeled: bool = False, schema: Any = None) -> Any:
    """A stream of the predictions (or labeled predictions) another query writes at ``uri``
    (``schema``: a job's own, when it is not :func:`prediction_schema` or :func:`labeled_schema`)."""
    schema = schema or (labeled_schema() if labeled else prediction_schema())
    hdfs_io.mkdirs(uri)     # a query that has not written yet: an empty stream, not an error
    reader = spark.readStream.schema(schema).format("parquet")
    if config.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", config.max_files_per_trigger)
    return reader.load(sparkprep.spark_uri(uri))


# --------------------------------------------------------------------------------------- labels


def start_labeling(predictions: Any, labels: Any, *, output_uri: str, config: StreamConfig,
                   max_delay_s: float, unmatched: str = "negative", buckets: int = 64) -> Pipeline:
    """Label ``predictions`` with ``labels`` (``id``, ``label_time``, ``label``) that arrive up to
    ``max_delay_s`` after the prediction's event time (:mod:`.labels`: each prediction is written once,
    when its label window closed, so matched and unmatched ones reach the windows together). State is
    kept per bucket of ids (``buckets``), bounded by the watermark."""
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout
    from pyspark.sql.types import BinaryType, StructField, StructType
    LabelBuffer(1, unmatched)          # checks ``unmatched`` here, on the driver
    use_state_partitions(predictions, config)
    if max_delay_s <= 0:
        raise ValueError(f"max_delay_s must be positive, got {max_delay_s}")
    bucket = F.pmod(F.xxhash64("id"), F.lit(buckets)).alias("bucket")
    p = predictions.select(bucket, F.lit("p").alias("kind"), "id", F.col("event_time").alias("time"),
                           "prediction", scoring.VERSION_COLUMN, F.lit(None).cast("float").alias("label"))
    lab = labels.select(bucket, F.lit("l").alias("kind"), "id", F.col("label_time").alias("time"),
                        F.lit(None).cast("float").alias("prediction"),
                        F.lit(None).cast("string").alias(scoring.VERSION_COLUMN), F.col("label").cast("float"))
    both = p.unionByName(lab).withWatermark("time", f"{config.watermark_s} seconds") \
        .withColumn("time_ms", F.unix_millis("time"))
    state_schema = StructType([StructField("pending", BinaryType()), StructField("labels", BinaryType())])
    labeled = both.groupBy("bucket").applyInPandasWithState(
        _labeling(int(max_delay_s * 1000), unmatched), labeled_schema(), state_schema, "append",
        GroupStateTimeout.EventTimeTimeout)
    # One file per micro-batch: a batch's labels are few, and one file per state partition (tens per
    # batch) would flood the store with small files and let the windows' max-files bound cover a
    # sliver of a labeling batch (measured: 316 files for 7 batches, 22 s per windows batch).
    return Pipeline([start_parquet(labeled.coalesce(1), output_uri, config, "labeled")])


def start_parquet(rows: Any, output_uri: str, config: StreamConfig, name: str) -> Any:
    """Start the query ``name`` appending ``rows`` to Parquet at ``output_uri`` (Spark's file sink:
    exactly once through its ``_spark_metadata`` log)."""
    return _start(rows.writeStream.outputMode("append").format("parquet"), config, name).start(
        sparkprep.spark_uri(output_uri))


def _utc_timestamps(ms: Any) -> Any:
    """Epoch milliseconds (floats, NaN where missing) as UTC timestamps, in integers: pandas' float
    unit conversion raised FloatingPointError on NaN in Spark's Python worker, where NumPy errors raise."""
    import numpy as np
    import pandas as pd
    missing = ms.isna().to_numpy()
    values = np.where(missing, 0, ms.to_numpy(dtype="float64", na_value=0)).astype("int64").astype("datetime64[ms]")
    values[missing] = np.datetime64("NaT")
    return pd.Series(values, index=ms.index).dt.tz_localize("UTC")


def _labeling(max_delay_ms: int, unmatched: str) -> Callable:
    """The ``applyInPandasWithState`` function of the labeling query (runs on the executors)."""

    def update(key, frames, state):
        import pandas as pd
        buffer = LabelBuffer.loads(max_delay_ms, unmatched, *state.get) if state.exists \
            else LabelBuffer(max_delay_ms, unmatched)
        for frame in frames:
            preds = frame[frame["kind"] == "p"].rename(columns={"time_ms": "event_ms"})
            labs = frame[frame["kind"] == "l"].rename(columns={"time_ms": "label_ms"})
            buffer.add(preds, labs)
        watermark = state.getCurrentWatermarkMs()
        done = buffer.release(watermark)
        timeout = buffer.next_timeout_ms(watermark)
        if timeout is None:
            state.remove()
        else:
            state.update(buffer.dumps())
            state.setTimeoutTimestamp(timeout)
        if len(done):
            yield pd.DataFrame({
                "id": done["id"], "event_time": _utc_timestamps(done["event_ms"]),
                "prediction": done["prediction"].astype("float32"), scoring.VERSION_COLUMN: done["model_version"],
                "label": done["label"], "label_time": _utc_timestamps(done["label_ms"])})

    return update


def labeled_schema() -> Any:
    from pyspark.sql.types import FloatType, StructField, TimestampType
    return prediction_schema().add(StructField("label", FloatType())).add(StructField("label_time", TimestampType()))


# --------------------------------------------------------------------------------------- monitor


def metric_schema() -> Any:
    """The one metrics record schema (a row per window, model version and micro-batch)."""
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType
    fields = [("window_kind", StringType()), ("window", StringType()), ("model_version", StringType()),
              (SERIES, StringType()),
              ("window_start_ms", LongType()), ("window_end_ms", LongType())]
    fields += [(name, ArrayType(DoubleType()) if isinstance(value, list) else DoubleType())
               for name, value in quality.summary(quality.empty(1)).items()]
    return StructType([StructField(n, t) for n, t in fields])


def _stateful_windows(spec: WindowSpec, idle_timeout_ms: int) -> Callable:
    """The ``applyInPandasWithState`` function: landmark, fading and tilted-time state per version and series."""

    def update(key, frames, state):
        import pandas as pd
        version, series = key
        if state.hasTimedOut:            # a version nobody scores any more: drop its state
            state.remove()
            return
        windows = WindowSet.loads(spec, *state.get) if state.exists else WindowSet(spec)
        for frame in frames:   # event_ms: epoch ms computed by Spark (pandas timestamps are zone-shifted)
            windows.update(frame["event_ms"].to_numpy(), frame["label"].to_numpy(), frame["prediction"].to_numpy(),
                           frame[LOSS].to_numpy())
        state.update(windows.dumps())
        state.setTimeoutTimestamp(windows.latest_ms + idle_timeout_ms)
        records = windows.records()
        for r in records:
            r["model_version"], r[SERIES] = version, series
        yield pd.DataFrame.from_records(records, columns=[f.name for f in metric_schema().fields])

    return update


def _with_series_and_loss(labeled: Any) -> Any:
    """``labeled`` with its :data:`SERIES` and :data:`LOSS` columns (defaults where it has none)."""
    from pyspark.sql import functions as F
    if SERIES not in labeled.columns:
        labeled = labeled.withColumn(SERIES, F.lit(""))
    if LOSS not in labeled.columns:
        p = F.col("prediction").cast("double")
        clipped = F.least(F.greatest(p, F.lit(quality.EPS)), F.lit(1 - quality.EPS))
        labeled = labeled.withColumn(LOSS, -(F.col("label") * F.log(clipped) + (1 - F.col("label")) * F.log(1 - clipped)))
    return labeled


def _sliding(labeled: Any, length_s: float, slide_s: float, bins: int) -> Any:
    """Per (sliding window, version, series, prediction bin): the sketch row sums (Spark's own window state)."""
    from pyspark.sql import functions as F
    p = F.col("prediction").cast("double")
    b = F.least(F.greatest((p * bins).cast("long"), F.lit(0)), F.lit(bins - 1))
    return (labeled.groupBy(F.window("event_time", f"{length_s} seconds", f"{slide_s} seconds"),
                            scoring.VERSION_COLUMN, SERIES, b.alias("bin"))
            .agg(F.sum("label").alias("pos"), F.sum(1 - F.col("label")).alias("neg"),
                 F.sum(p).alias("pred"), F.sum(LOSS).alias("loss")))


def _sliding_records(rows: list, length_s: float, slide_s: float, bins: int) -> list[dict]:
    windows = {}
    for r in rows:
        key = (r["start_ms"], r["end_ms"], r[scoring.VERSION_COLUMN], r[SERIES])
        s = windows.setdefault(key, quality.empty(bins))
        s[r["bin"]] += (r["pos"], r["neg"], r["pred"], r["loss"])
    out = []
    for (start, end, version, series), s in sorted(windows.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3])):
        out.append(dict(window_kind="sliding", window=f"{length_s:g}s every {slide_s:g}s", model_version=version,
                        series=series, window_start_ms=start, window_end_ms=end,
                        **quality.summary(s)))
    return out


class MetricsSink:
    """Metrics records as JSON lines: one file per (query, micro-batch) under ``uri``, replaced when
    Spark replays a batch (so each batch counts once), and a line per window on the console."""

    def __init__(self, uri: str, console: bool = True, log: Callable[[str], Any] = print):
        self.uri, self.console, self.log = uri, console, log

    def write(self, query: str, batch_id: int, records: list[dict]) -> None:
        if not records:
            return
        name = hdfs_io.join(self.uri, f"{query}-{batch_id:012d}.jsonl")
        with hdfs_io.open(name, "w") as handle:
            for r in records:
                handle.write(json.dumps({**r, "query": query, "batch_id": batch_id}, sort_keys=True) + "\n")
        if self.console:
            for r in records:
                auc = "  -   " if r["auc"] is None else f"{r['auc']:.4f}"
                series = f" {r[SERIES]}" if r.get(SERIES) else ""
                self.log(f"[tfos-stream] {r['window_kind']:8s} {r['window']:22s} model {r['model_version']}{series} "
                         f"end {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(r['window_end_ms'] / 1000))}Z "
                         f"n {r['count']:.0f} ctr {r['ctr'] or 0:.3f} mean p {r['mean_prediction'] or 0:.3f} "
                         f"logloss {r['log_loss'] or 0:.4f} auc {auc}")


def read_metrics(uri: str, history: bool = False) -> list[dict]:
    """Every metrics record written under ``uri``. A window emitted more than once (landmark, fading
    and tilted-time windows are updated every micro-batch) appears once, as its latest record, or with
    ``history`` once per micro-batch (its value over time), in the order of ``window_end_ms``."""
    latest = {}
    for info in sorted(hdfs_io.ls(uri), key=lambda i: i.uri) if hdfs_io.exists(uri) else []:
        if not info.uri.endswith(".jsonl"):
            continue
        with hdfs_io.open(info.uri, "r") as handle:
            for line in handle:
                r = json.loads(line)
                key = (r["window_kind"], r["window"], r["model_version"], r.get(SERIES, ""), r["window_start_ms"])
                if history:
                    key += (r["query"], r["batch_id"])
                if key not in latest or (r["batch_id"], r["window_end_ms"]) >= (latest[key]["batch_id"],
                                                                               latest[key]["window_end_ms"]):
                    latest[key] = r
    order = (lambda r: r["window_end_ms"]) if history else (
        lambda r: (r["window_kind"], r["window"], r.get(SERIES, ""), r["window_start_ms"]))
    return sorted(latest.values(), key=order)


def start_monitor(labeled: Any, *, metrics_uri: str, config: StreamConfig,
                  sliding: Sequence[tuple[float, float]] = ((3600.0, 900.0),), spec: WindowSpec = WindowSpec(),
                  idle_timeout_s: float = 86400.0, console: bool = True) -> Pipeline:
    """Quality per window of the ``labeled`` stream (:func:`read_predictions` with ``labeled=True``):
    one query per sliding ``(length_s, slide_s)`` and one for the landmark, fading and tilted-time
    windows of every model version and series (:data:`SERIES`); records go to a :class:`MetricsSink`."""
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout
    from pyspark.sql.types import BinaryType, StringType, StructField, StructType
    sink = MetricsSink(metrics_uri, console)
    use_state_partitions(labeled, config)
    watermarked = _with_series_and_loss(labeled).withWatermark("event_time", f"{config.watermark_s} seconds")
    queries = []
    for length_s, slide_s in sliding:
        if not 0 < slide_s <= length_s:
            raise ValueError(f"sliding window {length_s}s every {slide_s}s: need 0 < slide <= length")
        name = f"sliding-{length_s:g}s-{slide_s:g}s"

        def write(df, batch_id, name=name, length_s=length_s, slide_s=slide_s):
            rows = df.select(F.unix_millis("window.start").alias("start_ms"), F.unix_millis("window.end").alias("end_ms"),
                             scoring.VERSION_COLUMN, SERIES, "bin", "pos", "neg", "pred", "loss").collect()
            sink.write(name, batch_id, _sliding_records(rows, length_s, slide_s, spec.bins))
        agg = _sliding(watermarked, length_s, slide_s, spec.bins)
        queries.append(_start(agg.writeStream.outputMode("append").foreachBatch(write), config, name).start())
    state_schema = StructType([StructField("header", StringType()), StructField("data", BinaryType())])
    rows = watermarked.select("event_time", F.unix_millis("event_time").alias("event_ms"), "label", "prediction",
                              LOSS, scoring.VERSION_COLUMN, SERIES)
    stateful = rows.groupBy(scoring.VERSION_COLUMN, SERIES).applyInPandasWithState(
        _stateful_windows(spec, int(idle_timeout_s * 1000)), metric_schema(), state_schema, "update",
        GroupStateTimeout.EventTimeTimeout)

    def write_stateful(df, batch_id):
        sink.write("windows", batch_id, [r.asDict() for r in df.collect()])
    queries.append(_start(stateful.writeStream.outputMode("update").foreachBatch(write_stateful), config,
                          "windows").start())
    return Pipeline(queries)
