"""Batch fingerprints during a fit (`SeedCallback(every_n_batches=N)`): when each batch's
state is checksummed, how the results come to the host, and how they are verified.

A batch's checksum is started where the variables live and left there: results come to the
host in groups of `fetch_every` (and at every epoch end), one synchronization for the group
instead of one per batch, and are then verified in order. A divergence is named at its own
batch, though found up to `fetch_every` checks after it happened.

When: `capture="end"` checksums the state in `on_train_batch_end`, which makes Keras run
every batch-end hook synchronously. `capture="begin"` checksums the state after batch b when
batch b + 1 begins (Keras calls batch-begin hooks on the fit's thread, before the step), and
the epoch's last batch at its end; the callback can then let Keras run batch-end hooks on a
thread, overlapping the next steps (JAX gains most). The two record the same checksums,
except that "begin" sees, in the epoch's last batch, any change made by a callback listed
before the SeedCallback in its `on_epoch_end`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_repro import _backend
from keras_repro.fingerprinting.batch_checksums import BatchChecksums
from keras_repro.fingerprinting.checksums import digest_to_lanes, expected_lanes
from keras_repro.fingerprinting.compare import Divergence, compare_fingerprints
from keras_repro.fingerprinting.digests import Fingerprint, VariableDigest, fingerprint
from keras_repro.store.log import FingerprintLog

CAPTURES = ("auto", "end", "begin")


def resolve_capture(capture: str) -> str:
    """`capture`, validated; "auto" is "begin" where the backend gains from asynchronous
    batch hooks (JAX), else "end"."""
    if capture not in CAPTURES:
        raise ValueError(f"`capture` must be one of {CAPTURES}. Received: capture={capture!r}")
    if capture == "auto":
        return "begin" if _backend.async_batch_hooks_help() else "end"
    return capture


class BatchChecker:
    """The batch fingerprints of one fit.

    Args:
        every: Check the state after every `every`-th batch.
        fetch_every: Bring pending checksums to the host when this many are pending.
        capture: "end" or "begin" (see the module docstring).
        report: Called with each divergence found (it raises or warns).
        data: Gives the data records of the batch fingerprint after (epoch, batch): the batches
            fed so far (`keras_repro.fit.fed_data.DataChecks.running`), or None for none.
    """

    def __init__(self, every: int, fetch_every: int, capture: str, report: Callable[[Divergence], None],
                 data: Callable[[int, int], list[VariableDigest]] | None = None) -> None:
        self.every, self.fetch_every, self.capture, self._report = every, fetch_every, capture, report
        self._data = data
        self._checksums: BatchChecksums | None = None
        self._pending: list[tuple[int, int, Any]] = []
        self._fetched: list[tuple[int, int, np.ndarray, list[VariableDigest]]] = []  # not yet in _fingerprints
        self._fingerprints: list[Fingerprint] = []
        self._expected: dict[tuple[int, int], Fingerprint] = {}
        self._expected_lanes: dict[tuple[int, int], np.ndarray] = {}
        self._sha256 = False
        self._last_batch: int | None = None
        self._last_batch_lock = threading.Lock()

    def expect(self, log: FingerprintLog) -> None:
        """Verifies against the batch fingerprints of a reference."""
        self._expected = {(fp.epoch, fp.batch): fp for fp in log.batches}
        self._expected_lanes = {key: expected_lanes(fp) for key, fp in self._expected.items()}
        # A reference recorded before batch checksums holds SHA-256 batch fingerprints.
        self._sha256 = any(lanes is None for lanes in self._expected_lanes.values())

    @property
    def sha256(self) -> bool:
        """Whether batches are checked with SHA-256 fingerprints (an old reference's kind)."""
        return self._sha256

    def use_sha256(self, sha256: bool) -> None:
        """Checks batches with SHA-256 fingerprints (or checksums): in a multi-process run,
        every process must take the same kind, which only the processes that read the
        reference can tell."""
        self._sha256 = sha256

    def batch_begin(self, model: Any, epoch: int, batch: int) -> None:
        if self.capture == "begin" and batch > 0 and batch % self.every == 0:
            self._capture(model, epoch, batch - 1)

    def batch_end(self, model: Any, epoch: int, batch: int) -> None:
        if self.capture == "begin":  # hooks may run on several threads, in any order: keep the highest
            with self._last_batch_lock:
                self._last_batch = batch if self._last_batch is None else max(self._last_batch, batch)
        elif (batch + 1) % self.every == 0:
            self._capture(model, epoch, batch)

    def epoch_end(self, model: Any, epoch: int) -> None:
        """The epoch's last batch ("begin"), then every pending checksum, verified."""
        last, self._last_batch = self._last_batch, None
        if self.capture == "begin" and last is not None and (last + 1) % self.every == 0:
            self._capture(model, epoch, last)  # Keras has run every batch-end hook by now
        self.fetch()

    def _capture(self, model: Any, epoch: int, batch: int) -> None:
        """Checks the state now as the state after `batch` of `epoch`."""
        if self._sha256:
            _backend.sync_model_state(model)
            current = fingerprint(model).with_epoch(epoch, batch=batch)
            self._fingerprints.append(current)
            if (epoch, batch) in self._expected:
                self._report(compare_fingerprints(self._expected[epoch, batch], current, epoch, "batch"))
            return
        if self._checksums is None:  # the variables are all there after the first step
            self._checksums = BatchChecksums(model)
        self._pending.append((epoch, batch, self._checksums.start()))
        if len(self._pending) >= self.fetch_every:
            self.fetch()

    def fetch(self) -> None:
        """Brings the pending checksums to the host together and verifies them, in order."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = self._checksums.finish([result for _, _, result in pending])
        for (epoch, batch, _), lanes in zip(pending, values):
            data = self._data(epoch, batch) if self._data is not None else []
            self._fetched.append((epoch, batch, lanes, data))
            expected = self._expected_lanes.get((epoch, batch))  # never None here: see _sha256
            if expected is not None and not _same_lanes(expected, self._expected[epoch, batch], data, lanes):
                current = self._fingerprint(epoch, batch, lanes, data)
                self._report(compare_fingerprints(self._expected[epoch, batch], current, epoch, "batch"))

    def _fingerprint(self, epoch: int, batch: int, lanes: np.ndarray, data: list[VariableDigest]) -> Fingerprint:
        """A batch fingerprint: the data records, then the variables' checksums."""
        state = self._checksums.fingerprint(lanes, epoch, batch)
        return state.with_records(data) if data else state

    def fingerprints(self) -> list[Fingerprint]:
        """The batch fingerprints fetched so far (made from their checksums on first use)."""
        if self._fetched:
            self._fingerprints.extend(self._fingerprint(e, b, v, d) for e, b, v, d in self._fetched)
            self._fetched.clear()
        return self._fingerprints


def _same_lanes(expected: np.ndarray, reference: Fingerprint, data: list[VariableDigest], lanes: np.ndarray) -> bool:
    """Whether a batch's checksums equal the reference's (`expected`: its lanes, data records
    first). Data records are compared only where both hold them (references recorded before
    keras_repro checksummed the batches fed have none: `fingerprints.added_later`)."""
    stored = len(reference.part("data"))
    if stored and data:
        return np.array_equal(expected, np.concatenate([np.stack([digest_to_lanes(r.digest) for r in data]), lanes]))
    return np.array_equal(expected[stored:], lanes)
