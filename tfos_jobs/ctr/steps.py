"""The CTR job's steps on top of the runtime: train, evaluate, score (prep is in ``ctr.prep``)."""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from typing import Any

import numpy as np

import hdfs_io
from tfos_jobs import scoring, sparkprep
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig, TrainConfig
from tfos_jobs.ctr import prep as ctr_prep
from tfos_jobs.ctr import schema
from tfos_jobs.ctr.model import CTRTask, ModelConfig, summarize
from tfos_jobs.export import export_dir, load_serving, read_export_file
from tfos_jobs.feed import DataFrameSource
from tfos_jobs.task import ParquetSource
from tfos_jobs.trainer import fit

# TensorFlow and pyspark (heavy) are imported inside the steps that use them.
CONFIG_FILE = "ctr.json"          # beside the export's saved_model: how to turn raw rows into features
EVALUATION_FILE = "evaluation.json"

# The job's training defaults, for library callers and `tfos-ctr train` alike: parameter servers (a
# chief, 1 ps, 2 workers), 512 examples per worker per step.
SCALING = ScalingConfig(strategy="ps", num_workers=2, num_ps=1)
LOOP = LoopConfig(batch_size=512, epochs=1.0, checkpoint_every=500, log_every=100)


def train(sc: Any, prep_uri: str, model: ModelConfig = ModelConfig(), *, scaling: ScalingConfig = SCALING,
          loop: LoopConfig = LOOP, run: RunConfig, data: Any = None) -> Any:
    """Train on ``<prep_uri>/train`` (or on ``data``, a Spark DataFrame of prepped rows, streamed through
    the runtime's DataFrame feed), evaluate on ``<prep_uri>/valid``, export to ``run.export_uri``.

    ``model.hash_buckets`` is taken from the prep report. Returns the runtime's ``TrainResult``.
    """
    report = ctr_prep.read_report(prep_uri)
    model = dataclasses.replace(model, hash_buckets=int(report["hash_buckets"])).validate()
    source = _source(report, data)
    task = CTRTask(model, valid_uri=report["valid"] if report.get("valid_rows") else None)
    # published with the model (one unit): how raw rows become this model's features
    task.job_config = {"model": task.describe(), "hash_buckets": model.hash_buckets, "features": schema.FEATURES,
                       "label": schema.LABEL, "prep": prep_uri, "strategy": scaling.strategy,
                       "num_workers": scaling.num_workers, "batch_size": loop.batch_size}
    task.data_lineage = {"prep": prep_uri, **{k: report[k] for k in ("input", "train", "valid", "train_rows",
                                                                      "valid_rows", "rows", "bad") if k in report}}
    started = time.monotonic()
    result = fit(sc, task, source, config=TrainConfig(scaling, run, loop))
    result.metrics["train_seconds"] = round(time.monotonic() - started, 2)
    return result


def _source(report: dict, data: Any) -> Any:
    """Where training reads: the prepped Parquet files, or ``data`` through the runtime's DataFrame feed."""
    if data is None:
        return ParquetSource(report["train"], schema.FEATURES, schema.LABEL)
    # partitions stream to the TF workers as Arrow batches
    source = DataFrameSource(data, schema.FEATURES, schema.LABEL)
    source.dtypes()   # missing or non-numeric columns: a clear error before any TF node starts
    return source


def read_config(export_uri: str) -> dict:
    return read_export_file(export_uri, CONFIG_FILE, "CTR model export")


def evaluate(export_uri: str, data_uri: str, output_uri: str | None = None, batch_size: int = 8192,
             max_rows: int | None = None) -> dict:
    """AUC / log loss of the exported model (its serving signature) on a prepped Parquet data set;
    written as JSON to ``output_uri`` (default: ``evaluation.json`` beside the model files)."""
    directory = export_dir(export_uri)
    files = hdfs_io.list_data_files(sparkprep.data_dir(data_uri, "data"))   # <prep>/valid: the current version's
    if not files:
        raise FileNotFoundError(f"no Parquet data files under {data_uri}")
    import tensorflow as tf
    started = time.monotonic()
    cache = tempfile.mkdtemp(prefix="tfos-ctr-eval-")
    try:
        serve = load_serving(export_uri, cache)
        labels, scores, rows = [], [], 0
        for batch in hdfs_io.iter_record_batches(files, schema.FEATURES + [schema.LABEL], batch_size):
            out = serve(**{n: tf.constant(batch.column(n).to_numpy(zero_copy_only=False)) for n in schema.FEATURES})
            scores.append(out["prediction"].numpy().ravel())
            labels.append(batch.column(schema.LABEL).to_numpy(zero_copy_only=False))
            rows += batch.num_rows
            if max_rows and rows >= max_rows:
                break
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result = summarize(np.concatenate(labels), np.concatenate(scores))
    result.update(export=export_uri, data=data_uri, seconds=round(time.monotonic() - started, 2))
    sparkprep.write_json(result, output_uri or hdfs_io.join(directory, EVALUATION_FILE))
    return result


def score(spark: Any, export_uri: str, input_uri: str, output_uri: str, *, input_format: str = "parquet",
          labeled: bool = True, keep: list[str] | None = None, batch_size: int = 4096, overwrite: bool = False,
          partitions: int | None = None) -> dict:
    """Score a prepped Parquet data set, or raw Criteo text (parsed with the export's own prep settings;
    malformed lines are skipped and counted), writing ``keep`` columns + ``prediction`` atomically."""
    from pyspark.sql import functions as F
    if input_format not in ("parquet", "criteo"):
        raise ValueError(f"--format must be 'parquet' or 'criteo', not {input_format!r}")
    config = read_config(export_uri)
    rejected = 0
    if input_format == "parquet":
        df = spark.read.parquet(sparkprep.spark_uri(sparkprep.data_dir(input_uri)))   # one complete version
        default_keep = [schema.LABEL] if schema.LABEL in df.columns else []
    else:
        parsed = ctr_prep.parse(ctr_prep.read_lines(spark, input_uri), int(config["hash_buckets"]), labeled=labeled)
        parsed = parsed.withColumn("row_key", F.xxhash64("line"))
        counts = sparkprep.count_by(parsed.select(F.col("reason_code").isNull().alias("good")), "good")
        rejected = counts.get(False, 0)
        df = parsed.where(F.col("reason_code").isNull())
        default_keep = ["source", "row_key"] + ([schema.LABEL] if labeled else [])
    keep = default_keep if keep is None else list(keep)
    scored = scoring.score_dataframe(df, export_uri, schema.FEATURES, keep, batch_size=batch_size)
    result = scoring.write_scores(scored, output_uri, overwrite=overwrite, partitions=partitions)
    result["rejected_rows"] = rejected
    return result
