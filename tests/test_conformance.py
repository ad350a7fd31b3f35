"""The conformance matrix: every model form, lifecycle and fit option of
tests/scripts/conformance.py (the table of docs/guarantees.md), on TensorFlow, JAX and PyTorch.

Each backend runs all cells in two processes: "first" (PYTHONHASHSEED=0: records, fits twice,
continues, checkpoints, interrupts) then "second" (PYTHONHASHSEED=random: verifies, resumes,
completes, perturbs). The three backends run side by side. One test per (backend, cell,
lifecycle) reports the checks of that lifecycle in both processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, start_child

SCRIPT = os.path.join(REPO, "tests", "scripts", "conformance.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import conformance  # noqa: E402  (the table only: the script imports Keras when it runs)

BACKENDS = ["tensorflow", "jax", "torch"]
PHASES = (("first", "0"), ("second", "random"))
TIMEOUT = 1500

KERAS_ORDER = (
    "not promised: a plain keras.Model leaves the data order to Keras, and on TensorFlow its "
    "tf.data shuffle of a resumed or continued fit(shuffle=True) visits the rows in another order "
    "than the straight run (use kr.DeterministicModel, or shuffle=False)"
)
NOT_PROMISED = {
    ("plain", "resume", "tensorflow"): KERAS_ORDER,
    ("plain", "continue", "tensorflow"): KERAS_ORDER,
}
"""(cell, lifecycle, backend) that keras_repro does not make reproducible, with why: each is a
strict xfail, so the day it passes the test says so."""

IN_PROCESS_KERAS = False
"""The matrix trains in its own processes: no Keras session to clear per test."""

RUNTIME: dict[str, float] = {}
"""Wall-clock seconds of each phase (all backends side by side), for the terminal summary."""


def _run_phase(folder, phase, hash_seed):
    """Runs one phase for every backend at once; returns {backend: results}."""
    processes = {}
    for backend in BACKENDS:
        log = open(folder / f"{backend}-{phase}.log", "w")
        processes[backend] = (start_child([sys.executable, SCRIPT, phase, folder / backend],
                                          env={"KERAS_BACKEND": backend, "PYTHONHASHSEED": hash_seed},
                                          stdout=log, stderr=subprocess.STDOUT), log)
    results = {}
    for backend, (process, log) in processes.items():
        try:
            process.wait(timeout=TIMEOUT)
        finally:
            process.kill()
            log.close()
        output = folder / backend / f"{phase}.json"
        if output.exists():
            results[backend] = json.loads(output.read_text())
        else:
            tail = (folder / f"{backend}-{phase}.log").read_text()[-4000:]
            results[backend] = {"_crashed": tail}
    return results


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """{backend: {phase: {cell: result}}} for the whole matrix."""
    folder = tmp_path_factory.mktemp("conformance")
    for backend in BACKENDS:
        (folder / backend).mkdir()
    results = {backend: {} for backend in BACKENDS}
    for phase, hash_seed in PHASES:
        start = time.perf_counter()
        for backend, found in _run_phase(folder, phase, hash_seed).items():
            results[backend][phase] = found
        RUNTIME[phase] = time.perf_counter() - start
    return results


def _cases():
    for backend in BACKENDS:
        for cell in conformance.CELLS.values():
            for lifecycle in cell.lifecycles:
                reason = NOT_PROMISED.get((cell.id, lifecycle, backend))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                yield pytest.param(backend, cell.id, lifecycle, marks=marks, id=f"{backend}-{cell.id}-{lifecycle}")


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT)  # the whole matrix trains in the first test's setup: two phases of up to TIMEOUT
@pytest.mark.parametrize("backend, cell, lifecycle", list(_cases()))
def test_conformance(matrix, backend, cell, lifecycle):
    """Every check of this cell's lifecycle passed, in both processes; none was skipped."""
    checks = []
    for phase, _ in PHASES:
        results = matrix[backend][phase]
        assert "_crashed" not in results, f"the {phase} process crashed:\n{results.get('_crashed')}"
        result = results[cell]
        if result.get("skipped"):  # an optional extra that is not installed: not counted as passing
            pytest.skip(result["skipped"])
        mine = [c for c in result["checks"] if c[0] == lifecycle]
        assert result["error"] is None or (mine and result["lifecycle"] != lifecycle), (
            f"{phase}: {result['error']}")
        checks += [(phase, *c[1:]) for c in mine]
    assert checks, f"no check of {lifecycle} ran"
    failed = [c for c in checks if not c[2]]
    assert not failed, "\n".join(f"{phase}: {name}: {detail}" for phase, name, _, detail in failed)


@pytest.mark.unit
def test_readme_shows_the_matrix():
    """docs/guarantees.md carries the matrix's table, as the script prints it."""
    with open(os.path.join(REPO, "docs", "guarantees.md")) as handle:
        page = handle.read()
    assert conformance.markdown_table() in page
    for (cell, lifecycle, backend), reason in NOT_PROMISED.items():
        assert f"`{cell}` {lifecycle} on {backend}" in page, "docs/guarantees.md lists what is not promised"
