"""Tests for the keras-repro command: every subcommand and exit code."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from keras_repro import SeedCallback
from keras_repro.cli import main
from tests.conftest import REPO, edit_reference, make_data, make_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two recordings with seed 7 and one with seed 8."""
    folder = tmp_path_factory.mktemp("cli")
    x, y = make_data()
    paths = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        import keras

        keras.backend.clear_session()
        model = make_model(seed)
        paths[name] = folder / f"{name}.h5"
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[SeedCallback(7, paths[name], mode="record")])
    return paths


def test_show(runs, capsys):
    """show prints the environment and one row per epoch, exit 0."""
    assert main(["show", str(runs["a"])]) == 0
    out = capsys.readouterr().out
    assert "backend: " in out and "keras: " in out
    assert "start 0" in out and "\n1 " in out
    assert "loss" in out
    assert "configuration:\n  model.seed: none\n" in out and "\n  layer 1: Dense 'dense" in out


def test_diff_names_configuration_differences(runs, tmp_path, capsys):
    """A recorded setting that differs is the likely cause and is listed."""
    changed = tmp_path / "changed.h5"
    shutil.copy(runs["c"], changed)
    with edit_reference(changed) as file:
        file["config"].attrs["steps"] = "8"
    assert main(["diff", str(runs["a"]), str(changed)]) == 1
    out = capsys.readouterr().out
    assert "likely cause: the configuration differs from the reference's: steps per epoch: 4 in the reference, 8 in this run\n" in out
    assert "configuration differences:\n  steps per epoch: 4 in the reference, 8 in this run\n" in out


def test_diff_identical(runs, capsys):
    """Two runs with the same seed: 'identical', exit 0."""
    assert main(["diff", str(runs["a"]), str(runs["b"])]) == 0
    assert capsys.readouterr().out.startswith("identical: 2 epochs compared")


def test_diff_differ(runs, capsys):
    """Another seed: exit 1 and the first divergence by part and variable."""
    assert main(["diff", str(runs["a"]), str(runs["c"])]) == 1
    out = capsys.readouterr().out
    assert out.startswith("differ: initial state") and "trainable weights differ" in out
    assert "sequential/dense/kernel" in out


def test_diff_lists_environment_differences(runs, tmp_path, capsys):
    """Environment differences are listed next to the divergence."""
    changed = tmp_path / "changed.h5"
    shutil.copy(runs["c"], changed)
    with edit_reference(changed) as file:
        file["environment"].attrs["keras"] = "9.9.9"
    assert main(["diff", str(runs["a"]), str(changed)]) == 1
    assert "keras: " in capsys.readouterr().out.split("environment differences")[1]


@pytest.mark.parametrize("command", ["show", "diff"])
def test_bad_file_exit_2_one_line(runs, tmp_path, capsys, command):
    """A damaged file: exit 2, one line on stderr naming the file, no traceback."""
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    args = [command, str(bad)] + ([str(runs["a"])] if command == "diff" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


def test_usage_error_exit_2(capsys):
    """A missing argument is a usage error, exit 2."""
    with pytest.raises(SystemExit) as info:
        main(["diff", "only-one.h5"])
    assert info.value.code == 2


def test_demo_bad_arguments(capsys):
    """Bad demo arguments exit 2 with the argument named."""
    assert main(["demo", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_console_script_and_module(tmp_path):
    """`keras-repro demo` reproduces (exit 0) and writes files `show` and `diff` accept; -m works."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [shutil.which("keras-repro") or "keras-repro", "demo", "--epochs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REPRODUCIBLE" in result.stdout and "identical" in result.stdout
    assert main(["diff", str(out / "reference.h5"), str(out / "run2.h5")]) == 0
    module = subprocess.run(
        [sys.executable, "-m", "keras_repro", "show", str(out / "reference.h5")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert module.returncode == 0 and "epoch" in module.stdout


def test_demo_reports_a_divergence(tmp_path, monkeypatch, capsys):
    """When run 2 differs (here: another seed for run 2), demo says so and exits 1."""
    from keras_repro import demo

    original = demo.train_once
    calls = []

    def second_run_other_seed(seed, epochs, reference, mode):
        calls.append(mode)
        return original(seed + (1 if mode == "verify" else 0), epochs, reference, mode)

    monkeypatch.setattr(demo, "train_once", second_run_other_seed)
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT REPRODUCIBLE" in out and "DIFFERS" in out
    assert calls == ["record", "verify"]
