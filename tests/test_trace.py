"""Layer traces: `trace_layers`, `compare_traces` and `keras-repro diff` of two traces."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro import _backend
from keras_repro.cli import main
from keras_repro.errors import ReferenceFileError
from keras_repro.store.hdf5 import body_digest
from keras_repro.trace import store
from keras_repro.trace.entries import Trace
from tests.conftest import start_child

SKEW_SCRIPT = """
import sys
import keras, numpy as np
import keras_repro as kr

class Skew(keras.layers.Layer):
    def call(self, x):
        return x + hash("x") % 7 / 100   # differs with PYTHONHASHSEED

keras.utils.set_random_seed(3)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d1"), Skew(name="skew"),
                          keras.layers.Dense(1, name="d2")])
model.compile("adam", "mse")
x = np.random.RandomState(0).rand(32, 4).astype("float32")
kr.trace_layers(model, x, x.sum(1, keepdims=True), steps=2, batch_size=8, path=sys.argv[1])
"""


def _data(rows=24, features=4):
    x = np.random.RandomState(0).rand(rows, features).astype("float32")
    return x, x.sum(1, keepdims=True)


def _sequential():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d1"), keras.layers.Dropout(0.3, name="drop"),
                              keras.layers.Dense(1, name="d2")])
    model.compile("adam", "mse")
    return model


class Shift(keras.layers.Layer):
    """Adds `offset` (a class attribute the tests change) to its input."""

    offset = 0.0

    def call(self, x):
        return x + type(self).offset


class Net(keras.Model):
    """A subclassed model holding a nested Sequential submodel."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.Sequential([keras.layers.Dense(5, name="dense_1"), Shift(name="shift")], name="encoder")
        self.head = keras.layers.Dense(1, name="head")

    between = 0.0  # added between the encoder and the head (the tests change it)

    def call(self, x):
        return self.head(self.encoder(x) + type(self).between)


@pytest.mark.backends
def test_hash_seed_divergence_named_at_its_layer_across_processes(tmp_path, capsys):
    """Traces from processes with other PYTHONHASHSEEDs differ first at `skew` (exit 1); the same seed gives exit 0."""
    paths, children = {}, []
    for label, seed in (("a", 1), ("b", 2), ("c", 1)):  # side by side: the suite waits for the slowest only
        paths[label] = tmp_path / f"{label}.h5"
        children.append(start_child([sys.executable, "-c", SKEW_SCRIPT, str(paths[label])], env={"PYTHONHASHSEED": str(seed)},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for process in children:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    capsys.readouterr()
    assert main(["diff", str(paths["a"]), str(paths["b"])]) == 1
    out = capsys.readouterr().out
    assert "output `skew`" in out and "computes differently on the same inputs" in out and "`d1`" not in out
    assert "PYTHONHASHSEED" in out or "hash" in out  # the environment difference is listed
    result = kr.compare_traces(paths["a"], paths["b"])
    assert (result.first_divergence.step, result.first_divergence.name, result.first_divergence.category) == (0, "skew", "layer")
    assert main(["diff", str(paths["a"]), str(paths["c"])]) == 0
    assert capsys.readouterr().out.startswith("identical: 2 steps compared")


@pytest.mark.backends
def test_nested_subclassed_model_named_by_its_path():
    """A subclassed model's nested layer is named by its path, and a change in it is named there."""
    x, y = _data()
    model = Net()
    model.compile("sgd", "mse")
    Shift.offset = 0.0
    first = kr.trace_layers(model, x, y, steps=2, batch_size=8)
    outputs = [n for k, n, s in zip(first.kind, first.name, first.step) if k == "output" and s == 0]
    assert outputs == ["encoder/dense_1", "encoder/shift", "encoder", "head"]
    assert "encoder/dense_1/kernel" in first.name
    assert kr.compare_traces(first, kr.trace_layers(model, x, y, steps=2, batch_size=8)).identical

    def changed(cls, attribute):
        """The first divergence from `first` with `cls.attribute` at 0.01 (compiled anew, as
        `fit` needs after a Python-side change)."""
        setattr(cls, attribute, 0.01)
        try:
            model.compile("sgd", "mse")
            return kr.compare_traces(first, kr.trace_layers(model, x, y, steps=2, batch_size=8)).first_divergence
        finally:
            setattr(cls, attribute, 0.0)

    divergence = changed(Shift, "offset")
    assert (divergence.step, divergence.kind, divergence.name, divergence.category) == (0, "output", "encoder/shift", "layer")
    divergence = changed(Net, "between")
    assert (divergence.step, divergence.name, divergence.category) == (0, "head", "between")


@pytest.mark.backends
def test_step_traced_as_fit_runs_it():
    """The traced step is compiled where fit compiles it, once per compile(): a Python-side change
    shows after compile(), as in fit; with run_eagerly it shows at once."""
    x, y = _data()
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"), Shift(name="shift"),
                              keras.layers.Dense(1, name="d2")])
    model.compile("sgd", "mse")
    mode = _backend.traced_step_mode(model)
    assert mode == ("eager" if _backend.name() == "torch" else "compiled")
    first = kr.trace_layers(model, x, y, steps=2, batch_size=8)
    assert first.meta["step"] == mode
    Shift.offset = 0.01
    try:
        same_compile = kr.trace_layers(model, x, y, steps=2, batch_size=8)
        model.compile("sgd", "mse")
        recompiled = kr.trace_layers(model, x, y, steps=2, batch_size=8)
        model.compile("sgd", "mse", run_eagerly=True)
        eager = kr.trace_layers(model, x, y, steps=2, batch_size=8)
        Shift.offset = 0.0
        eager_back = kr.trace_layers(model, x, y, steps=2, batch_size=8)
    finally:
        Shift.offset = 0.0
    assert kr.compare_traces(first, same_compile).identical is (mode == "compiled")
    assert kr.compare_traces(first, recompiled).first_divergence.name == "shift"
    assert eager.meta["step"] == "eager"
    assert kr.compare_traces(eager, eager_back).first_divergence.name == "shift"


