"""Tests for keras_repro.fingerprinting.environment: what a manifest records, and what it never shows."""

from __future__ import annotations

import os

import pytest

from keras_repro.fingerprinting import environment
from keras_repro.fingerprinting.environment import (
    RECORDED_VARIABLES,
    collect,
    differences,
    looks_secret,
    redacted,
    redacted_note,
    redacted_notes,
)

pytestmark = pytest.mark.unit

TERRAFORM = {"TF_TOKEN_app_terraform_io": "tf-token-3f9a1c", "TF_VAR_db_password": "hunter2-db"}
"""Terraform's variables: a TF_ prefix, secret values."""


def test_manifest_has_versions_and_listed_variables_only():
    """The manifest names the stack and keeps listed variables, not Terraform's nor unrelated ones."""
    os.environ.update(TERRAFORM, XLA_FLAGS="--xla_force_host_platform_device_count=2", OMP_NUM_THREADS="3",
                      TF_CPP_MIN_LOG_LEVEL="2", UNRELATED_SETTING="x")
    manifest = collect()
    for key in ("python", "keras", "backend", "backend_version", "numpy", "h5py", "platform", "hash_randomization"):
        assert manifest[key], key
    assert manifest["env.XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert manifest["env.OMP_NUM_THREADS"] == "3"
    assert not any(name in key for key in manifest for name in ("UNRELATED", "TF_TOKEN", "TF_VAR", "TF_CPP"))
    assert not any(secret in value for value in manifest.values() for secret in TERRAFORM.values())
    assert all(isinstance(v, str) for v in manifest.values())


def test_a_listed_name_that_looks_secret_is_never_recorded(monkeypatch):
    """Even a listed variable is dropped when its name looks secret."""
    monkeypatch.setitem(RECORDED_VARIABLES, "TF_API_KEY", "a listed name by mistake")
    monkeypatch.setenv("TF_API_KEY", "key-value-1234")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    manifest = collect()
    assert "env.TF_API_KEY" not in manifest and manifest["env.OMP_NUM_THREADS"] == "2"


def test_listed_variables_have_reasons_and_none_looks_secret():
    """Every listed variable says why it matters, and none would be dropped as a secret."""
    assert all(reason.strip() for reason in RECORDED_VARIABLES.values())
    assert [name for name in RECORDED_VARIABLES if looks_secret(name)] == []
    for name in ("TF_TOKEN_app_terraform_io", "TF_VAR_db_password", "AWS_SECRET_ACCESS_KEY", "HF_AUTH", "DB_PASSWD"):
        assert looks_secret(name), name


def test_differences_compare_recorded_entries_only():
    """Changed, added or removed entries are listed; entries only older files hold are not."""
    assert differences({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {"b": ("2", "3"), "c": (None, "4")}
    assert differences({"a": "1"}, {"a": "1"}) == {}
    old = {"env.OMP_NUM_THREADS": "4", "env.TF_VAR_db_password": "hunter2-db", "env.TF_CPP_MIN_LOG_LEVEL": "2"}
    assert differences(old, {"env.OMP_NUM_THREADS": "8"}) == {"env.OMP_NUM_THREADS": ("4", "8")}


def test_redacted_hides_what_this_version_would_not_record():
    """Values of unlisted or secret-looking entries are replaced; the others are shown as stored."""
    shown, hidden = redacted({"keras": "3.15.1", "env.XLA_FLAGS": "--x", **{f"env.{k}": v for k, v in TERRAFORM.items()}})
    assert hidden == [f"env.{name}" for name in TERRAFORM]
    assert shown["keras"] == "3.15.1" and shown["env.XLA_FLAGS"] == "--x"
    assert all(shown[key] == environment.REDACTED for key in hidden)


@pytest.mark.parametrize(
    ("note", "expected", "changed"),
    [
        ("env.TF_VAR_db_password: a; b -> hunter2-db; keras: 3.14 -> 3.15",
         "env.TF_VAR_db_password: (redacted); keras: 3.14 -> 3.15", True),
        ("env.OMP_NUM_THREADS: 4 -> 8; env.TF_TOKEN_x: t1 -> t2",
         "env.OMP_NUM_THREADS: 4 -> 8; env.TF_TOKEN_x: (redacted)", True),
        ("keras: 3.14 -> 3.15", "keras: 3.14 -> 3.15", False),
    ],
)
def test_redacted_note(note, expected, changed):
    """An older note of environment changes keeps recorded entries and hides the others' values."""
    assert redacted_note(note) == (expected, changed)
    notes, names = redacted_notes({"environment_from_epoch_2": note, "inputs": "env.TF_VAR_x: kept as written"})
    assert notes["environment_from_epoch_2"] == expected and names == (["environment_from_epoch_2"] if changed else [])
    assert notes["inputs"] == "env.TF_VAR_x: kept as written"
