"""The multi-task survey model: a shared trunk over every encoded question, one softmax head per target.

Categorical questions share one embedding table (each column's ids offset into it: one lookup for
hundreds of questions instead of hundreds of layers); ordinal/numeric values and missing indicators
are stacked as they are. The trunk is a small MLP; each target gets ``Dense(classes, softmax)``.
A target that a respondent did not answer (label -1) adds nothing to that respondent's loss.
"""
from __future__ import annotations

from typing import Any

import numpy as np

import hdfs_io
from tfos_jobs.survey.prep import PLAN_FILE, plan_id
from tfos_jobs.task import TrainingTask

# Keras and TensorFlow (heavy; survey.layers imports Keras) load inside the functions that build or run a model.
DEFAULTS = {"hidden": [128, 64], "embedding_dim": 8, "dropout": 0.1, "learning_rate": 0.002}
EVAL_MAX_ROWS = 200_000


def build_survey_model(plan: dict, hidden: Any = (128, 64), embedding_dim: int = 8, dropout: float = 0.1) -> Any:
    import keras
    from tfos_jobs.survey.layers import SharedEmbedding, StackColumns
    dtypes = plan["inputs"]
    inputs = {name: keras.Input(shape=(), name=name, dtype=dtype) for name, dtype in dtypes.items()}
    parts = []
    categorical = [f for f in plan["features"] if f["type"] == "categorical"]
    if categorical:
        ids = StackColumns("int64", name="categorical_ids")([inputs[f["input"]] for f in categorical])
        parts.append(SharedEmbedding([f["vocab_size"] for f in categorical], embedding_dim,
                                     name="answer_embeddings")(ids))
    dense_names = [n for n, d in dtypes.items() if d == "float32"]
    if dense_names:
        parts.append(StackColumns("float32", name="dense_values")([inputs[n] for n in dense_names]))
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="all_answers")(parts)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(int(units), activation="relu", name=f"trunk_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"trunk_dropout_{i}")(x)
    outputs = {t["label"]: keras.layers.Dense(len(t["classes"]), activation="softmax", name=t["label"])(x)
               for t in plan["targets"]}
    return keras.Model(inputs, outputs, name="survey_multitask")


def masked_cross_entropy(labels: Any, probabilities: Any) -> Any:
    """Per-example sparse categorical cross-entropy, 0 where the label is -1 (not answered)."""
    import keras
    labels = keras.ops.cast(labels, "int64")
    answered = keras.ops.cast(labels >= 0, "float32")
    safe = keras.ops.maximum(labels, 0)
    loss = keras.losses.sparse_categorical_crossentropy(safe, probabilities)
    return loss * answered


def predict_probabilities(model_or_serving: Any, features: dict[str, np.ndarray],
                          batch_size: int = 4096) -> dict[str, np.ndarray]:
    """``{label: [rows, classes] float array}`` from a Keras model or a SavedModel serving function."""
    n = len(next(iter(features.values())))
    out = {}
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in features.items()}
        if hasattr(model_or_serving, "predict"):
            result = model_or_serving.predict(chunk, batch_size=batch_size, verbose=0)
        else:
            import tensorflow as tf
            result = model_or_serving(**{k: tf.constant(v) for k, v in chunk.items()})
        for key, value in result.items():
            out.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in out.items()}


def target_metrics(labels: Any, probabilities: Any, eps: float = 1e-7) -> dict[str, float]:
    """Accuracy and mean log loss over answered rows (label >= 0); ``rows`` counts them."""
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        return {"rows": 0, "accuracy": float("nan"), "log_loss": float("nan")}
    labels, probabilities = labels[keep], np.asarray(probabilities, dtype=np.float64)[keep]
    picked = np.clip(probabilities[np.arange(len(labels)), labels], eps, 1.0)
    return {"rows": int(keep.sum()), "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
            "log_loss": float(-np.mean(np.log(picked)))}


class SurveyTask(TrainingTask):
    """A :class:`~tfos_jobs.task.TrainingTask` over a prep plan (``prep.json``); small to pickle."""
    export_kind = "survey-export"

    def __init__(self, plan: dict, valid_uri: str | None = None, **model_options: Any):
        options = dict(DEFAULTS)
        options.update(plan.get("spec", {}).get("model") or {})
        options.update({k: v for k, v in model_options.items() if v is not None})
        self.plan = {"inputs": plan["inputs"], "targets": [{"label": t["label"], "classes": t["classes"]}
                                                           for t in plan["targets"]],
                     "features": [{"type": f["type"], "input": f["input"], "vocab_size": f.get("vocab_size")}
                                  for f in plan["features"]]}
        self.options = options
        self.learning_rate = float(options["learning_rate"])
        self.valid_uri = valid_uri
        self.plan_id = plan_id(plan)
        self.full_plan = plan   # published with the model: the export encodes raw answers without --prep

    def export_files(self) -> dict[str, Any]:
        return {PLAN_FILE: self.full_plan}

    def lineage(self) -> dict[str, Any]:
        return {"job": "survey", "data": self.full_plan.get("data"), "rows": self.full_plan.get("rows"),
                "plan_id": self.plan_id}

    def build_model(self) -> Any:
        return build_survey_model(self.plan, hidden=self.options["hidden"],
                                  embedding_dim=self.options["embedding_dim"], dropout=self.options["dropout"])

    def per_example_loss(self, labels: Any, predictions: Any) -> Any:
        if not isinstance(labels, dict):  # a single target arrives as a plain tensor
            labels = {self.plan["targets"][0]["label"]: labels}
        losses = [masked_cross_entropy(labels[name], predictions[name]) for name in predictions]
        total = losses[0]
        for loss in losses[1:]:
            total = total + loss
        return total

    def evaluate(self, model: Any, context: Any) -> dict:
        """Per-target accuracy / log loss on (up to EVAL_MAX_ROWS of) the validation split."""
        if not self.valid_uri:
            return {"survey_plan_id": self.plan_id}
        columns = list(self.plan["inputs"]) + [t["label"] for t in self.plan["targets"]]
        table = hdfs_io.read_parquet(self.valid_uri, columns=columns).slice(0, EVAL_MAX_ROWS)
        features = {name: table.column(name).to_numpy() for name in self.plan["inputs"]}
        probabilities = predict_probabilities(model, features)
        out = {"survey_plan_id": self.plan_id}
        for t in self.plan["targets"]:
            for key, value in target_metrics(table.column(t["label"]).to_numpy(), probabilities[t["label"]]).items():
                out[f"valid/{t['label']}/{key}"] = value
        return out