def _perturbed_step(monkeypatch, what):
    """Has `_backend.traced_step` add 0.001 to the first bias's gradient ("gradient") or to
    the first bias after the update ("optimizer")."""
    original = _backend.traced_step

    def step(model, x, y, sample_weight, calls):
        variables = model.trainable_variables
        if what == "optimizer":
            loss, gradients = original(model, x, y, sample_weight, calls)
            variables[1].assign(variables[1] + 0.001)
            return loss, gradients
        # the same update, from a gradient changed by 0.001
        kept = [keras.ops.copy(v.value) for v in variables]
        loss, gradients = original(model, x, y, sample_weight, calls)
        for variable, value in zip(variables, kept):
            variable.assign(value)
        model.optimizer.iterations.assign(model.optimizer.iterations - 1)
        gradients = list(gradients)
        gradients[1] = gradients[1] + 0.001
        model.optimizer.apply(gradients, variables)
        return loss, gradients

    monkeypatch.setattr(_backend, "traced_step", step)


@pytest.mark.parametrize("what", ["gradient", "optimizer"])
def test_gradient_and_optimizer_divergences_named_as_such(monkeypatch, what):
    """A changed gradient is named as a gradient; a changed update with matching gradients as the optimizer."""
    x, y = _data()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="d2")(keras.layers.Dense(3, name="d1")(inputs)))  # functional
    model.compile("sgd", "mse")
    reference = kr.trace_layers(model, x, y, steps=2, batch_size=8)
    assert [n for k, n, s in zip(reference.kind, reference.name, reference.step) if k == "output" and s == 0] == ["d1", "d2"]
    _perturbed_step(monkeypatch, what)
    divergence = kr.compare_traces(reference, kr.trace_layers(model, x, y, steps=2, batch_size=8)).first_divergence
    kind = "gradient" if what == "gradient" else "variable"
    assert (divergence.step, divergence.kind, divergence.name, divergence.category) == (0, kind, "d1/bias", what)


