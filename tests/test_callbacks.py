"""Tests for keras_repro.SeedCallback: record, verify, and naming the first divergence."""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest

from keras_repro import (
    FingerprintMismatch,
    FingerprintMismatchWarning,
    ReferenceFileError,
    ReproWarning,
    SeedCallback,
    load_fingerprints,
)
from tests.conftest import make_data, make_model, nudge_one_ulp, run_python

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


def _fit(callbacks, seed=7, epochs=3, model=None, **kwargs):
    """Builds (with fresh Keras names) and fits the small test model."""
    if model is None:
        keras.backend.clear_session()
        model = make_model(seed)
    x, y = make_data()
    kwargs.setdefault("shuffle", False)
    history = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks, **kwargs)
    return model, history


class Nudge(keras.callbacks.Callback):
    """At the end of `epoch`, moves one element of a variable by one ulp (or one step)."""

    def __init__(self, epoch, pick):
        super().__init__()
        self.epoch, self.pick, self.path = epoch, pick, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            variable = self.pick(self.model)
            self.path = variable.path
            nudge_one_ulp(variable)


def test_record_then_verify_same_seed(tmp_path):
    """Same seed: verify passes, and the digests are reachable from History, equal in both runs."""
    path = tmp_path / "run.h5"
    recorder = SeedCallback(7, path)
    _, first = _fit([recorder])
    assert recorder.resolved_mode == "record" and path.exists()
    verifier = SeedCallback(7, path)
    _, second = _fit([verifier])
    assert verifier.resolved_mode == "verify" and verifier.divergence is None
    digests = [fp.digest for fp in first.fingerprints.epochs]
    assert digests == [fp.digest for fp in second.fingerprints.epochs]
    assert len(set(digests)) == 3 and "fingerprint" not in first.history
    log = load_fingerprints(path)
    assert [fp.digest for fp in log.epochs] == digests


def test_other_seed_is_caught_before_the_first_step(tmp_path):
    """Another seed gives other initial weights: stopped at the initial state, first kernel named."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)])
    callback = SeedCallback(7, path)
    with pytest.raises(FingerprintMismatch) as info:
        _fit([callback], seed=8)
    found = info.value.divergence
    assert (found.stage, found.epoch, found.part) == ("initial", 0, "trainable")
    assert found.variable == "sequential/dense/kernel"
    assert "initial state" in str(info.value) and "sequential/dense/kernel" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "pick, part",
    [
        (lambda m: m.layers[3].kernel, "trainable"),
        (lambda m: m.layers[1].moving_mean, "non_trainable"),
        (lambda m: m.optimizer.variables[-1], "optimizer"),
        (lambda m: m.optimizer.iterations, "optimizer"),
    ],
)
def test_one_ulp_at_epoch_1_is_named(tmp_path, pick, part):
    """One ulp in one variable at the end of epoch 1 is reported at epoch 1, in its part, by name."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)])
    nudge = Nudge(1, pick)
    with pytest.raises(FingerprintMismatch) as info:
        _fit([nudge, SeedCallback(7, path)])
    found = info.value.divergence
    assert (found.stage, found.epoch, found.part, found.variable) == ("epoch", 1, part, nudge.path)
    assert "epoch 1: " in str(found)


