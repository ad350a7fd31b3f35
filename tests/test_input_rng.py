"""Randomness outside the model: random layers mapped over a tf.data input, unseeded TF ops in
its functions, and what fit, audit and preflight say about them."""

from __future__ import annotations

import contextlib
import random
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_repro as kr
from keras_repro import _backend
from keras_repro._backend import tf_data
from keras_repro.errors import FingerprintMismatch, NondeterministicInputWarning
from keras_repro.tools.audit import find_hazards

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too

IMAGES = np.random.default_rng(0).random((24, 8, 8, 3)).astype("float32")
LABELS = np.arange(24, dtype="int32") % 3
BATCH = 8


@contextlib.contextmanager
def op_determinism(on: bool):
    """TensorFlow's op determinism set to `on` inside, put back after (it is process-wide)."""
    from tensorflow.python.framework import config  # disable_op_determinism is not exported

    before = tf_data.op_determinism()
    (config.enable_op_determinism if on else config.disable_op_determinism)()
    try:
        yield
    finally:
        (config.enable_op_determinism if before else config.disable_op_determinism)()


def _pipeline(python_seed: int, parallel: bool = True, repeat: bool = False) -> tf.data.Dataset:
    """keras-io's augmentation, scaled down: RandomFlip and RandomRotation created from the
    Python `random` state `python_seed` (as an unseeded process would, with another state in
    each), mapped over in-memory images, then prefetched."""
    random.seed(python_seed)
    layers = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)]

    def augment(images, labels):
        for layer in layers:
            images = layer(images)
        return images, labels

    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(BATCH)
    dataset = dataset.repeat() if repeat else dataset
    calls = tf.data.AUTOTUNE if parallel else None
    return dataset.map(augment, num_parallel_calls=calls).prefetch(tf.data.AUTOTUNE)


def _model(seed: int | None, kernels: bool = True) -> keras.Model:
    """A small convolutional classifier: a DeterministicModel, or a plain keras.Model (None)."""
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    outputs = keras.layers.Dense(3)(hidden)
    model = keras.Model(inputs, outputs) if seed is None else kr.DeterministicModel(inputs, outputs, seed=seed,
                                                                                     deterministic_kernels=kernels)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(dataset, seed: int | None, **fit_kwargs):
    """Fits 2 epochs with a SeedCallback (the plain model's: seed 5); returns the callback's log
    and the final weights."""
    if seed is None:
        keras.utils.set_random_seed(11)  # the plain model's weights: the same in every run
    model = _model(seed, fit_kwargs.pop("kernels", True))
    callback = kr.SeedCallback(5 if seed is None else None, **fit_kwargs.pop("callback", {}))
    model.fit(dataset, epochs=2, verbose=0, callbacks=[callback], **fit_kwargs)
    return callback.log, [np.asarray(w) for w in model.get_weights()]


def _fed(log) -> list[str]:
    """The digest of the batches fed at each epoch."""
    return [fp.variables["fed/x"] for fp in log.epochs]


def test_random_layers_mapped_over_tf_data_repeat_whatever_python_random_held():
    """Augmentation layers created from two different Python `random` states feed the same batches
    and train the same weights in a DeterministicModel; another seed augments differently."""
    first, weights = _fit(_pipeline(python_seed=1), seed=3)
    second, again = _fit(_pipeline(python_seed=2), seed=3)
    assert _fed(first) == _fed(second)
    assert all(np.array_equal(a, b) for a, b in zip(weights, again))
    assert "input_rng" in first.notes and "seed_generator" in first.notes["input_rng"]
    other, _ = _fit(_pipeline(python_seed=1), seed=4)
    assert _fed(other)[0] != _fed(first)[0]
    assert _fed(first)[0] != _fed(first)[1]  # each epoch draws anew


def test_an_epoch_draws_what_it_drew_in_the_straight_run():
    """A fit starting at epoch 1 feeds epoch 1 the augmented batches the straight run fed it."""
    straight, _ = _fit(_pipeline(python_seed=1), seed=3)
    model = _model(3)
    callback = kr.SeedCallback()
    model.fit(_pipeline(python_seed=2), epochs=2, initial_epoch=1, verbose=0, callbacks=[callback])
    assert _fed(callback.log) == _fed(straight)[1:]


