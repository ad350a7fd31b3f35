"""Feeding arrays to `fit` in an order that is a pure function of (seed, epoch).

In a multi-process run (a Keras distribution over the devices of several JAX processes),
every process is given the same global arrays and `batch_size` is the global batch: every
process computes the same order and feeds its own part of each global batch, as Keras'
`auto_shard_dataset` cuts a `tf.data` pipeline (`process_share`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.fingerprinting.digests import VariableDigest, content_record, data_record
from keras_repro.fit.context import EpochClock
from keras_repro.fit.ordering import epoch_order


class EpochFeed:
    """The rows each epoch visits: `train_rows` permuted by `epoch_order(seed, epoch)`.

    Attributes:
        train_rows: Row indices (into the full arrays) used for training, sorted.
        validation_rows: Row indices held out for validation, sorted (maybe empty).
        seed: The run's seed.
        shuffle: As `fit(shuffle=...)`.
        batch_size: Rows per batch.
        content: The input arrays' content records (`content_records`), computed once per fit.
    """

    def __init__(
        self, train_rows: np.ndarray, validation_rows: np.ndarray, seed: int, shuffle: Any, batch_size: int,
        content: Sequence[VariableDigest] = (),
    ) -> None:
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        self.validation_rows = np.asarray(validation_rows, dtype=np.int64)
        self.seed = seed
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.content = tuple(content)

    def rows(self, epoch: int) -> np.ndarray:
        """Row indices in the order epoch `epoch` visits them."""
        return self.train_rows[epoch_order(len(self.train_rows), self.seed, epoch, self.shuffle, self.batch_size)]

    def records(self, epoch: int) -> list[VariableDigest]:
        """Fingerprint records of the inputs' content, the epoch's order and the validation split."""
        records = [*self.content, data_record("order", self.rows(epoch))]
        if len(self.validation_rows):
            records.append(data_record("validation_split", self.validation_rows))
        return records


def named_arrays(parts: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    """(name, array) for every array of the fit's inputs, named by their place: "x", "y",
    "sample_weight", "x/0" or "x/image" for the arrays of a list or dict."""
    named = []
    for name, value in parts.items():
        if isinstance(value, (list, tuple, dict)):
            named += [("/".join([name, *map(str, path)]), np.asarray(leaf)) for path, leaf in keras.tree.flatten_with_path(value)]
        else:
            named.append((name, np.asarray(value)))
    return named


def content_records(named: Sequence[tuple[str, np.ndarray]]) -> list[VariableDigest]:
    """The "data" part records of the arrays' content (`fingerprints.content_record`)."""
    return [content_record(name, array) for name, array in named]


class FixedOrder:
    """A feed of rows in their order, the same every epoch (validation rows)."""

    def __init__(self, count: int, batch_size: int) -> None:
        self.count, self.batch_size = count, batch_size

    def rows(self, epoch: int) -> np.ndarray:
        """All rows, in order, whatever the epoch."""
        return np.arange(self.count, dtype=np.int64)


def _distribution() -> Any:
    """The Keras distribution in effect, or None."""
    try:
        return keras.distribution.distribution()
    except (AttributeError, NotImplementedError):  # a backend without the distribution API
        return None


def process_share() -> tuple[int, int]:
    """(parts, index): this process feeds part `index` of each global batch cut into `parts`
    equal parts; (1, 0) without a multi-process Keras distribution. As Keras shards a
    `tf.data` pipeline: one part per process when each process holds whole model replicas
    (`DataParallel`), one per model replica when replicas span processes (`ModelParallel`:
    the processes of one replica feed the same rows)."""
    distribution = _distribution()
    processes = int(getattr(distribution, "num_processes", 1) or 1)
    if processes == 1:
        return 1, 0
    replicas = int(distribution.num_model_replicas)
    return min(processes, replicas), int(distribution.data_shard_id)


def check_share(rows: int, batch_size: int, parts: int, what: str = "training") -> None:
    """A clear error when some global batch cannot be cut into `parts` equal parts."""
    last = rows % batch_size
    if parts > 1 and (batch_size % parts or last % parts):
        raise ValueError(
            f"In this multi-process run every global batch is cut into {parts} equal parts, one per data "
            f"shard; the {rows} {what} rows in batches of {batch_size} give a batch of "
            f"{batch_size if batch_size % parts else last} rows. Choose a batch size, and a number of rows, "
            f"that are multiples of {parts}."
        )


@contextlib.contextmanager
def fed_by_process() -> Iterator[None]:
    """While a fit is fed its part of each batch by keras_repro: Keras' distribution must not
    shard the input again (its `auto_shard_dataset`, which refuses a `PyDataset`)."""
    distribution = _distribution()
    saved = getattr(distribution, "num_processes", 1) > 1 and getattr(distribution, "auto_shard_dataset", False)
    if saved:
        distribution.auto_shard_dataset = False
    try:
        yield
    finally:
        if saved:
            distribution.auto_shard_dataset = saved


class OrderedBatches(keras.utils.PyDataset):
    """A backend-neutral `PyDataset` that visits rows in the feed's order for the epoch;
    in a multi-process run, this process's part of each batch (`process_share`)."""

    def __init__(self, data: tuple, feed: EpochFeed | FixedOrder) -> None:
        super().__init__()
        self._data = data
        self._feed = feed
        self._rows = feed.rows(0)
        self._parts, self._part = process_share()

    def set_epoch(self, epoch: int) -> None:
        """Switches to the order of `epoch` (called at each epoch start)."""
        self._rows = self._feed.rows(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self._rows) / self._feed.batch_size)

    def __getitem__(self, index: int) -> tuple:
        size = self._feed.batch_size
        rows = self._rows[index * size : (index + 1) * size]
        if self._parts > 1:
            part = len(rows) // self._parts
            rows = rows[self._part * part : (self._part + 1) * part]
        return keras.tree.map_structure(lambda array: np.take(array, rows, axis=0), self._data)


class _EpochSetter(keras.callbacks.Callback):
    """Sets the input's order at each epoch start (Keras calls it before iterating), for
    the epoch as the fit's clock numbers it."""

    def __init__(self, set_epoch: Any, clock: EpochClock) -> None:
        super().__init__()
        self._set_epoch = set_epoch
        self._clock = clock

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._set_epoch(self._clock.epoch(epoch))


def ordered_input(data: tuple, feed: EpochFeed, clock: EpochClock) -> tuple[Any, keras.callbacks.Callback]:
    """The input to pass to `fit` and the callback that switches its order per epoch."""
    parts = process_share()[0]
    check_share(len(feed.train_rows), feed.batch_size, parts)
    native = _backend.native_ordered_input(data, feed.rows, len(feed.train_rows), feed.batch_size) if parts == 1 else None
    if native is not None:
        dataset, set_epoch = native
        return dataset, _EpochSetter(set_epoch, clock)
    batches = OrderedBatches(data, feed)
    return batches, _EpochSetter(batches.set_epoch, clock)


def process_validation(data: Any, batch_size: int) -> Any:
    """Validation arrays as this process's part of each batch, in a multi-process run
    (`data` unchanged otherwise, or when it is no tuple of arrays)."""
    parts = process_share()[0]
    if parts == 1 or not isinstance(data, tuple) or not all(hasattr(a, "shape") for a in keras.tree.flatten(data)):
        return data
    rows = int(keras.tree.flatten(data)[0].shape[0])
    check_share(rows, batch_size, parts, "validation")
    return OrderedBatches(data, FixedOrder(rows, batch_size))
