"""`BatchChecksums`: the batch fingerprints of a model, as checksums (`keras_repro.fingerprinting.checksums`)
computed where its variables live, in one compiled call per batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_repro import _backend
from keras_repro.fingerprinting.checksums import lanes_to_digest
from keras_repro.fingerprinting.digests import (
    PARTS,
    Fingerprint,
    VariableDigest,
    make_fingerprint,
)
from keras_repro.fingerprinting.variables import (
    array_shape,
    model_variables,
    seed_generator_paths,
    variable_path,
)


class BatchChecksums:
    """Computes a model's batch fingerprints, compiled once per fit.

    Args:
        model: A built Keras model whose optimizer is built (the variables checked are
            fixed when this object is made, as `fingerprints.model_variables` lists them).
        replica: Which copy of replicated variables to read.

    Example:

    >>> checks = BatchChecksums(model)                                   # doctest: +SKIP
    >>> pending = [checks.start() for _ in range(3)]                     # doctest: +SKIP
    >>> checks.fingerprint(checks.finish(pending)[2], epoch=0, batch=9).digest  # doctest: +SKIP
    '2b0f...'
    """

    def __init__(self, model: Any, replica: int = 0) -> None:
        variables = model_variables(model)
        paths = seed_generator_paths(model)
        self._templates: list[VariableDigest] = []
        counters: dict[str, int] = {}
        for part, variable in variables:
            index = counters.get(part, 0)
            counters[part] = index + 1
            path = paths.get(id(variable)) or variable_path(variable, f"{part}_{index}")
            dtype = np.dtype(str(variable.dtype)).name
            self._templates.append(VariableDigest(path, part, dtype, array_shape(variable), ""))
        # Rows in the order of a fingerprint's records (by part), so stored and computed
        # lanes compare as arrays.
        self._order = sorted(range(len(variables)), key=lambda i: PARTS.index(variables[i][0]))
        self._templates = [self._templates[i] for i in self._order]
        self._start, self._finish = _backend.deferred_checksums([variables[i][1] for i in self._order], replica, model)

    def start(self) -> Any:
        """Starts checksumming every variable's value now and returns at once with a pending
        result (on the device where the backend can): of the values now, whatever the
        variables hold later. Mid-epoch on JAX it reads the trainer's state."""
        return self._start()

    def finish(self, pending: list) -> np.ndarray:
        """The lanes of results `start` returned, brought to the host together: uint32 of
        shape (len(pending), variables, 2), rows in the order of a fingerprint's records."""
        return self._finish(pending)

    def compute(self) -> np.ndarray:
        """The lanes of every variable now, uint32 (variables, 2): `start` then `finish`."""
        return self._finish([self._start()])[0]

    def fingerprint(self, values: np.ndarray, epoch: int | None = None, batch: int | None = None) -> Fingerprint:
        """A batch `Fingerprint` from lanes that `compute` returned."""
        records = [
            VariableDigest(t.path, t.part, t.dtype, t.shape, lanes_to_digest(pair))
            for t, pair in zip(self._templates, values)
        ]
        return make_fingerprint(records, epoch, None, batch)


