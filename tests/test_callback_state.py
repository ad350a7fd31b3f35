"""Tests for keras_repro.fit.callback_state: a resumed fit names the callbacks whose state starts afresh."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fit.callback_state import lost_state, warn_lost_state
from tests.conftest import make_data, make_model

LOST = "Keras restores no callback's state"


def _after_train_begin(callback, model):
    """The callback as a fit leaves it after on_train_begin (Keras resets it there)."""
    callback.set_model(model)
    callback.on_train_begin()
    return callback


@pytest.mark.unit
def test_reduce_lr_named_only_where_its_state_matters():
    """Resumed: named with what it lost; at epoch 0, at its min_lr, or set again by the user: not."""
    model = make_model(7)  # adam, learning rate 0.001
    plateau = _after_train_begin(keras.callbacks.ReduceLROnPlateau(monitor="loss"), model)
    assert lost_state(plateau, 2, 2, model) == (
        "ReduceLROnPlateau (wait, cooldown_counter and best: it may lower the learning rate at other epochs)")
    assert lost_state(plateau, 0, 0, model) is None
    at_floor = _after_train_begin(keras.callbacks.ReduceLROnPlateau(monitor="loss", min_lr=0.001), model)
    assert lost_state(at_floor, 2, 2, model) is None
    plateau.best, plateau.wait = 0.25, 1
    assert lost_state(plateau, 2, 2, model) is None


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.unit
def test_early_stopping_named_after_its_warm_up(restore):
    """Resumed within start_from_epoch: not named; after it, or continued: named (best_weights too)."""
    model = make_model(7)
    stop = _after_train_begin(keras.callbacks.EarlyStopping(start_from_epoch=3, restore_best_weights=restore), model)
    assert lost_state(stop, 3, 3, model) is None
    found = lost_state(stop, 4, 4, model)
    assert found.startswith("EarlyStopping (wait, best, best_epoch") and ("best_weights" in found) == restore
    assert lost_state(stop, 3, 0, model) is not None


@pytest.mark.unit
def test_model_checkpoint_and_scheduler(tmp_path):
    """ModelCheckpoint: its lost best (unless a threshold stands in) and batch count; LearningRateScheduler:
    only in a continued fit, where Keras restarts the epoch it is called with."""
    model = make_model(7)
    path = str(tmp_path / "ck.keras")
    best_only = _after_train_begin(keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True), model)
    found = lost_state(best_only, 2, 2, model)
    assert "best: " in found and "initial_value_threshold" in found
    threshold = keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True, initial_value_threshold=0.5)
    assert lost_state(_after_train_begin(threshold, model), 2, 2, model) is None
    assert lost_state(_after_train_begin(keras.callbacks.ModelCheckpoint(path), model), 2, 2, model) is None
    by_batches = _after_train_begin(keras.callbacks.ModelCheckpoint(path, save_freq=3), model)
    assert "the batch count" in lost_state(by_batches, 2, 2, model)
    schedule = _after_train_begin(keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate), model)
    assert lost_state(schedule, 2, 2, model) is None
    assert "initial_epoch=2" in lost_state(schedule, 2, 0, model)


@pytest.mark.unit
def test_one_warning_names_every_callback():
    """One ReproWarning per fit, naming each callback; none when nothing was lost."""
    model = make_model(7)
    callbacks = [_after_train_begin(keras.callbacks.ReduceLROnPlateau(), model),
                 _after_train_begin(keras.callbacks.EarlyStopping(), model), keras.callbacks.TerminateOnNaN()]
    with pytest.warns(kr.ReproWarning) as caught:
        named = warn_lost_state(callbacks, 2, 0, model)
    (found,) = [w for w in caught if issubclass(w.category, kr.ReproWarning)]
    assert len(named) == 2
    message = str(found.message)
    assert "continues the training of this model at epoch 2" in message
    assert "ReduceLROnPlateau (" in message and "EarlyStopping (" in message and "TerminateOnNaN" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_lost_state(callbacks, 0, 0, model) == []


class RestorePlateau(keras.callbacks.Callback):
    """Sets a ReduceLROnPlateau's state again after Keras reset it: the recipe the warning gives."""

    def __init__(self, plateau, state):
        super().__init__()
        self.plateau, self.state = plateau, state

    def on_train_begin(self, logs=None):
        for name, value in self.state.items():
            setattr(self.plateau, name, value)


def _plateau():
    """Lowers the learning rate at every epoch after the first (no epoch improves by 1e9)."""
    return keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)


def _model():
    """A small DeterministicSequential (it hands SeedCallback the fit's callbacks)."""
    keras.backend.clear_session()
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    model = kr.DeterministicSequential(layers, seed=7)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _lost_warnings(caught):
    """The warnings about callback state among `caught`."""
    return [w for w in caught if LOST in str(w.message)]


def test_resumed_reduce_lr_warns_and_differs_unless_restored():
    """A resumed fit whose ReduceLROnPlateau starts afresh warns once, and its learning rate does
    differ from the straight run's; with the state set again it does not warn and equals it."""
    x, y = make_data()
    fit = dict(batch_size=16, verbose=0, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        straight = _model()
        straight.fit(x, y, epochs=4, callbacks=[_plateau()], **fit)
        assert _lost_warnings(caught) == []  # a fit from epoch 0 loses nothing
        for restore in (False, True):
            model, first = _model(), _plateau()
            model.fit(x, y, epochs=2, callbacks=[first], **fit)
            state = {"best": first.best, "wait": first.wait, "cooldown_counter": first.cooldown_counter}
            plateau = _plateau()
            extra = [RestorePlateau(plateau, state)] if restore else []
            caught.clear()
            model.fit(x, y, epochs=4, initial_epoch=2, callbacks=[plateau, *extra], **fit)
            rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            same = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), straight.get_weights()))
            if restore:
                assert _lost_warnings(caught) == [] and same
            else:
                (found,) = _lost_warnings(caught)
                message = str(found.message)
                assert "resumes training at epoch 2" in message and "ReduceLROnPlateau (" in message
                assert rate != float(keras.ops.convert_to_numpy(straight.optimizer.learning_rate)) and not same
