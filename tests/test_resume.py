"""Exact resume: stopped, saved, loaded in a new process and resumed equals straight."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keras_repro import load_fingerprints
from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "tests", "scripts", "resume.py")


BACKENDS = ["tensorflow", "jax", "torch"]


def _run(mode, folder, hash_seed, backend="tensorflow"):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    result = subprocess.run([sys.executable, SCRIPT, mode, str(folder)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ", 1)[0].isupper())


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_in_new_process_is_bit_identical(tmp_path, backend):
    """4 straight epochs == 2 epochs + save + load in a new process + 2 more (Dropout, noise, BN,
    shuffle, validation_split); the straight run's reference verifies the resumed epochs."""
    straight = _run("straight", tmp_path, "0", backend)
    _run("first", tmp_path, "1", backend)
    resumed = _run("resume", tmp_path, "random", backend)
    assert resumed["BACKEND"] == straight["BACKEND"] == backend
    assert resumed["DIVERGENCE"] == "None"
    assert resumed["WEIGHTS"] == straight["WEIGHTS"]
    assert resumed["DIGEST"] == straight["DIGEST"]
    reference = load_fingerprints(tmp_path / "straight.h5")
    assert [fp.epoch for fp in reference.epochs] == [0, 1, 2, 3]


@pytest.mark.slow
def test_resume_with_another_seed_is_caught(tmp_path):
    """The failing direction: a checkpoint from a run with another seed does not verify."""
    _run("straight", tmp_path, "0")
    script = open(SCRIPT).read().replace("SEED = 7", "SEED = 8")
    other = tmp_path / "other.py"
    other.write_text(script.replace("os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))", repr(REPO)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, str(other), "first", str(tmp_path)], check=True, capture_output=True, env=env, timeout=600)
    resumed = _run("resume", tmp_path, "0")
    assert resumed["DIVERGENCE"].startswith("initial state (before the first step of epoch 2)")
