"""Tests for keras_repro.enable_determinism, on every backend (in fresh processes)."""

from __future__ import annotations

import pytest

from keras_repro import enable_determinism
from tests.conftest import run_python

IN_TIME = {
    "tensorflow": (
        "report = enable_determinism(threads=1, inter_op_threads=1)",
        "from keras_repro.environment import collect; m = collect(); "
        "print(m['determinism.tf_op_determinism'], m['determinism.intra_op_threads'])",
        ["inter_op_threads", "intra_op_threads", "tf_op_determinism"],
        "True 1",
    ),
    "jax": (
        "report = enable_determinism()",
        "import os; print('--xla_gpu_deterministic_ops=true' in os.environ['XLA_FLAGS'])",
        ["xla_deterministic_ops"],
        "True",
    ),
    "torch": (
        "report = enable_determinism(threads=1, inter_op_threads=1)",
        "import torch; print(torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())",
        ["cudnn_deterministic", "inter_op_threads", "intra_op_threads", "torch_deterministic_algorithms"],
        "True 1",
    ),
}

TOO_LATE = {
    "tensorflow": ("import tensorflow as tf; tf.constant(1.0) + 1.0", "threads=1", "intra_op_threads"),
    "jax": ("import jax.numpy as jnp; (jnp.ones(2) + 1).block_until_ready()", "", "xla_deterministic_ops"),
    "torch": (
        "import torch; torch.set_num_interop_threads(2)",
        "inter_op_threads=1",
        "inter_op_threads",
    ),
}


@pytest.mark.parametrize("backend", sorted(IN_TIME))
def test_in_time_everything_is_applied(backend):
    """Called before the backend starts: every switch takes effect and the report says so."""
    call, check, applied, expected = IN_TIME[backend]
    code = f"""
        from keras_repro import enable_determinism
        {call}
        print(report.backend, report.complete, sorted(report.applied))
        {check}
    """
    out = run_python(code, env={"KERAS_BACKEND": backend}).stdout.splitlines()
    assert out[0] == f"{backend} True {applied}"
    assert out[1] == expected


@pytest.mark.parametrize("backend", sorted(TOO_LATE))
def test_too_late_is_reported_not_pretended(backend):
    """Called after the backend ran: what cannot change is listed in not_applied, with a warning."""
    warm_up, arguments, missing = TOO_LATE[backend]
    code = f"""
        import warnings
        {warm_up}
        from keras_repro import enable_determinism
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = enable_determinism({arguments})
        print(report.complete, list(report.not_applied))
        print(any({missing!r} in str(w.message) for w in caught))
    """
    out = run_python(code, env={"KERAS_BACKEND": backend}).stdout.splitlines()
    assert out[0] == f"False [{missing!r}]"
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
