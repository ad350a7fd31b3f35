"""Tests for keras_repro.seeding."""

from __future__ import annotations

import random
import warnings

import keras
import numpy as np
import pytest

from keras_repro import derive_seed, seed_everything, seeding
from keras_repro.errors import HashRandomizationWarning
from tests.conftest import run_python

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


def _draws():
    """One draw from every RNG seed_everything is meant to control."""
    return (
        random.random(),
        float(np.random.random()),
        float(keras.random.uniform(())),
    )


@pytest.mark.unit
def test_seed_everything_returns_seed_and_repeats_every_rng():
    """Same seed, same draws from python, numpy and the backend; another seed, other draws."""
    assert seed_everything(11) == 11
    first = _draws()
    seed_everything(11)
    assert _draws() == first
    seed_everything(12)
    other = _draws()
    assert all(a != b for a, b in zip(first, other))


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "7", None, True])
@pytest.mark.unit
def test_seed_everything_rejects_bad_seed(bad):
    """Seeds outside [0, 2**32-1] or of the wrong type raise a ValueError naming the value."""
    with pytest.raises(ValueError, match="Received: seed="):
        seed_everything(bad)


@pytest.mark.parametrize("seed", [0, 2**32 - 1, np.int64(5)])
@pytest.mark.unit
def test_seed_everything_accepts_range_ends(seed):
    """Both ends of the range and numpy ints are accepted."""
    assert seed_everything(seed) == int(seed)


@pytest.mark.unit
def test_derive_seed_is_pure_and_in_range():
    """Same arguments, same seed; any changed key or base seed, another seed."""
    base = derive_seed(7, "order", 3)
    assert base == derive_seed(7, "order", 3)
    assert 0 <= base <= 2**32 - 1
    others = {derive_seed(8, "order", 3), derive_seed(7, "order", 4), derive_seed(7, "rng", 3), derive_seed(7, "order")}
    assert base not in others and len(others) == 4


@pytest.mark.unit
def test_derive_seed_keys_do_not_collide_across_types_or_splits():
    """An int key and its string, or keys split differently, give different seeds."""
    assert derive_seed(1, 3) != derive_seed(1, "3")
    assert derive_seed(1, "ab", "c") != derive_seed(1, "a", "bc")
    assert derive_seed(1, b"x") != derive_seed(1, "x")


@pytest.mark.unit
def test_derive_seed_rejects_unstable_keys():
    """Keys whose encoding could change between processes (floats, objects) are refused."""
    with pytest.raises(TypeError, match="int, str or bytes"):
        derive_seed(1, 0.5)


@pytest.mark.unit
def test_derive_seed_spreads():
    """Consecutive epochs give distinct, well spread seeds."""
    seeds = [derive_seed(7, "epoch", e) for e in range(1000)]
    assert len(set(seeds)) == 1000
    assert np.mean(seeds) == pytest.approx(2**31, rel=0.1)


def test_derive_seed_same_in_fresh_processes_with_other_hash_seeds():
    """No built-in hash(): the value is the same under any PYTHONHASHSEED."""
    code = "from keras_repro.seeding import derive_seed; print(derive_seed(7, 'order', 3, b'x'))"
    values = {
        run_python(code, env={"PYTHONHASHSEED": hash_seed}).stdout.strip()
        for hash_seed in ("0", "1", "random")
    }
    assert values == {str(derive_seed(7, "order", 3, b"x"))}


@pytest.mark.parametrize(
    "startup_value, randomized",
    [(None, True), ("random", True), ("", True), ("0", False), ("123", False)],
)
@pytest.mark.unit
def test_hash_randomization_reads_the_startup_value(monkeypatch, startup_value, randomized):
    """A fixed PYTHONHASHSEED at start (even non-zero) means no randomization."""
    monkeypatch.setattr(seeding, "_startup_environment_value", lambda name: startup_value)
    monkeypatch.setattr(seeding.sys, "flags", type("F", (), {"hash_randomization": 1})())
    assert seeding.hash_randomization_enabled() is randomized


@pytest.mark.unit
def test_warns_once_when_hash_randomized(monkeypatch):
    """The warning fires once per process, says what to do, and not when the seed is fixed."""
    seeding.warn_if_hash_randomized.cache_clear()
    monkeypatch.setattr(seeding, "hash_randomization_enabled", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seed_everything(1)
        seed_everything(2)
    hash_warnings = [w for w in caught if issubclass(w.category, HashRandomizationWarning)]
    assert len(hash_warnings) == 1
    assert "PYTHONHASHSEED=0 python" in str(hash_warnings[0].message)

    seeding.warn_if_hash_randomized.cache_clear()
    monkeypatch.setattr(seeding, "hash_randomization_enabled", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seed_everything(1)
    assert not [w for w in caught if issubclass(w.category, HashRandomizationWarning)]
    seeding.warn_if_hash_randomized.cache_clear()


def test_setting_pythonhashseed_inside_the_program_is_reported_as_randomized():
    """os.environ['PYTHONHASHSEED'] set at run time does not fix hashing, and we say so."""
    code = """
        import os
        os.environ['PYTHONHASHSEED'] = '0'
        from keras_repro.seeding import hash_randomization_enabled
        print(hash_randomization_enabled())
    """
    env = {"PYTHONHASHSEED": ""}
    assert run_python(code, env=env).stdout.strip() == "True"
    assert run_python(code, env={"PYTHONHASHSEED": "0"}).stdout.strip() == "False"
