"""Overhead of data fingerprints (`SeedCallback(data_checks=True)`, the default).

What is measured
----------------
The MNIST-shaped MLP (Flatten -> Dense(128, relu) -> Dense(10), Adam, sparse
categorical cross-entropy on logits) on synthetic 28x28 float32 data generated
with NumPy from a fixed seed, `fit(epochs=3, batch_size=32, verbose=0)`, in two
input forms:

    arrays   `kr.DeterministicSequential` fed NumPy arrays (shuffle=True), the form
             the fit overhead benchmark measures;
    tf.data  a plain `keras.Sequential` fed `Dataset.from_tensor_slices((x, y))
             .batch(32)`, a form whose content keras_repro saw nothing of before;

each with `kr.SeedCallback(seed, data_checks=False)` ("off") and with the default
`kr.SeedCallback(seed)` ("on": every batch's x and y checksummed inside the train
step, `keras_repro.fit.fed_data`). Fits are interleaved (off, on, off, on, ...) after
one uncounted warm-up of each; every fit gets a freshly built and compiled model and
only `fit` is timed. The table shows medians, the ratio on / off of the medians, the
median of the ratios of each interleaved pair (on_i / off_i: it holds when the machine's
speed drifts during the run, as a shared 2-core machine's does by up to 2x) and the ratio
of the fastest fits, and "later epochs": the median of the pairs' ratios of the time after the
first epoch, without the one-off costs of a fit (JAX compiles the train function in the first
step: about a quarter of these short fits, and the checksums make it a little longer); the
target on CPU is at most 1.03 (issue 17). Then, per input form, one model fitted one epoch at a
time, alternately with and without the checks (`--rounds` pairs after two uncounted fits of
each): the median and quartiles of the pairs' ratios, the statistic least moved by the
machine's drift and by one-off costs. The backend is the one
Keras picks (KERAS_BACKEND). Always exits 0: it is a report.

Usage::

    KERAS_BACKEND=jax python benchmarks/data_checks.py [--repeats 7] [--rows 12000] [--rounds 15]
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
TARGET = 1.03
EPOCHS = 3
BATCH_SIZE = 32
FORMS = ("arrays", "tf.data")


def make_data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic MNIST-shaped data, the same on every call."""
    rng = np.random.default_rng(0)
    return rng.random((rows, 28, 28), dtype=np.float32), rng.integers(0, 10, rows).astype("int32")


def build(form: str) -> keras.Model:
    """The compiled MLP: a DeterministicSequential for arrays, a plain Sequential for tf.data."""
    layers = [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
              keras.layers.Dense(10)]
    if form == "arrays":
        model = kr.DeterministicSequential(layers, seed=SEED)
    else:
        keras.utils.set_random_seed(SEED)
        model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _AfterFirstEpoch(keras.callbacks.Callback):
    """Notes when the first epoch ended (after every callback's end of it: put it last)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            self.at = time.perf_counter()


def time_fit(form: str, checks: bool, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Seconds spent in one fit of a fresh model, and in its epochs after the first (the first
    holds one-off costs: building the train function, which JAX compiles, and installing the
    checks)."""
    keras.backend.clear_session()
    model = build(form)
    callback = kr.SeedCallback(SEED, data_checks=checks)
    if form == "arrays":
        data, kwargs = (x, y), {"batch_size": BATCH_SIZE, "shuffle": True}
    else:
        import tensorflow as tf

        data, kwargs = (tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE),), {"shuffle": False}
    clock = _AfterFirstEpoch()
    start = time.perf_counter()
    model.fit(*data, epochs=EPOCHS, verbose=0, callbacks=[callback, clock], **kwargs)
    end = time.perf_counter()
    fed = [r.path for r in callback.log.epochs[-1].part("data") if r.path.startswith("fed/")]
    if bool(fed) is not checks:
        raise RuntimeError(f"data_checks={checks} recorded {fed}")
    return end - start, end - clock.at


def time_alternating(form: str, x: np.ndarray, y: np.ndarray, rounds: int) -> list[float]:
    """Ratios on / off of one-epoch fits of one model, alternating (off, on, off, on, ...) after
    two uncounted fits of each: no fit's one-off costs (both train functions are built and
    compiled once), and a drift in the machine's speed reaches both sides of each pair."""
    keras.backend.clear_session()
    model = build(form)
    if form == "arrays":
        data, kwargs = (x, y), {"batch_size": BATCH_SIZE, "shuffle": True}
    else:
        import tensorflow as tf

        data, kwargs = (tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE),), {"shuffle": False}

    def epoch(checks: bool) -> float:
        callback = kr.SeedCallback(SEED, data_checks=checks)
        start = time.perf_counter()
        model.fit(*data, epochs=1, verbose=0, callbacks=[callback], **kwargs)
        return time.perf_counter() - start

    for _ in range(2):
        epoch(False), epoch(True)
    return [epoch(True) / epoch(False) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated: arrays,tf.data")
    parser.add_argument("--rounds", type=int, default=15, help="pairs of alternating one-epoch fits of one model")
    args = parser.parse_args()
    forms = [form for form in args.forms.split(",") if form]
    x, y = make_data(args.rows)
    keys = [(form, checks) for form in forms for checks in (False, True)]
    warmup = {key: time_fit(*key, x, y) for key in keys} if args.repeats else {}  # --repeats 0: alternating only
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {key: [] for key in warmup}
    for _ in range(args.repeats):
        for key in warmup:
            times[key].append(time_fit(*key, x, y))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"data checks overhead | {os.cpu_count()} cpu, {platform.platform()} | keras {keras.__version__}, backend "
        f"{keras.backend.backend()} | {args.rows} rows, {args.rows // BATCH_SIZE + 1} batches/epoch, {EPOCHS} epochs, "
        f"{args.repeats} repeats | load average {load} at the end"
    )
    print(f"reproduce: KERAS_BACKEND={keras.backend.backend()} python benchmarks/data_checks.py --repeats {args.repeats} "
          f"--rows {args.rows} --rounds {args.rounds}")
    print(f"{'input':<8}  {'median off (s)':>14}  {'median on (s)':>13}  {'ratio':>6}  {'pairs':>6}  {'fastest':>7}  "
          f"{'later epochs':>12}  target")
    for form in forms if args.repeats else []:
        off, on = [t for t, _ in times[form, False]], [t for t, _ in times[form, True]]
        later = statistics.median([a / b for (_, a), (_, b) in zip(times[form, True], times[form, False])])
        ratio = statistics.median(on) / statistics.median(off)
        pairs = statistics.median([a / b for a, b in zip(on, off)])
        verdict = f"<= {TARGET:.2f} {'PASS' if ratio <= TARGET else 'FAIL'}"
        print(f"{form:<8}  {statistics.median(off):>14.3f}  {statistics.median(on):>13.3f}  {ratio:>6.3f}  {pairs:>6.3f}  "
              f"{min(on) / min(off):>7.3f}  {later:>12.3f}  {verdict}")
    for form in forms:
        ratios = time_alternating(form, x, y, args.rounds)
        print(f"{form:<8}  one model, {args.rounds} pairs of alternating one-epoch fits: on / off median "
              f"{statistics.median(ratios):.3f} (quartiles {np.percentile(ratios, 25):.3f} .. {np.percentile(ratios, 75):.3f})")
    print("first (warm-up) fit of each, s: " + ", ".join(f"{form} {'on' if checks else 'off'} {seconds:.3f}"
                                                         for (form, checks), (seconds, _) in warmup.items()))


if __name__ == "__main__":
    main()
