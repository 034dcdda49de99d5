"""Generic batch scoring on Spark with an exported model (``tfos_jobs.export`` layout).

Each executor's Python worker loads the SavedModel once (downloaded to a local cache shared by the
user's workers on a host, keyed by the export's content so a re-published export is fetched again;
the cache is private to the user and every cached file is checked against the sha256 manifest written
at download before TensorFlow loads it) and
scores its partitions in Arrow record batches through ``mapInArrow``: no row-by-row Python, no
pickling. The predictions (kept columns + ``prediction``) are written as Parquet atomically: they
appear complete, with ``_SUCCESS``, or not at all.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from typing import Any, Sequence

import hdfs_io
from tfos_jobs import localdirs, sparkprep
from tfos_jobs.export import METRICS_FILE, SAVED_MODEL, SAVED_MODEL_PB, export_dir, saved_model_path

# TensorFlow and pyspark (heavy) are imported inside the functions that load models and build DataFrames.
DEFAULT_CACHE = ""   # "": <the user's private root>/scoring (tfos_jobs.localdirs), resolved on each executor
VERSION_COLUMN = "model_version"   # on every prediction: the export version that made it
MANIFEST = "_MANIFEST.json"   # {"export_key": key, "files": {relative path: sha256}}; written last
log = logging.getLogger("tfos_jobs")
_LOADED = {}   # per Python worker process: cache key -> serving function


def export_key(directory: str) -> str:
    """A key that changes whenever the export directory's content may differ (driver side): its URI
    (a new publish is a new version directory), the SavedModel's size and the metrics."""
    digest = hashlib.sha1(directory.encode())
    saved_model = hdfs_io.join(saved_model_path(directory), SAVED_MODEL_PB)
    metrics = hdfs_io.join(directory, METRICS_FILE)
    if not hdfs_io.exists(metrics):
        raise FileNotFoundError(f"{directory} is not a model export: {metrics} is missing")
    digest.update(str(hdfs_io.size(saved_model)).encode())
    with hdfs_io.open(metrics, "rb") as handle:
        digest.update(handle.read())
    return digest.hexdigest()[:16]


def load_model(export_uri: str, key: str, cache_root: str = DEFAULT_CACHE) -> Any:
    """The export's ``serving_default`` function, loaded at most once per process; the download is
    shared by the processes of a host (file lock + verified manifest)."""
    if key in _LOADED:
        return _LOADED[key]
    import tensorflow as tf
    if os.path.isdir(export_uri) or export_uri.startswith("file://"):
        local = export_uri[len("file://"):] if export_uri.startswith("file://") else export_uri
    else:
        local = cached_export(export_uri, key, cache_root)
    _LOADED[key] = tf.saved_model.load(saved_model_path(local)).signatures["serving_default"]
    return _LOADED[key]


