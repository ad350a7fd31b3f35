"""`FingerprintLog`: a recorded run, as read from a fingerprint file or kept in memory."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from keras_repro._optional import require_pandas
from keras_repro.fingerprinting.compare import Comparison, compare_runs
from keras_repro.fingerprinting.digests import STAT_NAMES, Fingerprint
from keras_repro.store import hdf5 as store
from keras_repro.store import reader as store_reader


@dataclasses.dataclass(frozen=True)
class FingerprintLog:
    """The fingerprints of one training run.

    Attributes:
        initial: The state before the first step (`Fingerprint`), or None.
        epochs: One `Fingerprint` per finished epoch, in epoch order.
        environment: The environment manifest ({name: text}).
        seed: The seed of the run, or None.
        notes: Remarks recorded with the run, e.g. about nondeterministic inputs.
        path: The file it was read from, or None.
        created: When the file was written (ISO 8601, UTC).
        batches: Batch fingerprints (`SeedCallback(every_n_batches=...)`), in order.
        planned_epochs: One past the last epoch the recording fit planned (the
            `epochs` of `fit`, counted from epoch 0), or None when unknown (files of
            keras_repro 0.1). A fit stopped early by a callback plans no further.
        config: The configuration of the fit that recorded it ({key: text}, see
            `keras_repro.fingerprinting.configuration`), or None when not recorded (files written
            before keras_repro recorded it).

    Example:

    >>> log = load_fingerprints("run.h5")                 # doctest: +SKIP
    >>> log.epochs[-1].epoch, log.epochs[-1].digest[:12]  # doctest: +SKIP
    (4, '9b0c2e77d1a4')
    """

    initial: Fingerprint | None
    epochs: tuple[Fingerprint, ...]
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    path: str | None = None
    created: str | None = None
    batches: tuple[Fingerprint, ...] = ()
    planned_epochs: int | None = None
    config: Mapping[str, str] | None = None

    @property
    def first_epoch(self) -> int | None:
        """The epoch the recording started at (0, or k for a fit resumed at epoch k)."""
        if self.initial is not None:
            return self.initial.epoch
        return self.epochs[0].epoch if self.epochs else None

    @property
    def complete(self) -> bool:
        """Whether every planned epoch was recorded (False: the recording was interrupted).

        Example:

        >>> load_fingerprints("run.h5").complete   # doctest: +SKIP
        True
        """
        if self.planned_epochs is None:
            return True
        first = self.first_epoch or 0
        recorded = {fp.epoch for fp in self.epochs}
        return all(epoch in recorded for epoch in range(first, self.planned_epochs))

    def epoch(self, number: int) -> Fingerprint | None:
        """The fingerprint at the end of epoch `number`, or None."""
        for fingerprint in self.epochs:
            if fingerprint.epoch == number:
                return fingerprint
        return None

    def compare(self, other: FingerprintLog, rtol: float = 0.0, atol: float = 0.0) -> Comparison:
        """Compares `other` with this log, taken as the reference.

        Args:
            other: The run to check.
            rtol: Relative tolerance on each variable's float summaries. With the
                default 0 (and `atol` 0) the comparison is exact, bit for bit.
            atol: Absolute tolerance on the float summaries.

        Returns:
            A `Comparison`: `.identical`, `.verdict`, `.first_divergence` (the first
            batch when both runs kept batch fingerprints) and `.details`.

        Raises:
            TypeError: If `other` is not a `FingerprintLog`: for a file, pass
                `kr.load_fingerprints(path)`.

        Example:

        >>> load_fingerprints("a.h5").compare(load_fingerprints("b.h5")).identical  # doctest: +SKIP
        True
        """
        return compare_runs(self, other, rtol, atol)

    def save(self, path: str | os.PathLike) -> None:
        """Writes this log to `path` atomically."""
        store.write_run(
            path,
            seed=self.seed,
            environment=self.environment,
            initial=self.initial,
            epochs=list(self.epochs),
            notes=self.notes,
            created=self.created,
            batches=list(self.batches),
            planned_epochs=self.planned_epochs,
            config=self.config,
        )

    def to_dataframe(self, variables: bool = False) -> Any:
        """The run as a pandas DataFrame (needs pandas: the `[notebooks]` extra).

        Args:
            variables: False: one row per fingerprint (stage, epoch, digest, one
                column per part digest and per metric). True: one row per variable
                and fingerprint (stage, epoch, part, variable, digest and the float
                summaries `sum`, `l2`, `min`, `max`, `nan`, `inf`).

        Example:

        >>> load_fingerprints("run.h5").to_dataframe().columns[:3].tolist()  # doctest: +SKIP
        ['stage', 'epoch', 'digest']
        """
        pd = require_pandas("FingerprintLog.to_dataframe()")
        rows = []
        for stage, fingerprint in self._stages():
            if variables:
                for record in fingerprint.records:
                    row = {"stage": stage, "epoch": fingerprint.epoch, "part": record.part,
                           "variable": record.path, "digest": record.digest}
                    row.update(dict(zip(STAT_NAMES, record.stats or (float("nan"),) * len(STAT_NAMES))))
                    rows.append(row)
                continue
            row = {"stage": stage, "epoch": fingerprint.epoch, "digest": fingerprint.digest}
            row.update({f"digest_{part}": digest for part, digest in fingerprint.parts.items()})
            row.update(fingerprint.metrics)
            rows.append(row)
        return pd.DataFrame(rows)

    def _stages(self) -> list[tuple[str, Fingerprint]]:
        """(stage, fingerprint) for the initial state and every epoch."""
        stages = [("initial", self.initial)] if self.initial is not None else []
        return stages + [("epoch", fingerprint) for fingerprint in self.epochs]


def load_fingerprints(path: str | os.PathLike) -> FingerprintLog:
    """Reads a fingerprint file written by `SeedCallback` (or `FingerprintLog.save`).

    Args:
        path: The `.h5` file.

    Returns:
        A `FingerprintLog`.

    Raises:
        ReferenceFileError: If the file is missing, empty, truncated, corrupt, not
            HDF5, not a keras_repro file, or of a newer format version.

    Example:

    >>> log = load_fingerprints("run.h5")  # doctest: +SKIP
    >>> len(log.epochs)                    # doctest: +SKIP
    5
    """
    data = store_reader.read_run(path)
    return FingerprintLog(
        initial=data["initial"],
        epochs=tuple(data["epochs"]),
        environment=data["environment"],
        seed=data["seed"],
        notes=data["notes"],
        path=os.fspath(path),
        created=data["created"],
        batches=tuple(data["batches"]),
        planned_epochs=data["planned_epochs"],
        config=data["config"],
    )
