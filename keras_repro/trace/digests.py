"""A layer trace's digests: each entry's checksum lanes (`keras_repro.fingerprinting.checksums`)
and float summaries, computed on the host from the arrays `trace_layers` hands over, step by step
(a step's arrays are checksummed in one `FlatLayout` pass).

Measured and left (docs/trace.md, "Cost"): computing them on a worker thread while the next
step trains is slower on a 2-core CPU (the GIL and the cores are shared with the step's own
dispatch), and so is TensorFlow computing the lanes in its graph without XLA; JAX computing
them in a jitted function is faster once compiled, but a trace covers a few steps, often in a
fresh process, and the compilation costs more than it saves there.
"""

from __future__ import annotations

import numpy as np

from keras_repro.fingerprinting import checksums
from keras_repro.trace.entries import STAT_NAMES, Trace


class EntryDigests:
    """Digests entries step by step (`add_step`) and assembles the `Trace` (`trace`)."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._layouts: dict[tuple[int, ...], checksums.FlatLayout] = {}  # every step has the same sizes

    def add_step(self, step: int, found: list) -> None:
        """Adds (kind, name, arrays, input arrays or None) entries of one step."""
        self._rows += self._digest(step, found)

    def trace(self, meta: dict, environment: dict) -> Trace:
        """The finished `Trace`."""
        step, kind, name, lanes, input_lanes, stats = zip(*self._rows) if self._rows else ([],) * 6
        return Trace(np.array(step, np.int64), tuple(kind), tuple(name), np.array(lanes, np.uint32).reshape(-1, 2),
                     np.array(input_lanes, np.uint32).reshape(-1, 2),
                     np.array(stats, np.float64).reshape(-1, len(STAT_NAMES)), dict(meta), dict(environment))

    def _digest(self, step: int, found: list) -> list[tuple]:
        """(step, kind, name, lanes, input lanes, stats) of each entry of one step, the lanes of
        all its arrays in one `FlatLayout` pass (each list of arrays once: a layer's input is
        mostly the output of the layer before it)."""
        pieces = [arrays for _, _, arrays, _ in found] + [inputs or [] for _, _, _, inputs in found]
        first: dict[tuple[int, ...], int] = {}
        unique: list[list] = []
        slots = []
        for piece in pieces:
            key = tuple(map(id, piece))
            if key not in first:
                first[key] = len(unique)
                unique.append(piece)
            slots.append(first[key])
        words = [_words(piece) for piece in unique]
        sizes = tuple(w.size for w in words)
        layout = self._layouts.get(sizes)
        if layout is None:
            layout = self._layouts[sizes] = checksums.FlatLayout(sizes)
        lanes = layout.lanes(words)[slots]
        none = np.zeros(2, np.uint32)
        return [(step, kind, name, lanes[index], lanes[len(found) + index] if inputs is not None else none,
                 stats(arrays)) for index, (kind, name, arrays, inputs) in enumerate(found)]


def _words(arrays: list) -> np.ndarray:
    """The checksum words of several arrays laid end to end."""
    if len(arrays) == 1:
        return checksums.words(arrays[0])
    if not arrays:
        return np.zeros(0, np.uint32)
    return np.concatenate([checksums.words(a) for a in arrays])


def stats(arrays: list) -> np.ndarray:
    """mean, largest absolute value and non-finite count of the arrays' values (NaN: none),
    in float64, in three reads of each array where every value is finite (the float64 sum is
    then finite too: only a non-finite sum has the values counted and the others summarised).

    Example:

    >>> stats([np.array([-3.0, 1.0, np.nan])]).tolist()
    [-1.0, 3.0, 1.0]
    """
    total, count, largest, bad = 0.0, 0, -np.inf, 0
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind == "V" and array.dtype.fields is None:  # ml_dtypes' floats (bfloat16, float8)
            try:
                array = array.astype(np.float32)
            except (TypeError, ValueError):
                continue
        if array.dtype.kind not in "biuf" or not array.size:
            continue
        summed = float(array.sum(dtype=np.float64))
        if array.dtype.kind == "f" and not np.isfinite(summed):
            finite = np.isfinite(array)
            bad += array.size - int(np.count_nonzero(finite))
            array = array[finite]
            if not array.size:
                continue
            summed = float(array.sum(dtype=np.float64))
        total += summed
        count += array.size
        largest = max(largest, abs(float(array.max())), abs(float(array.min())))
    if not count:
        return np.array([np.nan, np.nan, float(bad)])
    return np.array([total / count, largest, float(bad)])
