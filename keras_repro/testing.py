"""Test helpers: assert that a model trains reproducibly and resumes exactly, and pytest
fixtures for both.

`assert_reproducible` builds and fits a model twice with the same seed and fails with
a readable report (epoch, part, variable, likely cause) when the two runs differ.
`assert_resumable` trains straight, then stops, saves, loads the checkpoint in a fresh
process and trains the rest, and fails the same way when the resumed run differs. Its input is
arrays or a pipeline factory (a function returning a new `tf.data.Dataset`, `PyDataset`,
generator or Grain dataset, called once per run: `keras_repro.tools.resume_inputs`).

The `reproducible` and `resumable` fixtures come with the install: pytest loads keras_repro's
plugin (`keras_repro_pytest`, a `pytest11` entry point) by itself. Then:

    def test_training_is_reproducible(reproducible):
        reproducible(build_model, x, y, epochs=2, batch_size=32)

    def test_training_resumes_exactly(resumable):
        resumable(build_model, x, y, epochs=4, at=2, batch_size=32)

    def test_pipeline_resumes_exactly(resumable):
        resumable(build_model, make_dataset, epochs=4, at=2)   # make_dataset() -> a new tf.data.Dataset

    def test_training_resumes_inside_an_epoch(resumable):      # after batch 7 of epoch 1, zero-based
        resumable(build_model, x, y, epochs=3, at=(1, 7), batch_size=32)

The module raises AssertionError itself, so pytest need not rewrite its asserts
(PYTEST_DONT_REWRITE): importing it before registering the plugin does not warn.

Example:

>>> from keras_repro.testing import assert_reproducible   # doctest: +SKIP
>>> assert_reproducible(build_model, x, y, epochs=2)       # doctest: +SKIP
Comparison(identical=True, ...)
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from keras_repro.arguments import positive_int
from keras_repro.callbacks import SeedCallback
from keras_repro.fingerprinting.compare import DIVERGED, Comparison
from keras_repro.fingerprinting.diagnosis import likely_cause
from keras_repro.fingerprinting.digests import part_differs
from keras_repro.fit.context import callback_seed
from keras_repro.store.log import FingerprintLog
from keras_repro.tools import child, nesting, resume_inputs, resume_midepoch

try:  # the fixture needs pytest; the assertion does not
    import pytest
except ImportError:  # pragma: no cover - pytest is a test dependency
    pytest = None

logger = logging.getLogger(__name__)

MAX_LISTED = 10
"""How many diverged variables the failure report lists."""


def assert_reproducible(
    build_model: Callable[[], Any],
    x: Any,
    y: Any = None,
    *,
    epochs: int = 2,
    seed: int | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
    **fit_kwargs: Any,
) -> Comparison:
    """Fits a freshly built model twice with the same seed; fails if the runs differ.

    Each run calls `keras.backend.clear_session()`, then `build_model()`, then
    `fit(x, y, epochs=epochs, callbacks=[SeedCallback(seed)], **fit_kwargs)`; the
    fingerprints are kept in memory (no file is written). The second run is compared
    with the first: bit for bit by default, or within `rtol`/`atol` when given.

    `build_model` must itself be deterministic: seed inside it
    (`keras_repro.seed_everything(seed)` before creating layers) or build a
    `keras_repro.DeterministicModel`; otherwise the two runs start from different
    weights and the report says so.

    Args:
        build_model: A callable with no arguments returning a compiled Keras model.
        x: The training inputs, as for `fit`.
        y: The training targets, as for `fit`, or None.
        epochs: The number of epochs of each fit.
        seed: The seed of every fit (`SeedCallback(seed)`): None (default) takes a
            `DeterministicModel`'s own seed, and 7 for another model.
        rtol: Relative tolerance on each variable's float summaries (0: exact).
        atol: Absolute tolerance on the float summaries (0: exact).
        **fit_kwargs: More arguments of `fit` (`batch_size`, `shuffle`,
            `validation_split`, `callbacks`...); `verbose` defaults to 0.

    Returns:
        The `Comparison` of the second run with the first.

    Raises:
        AssertionError: If the runs differ (beyond the tolerance, when given), with
            the first divergence (epoch, part, variable), the verdict and a hint.
        TypeError: If `build_model` is not callable or returns something without `fit`.
        ValueError: If `fit_kwargs` already holds a `SeedCallback`, or `epochs` < 1.
        MissingMainGuardError: If called inside a fresh process of keras_repro (a module
            that runs it at import, without `if __name__ == "__main__":`).

    Example:

    >>> def build_model():                                          # doctest: +SKIP
    ...     model = kr.DeterministicSequential([keras.Input((4,)), keras.layers.Dense(2)], seed=7)
    ...     model.compile(optimizer="adam", loss="mse")
    ...     return model
    >>> assert_reproducible(build_model, x, y, epochs=2).verdict  # doctest: +SKIP
    'identical'
    """
    nesting.refuse_nested("assert_reproducible()")
    callbacks = _check_arguments(build_model, epochs, fit_kwargs)
    first, deterministic = _fit_once(build_model, x, y, epochs, seed, callbacks, fit_kwargs)
    second, _ = _fit_once(build_model, x, y, epochs, seed, callbacks, fit_kwargs)
    comparison = first.compare(second, rtol=rtol, atol=atol)
    tolerant = bool(rtol or atol)
    if not (comparison.within_tolerance if tolerant else comparison.identical):
        raise AssertionError(divergence_report(comparison, first.seed, deterministic, runs=(first, second)))
    logger.info("assert_reproducible: %s", comparison)
    return comparison


def _fit_once(
    build_model: Callable[[], Any], x: Any, y: Any, epochs: int, seed: int, callbacks: list, fit_kwargs: dict,
    save_to: str | None = None,
) -> tuple[FingerprintLog, bool]:
    """Builds a model in a fresh Keras session, fits it with a SeedCallback (and saves it to
    `save_to`); returns the log and whether the model is a DeterministicModel. `x` is arrays
    or a `RunInputs` (whose pipelines are made after the model, as a script makes them)."""
    import keras

    keras.backend.clear_session()
    model = build_model()
    if not hasattr(model, "fit"):
        raise TypeError(
            "`build_model()` must return a compiled Keras model. "
            f"Received: {type(model).__name__}"
        )
    if getattr(model, "compiled", True) is False:
        raise ValueError("`build_model()` returned a model that is not compiled; call model.compile(...) in it.")
    callback = _seed_callback(model, seed)
    x, y, fit_kwargs = _run_inputs(x, y, fit_kwargs)
    model.fit(x, y, epochs=epochs, callbacks=callbacks + [callback], **fit_kwargs)
    if save_to is not None:
        model.save(save_to)
    return callback.log, getattr(model, "_repro_seed", None) is not None


def _seed_callback(model: Any, seed: int | None) -> SeedCallback:
    """The SeedCallback of one fit (`keras_repro.fit.context.callback_seed`)."""
    return SeedCallback(callback_seed(model, seed))


def _check_arguments(build_model: Any, epochs: Any, fit_kwargs: dict) -> list:
    """Validates the common arguments; returns the user's callbacks (without a SeedCallback)."""
    if not callable(build_model):
        raise TypeError(
            "`build_model` must be a callable with no arguments that returns a compiled model "
            f"(e.g. a function). Received: {type(build_model).__name__}"
        )
    if hasattr(build_model, "fit"):
        raise TypeError(
            "`build_model` must be a function that builds and compiles a new model, not a model: "
            "each run needs a fresh one. Pass e.g. `lambda: make_model()`."
        )
    positive_int("epochs", epochs)
    callbacks = list(fit_kwargs.pop("callbacks", None) or [])
    if any(isinstance(c, SeedCallback) for c in callbacks):
        raise ValueError(
            "keras_repro.testing adds its own SeedCallback(seed); remove yours from `callbacks` "
            "and pass `seed=` instead."
        )
    fit_kwargs.setdefault("verbose", 0)
    return callbacks


