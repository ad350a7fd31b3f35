"""The fingerprint file: an HDF5 file with a documented, versioned schema.

Schema (format "keras_repro.fingerprints", version 3)::

    bytes 0-511             HDF5 user block (ignored by HDF5 tools): the text
                            "keras_repro.fingerprints\nsha256 <64 hex>\n", padded
                            with NUL bytes; the SHA-256 of every byte after it
                            (while a recording appends: of the HDF5 part, and a
                            third line describing the tail; see store_tail)
    /                       attrs: format, format_version, seed (-1: none),
                                   created (ISO 8601 UTC), keras_repro_version,
                                   planned_epochs (optional: the epoch count the
                                   recording fit planned; fewer epochs recorded
                                   means an interrupted recording)
    /environment            attrs: {name: text}  (see keras_repro.fingerprinting.environment)
    /notes                  attrs: {topic: text}  (e.g. nondeterministic inputs)
    /config                 attrs: {key: text}, optional: the recording fit's configuration
                            (see keras_repro.fingerprinting.configuration); absent in files written before
                            keras_repro recorded it, which are read with no configuration
    /initial                fingerprint group, optional: state before the first step
    /epochs/00000 ...       one fingerprint group per finished epoch
    /batches/00000 ...      optional, per epoch: batch fingerprints (every_n_batches)

    fingerprint group       attrs: digest (hex), epoch (int)
                            datasets, one row per variable, in part order
                            (the "data" part: "content/NAME" rows, one per input array,
                            then "order" and "validation_split"):
                              path (utf-8), part (utf-8), dtype (utf-8),
                              shape (utf-8, "3,4"; "" for a scalar),
                              digest (64 ASCII hex bytes),
                              stats (float64, rows x 6, optional: sum, l2, min,
                                     max, nan count, inf count; not in the digest)
                            /metrics attrs: {name: float}

    batch group             attrs: epoch (int), method (utf-8): "checksum64-v1"
                              (see keras_repro.fingerprinting.checksums; version 2 files: "sha256")
                            path, part, dtype, shape: as above (same for every batch)
                            batch (int64, B), digest (64 ASCII hex bytes, B),
                            variable_digests (uint8, B x rows x W: each variable's
                              raw digest; W = 8 for checksum64-v1, 32 for sha256)

While a recording runs, each epoch is appended to the file's tail instead
(`keras_repro.store.tail`: a frame per record, the header updated last), so writing epoch
n costs the same at n = 10 and n = 1,000; the recording writes its last epoch whole (or,
stopped by an error, rewrites the file whole with `fold`), and an HDF5 tool sees the
tail's epochs only from then on.

Reading and validating a file is `keras_repro.store.reader`'s. Every whole write goes to
a temporary file in the same folder that is flushed, fsync'ed and renamed over the target
(`os.replace`), so a crash leaves either the old file or the new one, never a mix. Every read first checks the user block's checksum
over the whole file, before HDF5 parses a byte of it (the HDF5 library can loop
forever or crash on some damaged files), then checks the whole schema and
recomputes each digest from its variables, so a damaged or edited file raises
`ReferenceFileError` instead of producing a wrong verdict or a hang.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from keras_repro.errors import ReferenceFileError
from keras_repro.fingerprinting import checksums
from keras_repro.fingerprinting.digests import STAT_NAMES, Fingerprint, VariableDigest
from keras_repro.store import file_access
from keras_repro.store import tail as store_tail
from keras_repro.store.tail import (
    FORMAT_NAME,
    USER_BLOCK,
    WriteState,
    append_record,
    header_block,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Version 3 stores batch fingerprints as on-device checksums (`keras_repro.fingerprinting.checksums`);
version 2 added the checksum user block. Version 1 files (without it) are refused."""

MIN_FORMAT_VERSION = 2
"""The oldest version read: version 2 files differ only in their batch fingerprints
(SHA-256, method "sha256")."""

BATCH_METHODS = {"sha256": 32, checksums.METHOD: checksums.DIGEST_BYTES}
"""Batch fingerprint methods this version reads, and their per-variable digest bytes."""


