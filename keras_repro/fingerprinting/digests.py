"""Fingerprints: SHA-256 digests of every variable of a model, kept per part.

A variable's digest covers its part, its position in that part, dtype, shape and
bytes in little-endian order. Variable *paths* are stored for display but are not
hashed: Keras numbers auto-generated layer names per process ("dense" in one
process is "dense_3" in another), so hashing them would make identical training
look different. Bytes are hashed in chunks of `CHUNK_BYTES`; each chunk's SHA-256
feeds the variable digest, so variables are hashed on all cores without copying
(hashlib releases the GIL).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from keras_repro import _backend
from keras_repro.fingerprinting.variables import (
    model_variables,
    nbytes,
    replica_devices,
    seed_generator_paths,
    variable_path,
)

CHUNK_BYTES = 1 << 22
"""Bytes per hashed chunk (4 MiB); part of the digest definition."""

PARTS = ("data", "rng", "trainable", "non_trainable", "optimizer")
"""Parts in the order a divergence is searched: the earliest explains the later ones."""

STAT_NAMES = ("sum", "l2", "min", "max", "nan", "inf")
"""The float summaries kept per variable: sum, L2 norm, min and max of the finite
values, and the counts of NaN and infinite values."""

STATS_CHUNK = 1 << 20
"""Elements converted to float64 at a time when summarizing (bounds extra memory)."""

PART_LABELS = {
    "data": "data order",
    "rng": "layer RNG (SeedGenerator) state",
    "trainable": "trainable weights",
    "non_trainable": "non-trainable weights",
    "optimizer": "optimizer state",
}

_PLURAL_PARTS = ("trainable", "non_trainable")

CONTENT_PREFIX = "content/"
"""Paths of the "data" part records that hold an input array's content ("content/x")."""

FED_PREFIX, VALIDATED_PREFIX = "fed/", "validated/"
"""Paths of the "data" part records that hold the checksums of the batches a fit fed, and of
those it validated on ("fed/x", "validated/y": `keras_repro.fit.fed_data`)."""

GLOBAL_GENERATOR_PATH = "keras.random/global_seed_generator"
"""Path of the "rng" part record of Keras' global SeedGenerator (`keras_repro.fit.rng_state`)."""


def added_later(record: VariableDigest) -> str | None:
    """The kind of a record that earlier keras_repro versions did not write ("content": an
    input's content; "fed", "validated": the batches fed and validated on; the global
    generator's path: Keras' global SeedGenerator), else None. Such records are compared only
    where both runs hold that kind, so references recorded before still verify (and a run whose
    batches could not be checksummed is compared on the rest)."""
    if record.part == "data":
        for prefix in (CONTENT_PREFIX, FED_PREFIX, VALIDATED_PREFIX):
            if record.path.startswith(prefix):
                return prefix[:-1]
    if record.part == "rng" and record.path == GLOBAL_GENERATOR_PATH:
        return GLOBAL_GENERATOR_PATH
    return None


def part_differs(part: str | None, variable: str | None = None) -> str:
    """ "trainable weights differ", "data order differs", "data content differs"... for
    messages (`variable`: the first record that differs)."""
    if part == "data" and (variable or "").startswith(CONTENT_PREFIX):
        return "data content differs"
    if part == "data" and (variable or "").startswith(FED_PREFIX):
        return "the input fed different data"
    if part == "data" and (variable or "").startswith(VALIDATED_PREFIX):
        return "the validation data differ"
    label = PART_LABELS.get(part or "", str(part))
    return f"{label} {'differ' if part in _PLURAL_PARTS else 'differs'}"


