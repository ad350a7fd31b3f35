"""SeedCallback's logic without training, as Keras tests its callbacks: a built model and its
optimizer, and the hooks called in the order `fit` calls them, with the variables moved by
hand between them. Record, verify, a mismatch in each part, reuse, and extension."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fingerprinting.digests import data_record
from keras_repro.fit.context import EpochClock, FitContext
from tests.conftest import nudge_one_ulp

pytestmark = [pytest.mark.backends, pytest.mark.unit]  # tests/matrix.py runs this module on JAX and torch too


def _model():
    """A built model with trainable, non-trainable, optimizer and SeedGenerator variables."""
    kr.seed_everything(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.5)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _step(model, epoch):
    """What an epoch of training does to the state, deterministically."""
    for variable in model.trainable_variables:
        variable.assign(variable + 0.5 * (epoch + 1))
    model.layers[1].moving_mean.assign(model.layers[1].moving_mean + 0.1)
    model.optimizer.iterations.assign_add(4)


def _play(callback, model, epochs=2, first=0, nudge=None, order=None, stop_after=None):
    """Calls the hooks as `fit(epochs=epochs, initial_epoch=first)` would; returns the History."""
    history = keras.callbacks.History()
    history.set_model(model)
    history.on_train_begin()
    model.history = history
    callback.set_model(model)
    callback.set_params({"epochs": epochs, "verbose": 0, "steps": 1})
    if order is not None:  # a DeterministicModel hands its data order over
        callback.use_fit_context(FitContext(EpochClock(model), lambda e: [data_record("order", order(e))]))
    callback.on_train_begin()
    for epoch in range(first, epochs):
        callback.on_epoch_begin(epoch)
        _step(model, epoch)
        if nudge is not None and nudge[0] == epoch:
            nudge[1](model)
        logs = {"loss": 1.0 / (epoch + 1)}
        callback.on_epoch_end(epoch, logs)
        history.on_epoch_end(epoch, logs)
        if stop_after == epoch:
            return history  # interrupted: no on_train_end
    callback.on_train_end()
    return history


def test_record_then_verify(tmp_path):
    """The same states verify; the digests are reachable from History, not in the logs."""
    path = tmp_path / "run.h5"
    recorder = kr.SeedCallback(7, path)
    history = _play(recorder, _model())
    assert recorder.resolved_mode == "record" and recorder.recorded_epochs == (0, 1)
    assert history.fingerprints.epochs == recorder.log.epochs and "fingerprint" not in history.history
    verifier = kr.SeedCallback(7, path)
    _play(verifier, _model())
    assert verifier.resolved_mode == "verify" and verifier.divergence is None and verifier.verified_epochs == (0, 1)
    assert kr.load_fingerprints(path).complete


@pytest.mark.parametrize(
    "part, pick",
    [
        ("trainable", lambda m: m.layers[0].kernel),
        ("non_trainable", lambda m: m.layers[1].moving_variance),
        ("optimizer", lambda m: m.optimizer.variables[-1]),
        ("rng", lambda m: m.layers[2].seed_generator.state),
    ],
)
def test_a_mismatch_in_each_part_is_named(tmp_path, part, pick):
    """One ulp (or one step) in one variable after epoch 1: epoch 1, its part, its path."""
    path = tmp_path / "run.h5"
    _play(kr.SeedCallback(7, path), _model(), epochs=3)
    callback = kr.SeedCallback(7, path, on_mismatch="warn")
    model = _model()
    with pytest.warns(kr.FingerprintMismatchWarning, match="epoch 1"):
        _play(callback, model, epochs=3, nudge=(1, lambda m: nudge_one_ulp(pick(m))))
    found = callback.divergence
    assert (found.stage, found.epoch, found.part) == ("epoch", 1, part)
    # named as in the reference (Keras numbers auto-named layers per process), and in this run
    assert found.other_variable == (pick(model).path if part != "rng" else found.other_variable)
    assert part != "rng" or found.variable.endswith("seed_generator")


def test_a_data_order_mismatch_is_named_as_data(tmp_path):
    """The order handed over by a DeterministicModel is part of the fingerprint."""
    path = tmp_path / "run.h5"
    _play(kr.SeedCallback(7, path), _model(), order=lambda e: np.arange(8) + e)
    callback = kr.SeedCallback(7, path, on_mismatch="warn")
    with pytest.warns(kr.FingerprintMismatchWarning):
        _play(callback, _model(), order=lambda e: np.arange(8)[::-1] + e)
    assert (callback.divergence.stage, callback.divergence.part, callback.divergence.variable) == ("initial", "data", "order")


def test_reuse_resets_the_fit_and_a_continued_model_counts_on():
    """One instance, three plays: a new model's log starts at 0; the same model's continues."""
    callback = kr.SeedCallback(7)
    model = _model()
    _play(callback, model, epochs=2)
    _play(callback, _model(), epochs=1)
    assert [fp.epoch for fp in callback.log.epochs] == [0]
    _play(callback, model, epochs=2)  # a second fit of the first model
    assert [fp.epoch for fp in callback.log.epochs] == [2, 3] and callback.log.initial.epoch == 2


def test_an_interrupted_recording_is_extended_and_completed(tmp_path):
    """Stopped after epoch 0 of 3: incomplete; the next run verifies 0 and records 1-2."""
    path = tmp_path / "run.h5"
    _play(kr.SeedCallback(7, path), _model(), epochs=3, stop_after=0)
    assert not kr.load_fingerprints(path).complete
    callback = kr.SeedCallback(7, path)
    _play(callback, _model(), epochs=3)
    assert (callback.resolved_mode, callback.verified_epochs, callback.recorded_epochs) == ("extend", (0,), (1, 2))
    straight = kr.SeedCallback(7)
    _play(straight, _model(), epochs=3)
    assert [fp.digest for fp in kr.load_fingerprints(path).epochs] == [fp.digest for fp in straight.log.epochs]


def test_verify_mode_never_writes_and_warns_past_the_end(tmp_path):
    path = tmp_path / "run.h5"
    _play(kr.SeedCallback(7, path), _model(), epochs=1)
    before = path.read_bytes()
    callback = kr.SeedCallback(7, path, mode="verify")
    with pytest.warns(kr.ReproWarning, match="has no epoch 1"):
        _play(callback, _model(), epochs=2)
    assert path.read_bytes() == before and callback.verified_epochs == (0,) and callback.recorded_epochs == ()
