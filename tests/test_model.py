"""Tests for keras_repro.DeterministicModel: order, split, layer RNG, weights, saving."""

from __future__ import annotations

import random
import warnings

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fit.midepoch import EpochIteratorHooks
from keras_repro.model import DeterministicFunctional
from tests.conftest import make_data

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


class RowRecorder(keras.layers.Layer):
    """Records column 0 of every training batch it sees (run eagerly)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, inputs, training=False):
        if training:
            self.seen.append(keras.ops.convert_to_numpy(inputs[:, 0]).astype(int).tolist())
        return inputs


def _row_data(n=40):
    """x whose first column is the row number; labels in 3 classes, sorted (as sorted data is)."""
    x = np.zeros((n, 3), dtype="float32")
    x[:, 0] = np.arange(n)
    x[:, 1:] = np.random.default_rng(0).normal(size=(n, 2))
    y = (np.arange(n) * 3 // n).astype("int32")
    return x, y


def _recorded_fit(seed=7, epochs=3, recorder_seed=None, **fit_kwargs):
    """Fits a functional DeterministicModel that records rows; returns per-epoch row lists."""
    keras.backend.clear_session()
    inputs = keras.Input((3,))
    recorder = RowRecorder()
    outputs = keras.layers.Dense(3, activation="softmax")(recorder(inputs))
    model = kr.DeterministicModel(inputs, outputs, seed=seed)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = _row_data()
    fit_kwargs.setdefault("batch_size", 8)
    model.fit(x, y, epochs=epochs, verbose=0, **fit_kwargs)
    per_batch = recorder.seen
    batches = -(-len(model._repro_feed.train_rows) // fit_kwargs["batch_size"])
    epochs_run = len(per_batch) // batches
    return [sum(per_batch[e * batches : (e + 1) * batches], []) for e in range(epochs_run)], model


def test_order_changes_every_epoch_and_repeats_across_runs():
    """Each epoch visits the same rows in a new order; the same seed replays it; another seed does not."""
    orders, _ = _recorded_fit(seed=7)
    assert all(sorted(o) == list(range(40)) for o in orders)
    assert len({tuple(o) for o in orders}) == 3
    again, _ = _recorded_fit(seed=7)
    assert again == orders
    other, _ = _recorded_fit(seed=8)
    assert all(a != b for a, b in zip(other, orders))


def test_initial_epoch_replays_that_epochs_order():
    """fit(initial_epoch=2) visits exactly the order epoch 2 had in the straight run."""
    straight, _ = _recorded_fit(epochs=3)
    resumed, _ = _recorded_fit(epochs=3, initial_epoch=2)
    assert resumed == [straight[2]]


def test_no_shuffle_keeps_order_and_batch_shuffle_keeps_chunks():
    """shuffle=False visits rows in order; shuffle='batch' moves whole batch-sized chunks."""
    plain, _ = _recorded_fit(shuffle=False, epochs=2)
    assert plain == [list(range(40))] * 2
    chunked, _ = _recorded_fit(shuffle="batch", epochs=2)
    assert chunked[0] != chunked[1]
    for order in chunked:
        chunks = [sorted(order[i : i + 8]) for i in range(0, 40, 8)]
        assert all(c == list(range(c[0], c[0] + 8)) for c in chunks) and sorted(order) == list(range(40))


@pytest.mark.parametrize("mode", ["last", "shuffled", "stratified"])
def test_training_and_validation_rows_never_mix(mode):
    """Training only ever sees training rows; validation rows are the split's, the same each epoch."""
    orders, model = _recorded_fit(validation_split=0.25, validation_split_mode=mode)
    validation = set(model._repro_feed.validation_rows.tolist())
    assert len(validation) == 10
    for order in orders:
        assert not validation & set(order) and len(order) == 30
    if mode == "last":
        assert validation == set(range(30, 40))  # as Keras: the tail, before shuffling
    else:
        assert validation != set(range(30, 40))
        again, model_again = _recorded_fit(validation_split=0.25, validation_split_mode=mode)
        assert set(model_again._repro_feed.validation_rows.tolist()) == validation
        other, model_other = _recorded_fit(seed=8, validation_split=0.25, validation_split_mode=mode)
        assert set(model_other._repro_feed.validation_rows.tolist()) != validation
    if mode == "stratified":
        _, y = _row_data()
        assert np.bincount(y[sorted(validation)]).tolist() == [4, 3, 3]  # 25% of 14, 13, 13 rows


