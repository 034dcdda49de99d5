"""A toy click-through-rate task: the smallest real model and data the runtime's tests, benchmarks and
docs train. (The real CTR job, with Criteo data, prep and scoring, is ``tfos_jobs.ctr``.)"""

from typing import Any

import numpy as np

import hdfs_io
from tfos_jobs import metrics
from tfos_jobs.task import TrainingTask

NUMERIC = [f"num_{i}" for i in range(4)]
CATEGORICAL = [f"cat_{i}" for i in range(3)]
VOCAB = 200


def synthetic_ctr(rows: int, seed: int) -> Any:
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

    def __init__(self, validation_uri: str, embedding_dim: int = 8, hidden: tuple = (32, 16)):
        self.validation_uri = validation_uri
        self.embedding_dim = embedding_dim
        self.hidden = hidden

    def build_model(self) -> Any:
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

    def evaluate(self, model: Any, context: Any) -> dict:
        table = hdfs_io.read_parquet(self.validation_uri)
        features = {name: table.column(name).to_numpy() for name in NUMERIC + CATEGORICAL}
        scores = model.predict(features, batch_size=4096, verbose=0).ravel()
        labels = table.column("label").to_numpy()
        return {"auc": metrics.auc(labels, scores), "log_loss": metrics.log_loss(labels, scores)}
