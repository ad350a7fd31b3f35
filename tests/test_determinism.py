"""Tests for keras_repro.enable_determinism, on every backend (in fresh processes)."""

from __future__ import annotations

import pytest

from keras_repro import enable_determinism
from tests.conftest import run_python

IN_TIME = {
    "tensorflow": (
        "report = enable_determinism(threads=1, inter_op_threads=1)",
        "from keras_repro.fingerprinting.environment import collect; m = collect(); "
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
@pytest.mark.unit
def test_bad_thread_counts(bad):
    """Thread counts must be positive ints."""
    with pytest.raises(ValueError, match="Received: threads="):
        enable_determinism(threads=bad)


@pytest.mark.unit
def test_report_text_lists_what_was_and_was_not_set():
    """str(report) lists both kinds of entry."""
    from keras_repro.determinism import DeterminismReport

    text = str(DeterminismReport("tensorflow", {"tf_op_determinism": True}, {"intra_op_threads": "too late"}))
    assert "set tf_op_determinism = True" in text and "NOT set intra_op_threads: too late" in text


KERNELS_ON = {
    "tensorflow": "from tensorflow.python.framework.config import is_op_determinism_enabled as on",
    "torch": "from torch import are_deterministic_algorithms_enabled as on",
    "jax": "import os; on = lambda: '--xla_gpu_deterministic_ops=true' in os.environ.get('XLA_FLAGS', '').split()",
}


@pytest.mark.parametrize("backend", sorted(KERNELS_ON))
def test_deterministic_model_turns_kernels_on_by_default_and_records_it(backend, tmp_path):
    """A DeterministicModel turns the backend's switch on (JAX: `import keras_repro` set the
    XLA flag before JAX started); deterministic_kernels=False leaves the run-time switches
    off; the run's environment and `keras-repro show` say which."""
    code = f"""
        import keras, numpy as np
        import keras_repro as kr
        {KERNELS_ON[backend]}
        from keras_repro.determinism import kernel_state
        layers = lambda: [keras.Input((3,)), keras.layers.Dense(2)]
        print("BEFORE", on(), kernel_state().in_effect)
        off = kr.DeterministicSequential(layers(), seed=1, deterministic_kernels=False)
        print("OPT_OUT", on(), type(off).from_config(off.get_config())._repro_kernels)
        model = kr.DeterministicSequential(layers(), seed=1)
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0,
                  callbacks=[kr.SeedCallback(1, {str(tmp_path / "run.h5")!r})])
        print("DEFAULT", on(), kernel_state())
    """
    out = dict(line.split(" ", 1) for line in run_python(code, env={"KERAS_BACKEND": backend}).stdout.splitlines())
    jax = backend == "jax"
    assert out["BEFORE"] == ("True True" if jax else "False False")
    assert out["OPT_OUT"] == ("True False" if jax else "False False")
    assert out["DEFAULT"].startswith("True on (")
    show = run_python(f"from keras_repro.cli import main; main(['show', {str(tmp_path / 'run.h5')!r}])").stdout
    assert "kernels:  deterministic kernels on (" in show


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_opting_out_at_import_leaves_the_start_up_switches_alone(backend):
    """KERAS_REPRO_DETERMINISTIC_KERNELS=0: no XLA flag (JAX) and no cuBLAS variable."""
    code = """
        import os
        import keras_repro as kr
        from keras_repro.determinism import kernel_state
        print(os.environ.get("XLA_FLAGS"), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        print(kernel_state())
    """
    out = run_python(code, env={"KERAS_BACKEND": backend, "KERAS_REPRO_DETERMINISTIC_KERNELS": "0"}).stdout.splitlines()
    assert out[0] == "None None"
    if backend == "jax":
        assert out[1] == "not in effect (XLA's determinism flag was not set: KERAS_REPRO_DETERMINISTIC_KERNELS=0)"


def test_jax_started_before_import_warns_once_on_an_accelerator():
    """JAX ran before `import keras_repro`: the flag can no longer take effect; a fit on an
    accelerator (simulated: this machine has none) warns once with what to do, and the run
    records the reason. Without an accelerator, it only records."""
    code = """
        import warnings
        import jax.numpy as jnp
        (jnp.ones(2) + 1).block_until_ready()  # JAX starts before keras_repro is imported
        import keras, numpy as np
        import keras_repro as kr
        from keras_repro import _backend

        def fit():
            model = kr.DeterministicSequential([keras.Input((3,)), keras.layers.Dense(2)], seed=1)
            model.compile(optimizer="sgd", loss="mse")
            callback = kr.SeedCallback(1)
            model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[callback])
            return callback

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback = fit()
            print("CPU", len([w for w in caught if issubclass(w.category, kr.ReproWarning)
                              and "Deterministic kernels" in str(w.message)]))
            _backend.accelerators = lambda: ["cuda:0"]
            fit(), fit()
            found = [str(w.message) for w in caught if "Deterministic kernels" in str(w.message)]
        print("GPU", len(found), found[0])
        print("ENV", callback.log.environment["deterministic_kernels"])
    """
    out = dict(line.split(" ", 1) for line in run_python(code, env={"KERAS_BACKEND": "jax"}).stdout.splitlines())
    assert out["CPU"] == "0"
    count, message = out["GPU"].split(" ", 1)
    assert count == "1" and "JAX started before keras_repro could set XLA's determinism flag" in message
    assert "keras-repro run" in message and "restart the kernel" in message
    assert out["ENV"].startswith("not in effect (JAX started before")
