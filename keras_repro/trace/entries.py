"""A layer trace's entries (`Trace`): what `trace_layers` records and trace files hold.
Keras-free, so that `keras-repro diff` reads traces without starting a backend."""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_repro.fingerprinting import checksums

KINDS = ("input", "output", "loss", "gradient", "variable")
"""What an entry records: a batch fed, a layer call's output, the loss, a gradient, a
variable (after the step's update; before the first step at step -1)."""

STAT_NAMES = ("mean", "abs_max", "non_finite")


@dataclasses.dataclass(frozen=True)
class Trace:
    """A layer trace: one row per entry, in execution order within each step.

    Attributes:
        step: int64 (entries,): the step of each entry (-1: the state before the first step).
        kind: Each entry's kind (one of `KINDS`).
        name: Each entry's name: "x" (a batch fed), a layer path ("encoder/dense_1"; "#2" for
            a layer's second call in a step), "loss", or a variable path ("d1/kernel").
        lanes: uint32 (entries, 2): the checksum lanes of the entry's arrays.
        input_lanes: uint32 (entries, 2): of a layer call's input tensors (zeros otherwise).
        stats: float64 (entries, 3): `STAT_NAMES` of the entry's values.
        meta: {name: text}: steps, batch_size, backend, step ("compiled" or "eager": how the
            step ran, as `fit` would run it), created, keras_repro_version.
        environment: The manifest of the process that traced (`fingerprinting.environment`).
    """

    step: np.ndarray
    kind: tuple[str, ...]
    name: tuple[str, ...]
    lanes: np.ndarray
    input_lanes: np.ndarray
    stats: np.ndarray
    meta: dict
    environment: dict

    @property
    def steps(self) -> int:
        """Training steps traced."""
        return int(self.step.max()) + 1 if self.step.size else 0

    def rows(self, step: int) -> np.ndarray:
        """Indices of the entries of `step`, in execution order."""
        return np.flatnonzero(self.step == step)

    def digest(self, index: int) -> str:
        """An entry's checksum as 16 hex digits."""
        return checksums.lanes_to_digest(self.lanes[index])


