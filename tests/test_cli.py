"""Tests for the keras-repro command: every subcommand and exit code."""

from __future__ import annotations

import shutil
import sys

import pytest

from keras_repro import SeedCallback
from keras_repro.cli import main
from tests.conftest import edit_reference, make_data, make_model, run_child


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


TERRAFORM = {"TF_TOKEN_app_terraform_io": "tf-token-3f9a1c", "TF_VAR_db_password": "hunter2-db"}
"""Terraform's variables, common on training machines: a TF_ prefix, secret values."""


def _record(path, model_seed, epochs=2, mode="record"):
    """Fits make_model(model_seed) with SeedCallback(7, path, mode)."""
    import keras

    keras.backend.clear_session()
    x, y = make_data()
    make_model(model_seed).fit(x, y, epochs=epochs, batch_size=16, verbose=0,
                               callbacks=[SeedCallback(7, path, mode=mode)])


def _secrets_in(text):
    """The secret values of TERRAFORM found in `text` (str or bytes)."""
    return [v for v in (*TERRAFORM.values(), "old-pass") if (v.encode() if isinstance(text, bytes) else v) in text]


def test_no_secret_in_reference_or_show_while_listed_variables_are_compared(tmp_path, monkeypatch, capsys):
    """With Terraform's secrets set, neither the file's bytes nor show hold them; OMP_NUM_THREADS
    is recorded, and diff names its change."""
    for name, value in TERRAFORM.items():
        monkeypatch.setenv(name, value)
    paths = {threads: tmp_path / f"threads{threads}.h5" for threads in (3, 5)}
    for threads, model_seed in ((3, 7), (5, 8)):
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
        _record(paths[threads], model_seed)
        assert _secrets_in(paths[threads].read_bytes()) == []
    assert main(["show", str(paths[3])]) == 0
    out = capsys.readouterr().out
    assert _secrets_in(out) == [] and "TF_TOKEN" not in out and "redacted" not in out
    assert "  env.OMP_NUM_THREADS: 3\n" in out
    assert main(["diff", str(paths[3]), str(paths[5])]) == 1
    out = capsys.readouterr().out
    assert _secrets_in(out) == []
    assert "  env.OMP_NUM_THREADS: 3 -> 5" in out.split("environment differences")[1]


def test_an_older_files_secrets_are_redacted_in_show_and_dropped_when_extended(runs, tmp_path, capsys):
    """A file of an older version holding Terraform's secrets: show prints them redacted and says
    so, diff does not print them, and a recording that extends the file drops them."""
    old = tmp_path / "old.h5"
    shutil.copy(runs["a"], old)
    with edit_reference(old) as file:
        for name, value in TERRAFORM.items():
            file["environment"].attrs[f"env.{name}"] = value
        file["environment"].attrs["env.TF_CPP_MIN_LOG_LEVEL"] = "2"
        file.require_group("notes").attrs["environment_from_epoch_1"] = (
            f"env.TF_VAR_db_password: old-pass -> {TERRAFORM['TF_VAR_db_password']}; keras: 3.14 -> 3.15")
    assert _secrets_in(old.read_bytes())  # the test's premise: the secrets are in the file
    assert main(["show", str(old)]) == 0
    out = capsys.readouterr().out
    assert _secrets_in(out) == []
    assert "  env.TF_TOKEN_app_terraform_io: (redacted)\n" in out and "  env.TF_CPP_MIN_LOG_LEVEL: (redacted)\n" in out
    assert "(3 values and 1 note redacted: an older keras_repro stored" in out
    assert "note environment_from_epoch_1: env.TF_VAR_db_password: (redacted); keras: 3.14 -> 3.15" in out
    assert main(["diff", str(old), str(runs["c"])]) == 1
    assert _secrets_in(capsys.readouterr().out) == []
    _record(old, 7, epochs=3, mode="auto")  # verifies epochs 0 and 1, records epoch 2
    assert _secrets_in(old.read_bytes()) == []
    assert main(["show", str(old)]) == 0
    out = capsys.readouterr().out
    assert "\n2 " in out and "TF_TOKEN" not in out and " redacted: " not in out


@pytest.mark.parametrize("command", ["show", "diff"])
def test_bad_file_exit_2_one_line(runs, tmp_path, capsys, command):
    """A damaged file: exit 2, one line on stderr naming the file, no traceback."""
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    args = [command, str(bad)] + ([str(runs["a"])] if command == "diff" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


@pytest.mark.unit
def test_usage_error_exit_2(capsys):
    """A missing argument is a usage error, exit 2."""
    with pytest.raises(SystemExit) as info:
        main(["diff", "only-one.h5"])
    assert info.value.code == 2


@pytest.mark.unit
def test_demo_bad_arguments(capsys):
    """Bad demo arguments exit 2 with the argument named."""
    assert main(["demo", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_console_script_and_module(tmp_path):
    """`keras-repro demo` reproduces (exit 0) and writes files `show` and `diff` accept; -m works."""
    out = tmp_path / "demo"
    result = run_child([shutil.which("keras-repro") or "keras-repro", "demo", "--epochs", 2, "--out", out], timeout=600)
    assert "REPRODUCIBLE" in result.stdout and "identical" in result.stdout
    assert main(["diff", str(out / "reference.h5"), str(out / "run2.h5")]) == 0
    module = run_child([sys.executable, "-m", "keras_repro", "show", out / "reference.h5"])
    assert "epoch" in module.stdout


def test_demo_reports_a_divergence(tmp_path, monkeypatch, capsys):
    """When run 2 differs (here: another seed for run 2), demo says so and exits 1."""
    from keras_repro.tools import demo

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
