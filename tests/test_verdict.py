"""Comparison.verdict: "identical", rounding "noise" or "different", from the evidence both
runs recorded (keras_repro.fingerprinting.noise), and the line `keras-repro diff` prints."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.cli import main
from keras_repro.datasets import load_digits
from keras_repro.fingerprinting import noise
from keras_repro.fingerprinting.digests import VariableDigest, make_fingerprint, summarize
from tests.conftest import nudge_one_ulp

ROWS, EPOCHS = 96, 4


def _digits(permuted: bool = False):
    images, labels = load_digits()
    x, y = (images[:ROWS].reshape(ROWS, 64) / 16.0).astype("float32"), labels[:ROWS].astype("int32")
    if permuted:
        order = np.random.default_rng(1).permutation(ROWS)
        x, y = x[order], y[order]
    return x, y


class _NudgeAfterFirstBatch(keras.callbacks.Callback):
    """Moves the output layer's first kernel entry by one ulp after the first batch."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and not getattr(self, "done", False):
            self.done = True
            nudge_one_ulp(self.model.trainable_variables[2])


def _record(path, seed=7, learning_rate=1e-3, units=16, nudge=False, permuted=False):
    """Fits a small DeterministicModel on the digits for EPOCHS epochs, recording to `path`."""
    keras.backend.clear_session()
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(units, activation="relu")(inputs)
    model = kr.DeterministicModel(inputs, keras.layers.Dense(10, activation="softmax")(hidden), seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    x, y = _digits(permuted)
    callbacks = [_NudgeAfterFirstBatch()] if nudge else []
    model.fit(x, y, epochs=EPOCHS, batch_size=32, verbose=0,
              callbacks=[*callbacks, kr.SeedCallback(reference=str(path), mode="record")])
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Recordings of one model: as is, nudged by one ulp, lr 0.0011, seed 8, rows permuted, 17 units."""
    folder = tmp_path_factory.mktemp("verdict")
    return {
        "base": _record(folder / "base.h5"),
        "nudged": _record(folder / "nudged.h5", nudge=True),
        "lr": _record(folder / "lr.h5", learning_rate=0.0011),
        "seed": _record(folder / "seed.h5", seed=8),
        "order": _record(folder / "order.h5", permuted=True),
        "layer": _record(folder / "layer.h5", units=17),
    }


def _verdict_line(capsys) -> str:
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("verdict: "))


def test_diff_prints_identical_noise_and_different(runs, capsys):
    """Against itself: identical (exit 0); nudged by one ulp: noise; lr 0.0011: different (exit 1)."""
    assert main(["diff", runs["base"], runs["base"]]) == 0
    assert _verdict_line(capsys).startswith("verdict: identical (every fingerprint bit-identical, 4 epochs compared)")
    assert main(["diff", runs["base"], runs["nudged"]]) == 1
    line = _verdict_line(capsys)
    assert line.startswith("verdict: noise (same seed, configuration, initial state, data and RNG state; first at epoch 0")
    assert "no recorded environment difference" in line
    assert main(["diff", runs["base"], runs["lr"]]) == 1
    assert _verdict_line(capsys) == ("verdict: different (the configuration differs: learning rate: 0.001 in the "
                                     "reference, 0.0011 in this run)")


@pytest.mark.parametrize("name, reason", [("seed", "the seed differs"), ("order", "differ ('content/x')"),
                                          ("layer", "configuration differs: model: layer 1 ('dense', Dense): units")])
def test_another_seed_data_order_or_layer_is_different_never_noise(runs, name, reason):
    """Another seed, row order or layer width reads as different, with the reason."""
    comparison = kr.load_fingerprints(runs["base"]).compare(kr.load_fingerprints(runs[name]))
    assert comparison.verdict == "different" and reason in comparison.explanation


def test_the_drift_alone_tells_a_learning_rate_change_from_a_nudge(runs):
    """With seed, configuration, environment and the learning-rate record removed, the size of
    the first drift still calls lr 0.0011 different and the one-ulp nudge noise."""
    def bare(path):
        log = kr.load_fingerprints(path)

        def strip(fp):
            return make_fingerprint([r for r in fp.records if not r.path.endswith("learning_rate")], fp.epoch)

        return kr.FingerprintLog(strip(log.initial), tuple(map(strip, log.epochs)))

    base = bare(runs["base"])
    changed, nudged = base.compare(bare(runs["lr"])), base.compare(bare(runs["nudged"]))
    assert changed.verdict == "different" and "beyond the 1024" in changed.explanation, changed.explanation
    assert nudged.verdict == "noise" and "(seed and configuration not recorded)" in nudged.explanation


def _record_of(values, path="w", part="trainable"):
    values = np.asarray(values, np.float32)
    return VariableDigest(path, part, "float32", values.shape, values.tobytes().hex()[:64], summarize(values))


def _run(*states, environment=None, initial=(1.0, 2.0, 3.0)):
    """A FingerprintLog whose variable 'w' holds `states[e]` at the end of epoch e."""
    def fp(values, epoch):
        return make_fingerprint([_record_of(values)], epoch)

    return kr.FingerprintLog(fp(initial, 0), tuple(fp(v, e) for e, v in enumerate(states)),
                             environment=environment or {}, seed=7, config={"batch_size": "32"})


@pytest.mark.unit
def test_drift_is_a_lower_bound_of_the_relative_distance():
    """The summaries' drift never exceeds ||a - b|| / ||a|| (random arrays and perturbations)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.normal(size=int(rng.integers(1, 50))).astype(np.float32)
        b = (a + rng.normal(size=a.size) * 10.0 ** rng.uniform(-8, 0)).astype(np.float32)
        measured = noise.drift(_record_of(a), _record_of(b))
        true = float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(a), np.linalg.norm(b)))
        assert measured <= true * (1 + 1e-9) + 1e-15


