"""``make demo``: a small synthetic click-through-rate job, end to end, on the embedded default.

Storage is ``file://`` under the repo's ``work/demo``; Spark is ``local-cluster`` with 2 executors;
2 TF workers train with MultiWorkerMirroredStrategy; the chief exports the model and its AUC.
"""
import argparse
import os
import sys
import time

import numpy as np

import hdfs_io
from tfos_jobs import metrics
from tfos_jobs.task import ParquetSource, TrainingTask

NUMERIC = [f"num_{i}" for i in range(4)]
CATEGORICAL = [f"cat_{i}" for i in range(3)]
VOCAB = 200
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_ctr(rows, seed):
    """Clicks from a known logistic model over numeric features and skewed categorical ids."""
    import pyarrow as pa
    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=rows).astype(np.float32) for name in NUMERIC}
    weights = np.random.default_rng(7).normal(size=(len(CATEGORICAL), VOCAB))  # fixed across splits
    logit = 0.8 * columns["num_0"] - 0.6 * columns["num_1"] + 0.4 * columns["num_2"] * columns["num_3"] - 1.0
    for i, name in enumerate(CATEGORICAL):
        ids = np.minimum(rng.zipf(1.3, size=rows) - 1, VOCAB - 1).astype(np.int64)
        columns[name] = ids
        logit += weights[i, ids]
    columns["label"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return pa.table(columns)


class DemoCTRTask(TrainingTask):
    """Embeddings for the categorical ids, concatenated with the numeric features, into an MLP."""

    def __init__(self, validation_uri, embedding_dim=8, hidden=(32, 16)):
        self.validation_uri = validation_uri
        self.embedding_dim = embedding_dim
        self.hidden = hidden

    def build_model(self):
        import keras
        inputs = {name: keras.Input(shape=(), name=name, dtype="float32") for name in NUMERIC}
        inputs.update({name: keras.Input(shape=(), name=name, dtype="int64") for name in CATEGORICAL})
        numeric = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs[n]) for n in NUMERIC])
        embedded = [keras.layers.Embedding(VOCAB, self.embedding_dim)(inputs[n]) for n in CATEGORICAL]
        x = keras.layers.Concatenate()([numeric] + embedded)
        for units in self.hidden:
            x = keras.layers.Dense(units, activation="relu")(x)
        output = keras.layers.Dense(1, activation="sigmoid", name="click")(x)
        return keras.Model(inputs, output)

    def evaluate(self, model, context):
        table = hdfs_io.read_parquet(self.validation_uri)
        features = {name: table.column(name).to_numpy() for name in NUMERIC + CATEGORICAL}
        scores = model.predict(features, batch_size=4096, verbose=0).ravel()
        labels = table.column("label").to_numpy()
        return {"auc": metrics.auc(labels, scores), "log_loss": metrics.log_loss(labels, scores)}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="tfos-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=os.path.join(REPO, "work", "demo"),
                        help="storage URI for data, checkpoints and export (default: %(default)s)")
    parser.add_argument("--data", help="an existing training Parquet data set (default: generate one)")
    parser.add_argument("--rows", type=int, default=40_000, help="rows to generate (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--strategy", choices=["mwms", "ps"], default="mwms")
    parser.add_argument("--master", help="Spark master (default: local-cluster with 2 executors)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"tfos-demo: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # JavaNotFound, TrainingFailed (with the node's traceback), ...
        print(f"tfos-demo: error: {err}", file=sys.stderr)
        return 1


def run(args):
    from tfos_jobs.spark import java_version, local_cluster_master, spark_session
    from tfos_jobs.trainer import fit
    java_version()  # before any work, so a missing Java is the first and only error
    started = time.monotonic()
    root = args.work_dir
    model_dir, export_uri = hdfs_io.join(root, "model"), hdfs_io.join(root, "export")
    for uri in (model_dir, export_uri):  # a demo starts fresh; `fit` itself would resume
        if hdfs_io.exists(uri):
            hdfs_io.delete(uri, recursive=True)
    train_uri, valid_uri = hdfs_io.join(root, "data", "train"), hdfs_io.join(root, "data", "valid")
    if args.data:
        if not hdfs_io.exists(args.data):
            raise FileNotFoundError(f"--data {args.data} does not exist")
        train_uri = args.data
    else:
        hdfs_io.write_parquet(synthetic_ctr(args.rows, seed=1), train_uri, overwrite=True,
                              rows_per_file=max(args.rows // 8, 1))
    if not hdfs_io.exists(valid_uri):
        hdfs_io.write_parquet(synthetic_ctr(max(args.rows // 4, 1000), seed=2), valid_uri, overwrite=True)
    num_ps, workers = (1, 2) if args.strategy == "ps" else (0, 2)
    executors = workers + num_ps + (1 if args.strategy == "ps" else 0)
    spark = spark_session(args.master or local_cluster_master(executors), app_name="tfos-demo")
    try:
        result = fit(spark.sparkContext, DemoCTRTask(valid_uri),
                     ParquetSource(train_uri, NUMERIC + CATEGORICAL, "label"),
                     strategy=args.strategy, num_workers=workers, num_ps=max(num_ps, 1),
                     model_dir=model_dir, export_uri=export_uri,
                     epochs=args.epochs, batch_size=256, log_every=50)
    finally:
        spark.stop()
    print(f"exported model: {result.export_uri}")
    print(f"validation AUC: {result.metrics['auc']:.4f}  (log loss {result.metrics['log_loss']:.4f}, "
          f"{result.steps} steps, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