def assert_resumable(
    build_model: Callable[[], Any],
    x: Any,
    y: Any = None,
    *,
    epochs: int = 4,
    at: int = 2,
    seed: int | None = None,
    fresh_process: bool = True,
    **fit_kwargs: Any,
) -> Comparison:
    """Trains straight, and stopped + saved + loaded + resumed; fails if the two differ.

    The straight run fits `epochs` epochs. The resumed run fits `at` epochs, saves the
    model (`model.save`, a `.keras` file), loads it with `keras.models.load_model` in a
    fresh Python process (another `PYTHONHASHSEED`; with `fresh_process=False`, in this
    one) and fits `fit(initial_epoch=at, epochs=epochs)`. Every fit has a
    `SeedCallback(seed)`. The resumed epochs must be bit-identical to the straight
    run's (the batches fed, weights, optimizer and RNG state), and its state before epoch
    `at` to the straight run's state after epoch `at - 1`.

    The training input is arrays (`x`, `y`), or a *pipeline factory*: a function with no
    arguments that returns a new `tf.data.Dataset`, `keras.utils.PyDataset`, generator or
    Grain dataset (then `y` is None). It is called once per run, right after the run builds
    or loads its model, so that each run iterates its own pipeline from its start, as a
    training script does in each process. `validation_data` may be arrays or a factory too.
    keras_repro resumes a `tf.data` shuffle with a seed (reshuffled each iteration) and a
    `PyDataset` that reshuffles in `on_epoch_end` exactly (`DeterministicModel`); an input
    it cannot resume (a generator: it cannot be advanced without producing its batches; a
    shuffle without a seed) fails the check before any training, naming the form and why,
    and so does a resumed fit that warns it cannot see the straight run's batches.

    For the fresh process, `build_model` and the factories must be defined at module level
    in an importable module or script (their module is imported there, which registers custom
    layers), arrays are sent as they are and the fit arguments must be picklable.

    Args:
        build_model: A callable with no arguments returning a compiled Keras model.
        x: The training inputs: arrays, or a pipeline factory.
        y: The training targets with arrays, or None.
        epochs: The epochs of the straight run.
        at: The epoch the run is stopped after and resumed at (1 <= at < epochs), or a
            point inside an epoch, `(epoch, batch)`, both zero-based (0 <= epoch < epochs;
            for arrays, batch before the epoch's last batch): the resumed run then fits with
            `keras.callbacks.BackupAndRestore(folder, save_freq=1)`, is stopped by an
            exception raised after batch `batch` of epoch `epoch`, and is restarted (a new
            model from `build_model`, in a fresh process or this one) with the same folder,
            which resumes at batch `batch + 1` (`keras_repro.fit.midepoch`); its epochs from
            `epoch` on must equal the straight run's.
        seed: The seed of every fit (`SeedCallback(seed)`): None (default) takes a
            `DeterministicModel`'s own seed, and 7 for another model.
        fresh_process: Load and resume in a fresh process (default) or in this one.
        **fit_kwargs: More arguments of `fit` (`batch_size`, `shuffle`,
            `validation_split`, `validation_data`, `callbacks`...); `verbose` defaults to 0.

    Returns:
        The `Comparison` of the resumed run with the straight one.

    Raises:
        AssertionError: If the resumed run differs, with the first divergence (epoch,
            part, variable) and its likely cause; or if the input cannot be resumed exactly,
            naming its form and why.
        TypeError, ValueError: For bad arguments (a pipeline object instead of a factory,
            `y` with a factory, a factory a fresh process cannot import, `at` out of range,
            or a mid-epoch `at` whose batch the fit never reaches).
        MissingMainGuardError: If called inside a fresh process of keras_repro: `build_model`'s
            module calls it at import, without `if __name__ == "__main__":` (raised in the
            fresh process, which imports that module, and again here, in its parent).
        ReproError: If the fresh process fails.

    Example:

    >>> assert_resumable(build_model, x, y, epochs=4, at=2, batch_size=32).identical   # doctest: +SKIP
    True
    >>> def make_dataset():                                                          # doctest: +SKIP
    ...     return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512, seed=3).batch(32)
    >>> assert_resumable(build_model, make_dataset, epochs=4, at=2).identical         # doctest: +SKIP
    True
    >>> assert_resumable(build_model, x, y, epochs=3, at=(1, 7), batch_size=32).identical  # doctest: +SKIP
    True
    """
    nesting.refuse_nested("assert_resumable()")
    callbacks = _check_arguments(build_model, epochs, fit_kwargs)
    batches = resume_inputs.batches_per_epoch(x, fit_kwargs) if isinstance(at, (tuple, list)) else None
    point = resume_inputs.resume_point(at, epochs, batches)
    inputs = resume_inputs.RunInputs.of(x, y, fit_kwargs, fresh_process)
    straight, deterministic = _fit_once(build_model, inputs, None, epochs, seed, callbacks, fit_kwargs)
    with tempfile.TemporaryDirectory(prefix="keras-repro-resume-") as folder:
        payload: dict[str, Any] = {"epochs": epochs, "at": point.epoch, "seed": seed}
        if point.mid_epoch:
            payload["backup"] = os.path.join(folder, "backup")
            _interrupted_fit(build_model, inputs, point, payload, callbacks, fit_kwargs)
        else:
            payload["checkpoint"] = os.path.join(folder, "checkpoint.keras")
            _fit_once(build_model, inputs, None, point.epoch, seed, callbacks, fit_kwargs, save_to=payload["checkpoint"])
        if fresh_process:
            fit_blob, reason = child.pickled((fit_kwargs, callbacks), "fit arguments")
            if fit_blob is None:
                raise ValueError(f"assert_resumable: {reason}; pass fresh_process=False")
            payload.update(target=child.locate(build_model)[0], fit=fit_blob, factories=inputs.targets())
            resumed = child.run("keras_repro.testing:_resume_task", payload, inputs.arrays, "assert_resumable")
        else:
            resumed = _resume(payload, inputs, fit_kwargs, callbacks, build_model)
    fresh = "in a fresh process " if fresh_process else ""
    if point.mid_epoch:
        where = (f"interrupted after batch {point.batch} of epoch {point.epoch} and restarted {fresh}from its "
                 "BackupAndRestore backup")
        warned = resumed.notes.get("input_resume") or resume_midepoch.not_exact(resumed.notes)
    else:
        where = f"stopped after epoch {point.epoch - 1}, saved, loaded {fresh}and resumed"
        warned = resumed.notes.get("input_resume")
    comparison = straight.compare(resumed)
    if warned:
        raise AssertionError(
            f"Training cannot resume exactly: {where}, the fit warned that it cannot see the batches "
            f"epoch {point.epoch} of the straight run saw: {warned}. (Comparison: {comparison.verdict}.)"
        )
    if not comparison.identical:
        raise AssertionError(divergence_report(
            comparison, straight.seed, deterministic, runs=(straight, resumed),
            title=f"Training does not resume exactly: {where}, it differs from a straight run "
                  f"(training input: {inputs.form()})",
        ))
    logger.info("assert_resumable: %s", comparison)
    return comparison


