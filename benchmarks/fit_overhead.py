"""Wall-time overhead of `keras_repro` on `fit`, per Keras backend.

What is measured
----------------
The model of the common "seed your Keras MNIST model" article, on synthetic
MNIST-shaped data (28x28 float32 in [0, 1), 10 integer classes, generated with
NumPy from a fixed seed; `--rows` rows, 12,000 by default):

    Flatten -> Dense(128, relu) -> Dense(10), Adam, sparse categorical
    cross-entropy on logits, accuracy; fit(epochs=3, batch_size=32,
    validation_split=0.2, shuffle=True, verbose=0)

in two variants:

    A. plain Keras: `keras.utils.set_random_seed(seed)`, `keras.Sequential`,
       `model.fit(...)` with no callbacks;
    B. keras_repro: `kr.DeterministicSequential(..., seed=seed)` and
       `model.fit(..., callbacks=[kr.SeedCallback(seed, reference=<tmp>.h5,
       mode="record")])`, i.e. the model's own seeded input pipeline, per-epoch
       reseeding, layer RNG reset and an SHA-256 fingerprint of every variable
       written to an HDF5 file at every epoch.

How
---
The backend is fixed when Keras is imported, so the parent process starts one
child per backend (`--child BACKEND`, with KERAS_BACKEND set in its
environment). Each child generates the data, runs one uncounted warm-up fit of
each variant, then `--repeats` interleaved pairs (A, B, A, B, ...). Every fit
gets a freshly built and compiled model; only the `fit` call is timed
(`time.perf_counter`), so the timing includes tracing/compiling the train step,
which both variants pay alike. The child prints one JSON line; the parent
collects them and prints a table with the ratio of medians B / A against the
target of 1.05 (at most 5% overhead). The script always exits 0: it is a report.

Usage::

    python benchmarks/fit_overhead.py [--backends tensorflow,jax,torch] [--repeats 5] [--rows 12000]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BACKENDS = ("tensorflow", "jax", "torch")
TARGET_RATIO = 1.05
RESULT_PREFIX = "FIT_OVERHEAD_RESULT "
SEED = 7
EPOCHS = 3
BATCH_SIZE = 32
VALIDATION_SPLIT = 0.2
CHILD_TIMEOUT_S = 3600


# Child side: runs inside one backend ---------------------------------------------------


def make_data(rows: int, seed: int = 0) -> tuple[Any, Any]:
    """Synthetic MNIST-shaped data: (rows, 28, 28) float32 images, int32 labels 0..9."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((rows, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=rows, dtype=np.int32)
    return x, y


def layers() -> list[Any]:
    """The article's layers: Flatten -> Dense(128, relu) -> Dense(10) (logits)."""
    import keras

    return [
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ]


