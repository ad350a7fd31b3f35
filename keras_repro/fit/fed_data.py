"""Data fingerprints by content: the checksum of every batch a fit feeds, whatever the input.

Keras builds the input pipeline inside `fit`, before any callback runs, from arrays, a
`tf.data.Dataset`, a `PyDataset`, a generator or a Grain dataset; keras_repro orders only
arrays. What every form has in common is the train step: Keras calls `make_train_function()`
before `on_train_begin`, and its loop reads `model.train_function` at every step. So, at the
start of a fit, `DataChecks` has Keras build the train and test functions anew around the
model's own step (the bound method, whatever class defines it), wrapped to also return the
checksum of each array of its batch (x, y and sample_weight, each leaf of a nested structure:
"x", "x/0", "x/image", "y", "sample_weight"), computed inside the compiled step where the batch
lives (`keras_repro._backend.step_lanes`: the 64-bit checksum of `keras_repro.fingerprinting.checksums`).
A thin Python function around the built function takes that value out of the logs (so
progress bars, `History` and `CSVLogger` never see it) and keeps it on the device; values come
to the host in groups. The numbers trained are untouched: the checksum only reads the batch.
At the end of the fit the model's own functions are put back (kept aside with the wrapped
ones, so the next fit of the same model, unless it was compiled again, does not trace again).

What is recorded (records of the fingerprint's "data" part):

* `fed/<leaf>` at every epoch end: SHA-256 of the sequence of that leaf's batch checksums,
  in the order the batches were fed (a uint32 array of shape (batches, 2));
* `validated/<leaf>` likewise for the batches of the epoch's validation, when it ran;
* `fed/<leaf>` in every batch fingerprint (`every_n_batches`): the checksum of the batch
  checksums fed so far in the epoch (`checksums.running_lanes`), so a batch fingerprint
  covers every batch before it, not only its own.

A verify then names the input before any weight: the data part is compared first. Where the
step cannot hand each batch's checksum over (a TensorFlow step that runs several batches per
call or on several replicas, a step that returns no dict of logs, Flax NNX), the fit warns
once naming it, and the reference records a note: no silent gap.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.errors import ReproWarning, warn
from keras_repro.fingerprinting.checksums import lanes_to_digest, running_lanes
from keras_repro.fingerprinting.digests import FED_PREFIX, VALIDATED_PREFIX, VariableDigest, hash_array

logger = logging.getLogger(__name__)

KEY = "_keras_repro_fed"
"""The reserved key under which a wrapped step returns its batch's checksums."""

CACHE_ATTRIBUTE = "_keras_repro_fed_functions"
"""Set on a model: its wrapped functions, kept for its next fit (`_Functions`)."""

FETCH_GROUP = 64
"""Batch checksums left on the device before they are brought to the host together."""

KINDS = {"train": FED_PREFIX, "test": VALIDATED_PREFIX}
_MISSING = object()


def named_leaves(data: Any) -> list[tuple[str, Any]]:
    """(name, array) for every array of a batch as Keras hands it to a step: "x", "y",
    "sample_weight", or "x/0", "x/image"... for the arrays of a list or dict.

    Example:

    >>> [name for name, _ in named_leaves(({"a": 1, "b": 2}, 3))]
    ['x/a', 'x/b', 'y']
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    named = []
    for name, part in (("x", x), ("y", y), ("sample_weight", sample_weight)):
        if part is None:
            continue
        for path, leaf in keras.tree.flatten_with_path(part):
            if leaf is not None:
                named.append(("/".join([name, *map(str, path)]), leaf))
    return named


class _Hand:
    """Between the wrapped functions (cached on the model) and the `DataChecks` of the fit in
    progress: the leaf names each step saw when traced, and where its checksums go."""

    def __init__(self) -> None:
        self.names: dict[str, tuple[str, ...]] = {}
        self.errors: dict[str, str] = {}
        self.sinks: dict[str, Callable[[Any], None] | None] = {}

    def lanes_of(self, kind: str, data: Any) -> Any:
        """The lanes of a batch's arrays (inside the step), or None where they cannot be had (an
        array of a kind the checksum does not cover): training goes on, the gap is reported."""
        try:
            named = named_leaves(data)
            lanes = _backend.step_lanes([leaf for _, leaf in named])
        except Exception as error:  # noqa: BLE001 - never break the user's step
            self.errors[kind] = f"{type(error).__name__}: {error}"
            return None
        self.names[kind] = tuple(name for name, _ in named)
        return lanes

    def take(self, kind: str, lanes: Any) -> None:
        sink = self.sinks.get(kind)
        if sink is not None:
            sink(lanes)


@dataclasses.dataclass
class _Functions:
    """A model's wrapped steps and functions, and the Keras train function they were built
    after (a compile makes Keras build a new one: then they are built again)."""

    keras_train_function: Any
    hand: _Hand
    steps: dict[str, Callable]
    functions: dict[str, Callable]
    saved: dict[str, Any] = dataclasses.field(default_factory=dict)  # while installed

    @property
    def installed(self) -> bool:
        return bool(self.saved)


def _build(model: Any) -> _Functions:
    """Wraps the model's train and test steps and has Keras build its functions around them,
    leaving the model's attributes as they were."""
    hand = _Hand()
    saved = {name: model.__dict__.get(name, _MISSING) for name in ("train_step", "test_step")}
    keras_functions = {kind: getattr(model, f"{kind}_function") for kind in KINDS}
    steps, functions = {}, {}
    try:
        for kind in KINDS:
            original = getattr(model, f"{kind}_step")  # bound: a subclass's override too
            steps[kind] = _backend.wrap_step(original, KEY, lambda data, kind=kind: hand.lanes_of(kind, data))
            setattr(model, f"{kind}_step", steps[kind])
            functions[kind] = _backend.build_with_lanes(model, kind, KEY, lambda lanes, kind=kind: hand.take(kind, lanes))
    finally:
        for name, value in saved.items():
            _restore(model, name, value)
        for kind, function in keras_functions.items():
            setattr(model, f"{kind}_function", function)
    return _Functions(keras_functions["train"], hand, steps, functions)


