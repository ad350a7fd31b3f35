"""Feeding arrays to `fit` in an order that is a pure function of (seed, epoch)."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.fingerprints import VariableDigest, data_record
from keras_repro.fit_context import EpochClock
from keras_repro.ordering import epoch_order


class EpochFeed:
    """The rows each epoch visits: `train_rows` permuted by `epoch_order(seed, epoch)`.

    Attributes:
        train_rows: Row indices (into the full arrays) used for training, sorted.
        validation_rows: Row indices held out for validation, sorted (maybe empty).
        seed: The run's seed.
        shuffle: As `fit(shuffle=...)`.
        batch_size: Rows per batch.
    """

    def __init__(self, train_rows: np.ndarray, validation_rows: np.ndarray, seed: int, shuffle: Any, batch_size: int) -> None:
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        self.validation_rows = np.asarray(validation_rows, dtype=np.int64)
        self.seed = seed
        self.shuffle = shuffle
        self.batch_size = batch_size

    def rows(self, epoch: int) -> np.ndarray:
        """Row indices in the order epoch `epoch` visits them."""
        return self.train_rows[epoch_order(len(self.train_rows), self.seed, epoch, self.shuffle, self.batch_size)]

    def records(self, epoch: int) -> list[VariableDigest]:
        """Fingerprint records of the epoch's order and of the validation split."""
        records = [data_record("order", self.rows(epoch))]
        if len(self.validation_rows):
            records.append(data_record("validation_split", self.validation_rows))
        return records


class OrderedBatches(keras.utils.PyDataset):
    """A backend-neutral `PyDataset` that visits rows in the feed's order for the epoch."""

    def __init__(self, data: tuple, feed: EpochFeed) -> None:
        super().__init__()
        self._data = data
        self._feed = feed
        self._rows = feed.rows(0)

    def set_epoch(self, epoch: int) -> None:
        """Switches to the order of `epoch` (called at each epoch start)."""
        self._rows = self._feed.rows(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self._rows) / self._feed.batch_size)

    def __getitem__(self, index: int) -> tuple:
        size = self._feed.batch_size
        rows = self._rows[index * size : (index + 1) * size]
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
    native = _backend.native_ordered_input(data, feed.rows, len(feed.train_rows), feed.batch_size)
    if native is not None:
        dataset, set_epoch = native
        return dataset, _EpochSetter(set_epoch, clock)
    batches = OrderedBatches(data, feed)
    return batches, _EpochSetter(batches.set_epoch, clock)
