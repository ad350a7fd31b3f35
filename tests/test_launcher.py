"""Tests for `keras-repro run` and keras_repro.tools.launcher."""

from __future__ import annotations

import sys

import pytest

from keras_repro.cli import main
from keras_repro.tools.launcher import XLA_DETERMINISM_FLAG, launch_environment
from keras_repro.tools.nesting import CHILD_ENVIRONMENT_VARIABLE


@pytest.mark.unit
def test_environment_sets_hash_seed_and_determinism_without_touching_base():
    """PYTHONHASHSEED and the determinism variables are set; existing XLA flags are kept."""
    base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "HOME": "/root"}
    env = launch_environment(base, hash_seed=5, threads=2)
    assert env["PYTHONHASHSEED"] == "5" and env["TF_DETERMINISTIC_OPS"] == "1"
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {XLA_DETERMINISM_FLAG}"
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "2" and env["HOME"] == "/root"
    assert base == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "HOME": "/root"}
    assert launch_environment(env)["XLA_FLAGS"].count(XLA_DETERMINISM_FLAG) == 1


@pytest.mark.unit
def test_environment_without_determinism_sets_only_the_hash_seed():
    """--no-determinism leaves everything but PYTHONHASHSEED alone."""
    assert launch_environment({}, hash_seed=0, deterministic=False) == {"PYTHONHASHSEED": "0"}


@pytest.mark.parametrize("kwargs", [{"hash_seed": -1}, {"hash_seed": True}, {"threads": 0}])
@pytest.mark.unit
def test_bad_values(kwargs):
    """Bad values fail with the option named."""
    with pytest.raises(ValueError, match="Received"):
        launch_environment({}, **kwargs)


def test_run_starts_the_program_with_fixed_hashing_and_returns_its_code(capfd):
    """The child sees PYTHONHASHSEED from its start (no randomization) and its exit code is returned."""
    code = "import sys, os; print(sys.flags.hash_randomization, os.environ['PYTHONHASHSEED']); sys.exit(3)"
    assert main(["run", "--hash-seed", "0", "--", sys.executable, "-c", code]) == 3
    out, err = capfd.readouterr()
    assert out.strip() == "0 0" and "PYTHONHASHSEED=0" in err


def test_run_starts_a_parent_and_refuses_inside_a_fresh_process(monkeypatch, tmp_path, capfd):
    """The program run starts is not marked as a fresh process (it may call kr.audit); inside a
    fresh process of a check, run refuses, naming the missing guard, and starts nothing."""
    monkeypatch.delenv(CHILD_ENVIRONMENT_VARIABLE, raising=False)
    marked = f"import os, sys; sys.exit(7 if {CHILD_ENVIRONMENT_VARIABLE!r} in os.environ else 0)"
    assert main(["run", "--", sys.executable, "-c", marked]) == 0
    monkeypatch.setenv(CHILD_ENVIRONMENT_VARIABLE, "the audit")
    started = tmp_path / "started"
    assert main(["run", "--", sys.executable, "-c", f"open({str(started)!r}, 'w')"]) == 2
    err = capfd.readouterr().err
    assert "keras-repro run was called inside a fresh process of keras_repro (started by the audit)" in err
    assert 'if __name__ == "__main__":' in err and "Traceback" not in err and not started.exists()


def test_run_errors(capsys):
    """No command, or one that does not exist, is reported; exit 2 and 127."""
    assert main(["run"]) == 2
    assert "run needs a command" in capsys.readouterr().err
    assert main(["run", "--", "no-such-program-keras-repro"]) == 127
    assert "not found" in capsys.readouterr().err