def test_data_divergence_and_state_left_unchanged(tmp_path):
    """Other rows are named as data; tracing leaves weights, optimizer and SeedGenerator states as they were."""
    x, y = _data()
    model = _sequential()
    model.optimizer.build(model.trainable_variables)
    before = [keras.ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]
    reference = kr.trace_layers(model, x, y, steps=3, batch_size=8, path=tmp_path / "t.h5")
    after = [keras.ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)) and len(before) == len(after)
    assert not any("call" in layer.__dict__ for layer in model.layers)
    assert "drop/seed_generator/state" in reference.name
    rows = {(kind, name): index for index, kind, name in zip(reference.rows(1), np.array(reference.kind)[reference.rows(1)],
                                                             np.array(reference.name)[reference.rows(1)])}
    lanes, inputs = reference.lanes.tolist(), reference.input_lanes.tolist()
    for layer, before in (("d1", ("input", "x")), ("drop", ("output", "d1")), ("d2", ("output", "drop"))):
        assert inputs[rows["output", layer]] == lanes[rows[before]] != lanes[rows["output", layer]]
    again = kr.trace_layers(model, x, y, steps=3, batch_size=8)
    assert kr.compare_traces(tmp_path / "t.h5", again).identical  # the same after a trace: nothing moved
    changed = x.copy()
    changed[9, 2] += 1.0  # a row of the second batch
    divergence = kr.compare_traces(reference, kr.trace_layers(model, changed, y, steps=3, batch_size=8)).first_divergence
    assert (divergence.step, divergence.kind, divergence.name, divergence.category) == (1, "input", "x", "data")


@pytest.mark.backends
def test_kept_values_survive_training():
    """What a trace keeps aside stays as it was while the variables train on (in place, on
    TensorFlow and torch), and assigning it puts the variables back."""
    x, y = _data()
    model = _sequential()
    model.train_on_batch(x[:8], y[:8])  # builds the optimizer
    variables = model.trainable_variables + model.optimizer.variables
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    kept = _backend.kept_values(variables)
    model.train_on_batch(x[8:16], y[8:16])
    assert not np.array_equal(keras.ops.convert_to_numpy(variables[0]), before[0])
    assert all(np.array_equal(keras.ops.convert_to_numpy(k), b) for k, b in zip(kept, before))
    for variable, value in zip(variables, kept):
        variable.assign(value)
    assert all(np.array_equal(keras.ops.convert_to_numpy(v), b) for v, b in zip(variables, before))


@pytest.mark.backends
def test_bfloat16_layers_are_traced():
    """A mixed-precision layer's bfloat16 outputs and a bfloat16 layer's variables are checksummed
    and summarised (NumPy has no bfloat16; ml_dtypes adds it), and a change is still found."""
    x, y = _data()
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d1", dtype="mixed_bfloat16"),
                              keras.layers.Dense(3, name="d2", dtype="bfloat16"), keras.layers.Dense(1, name="d3")])
    model.compile("adam", "mse")
    first = kr.trace_layers(model, x, y, steps=2, batch_size=8)
    assert np.isfinite(first.stats[:, :2]).all()  # every entry has values, bfloat16 ones too
    assert kr.compare_traces(first, kr.trace_layers(model, x, y, steps=2, batch_size=8)).identical
    model.layers[1].kernel.assign(model.layers[1].kernel * 2)
    divergence = kr.compare_traces(first, kr.trace_layers(model, x, y, steps=2, batch_size=8)).first_divergence
    assert (divergence.step, divergence.category, divergence.name) == (-1, "state", "d2/kernel")


def _tiny_trace(lanes=((1, 2), (3, 4))):
    """A two-entry trace made by hand (no training)."""
    return Trace(np.array([0, 0]), ("input", "output"), ("x", "d1"), np.array(lanes, np.uint32),
                 np.zeros((2, 2), np.uint32), np.zeros((2, 3)), {"steps": "1"}, {})


@pytest.mark.unit
def test_divergence_names_the_traces_settings_when_they_differ():
    """Traces of other backends, or of compiled and eager steps, differ with that named as the likely cause."""
    def traced(lanes, **meta):
        return dataclasses.replace(_tiny_trace(lanes), meta={"steps": "1", "backend": "tensorflow", "step": "compiled", **meta})

    other = ((1, 2), (3, 5))
    plain = str(kr.compare_traces(traced(((1, 2), (3, 4))), traced(other)).first_divergence)
    assert "computes differently" in plain and "Likely cause" not in plain
    modes = str(kr.compare_traces(traced(((1, 2), (3, 4))), traced(other, step="eager")).first_divergence)
    assert "Likely cause: the first trace ran its steps compiled, the second eager" in modes
    backends = str(kr.compare_traces(traced(((1, 2), (3, 4))), traced(other, backend="jax", step="eager")).first_divergence)
    assert "different backends (tensorflow, jax)" in backends and "eager" not in backends
    assert kr.compare_traces(traced(((1, 2), (3, 4))), traced(((1, 2), (3, 4)), step="eager")).identical