def test_one_iterator_across_epochs_repeats_when_set_once_at_the_start():
    """With steps_per_epoch over a repeated pipeline (one iterator reading ahead across epochs),
    the states are set once, at the fit's start: two runs still feed the same batches."""
    first, _ = _fit(_pipeline(python_seed=1, repeat=True), seed=3, steps_per_epoch=2)
    second, _ = _fit(_pipeline(python_seed=2, repeat=True), seed=3, steps_per_epoch=2)
    assert _fed(first) == _fed(second)
    assert "fit's start" in first.notes["input_rng"]


def test_a_plain_model_blames_the_data_and_the_seeding_line_fixes_it(tmp_path):
    """A plain keras.Model cannot see its input: augmentation from another Python state is a
    mismatch named at the data (fed/x); with kr.seed_everything before the pipeline, the repeat
    is bit-identical."""
    reference = str(tmp_path / "plain.h5")
    _fit(_pipeline(python_seed=1, parallel=False), seed=None, callback={"reference": reference})
    with pytest.raises(FingerprintMismatch, match="fed/x"):
        _fit(_pipeline(python_seed=2, parallel=False), seed=None, callback={"reference": reference})
    runs = []
    for python_seed in (1, 2):
        random.seed(python_seed)  # whatever the process drew before
        kr.seed_everything(1337)
        dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(BATCH)
        layer = keras.layers.RandomFlip("horizontal")
        runs.append(_fit(dataset.map(lambda x, y: (layer(x), y)), seed=None))
    assert _fed(runs[0][0]) == _fed(runs[1][0])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def _unseeded_map() -> tf.data.Dataset:
    """A pipeline adding `tf.random.uniform` noise, built with no global seed (and op
    determinism off, else TensorFlow refuses an unseeded op)."""
    tf.random.set_seed(None)
    with op_determinism(False):
        dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(BATCH)
        return dataset.map(lambda x, y: (x + tf.random.uniform(tf.shape(x)), y))


def test_an_unseeded_tf_random_op_warns_at_fit_start_naming_it_and_the_fix():
    """The fit warns once naming the op and kr.seed_everything, and records a note; the same map
    built after seeding does not warn. (With TF op determinism on, TensorFlow itself refuses to
    iterate an unseeded op: the model here trains without it.)"""
    with op_determinism(False):
        with pytest.warns(NondeterministicInputWarning, match=r"RandomUniform.*kr.seed_everything") as caught:
            log, _ = _fit(_unseeded_map(), seed=3, kernels=False)
        assert len([w for w in caught if issubclass(w.category, NondeterministicInputWarning)]) == 1
        assert "RandomUniform" in log.notes["input_hazards"]
        kr.seed_everything(1)
        seeded = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(BATCH)
        seeded = seeded.map(lambda x, y: (x + tf.random.uniform(tf.shape(x)), y))
        with warnings.catch_warnings():
            warnings.simplefilter("error", NondeterministicInputWarning)
            log, _ = _fit(seeded, seed=3, kernels=False)
        assert "input_hazards" not in log.notes


@pytest.mark.unit
def test_a_parallel_map_with_random_state_is_a_hazard_only_without_op_determinism():
    """A parallel map of random layers races without TF op determinism (named); with it, or
    with a map that runs in order, no hazard."""
    parallel, ordered = _pipeline(1), _pipeline(1, parallel=False)
    with op_determinism(False):
        assert any("ParallelMapDataset runs a function with random state" in h for h in _backend.input_hazards(parallel))
        assert not _backend.input_hazards(ordered)
    with op_determinism(True):
        assert not _backend.input_hazards(parallel)


def test_audit_and_preflight_list_the_hazards_of_the_input():
    """find_hazards (kr.audit) names the unseeded op and, for a plain model, the random layers'
    SeedGenerators; preflight's report lists the input's hazards."""
    unseeded = _unseeded_map()
    plain = _model(None)
    hazards = find_hazards(plain, unseeded)
    assert any(h.startswith("input: tf.data random op without a seed: RandomUniform") for h in hazards)
    layered = find_hazards(plain, _pipeline(1))
    assert any("SeedGenerators" in h and "kr.seed_everything(seed)" in h for h in layered)
    assert not any("SeedGenerators" in h for h in find_hazards(_model(3), _pipeline(1)))
    with op_determinism(False):  # else TensorFlow refuses to read the unseeded pipeline
        report = kr.preflight(plain, unseeded, steps=2)
    assert any("RandomUniform" in h for h in report.hazards) and "hazard: input: tf.data random op" in str(report)
    assert not kr.preflight(plain, tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(BATCH), steps=2).hazards