def _restore(model: Any, name: str, value: Any) -> None:
    """Puts an instance attribute back as it was (`_MISSING`: none)."""
    if value is _MISSING:
        if name in model.__dict__:
            delattr(model, name)
    else:
        setattr(model, name, value)


def install(model: Any, sinks: dict[str, Callable[[Any], None]]) -> _Functions:
    """Has the model's train and test functions hand each batch's checksums to `sinks`
    ({"train": ..., "test": ...}) until `uninstall`."""
    cached = getattr(model, CACHE_ATTRIBUTE, None)
    if cached is not None and cached.installed:  # a fit that raised: its functions were left
        uninstall(model, cached)
    if cached is None or cached.keras_train_function is not model.train_function:
        cached = _build(model)
        setattr(model, CACHE_ATTRIBUTE, cached)
    for kind in KINDS:
        for name, value in ((f"{kind}_step", cached.steps[kind]), (f"{kind}_function", cached.functions[kind])):
            cached.saved[name] = model.__dict__.get(name, _MISSING) if name.endswith("_step") else getattr(model, name)
            setattr(model, name, value)  # torch's function looks the step up at every call
    cached.hand.sinks.update(sinks)
    return cached


def uninstall(model: Any, functions: _Functions) -> None:
    """Puts the model's own steps and functions back (a function Keras or the user replaced in
    the meantime is left as it is)."""
    functions.hand.sinks.clear()
    saved, functions.saved = functions.saved, {}
    for name, value in saved.items():
        current = model.__dict__.get(name, _MISSING)
        ours = functions.steps.get(name[: -len("_step")]) if name.endswith("_step") else functions.functions.get(name[: -len("_function")])
        if current is ours:
            _restore(model, name, value)


