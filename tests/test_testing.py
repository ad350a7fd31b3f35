"""Tests for keras_repro.testing: assert_reproducible and the `reproducible` fixture."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fingerprinting.compare import compare_runs
from keras_repro.fingerprinting.digests import VariableDigest, make_fingerprint
from keras_repro.fit import midepoch
from keras_repro.testing import assert_reproducible, assert_resumable, divergence_report
from tests.conftest import REPO, make_data, make_model, start_child
from tests.pipelines import ReshuffledRows


def _fp(epoch, bias="b" * 64):
    """A hand-made fingerprint with a kernel and a bias."""
    records = [
        VariableDigest("model/dense/kernel", "trainable", "float32", (2, 2), "a" * 64),
        VariableDigest("model/dense/bias", "trainable", "float32", (2,), bias),
    ]
    return make_fingerprint(records, epoch)


def _deterministic_model():
    """A DeterministicSequential with Dropout and BatchNormalization."""
    model = kr.DeterministicSequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(3, activation="softmax"),
        ],
        seed=7,
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@keras.saving.register_keras_serializable(package="tests")
class Drift(keras.layers.Layer):
    """Adds a tiny offset that grows with every training call: a Python counter that a
    checkpoint does not keep, so a resumed run differs from a straight one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, inputs, training=False):
        if training:
            self.calls += 1
        return inputs + self.calls * 1e-3