def write_run(
    path: str | os.PathLike,
    *,
    seed: int | None,
    environment: Mapping[str, str],
    initial: Fingerprint | None,
    epochs: list[Fingerprint],
    notes: Mapping[str, str] | None = None,
    created: str | None = None,
    batches: list[Fingerprint] | None = None,
    planned_epochs: int | None = None,
    state: WriteState | None = None,
    config: Mapping[str, str] | None = None,
) -> None:
    """Writes a whole run to `path`: atomically (temporary file + fsync + rename), or, given
    the `state` of this process's last write there, by appending what the run adds to the
    file (new epochs, batches, `planned_epochs`) as one tail record, at a cost that does not
    grow with the file (`keras_repro.store.tail`).

    Raises:
        ReferenceFileError: If `path` is a folder, or its folder is missing or not
            writable, or the write fails (a full disk); the previous file is kept. A
            file or folder made read-only (`file_access.read_only`, its permission bits
            too) and a file keras_repro did not write are never written: they raise
            and are left as they are.

    Example:

    >>> state = WriteState()
    >>> write_run("run.h5", seed=7, environment={}, initial=None, epochs=[], state=state)  # doctest: +SKIP
    >>> write_run("run.h5", seed=7, environment={}, initial=None, epochs=[epoch0], state=state)  # doctest: +SKIP
    """
    target = os.path.abspath(os.fspath(path))
    run = (seed, created, tuple(environment.items()), tuple((notes or {}).items()), initial and initial.digest,
           None if config is None else tuple(config.items()))
    batches = batches or []
    if state is not None and _appendable(target, state, run, epochs, batches, planned_epochs):
        _check_target(path, target, whole=False)
        try:
            append_record(target, state, _record(epochs[state.epochs :], batches[state.batches :], planned_epochs))
        except OSError as error:
            state.forget()
            raise ReferenceFileError(
                path, f"cannot be written: {error.strerror or error}; its earlier epochs are kept"
            ) from error
        _remember(state, run, epochs, batches, planned_epochs)
        logger.debug("Appended epochs %d.. to %s", state.epochs, target)
        return
    if state is not None:
        state.forget()
    digest = _write_whole(path, target, seed, environment, initial, epochs, notes, created, batches, planned_epochs, config)
    if state is not None:
        with open(target, "rb") as handle:
            state.signature = store_tail.signature(handle)
        state.header = store_tail.Header(digest)
        _remember(state, run, epochs, batches, planned_epochs)


def fold(path: str | os.PathLike, state: WriteState, **run: Any) -> bool:
    """Rewrites a file that has a tail as a whole HDF5 file (what `write_run` takes as
    `run`), so that HDF5 tools see every epoch; returns whether it did. A file
    without a tail, or one this process did not write last, is left alone."""
    target = os.path.abspath(os.fspath(path))
    if state.header is None or not state.header.count or not state.current(target):
        return False
    state.forget()
    _write_whole(
        path, target, run["seed"], run["environment"], run["initial"], run["epochs"], run.get("notes"),
        run.get("created"), run.get("batches") or [], run.get("planned_epochs"), run.get("config"),
    )
    logger.debug("Folded the tail of %s", target)
    return True


def _appendable(
    target: str, state: WriteState, run: tuple, epochs: list[Fingerprint], batches: list[Fingerprint],
    planned: int | None,
) -> bool:
    """Whether the run only adds to what `state` says the file holds (checked in constant time:
    the counts and the digests of the last epoch and batch), and the file is unchanged."""
    if state.run != run or len(epochs) < state.epochs or len(batches) < state.batches:
        return False
    if state.epochs and epochs[state.epochs - 1].digest != state.last_epoch:
        return False
    if state.batches and batches[state.batches - 1].digest != state.last_batch:
        return False
    if len(epochs) == state.epochs and len(batches) == state.batches and planned == state.planned:
        return False  # nothing new: rewrite (as before) rather than append an empty record
    return state.current(target)


