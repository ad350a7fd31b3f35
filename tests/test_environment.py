"""Tests for keras_repro.environment."""

from __future__ import annotations

import os

from keras_repro.environment import collect, differences


def test_manifest_has_versions_and_relevant_variables():
    """The manifest names the stack and picks up TF_/XLA_ variables, not unrelated ones."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["UNRELATED_SETTING"] = "x"
    manifest = collect()
    for key in ("python", "keras", "backend", "backend_version", "numpy", "h5py", "platform", "hash_randomization"):
        assert manifest[key], key
    assert manifest["env.XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert not any("UNRELATED" in key for key in manifest)
    assert all(isinstance(v, str) for v in manifest.values())


def test_differences():
    """Only changed, added or removed keys are listed."""
    assert differences({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {"b": ("2", "3"), "c": (None, "4")}
    assert differences({"a": "1"}, {"a": "1"}) == {}