@dataclasses.dataclass(frozen=True)
class VariableDigest:
    """The digest of one variable (or one data-order record).

    Attributes:
        path: The variable's Keras path, for display.
        part: One of `PARTS`.
        dtype: The dtype name, e.g. "float32".
        shape: The shape as a tuple.
        digest: Hex SHA-256.
        stats: Float summaries in float64, in `STAT_NAMES` order, or None. They are
            not part of the digest; they let runs from other machines or versions be
            compared within a tolerance.
    """

    path: str
    part: str
    dtype: str
    shape: tuple[int, ...]
    digest: str
    stats: tuple[float, ...] | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """The fingerprint of a model's state at one moment.

    Attributes:
        digest: Hex SHA-256 over every part.
        records: Every `VariableDigest`, grouped by part in `PARTS` order.
        epoch: The epoch that had just finished (0-based, as Keras passes it to
            callbacks), or for the state before training, the epoch about to start.
        metrics: The epoch's logs (loss, metrics) as floats; empty if unknown.
        batch: For a batch fingerprint, the 0-based batch of `epoch` that had just
            finished; None for epoch and initial fingerprints.

    Example:

    >>> fp = fingerprint(model)                     # doctest: +SKIP
    >>> fp.digest[:12], list(fp.variables)[:1]      # doctest: +SKIP
    ('5e1c0b9a3f2d', ['sequential/dense/kernel'])
    """

    digest: str
    records: tuple[VariableDigest, ...]
    epoch: int | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    batch: int | None = None

    @property
    def variables(self) -> dict[str, str]:
        """{variable path: hex digest}, in part order; repeated paths get a `#n` suffix."""
        return {path: record.digest for path, record in _unique_paths(self.records)}

    @property
    def parts(self) -> dict[str, str]:
        """{part: hex digest} for the parts present."""
        return {part: _part_digest(group) for part, group in _by_part(self.records)}

    def part(self, name: str) -> tuple[VariableDigest, ...]:
        """The records of one part, in order."""
        return tuple(r for r in self.records if r.part == name)

    def with_records(self, extra: Iterable[VariableDigest]) -> Fingerprint:
        """A copy with more records (e.g. the data order), digest recomputed."""
        return make_fingerprint(list(self.records) + list(extra), self.epoch, self.metrics, self.batch)

    def with_epoch(
        self, epoch: int | None, metrics: Mapping[str, float] | None = None, batch: int | None = None
    ) -> Fingerprint:
        """A copy labelled with an epoch, metrics and batch (the digest does not cover them)."""
        return dataclasses.replace(self, epoch=epoch, metrics=dict(metrics or {}), batch=batch)


def _unique_paths(records: Iterable[VariableDigest]) -> Iterator[tuple[str, VariableDigest]]:
    """Yields (display path, record), suffixing repeated paths with `#2`, `#3`..."""
    seen: dict[str, int] = {}
    for record in records:
        count = seen.get(record.path, 0) + 1
        seen[record.path] = count
        yield (record.path if count == 1 else f"{record.path}#{count}"), record


def _by_part(records: Sequence[VariableDigest]) -> Iterator[tuple[str, list[VariableDigest]]]:
    """Yields (part, records) for each part present, in `PARTS` order."""
    for part in PARTS:
        group = [r for r in records if r.part == part]
        if group:
            yield part, group


def _part_digest(group: Sequence[VariableDigest]) -> str:
    """SHA-256 over the variable digests of one part, in order."""
    hasher = hashlib.sha256(f"part\0{len(group)}\0".encode())
    for record in group:
        hasher.update(bytes.fromhex(record.digest))
    return hasher.hexdigest()


def make_fingerprint(
    records: Sequence[VariableDigest],
    epoch: int | None = None,
    metrics: Mapping[str, float] | None = None,
    batch: int | None = None,
) -> Fingerprint:
    """Builds a `Fingerprint` from records, computing the part and total digests."""
    unknown = {r.part for r in records} - set(PARTS)
    if unknown:
        raise ValueError(f"Unknown fingerprint part(s) {sorted(unknown)}; expected one of {PARTS}")
    ordered = [r for _, group in _by_part(records) for r in group]
    hasher = hashlib.sha256(b"keras_repro.fingerprint\0")
    for part, group in _by_part(ordered):
        hasher.update(f"{part}\0".encode() + bytes.fromhex(_part_digest(group)))
    return Fingerprint(hasher.hexdigest(), tuple(ordered), epoch, dict(metrics or {}), batch)


def hash_array(array: np.ndarray, header: bytes, executor: Any = None) -> str:
    """Hex digest of `header` and the array's little-endian bytes, chunk by chunk."""
    array, chunks = _chunks(array)
    if executor is not None and len(chunks) > 1:
        chunk_digests = list(executor.map(_sha256, chunks))
    else:
        chunk_digests = [_sha256(chunk) for chunk in chunks]
    return _combine(header, array.nbytes, chunk_digests)