def _drifting_model():
    model = kr.DeterministicSequential(
        [keras.Input((6,)), Drift(), keras.layers.Dense(3, activation="softmax")], seed=7
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    return model


def _noisy_model():
    """A model whose first kernel gets an unseeded random nudge at every build."""
    model = make_model(seed=7)
    kernel = model.layers[0].kernel
    noise = np.random.default_rng().normal(scale=1e-3, size=kernel.shape).astype("float32")
    kernel.assign(kernel.numpy() + noise)
    return model


def _nudged_every_other_build():
    """Builds a model; every second build has one kernel entry changed by 1e-6 (relative)."""
    calls = []

    def build():
        model = make_model(seed=7)
        calls.append(None)
        if len(calls) % 2 == 0:
            kernel = model.layers[0].kernel
            values = kernel.numpy()
            values[0, 0] *= 1 + 1e-6
            kernel.assign(values)
        return model

    return build


def test_passes_for_a_deterministic_build():
    x, y = make_data()
    comparison = assert_reproducible(_deterministic_model, x, y, epochs=2, batch_size=16)
    assert comparison.identical and comparison.verdict == "identical"
    assert comparison.epochs_compared == (0, 1)


def test_plain_keras_model_seeded_in_build_passes():
    x, y = make_data()
    assert assert_reproducible(lambda: make_model(seed=7), x, y, epochs=1).identical


def test_fails_naming_epoch_part_and_variable():
    """An unseeded perturbation of the weights is caught before the first step."""
    x, y = make_data()
    with pytest.raises(AssertionError) as failure:
        assert_reproducible(_noisy_model, x, y, epochs=1)
    report = str(failure.value)
    assert "Training is not reproducible" in report
    assert "Verdict: diverged; different (" in report  # noisy initial weights: never rounding noise
    assert "variable: sequential/dense/kernel" in report
    assert "part:     trainable" in report
    assert "initial state" in report
    assert "seed_everything" in report  # the hint says what to do


def test_tolerance_path():
    """A 1e-6 nudge fails the exact check and passes within a tolerance."""
    x, y = make_data()
    with pytest.raises(AssertionError, match="exact comparison"):
        assert_reproducible(_nudged_every_other_build(), x, y, epochs=1)
    comparison = assert_reproducible(_nudged_every_other_build(), x, y, epochs=1, rtol=1e-3, atol=1e-5)
    assert comparison.status == "within_tolerance" and not comparison.identical
    assert comparison.verdict == "different" and "initial state" in comparison.explanation  # other initial weights
    with pytest.raises(AssertionError, match=r"rtol=1e-09, atol=0 comparison"):
        assert_reproducible(_nudged_every_other_build(), x, y, epochs=1, rtol=1e-9)


def test_reproducible_fixture(reproducible):
    """The plugin's fixture is assert_reproducible."""
    assert reproducible is assert_reproducible
    x, y = make_data()
    assert reproducible(_deterministic_model, x, y, epochs=1).identical


@pytest.mark.unit
def test_argument_errors():
    x, y = make_data()
    with pytest.raises(TypeError, match="callable"):
        assert_reproducible("make_model", x, y)
    with pytest.raises(TypeError, match="not a model"):
        assert_reproducible(make_model(), x, y)
    with pytest.raises(ValueError, match="remove yours"):
        assert_reproducible(make_model, x, y, callbacks=[kr.SeedCallback(1)])
    with pytest.raises(ValueError, match="epochs"):
        assert_reproducible(make_model, x, y, epochs=0)
    with pytest.raises(TypeError, match="compiled Keras model"):
        assert_reproducible(lambda: "not a model", x, y)


@pytest.mark.unit
def test_report_from_hand_made_fingerprints():
    """The report lists the first divergence and the diverged variables."""
    comparison = compare_runs(kr.FingerprintLog(None, (_fp(0), _fp(1))), kr.FingerprintLog(None, (_fp(0), _fp(1, bias="e" * 64))))
    report = divergence_report(comparison, seed=3)
    assert "two runs with seed 3 differ (exact comparison)" in report
    assert "epoch:    epoch 1" in report and "variable: model/dense/bias" in report
    assert "epoch 1   trainable     model/dense/bias" in report
    assert "deterministic kernels" in report


def test_resumable_passes_and_fails_naming_the_resumed_epoch():
    """A DeterministicModel resumes exactly (in this process); a layer whose state a
    checkpoint does not keep fails at the first resumed epoch, with a report."""
    x, y = make_data()
    comparison = assert_resumable(_deterministic_model, x, y, epochs=3, at=2, batch_size=16, fresh_process=False)
    assert comparison.identical and comparison.epochs_compared == (2,)
    with pytest.raises(AssertionError) as failure:
        assert_resumable(_drifting_model, x, y, epochs=3, at=1, batch_size=16, fresh_process=False)
    report = str(failure.value)
    assert "does not resume exactly: stopped after epoch 0, saved, loaded and resumed" in report
    assert "epoch:    epoch 1" in report and "Likely cause:" in report


def test_resumable_mid_epoch_passes_and_fails_naming_the_epoch(monkeypatch):
    """at=(epoch, batch): a DeterministicModel interrupted after batch 1 of epoch 1 and restarted from
    its BackupAndRestore backup passes; with the skip of the trained batches off (Keras' restart of
    the epoch from its first batch) it fails at epoch 1."""
    x, y = make_data()
    comparison = assert_resumable(_deterministic_model, x, y, epochs=3, at=(1, 1), batch_size=16, fresh_process=False)
    assert comparison.identical and comparison.epochs_compared == (1, 2)
    monkeypatch.setattr(midepoch.MidEpochResume, "iterator_built", lambda self, iterator: None)
    with pytest.raises(AssertionError) as failure:
        assert_resumable(_deterministic_model, x, y, epochs=2, at=(1, 1), batch_size=16, fresh_process=False)
    report = str(failure.value)
    assert "does not resume exactly: interrupted after batch 1 of epoch 1 and restarted from its BackupAndRestore" in report
    assert "epoch:    epoch 1" in report


@pytest.mark.slow
def test_resumable_in_a_fresh_process_and_its_fixture(resumable):
    """The default loads the checkpoint in a fresh process; the fixture is assert_resumable."""
    assert resumable is assert_resumable
    x, y = make_data()
    assert resumable(_deterministic_model, x, y, epochs=3, at=1, batch_size=16).identical
    with pytest.raises(AssertionError, match="loaded in a fresh process and resumed"):
        resumable(_drifting_model, x, y, epochs=3, at=1, batch_size=16)
    # a pipeline factory is imported and called again in the fresh process
    assert resumable(_deterministic_model, reshuffled_dataset, epochs=3, at=2).epochs_compared == (2,)
    # mid-epoch: interrupted after batch 1 of epoch 1, restarted from the backup in the fresh process
    assert resumable(_deterministic_model, x, y, epochs=2, at=(1, 1), batch_size=16).epochs_compared == (1,)


UNGUARDED_SCRIPT = """\
import os

import keras
import numpy as np

import keras_repro as kr

with open(os.environ["IMPORTS_LOG"], "a") as log:  # one line per process that runs this file
    log.write(f"{os.getpid()}\\n")


def build():
    model = kr.DeterministicSequential([keras.Input((4,)), keras.layers.Dense(2)], seed=1)
    model.compile(optimizer="sgd", loss="mse")
    return model


x, y = np.zeros((8, 4), "float32"), np.zeros((8, 2), "float32")
kr.assert_resumable(build, x, y, epochs=2, at=1, batch_size=8)  # no `if __name__ == "__main__":`
print("after the check")
"""


@pytest.mark.slow
def test_unguarded_script_stops_with_an_error_naming_main(tmp_path):
    """A script calling assert_resumable at import: its fresh process refuses, the script ends
    within a minute (of CPU time: the wall clock depends on the machine's load) with
    MissingMainGuardError naming the guard, two processes in all."""
    script, imports = tmp_path / "unguarded.py", tmp_path / "imports.txt"
    script.write_text(UNGUARDED_SCRIPT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = start_child([sys.executable, script], cwd=tmp_path, env={"IMPORTS_LOG": imports, "PYTHONPATH": REPO},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=300)
    finally:  # a runaway would leave nested processes behind: end the whole group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the script's, and its reaped child's
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    pids = imports.read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2, pids  # the script, and one fresh process
    assert process.returncode == 1 and "after the check" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("keras_repro.errors.MissingMainGuardError: The fresh process of assert_resumable stopped: "), err[-3000:]
    assert 'if __name__ == "__main__":' in last and f"at import of '{script}'" in last
    assert err.count("Traceback") == 1, "the script's own traceback only: the child's is not relayed"
    assert cpu < 60, f"took {cpu:.0f} s of CPU time"


@pytest.mark.unit
def test_checks_refuse_inside_a_fresh_process(monkeypatch, request):
    """Inside a fresh process the checks and their fixtures raise MissingMainGuardError before training."""
    from keras_repro.tools import nesting

    monkeypatch.setenv(nesting.CHILD_ENVIRONMENT_VARIABLE, "assert_resumable")
    x, y = make_data()
    for check in (assert_reproducible, assert_resumable):
        with pytest.raises(kr.MissingMainGuardError, match=r"started by assert_resumable.*if __name__ == "):
            check(_deterministic_model, x, y, epochs=2)
    with nesting.importing("/somewhere/train.py"), pytest.raises(
            kr.MissingMainGuardError, match=r"imported '/somewhere/train.py'.*at import of '/somewhere/train.py'"):
        assert_resumable(_deterministic_model, x, y, epochs=2, at=1)
    for name in ("reproducible", "resumable"):
        with pytest.raises(kr.MissingMainGuardError, match=f"the {name} fixture"):
            request.getfixturevalue(name)


@pytest.mark.unit
def test_resumable_argument_errors():
    """Bad arguments are named, Keras style; nothing trains."""
    x, y = make_data()
    with pytest.raises(ValueError, match="at=3"):
        assert_resumable(_deterministic_model, x, y, epochs=3, at=3)
    with pytest.raises(ValueError, match=r"epoch < epochs \(3\) \(zero-based\). Received: at=\(3, 0\)"):
        assert_resumable(_deterministic_model, x, y, epochs=3, at=(3, 0))
    with pytest.raises(ValueError, match=r"batch < batches per epoch \(4\).*Received: at=\(1, 4\)"):
        assert_resumable(_deterministic_model, x, y, epochs=3, at=(1, 4), batch_size=16)
    with pytest.raises(ValueError, match=r"batch 3 is the last.*pass at=2 .*Received: at=\(1, 3\)"):
        assert_resumable(_deterministic_model, x, y, epochs=3, at=(1, 3), batch_size=16)
    with pytest.raises(ValueError, match=r"two ints, both zero-based. Received: at=\(1, 2.0\)"):
        assert_resumable(_deterministic_model, x, y, epochs=3, at=(1, 2.0))
    with pytest.raises(TypeError, match=r"must be arrays .* or a pipeline factory.*Received: x=a generator"):
        assert_resumable(_deterministic_model, iter([(x, y)]), epochs=3, at=1)
    with pytest.raises(TypeError, match="Received: x=a tf.data dataset"):
        assert_resumable(_deterministic_model, reshuffled_dataset(), epochs=3, at=1)
    with pytest.raises(TypeError, match="Received: validation_data=a PyDataset"):
        assert_resumable(_deterministic_model, x, y, epochs=3, at=1, validation_data=Reshuffled())
    with pytest.raises(ValueError, match="Received: y of type ndarray"):
        assert_resumable(_deterministic_model, reshuffled_dataset, y, epochs=3, at=1)
    with pytest.raises(ValueError, match=r"lambda; define it at module level.*Received: x="):
        assert_resumable(_deterministic_model, lambda: reshuffled_dataset(), epochs=3, at=1)
    with pytest.raises(TypeError, match=r"Received: x\(\) returned a tuple"):
        assert_resumable(_deterministic_model, lambda: (x, y), epochs=3, at=1, fresh_process=False)


ROWS, BATCH = 48, 16


def _rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(ROWS, 6)).astype("float32")
    return x, (np.abs(x[:, 0] * 3).astype(int) % 3).astype("int32")


def reshuffled_dataset():
    """A tf.data pipeline with a seeded shuffle that reshuffles every iteration (a factory)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(_rows()).shuffle(ROWS, seed=3).batch(BATCH)


class Reshuffled(ReshuffledRows):
    """Batches in an order NumPy's global RNG reshuffles at every epoch's end."""

    def __init__(self, **kwargs):
        super().__init__(*_rows(), BATCH, **kwargs)


def test_resumable_takes_pipeline_factories_and_fails_on_one_that_changes():
    """A seeded reshuffling tf.data pipeline (validation data too) and a reshuffling PyDataset, each
    from a factory, resume exactly (in this process); a factory whose pipelines differ from call to call fails at the
    resumed epoch, blaming the data."""
    for factory, more in ((reshuffled_dataset, {"validation_data": reshuffled_dataset}), (Reshuffled, {})):
        comparison = assert_resumable(_deterministic_model, factory, epochs=2, at=1, fresh_process=False, **more)
        assert comparison.identical and comparison.epochs_compared == (1,), factory
    calls = []

    def drifting():  # the third call (the resumed run's) returns other values
        calls.append(None)
        x, y = _rows()
        return _Fixed(x + (len(calls) > 2) * 1e-3, y)

    with pytest.raises(AssertionError) as failure:
        assert_resumable(_deterministic_model, drifting, epochs=2, at=1, fresh_process=False)
    report = str(failure.value)
    assert "stopped after epoch 0, saved, loaded and resumed" in report and "training input: a pipeline factory" in report
    assert "epoch:    epoch 1" in report and "part:     data" in report and "variable: fed/x" in report, report


class _Fixed(keras.utils.PyDataset):
    """The same batches every epoch."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return ROWS // BATCH

    def __getitem__(self, index):
        return self.x[index * BATCH:(index + 1) * BATCH], self.y[index * BATCH:(index + 1) * BATCH]


@pytest.mark.unit
def test_resumable_fails_on_a_generator_before_training_naming_why():
    """A generator cannot be resumed: the check fails before any fit, naming the form and why."""
    def batches():
        x, y = _rows()
        while True:
            yield x[:BATCH], y[:BATCH]

    with pytest.raises(AssertionError, match=r"cannot resume exactly: the training input is a generator "
                                             r"\(generator\): it cannot be rewound or advanced"):
        assert_resumable(_deterministic_model, batches, epochs=3, at=1, fresh_process=False, steps_per_epoch=2)
    with pytest.raises(AssertionError, match=r"cannot resume exactly: the training input is a generator"):
        assert_resumable(_deterministic_model, batches, epochs=3, at=(1, 0), fresh_process=False, steps_per_epoch=2)
