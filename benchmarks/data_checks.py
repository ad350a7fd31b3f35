"""Overhead of data fingerprints (`SeedCallback(data_checks=True)`, the default).

What is measured
----------------
The MNIST-shaped MLP (Flatten -> Dense(128, relu) -> Dense(10), Adam, sparse
categorical cross-entropy on logits; `--model convnet`: keras-io's simple MNIST convnet,
two Conv2D + MaxPooling blocks, whose step costs several times the MLP's with the same input)
on synthetic 28x28 float32 data generated with NumPy from a fixed seed, `batch_size=32`,
`verbose=0`, in two input forms:

    arrays   `kr.DeterministicSequential` fed NumPy arrays (shuffle=True);
    tf.data  a plain `keras.Sequential` fed `Dataset.from_tensor_slices((x, y))
             .batch(32)`, a form whose content keras_repro saw nothing of before;

each with `kr.SeedCallback(seed, data_checks=False)` ("off") and with the default
`kr.SeedCallback(seed)` ("on": every batch's x and y checksummed inside the train
step, `keras_repro.fit.fed_data`). The target on CPU is at most 1.03x fit time (issue 17).

What the checks add to a fit is (a) work in every call of the train function (the
checksum inside the step, taking it out of the logs, bringing groups of them to the
host) and (b) work in `SeedCallback`'s hooks (installing the checked functions at the
fit's start, the records at each epoch's end); nothing else in the fit changes. A shared
2-core machine drifts by 5-10% from one second to the next and a single step's time
varies by 2x, so whole fits compared one against another cannot resolve 3%. Hence, per
input form, on one model:

1. Steps side by side (the main statistic). In one-epoch fits with the checks on, each
   call of the train function alternates between the checked function and the model's
   own (its plain train step put back for the call), in the order on, off, off, on, ...
   (so neither side always goes first), each call timed (on JAX until its results are
   ready: JAX returns before the step has run). The median of the pairs' differences
   (on - off), with a bootstrap 95% interval, is the cost of (a) per step, measured within
   a few milliseconds on both sides, so the machine's drift cancels. Fits with the checks
   off, alternating the model's own function with itself the same way, give the same
   statistic for two identical sides: the control, which should include 0.
2. The hooks: the seconds spent in `SeedCallback`'s hooks in each of those fits, on and
   off (median per fit), i.e. (b).
3. The estimate: fit time on / off = 1 + (steps * cost per step + hooks on - hooks off)
   / (plain one-epoch fit time), the last from step 4's fits with the checks off; with
   the interval of step 1's cost. For a fit of several epochs (b)'s per-fit part only
   shrinks.
4. Whole one-epoch fits of the same model, alternately on and off (`--rounds` pairs after
   two uncounted fits of each): the direct ratio, median and quartiles, for comparison.
5. With `--repeats N`: fresh models fitted for 3 epochs each, interleaved off / on, as
   before (medians, pairs' ratios, the fastest, the epochs after the first), which include
   each fit's one-off costs (JAX compiles the train function in the first step).

The backend is the one Keras picks (KERAS_BACKEND). Always exits 0: it is a report.

Usage::

    KERAS_BACKEND=jax python benchmarks/data_checks.py [--epochs 8] [--rounds 7] [--repeats 0] [--rows 12000] [--model mlp]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import keras_repro as kr

SEED = 7
TARGET = 1.03
EPOCHS = 3
BATCH_SIZE = 32
FORMS = ("arrays", "tf.data")


def make_data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic MNIST-shaped data, the same on every call."""
    rng = np.random.default_rng(0)
    return rng.random((rows, 28, 28), dtype=np.float32), rng.integers(0, 10, rows).astype("int32")


MODELS = ("mlp", "convnet")
model_name = "mlp"
"""The model `build` makes (`--model`)."""