def _reseal(path):
    """Writes a trace file's checksum header again after an edit (as a writer bug would leave it)."""
    with open(path, "rb+") as handle:
        digest = body_digest(handle)
        handle.seek(0)
        handle.write(store._header(digest))


@pytest.mark.unit
def test_bad_trace_files_and_arguments(tmp_path, capsys):
    """Damaged, edited, missing and mixed files give exit 2 naming the file and field; bad arguments raise."""
    import h5py

    good = tmp_path / "good.h5"
    store.write_trace(good, _tiny_trace())
    assert kr.compare_traces(good, _tiny_trace()).identical
    assert kr.compare_traces(good, _tiny_trace(((1, 2), (3, 5)))).first_divergence.name == "d1"
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(good.read_bytes()[:-1] + b"\x01")
    edited = tmp_path / "edited.h5"
    store.write_trace(edited, _tiny_trace())
    with h5py.File(edited, "r+") as file:
        del file["entries/lanes"]
        file["entries"].create_dataset("lanes", data=np.zeros((2, 3), np.uint32))
    _reseal(edited)
    fingerprints = tmp_path / "run.h5"
    fingerprints.write_bytes(b"keras_repro.fingerprints\n")
    for other, words in ((damaged, "SHA-256"), (edited, "field 'entries/lanes'"), (tmp_path / "none.h5", "does not exist"),
                         (fingerprints, "is not a layer trace")):
        assert main(["diff", str(good), str(other)]) == 2
        error = capsys.readouterr().err
        assert str(other) in error and words in error and "Received:" in error, error
    assert main(["show", str(good)]) == 2 and "is a keras_repro layer trace" in capsys.readouterr().err
    with pytest.raises(ReferenceFileError, match="field 'entries/lanes'.*Received: shape=\\(2, 3\\)"):
        kr.compare_traces(good, edited)
    os.chmod(good, 0o444)
    before = good.read_bytes()
    if os.access(good, os.W_OK) and os.geteuid() != 0:
        pytest.skip("cannot make a read-only file here")
    with pytest.raises(ReferenceFileError, match="read-only"):
        store.write_trace(good, _tiny_trace(((9, 9), (9, 9))))
    assert good.read_bytes() == before
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled model.*Received: model="):
        kr.trace_layers(model, *_data())
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="Received: steps=0"):
        kr.trace_layers(model, *_data(), steps=0)


@pytest.mark.unit
def test_fingerprint_mismatch_names_the_trace_commands():
    """A FingerprintMismatch says which commands find the layer next."""
    message = str(kr.FingerprintMismatch("epoch 1, part 'trainable'", "run.h5", "the seed differs"))
    assert "Likely cause: the seed differs." in message and "keras-repro diff trace_a.h5 trace_b.h5" in message


@pytest.mark.unit
def test_entry_stats_summarise_every_value():
    """An entry's float summaries: the mean and largest magnitude of its finite values, the count of the others."""
    from keras_repro.trace.digests import stats as _stats

    floats = np.array([[1.5, -4.0], [np.nan, np.inf]], np.float32)
    ints = np.array([-7, 2], np.int8)
    found = _stats([floats, ints, np.array([True]), np.zeros(0, np.float32)])
    values = np.array([1.5, -4.0, -7.0, 2.0, 1.0])
    assert found.tolist() == [values.mean(), 7.0, 2.0]
    assert _stats([np.array([np.nan, -np.inf])]).tolist()[2] == 2.0 and np.isnan(_stats([np.array([np.nan])])[:2]).all()
    assert np.isnan(_stats([np.zeros(0)])[:2]).all() and _stats([np.zeros(0)])[2] == 0.0
    assert _stats([np.array([-3.0, 1.0])]).tolist() == [-1.0, 3.0, 0.0]  # the largest magnitude may be a negative value
