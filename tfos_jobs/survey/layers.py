"""Keras layers of the survey model (importing this module imports Keras and TensorFlow)."""
from typing import Any

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="tfos_survey")
class StackColumns(keras.layers.Layer):
    """A list of ``[batch]`` tensors → ``[batch, n]`` (cast to this layer's dtype)."""

    def __init__(self, out_dtype: str = "float32", **kwargs: Any):
        super().__init__(**kwargs)
        self.out_dtype = out_dtype

    def call(self, columns: list) -> Any:
        return keras.ops.stack([keras.ops.cast(c, self.out_dtype) for c in columns], axis=1)

    def compute_output_shape(self, shapes: list) -> tuple:
        return (shapes[0][0], len(shapes))

    def get_config(self) -> dict:
        return dict(super().get_config(), out_dtype=self.out_dtype)


@keras.saving.register_keras_serializable(package="tfos_survey")
class SharedEmbedding(keras.layers.Layer):
    """``[batch, n]`` ids of ``n`` columns (column i in ``[0, vocab_sizes[i])``) → ``[batch, n * dim]``
    through one table of ``sum(vocab_sizes)`` rows; out-of-range ids are clipped."""

    def __init__(self, vocab_sizes: list[int], dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.dim = int(dim)
        self.offsets = np.concatenate([[0], np.cumsum(self.vocab_sizes)[:-1]]).astype("int64")
        self.table = keras.layers.Embedding(int(sum(self.vocab_sizes)), self.dim,
                                            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05))

    def build(self, input_shape: Any) -> None:
        self.table.build((None, len(self.vocab_sizes)))

    def call(self, ids: Any) -> Any:
        upper = keras.ops.convert_to_tensor(np.array(self.vocab_sizes, dtype="int64") - 1)
        ids = keras.ops.clip(ids, 0, upper) + keras.ops.convert_to_tensor(self.offsets)
        return keras.ops.reshape(self.table(ids), (-1, len(self.vocab_sizes) * self.dim))

    def compute_output_shape(self, shape: tuple) -> tuple:
        return (shape[0], len(self.vocab_sizes) * self.dim)

    def get_config(self) -> dict:
        return dict(super().get_config(), vocab_sizes=self.vocab_sizes, dim=self.dim)


@keras.saving.register_keras_serializable(package="tfos_survey")
class LinearLogits(keras.layers.Layer):
    """Fixed multinomial logistic regression logits: categorical ids ``[batch, n]`` (column i in
    ``[0, vocab_sizes[i])``) through one ``[sum(vocab_sizes), units]`` table summed over the columns
    (one-hot times weights), plus dense values ``[batch, d] @ kernel``, plus a bias. Not trainable: its
    weights are set from a fitted logistic regression (``survey.linear``)."""

    def __init__(self, vocab_sizes: list[int], dense_width: int, units: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.dense_width, self.units = int(dense_width), int(units)
        self.offsets = np.concatenate([[0], np.cumsum(self.vocab_sizes)[:-1]]).astype("int64")
        self.trainable = False

    def build(self, input_shape: Any) -> None:
        rows = max(int(sum(self.vocab_sizes)), 1)
        self.table = self.add_weight(shape=(rows, self.units), initializer="zeros", trainable=False, name="table")
        self.kernel = self.add_weight(shape=(max(self.dense_width, 1), self.units), initializer="zeros",
                                      trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", trainable=False, name="bias")

    def call(self, inputs: list) -> Any:
        ids, dense = inputs
        logits = self.bias
        if self.vocab_sizes:
            upper = keras.ops.convert_to_tensor(np.array(self.vocab_sizes, dtype="int64") - 1)
            rows = keras.ops.clip(ids, 0, upper) + keras.ops.convert_to_tensor(self.offsets)
            logits = logits + keras.ops.sum(keras.ops.take(self.table, rows, axis=0), axis=1)
        if self.dense_width:
            logits = logits + keras.ops.matmul(dense, self.kernel)
        return logits

    def compute_output_shape(self, shapes: list) -> tuple:
        return (shapes[0][0], self.units)

    def get_config(self) -> dict:
        return dict(super().get_config(), vocab_sizes=self.vocab_sizes, dense_width=self.dense_width,
                    units=self.units)


@keras.saving.register_keras_serializable(package="tfos_survey")
class Gate(keras.layers.Layer):
    """Its input times a fixed 0/1 gate (never trained, 1 while training): validation switches off a
    target's network residual where the logistic regression alone does better on held-out rows."""

    def build(self, input_shape: Any) -> None:
        self.gate = self.add_weight(shape=(), initializer="ones", trainable=False, name="gate")

    def call(self, x: Any) -> Any:
        return x * self.gate

    def compute_output_shape(self, shape: tuple) -> tuple:
        return shape
