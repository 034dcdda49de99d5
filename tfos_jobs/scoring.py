"""Generic batch scoring on Spark with an exported model (``tfos_jobs.export`` layout).

Each executor's Python worker loads the SavedModel once (downloaded to a local cache shared by the
workers on a host, keyed by the export's content so a re-published export is fetched again) and
scores its partitions in Arrow record batches through ``mapInArrow``: no row-by-row Python, no
pickling. The predictions (kept columns + ``prediction``) are written as Parquet atomically: they
appear complete, with ``_SUCCESS``, or not at all.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from typing import Any, Sequence

import hdfs_io
from tfos_jobs import sparkprep
from tfos_jobs.export import METRICS_FILE, SAVED_MODEL

# TensorFlow and pyspark (heavy) are imported inside the functions that load models and build DataFrames.
DEFAULT_CACHE = "/tmp/tfos_scoring"
_LOADED = {}   # per Python worker process: cache key -> serving function


def export_key(export_uri: str) -> str:
    """A key that changes whenever the export at ``export_uri`` is replaced (driver side)."""
    hdfs_io.require_published(export_uri)
    digest = hashlib.sha1(export_uri.encode())
    for name in (f"{SAVED_MODEL}/saved_model.pb", METRICS_FILE):
        uri = hdfs_io.join(export_uri, name)
        if not hdfs_io.exists(uri):
            raise FileNotFoundError(f"{export_uri} is not a model export: {uri} is missing")
    digest.update(str(hdfs_io.size(hdfs_io.join(export_uri, f"{SAVED_MODEL}/saved_model.pb"))).encode())
    with hdfs_io.open(hdfs_io.join(export_uri, METRICS_FILE), "rb") as handle:
        digest.update(handle.read())
    return digest.hexdigest()[:16]


def load_model(export_uri: str, key: str, cache_root: str = DEFAULT_CACHE) -> Any:
    """The export's ``serving_default`` function, loaded at most once per process; the download is
    shared by the processes of a host (file lock + completion marker)."""
    if key in _LOADED:
        return _LOADED[key]
    import tensorflow as tf
    if os.path.isdir(export_uri) or export_uri.startswith("file://"):
        local = export_uri[len("file://"):] if export_uri.startswith("file://") else export_uri
    else:
        local = os.path.join(cache_root, key)
        os.makedirs(cache_root, exist_ok=True)
        with open(os.path.join(cache_root, f"{key}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(local, "_COMPLETE")):
                shutil.rmtree(local, ignore_errors=True)
                hdfs_io.download(export_uri, local)
                open(os.path.join(local, "_COMPLETE"), "w").close()
    _LOADED[key] = tf.saved_model.load(os.path.join(local, SAVED_MODEL)).signatures["serving_default"]
    return _LOADED[key]


def _serve_parts(serve, batches, features, batch_size):
    """(rows, serving outputs) for every ``batch_size`` slice of the Arrow ``batches``."""
    import tensorflow as tf
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            part = batch.slice(start, batch_size)
            inputs = {}
            for name in features:
                column = part.column(name)
                if column.null_count:
                    raise ValueError(f"feature column {name!r} has {column.null_count} null value(s): "
                                     "fill them before scoring")
                inputs[name] = tf.constant(column.to_numpy(zero_copy_only=False))
            yield part, serve(**inputs)


def _scorer(export_uri, key, features, keep, prediction_column, batch_size, cache_root, output_name):
    """The function ``mapInArrow`` runs on the executors (a closure over plain values only)."""

    def score_batches(batches):
        import numpy as np
        import pyarrow as pa
        serve = load_model(export_uri, key, cache_root)
        for part, outputs in _serve_parts(serve, batches, features, batch_size):
            scores = np.asarray(outputs[output_name]).reshape(part.num_rows, -1)[:, 0].astype(np.float32)
            arrays = [part.column(name) for name in keep] + [pa.array(scores, type=pa.float32())]
            yield pa.RecordBatch.from_arrays(arrays, names=list(keep) + [prediction_column])

    return score_batches


def score_dataframe(df: Any, export_uri: str, features: list[str], keep: Sequence[str] = (),
                    prediction_column: str = "prediction", batch_size: int = 4096, cache_root: str = DEFAULT_CACHE,
                    output_name: str = "prediction") -> Any:
    """A DataFrame of ``keep`` columns + ``prediction_column`` (float) for every row of ``df``."""
    from pyspark.sql.types import FloatType, StructField, StructType
    features, keep = list(features), list(keep)
    missing = [c for c in features + keep if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the data to score; it has {df.columns}")
    if prediction_column in keep:
        raise ValueError(f"--keep must not include the output column {prediction_column!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    key = export_key(export_uri)
    fields = [df.schema[name] for name in keep] + [StructField(prediction_column, FloatType(), False)]
    columns = list(dict.fromkeys(features + keep))
    fn = _scorer(export_uri, key, features, keep, prediction_column, batch_size, cache_root, output_name)
    return df.select(*columns).mapInArrow(fn, StructType(fields))


def score(spark: Any, export_uri: str, input_uri: str, output_uri: str, features: list[str], keep: Sequence[str] = (),
          overwrite: bool = False, partitions: int | None = None, **options: Any) -> dict:
    """Score the Parquet data set ``input_uri``; write predictions to ``output_uri`` atomically.

    Returns ``{"rows", "seconds", "rows_per_s", "output"}``.
    """
    if not hdfs_io.exists(input_uri):
        raise FileNotFoundError(f"input {input_uri} does not exist")
    df = spark.read.parquet(sparkprep.spark_uri(input_uri))
    return write_scores(score_dataframe(df, export_uri, features, keep, **options), output_uri,
                        overwrite=overwrite, partitions=partitions)


def write_scores(scored: Any, output_uri: str, overwrite: bool = False, partitions: int | None = None) -> dict:
    started = time.monotonic()
    if hdfs_io.exists(output_uri) and not overwrite:
        raise FileExistsError(f"output {output_uri} already exists (use --overwrite to replace it)")
    sparkprep.write_parquet(scored, output_uri, overwrite=overwrite, partitions=partitions)
    seconds = time.monotonic() - started
    rows = sum(_parquet_rows(info.uri) for info in hdfs_io.list_data_files(output_uri))
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": rows / max(seconds, 1e-9),
            "output": output_uri}


def _parquet_rows(uri):
    import pyarrow.parquet as pq
    with hdfs_io.open(uri, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


# ------------------------------------------------------------------- models with several vector outputs


def _vector_scorer(export_uri, key, features, keep, outputs, batch_size, cache_root):
    """Like :func:`_scorer`, for ``outputs`` = {serving output name: column}: each row gets the output's
    whole vector (e.g. a softmax over answers) as ``array<float>``."""

    def score_batches(batches):
        import numpy as np
        import pyarrow as pa
        serve = load_model(export_uri, key, cache_root)
        for part, result in _serve_parts(serve, batches, features, batch_size):
            arrays = [part.column(name) for name in keep]
            for output in outputs:
                values = np.asarray(result[output], dtype=np.float32).reshape(part.num_rows, -1)
                offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
                arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel())))
            yield pa.RecordBatch.from_arrays(arrays, names=list(keep) + list(outputs.values()))

    return score_batches


def score_dataframe_vectors(df: Any, export_uri: str, features: list[str], outputs: dict[str, str],
                            keep: Sequence[str] = (), batch_size: int = 4096, cache_root: str = DEFAULT_CACHE) -> Any:
    """A DataFrame of ``keep`` columns + one ``array<float>`` column per entry of ``outputs``
    ({serving output name: column name}) for every row of ``df`` (multi-output / multi-class models)."""
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType
    features, keep, outputs = list(features), list(keep), dict(outputs)
    missing = [c for c in features + keep if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the data to score; it has {df.columns}")
    clash = set(keep) & set(outputs.values())
    if clash:
        raise ValueError(f"kept column(s) {sorted(clash)} clash with output columns")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    key = export_key(export_uri)
    fields = [df.schema[name] for name in keep] + [
        StructField(column, ArrayType(FloatType(), True), True) for column in outputs.values()]
    columns = list(dict.fromkeys(features + keep))
    fn = _vector_scorer(export_uri, key, features, keep, outputs, batch_size, cache_root)
    return df.select(*columns).mapInArrow(fn, StructType(fields))
