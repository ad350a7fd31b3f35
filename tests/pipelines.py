"""Input pipelines the tests share."""

from __future__ import annotations

import keras
import numpy as np


class ReshuffledRows(keras.utils.PyDataset):
    """Batches of (x, y) in an order NumPy's global RNG reshuffles at every epoch's end: the
    `PyDataset` keras_repro must replay to resume exactly."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.order = np.arange(len(x))

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        np.random.shuffle(self.order)