def _interrupted_fit(build_model: Callable[[], Any], inputs: resume_inputs.RunInputs, point: resume_inputs.ResumePoint,
                     payload: Mapping[str, Any], callbacks: list, fit_kwargs: dict) -> None:
    """The first part of a mid-epoch resumed run: fit with a backup after every batch, stopped
    by an exception after batch `point.batch` of epoch `point.epoch`."""
    import keras

    keras.backend.clear_session()
    model = build_model()
    callback = _seed_callback(model, payload["seed"])
    x, y, kwargs = _run_inputs(inputs, None, fit_kwargs)
    resume_midepoch.fit(model, x, y, payload["epochs"], payload["backup"], callbacks, callback, kwargs,
                        stop=(point.epoch, point.batch))


def _run_inputs(inputs: Any, y: Any, fit_kwargs: dict) -> tuple[Any, Any, dict]:
    """(x, y, fit arguments) of one run: `inputs` a `RunInputs` (its factories called now, and
    what they return refused if it cannot be resumed), or arrays with `y`."""
    if not isinstance(inputs, resume_inputs.RunInputs):
        return inputs, y, fit_kwargs
    x, y, kwargs = inputs.make(fit_kwargs)
    problems = resume_inputs.unresumable(x, kwargs.get("validation_data")) if inputs.factories else []
    if problems:
        raise AssertionError(
            f"Training cannot resume exactly: {'; '.join(problems)}. A fit resumed at a later epoch "
            "would not see the batches the straight run saw there (keras_repro.fit.input_resume)."
        )
    return x, y, kwargs