def cached_export(export_uri: str, key: str, cache_root: str = DEFAULT_CACHE) -> str:
    """The local copy of the export ``key`` in the private cache: reused only when every file matches
    the manifest written at its download, else downloaded again."""
    if cache_root:
        localdirs.ensure_dirs(cache_root, user_given=True)
        localdirs.check_dir(cache_root)   # the cache itself: ours, 0700
    else:
        cache_root = localdirs.ensure_dirs(localdirs.user_root(), "scoring")
    local = os.path.join(cache_root, key)
    with open(os.path.join(cache_root, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = _unverified(local, key)
        if problem:
            if os.path.lexists(local):
                log.warning("scoring cache %s is not trusted (%s): downloading %s again", local, problem, export_uri)
            _remove(local)
            localdirs.ensure_dir(local)
            hdfs_io.download(export_uri, local)
            os.chmod(local, 0o700)   # whatever mode a copy carried over
            _write_manifest(local, key)
    return local


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _file_hashes(local):
    """{relative path: sha256} of the regular files under ``local`` (the manifest excluded); a symlink
    or other special file raises ValueError."""
    hashes = {}
    for top, dirs, files in os.walk(local):
        for name in dirs + files:
            path = os.path.join(top, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode) and name in dirs:
                continue
            if not stat.S_ISREG(mode):
                raise ValueError(f"{path} is not a regular file")
            rel = os.path.relpath(path, local)
            if rel != MANIFEST:
                hashes[rel] = localdirs.file_sha256(path)
    return hashes


def _write_manifest(local, key):
    files = _file_hashes(local)
    tmp = os.path.join(local, f".{MANIFEST}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        json.dump({"export_key": key, "files": files}, handle, sort_keys=True)
    os.replace(tmp, os.path.join(local, MANIFEST))


def _unverified(local, key):
    """None when ``local`` is a private directory of ours whose files are exactly those of its
    manifest, with the same sha256; else what is wrong."""
    if not os.path.lexists(local):
        return "not cached"
    try:
        localdirs.check_dir(local)
        manifest = os.path.join(local, MANIFEST)
        info = os.lstat(manifest)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return f"{MANIFEST} is not a regular file of ours that only we can write"
        with open(manifest) as handle:
            expected = json.load(handle)
        if not isinstance(expected, dict) or expected.get("export_key") != key:
            return f"{MANIFEST} is not the manifest of export key {key}"
        actual = _file_hashes(local)
    except (OSError, ValueError) as err:   # a missing manifest, bad JSON, a symlink, a foreign directory
        return str(err)
    files = expected.get("files")
    if not isinstance(files, dict):
        return f"{MANIFEST} lists no files"
    changed = sorted(p for p in set(actual) | set(files) if actual.get(p) != files.get(p))
    return f"files differ from {MANIFEST}: {changed[:5]}" if changed else None


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


def model_version(directory: str) -> str:
    """The version name of an export directory (:func:`export_dir`): ``<n>`` of a numbered version,
    the version directory of a replaceable export. Every prediction carries it."""
    return directory.rstrip("/").rsplit("/", 1)[-1]


def score_dataframe(df: Any, export_uri: str, features: list[str], keep: Sequence[str] = (),
                    prediction_column: str = "prediction", batch_size: int = 4096, cache_root: str = DEFAULT_CACHE,
                    output_name: str = "prediction") -> Any:
    """A DataFrame of ``keep`` columns, ``prediction_column`` (float) and :data:`VERSION_COLUMN` for
    every row of ``df`` (batch or streaming)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType, StructField, StructType
    features, keep = list(features), list(keep)
    missing = [c for c in features + keep if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the data to score; it has {df.columns}")
    for taken in (prediction_column, VERSION_COLUMN):
        if taken in keep:
            raise ValueError(f"--keep must not include the output column {taken!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    directory = export_dir(export_uri)   # one version for the whole job, even if a new one is published
    key = export_key(directory)
    fields = [df.schema[name] for name in keep] + [StructField(prediction_column, FloatType(), False)]
    columns = list(dict.fromkeys(features + keep))
    fn = _scorer(directory, key, features, keep, prediction_column, batch_size, cache_root, output_name)
    return df.select(*columns).mapInArrow(fn, StructType(fields)).withColumn(VERSION_COLUMN,
                                                                            F.lit(model_version(directory)))


def score(spark: Any, export_uri: str, input_uri: str, output_uri: str, features: list[str], keep: Sequence[str] = (),
          overwrite: bool = False, partitions: int | None = None, **options: Any) -> dict:
    """Score the Parquet data set ``input_uri``; write predictions to ``output_uri`` atomically.

    Returns ``{"rows", "seconds", "rows_per_s", "output"}``.
    """
    df = spark.read.parquet(sparkprep.spark_uri(sparkprep.data_dir(input_uri)))   # one complete version
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
    ({serving output name: column name}) + :data:`VERSION_COLUMN` for every row of ``df``
    (multi-output / multi-class models)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType
    features, keep, outputs = list(features), list(keep), dict(outputs)
    missing = [c for c in features + keep if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the data to score; it has {df.columns}")
    clash = set(keep) & (set(outputs.values()) | {VERSION_COLUMN})
    if clash:
        raise ValueError(f"kept column(s) {sorted(clash)} clash with output columns")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    directory = export_dir(export_uri)   # one version for the whole job, even if a new one is published
    key = export_key(directory)
    fields = [df.schema[name] for name in keep] + [
        StructField(column, ArrayType(FloatType(), True), True) for column in outputs.values()]
    columns = list(dict.fromkeys(features + keep))
    fn = _vector_scorer(directory, key, features, keep, outputs, batch_size, cache_root)
    return df.select(*columns).mapInArrow(fn, StructType(fields)).withColumn(VERSION_COLUMN,
                                                                            F.lit(model_version(directory)))
