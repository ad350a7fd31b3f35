"""keras_repro's pytest plugin: the `reproducible` and `resumable` fixtures.

pytest finds it through the `pytest11` entry point that installing keras_repro declares, so
tests need no `-p` flag and no `pytest_plugins` line. It lives beside the package, not in it,
so that loading it imports nothing: `keras_repro` (and Keras with it) is imported only when a
test asks for one of the fixtures. `-p no:keras_repro` turns it off.

Example:

>>> def test_training_is_reproducible(reproducible):            # doctest: +SKIP
...     reproducible(build_model, x, y, epochs=2, batch_size=32)
>>> def test_training_resumes_exactly(resumable):               # doctest: +SKIP
...     resumable(build_model, x, y, epochs=4, at=2, batch_size=32)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


def _serve(name: str, function: str) -> Iterator[Callable[..., Any]]:
    """Yields `keras_repro.testing.<function>` to a test, then clears the Keras session."""
    from keras_repro import testing
    from keras_repro.tools import nesting

    nesting.refuse_nested(f"the {name} fixture")
    yield getattr(testing, function)
    import keras

    keras.backend.clear_session()


@pytest.fixture
def reproducible() -> Iterator[Callable[..., Any]]:
    """Fixture: `keras_repro.testing.assert_reproducible`, with the Keras session cleared
    afterwards.

    Example:

    >>> def test_reproducible(reproducible):        # doctest: +SKIP
    ...     reproducible(build_model, x, y, epochs=2)
    """
    yield from _serve("reproducible", "assert_reproducible")


@pytest.fixture
def resumable() -> Iterator[Callable[..., Any]]:
    """Fixture: `keras_repro.testing.assert_resumable`, with the Keras session cleared afterwards.

    Arrays, or a pipeline factory (a module-level function returning a new `tf.data.Dataset`,
    `PyDataset`, generator or Grain dataset, called once per run).

    Example:

    >>> def test_resumes(resumable):                # doctest: +SKIP
    ...     resumable(build_model, x, y, epochs=4, at=2)
    ...     resumable(build_model, make_dataset, epochs=4, at=2)
    """
    yield from _serve("resumable", "assert_resumable")
