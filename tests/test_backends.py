"""Runs the fast test suite again on the JAX and PyTorch backends.

Keras fixes its backend at import, so each backend gets its own pytest process.
The slow end-to-end tests already cover every backend from the TensorFlow run
(they start their own processes with KERAS_BACKEND set).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import child_env, REPO


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fast_suite_passes_on_backend(backend):
    """Every non-slow test passes with KERAS_BACKEND set to this backend."""
    pytest.importorskip(backend, reason=f"install the [{backend}] extra to test the {backend} backend")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("runs from the TensorFlow session only (it starts the other backends itself)")
    env = child_env(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "tests"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1700,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{backend}: {summary}\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary
