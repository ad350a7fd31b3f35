"""The harness that runs Keras' own tests with keras_repro's classes substituted
(tests/keras_suite): its substitution and its verdicts, without running Keras' tests."""

from __future__ import annotations

import importlib
import json

import keras
import pytest
from keras.src.models.functional import Functional

import keras_repro as kr
from tests.keras_suite import plugin, run

pytestmark = pytest.mark.unit


def test_test_modules_see_keras_repro_classes_where_they_import_keras():
    """Every import form a Keras test uses yields the substituted classes; Functional and Keras' own modules are untouched."""
    namespace = plugin._substituted_builtins(plugin._replacements())
    code = (
        "import keras\n"
        "from keras.src import models\n"
        "from keras.src.models import Model, Sequential, Functional\n"
        "from keras.src.models.model import Model as ModelFromModule\n"
        "from keras.src.models.sequential import Sequential as SequentialFromModule\n"
        "import keras.src.models.model as model_module\n"
        "def inner():\n"
        "    from keras import models as inner_models\n"
        "    return inner_models.Sequential\n"
    )
    module = {"__builtins__": namespace, "__name__": "fake_test"}
    exec(compile(code, "fake_test.py", "exec"), module)
    assert module["keras"].Model is kr.DeterministicModel and module["keras"].models.Sequential is kr.DeterministicSequential
    assert module["models"].Model is kr.DeterministicModel and module["Sequential"] is kr.DeterministicSequential
    assert module["ModelFromModule"] is kr.DeterministicModel and module["SequentialFromModule"] is kr.DeterministicSequential
    assert module["model_module"].Model is kr.DeterministicModel and module["inner"]() is kr.DeterministicSequential
    assert module["Functional"] is Functional and module["keras"].layers.Dense is keras.layers.Dense
    assert keras.Model is not kr.DeterministicModel and importlib.import_module("keras.src.models").Model is keras.Model


def test_verdicts_name_regressions_and_stale_exceptions():
    """A test passing plain and failing substituted is a regression unless documented; a documented one that passes is stale."""
    expected = {"plain_failures": {"jax": ["keras/src/a_test.py::T::broken"]},
                "exceptions": {"keras/src/a_test.py::T::exact_type": {"backends": ["jax"], "reason": "type() is"},
                               "keras/src/a_test.py::T::fixed": {"backends": ["jax"], "reason": "was"}}}
    substituted = {"outcomes": {"keras/src/a_test.py::T::ok": "passed", "keras/src/a_test.py::T::new": "failed",
                                "keras/src/a_test.py::T::exact_type": "failed", "keras/src/a_test.py::T::fixed": "passed",
                                "keras/src/a_test.py::T::skipped": "skipped"},
                   "messages": {"keras/src/a_test.py::T::new": "AssertionError: boom"}}
    regressions, stale, rows = run.compare("jax", ["a_test.py"], None, substituted, expected)
    assert regressions == [("keras/src/a_test.py::T::new", "AssertionError: boom")]
    assert stale == ["keras/src/a_test.py::T::fixed"]
    assert rows["a_test.py"] == {"passed plain": 4, "failed plain": 1, "failed substituted": 1, "documented exceptions": 1}
    regressions, stale, _ = run.compare("torch", ["a_test.py"], None, substituted, expected)  # documented for jax only
    assert len(regressions) == 2 and not stale


def test_files_are_shared_out_evenly():
    """--jobs 2 puts the heavy files in different processes, and every file in one."""
    groups = run.split(list(run.FILES), 2)
    assert sorted(sum(groups, [])) == sorted(run.FILES)
    assert not any("trainers/trainer_test.py" in g and "saving/saving_lib_test.py" in g for g in groups)


def test_expected_list_is_for_the_installed_keras():
    """The recorded plain failures and exceptions are for the installed Keras, each exception with a reason."""
    with open(run.EXPECTED) as file:
        expected = json.load(file)
    assert expected["keras"] == run.keras_version(), "re-record: python tests/keras_suite/run.py --record"
    for node, entry in expected["exceptions"].items():
        assert node.startswith("keras/src/") and entry["reason"] and set(entry["backends"]) <= set(run.BACKENDS)


def test_missing_sdist_is_a_skip_with_a_message(monkeypatch, tmp_path, capsys):
    """When pip cannot fetch the sdist, the run says so and exits 0; a wrong --sdist path is an error."""
    monkeypatch.setattr(run, "CACHE", str(tmp_path))

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for keras==0.0"

    monkeypatch.setattr(run.subprocess, "run", lambda *a, **k: Failed())
    assert run.find_sdist("0.0", None) is None
    out = capsys.readouterr().out
    assert out.startswith("SKIPPED") and "No matching distribution found for keras==0.0" in out
    with pytest.raises(SystemExit, match="--sdist names no file"):
        run.find_sdist("0.0", str(tmp_path / "missing.tar.gz"))
