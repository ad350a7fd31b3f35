"""Shared fixtures: a clean environment per test and small models to train."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# `import keras_repro` sets start-up switches in os.environ (XLA_FLAGS for JAX, the cuBLAS
# workspace for torch) for this process; a child process of a test must start from the
# environment the suite was started with, or tests of those switches see them already set.
# (Tests import this file again as `tests.conftest`, after keras_repro: that copy takes the
# values pytest's copy saw.)
STARTUP_SWITCHES = ("XLA_FLAGS", "CUBLAS_WORKSPACE_CONFIG")
_PRISTINE = getattr(sys.modules.get("conftest"), "_PRISTINE", None) or {
    key: os.environ.get(key) for key in STARTUP_SWITCHES
}

import keras  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**extra: str) -> dict:
    """The environment for a child process: this one's, less the start-up switches that
    `import keras_repro` set here (unless `extra` sets them), plus `extra`."""
    env = dict(os.environ)
    for key, value in _PRISTINE.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.update(extra)
    return env


@contextlib.contextmanager
def edit_reference(path):
    """Opens a fingerprint file with h5py for editing, then writes its checksum header again:
    tests of the schema checks need edits that pass the checksum, as a bug in keras_repro's
    writer (rather than damage) would produce."""
    import h5py

    from keras_repro.store import hdf5 as store

    with h5py.File(path, "r+") as file:
        yield file
    store.seal(path)


def pytest_configure(config):
    """Hash randomization warnings are expected in the test process. Added here, not in
    setup.cfg, since naming the class there imports keras_repro before this file runs."""
    config.addinivalue_line("filterwarnings", "ignore::keras_repro.errors.HashRandomizationWarning")


def pytest_terminal_summary(terminalreporter):
    """Prints the conformance matrix's runtime when it ran."""
    module = sys.modules.get("tests.test_conformance") or sys.modules.get("test_conformance")
    runtime = getattr(module, "RUNTIME", None)
    if runtime:
        cells = len(module.conformance.CELLS)
        terminalreporter.write_sep("-", "conformance matrix runtime")
        terminalreporter.write_line(
            f"{cells} cells x {len(module.BACKENDS)} backends, backends side by side: "
            + ", ".join(f"{phase} process {seconds:.0f} s" for phase, seconds in runtime.items())
            + f"; {sum(runtime.values()):.0f} s in all"
        )


UNIT_REFUSED = ("fit", "train_on_batch", "evaluate", "predict", "test_on_batch", "predict_on_batch")


@pytest.fixture(autouse=True)
def unit_tests_neither_train_nor_spawn(request, monkeypatch):
    """Keeps the `unit` tier honest: a test marked unit that trains, evaluates or predicts, or
    starts a process, fails saying so (take the mark off, or make the test smaller)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return

    def refused(what):
        def refuse(*args, **kwargs):
            raise AssertionError(f"a test marked `unit` must not {what}: take the mark off or do without it")
        return refuse

    for name in UNIT_REFUSED:
        monkeypatch.setattr(keras.Model, name, refused(f"call Model.{name}"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refused("start a process"))
    import multiprocessing.process

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refused("start a process"))
    yield


@pytest.fixture(autouse=True)
def restore_environ():
    """Restores os.environ after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="module")
def kernels_off_for_module_fixtures(request):
    """Module-scoped fixtures (recorded runs shared by a file's tests) are made before the
    per-test fixture below turns deterministic kernels off: a test file run after one that built
    a DeterministicModel would record them with the kernels on, and its tests then train
    without them."""
    if getattr(request.module, "IN_PROCESS_KERAS", True):
        from keras_repro.determinism import use_deterministic_kernels

        use_deterministic_kernels(False)
    yield


@pytest.fixture(autouse=True)
def fresh_keras_session(request):
    """Each test starts with fresh Keras name counters (unless its module trains only in
    other processes: `IN_PROCESS_KERAS = False`)."""
    if getattr(request.module, "IN_PROCESS_KERAS", True):
        # Without Python's full garbage collection, which Keras runs by default and which costs
        # most of a second per test once the process holds a few models (the interpreter's own
        # collection still frees them).
        keras.backend.clear_session(free_memory=False)
        # A DeterministicModel turns the backend's deterministic kernels on for the whole
        # process: each test starts with them off (tests of the default run in new processes).
        from keras_repro.determinism import use_deterministic_kernels

        use_deterministic_kernels(False)
    yield


def nudge_one_ulp(variable) -> None:
    """Moves the first value of a Keras variable by one ulp (one step, for integers)."""
    values = keras.ops.convert_to_numpy(variable).copy()
    flat = values.reshape(-1)
    flat[0] = np.nextafter(flat[0], np.inf) if values.dtype.kind == "f" else flat[0] + 1
    variable.assign(values)


def make_data(n: int = 64, features: int = 6, classes: int = 3, seed: int = 0):
    """A small classification problem, the same for every call."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (np.abs(x[:, 0] * 3).astype(int) % classes).astype("int32")
    return x, y


def make_model(seed: int | None = 7, dropout: float = 0.25, features: int = 6, classes: int = 3):
    """A small compiled MLP with Dropout and BatchNormalization, seeded with `seed`."""
    from keras_repro import seed_everything

    if seed is not None:
        seed_everything(seed)
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_child(args: list, *, cwd: str = REPO, env: dict | None = None, timeout: float = 300,
              check: bool = True) -> subprocess.CompletedProcess:
    """Runs a child process to its end: the one way the suite runs one (`start_child` starts one
    that runs beside the test). The child gets `child_env(**env)` (quiet TensorFlow unless
    `env` says otherwise) and text output; with `check`, a non-zero exit fails the test with the
    command, the exit code and the ends of both outputs.

    Example:

    >>> run_child([sys.executable, "-c", "print(1)"]).stdout        # doctest: +SKIP
    '1\n'
    """
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=_child_environment(env), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))[:300]} exited with {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}")
    return result


def start_child(args: list, *, cwd: str = REPO, env: dict | None = None, **popen: object) -> subprocess.Popen:
    """Starts a child process that runs beside the test (kill tests, processes run together),
    with the environment of `run_child`; `popen` goes to `subprocess.Popen` (stdout, stderr...)."""
    popen.setdefault("text", True)
    return subprocess.Popen([str(arg) for arg in args], cwd=cwd, env=_child_environment(env), **popen)


def _child_environment(env: dict | None) -> dict:
    """`child_env` with quiet TensorFlow, then the variables of `env` (None: removed)."""
    environment = child_env(TF_CPP_MIN_LOG_LEVEL="3")
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = str(value)
    return environment


def run_python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (cwd = repository), failing loudly on error."""
    return run_child([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout)
