"""The fingerprint file: an HDF5 file with a documented, versioned schema.

Schema (format "keras_repro.fingerprints", version 3)::

    bytes 0-511             HDF5 user block (ignored by HDF5 tools): the text
                            "keras_repro.fingerprints\nsha256 <64 hex>\n", padded
                            with NUL bytes; the SHA-256 of every byte after it
    /                       attrs: format, format_version, seed (-1: none),
                                   created (ISO 8601 UTC), keras_repro_version,
                                   planned_epochs (optional: the epoch count the
                                   recording fit planned; fewer epochs recorded
                                   means an interrupted recording)
    /environment            attrs: {name: text}  (see keras_repro.environment)
    /notes                  attrs: {topic: text}  (e.g. nondeterministic inputs)
    /initial                fingerprint group, optional: state before the first step
    /epochs/00000 ...       one fingerprint group per finished epoch
    /batches/00000 ...      optional, per epoch: batch fingerprints (every_n_batches)

    fingerprint group       attrs: digest (hex), epoch (int)
                            datasets, one row per variable, in part order:
                              path (utf-8), part (utf-8), dtype (utf-8),
                              shape (utf-8, "3,4"; "" for a scalar),
                              digest (64 ASCII hex bytes),
                              stats (float64, rows x 6, optional: sum, l2, min,
                                     max, nan count, inf count; not in the digest)
                            /metrics attrs: {name: float}

    batch group             attrs: epoch (int), method (utf-8): "checksum64-v1"
                              (see keras_repro.checksums; version 2 files: "sha256")
                            path, part, dtype, shape: as above (same for every batch)
                            batch (int64, B), digest (64 ASCII hex bytes, B),
                            variable_digests (uint8, B x rows x W: each variable's
                              raw digest; W = 8 for checksum64-v1, 32 for sha256)

Every write goes to a temporary file in the same folder that is flushed, fsync'ed
and renamed over the target (`os.replace`), so a crash leaves either the old file
or the new one, never a mix. Every read first checks the user block's checksum
over the whole file, before HDF5 parses a byte of it (the HDF5 library can loop
forever or crash on some damaged files), then checks the whole schema and
recomputes each digest from its variables, so a damaged or edited file raises
`ReferenceFileError` instead of producing a wrong verdict or a hang.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from keras_repro import checksums
from keras_repro.errors import ReferenceFileError
from keras_repro.fingerprints import PARTS, STAT_NAMES, Fingerprint, VariableDigest, make_fingerprint

logger = logging.getLogger(__name__)

FORMAT_NAME = "keras_repro.fingerprints"
FORMAT_VERSION = 3
"""Version 3 stores batch fingerprints as on-device checksums (`keras_repro.checksums`);
version 2 added the checksum user block. Version 1 files (without it) are refused."""

MIN_FORMAT_VERSION = 2
"""The oldest version read: version 2 files differ only in their batch fingerprints
(SHA-256, method "sha256")."""

BATCH_METHODS = {"sha256": 32, checksums.METHOD: checksums.DIGEST_BYTES}
"""Batch fingerprint methods this version reads, and their per-variable digest bytes."""
USER_BLOCK = 512
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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
) -> None:
    """Writes a whole run to `path` atomically (temporary file + fsync + rename).

    Raises:
        ReferenceFileError: If `path` is a folder, or its folder is missing or not
            writable, or the write fails (a full disk); the previous file is kept.
    """
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise ReferenceFileError(path, "is a folder; pass the path of a file in it, such as 'run.h5'")
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
            file.attrs["created"] = created or datetime.datetime.now(datetime.timezone.utc).isoformat()
            from keras_repro.version import __version__

            file.attrs["keras_repro_version"] = __version__
            if planned_epochs is not None:
                file.attrs["planned_epochs"] = int(planned_epochs)
            _write_attrs(file.create_group("environment"), environment)
            _write_attrs(file.create_group("notes"), notes or {})
            if initial is not None:
                _write_fingerprint(file.create_group("initial"), initial)
            group = file.create_group("epochs")
            for fingerprint in epochs:
                _write_fingerprint(group.create_group(f"{fingerprint.epoch:05d}"), fingerprint)
            if batches:
                _write_batches(file.create_group("batches"), batches)
        seal(temporary)
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


def _header(digest: str) -> bytes:
    """The user block of a file whose bytes after it have SHA-256 `digest`."""
    return f"{FORMAT_NAME}\nsha256 {digest}\n".encode("ascii").ljust(USER_BLOCK, b"\0")


def _body_digest(handle: Any) -> str:
    """SHA-256 (hex) of everything after the user block of an open binary file."""
    handle.seek(USER_BLOCK)
    hasher = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        hasher.update(block)
    return hasher.hexdigest()


def seal(path: str | os.PathLike) -> None:
    """Writes the checksum user block of a file HDF5 created with a 512-byte user block,
    and fsyncs it. `write_run` seals every file it writes; a file edited afterwards
    (even with h5py) is refused by `read_run` until it is sealed again.
    """
    with open(path, "rb+") as handle:
        digest = _body_digest(handle)
        handle.seek(0)
        handle.write(_header(digest))
        handle.flush()
        os.fsync(handle.fileno())


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


class _Reader:
    """Reads and validates one file; every problem becomes a `ReferenceFileError`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.version = FORMAT_VERSION

    def fail(self, reason: str) -> ReferenceFileError:
        """The error to raise for `reason`."""
        return ReferenceFileError(self.path, reason)

    def check_file(self) -> None:
        """Checks existence, size and the HDF5 signature before h5py sees the file."""
        if not os.path.exists(self.path):
            raise self.fail(
                "does not exist. Record one first (SeedCallback(mode='record') or mode='auto')"
            )
        if os.path.isdir(self.path):
            raise self.fail("is a folder, not a fingerprint file")
        if not self._read(lambda handle: handle.read(8)):
            raise self.fail("is empty (0 bytes); it was never written completely. Record it again")
        self.check_seal()

    def check_seal(self) -> None:
        """Checks the user block's checksum of everything after it, so HDF5 only ever
        parses bytes exactly as keras_repro wrote them."""
        head = self._read(lambda handle: handle.read(USER_BLOCK))
        if head.startswith(_HDF5_SIGNATURE):
            raise self.fail(
                "is an HDF5 file without a keras_repro header: a file of another program, or a "
                f"fingerprint file older than format version {MIN_FORMAT_VERSION}. Pass a file "
                "recorded by this keras_repro, or record it again"
            )
        if not head.startswith(f"{FORMAT_NAME}\n".encode()):
            raise self.fail(
                "is not a keras_repro fingerprint file (its first bytes are not a keras_repro "
                "header; the file may be damaged). Pass a file recorded by SeedCallback"
            )
        stored = head[len(FORMAT_NAME) + 1 :].split(b"\n", 1)[0]
        digest = stored[len(b"sha256 ") :].decode("ascii", "replace")
        if head != _header(digest) or len(digest) != 64:
            raise self.fail("has a damaged keras_repro header (bytes 0-511). Record it again")
        if self._read(_body_digest) != digest:
            raise self.fail(
                "is damaged or was changed after keras_repro wrote it: the SHA-256 of its contents does "
                "not match the one in its header. Record it again, or restore it from a backup"
            )

    def _read(self, reader: Any) -> Any:
        """`reader(handle)` of the file opened for binary reading; OSError becomes our error."""
        try:
            with open(self.path, "rb") as handle:
                return reader(handle)
        except OSError as error:
            raise self.fail(f"cannot be read: {error.strerror or error}") from None

    def attr(self, obj: Any, name: str, kinds: tuple[type, ...], where: str) -> Any:
        """A validated attribute."""
        if name not in obj.attrs:
            raise self.fail(f"field '{where}' attribute '{name}' is missing; the file is damaged")
        value = obj.attrs[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise self.fail(
                f"field '{where}' attribute '{name}' has type {type(value).__name__}, "
                f"expected {'/'.join(k.__name__ for k in kinds)}; the file is damaged"
            )
        return value

    def column(self, group: h5py.Group, name: str, rows: int | None) -> list:
        """A validated one-dimensional dataset of strings."""
        where = f"{group.name}/{name}"
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise self.fail(f"dataset '{where}' is missing; the file is damaged")
        dataset = group[name]
        if dataset.ndim != 1 or (rows is not None and dataset.shape[0] != rows):
            raise self.fail(f"dataset '{where}' has shape {dataset.shape}, expected ({rows},)")
        if dataset.dtype.kind not in "SOU":
            raise self.fail(f"dataset '{where}' holds {dataset.dtype}, expected text")
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]

    def stats(self, group: h5py.Group, rows: int) -> np.ndarray | None:
        """The optional float summaries of a fingerprint group."""
        if "stats" not in group:
            return None
        dataset = group["stats"]
        expected = (rows, len(STAT_NAMES))
        if not isinstance(dataset, h5py.Dataset) or dataset.shape != expected or dataset.dtype.kind != "f":
            raise self.fail(f"dataset '{group.name}/stats' must hold floats of shape {expected}; the file is damaged")
        return dataset[()]

    def layout(self, group: h5py.Group) -> list[tuple[str, str, str, tuple[int, ...]]]:
        """The (path, part, dtype, shape) columns of a group, validated."""
        paths = self.column(group, "path", None)
        parts, dtypes, shapes = (self.column(group, name, len(paths)) for name in ("part", "dtype", "shape"))
        layout = []
        for row, (path, part, dtype, shape) in enumerate(zip(paths, parts, dtypes, shapes)):
            if part not in PARTS:
                raise self.fail(f"'{group.name}' row {row} ('{path}') has unknown part '{part}'")
            try:
                dims = tuple(int(d) for d in shape.split(",")) if shape else ()
            except ValueError:
                raise self.fail(f"'{group.name}' row {row} ('{path}') has a malformed shape") from None
            layout.append((path, part, dtype, dims))
        return layout

    def batches(self, group: Any) -> list[Fingerprint]:
        """Reads and verifies the batch fingerprints of one epoch."""
        where = group.name
        if not isinstance(group, h5py.Group):
            raise self.fail(f"'{where}' is not a group; the file is damaged")
        epoch = self.attr(group, "epoch", (int,), where)
        method = self.attr(group, "method", (str,), where) if "method" in group.attrs or self.version > 2 else "sha256"
        if method not in BATCH_METHODS:
            raise self.fail(
                f"'{where}' holds batch fingerprints of method '{method}', which this keras_repro does "
                f"not know (it reads {', '.join(BATCH_METHODS)}); upgrade keras_repro"
            )
        width = BATCH_METHODS[method]
        layout = self.layout(group)
        if "batch" not in group or "variable_digests" not in group:
            raise self.fail(f"'{where}' lacks its 'batch' or 'variable_digests' dataset; the file is damaged")
        if not isinstance(group["variable_digests"], h5py.Dataset) or not isinstance(group["batch"], h5py.Dataset):
            raise self.fail(f"'{where}/variable_digests' or '{where}/batch' is not a dataset; the file is damaged")
        numbers = group["batch"][()]
        digests = self.column(group, "digest", len(numbers))
        raw = group["variable_digests"]
        if raw.shape != (len(numbers), len(layout), width) or raw.dtype != np.uint8:
            raise self.fail(f"dataset '{where}/variable_digests' has shape {raw.shape}; the file is damaged")
        raw = raw[()]
        result = []
        for index, (number, digest) in enumerate(zip(numbers, digests)):
            records = [
                VariableDigest(path, part, dtype, dims, raw[index, row].tobytes().hex())
                for row, (path, part, dtype, dims) in enumerate(layout)
            ]
            fingerprint = make_fingerprint(records, epoch, None, int(number))
            if fingerprint.digest != digest:
                raise self.fail(f"'{where}' batch {int(number)} digest does not match its variables; the file is damaged")
            result.append(fingerprint)
        return result

    def fingerprint(self, group: Any, where: str) -> Fingerprint:
        """Reads and verifies one fingerprint group."""
        if not isinstance(group, h5py.Group):
            raise self.fail(f"'{where}' is not a group; the file is damaged")
        digest = self.attr(group, "digest", (str,), where)
        epoch = self.attr(group, "epoch", (int,), where)
        layout = self.layout(group)
        digests = self.column(group, "digest", len(layout))
        stats = self.stats(group, len(layout))
        records = []
        for row, ((path, part, dtype, dims), variable_digest) in enumerate(zip(layout, digests)):
            try:
                bytes.fromhex(variable_digest)
            except ValueError:
                raise self.fail(f"'{where}' row {row} ('{path}') has a malformed digest") from None
            if len(variable_digest) != 64:
                raise self.fail(f"'{where}' row {row} ('{path}') has a malformed digest")
            row_stats = None if stats is None or np.isnan(stats[row]).all() else tuple(float(v) for v in stats[row])
            records.append(VariableDigest(path, part, dtype, dims, variable_digest, row_stats))
        metrics: dict[str, float] = {}
        if "metrics" in group:
            if not isinstance(group["metrics"], h5py.Group):
                raise self.fail(f"'{where}/metrics' is not a group; the file is damaged")
            for key, value in group["metrics"].attrs.items():
                try:
                    metrics[key] = float(value)
                except (TypeError, ValueError):
                    raise self.fail(f"'{where}/metrics' attribute '{key}' is not a number") from None
        result = make_fingerprint(records, None if epoch < 0 else epoch, metrics)
        if result.digest != digest:
            raise self.fail(
                f"'{where}' digest does not match its variables; the file is damaged. Record it again"
            )
        return result

    def read(self) -> dict[str, Any]:
        """The whole file as plain values."""
        self.check_file()
        try:
            file = h5py.File(self.path, "r", locking=False)
        except (OSError, ValueError) as error:
            raise self.fail(f"cannot be opened as HDF5 (truncated or corrupt?): {error}") from None
        try:
            with file:
                return self._read_open(file)
        except ReferenceFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, UnicodeDecodeError) as error:
            raise self.fail(f"is damaged and cannot be read: {type(error).__name__}: {error}") from None

    def _read_open(self, file: h5py.File) -> dict[str, Any]:
        """Reads an opened file."""
        if "format" not in file.attrs:
            raise self.fail(
                "is an HDF5 file but not a keras_repro fingerprint file (no 'format' attribute)"
            )
        name = self.attr(file, "format", (str,), "/")
        if name != FORMAT_NAME:
            raise self.fail(f"has format '{name}', expected '{FORMAT_NAME}'")
        version = self.version = self.attr(file, "format_version", (int,), "/")
        if version > FORMAT_VERSION:
            raise self.fail(
                f"uses format version {version}, newer than this keras_repro reads "
                f"({FORMAT_VERSION}); upgrade keras_repro"
            )
        if version < MIN_FORMAT_VERSION:
            raise self.fail(
                f"has format version {version}, older than this keras_repro reads ({MIN_FORMAT_VERSION}); "
                "record it again"
            )
        seed = self.attr(file, "seed", (int,), "/")
        if not (seed == -1 or 0 <= seed <= 2**32 - 1):
            raise self.fail(f"has seed {seed}, outside [0, 2**32 - 1] (or -1 for none); the file is damaged")
        created = self.attr(file, "created", (str,), "/")
        planned = self.attr(file, "planned_epochs", (int,), "/") if "planned_epochs" in file.attrs else None
        if planned is not None and planned < 1:
            raise self.fail(f"has planned_epochs {planned}, expected a positive count; the file is damaged")
        environment = self._text_attrs(file, "environment")
        notes = self._text_attrs(file, "notes")
        initial = self.fingerprint(file["initial"], "/initial") if "initial" in file else None
        if "epochs" not in file or not isinstance(file["epochs"], h5py.Group):
            raise self.fail("group '/epochs' is missing; the file is damaged")
        epochs = []
        for key in sorted(file["epochs"]):
            fingerprint = self.fingerprint(file["epochs"][key], f"/epochs/{key}")
            if fingerprint.epoch is None or f"{fingerprint.epoch:05d}" != key:
                raise self.fail(f"'/epochs/{key}' holds epoch {fingerprint.epoch}; the file is damaged")
            epochs.append(fingerprint)
        batches = []
        if "batches" in file:
            if not isinstance(file["batches"], h5py.Group):
                raise self.fail("'/batches' is not a group; the file is damaged")
            for key in sorted(file["batches"]):
                found = self.batches(file["batches"][key])
                if any(f"{b.epoch:05d}" != key for b in found):
                    raise self.fail(f"'/batches/{key}' holds epoch {found[0].epoch}; the file is damaged")
                batches.extend(found)
        if initial is not None and epochs and initial.epoch != epochs[0].epoch:
            raise self.fail(
                f"'/initial' is labelled epoch {initial.epoch}, but the first recorded epoch is "
                f"{epochs[0].epoch}; the file is damaged"
            )
        return {
            "batches": batches,
            "seed": None if seed < 0 else seed,
            "created": created,
            "environment": environment,
            "notes": notes,
            "initial": initial,
            "epochs": epochs,
            "format_version": version,
            "planned_epochs": planned,
        }

    def _text_attrs(self, file: h5py.File, name: str) -> dict[str, str]:
        """A group of text attributes as a dict."""
        if name not in file or not isinstance(file[name], h5py.Group):
            raise self.fail(f"group '/{name}' is missing; the file is damaged")
        values = {}
        for key, value in file[name].attrs.items():
            values[key] = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        return values


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a fingerprint file.

    Returns:
        {"seed", "created", "environment", "notes", "initial", "epochs", "batches",
        "format_version", "planned_epochs"}.

    Raises:
        ReferenceFileError: naming the file and what is wrong with it.
    """
    return _Reader(path).read()
