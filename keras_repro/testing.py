"""Test helpers: assert that a model trains reproducibly, and a pytest fixture for it.

`assert_reproducible` builds and fits a model twice with the same seed and fails with
a readable report (epoch, part, variable) when the two runs differ.

To use the `reproducible` fixture, register this module as a pytest plugin in the
*root* `conftest.py` of your tests (pytest only honours `pytest_plugins` there):

    pytest_plugins = ["keras_repro.testing"]

or pass `-p keras_repro.testing` on the command line. Then:

    def test_training_is_reproducible(reproducible):
        reproducible(build_model, x, y, epochs=2, batch_size=32)

The module raises AssertionError itself, so pytest need not rewrite its asserts
(PYTEST_DONT_REWRITE): importing it before registering the plugin does not warn.

Example:

>>> from keras_repro.testing import assert_reproducible   # doctest: +SKIP
>>> assert_reproducible(build_model, x, y, epochs=2)       # doctest: +SKIP
Comparison(identical=True, ...)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from keras_repro.callbacks import SeedCallback
from keras_repro.compare import DIVERGED, Comparison
from keras_repro.fingerprints import part_differs

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
    seed: int = 7,
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
        seed: The seed of both fits (`SeedCallback(seed)`).
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

    Example:

    >>> def build_model():                                          # doctest: +SKIP
    ...     model = kr.DeterministicSequential([keras.Input((4,)), keras.layers.Dense(2)], seed=7)
    ...     model.compile(optimizer="adam", loss="mse")
    ...     return model
    >>> assert_reproducible(build_model, x, y, epochs=2).verdict  # doctest: +SKIP
    'identical'
    """
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
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive int. Received: epochs={epochs!r}")
    callbacks = list(fit_kwargs.pop("callbacks", None) or [])
    if any(isinstance(c, SeedCallback) for c in callbacks):
        raise ValueError(
            "assert_reproducible adds its own SeedCallback(seed); remove yours from `callbacks` "
            "and pass `seed=` instead."
        )
    fit_kwargs.setdefault("verbose", 0)
    first = _fit_once(build_model, x, y, epochs, seed, callbacks, fit_kwargs)
    second = _fit_once(build_model, x, y, epochs, seed, callbacks, fit_kwargs)
    comparison = first.compare(second, rtol=rtol, atol=atol)
    tolerant = bool(rtol or atol)
    if not (comparison.within_tolerance if tolerant else comparison.identical):
        raise AssertionError(divergence_report(comparison, seed))
    logger.info("assert_reproducible: %s", comparison)
    return comparison


def _fit_once(
    build_model: Callable[[], Any], x: Any, y: Any, epochs: int, seed: int, callbacks: list, fit_kwargs: dict
) -> Any:
    """Builds a model in a fresh Keras session, fits it with a SeedCallback; returns the log."""
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
    callback = SeedCallback(seed)
    model.fit(x, y, epochs=epochs, callbacks=callbacks + [callback], **fit_kwargs)
    return callback.log


def divergence_report(comparison: Comparison, seed: int | None = None) -> str:
    """A readable explanation of why two runs are not reproducible.

    Args:
        comparison: The `Comparison` of the second run with the first.
        seed: The seed both runs used, for the message, or None.

    Returns:
        Several lines: the verdict, where the runs first differ (epoch, part,
        variable), the diverged variables and a hint about the likely cause.

    Example:

    >>> print(divergence_report(first.compare(second), seed=7))  # doctest: +SKIP
    """
    seeded = f" with seed {seed}" if seed is not None else ""
    mode = (
        f"rtol={comparison.rtol:g}, atol={comparison.atol:g}" if comparison.rtol or comparison.atol else "exact"
    )
    found = comparison.first_divergence
    lines = [f"Training is not reproducible: two runs{seeded} differ ({mode} comparison).",
             f"Verdict: {comparison.verdict}"]
    if found is not None:
        lines += [f"First divergence: {found}",
                  f"  epoch:    {found.where()}",
                  f"  part:     {found.part} ({part_differs(found.part)})" if found.part else "  part:     -",
                  f"  variable: {found.variable or '-'}"]
    diverged = [d for d in comparison.details if d.status == DIVERGED]
    if diverged:
        lines.append(f"Diverged: {len(diverged)} of {len(comparison.details)} variable comparisons; first ones:")
        lines += [
            f"  {_when(d.stage, d.epoch):<9} {d.part:<13} {d.variable}  (relative difference {d.relative_difference:.3g})"
            for d in diverged[:MAX_LISTED]
        ]
    lines.append(f"Hint: {_hint(comparison)}")
    return "\n".join(lines)


def _when(stage: str, epoch: int | None) -> str:
    """ "start" for the initial state, else "epoch N"."""
    return "start" if stage == "initial" else f"epoch {epoch}"


def _hint(comparison: Comparison) -> str:
    """What to try, from where the runs first differ."""
    found = comparison.first_divergence
    if found is None:
        return "the runs have different epochs; fit both for the same number of epochs."
    if found.stage == "missing":
        return "one run has an epoch the other lacks; did a callback stop one run early?"
    if found.stage == "initial":
        return (
            "the models differ before the first step, so build_model() is not deterministic: "
            "call keras_repro.seed_everything(seed) at its start, or build a keras_repro.DeterministicModel."
        )
    if found.part == "data":
        return "the data order differs: pass arrays to a keras_repro.DeterministicModel, or seed the input pipeline."
    if found.part == "rng":
        return "layer RNG state differs: keep SeedCallback's reset_layer_rng=True and avoid unseeded random layers."
    return (
        "the weights drift during training: enable deterministic kernels "
        "(keras_repro.enable_determinism()), check the input pipeline, or pass rtol/atol "
        "to accept small floating-point differences."
    )


if pytest is not None:

    @pytest.fixture
    def reproducible() -> Iterator[Callable[..., Comparison]]:
        """Fixture: `assert_reproducible`, with the Keras session cleared afterwards.

        Register it with `pytest_plugins = ["keras_repro.testing"]` in the root conftest.py.

        Example:

        >>> def test_reproducible(reproducible):        # doctest: +SKIP
        ...     reproducible(build_model, x, y, epochs=2)
        """
        yield assert_reproducible
        import keras

        keras.backend.clear_session()