def _layers(name: str) -> list:
    """The MNIST MLP, or keras-io's simple MNIST convnet (a step several times the MLP's on CPU)."""
    if name == "convnet":
        return [keras.Input((28, 28)), keras.layers.Reshape((28, 28, 1)),
                keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(), keras.layers.Dense(10)]
    return [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10)]


def build(form: str) -> keras.Model:
    """The compiled model (`model_name`): a DeterministicSequential for arrays, a plain Sequential
    for tf.data."""
    layers = _layers(model_name)
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


def fit_data(form: str, x: np.ndarray, y: np.ndarray) -> tuple[tuple, dict]:
    """The positional arguments and keywords of `fit` for an input form."""
    if form == "arrays":
        return (x, y), {"batch_size": BATCH_SIZE, "shuffle": True}
    import tensorflow as tf

    return (tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE),), {"shuffle": False}


def time_fit(form: str, checks: bool, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Seconds spent in one fit of a fresh model, and in its epochs after the first (the first
    holds one-off costs: building the train function, which JAX compiles, and installing the
    checks)."""
    keras.backend.clear_session()
    model = build(form)
    callback = kr.SeedCallback(SEED, data_checks=checks)
    data, kwargs = fit_data(form, x, y)
    clock = _AfterFirstEpoch()
    start = time.perf_counter()
    model.fit(*data, epochs=EPOCHS, verbose=0, callbacks=[callback, clock], **kwargs)
    end = time.perf_counter()
    _check_recorded(callback, checks)
    return end - start, end - clock.at


def _check_recorded(callback: kr.SeedCallback, checks: bool) -> None:
    """Raises unless the fit recorded the batches fed exactly when the checks were on."""
    fed = [r.path for r in callback.log.epochs[-1].part("data") if r.path.startswith("fed/")]
    if bool(fed) is not checks:
        raise RuntimeError(f"data_checks={checks} recorded {fed}")


def _wait(outputs: object) -> object:
    """The outputs of a train function once computed (JAX returns before its step has run)."""
    if keras.backend.backend() == "jax":
        import jax

        jax.block_until_ready(outputs)
    return outputs


class _Alternate(keras.callbacks.Callback):
    """Makes every call of the model's train function alternate between two (function, step)
    sides, on, off, off, on, ..., timing each: `pairs` holds (on, off) seconds. With the checks
    on, "on" is the checked function (which the `SeedCallback` installed at the fit's start) and
    "off" the model's own; with them off, both sides are the model's own (the control). Put it
    before the `SeedCallback`: it takes over at the first batch and gives the functions back at
    the fit's end, before the `SeedCallback` puts the model's own back."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[float, float]] = []
        self.calls = 0  # of the train function, paired or not (an odd last one is not)
        self.checked: bool | None = None  # whether the two sides differ (the checks were on)
        self._installed: tuple | None = None

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._installed is None:
            self._take_over()

    def _take_over(self) -> None:
        from keras_repro.fit import fed_data

        model = self.model
        own = self._installed = (model.train_function, model.__dict__.get("train_step", fed_data._MISSING))
        checked = getattr(model, fed_data.CACHE_ATTRIBUTE, None)
        if checked is not None and checked.installed:  # the checks are on: the model's own was kept aside
            sides = {"on": own, "off": (checked.saved["train_function"], checked.saved["train_step"])}
        else:
            sides = {"on": own, "off": own}
        self.checked = sides["on"] is not sides["off"]
        seconds = {}

        def alternating(*args: object) -> object:
            k = self.calls
            self.calls += 1
            first, second = ("on", "off") if (k // 2) % 2 == 0 else ("off", "on")
            side = first if k % 2 == 0 else second
            function, step = sides[side]
            fed_data._restore(model, "train_step", step)  # torch's function looks the step up at each call
            start = time.perf_counter()
            outputs = _wait(function(*args))
            seconds[side] = time.perf_counter() - start
            if k % 2:
                self.pairs.append((seconds["on"], seconds["off"]))
            return outputs

        model.train_function = alternating

    def on_train_end(self, logs: dict | None = None) -> None:
        from keras_repro.fit import fed_data

        function, step = self._installed
        self.model.train_function = function
        fed_data._restore(self.model, "train_step", step)


def _timed_hooks(callback: keras.callbacks.Callback) -> list[float]:
    """Has each of the callback's `on_*` hooks add its seconds to the returned one-item list."""
    spent = [0.0]
    for name in dir(callback):
        if name.startswith("on_") and callable(hook := getattr(callback, name)):
            def timed(*args: object, hook=hook, **kwargs: object) -> object:
                start = time.perf_counter()
                try:
                    return hook(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - start

            setattr(callback, name, timed)
    return spent


def _bootstrap_median(values: np.ndarray, resamples: int = 2000) -> tuple[float, float, float]:
    """The median of `values` and a percentile bootstrap 95% interval of it (fixed seed)."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(values, (resamples, values.size)), axis=1)
    return float(np.median(values)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def time_steps(form: str, x: np.ndarray, y: np.ndarray, epochs: int) -> dict:
    """Steps side by side (see the module's docstring): one model, `epochs` one-epoch fits with
    the checks on (checked and plain calls alternating) and as many with them off (plain and
    plain), after one uncounted fit of each. Returns the pairs' differences (on - off, seconds)
    of both, and the seconds in the `SeedCallback`'s hooks per fit, on and off."""
    keras.backend.clear_session()
    model = build(form)
    data, kwargs = fit_data(form, x, y)
    found: dict = {"on": [], "off": [], "hooks on": [], "hooks off": [], "steps": 0}
    for round_ in range(epochs + 1):
        for checks in (True, False):
            callback, alternate = kr.SeedCallback(SEED, data_checks=checks), _Alternate()
            spent = _timed_hooks(callback)
            model.fit(*data, epochs=1, verbose=0, callbacks=[alternate, callback], **kwargs)
            _check_recorded(callback, checks)
            if alternate.checked is not checks or not alternate.pairs:
                raise RuntimeError(f"data_checks={checks}: {len(alternate.pairs)} pairs, checked sides: {alternate.checked}")
            if round_:
                side = "on" if checks else "off"
                found[side] += [a - b for a, b in alternate.pairs]
                found[f"hooks {side}"].append(spent[0])
                found["steps"] = alternate.calls
    return found


def time_alternating(form: str, x: np.ndarray, y: np.ndarray, rounds: int) -> tuple[list[float], list[float]]:
    """One-epoch fits of one model, alternating (off, on, off, on, ...) after two uncounted fits
    of each: the ratios on / off, and the seconds of the fits with the checks off."""
    keras.backend.clear_session()
    model = build(form)
    data, kwargs = fit_data(form, x, y)

    def epoch(checks: bool) -> float:
        callback = kr.SeedCallback(SEED, data_checks=checks)
        start = time.perf_counter()
        model.fit(*data, epochs=1, verbose=0, callbacks=[callback], **kwargs)
        return time.perf_counter() - start

    for _ in range(2):
        epoch(False), epoch(True)
    ratios, plain = [], []
    for _ in range(rounds):
        off = epoch(False)
        ratios.append(epoch(True) / off)
        plain.append(off)
    return ratios, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="one-epoch fits each way, steps side by side")
    parser.add_argument("--rounds", type=int, default=7, help="pairs of alternating one-epoch fits (direct ratio)")
    parser.add_argument("--repeats", type=int, default=0, help="fresh 3-epoch fits each way (0: none)")
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated: arrays,tf.data")
    parser.add_argument("--model", choices=MODELS, default="mlp")
    args = parser.parse_args()
    global model_name
    model_name = args.model
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be at least 1 (the estimate needs both)")
    forms = [form for form in args.forms.split(",") if form]
    x, y = make_data(args.rows)
    steps = {form: time_steps(form, x, y, args.epochs) for form in forms}
    direct = {form: time_alternating(form, x, y, args.rounds) for form in forms}
    keys = [(form, checks) for form in forms for checks in (False, True)]
    warmup = {key: time_fit(*key, x, y) for key in keys} if args.repeats else {}
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {key: [] for key in warmup}
    for _ in range(args.repeats):
        for key in warmup:
            times[key].append(time_fit(*key, x, y))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"data checks overhead | {os.cpu_count()} cpu, {platform.platform()} | keras {keras.__version__}, backend "
        f"{keras.backend.backend()} | {args.model}, {args.rows} rows, {-(-args.rows // BATCH_SIZE)} batches/epoch | "
        f"load average {load} at the end"
    )
    print(f"reproduce: KERAS_BACKEND={keras.backend.backend()} python benchmarks/data_checks.py --epochs {args.epochs} "
          f"--rounds {args.rounds} --repeats {args.repeats} --rows {args.rows} --model {args.model}")
    print(f"\nsteps side by side ({args.epochs} one-epoch fits each way; us: median of pairs' differences on - off "
          f"[bootstrap 95%]; control: off - off)")
    print(f"{'input':<8}  {'pairs':>5}  {'step cost (us)':>22}  {'control (us)':>22}  {'hooks on-off (ms)':>17}  "
          f"{'plain epoch (s)':>15}  {'fit on / off':>22}  target")
    for form in forms:
        found = steps[form]
        cost, low, high = _bootstrap_median(np.array(found["on"]))
        control = _bootstrap_median(np.array(found["off"]))
        hooks = statistics.median(found["hooks on"]) - statistics.median(found["hooks off"])
        plain = statistics.median(direct[form][1])
        ratio, ratio_low, ratio_high = (1 + (found["steps"] * c + hooks) / plain for c in (cost, low, high))
        verdict = f"<= {TARGET:.2f} {'PASS' if ratio_high <= TARGET else 'FAIL' if ratio_low > TARGET else 'UNRESOLVED'}"
        print(f"{form:<8}  {len(found['on']):>5}  {_interval(cost, low, high):>22}  {_interval(*control):>22}  "
              f"{1e3 * hooks:>17.2f}  {plain:>15.3f}  {ratio:>6.3f} [{ratio_low:.3f}, {ratio_high:.3f}]  {verdict}")
    print(f"\nwhole one-epoch fits, alternately off and on ({args.rounds} pairs): ratio on / off, median (quartiles)")
    for form in forms:
        ratios = direct[form][0]
        print(f"{form:<8}  {statistics.median(ratios):.3f} ({np.percentile(ratios, 25):.3f} .. "
              f"{np.percentile(ratios, 75):.3f})")
    if not args.repeats:
        return
    print(f"\nfresh models, {EPOCHS} epochs, {args.repeats} interleaved fits each way")
    print(f"{'input':<8}  {'median off (s)':>14}  {'median on (s)':>13}  {'ratio':>6}  {'pairs':>6}  {'fastest':>7}  "
          f"{'later epochs':>12}")
    for form in forms:
        off, on = [t for t, _ in times[form, False]], [t for t, _ in times[form, True]]
        later = statistics.median([a / b for (_, a), (_, b) in zip(times[form, True], times[form, False])])
        print(f"{form:<8}  {statistics.median(off):>14.3f}  {statistics.median(on):>13.3f}  "
              f"{statistics.median(on) / statistics.median(off):>6.3f}  {statistics.median([a / b for a, b in zip(on, off)]):>6.3f}  "
              f"{min(on) / min(off):>7.3f}  {later:>12.3f}")
    print("first (warm-up) fit of each, s: " + ", ".join(f"{form} {'on' if checks else 'off'} {seconds:.3f}"
                                                         for (form, checks), (seconds, _) in warmup.items()))


def _interval(value: float, low: float, high: float) -> str:
    """Microseconds: "12.3 [-4.5, 20.1]"."""
    return f"{1e6 * value:.1f} [{1e6 * low:.1f}, {1e6 * high:.1f}]"


if __name__ == "__main__":
    main()
