"""Models for the preflight tests: a clean one, and one with an op that has no deterministic
implementation on this backend (a real one where a CPU has it: TensorFlow's tf.timestamp,
torch's put_; simulated for JAX, whose XLA refuses such ops on GPUs only).

Also a script for `keras-repro preflight`: build_model() is the failing model when the
environment variable PREFLIGHT_FAIL is set, data() the arrays.
"""

import os

import keras
import numpy as np

from keras_repro.determinism import kernel_state

BACKEND = keras.backend.backend()


@keras.saving.register_keras_serializable(package="preflight_tests")
class Nondeterministic(keras.layers.Layer):
    """Passes its input through an op without a deterministic implementation."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        if BACKEND == "tensorflow":
            import tensorflow as tf

            return inputs + tf.cast(tf.timestamp(), inputs.dtype) * 0.0
        if BACKEND == "torch":
            import torch

            out = torch.zeros_like(inputs).reshape(-1)
            out.put_(torch.arange(out.numel(), device=inputs.device), inputs.reshape(-1))
            return out.reshape(inputs.shape)
        if kernel_state().in_effect:  # JAX: what XLA says on a GPU, for a scatter
            raise RuntimeError("HLO instruction %scatter.7 does not have a deterministic implementation, "
                               "but run-to-run determinism is required")
        return inputs


def clean():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(3, name="out")])
    model.compile(optimizer="adam", loss="mse")
    return model


def failing():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="hidden"), Nondeterministic(name="stamp"),
                              keras.layers.Dense(3, name="out")])
    model.compile(optimizer="adam", loss="mse")
    return model


def build_model():
    return failing() if os.environ.get("PREFLIGHT_FAIL") else clean()


def data():
    rng = np.random.default_rng(0)
    return rng.random((96, 6), dtype=np.float32), rng.random((96, 3), dtype=np.float32)
