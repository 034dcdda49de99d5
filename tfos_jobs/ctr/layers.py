"""Keras layers of the CTR models (importing this module imports Keras and TensorFlow).

Registered under ``tfos_ctr`` so a saved ``model.keras`` loads them back by name.
"""
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfos_ctr")
class FMInteraction(keras.layers.Layer):
    """Pairwise FM term: 0.5 * sum_k ((sum_i v_ik)^2 - sum_i v_ik^2) over [batch, fields, k]."""

    def call(self, fields: Any) -> Any:
        square_of_sum = ops.square(ops.sum(fields, axis=1))
        sum_of_squares = ops.sum(ops.square(fields), axis=1)
        return 0.5 * ops.sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="tfos_ctr")
class CrossLayer(keras.layers.Layer):
    """DCN-v2 cross layer: x0 * (W x + b) + x."""

    def build(self, input_shape: Any) -> None:
        width = input_shape[0][-1]
        self.dense = keras.layers.Dense(width, kernel_initializer="glorot_uniform")
        self.dense.build(input_shape[1])

    def call(self, inputs: Any) -> Any:
        x0, x = inputs
        return x0 * self.dense(x) + x
