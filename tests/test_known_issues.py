"""The known-issue table (keras_repro.tools.known_issues) and the environment checks of the
preflight (keras_repro.tools.stack_checks): entries well-formed, affected versions flagged,
unaffected ones not, and `keras-repro preflight` without a script."""

from __future__ import annotations

import datetime
import re

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import keras_repro as kr
from keras_repro import _backend
from keras_repro.cli import main
from keras_repro.tools import known_issues
from keras_repro.tools.known_issues import KNOWN_ISSUES, Stack, check_known_issues
from keras_repro.tools.stack_checks import environment_checks

pytestmark = pytest.mark.unit

DETERMINISTIC_XLA = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}


def test_every_entry_is_well_formed():
    """Each entry: an owner/repo#N id, its GitHub URL, a parsable non-empty range, an ISO date,
    a kind, a backend, a title and a fix; ids are unique; its check returns a known status."""
    assert len({issue.id for issue in KNOWN_ISSUES}) == len(KNOWN_ISSUES) >= 3
    for issue in KNOWN_ISSUES:
        owner_repo, number = re.fullmatch(r"([\w.-]+/[\w.-]+)#(\d+)", issue.id).groups()
        assert re.fullmatch(rf"https://github\.com/{re.escape(owner_repo)}/(issues|pull|discussions)/{number}", issue.url)
        assert str(SpecifierSet(issue.affected)) and list(SpecifierSet(issue.affected)), issue.affected
        assert datetime.date.fromisoformat(issue.date) <= datetime.date(2026, 12, 31)
        assert issue.kind in ("bug", "change") and issue.backend in ("jax", "tensorflow", "torch")
        assert issue.title and issue.fix and issue.package
        for device in ("cpu", "gpu"):
            status, why = issue.check(Stack({}, device, issue.backend, DETERMINISTIC_XLA))
            assert status in ("ok", "warn", "fail") and why


@pytest.mark.parametrize("issue", KNOWN_ISSUES, ids=lambda issue: issue.id)
def test_the_range_bounds_are_themselves_classified(issue):
    """A version at each bound of the range lands on the side the specifier says."""
    for spec in SpecifierSet(issue.affected):
        bound = Version(spec.version)
        assert issue.applies(str(bound)) == (spec.operator in (">=", "<=", "=="))


def _fake_gpu_stack(monkeypatch, versions, backend="jax"):
    """The installed versions, device and backend as given (the lookups monkeypatched)."""
    monkeypatch.setattr(known_issues, "installed_version", lambda package: versions.get(package))
    monkeypatch.setattr(_backend, "accelerators", lambda: ["cuda:0"])
    monkeypatch.setattr(_backend, "name", lambda: backend)
    for key, value in DETERMINISTIC_XLA.items():
        monkeypatch.setenv(key, value)


def test_an_affected_jaxlib_on_a_gpu_is_flagged_and_a_fixed_one_is_not(monkeypatch):
    """jaxlib 0.5.3 on a GPU with XLA's determinism flag fails jax#27796; 0.8.0 and a CPU do not."""
    _fake_gpu_stack(monkeypatch, {"jaxlib": "0.5.3", "jax": "0.5.3"})
    scatter = {f.name.split()[0]: f for f in check_known_issues()}["jax-ml/jax#27796"]
    assert scatter.status == "fail" and "jaxlib 0.5.3" in scatter.detail and "31063" in scatter.fix
    _fake_gpu_stack(monkeypatch, {"jaxlib": "0.8.0", "jax": "0.8.0"})
    assert {f.name.split()[0]: f.status for f in check_known_issues()}["jax-ml/jax#27796"] == "ok"
    cpu = Stack({"jaxlib": "0.5.3"}, "cpu", "jax", DETERMINISTIC_XLA)
    assert {f.name.split()[0]: f.status for f in check_known_issues(cpu)}["jax-ml/jax#27796"] == "ok"


def test_version_changes_and_other_backends():
    """The Threefry flip warns from jax 0.5.0 on (not before, not with JAX_THREEFRY_PARTITIONABLE=0);
    an affected package that is not the backend in use is ok; TF 2.21 under XLA on a GPU warns."""
    def status(versions, backend, device="cpu", env=None):
        return {f.name.split()[0]: f.status for f in check_known_issues(Stack(versions, device, backend, env or {}))}

    assert status({"jax": "0.5.0"}, "jax")["jax-ml/jax#18480"] == "warn"
    assert status({"jax": "0.4.38"}, "jax")["jax-ml/jax#18480"] == "ok"
    assert status({"jax": "0.6.0"}, "jax", env={"JAX_THREEFRY_PARTITIONABLE": "0"})["jax-ml/jax#18480"] == "ok"
    assert status({"jax": "0.6.0"}, "torch")["jax-ml/jax#18480"] == "ok"
    assert status({"tensorflow": "2.21.0"}, "tensorflow", "gpu")["tensorflow/tensorflow#117644"] == "warn"
    assert status({"tensorflow": "2.20.0"}, "tensorflow", "gpu")["tensorflow/tensorflow#117644"] == "ok"
    assert status({}, "jax") == {issue.id: "ok" for issue in KNOWN_ISSUES}  # nothing installed


def test_environment_checks_on_a_gpu_and_on_a_cpu():
    """On a GPU, a missing XLA flag or cuBLAS setting (with torch) fails and the fix names
    `keras-repro run`; set, they are ok; a CPU needs neither. Hashing and threads warn unless fixed."""
    def checks(device, env, randomized=True):
        stack = Stack({"torch": "2.13.0"}, device, "torch", env)
        return {f.name: f for f in environment_checks(stack, randomized=lambda: randomized)}

    bare = checks("gpu", {})
    assert bare["XLA_FLAGS"].status == "fail" and "keras-repro run" in bare["XLA_FLAGS"].fix
    assert bare["CUBLAS_WORKSPACE_CONFIG"].status == "fail"
    assert bare["PYTHONHASHSEED"].status == "warn" and bare["threads"].status == "warn"
    ready = checks("gpu", {**DETERMINISTIC_XLA, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "4"}, False)
    assert [ready[name].status for name in ("XLA_FLAGS", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "threads")] == ["ok"] * 4
    cpu = checks("cpu", {})
    assert cpu["XLA_FLAGS"].status == "ok" and cpu["CUBLAS_WORKSPACE_CONFIG"].status == "ok"


def test_preflight_without_a_model_reports_the_stack(monkeypatch, capsys):
    """kr.preflight() checks only the stack; `keras-repro preflight` prints it, exit 1 on a failed check."""
    report = kr.preflight()
    assert report.steps == 0 and [f.name for f in report.environment][0] == "PYTHONHASHSEED"
    assert len(report.known_issues) == len(KNOWN_ISSUES)
    assert main(["preflight"]) == (0 if report.ok else 1)
    out = capsys.readouterr().out
    assert "environment:\n  [" in out and "known issues:\n  [" in out and "tensorflow/tensorflow#117644" in out
    _fake_gpu_stack(monkeypatch, {"jaxlib": "0.5.3"})
    assert main(["preflight"]) == 1
    assert "[fail] jax-ml/jax#27796 (2025-04-07)" in capsys.readouterr().out