def _remember(state: WriteState, run: tuple, epochs: list[Fingerprint], batches: list[Fingerprint], planned: int | None) -> None:
    """Records in `state` what the file now holds."""
    state.run, state.planned = run, planned
    state.epochs, state.last_epoch = len(epochs), epochs[-1].digest if epochs else None
    state.batches, state.last_batch = len(batches), batches[-1].digest if batches else None


def _record(epochs: list[Fingerprint], batches: list[Fingerprint], planned: int | None) -> bytes:
    """A tail record: an HDF5 image with the new epoch groups, batch groups and
    `planned_epochs`, laid out as in the file."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        if planned is not None:
            file.attrs["planned_epochs"] = int(planned)
        group = file.create_group("epochs")
        for fingerprint in epochs:
            _write_fingerprint(group.create_group(f"{fingerprint.epoch:05d}"), fingerprint)
        if batches:
            _write_batches(file.create_group("batches"), batches)
    return buffer.getvalue()


def _write_whole(
    path: str | os.PathLike, target: str, seed: int | None, environment: Mapping[str, str],
    initial: Fingerprint | None, epochs: list[Fingerprint], notes: Mapping[str, str] | None,
    created: str | None, batches: list[Fingerprint], planned_epochs: int | None,
    config: Mapping[str, str] | None = None,
) -> str:
    """Writes the file whole, atomically; returns the SHA-256 in its header."""
    folder = os.path.dirname(target)
    _check_target(path, target, whole=True)
    try:
        handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=folder)
        os.close(handle)
    except OSError as error:
        raise ReferenceFileError(
            path, f"cannot be written: {error.strerror or error}. Check that the folder exists and is writable"
        ) from error
    try:
        with h5py.File(temporary, "w", userblock_size=USER_BLOCK) as file:
            file.attrs["format"] = FORMAT_NAME
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["seed"] = -1 if seed is None else int(seed)
            file.attrs["created"] = created or datetime.datetime.now(datetime.UTC).isoformat()
            from keras_repro.version import __version__

            file.attrs["keras_repro_version"] = __version__
            if planned_epochs is not None:
                file.attrs["planned_epochs"] = int(planned_epochs)
            _write_attrs(file.create_group("environment"), environment)
            _write_attrs(file.create_group("notes"), notes or {})
            if config is not None:
                _write_attrs(file.create_group("config"), config)
            if initial is not None:
                _write_fingerprint(file.create_group("initial"), initial)
            group = file.create_group("epochs")
            for fingerprint in epochs:
                _write_fingerprint(group.create_group(f"{fingerprint.epoch:05d}"), fingerprint)
            if batches:
                _write_batches(file.create_group("batches"), batches)
        digest = seal(temporary)
        os.chmod(temporary, _new_file_mode(target))
        os.replace(temporary, target)
        _fsync_folder(folder)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and not isinstance(error, ReferenceFileError):
            raise ReferenceFileError(
                path, f"cannot be written: {error.strerror or error}; the previous file is unchanged"
            ) from error
        raise
    logger.debug("Wrote %d epoch fingerprints to %s", len(epochs), target)
    return digest


def _check_target(path: str | os.PathLike, target: str, whole: bool) -> None:
    """Refuses a write keras_repro must not make: to a file or folder that must not be
    written, or (`whole`: replacing it) over a file keras_repro did not write (an empty one
    holds nothing to lose: it is written)."""
    file_access.check_path(path)
    reason = file_access.read_only(target)
    if reason is not None:
        raise ReferenceFileError(
            path, f"cannot be written: {reason}; it is left as it is. Make it writable, or write to another path"
        )
    if whole and os.path.exists(target) and os.path.getsize(target) > 0:
        store_tail.refuse_foreign(path)


def _temporary_prefix(target: str) -> str:
    """The name prefix of `write_run`'s temporary files for `target`."""
    return f".{os.path.basename(target)}."


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Deletes temporary files that writes of `path` left when their process was killed.

    Call it only while holding the reference's lock (as `SeedCallback` does): then no
    other write of `path` is under way. Returns the deleted paths.
    """
    target = os.path.abspath(os.fspath(path))
    folder, prefix = os.path.dirname(target), _temporary_prefix(target)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp") and len(name) > len(prefix) + 4:
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
            except OSError as error:  # another user's file, or gone already
                logger.debug("Could not remove %s: %s", name, error)
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted write of %s", len(removed), target)
    return removed


def body_digest(handle: Any) -> str:
    """SHA-256 (hex) of everything after the user block of an open binary file."""
    handle.seek(USER_BLOCK)
    hasher = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        hasher.update(block)
    return hasher.hexdigest()


def seal(path: str | os.PathLike) -> str:
    """Writes the checksum user block of a file HDF5 created with a 512-byte user block
    (a file without a tail), and fsyncs it; returns the SHA-256. `write_run` seals every
    file it writes whole; a file edited afterwards (even with h5py) is refused by
    `read_run` until it is sealed again.
    """
    with open(path, "rb+") as handle:
        digest = body_digest(handle)
        handle.seek(0)
        handle.write(header_block(digest))
        handle.flush()
        os.fsync(handle.fileno())
    return digest


def _new_file_mode(target: str) -> int:
    """The permissions the reference should get: those of the file it replaces, else
    those of a normally created file (0o666 less the umask), not mkstemp's 0o600."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: str) -> None:
    """Makes the rename durable (no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _write_attrs(group: h5py.Group, values: Mapping[str, Any]) -> None:
    """Stores a flat mapping as attributes."""
    for key, value in values.items():
        group.attrs[str(key)] = value


def _write_layout(group: h5py.Group, records: tuple[VariableDigest, ...]) -> None:
    """Stores the path, part, dtype and shape columns of `records`."""
    text = h5py.string_dtype("utf-8")
    group.create_dataset("path", data=[r.path for r in records], dtype=text)
    group.create_dataset("part", data=[r.part for r in records], dtype=text)
    group.create_dataset("dtype", data=[r.dtype for r in records], dtype=text)
    group.create_dataset("shape", data=[",".join(map(str, r.shape)) for r in records], dtype=text)


def _write_fingerprint(group: h5py.Group, fingerprint: Fingerprint) -> None:
    """Stores one fingerprint in `group`."""
    group.attrs["digest"] = fingerprint.digest
    group.attrs["epoch"] = -1 if fingerprint.epoch is None else int(fingerprint.epoch)
    records = fingerprint.records
    _write_layout(group, records)
    group.create_dataset("digest", data=np.array([r.digest.encode("ascii") for r in records], dtype="S64"))
    if records and all(r.stats is not None or r.part == "data" for r in records):
        stats = [r.stats if r.stats is not None else (np.nan,) * len(STAT_NAMES) for r in records]
        group.create_dataset("stats", data=np.array(stats, dtype=np.float64).reshape(len(records), len(STAT_NAMES)))
    metrics = group.create_group("metrics")
    for key, value in fingerprint.metrics.items():
        metrics.attrs[key] = float(value)


def _write_batches(group: h5py.Group, batches: list[Fingerprint]) -> None:
    """Stores batch fingerprints, one compact group per epoch."""
    by_epoch: dict[int, list[Fingerprint]] = {}
    for fingerprint in batches:
        by_epoch.setdefault(int(fingerprint.epoch), []).append(fingerprint)
    for epoch, items in by_epoch.items():
        sub = group.create_group(f"{epoch:05d}")
        sub.attrs["epoch"] = epoch
        width = len(items[0].records[0].digest) // 2 if items[0].records else checksums.DIGEST_BYTES
        sub.attrs["method"] = next((m for m, w in BATCH_METHODS.items() if w == width), f"unknown-{width}")
        _write_layout(sub, items[0].records)
        sub.create_dataset("batch", data=np.array([fp.batch for fp in items], dtype=np.int64))
        sub.create_dataset("digest", data=np.array([fp.digest.encode("ascii") for fp in items], dtype="S64"))
        raw = np.array([[bytearray.fromhex(r.digest) for r in fp.records] for fp in items], dtype=np.uint8)
        sub.create_dataset("variable_digests", data=raw.reshape(len(items), len(items[0].records), width))
