"""Tests for kr.preflight and `keras-repro preflight`: the ops without a deterministic kernel
are named with their layer, the steps are timed with the kernels on and off, and a model
given is put back as it was."""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro import _backend
from keras_repro.cli import main
from keras_repro.determinism import kernel_state
from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "scripts", "preflight"))
import models  # noqa: E402

SCRIPT = os.path.join(REPO, "tests", "scripts", "preflight", "models.py")
JAX = _backend.name() == "jax"
SWITCHABLE = not JAX  # JAX's deterministic kernels are fixed when JAX starts


@pytest.fixture
def simulated_gpu_kernels(monkeypatch):
    """On JAX, deterministic kernels as on a GPU started with XLA's flag (fixed on)."""
    if JAX:
        monkeypatch.setattr(_backend, "kernels_in_effect", lambda: (True, "XLA flag (simulated)"))


def test_a_clean_model_is_ready_and_both_settings_are_timed(simulated_gpu_kernels):
    x, y = models.data()
    report = kr.preflight(models.clean, x, y, steps=4, batch_size=16)
    assert report.ok and report.steps == 4 and "READY" in str(report)
    assert report.step_seconds["deterministic"] > 0
    if SWITCHABLE:
        assert report.step_seconds["default"] > 0 and report.slowdown > 0
        assert not report.notes
    else:
        assert report.step_seconds["default"] is None and report.slowdown is None
        assert "cannot be turned off in this process" in report.notes[0]


def test_an_op_without_a_deterministic_kernel_is_named_with_its_layer(simulated_gpu_kernels):
    """The failing op is named in layer 'stamp' (from the error's node path, or by training
    each layer alone); the others are not blamed; the switch is put back."""
    before = kernel_state()
    x, y = models.data()
    report = kr.preflight(models.failing, x, y, steps=3, batch_size=16)
    assert not report.ok and len(report.failures) == 1, report
    failure = report.failures[0]
    assert failure.layer == "stamp"
    assert failure.op in {"tensorflow": ("Timestamp",), "torch": ("put_",), "jax": ("scatter.7",)}[_backend.name()]
    assert "NOT READY" in str(report) and "in layer 'stamp'" in str(report)
    assert kernel_state().in_effect == before.in_effect


def test_a_model_given_is_put_back():
    """Weights and optimizer state after the preflight are those before it."""
    model = models.clean()
    x, y = models.data()
    model.fit(x, y, epochs=1, verbose=0)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.variables + model.optimizer.variables]
    kr.preflight(model, x, y, steps=3, batch_size=16)
    after = [keras.ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.unit
def test_bad_arguments():
    x, y = models.data()
    with pytest.raises(ValueError, match="steps"):
        kr.preflight(models.clean, x, y, steps=0)
    with pytest.raises(TypeError, match="compiled keras.Model or a function"):
        kr.preflight("model", x, y)


def test_cli_exit_codes(monkeypatch, capsys, simulated_gpu_kernels):
    """0 when every op has a deterministic kernel, 1 when one has none, 2 for a bad script."""
    assert main(["preflight", SCRIPT, "--steps", "3", "--batch-size", "16"]) == 0
    monkeypatch.setenv("PREFLIGHT_FAIL", "1")
    assert main(["preflight", SCRIPT, "--steps", "3", "--batch-size", "16"]) == 1
    assert "in layer 'stamp'" in capsys.readouterr().out
    assert main(["preflight", os.path.join(REPO, "missing.py")]) == 2