def _resume(payload: Mapping[str, Any], inputs: resume_inputs.RunInputs, fit_kwargs: dict, callbacks: list,
            build_model: Callable[[], Any] | None = None) -> FingerprintLog:
    """Loads the checkpoint and fits the remaining epochs (on a new pipeline), or, mid-epoch,
    builds a new model and restarts the interrupted fit from its backup; returns the log."""
    import keras

    if payload.get("backup"):
        return resume_midepoch.restart(build_model, lambda: _run_inputs(inputs, None, fit_kwargs), payload, callbacks,
                                       lambda model: _seed_callback(model, payload["seed"]))
    keras.backend.clear_session()
    model = keras.models.load_model(payload["checkpoint"])
    callback = _seed_callback(model, payload["seed"])
    x, y, kwargs = _run_inputs(inputs, None, fit_kwargs)
    model.fit(x, y, epochs=payload["epochs"], initial_epoch=payload["at"], callbacks=callbacks + [callback], **kwargs)
    return callback.log


def _resume_task(payload: Mapping[str, Any], arrays: Any) -> FingerprintLog:
    """The fresh process of `assert_resumable`: imports build_model's module (custom layers)
    and the factories, then resumes."""
    build_model = child.load_target(payload["target"]) if payload.get("target") is not None else None
    factories = resume_inputs.factories_from(payload.get("factories") or {})
    fit_kwargs, callbacks = pickle.loads(payload["fit"])
    x, y = arrays
    inputs = resume_inputs.RunInputs(None if "x" in factories else x, y, factories)
    return _resume(payload, inputs, fit_kwargs, callbacks, build_model)


