"""The multi-task survey model: a fitted logistic regression plus a network that learns what it misses.

Per target, the logits are those of a multinomial logistic regression fitted on the training split
(``survey.linear``, frozen) plus a residual from a shared MLP trunk whose last layer starts at zero:
training starts from the logistic regression and moves only where the data support it, and the
weights exported are those with the lowest log loss on a part of the training split held out of the
network's training (``TrainingTask.validation_loss``; the start is a candidate), with the residual of
each target gated off unless it beats the regression alone there by more than two standard errors. On small, noisy
surveys this is what keeps the network from losing to a linear model, which it contains (the idea of
the "combined actuarial neural network", Wüthrich & Merz, 2019). The logistic regression is exported
too, as the output ``<target>__lr``, so that batch, streaming and online scoring can use either.

Categorical questions share one embedding table in the trunk (each column's ids offset into it: one
lookup for hundreds of questions); ordinal/numeric values and missing indicators are stacked as they
are. An ``ordinal`` target adds the ranked probability score (proper, and it charges a far answer more
than a near one) to its cross-entropy. A target a respondent did not answer (label -1) adds nothing.
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
LINEAR = "__lr"   # the logistic regression's output: "<target label>__lr"


def build_survey_model(plan: dict, hidden: Any = (128, 64), embedding_dim: int = 8, dropout: float = 0.1,
                       linear: dict | None = None) -> Any:
    """``linear``: ``{label: {"table", "kernel", "bias"}}`` (``survey.linear.fit_linear``); without it the
    heads are plain softmax layers (no ``__lr`` outputs)."""
    import keras
    from tfos_jobs.survey.layers import Gate, LinearLogits, SharedEmbedding, StackColumns
    dtypes = plan["inputs"]
    inputs = {name: keras.Input(shape=(), name=name, dtype=dtype) for name, dtype in dtypes.items()}
    categorical = [f for f in plan["features"] if f["type"] == "categorical"]
    dense_names = [n for n, d in dtypes.items() if d == "float32"]
    ids = StackColumns("int64", name="categorical_ids")([inputs[f["input"]] for f in categorical]) \
        if categorical else None
    dense = StackColumns("float32", name="dense_values")([inputs[n] for n in dense_names]) if dense_names else None
    parts = [SharedEmbedding([f["vocab_size"] for f in categorical], embedding_dim, name="answer_embeddings")(ids)] \
        if categorical else []
    parts += [dense] if dense is not None else []
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="all_answers")(parts)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(int(units), activation="relu", name=f"trunk_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"trunk_dropout_{i}")(x)
    outputs, fixed = {}, {}
    for t in plan["targets"]:
        label, width = t["label"], len(t["classes"])
        logits = keras.layers.Dense(width, name=f"{label}__deep",
                                    kernel_initializer="zeros" if linear else "glorot_uniform")(x)
        if linear:
            layer = LinearLogits([f["vocab_size"] for f in categorical], len(dense_names), width,
                                 name=f"{label}__linear")
            lr_logits = layer([ids if ids is not None else dense, dense if dense is not None else ids])
            fixed[layer.name] = linear[label]
            outputs[label + LINEAR] = keras.layers.Activation("softmax", name=label + LINEAR)(lr_logits)
            logits = keras.layers.Add(name=f"{label}__logits")([lr_logits, Gate(name=f"{label}__gate")(logits)])
        outputs[label] = keras.layers.Activation("softmax", name=label)(logits)
    model = keras.Model(inputs, outputs, name="survey_multitask")
    for name, weights in fixed.items():
        layer = model.get_layer(name)
        layer.set_weights([np.asarray(weights[k], dtype="float32").reshape(v.shape)
                           for k, v in zip(("table", "kernel", "bias"), layer.weights)])
    return model


def masked_cross_entropy(labels: Any, probabilities: Any) -> Any:
    """Per-example sparse categorical cross-entropy, 0 where the label is -1 (not answered)."""
    import keras
    labels = keras.ops.cast(labels, "int64")
    answered = keras.ops.cast(labels >= 0, "float32")
    safe = keras.ops.maximum(labels, 0)
    loss = keras.losses.sparse_categorical_crossentropy(safe, probabilities)
    return loss * answered


def masked_ranked_probability_score(labels: Any, probabilities: Any) -> Any:
    """Per-example ranked probability score over ordered answers, ``sum_k (F_k - [y <= k])^2 / (K - 1)``
    with ``F`` the predicted cumulative distribution; 0 where the label is -1."""
    import keras
    labels = keras.ops.cast(labels, "int64")
    answered = keras.ops.cast(labels >= 0, "float32")
    width = probabilities.shape[-1]
    cumulative = keras.ops.cumsum(probabilities, axis=-1)[:, :-1]
    steps = keras.ops.arange(width - 1, dtype="int64")
    observed = keras.ops.cast(steps[None, :] >= labels[:, None], "float32")
    score = keras.ops.sum(keras.ops.square(cumulative - observed), axis=-1) / float(width - 1)
    return score * answered


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


def row_log_loss(labels: Any, probabilities: Any, eps: float = 1e-7) -> np.ndarray:
    """The log loss of each answered row (label >= 0)."""
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    picked = np.asarray(probabilities, dtype=np.float64)[keep][np.arange(int(keep.sum())), labels[keep]]
    return -np.log(np.clip(picked, eps, 1.0))


GATE_STANDARD_ERRORS = 2.0


def clearly_better(losses: np.ndarray, baseline: np.ndarray) -> bool:
    """Whether ``losses`` beat ``baseline`` (per row, the same rows) by more than
    :data:`GATE_STANDARD_ERRORS` standard errors of the mean difference, so that a few dozen held-out
    rows do not switch the network on by chance. One standard error let it on in 2 of 25 target-folds
    of a 237-respondent survey where nothing is predictable (the best of ~25 checks is an optimistic
    pick); two kept it off there and kept it on where it helps (``benchmarks/survey_quality.py``)."""
    difference = np.asarray(baseline) - np.asarray(losses)
    if len(difference) < 2:
        return False
    return float(difference.mean()) > GATE_STANDARD_ERRORS * float(difference.std(ddof=1)) / np.sqrt(len(difference))


def median_answer(probabilities: Any) -> np.ndarray:
    """The median of each row's distribution over ordered answers: what minimizes the expected error
    in answer steps (MAE)."""
    return np.argmax(np.cumsum(np.asarray(probabilities, dtype=np.float64), axis=1) >= 0.5 - 1e-9, axis=1)


def target_metrics(labels: Any, probabilities: Any, ordinal: bool = False, eps: float = 1e-7) -> dict[str, float]:
    """Accuracy and mean log loss over answered rows (label >= 0), and for an ordinal target the mean
    absolute error in answer steps of the predicted median; ``rows`` counts them."""
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        return {"rows": 0, "accuracy": float("nan"), "log_loss": float("nan"),
                **({"mae": float("nan")} if ordinal else {})}
    losses = row_log_loss(labels, probabilities, eps)
    labels, probabilities = labels[keep], np.asarray(probabilities, dtype=np.float64)[keep]
    out = {"rows": int(keep.sum()), "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
           "log_loss": float(np.mean(losses))}
    if ordinal:
        out["mae"] = float(np.mean(np.abs(median_answer(probabilities) - labels)))
    return out


class SurveyTask(TrainingTask):
    """A :class:`~tfos_jobs.task.TrainingTask` over a prep plan (``prep.json``); small to pickle.

    ``linear``: the fitted logistic regression per target (the model's fixed part); ``holdout_uri``:
    training rows held out of the network's training, for ``validation_loss``; ``valid_uri``: the
    validation split, for the exported metrics."""
    export_kind = "survey-export"

    def __init__(self, plan: dict, valid_uri: str | None = None, linear: dict | None = None,
                 holdout_uri: str | None = None, lr_regularization: dict | None = None, **model_options: Any):
        options = dict(DEFAULTS)
        options.update(plan.get("spec", {}).get("model") or {})
        options.update({k: v for k, v in model_options.items() if v is not None})
        self.plan = {"inputs": plan["inputs"],
                     "targets": [{"label": t["label"], "classes": t["classes"], "type": t.get("type", "categorical")}
                                 for t in plan["targets"]],
                     "features": [{"type": f["type"], "input": f["input"], "vocab_size": f.get("vocab_size")}
                                  for f in plan["features"]]}
        self.options = options
        self.learning_rate = float(options["learning_rate"])
        self.valid_uri, self.holdout_uri = valid_uri, holdout_uri
        self.linear = linear
        self.lr_regularization = lr_regularization or {}   # {label: MLlib regParam chosen}
        self.plan_id = plan_id(plan)
        self.full_plan = plan   # published with the model: the export encodes raw answers without --prep
        self._holdout = None    # (features, labels), read once on the chief

    def export_files(self) -> dict[str, Any]:
        return {PLAN_FILE: self.full_plan}

    def lineage(self) -> dict[str, Any]:
        return {"job": "survey", "data": self.full_plan.get("data"), "rows": self.full_plan.get("rows"),
                "plan_id": self.plan_id}

    def build_model(self) -> Any:
        return build_survey_model(self.plan, hidden=self.options["hidden"], embedding_dim=self.options["embedding_dim"],
                                  dropout=self.options["dropout"], linear=self.linear)

    def per_example_loss(self, labels: Any, predictions: Any) -> Any:
        if not isinstance(labels, dict):  # a single target arrives as a plain tensor
            labels = {self.plan["targets"][0]["label"]: labels}
        total = None
        for t in self.plan["targets"]:
            name = t["label"]
            loss = masked_cross_entropy(labels[name], predictions[name])
            if t["type"] == "ordinal":
                loss = loss + masked_ranked_probability_score(labels[name], predictions[name])
            total = loss if total is None else total + loss
        return total

    def _read(self, uri: str) -> tuple[dict, dict]:
        columns = list(self.plan["inputs"]) + [t["label"] for t in self.plan["targets"]]
        table = hdfs_io.read_parquet(uri, columns=columns).slice(0, EVAL_MAX_ROWS)
        return ({name: table.column(name).to_numpy() for name in self.plan["inputs"]},
                {t["label"]: table.column(t["label"]).to_numpy() for t in self.plan["targets"]})

    def validation_loss(self, model: Any) -> float | None:
        """The summed log loss of the targets on the held-out training rows (None without them). A
        target whose logistic regression alone does at least as well there gets its residual gated off
        in ``model`` (the copy that is exported when this check is the best)."""
        if not self.holdout_uri:
            return None
        if self._holdout is None:
            self._holdout = self._read(self.holdout_uri)
        features, labels = self._holdout
        probabilities = predict_probabilities(model, features)
        total, counted = 0.0, 0
        for t in self.plan["targets"]:
            name = t["label"]
            losses = row_log_loss(labels[name], probabilities[name])
            if not len(losses):   # nobody in the holdout answered this target
                continue
            if name + LINEAR in probabilities:
                alone = row_log_loss(labels[name], probabilities[name + LINEAR])
                if not clearly_better(losses, alone):
                    model.get_layer(f"{name}__gate").gate.assign(0.0)
                    losses = alone
            total, counted = total + float(np.mean(losses)), counted + 1
        return total if counted else None

    def evaluate(self, model: Any, context: Any) -> dict:
        """Per-target accuracy / log loss (and MAE of an ordinal target) of the model and of its
        logistic regression on (up to EVAL_MAX_ROWS of) the validation split."""
        if not self.valid_uri:
            return {"survey_plan_id": self.plan_id}
        features, labels = self._read(self.valid_uri)
        probabilities = predict_probabilities(model, features)
        out = {"survey_plan_id": self.plan_id}
        for t in self.plan["targets"]:
            for head, prefix in ((t["label"], ""), (t["label"] + LINEAR, "lr/")):
                if head not in probabilities:
                    continue
                metrics = target_metrics(labels[t["label"]], probabilities[head], t["type"] == "ordinal")
                for key, value in metrics.items():
                    out[f"valid/{t['label']}/{prefix}{key}"] = value
            if t["label"] in self.lr_regularization:
                out[f"valid/{t['label']}/lr/reg"] = float(self.lr_regularization[t["label"]])
        return out