def _chunks(array: np.ndarray) -> tuple[np.ndarray, list[memoryview]]:
    """The little-endian, contiguous array (a view when it already is) and its byte chunks."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)
    # the bytes through a uint8 view: the buffer protocol refuses ml_dtypes' types (bfloat16)
    buffer = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    return array, [buffer[i : i + CHUNK_BYTES] for i in range(0, len(buffer), CHUNK_BYTES)]


def _combine(header: bytes, nbytes: int, chunk_digests: Iterable[bytes]) -> str:
    """A variable's hex digest from its header, size and the raw digests of its chunks."""
    hasher = hashlib.sha256(header)
    hasher.update(nbytes.to_bytes(8, "little"))
    for chunk_digest in chunk_digests:
        hasher.update(chunk_digest)
    return hasher.hexdigest()


def _sha256(chunk: memoryview) -> bytes:
    """Raw SHA-256 of one chunk."""
    return hashlib.sha256(chunk).digest()


def _workers() -> int:
    """Threads that hash chunks in parallel."""
    return max(1, min(8, os.cpu_count() or 1))


PARALLEL_MIN_BYTES = 1 << 23
"""Below this many bytes in all, a fingerprint hashes on the calling thread only."""

IN_FLIGHT_MIN_BYTES = 8 * CHUNK_BYTES
"""Host bytes read before they are hashed as one batch, at least (see `fingerprint`):
enough for a small model to be hashed on all cores in one go."""

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The hashing threads, started once per process (a thread pool per call costs more
    than hashing a small model)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(_workers(), thread_name_prefix="keras_repro-hash")
        return _pool


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: start a new pool when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def summarize(array: np.ndarray) -> tuple[float, ...]:
    """Float summaries (`STAT_NAMES`) of an array, in float64, chunk by chunk."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind not in "fiub" or flat.dtype.kind == "V":
        try:
            flat = flat.astype(np.float32)
        except (TypeError, ValueError):
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    total = squares = 0.0
    low, high = np.inf, -np.inf
    nans = infs = 0
    for start in range(0, flat.size, STATS_CHUNK):
        chunk = flat[start : start + STATS_CHUNK].astype(np.float64)
        finite = np.isfinite(chunk)
        if not finite.all():
            nans += int(np.isnan(chunk).sum())
            infs += int(np.isinf(chunk).sum())
            chunk = chunk[finite]
        if chunk.size:
            total += float(chunk.sum())
            # Not np.dot: it calls BLAS, whose threads keep spinning after the call and
            # take the cores from the training steps that follow (measured: +10% fit time).
            squares += float(np.square(chunk).sum())
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if low > high:
        low = high = 0.0
    return (total, float(np.sqrt(squares)), low, high, float(nans), float(infs))


def fingerprint(model: Any, summaries: bool = False, replica: int = 0) -> Fingerprint:
    """Fingerprints every variable of a Keras model and of its optimizer.

    Variables are read to the host in batches of at most max(largest variable, 32 MiB)
    bytes (`_backend.read_batch`: zero-copy views on CPU; on accelerators, copies issued
    together, through pinned staging buffers with torch), and each batch is hashed in 4 MiB
    chunks on all cores while the next batch is read. Extra memory is therefore nil on CPU
    and at most two batches where reading copies.

    Args:
        model: A built `keras.Model` (or any Keras layer).
        summaries: Also keep float summaries of each variable (`STAT_NAMES`), for
            comparisons within a tolerance. `SeedCallback` turns this on.
        replica: Which device's copy to read of variables that each device holds a
            copy of (`tf.distribute` mirrored variables, replicated JAX arrays).

    Returns:
        A `Fingerprint`; equal digests mean bit-identical state.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])  # doctest: +SKIP
    >>> fingerprint(model).digest == fingerprint(model).digest                # doctest: +SKIP
    True
    """
    variables = model_variables(model)
    rng_paths = seed_generator_paths(model)
    sizes = [nbytes(variable) for _, variable in variables]
    pool = _shared_pool() if _workers() > 1 and sum(sizes) >= PARALLEL_MIN_BYTES else None
    records: list[VariableDigest] = []
    pending = None
    for batch in _plan(variables, sizes, max([IN_FLIGHT_MIN_BYTES, *sizes])):
        arrays = _backend.read_batch([variable for _, _, variable in batch], replica)
        items = []
        for (part, index, variable), value in zip(batch, arrays):
            dtype, shape = np.dtype(value.dtype).name, tuple(int(d) for d in value.shape)
            array, chunks = _chunks(value)  # at least 1-d, so the shape comes from `value`
            path = rng_paths.get(id(variable)) or variable_path(variable, f"{part}_{index}")
            items.append((f"{part}\0{index}\0{dtype}\0{shape}\0".encode(), array, chunks,
                          VariableDigest(path, part, dtype, shape, "", None)))
        submitted = _submit(items, pool)
        if pending is not None:  # the previous batch hashed while this one was read
            records += _finish(*pending, summaries)
        pending = (items, submitted)
    if pending is not None:
        records += _finish(*pending, summaries)
    return make_fingerprint(records)


def _plan(variables: list[tuple[str, Any]], sizes: list[int], budget: int) -> list[list[tuple[str, int, Any]]]:
    """(part, index in part, variable) in batches of at most `budget` bytes (or one variable)."""
    batches: list[list[tuple[str, int, Any]]] = [[]]
    counters: dict[str, int] = {}
    batch_bytes = 0
    for (part, variable), size in zip(variables, sizes):
        index = counters.get(part, 0)
        counters[part] = index + 1
        if batches[-1] and batch_bytes + size > budget:
            batches.append([])
            batch_bytes = 0
        batches[-1].append((part, index, variable))
        batch_bytes += size
    return [batch for batch in batches if batch]


def _submit(items: list, pool: Any) -> list:
    """Starts hashing a batch's chunks on the pool (futures), or hashes them here."""
    chunks = [chunk for _, _, item_chunks, _ in items for chunk in item_chunks]
    if pool is None:
        return [_sha256(chunk) for chunk in chunks]
    return [pool.submit(_sha256, chunk) for chunk in chunks]


