"""Models for the audit tests: deterministic ones, and ones with deliberate nondeterminism.

Importable as `tests.scripts.audit.models` (the fresh process of an audit imports it
by that name) and used by the scripts next to it.
"""

from __future__ import annotations

import keras
import numpy as np

import keras_repro as kr

SEED = 7
FEATURES, CLASSES = 6, 3
NOISE_PERIOD = 4
"""NoisyCounter adds noise at every 4th training step: the step after batch 3, 7, 11..."""


@keras.saving.register_keras_serializable(package="keras_repro_audit_tests")
class NoisyCounter(keras.layers.Layer):
    """Adds a running `drift` to its input; every `period`-th training step adds noise to it.

    The noise is drawn when the step is traced (TF, JAX) or run (torch), from
    `source`: "entropy" (fresh OS entropy: differs between builds) or "hash"
    (seeded by `hash(name)`: the same within a process, not across PYTHONHASHSEEDs).
    The output uses the drift from before the update, so the first variable to
    differ is `drift` itself, at the step that adds the noise.
    """

    def __init__(self, period: int = NOISE_PERIOD, source: str = "entropy", **kwargs):
        super().__init__(**kwargs)
        self.period = period
        self.source = source

    def build(self, input_shape):
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False, name="step")
        self.drift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", trainable=False, name="drift")

    def _noise(self) -> np.ndarray:
        if self.source == "hash":
            rng = np.random.default_rng(hash(self.name) % 2**32)
        else:
            rng = np.random.default_rng()
        return rng.normal(scale=1e-3, size=tuple(self.drift.shape)).astype("float32")

    def call(self, inputs, training=None):
        outputs = inputs + keras.ops.convert_to_tensor(self.drift)
        if training:
            step = self.step + 1.0
            self.step.assign(step)
            hit = keras.ops.cast(keras.ops.equal(keras.ops.mod(step, float(self.period)), 0.0), "float32")
            self.drift.assign(self.drift + hit * self._noise())
        return outputs

    def get_config(self):
        return {**super().get_config(), "period": self.period, "source": self.source}


def data(rows: int = 256, seed: int = 0):
    """A small classification problem, the same for every call."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    y = (np.abs(x[:, 0] * 3).astype(int) % CLASSES).astype("int32")
    return x, y


def _compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def build_deterministic() -> keras.Model:
    """A DeterministicSequential MLP with Dropout: reproducible."""
    return _compiled(kr.DeterministicSequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu", name="dense"),
            keras.layers.Dropout(0.25, name="dropout"),
            keras.layers.Dense(CLASSES, activation="softmax", name="out"),
        ],
        seed=SEED,
        name="net",
    ))


def build_plain_unseeded_dropout() -> keras.Model:
    """A plain keras.Sequential, seeded by seed_everything, with a Dropout without a seed."""
    kr.seed_everything(SEED)
    return _compiled(keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu", name="dense"),
            keras.layers.Dropout(0.25, name="dropout"),
            keras.layers.Dense(CLASSES, activation="softmax", name="out"),
        ],
        name="net",
    ))


def _noisy(source: str) -> keras.Model:
    return _compiled(kr.DeterministicSequential(
        [
            keras.Input((FEATURES,)),
            NoisyCounter(source=source, name="noisy"),
            keras.layers.Dense(8, activation="relu", name="dense"),
            keras.layers.Dense(CLASSES, activation="softmax", name="out"),
        ],
        seed=SEED,
        name="net",
    ))


def build_noisy() -> keras.Model:
    """Nondeterministic in training: every 4th step adds noise drawn from fresh entropy."""
    return _noisy("entropy")


def build_hash_noisy() -> keras.Model:
    """Identical within a process; differs in a process with another PYTHONHASHSEED."""
    return _noisy("hash")


def build_perturbed() -> keras.Model:
    """Nondeterministic at init: perturbs the first kernel with unseeded entropy."""
    model = build_deterministic()
    kernel = model.get_layer("dense").kernel
    noise = np.random.default_rng().normal(scale=1e-3, size=tuple(kernel.shape)).astype("float32")
    kernel.assign(keras.ops.convert_to_numpy(kernel) + noise)
    return model
