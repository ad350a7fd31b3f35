"""Tests for keras_repro.fit.rng_state: Keras' global SeedGenerator, reset in place and fingerprinted."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fit.rng_state import (
    GLOBAL_GENERATOR_PATH,
    global_generator_records,
    keras_global_generator,
    reset_global_generator,
)
from tests.conftest import make_data, make_model

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


@keras.saving.register_keras_serializable(package="tests")
class UnseededNoise(keras.layers.Layer):
    """Adds noise drawn from Keras' global SeedGenerator (no seed) while training."""

    def call(self, inputs, training=False):
        if training:
            return inputs + keras.random.normal(keras.ops.shape(inputs)) * 0.01
        return inputs


def _noisy_model(seed=7):
    """A DeterministicModel with an unseeded noise layer (jit_compile=False: JAX refuses
    unseeded draws in a compiled step)."""
    keras.backend.clear_session()
    inputs = keras.Input((6,))
    hidden = UnseededNoise()(keras.layers.Dense(8, activation="relu")(inputs))
    model = kr.DeterministicModel(inputs, keras.layers.Dense(3, activation="softmax")(hidden), seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
    return model


def _draw():
    """Three numbers from Keras' global SeedGenerator."""
    return keras.ops.convert_to_numpy(keras.random.normal((3,)))


@pytest.mark.unit
def test_reset_is_in_place_and_survives_set_random_seed():
    """The generator Keras dropped is put back; it and the one Keras made meanwhile are reset alike."""
    kept = reset_global_generator(5)
    keras.utils.set_random_seed(1)  # Keras drops its global generator...
    assert keras_global_generator() is None
    _draw()  # ...and makes another at the next unseeded draw
    replacement = keras_global_generator()
    assert replacement is not kept
    assert reset_global_generator(9) is kept and keras_global_generator() is kept
    assert np.array_equal(keras.ops.convert_to_numpy(kept.state), keras.ops.convert_to_numpy(replacement.state))
    first = _draw()
    reset_global_generator(9)
    assert np.array_equal(_draw(), first)
    reset_global_generator(10)
    assert not np.array_equal(_draw(), first)


@pytest.mark.unit
def test_record_follows_the_global_state():
    """The rng record is equal for equal states and differs when an unseeded draw moved the state."""
    reset_global_generator(5)
    (before,) = global_generator_records(summaries=True)
    assert before.part == "rng" and before.path == GLOBAL_GENERATOR_PATH and before.stats is not None
    reset_global_generator(5)
    assert global_generator_records()[0].digest == before.digest
    _draw()
    assert global_generator_records()[0].digest != before.digest


class DrawAfter(keras.callbacks.Callback):
    """At the end of `epoch` (before SeedCallback fingerprints it), draws unseeded once."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            _draw()


def test_fingerprint_holds_the_global_generator(tmp_path):
    """Same run: verifies; one unseeded draw after epoch 1: named at epoch 1, rng part, by its path."""
    path = tmp_path / "run.h5"
    x, y = make_data()
    for callbacks in ([kr.SeedCallback(7, path)], [kr.SeedCallback(7, path, mode="verify")]):
        make_model(7).fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False, callbacks=callbacks)
    assert [r.path for r in kr.load_fingerprints(path).epochs[0].part("rng")][-1] == GLOBAL_GENERATOR_PATH
    with pytest.raises(kr.FingerprintMismatch) as caught:
        make_model(7).fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False,
                          callbacks=[DrawAfter(1), kr.SeedCallback(7, path, mode="verify")])
    found = caught.value.divergence
    assert (found.epoch, found.part, found.variable) == (1, "rng", GLOBAL_GENERATOR_PATH)


def test_unseeded_layer_resumes_from_a_checkpoint(tmp_path):
    """An unseeded keras.random layer: 2 epochs + save + load_model + fit(initial_epoch=2) equals
    4 straight epochs, even after keras.utils.set_random_seed and an unseeded draw between the
    fits (Keras then holds another generator); another seed differs."""
    path, checkpoint = tmp_path / "run.h5", str(tmp_path / "ck.keras")
    x, y = make_data()
    straight = _noisy_model()
    straight.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[kr.SeedCallback(7, path)])
    first = _noisy_model()
    first.fit(x, y, epochs=2, batch_size=16, verbose=0)
    first.save(checkpoint)
    keras.utils.set_random_seed(3)
    _draw()
    resumed = keras.models.load_model(checkpoint)
    checker = kr.SeedCallback(7, path, mode="verify")
    resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=16, verbose=0, callbacks=[checker])
    assert checker.verified_epochs == (2, 3) and checker.divergence is None
    assert all(np.array_equal(a, b) for a, b in zip(straight.get_weights(), resumed.get_weights()))
    other = _noisy_model(seed=8)
    other.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert not np.array_equal(other.get_weights()[0], straight.get_weights()[0])
