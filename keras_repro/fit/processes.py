"""The processes of a multi-process run (JAX's `jax.distributed`) checking and deciding together.

Every process fingerprints the same variables in the same order: a variable sharded across
processes is gathered whole (the same bytes in every process), a replicated one is read from
the process's own copy. Two collectives follow from that:

* `process_divergence`: every process's digests are gathered, so each one finds the same
  first process and variable whose copy drifted from process 0's.
* `agree`: a verdict only some processes can reach (the chief, which alone reads the
  reference in "auto" mode, finds that an epoch differs from it; a reference the chief
  cannot use) is gathered too, so every process raises, or warns, together: a process left
  training would wait forever in the next collective for a peer that stopped.

Each is a collective: every process calls it at the same point of the fit. With one process,
both are local and cost nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from keras_repro import _backend
from keras_repro.errors import ReferenceFileError, ReproError
from keras_repro.fingerprinting.compare import Divergence
from keras_repro.fingerprinting.digests import Fingerprint

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32
"""Bytes per gathered digest (a SHA-256; shorter digests are padded with zeros)."""


def process_count() -> int:
    """The processes training together (1 unless a multi-process JAX run)."""
    return _backend.process_count()


def _digest_matrix(fingerprint: Fingerprint) -> np.ndarray:
    """uint8 (records, DIGEST_BYTES): every record's digest, in the fingerprint's order."""
    matrix = np.zeros((len(fingerprint.records), DIGEST_BYTES), np.uint8)
    for row, record in enumerate(fingerprint.records):
        raw = bytes.fromhex(record.digest)[:DIGEST_BYTES]
        matrix[row, : len(raw)] = np.frombuffer(raw, np.uint8)
    return matrix


def process_divergence(
    fingerprint: Fingerprint, epoch: int | None, stage: str, ignore: Collection[str] = ()
) -> Divergence | None:
    """The first process, and its first variable in `PARTS` order, whose state differs from
    process 0's; None when all agree (or there is one process). A collective.

    Args:
        fingerprint: This process's fingerprint of the state (every process passes its own,
            taken at the same point).
        epoch, stage: Where it was taken, for the `Divergence`.
        ignore: Paths of variables whose copies differ by design (`replica_local_paths`).

    Returns:
        The same `Divergence` (or None) in every process.
    """
    if process_count() == 1:
        return None
    counts = _backend.gather_from_processes(np.array([len(fingerprint.records)], np.int64))[:, 0]
    if len(set(counts.tolist())) > 1:
        k = next(k for k, count in enumerate(counts) if count != counts[0])
        return Divergence(epoch, stage, None, None,
                          reason=f"process {k} has {counts[k]} variables, process 0 {counts[0]}", process=k)
    digests = _backend.gather_from_processes(_digest_matrix(fingerprint))
    for k in range(1, len(digests)):
        differ = np.flatnonzero((digests[k] != digests[0]).any(axis=1))
        for row in differ:
            record = fingerprint.records[row]
            if record.path in ignore:
                continue
            return Divergence(
                epoch, stage, record.part, record.path, record.path, digests[0][row].tobytes().hex(),
                digests[k][row].tobytes().hex(), f"its copy in process {k} differs from process 0's", process=k,
            )
    return None


def agree(verdict: dict[str, Any] | None) -> tuple[int, dict[str, Any]] | None:
    """The first verdict any process reached, in process order, as (process, verdict), known
    to every process; None when none reached one. A collective.

    Args:
        verdict: This process's verdict (JSON-serializable), or None.
    """
    if process_count() == 1:
        return (0, verdict) if verdict is not None else None
    payload = np.frombuffer(json.dumps(verdict).encode(), np.uint8) if verdict is not None else np.zeros(0, np.uint8)
    lengths = _backend.gather_from_processes(np.array([payload.size], np.int64))[:, 0]
    if not lengths.any():
        return None
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = _backend.gather_from_processes(padded)
    process = int(np.flatnonzero(lengths)[0])
    return process, json.loads(gathered[process][: lengths[process]].tobytes().decode())


def divergence_verdict(divergence: Divergence, reference: str | None, cause: str | None) -> dict[str, Any]:
    """A `Divergence` found against `reference` (None for none), likely for `cause`, as a
    verdict for `agree`."""
    return {"divergence": dataclasses.asdict(divergence), "reference": reference, "cause": cause}


def divergence_of(verdict: dict[str, Any]) -> tuple[Divergence, str | None, str | None]:
    """(divergence, reference, cause) of a verdict from `divergence_verdict`."""
    return Divergence(**verdict["divergence"]), verdict.get("reference"), verdict.get("cause")


def together(action: Callable[[], None], path: Any, cleanup: Callable[[], None] = lambda: None) -> None:
    """Runs `action` (opening a reference file) in every process; when it raised a
    `ReproError` or `OSError` in any process, it raises in every process (the error itself
    where it happened, a `ReferenceFileError` naming that process elsewhere, after `cleanup`).
    A collective in a multi-process run."""
    if process_count() == 1:
        action()
        return
    error: BaseException | None = None
    try:
        action()
    except (ReproError, OSError) as caught:
        error = caught
    found = agree({"error": str(error)} if error is not None else None)
    if error is not None:
        raise error
    if found is not None:
        cleanup()
        raise ReferenceFileError(path, f"process {found[0]} could not use it: {found[1]['error']}")