@pytest.mark.unit
def test_bad_split_mode_and_steps_per_epoch():
    """Unsupported arguments fail before training with the argument named."""
    model = kr.DeterministicSequential([keras.Input((3,)), keras.layers.Dense(1)], seed=1)
    model.compile(optimizer="sgd", loss="mse")
    x, y = _row_data()
    with pytest.raises(ValueError, match="validation_split_mode"):
        model.fit(x, y, validation_split=0.2, validation_split_mode="random", verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(x, y, steps_per_epoch=2, verbose=0)


def _functional(seed):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    return kr.DeterministicModel(inputs, keras.layers.Dense(3)(hidden), seed=seed)


class Net(kr.DeterministicModel):
    """The subclass form used in the README."""

    def __init__(self, seed=7, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


def _sequential(seed):
    return kr.DeterministicSequential([keras.layers.Dense(8), keras.layers.Dense(3)], seed=seed)


@pytest.mark.parametrize("build", [_functional, lambda seed: Net(seed=seed), _sequential], ids=["functional", "subclass", "sequential"])
@pytest.mark.unit
def test_initial_weights_depend_on_the_seed_alone(build):
    """Earlier draws from random/numpy/Keras do not move the initial weights; another seed does."""

    def weights(seed, noise):
        keras.backend.clear_session()
        if noise:
            random.random(), np.random.random(), keras.random.uniform(())
            keras.layers.Dense(4)  # consumes a default seed from python random
        model = build(seed)
        model(np.zeros((1, 6), "float32"))
        return [w.copy() for w in model.get_weights()]

    base = weights(7, noise=False)
    for a, b in zip(base, weights(7, noise=True)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(base, weights(8, noise=False)))


@pytest.mark.unit
def test_explicit_initializer_seeds_are_kept():
    """A layer given a seeded initializer keeps exactly those weights."""
    inputs = keras.Input((4,))
    layer = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=5))
    model = kr.DeterministicModel(inputs, layer(inputs), seed=1)
    expected = keras.initializers.GlorotUniform(seed=5)((4, 3))
    np.testing.assert_array_equal(model.layers[1].kernel.numpy(), keras.ops.convert_to_numpy(expected))


@pytest.mark.unit
def test_seed_is_required_and_validated():
    """No seed or a bad seed fails with what to write, for the form used."""
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match=r"DeterministicModel\(inputs, outputs, seed=7\)"):
        kr.DeterministicModel(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match=r"super\(\).__init__\(seed=7\)"):
        Net(seed=None)
    with pytest.raises(ValueError, match="Received: seed=-3"):
        kr.DeterministicModel(inputs, keras.layers.Dense(1)(inputs), seed=-3)


@pytest.mark.unit
def test_functional_form_is_a_deterministic_model():
    """The functional form is a DeterministicModel and leaves the class hierarchy alone."""
    model = _functional(3)
    assert isinstance(model, kr.DeterministicModel) and type(model) is DeterministicFunctional
    assert kr.DeterministicModel.__bases__ == (EpochIteratorHooks, keras.Model)  # the mixin: fit.midepoch
    assert Net(seed=1).seed == 1