def compile_model(model: Any) -> Any:
    """Compiles as the article does (Adam, sparse CE on logits, accuracy)."""
    import keras

    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def build_plain(seed: int) -> Any:
    """Variant A: a plain `keras.Sequential` after `keras.utils.set_random_seed`."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return compile_model(keras.Sequential(layers()))


def build_repro(seed: int) -> Any:
    """Variant B: a `keras_repro.DeterministicSequential`."""
    import keras

    import keras_repro as kr

    keras.backend.clear_session()
    return compile_model(kr.DeterministicSequential(layers(), seed=seed))


def fit_kwargs() -> dict[str, Any]:
    """The `fit` arguments both variants use."""
    return dict(
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        validation_split=VALIDATION_SPLIT,
        shuffle=True,
        verbose=0,
    )


def time_plain(x: Any, y: Any, seed: int) -> float:
    """Seconds of one variant-A `fit` (construction and compile excluded)."""
    model = build_plain(seed)
    gc.collect()
    start = time.perf_counter()
    model.fit(x, y, **fit_kwargs())
    return time.perf_counter() - start


def time_repro(x: Any, y: Any, seed: int, reference: str) -> float:
    """Seconds of one variant-B `fit`, recording fingerprints to `reference`."""
    import keras_repro as kr

    model = build_repro(seed)
    callback = kr.SeedCallback(seed, reference=reference, mode="record")
    gc.collect()
    start = time.perf_counter()
    model.fit(x, y, callbacks=[callback], **fit_kwargs())
    elapsed = time.perf_counter() - start
    if len(callback.log.epochs) != EPOCHS or not os.path.exists(reference):
        raise RuntimeError(f"SeedCallback recorded {len(callback.log.epochs)} epochs, expected {EPOCHS}")
    return elapsed


def measure(backend: str, repeats: int, rows: int) -> dict[str, Any]:
    """Warm-up, then `repeats` interleaved (A, B) fits; the timings and versions."""
    import keras

    if keras.backend.backend() != backend:
        raise RuntimeError(f"Expected the {backend} backend, Keras uses {keras.backend.backend()}")
    x, y = make_data(rows)
    plain: list[float] = []
    repro: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fit_overhead_") as folder:
        time_plain(x, y, SEED)
        time_repro(x, y, SEED, os.path.join(folder, "warmup.h5"))
        for repeat in range(repeats):
            plain.append(time_plain(x, y, SEED))
            repro.append(time_repro(x, y, SEED, os.path.join(folder, f"run_{repeat}.h5")))
    return {
        "backend": backend,
        "backend_version": _backend_version(backend),
        "keras": keras.__version__,
        "rows": rows,
        "repeats": repeats,
        "plain_s": plain,
        "repro_s": repro,
    }


def _backend_version(backend: str) -> str:
    """The installed version of the backend framework."""
    return str(getattr(__import__(backend), "__version__", "unknown"))


def run_child(backend: str, repeats: int, rows: int) -> None:
    """Child entry point: measures and prints one JSON result line."""
    result = measure(backend, repeats, rows)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# Parent side: one child per backend, then the table ------------------------------------


def child_command(backend: str, repeats: int, rows: int) -> list[str]:
    """The command line of the child that measures `backend`."""
    return [sys.executable, os.path.abspath(__file__), "--child", backend, "--repeats", str(repeats), "--rows", str(rows)]


def child_environment(backend: str) -> dict[str, str]:
    """The child's environment: the backend, quiet TF logs, fixed string hashing."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def run_backend(backend: str, repeats: int, rows: int) -> dict[str, Any]:
    """Runs one child and returns its result, or {"backend", "error"} if it failed."""
    try:
        completed = subprocess.run(
            child_command(backend, repeats, rows),
            env=child_environment(backend),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"backend": backend, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return {"backend": backend, "error": f"exit {completed.returncode}: {tail}"}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Adds medians, the ratio and the verdict to a child's result."""
    if "error" in result:
        return result
    plain = statistics.median(result["plain_s"])
    repro = statistics.median(result["repro_s"])
    ratio = repro / plain
    return {**result, "median_plain": plain, "median_repro": repro, "ratio": ratio, "passed": ratio <= TARGET_RATIO}


def header(argv: list[str]) -> list[str]:
    """Lines naming the machine, the versions and the command to reproduce."""
    try:
        keras_version = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        keras_version = "not installed"
    command = " ".join(shlex.quote(part) for part in ["python", "benchmarks/fit_overhead.py", *argv])
    return [
        f"fit overhead of keras_repro | machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()} | Keras {keras_version} | {load_average()} at start",
        f"reproduce: {command}",
    ]


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews timings)."""
    try:
        return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "load average unknown"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The plain-text result table."""
    titles = ("backend", "median A (s)", "median B (s)", "ratio", f"target <= {TARGET_RATIO:.2f}")
    lines = [" | ".join(titles)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['backend']} | - | - | - | ERROR: {row['error']}")
            continue
        verdict = "PASS" if row["passed"] else "FAIL"
        lines.append(
            f"{row['backend']} | {row['median_plain']:.3f} | {row['median_repro']:.3f} | {row['ratio']:.3f} | {verdict}"
        )
    return lines


def details(rows: list[dict[str, Any]]) -> list[str]:
    """Every timing, so the spread behind each median is visible."""
    lines = []
    for row in rows:
        if "error" in row:
            continue
        plain = ", ".join(f"{t:.3f}" for t in row["plain_s"])
        repro = ", ".join(f"{t:.3f}" for t in row["repro_s"])
        best = min(row["repro_s"]) / min(row["plain_s"])
        lines.append(
            f"  {row['backend']} {row['backend_version']} (Keras {row['keras']}, {row['rows']} rows, "
            f"{row['repeats']} repeats): A [{plain}]  B [{repro}]  ratio of minimums {best:.3f}"
        )
    return lines


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: tensorflow,jax,torch")
    parser.add_argument("--repeats", type=int, default=5, help="timed (A, B) pairs per backend (default 5)")
    parser.add_argument("--rows", type=int, default=12000, help="rows of synthetic data (default 12000)")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.repeats < 1 or arguments.rows < 10:
        parser.error("--repeats must be >= 1 and --rows >= 10")
    unknown = [b for b in arguments.backends.split(",") if b and b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Parent: runs every backend and prints the report. Child: measures one backend."""
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    if arguments.child:
        run_child(arguments.child, arguments.repeats, arguments.rows)
        return 0
    backends = [b for b in arguments.backends.split(",") if b]
    heading = header(argv)  # before the runs: the load average shows other work on the machine
    results = [summarize(run_backend(b, arguments.repeats, arguments.rows)) for b in backends]
    print("\n".join(heading + [""] + table(results) + ["", "timings (s):"] + details(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
