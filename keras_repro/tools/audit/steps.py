"""The data and the single run of `audit`, `bisect` and `preflight`: the first steps of an
input, replayed identically, and one fit of them with batch fingerprints."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from keras_repro import _backend
from keras_repro.arguments import positive_int
from keras_repro.callbacks import SeedCallback
from keras_repro.fit.context import callback_seed
from keras_repro.model import _is_arrays
from keras_repro.seeding import validate_seed
from keras_repro.store.log import FingerprintLog
from keras_repro.tools.child import map_leaves

RESERVED = ("x", "y", "epochs", "initial_epoch", "batch_size", "steps_per_epoch")
"""fit arguments the audit sets itself."""


class _Replay(keras.utils.PyDataset):
    """The same batches, in the same order, every time."""

    def __init__(self, batches: Sequence[tuple]) -> None:
        super().__init__()
        self._batches = list(batches)

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index: int) -> Any:
        batch = list(self._batches[index])
        while batch and batch[-1] is None:
            batch.pop()
        return tuple(batch)


@dataclasses.dataclass(frozen=True)
class Feed:
    """The data of every audit run: leading rows of arrays, or the first batches of an input.

    Attributes:
        kind: "arrays" (`parts` is (x, y, sample_weight)) or "batches" (`parts` is
            a tuple of (x, y, sample_weight) batches).
        parts: The data, as NumPy arrays.
        batch_size: Rows per batch (arrays only).
    """

    kind: str
    parts: tuple
    batch_size: int

    def fit(self, model: Any, callbacks: list, fit_kwargs: Mapping[str, Any]) -> None:
        """Trains `model` for one epoch on this data."""
        if self.kind == "arrays":
            x, y, sample_weight = self.parts
            model.fit(x, y, batch_size=self.batch_size, sample_weight=sample_weight, epochs=1,
                      callbacks=callbacks, **fit_kwargs)
        else:
            kwargs = {k: v for k, v in fit_kwargs.items() if k != "shuffle"}
            model.fit(_Replay(self.parts), epochs=1, shuffle=False, callbacks=callbacks, **kwargs)

    def batches(self) -> list[tuple]:
        """The data as a list of (x, y, sample_weight) batches, in order."""
        if self.kind == "batches":
            return [tuple(batch) + (None,) * (3 - len(batch)) for batch in self.parts]
        x, y, sample_weight = self.parts
        rows = len(keras.tree.flatten(x)[0])
        cut = lambda value, start: map_leaves(value, lambda a: a[start : start + self.batch_size])  # noqa: E731
        return [(cut(x, s), cut(y, s), cut(sample_weight, s)) for s in range(0, rows, self.batch_size)]


def prepare_feed(x: Any, y: Any, steps: int, batch_size: int, sample_weight: Any) -> Feed:
    """The data of `steps` steps: arrays cut to `steps * batch_size` rows, or the first batches."""
    if _is_arrays(x):
        rows = steps * batch_size
        cut = lambda value: map_leaves(value, lambda a: _backend.data_to_numpy(a)[:rows])  # noqa: E731
        parts = (cut(x), cut(y), cut(sample_weight))
        if not min((len(leaf) for leaf in keras.tree.flatten(parts[0])), default=0):
            raise ValueError(f"`x` has no rows to train on. Received: x with shape {getattr(x, 'shape', '?')}")
        return Feed("arrays", parts, batch_size)
    if y is not None or sample_weight is not None:
        raise ValueError(
            "When `x` is a dataset, generator or PyDataset it must yield the targets itself; pass "
            f"y=None and no sample_weight. Received: y={type(y).__name__}"
        )
    batches = tuple(
        tuple(map_leaves(part, _backend.data_to_numpy) for part in keras.utils.unpack_x_y_sample_weight(batch))
        for batch in _first_batches(x, steps)
    )
    if not batches:
        raise ValueError(f"`x` yielded no batches; pass an input with at least one batch. Received: x={x!r}")
    return Feed("batches", batches, batch_size)


def _first_batches(x: Any, steps: int) -> list:
    """The first `steps` batches of a dataset, PyDataset, generator or DataLoader."""
    if isinstance(x, keras.utils.PyDataset):
        count = steps if x.num_batches is None else min(steps, x.num_batches)
        return [x[i] for i in range(count)]
    try:
        iterator = iter(x)
    except TypeError:
        raise ValueError(
            "`x` must be arrays (NumPy arrays, tensors, or lists/dicts of them), a tf.data.Dataset, a "
            f"keras.utils.PyDataset, a torch DataLoader or a generator. Received: x of type {type(x).__name__}"
        ) from None
    return list(itertools.islice(iterator, steps))


# One run --------------------------------------------------------------------------


def check_positive(name: str, value: Any) -> int:
    """Returns `value` if it is a positive int, else raises a clear ValueError."""
    return positive_int(name, value)


def validate_options(batch_size: int, seed: int | None, steps: int | None = None) -> None:
    """Raises ValueError unless `batch_size` (and `steps`, if given) are positive ints and
    `seed` is None or in [0, 2**32 - 1]."""
    if steps is not None:
        check_positive("steps", steps)
    check_positive("batch_size", batch_size)
    if seed is not None:
        validate_seed(seed)


def split_fit_kwargs(fit_kwargs: Mapping[str, Any], function: str) -> tuple[dict, list]:
    """(fit arguments, user callbacks), after refusing those the audit sets itself."""
    reserved = sorted(set(fit_kwargs) & set(RESERVED))
    if reserved:
        raise ValueError(
            f"{function}() sets {', '.join(reserved)} itself; remove them from its keyword arguments. "
            f"Received: {', '.join(f'{k}={fit_kwargs[k]!r}' for k in reserved)}"
        )
    kwargs = dict(fit_kwargs)
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if any(isinstance(c, SeedCallback) for c in callbacks):
        raise ValueError(
            f"{function}() adds its own SeedCallback(seed, every_n_batches=1); remove yours from "
            "`callbacks` and pass its seed as seed=... Received: callbacks with a SeedCallback"
        )
    kwargs.setdefault("verbose", 0)
    return kwargs, callbacks


def _check_model(model: Any) -> None:
    """Raises a clear error unless build_model returned a compiled keras.Model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"build_model() must return a keras.Model. Received: {type(model).__name__}")
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "build_model() must return a compiled model (call model.compile(optimizer=..., loss=...) "
            f"before returning it). Received: model '{model.name}' without an optimizer"
        )


def run_once(build_model: Callable[[], Any], feed: Feed, seed: int | None, fit_kwargs: Mapping[str, Any],
              callbacks: Sequence[Any]) -> tuple[FingerprintLog, Any]:
    """Clears the session, builds, trains one epoch of `feed` with batch fingerprints."""
    keras.backend.clear_session()
    model = build_model()
    _check_model(model)
    callback = SeedCallback(callback_seed(model, seed), every_n_batches=1, log_key=None)
    feed.fit(model, [callback, *callbacks], fit_kwargs)
    return callback.log, model