def divergence_report(
    comparison: Comparison, seed: int | None = None, deterministic_model: bool = True, title: str | None = None,
    runs: tuple[FingerprintLog, FingerprintLog] | None = None,
) -> str:
    """A readable explanation of why two runs are not reproducible.

    Args:
        comparison: The `Comparison` of the second run with the first.
        seed: The seed both runs used, for the message, or None.
        deterministic_model: Whether the model is a `DeterministicModel`, for the hint.
        title: The first line (default: "Training is not reproducible: ...").
        runs: The two runs compared (reference first), whose configurations and
            fingerprints the likely cause is named from (`keras_repro.fingerprinting.diagnosis`).

    Returns:
        Several lines: the verdict, where the runs first differ (epoch, part,
        variable), the diverged variables and the likely cause.

    Example:

    >>> print(divergence_report(first.compare(second), seed=7))  # doctest: +SKIP
    """
    seeded = f" with seed {seed}" if seed is not None else ""
    mode = (
        f"rtol={comparison.rtol:g}, atol={comparison.atol:g}" if comparison.rtol or comparison.atol else "exact"
    )
    found = comparison.first_divergence
    lines = [f"{title or f'Training is not reproducible: two runs{seeded} differ'} ({mode} comparison).",
             f"Verdict: {comparison.status}; {comparison.verdict} ({comparison.explanation})"]
    if found is not None:
        lines += [f"First divergence: {found}",
                  f"  epoch:    {found.where()}",
                  f"  part:     {found.part} ({part_differs(found.part, found.variable)})" if found.part else "  part:     -",
                  f"  variable: {found.variable or '-'}"]
    diverged = [d for d in comparison.details if d.status == DIVERGED]
    if diverged:
        lines.append(f"Diverged: {len(diverged)} of {len(comparison.details)} variable comparisons; first ones:")
        lines += [
            f"  {_when(d.stage, d.epoch):<9} {d.part:<13} {d.variable}  (relative difference {d.relative_difference:.3g})"
            for d in diverged[:MAX_LISTED]
        ]
    if found is None:
        lines.append("Likely cause: the runs have different epochs; fit both for the same number of epochs.")
    else:
        lines.append(f"Likely cause: {likely_cause(found, *(runs or ()), deterministic_model=deterministic_model)}.")
    return "\n".join(lines)


def _when(stage: str, epoch: int | None) -> str:
    """ "start" for the initial state, else "epoch N"."""
    return "start" if stage == "initial" else f"epoch {epoch}"


if pytest is not None:  # `-p keras_repro.testing` and `pytest_plugins` still register the fixtures
    from keras_repro_pytest import reproducible, resumable  # noqa: F401