def _finish(items: list, submitted: list, summaries: bool) -> list[VariableDigest]:
    """A batch's records, once its chunks are hashed (summaries computed meanwhile)."""
    if summaries:
        items = [(h, a, c, dataclasses.replace(r, stats=summarize(a))) for h, a, c, r in items]
    digests = iter([d.result() if isinstance(d, concurrent.futures.Future) else d for d in submitted])
    return [dataclasses.replace(record, digest=_combine(header, array.nbytes, [next(digests) for _ in chunks]))
            for header, array, chunks, record in items]


def replica_fingerprints(model: Any, summaries: bool = False) -> dict[int, Fingerprint]:
    """{replica: fingerprint}: replica k's copy of every variable that devices each hold
    a copy of (`tf.distribute` mirrored variables, replicated JAX arrays), and the single
    value of the others. One entry, {0: ...}, when nothing is distributed. Replicas in
    sync have equal digests, except for `replica_local_variables`.

    Example:

    >>> {k: fp.digest[:8] for k, fp in replica_fingerprints(model).items()}   # doctest: +SKIP
    {0: '5e1c0b9a', 1: '5e1c0b9a'}
    """
    count = len(replica_devices(model)) or 1
    return {replica: fingerprint(model, summaries, replica) for replica in range(count)}


def content_record(name: str, array: Any) -> VariableDigest:
    """A "data" part record of one input array's content (`CONTENT_PREFIX` + name): its
    dtype, shape and bytes, with float summaries. A DeterministicModel computes it once per
    fit, so a run fed other data is named at its data, before a weight moves.

    Example:

    >>> content_record("x", np.zeros((4, 2), "float32")).path
    'content/x'
    """
    array = np.asarray(array)
    if array.dtype.kind == "O":  # Python objects (strings): hashed as text
        array = array.astype(str)
    path, dtype, shape = CONTENT_PREFIX + name, array.dtype.name, tuple(int(d) for d in array.shape)
    pool = _shared_pool() if _workers() > 1 and array.nbytes >= PARALLEL_MIN_BYTES else None
    digest = hash_array(array, f"data\0{path}\0{dtype}\0{shape}\0".encode(), pool)
    return VariableDigest(path, "data", dtype, shape, digest, summarize(array))


def data_record(name: str, values: np.ndarray) -> VariableDigest:
    """A "data" part record: the digest of an index array such as an epoch's order."""
    values = np.asarray(values, dtype=np.int64)
    digest = hash_array(values, f"data\0{name}\0int64\0{values.shape}\0".encode())
    return VariableDigest(name, "data", "int64", tuple(values.shape), digest)
