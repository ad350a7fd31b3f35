"""The benchmark behind issue 17's cost target (`benchmarks/data_checks.py`) runs, and its
main statistic (train-function calls with and without the data checks, side by side) sees a
cost where there is one and none in its control."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import REPO, run_child, run_python

pytestmark = pytest.mark.slow

SCRIPT = f"{REPO}/benchmarks/data_checks.py"


def test_data_checks_benchmark_prints_every_table():
    out = run_child([sys.executable, SCRIPT, "--epochs", "1", "--rounds", "1", "--repeats", "1", "--rows", "320"],
                    env={"KERAS_BACKEND": "tensorflow"}).stdout
    assert "steps side by side" in out and "whole one-epoch fits" in out and "fresh models" in out
    for form in ("arrays", "tf.data"):
        row = re.search(rf"^{re.escape(form)} +(\d+) .*<= 1\.03 (PASS|FAIL|UNRESOLVED)$", out, re.MULTILINE)
        assert row is not None, out
        assert int(row.group(1)) == 5  # 320 rows: 10 batches a fit, 5 pairs


def test_steps_side_by_side_see_an_injected_cost_and_the_control_does_not():
    # torch runs the batch checksum eagerly in each step: 10 ms slept there is 10 ms more in
    # every checked call and in no plain one (a margin far above a loaded machine's noise in
    # the median of 40 pairs)
    code = f"""
        import sys, time
        import numpy as np
        sys.path.insert(0, {REPO!r} + "/benchmarks")
        import data_checks as bench
        from keras_repro import _backend

        real = _backend.step_lanes

        def slow(leaves):
            time.sleep(0.010)
            return real(leaves)

        _backend.step_lanes = slow
        x, y = bench.make_data(1280)
        found = bench.time_steps("arrays", x, y, 2)
        assert len(found["on"]) == len(found["off"]) == 40, found
        print(float(np.median(found["on"])), float(np.median(found["off"])))
    """
    cost, control = map(float, run_python(code, env={"KERAS_BACKEND": "torch"}).stdout.split()[-2:])
    assert cost >= 0.006, (cost, control)
    assert abs(control) <= 0.004, (cost, control)
