"""The test tiers keep their word: a test marked `unit` cannot train or start a process."""

from __future__ import annotations

import subprocess

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.unit


def test_a_unit_test_cannot_train_evaluate_or_predict():
    """The conftest guard refuses fit, evaluate and predict inside a `unit` test."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, 2), "float32")
    for call in (lambda: model.fit(x, x[:, :1], verbose=0), lambda: model.evaluate(x, x[:, :1], verbose=0),
                 lambda: model.predict(x, verbose=0), lambda: model.train_on_batch(x, x[:, :1])):
        with pytest.raises(AssertionError, match="a test marked `unit` must not call Model"):
            call()


def test_a_unit_test_cannot_start_a_process():
    """The guard refuses child processes too (subprocess and multiprocessing)."""
    import multiprocessing

    with pytest.raises(AssertionError, match="must not start a process"):
        subprocess.run(["true"])
    with pytest.raises(AssertionError, match="must not start a process"):
        multiprocessing.get_context("spawn").Process(target=print).start()