class DataChecks:
    """The checksums of the batches one fit feeds and validates on, and their records.

    Args:
        model: The model being fit.
        enabled: False for an object that checks nothing and records nothing.

    Example:

    >>> checks = DataChecks.started(model)                       # doctest: +SKIP
    >>> checks.epoch_begin(0); model.fit(...)                    # (SeedCallback does this)
    >>> [r.path for r in checks.records(0)]                      # doctest: +SKIP
    ['fed/x', 'fed/y', 'validated/x', 'validated/y']
    """

    def __init__(self, model: Any, enabled: bool = True) -> None:
        self._model = model
        self.enabled = enabled
        self._functions: _Functions | None = None
        self.notes: dict[str, str] = {}
        self._epoch: int | None = None
        self._pending: dict[str, list] = {kind: [] for kind in KINDS}
        self._rows: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
        self._running: list[np.ndarray] = []  # per training batch: running lanes (leaves, 2)
        self._unchecked: set[str] = set()

    @classmethod
    def started(cls, model: Any, enabled: bool = True) -> DataChecks:
        """A `DataChecks` of `model`, started (when enabled)."""
        checks = cls(model, enabled)
        if enabled:
            checks.start()
        return checks

    def start(self) -> None:
        """Wraps the model's functions for this fit (or warns why it cannot)."""
        gap = _backend.data_checks_gap(self._model)
        if gap is None and not callable(getattr(self._model, "make_train_function", None)):
            gap = "the model has no Keras train function"
        if gap is not None:
            self._gap(f"{gap}, so the batches it feeds are not checksummed")
            return
        try:
            self._functions = install(self._model, {kind: self._sink(kind) for kind in KINDS})
        except Exception as error:  # noqa: BLE001 - training must go on; the gap is reported
            logger.debug("data checks could not wrap the train step", exc_info=True)
            self._gap(f"its train step could not be wrapped ({type(error).__name__}: {error})")

    def stop(self) -> None:
        """Puts the model's own functions back."""
        if self._functions is not None:
            uninstall(self._model, self._functions)
            self._functions = None

    def epoch_begin(self, epoch: int) -> None:
        """Starts the checksums of `epoch` (those of the epoch before are dropped)."""
        self._epoch = epoch
        for kind in KINDS:
            self._pending[kind].clear()
            self._rows[kind].clear()
        self._running = []

    def _sink(self, kind: str) -> Callable[[Any], None]:
        def sink(lanes: Any) -> None:
            if lanes is None:
                self._unchecked_step(kind)
                return
            pending = self._pending[kind]
            pending.append(lanes)
            if len(pending) > FETCH_GROUP:  # all but the newest: the host never waits for a step
                self._fetch(kind, len(pending) - 1)

        return sink

    def _fetch(self, kind: str, count: int | None = None) -> None:
        """Brings the first `count` pending checksums (all by default) to the host."""
        pending = self._pending[kind]
        count = len(pending) if count is None else count
        if not count:
            return
        group, pending[:count] = pending[:count], []
        rows = list(_backend.lanes_to_host(group))
        if kind == "train":
            self._extend_running(rows)
        self._rows[kind].extend(rows)

    def _extend_running(self, rows: list[np.ndarray]) -> None:
        """The running lanes after each new training batch, leaf by leaf."""
        if not rows or any(row.shape != rows[0].shape for row in rows) or (
                self._running and self._running[-1].shape != rows[0].shape):
            self._running += [None] * len(rows)  # the batch's structure changed: no running lanes
            return
        stacked = np.stack(rows)  # (batches, leaves, 2)
        done = len(self._running)
        before = self._running[-1] if self._running else None
        columns = [running_lanes(stacked[:, leaf, :].reshape(-1), 2 * done, None if before is None else before[leaf])[1::2]
                   for leaf in range(stacked.shape[1])]
        self._running += list(np.stack(columns, axis=1)) if columns else [np.zeros((0, 2), np.uint32)] * len(rows)

    def names(self, kind: str, count: int) -> tuple[str, ...]:
        """The names of a step's `count` leaves (as its last trace saw them)."""
        names = self._functions.hand.names.get(kind, ()) if self._functions is not None else ()
        return names if len(names) == count else tuple(f"leaf{index}" for index in range(count))

    def running(self, epoch: int, batch: int) -> list[VariableDigest]:
        """The `fed/<leaf>` records of a batch fingerprint after `batch` of `epoch`: the checksum
        of every batch fed in the epoch up to it; [] where unknown."""
        self._fetch("train")
        if epoch != self._epoch or batch >= len(self._running) or self._running[batch] is None:
            return []
        lanes = self._running[batch]
        return [VariableDigest(FED_PREFIX + name, "data", "uint32", (batch + 1, 2), lanes_to_digest(pair))
                for name, pair in zip(self.names("train", len(lanes)), lanes)]

    def records(self, epoch: int) -> list[VariableDigest]:
        """The `fed/<leaf>` and `validated/<leaf>` records of `epoch` (at its end): [] for an
        epoch whose batches were not checksummed."""
        records: list[VariableDigest] = []
        for kind, prefix in KINDS.items():
            self._fetch(kind)
            rows = self._rows[kind]
            if epoch != self._epoch or not rows:
                continue
            if any(row.shape != rows[0].shape for row in rows):  # a leaf came or went mid-epoch: one record
                columns = [np.concatenate([row, np.full((1, 2), len(row), np.uint32)]) for row in rows]
                named = [("batches", np.concatenate(columns))]
            else:
                stacked = np.stack(rows)  # (batches, leaves, 2)
                named = list(zip(self.names(kind, stacked.shape[1]), np.moveaxis(stacked, 1, 0)))
            for name, column in named:
                column = np.ascontiguousarray(column)
                path, shape = prefix + name, tuple(int(d) for d in column.shape)
                digest = hash_array(column, f"data\0{path}\0uint32\0{shape}\0".encode())
                records.append(VariableDigest(path, "data", "uint32", shape, digest))
        return records

    def _unchecked_step(self, kind: str) -> None:
        """A step returned no checksum: warns once per kind, and notes it."""
        if kind in self._unchecked:
            return
        self._unchecked.add(kind)
        what = "training" if kind == "train" else "validation"
        error = self._functions.hand.errors.get(kind) if self._functions is not None else None
        why = (f"its {what} batches could not be checksummed ({error})" if error else
               f"its {kind}_step returned no batch checksum (a {kind}_step whose logs are not a dict, or a trainer "
               f"that calls the class's {kind}_step directly, such as Flax NNX), so its {what} batches are not checksummed")
        self._gap(why, key=f"data_checks.{kind}")

    def _gap(self, why: str, key: str = "data_checks") -> None:
        """Warns that batches go unchecked, and notes it for the reference."""
        self.notes[key] = why
        warn(f"SeedCallback cannot fingerprint the data this fit feeds: {why}. The data part holds what "
             "keras_repro orders (arrays given to a kr.DeterministicModel); a mismatch is still found in "
             "the weights, but not named at the data.", ReproWarning)