@pytest.mark.unit
def test_a_small_first_drift_that_grows_gradually_is_noise_and_a_jump_is_not():
    """A few-ulp first drift growing 10x an epoch is noise; a large first drift, or a jump, is different."""
    eps = float(np.finfo(np.float32).eps)
    base = _run([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    gradual = _run([1.0, 2.0, 3.0 + 4 * eps * 3], [1.0, 2.0, 3.0 + 40 * eps * 3], [1.0, 2.0, 3.0 + 400 * eps * 3])
    assert base.compare(gradual).verdict == "noise"
    large = _run([1.0, 2.0, 3.003], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    verdict = base.compare(large)
    assert verdict.verdict == "different" and "the first difference, at epoch 0" in verdict.explanation
    jump = _run([1.0, 2.0, 3.0 + 4 * eps * 3], [1.0, 2.0, 3.0 + 8 * eps * 3], [1.0, 2.0, 3.3])
    verdict = base.compare(jump)
    assert verdict.verdict == "different" and "jumps" in verdict.explanation and "epoch 2" in verdict.explanation


@pytest.mark.unit
def test_noise_names_the_environment_difference_that_explains_it():
    """Across devices the explanation names the devices before versions and threads."""
    eps = float(np.finfo(np.float32).eps)
    env = {"devices": "CPU:0", "backend_version": "2.21.0", "env.OMP_NUM_THREADS": "2"}
    other_env = {"devices": "GPU:0", "backend_version": "2.20.0", "env.OMP_NUM_THREADS": "8"}
    base = _run([1.0, 2.0, 3.0], environment=env)
    comparison = base.compare(_run([1.0, 2.0, 3.0 + 2 * eps * 3], environment=other_env))
    assert comparison.verdict == "noise"
    assert comparison.explanation.endswith("likely from the devices: CPU:0 -> GPU:0")
    threads = base.compare(_run([1.0, 2.0, 3.0 + 2 * eps * 3], environment={**env, "env.OMP_NUM_THREADS": "8"}))
    assert threads.explanation.endswith("likely from OpenMP threads: 2 -> 8")


@pytest.mark.unit
def test_other_initial_weights_nan_counts_or_epochs_are_different():
    """Other initial weights, other NaN counts or an epoch more read as different, whatever the size."""
    eps = float(np.finfo(np.float32).eps)
    base = _run([1.0, 2.0, 3.0])
    assert base.compare(_run([1.0, 2.0, 3.0], initial=(1.0, 2.0, 3.0 + 3 * eps))).verdict == "different"
    assert base.compare(_run([1.0, 2.0, math.nan])).verdict == "different"
    assert base.compare(_run([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])).verdict == "different"  # an epoch more
