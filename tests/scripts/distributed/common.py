"""Shared by the distributed-training scripts: the model, the data, and output.

Every script prints `KEY value...` lines that tests/test_distributed.py parses.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.datasets import load_digits  # noqa: E402

ROWS = 600
"""480 training rows after validation_split=0.2: 15 full batches of 32, split evenly on 2 replicas."""

FIT = dict(batch_size=32, shuffle=True, validation_split=0.2, verbose=0)


def build(seed: int, batch_norm: bool = False) -> kr.DeterministicModel:
    """The functional DeterministicModel every script trains (Dropout: layer RNG)."""
    inputs = keras.Input((8, 8))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Rescaling(1 / 16)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = kr.DeterministicModel(inputs, outputs, seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data():
    """The first ROWS digits as float32 images and int labels."""
    images, labels = load_digits()
    return images[:ROWS].astype("float32"), labels[:ROWS]


def without(fingerprint, *parts):
    """A fingerprint's digest over every part but `parts`."""
    from keras_repro.fingerprinting.digests import make_fingerprint

    return make_fingerprint([r for r in fingerprint.records if r.part not in parts])


def emit(key: str, *values) -> None:
    """Prints one `KEY value...` line for the test to parse."""
    print(key, *values, flush=True)


def emit_log(callback: kr.SeedCallback) -> None:
    """The run's resolved mode, first divergence and per-epoch digests."""
    emit("MODE", callback.resolved_mode)
    emit("DIVERGENCE", callback.divergence)
    emit("INITIAL", callback.log.initial.digest)
    emit("EPOCHS", *[fp.digest for fp in callback.log.epochs])


def tf_copies_equal(model) -> bool:
    """Whether every tf.distribute variable's per-device copies are bit-identical
    (read directly from `.values`, independent of keras_repro)."""
    for variable in model.variables:
        copies = getattr(variable.value, "values", None)
        if copies is None:
            continue
        first = copies[0].numpy()
        if any(first.tobytes() != other.numpy().tobytes() for other in copies[1:]):
            return False
    return True


def tf_scramble_copies(model) -> None:
    """Gives every device's copy of every trainable variable different random values."""
    rng = np.random.default_rng(12345)
    for variable in model.trainable_variables:
        for copy in variable.value.values:
            copy.assign(rng.normal(size=tuple(copy.shape)).astype(copy.dtype.as_numpy_dtype))