@pytest.mark.parametrize("build", [_functional, _sequential], ids=["functional", "sequential"])
@pytest.mark.unit
def test_save_and_load_keep_class_seed_and_weights(tmp_path, build):
    """load_model restores the class and seed without custom_objects."""
    model = build(11)
    model(np.zeros((1, 6), "float32"))
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model) and loaded.seed == 11
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_adds_a_seed_callback_only_when_none_given(monkeypatch):
    """Without a SeedCallback one is added; with one, only the user's reseeds."""
    calls = []
    original = kr.SeedCallback.on_epoch_begin

    def counting(self, epoch, logs=None):
        calls.append(self.seed)
        return original(self, epoch, logs)

    monkeypatch.setattr(kr.SeedCallback, "on_epoch_begin", counting)
    model = _functional(3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = make_data()
    history = model.fit(x, y, epochs=2, verbose=0)
    assert calls == [3, 3] and len(history.fingerprints.epochs) == 2
    calls.clear()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[kr.SeedCallback(3, log_key="mine")])
    assert calls == [3, 3]


def test_data_order_divergence_is_named_as_data(tmp_path):
    """A verify whose order differs says 'data order', not 'weights'."""
    path = tmp_path / "run.h5"
    x, y = make_data()

    def fit(shuffle):
        keras.backend.clear_session()
        model = _functional(3)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, verbose=0, shuffle=shuffle, callbacks=[kr.SeedCallback(3, path)])

    fit(True)
    fit(True)
    with pytest.raises(kr.FingerprintMismatch) as info:
        fit("batch")
    assert info.value.divergence.part == "data" and info.value.divergence.variable == "order"
    assert "data order differs" in str(info.value)


def test_fingerprint_records_content_order_and_split(tmp_path):
    """The reference file holds the input arrays' content, the order of each epoch, the
    validation split and the batches fed and validated on; only the order (and so the batches
    fed) changes from epoch to epoch."""
    path = tmp_path / "run.h5"
    _recorded_fit(validation_split=0.25, epochs=2, callbacks=[kr.SeedCallback(7, path)])
    log = kr.load_fingerprints(path)
    first, second = (fp.part("data") for fp in log.epochs)
    assert [r.path for r in first] == ["content/x", "content/y", "order", "validation_split", "fed/x", "fed/y",
                                       "validated/x", "validated/y"]
    assert [r.digest == s.digest for r, s in zip(first, second)] == [True, True, False, True, False, False, True, True]
    x, _ = _row_data()
    assert first[0].shape == x.shape and first[0].stats[0] == pytest.approx(float(x.astype("float64").sum()))


def test_unseeded_tf_data_shuffle_warns_and_is_recorded(tmp_path):
    """A dataset it cannot reorder is fit unchanged; an unseeded shuffle warns and is noted in
    the file. (With deterministic kernels on, the default, TensorFlow refuses the shuffle itself.)"""
    tf = pytest.importorskip("tensorflow")
    x, y = make_data()
    from tensorflow.python.framework import random_seed

    _functional(3)  # deterministic kernels: on
    random_seed.set_seed(None)  # tests before this one seeded TF globally
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(RuntimeError, match="Random ops require a seed to be set when determinism is enabled"):
            tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64)
    kr.determinism.use_deterministic_kernels(False)
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()  # on JAX and torch, an earlier fit of a random tf.data map turned it on (fit.input_rng)
    unseeded = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64).batch(16)
    inputs = keras.Input((6,))
    model = kr.DeterministicModel(inputs, keras.layers.Dense(3)(inputs), seed=3, deterministic_kernels=False)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    path = tmp_path / "run.h5"
    with pytest.warns(kr.NondeterministicInputWarning, match="shuffle without a seed"):
        model.fit(unseeded, epochs=1, verbose=0, callbacks=[kr.SeedCallback(3, path)])
    assert "shuffle without a seed" in kr.load_fingerprints(path).notes["input_hazards"]
    seeded = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=1).batch(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", kr.NondeterministicInputWarning)
        model.fit(seeded, epochs=1, verbose=0)