def test_other_optimizer_step_is_caught_at_epoch_0(tmp_path):
    """A different learning rate changes the first epoch's trainable weights."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)])
    keras.backend.clear_session()
    model = make_model(7)
    model.optimizer.learning_rate.assign(0.002)
    with pytest.raises(FingerprintMismatch) as info:
        _fit([SeedCallback(7, path)], model=model)
    found = info.value.divergence
    assert (found.stage, found.epoch, found.part) == ("initial", 0, "optimizer")
    assert found.variable == "adam/learning_rate"


def test_warn_mode_goes_on_and_warns_once(tmp_path):
    """on_mismatch='warn' finishes the fit, warns once, and keeps the first divergence."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)])
    callback = SeedCallback(7, path, on_mismatch="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = _fit([Nudge(0, lambda m: m.layers[0].bias), callback])
    mismatch = [w for w in caught if issubclass(w.category, FingerprintMismatchWarning)]
    assert len(mismatch) == 1
    assert len(history.history["loss"]) == 3
    assert callback.divergence.epoch == 0 and callback.divergence.variable == "sequential/dense/bias"


def test_verify_never_modifies_the_reference(tmp_path):
    """A verify run (passing or failing) leaves the reference byte-identical."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)])
    before, stamp = path.read_bytes(), os.stat(path).st_mtime_ns
    _fit([SeedCallback(7, path, mode="verify")])
    with pytest.warns(FingerprintMismatchWarning, match="epoch 0"):
        _fit([Nudge(0, lambda m: m.layers[0].bias), SeedCallback(7, path, on_mismatch="warn")])
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == stamp
    assert sorted(os.listdir(tmp_path)) == [".run.h5.lock", "run.h5"]


def test_verify_without_file_is_a_clear_error(tmp_path):
    """mode='verify' on a missing file raises ReferenceFileError naming it."""
    with pytest.raises(ReferenceFileError, match="absent.h5': does not exist"):
        _fit([SeedCallback(7, tmp_path / "absent.h5", mode="verify")])


def test_record_mode_replaces_an_existing_reference(tmp_path):
    """mode='record' overwrites: the file then holds the new run only."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)], epochs=3)
    _fit([SeedCallback(7, path, mode="record")], seed=9, epochs=2)
    log = load_fingerprints(path)
    assert len(log.epochs) == 2


def test_verify_past_the_end_of_the_reference_warns(tmp_path):
    """mode='verify': epochs past the end of the reference are not verified, and the user is told once."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)], epochs=2)
    before = path.read_bytes()
    callback = SeedCallback(7, path, mode="verify")
    with pytest.warns(ReproWarning, match="has no epoch 2") as caught:
        _fit([callback], epochs=4)
    assert len([w for w in caught if "has no epoch" in str(w.message)]) == 1
    assert callback.verified_epochs == (0, 1) and callback.recorded_epochs == ()
    assert path.read_bytes() == before


def test_instance_is_reusable(tmp_path):
    """State is reset in on_train_begin: a second fit's log holds only its own epochs (a new
    model's from 0; the same model's continuing its count)."""
    callback = SeedCallback(7)
    model, _ = _fit([callback], epochs=3)
    _fit([callback], epochs=2)
    assert [fp.epoch for fp in callback.log.epochs] == [0, 1]
    assert callback.resolved_mode == "record"
    _fit([callback], epochs=2, model=model)
    assert [fp.epoch for fp in callback.log.epochs] == [3, 4]


def test_layer_rng_is_reset_per_epoch():
    """Dropout masks depend on (seed, epoch), not on how many draws happened before."""
    callback = SeedCallback(7)
    model, _ = _fit([callback], epochs=1)
    state_after_reset = [fp for fp in callback.log.epochs]
    other = SeedCallback(7)
    keras.backend.clear_session()
    model2 = make_model(7)
    model2.layers[2].seed_generator.state.assign(np.array([123, 45], dtype=model2.layers[2].seed_generator.state.dtype))
    _fit([other], epochs=1, model=model2)
    assert other.log.epochs[0].digest == state_after_reset[0].digest
    no_reset = SeedCallback(7, reset_layer_rng=False)
    keras.backend.clear_session()
    model3 = make_model(7)
    model3.layers[2].seed_generator.state.assign(np.array([123, 45], dtype=model3.layers[2].seed_generator.state.dtype))
    _fit([no_reset], epochs=1, model=model3)
    assert no_reset.log.epochs[0].digest != state_after_reset[0].digest


def test_resumed_fit_verifies_against_the_straight_run(tmp_path):
    """fit(2) then fit(initial_epoch=2) matches 4 straight epochs; the start is checked against epoch 1."""
    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)], epochs=4)
    model, _ = _fit([SeedCallback(7, path)], epochs=2)
    resumed = SeedCallback(7, path)
    _fit([resumed], epochs=4, initial_epoch=2, model=model)
    assert resumed.divergence is None
    assert [fp.epoch for fp in resumed.log.epochs] == [2, 3]
    model.layers[0].bias.assign(model.layers[0].bias + 1.0)
    with pytest.raises(FingerprintMismatch, match=r"before the first step of epoch 2"):
        _fit([SeedCallback(7, path)], epochs=4, initial_epoch=2, model=model)


def test_second_recorder_gets_a_clear_error_and_the_file_stays_whole(tmp_path):
    """While one fit records a reference, another cannot record or verify it."""
    import filelock

    from keras_repro.callbacks import lock_path

    path = tmp_path / "run.h5"
    _fit([SeedCallback(7, path)], epochs=2)
    before = path.read_bytes()
    held = filelock.FileLock(lock_path(str(path)))  # another recorder (a lock is per open file, so this stands in)
    held.acquire(timeout=0)
    try:
        for mode in ("record", "verify", "auto"):
            with pytest.raises(ReferenceFileError, match="is being recorded by another process"):
                _fit([SeedCallback(7, path, mode=mode)], epochs=1)
    finally:
        held.release()
    assert path.read_bytes() == before
    _fit([SeedCallback(7, path, mode="verify")], epochs=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1, "mode": "check"}, "mode"),
        ({"seed": 1, "on_mismatch": "ignore"}, "on_mismatch"),
        ({"seed": 1, "mode": "verify"}, "reference"),
    ],
)
@pytest.mark.unit
def test_bad_arguments(kwargs, message):
    """Bad arguments fail at construction with the argument named."""
    with pytest.raises(ValueError, match=f"Received: {message}"):
        SeedCallback(**kwargs)


@pytest.mark.slow
def test_record_and_verify_in_fresh_processes(tmp_path):
    """Recorded in one interpreter, verified in another with another PYTHONHASHSEED; another seed fails."""
    record = """
        from tests.conftest import make_model, make_data
        from keras_repro import SeedCallback
        model = make_model(7)
        x, y = make_data()
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=True,
                  callbacks=[SeedCallback(7, {path!r}, mode="record")])
    """
    path = str(tmp_path / "run.h5")
    run_python(record.format(path=path), env={"PYTHONHASHSEED": "0"})
    verify = """
        from tests.conftest import make_model, make_data
        from keras_repro import SeedCallback
        callback = SeedCallback(7, {path!r}, mode="verify", on_mismatch="warn")
        model = make_model({seed})
        x, y = make_data()
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=True, callbacks=[callback])
        print("DIVERGENCE", callback.divergence)
    """
    same = run_python(verify.format(seed=7, path=path), env={"PYTHONHASHSEED": "random"})
    assert "DIVERGENCE None" in same.stdout
    other = run_python(verify.format(seed=8, path=path), env={"PYTHONHASHSEED": "1"})
    assert "DIVERGENCE initial state" in other.stdout and "sequential/dense/kernel" in other.stdout
