"""Tests for keras_repro.enable_determinism."""

from __future__ import annotations

import pytest

from keras_repro import enable_determinism
from tests.conftest import run_python


def test_report_in_fresh_process_sets_tf_determinism_and_threads():
    """Before TF starts: op determinism and both thread limits take effect and are reported."""
    code = """
        from keras_repro import enable_determinism
        from keras_repro.environment import collect
        report = enable_determinism(threads=1, inter_op_threads=1)
        print(report.complete, sorted(report.applied))
        m = collect()
        print(m["determinism.tf_op_determinism"], m["determinism.intra_op_threads"])
    """
    out = run_python(code).stdout.split("\n")
    assert out[0] == "True ['inter_op_threads', 'intra_op_threads', 'tf_op_determinism']"
    assert out[1] == "True 1"


def test_late_thread_limits_are_reported_not_pretended():
    """After TF has run an op, thread limits cannot change: the report says so and warns."""
    code = """
        import warnings
        import tensorflow as tf
        tf.constant(1.0) + 1.0
        from keras_repro import enable_determinism
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = enable_determinism(threads=1)
        print(report.complete, report.applied.get("tf_op_determinism"), list(report.not_applied))
        print(any("intra_op_threads" in str(w.message) for w in caught))
    """
    out = run_python(code).stdout.split("\n")
    assert out[0] == "False True ['intra_op_threads']"
    assert out[1] == "True"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_thread_counts(bad):
    """Thread counts must be positive ints."""
    with pytest.raises(ValueError, match="Received: threads="):
        enable_determinism(threads=bad)


def test_report_text_lists_what_was_and_was_not_set():
    """str(report) lists both kinds of entry."""
    from keras_repro.determinism import DeterminismReport

    text = str(DeterminismReport("tensorflow", {"tf_op_determinism": True}, {"intra_op_threads": "too late"}))
    assert "set tf_op_determinism = True" in text and "NOT set intra_op_threads: too late" in text
