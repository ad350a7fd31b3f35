"""Overhead of batch-level fingerprints (`SeedCallback(every_n_batches=N)`).

What is measured
----------------
The MNIST-shaped MLP (Flatten -> Dense(128, relu) -> Dense(10), Adam, sparse
categorical cross-entropy on logits) on synthetic 28x28 float32 data generated
with NumPy from a fixed seed, `fit(epochs=2, batch_size=32, shuffle=True,
verbose=0)`, as a `kr.DeterministicSequential`, in three variants:

    none    no callback added by hand (the model adds its own SeedCallback, which
            fingerprints each epoch);
    every1  `SeedCallback(seed, every_n_batches=1)`: a 64-bit checksum of every
            variable after every batch, computed where the variables live in one
            compiled call (`keras_repro.fingerprinting.checksums`);
    every10 `SeedCallback(seed, every_n_batches=10)`;
    hook    a callback whose `on_train_batch_end` does nothing: the floor any
            batch-level check pays, since Keras then hands logs to Python every batch.

Runs are interleaved (none, every1, every10, none, ...) after one uncounted warm-up
of each; every fit gets a freshly built and compiled model and only `fit` is timed.
The warm-up fits are printed too: the first fit with batch checksums compiles the
checksum function (once per process and model layout).
The table shows medians and the ratio to `none`; the targets on CPU are every1 <= 1.25
and every10 <= 1.03 (issue 12; a full pass over every weight and optimizer slot per step is
the floor for every1).
The backend is the one Keras picks (KERAS_BACKEND). Always exits 0: it is a report.

Usage::

    python benchmarks/batch_fingerprint.py [--repeats 5] [--rows 8000] [--hidden 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_repro as kr  # noqa: E402

SEED = 7
TARGET = 1.25
TARGET_EVERY10 = 1.03
VARIANTS = {"none": None, "every1": 1, "every10": 10, "hook": 0}


class EmptyBatchHook(keras.callbacks.Callback):
    """Does nothing after each batch; measures what a batch hook alone costs."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        return None


def make_data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic MNIST-shaped data, the same on every call."""
    rng = np.random.default_rng(0)
    return rng.random((rows, 28, 28), dtype=np.float32), rng.integers(0, 10, rows).astype("int32")


def build(hidden: int = 128) -> keras.Model:
    """The compiled MLP."""
    model = kr.DeterministicSequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(10)],
        seed=SEED,
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def time_fit(every: int | None, x: np.ndarray, y: np.ndarray, hidden: int = 128) -> float:
    """Seconds spent in one fit of a fresh model."""
    keras.backend.clear_session()
    model = build(hidden)
    if every is None:
        callbacks = []
    elif every == 0:
        callbacks = [EmptyBatchHook()]
    else:
        callbacks = [kr.SeedCallback(SEED, every_n_batches=every)]
    start = time.perf_counter()
    model.fit(x, y, epochs=2, batch_size=32, shuffle=True, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (128: the MNIST-shaped MLP of the target)")
    args = parser.parse_args()
    x, y = make_data(args.rows)
    warmup = {name: time_fit(every, x, y, args.hidden) for name, every in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, every in VARIANTS.items():
            times[name].append(time_fit(every, x, y, args.hidden))
    base = statistics.median(times["none"])
    print(
        f"batch fingerprint overhead | {os.cpu_count()} cpu, {platform.platform()} | keras {keras.__version__}, "
        f"backend {keras.backend.backend()} | Dense({args.hidden}): {build(args.hidden).count_params():,} parameters | {args.rows} rows, {args.rows // 32 + 1} batches/epoch, 2 epochs, "
        f"{args.repeats} repeats"
    )
    print(f"reproduce: python benchmarks/batch_fingerprint.py --repeats {args.repeats} --rows {args.rows} --hidden {args.hidden}")
    print(f"{'variant':<8}  {'median fit (s)':>14}  {'ratio':>6}  target")
    for name in VARIANTS:
        median = statistics.median(times[name])
        verdict = ""
        if name in ("every1", "every10"):
            target = TARGET if name == "every1" else TARGET_EVERY10
            verdict = f"<= {target:.2f} {'PASS' if median / base <= target else 'FAIL'}"
        print(f"{name:<8}  {median:>14.3f}  {median / base:>6.3f}  {verdict}")
    print("first (warm-up) fit of each variant, s: " + ", ".join(f"{k} {v:.3f}" for k, v in warmup.items()))


if __name__ == "__main__":
    main()
