"""Reading a fingerprint file (the schema is in `keras_repro.store.hdf5`): every byte checked
against the header's SHA-256 before HDF5 parses one, then the whole schema and every digest,
so a damaged or edited file raises `ReferenceFileError` instead of a wrong verdict or a hang."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import h5py
import numpy as np

from keras_repro.errors import ReferenceFileError
from keras_repro.fingerprinting.digests import (
    PARTS,
    STAT_NAMES,
    Fingerprint,
    VariableDigest,
    make_fingerprint,
)
from keras_repro.seeding import MAX_SEED
from keras_repro.store.file_access import check_path
from keras_repro.store.hdf5 import (
    BATCH_METHODS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MIN_FORMAT_VERSION,
    USER_BLOCK,
)
from keras_repro.store.tail import foreign, parse_header, read_records


class _Reader:
    """Reads and validates one file; every problem becomes a `ReferenceFileError`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.version = FORMAT_VERSION
        self.tail: list[bytes] = []

    def fail(self, reason: str) -> ReferenceFileError:
        """The error to raise for `reason`."""
        return ReferenceFileError(self.path, reason)

    def check_file(self) -> None:
        """Checks the path, existence and the header's checksum before h5py sees the file."""
        check_path(self.path)
        if not os.path.exists(self.path):
            raise self.fail(
                "does not exist. Record one first (SeedCallback(mode='record') or mode='auto')"
            )
        self.check_seal()

    def check_seal(self) -> None:
        """Checks the user block's checksum of everything after it, so HDF5 only ever
        parses bytes exactly as keras_repro wrote them."""
        reason = foreign(self.path)
        if reason is not None:
            raise self.fail(f"{reason}. Pass a fingerprint file recorded by SeedCallback")
        head = self._read(lambda handle: handle.read(USER_BLOCK))
        header = parse_header(head)
        if header is None:
            raise self.fail("has a damaged keras_repro header (bytes 0-511). Record it again")

        def check(handle: Any) -> list[bytes]:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(USER_BLOCK)
            hasher, remaining = hashlib.sha256(), (header.start if header.has_tail else size) - USER_BLOCK
            while remaining > 0:
                block = handle.read(min(remaining, 1 << 20))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)
            if remaining or hasher.hexdigest() != header.digest:
                raise self.fail(
                    "is damaged or was changed after keras_repro wrote it: the SHA-256 of its contents "
                    "does not match the one in its header. Record it again, or restore it from a backup"
                )
            try:
                return read_records(handle, header, size)
            except ValueError as error:
                raise self.fail(
                    f"is damaged: {error} (the epochs a recording appended). Record it again, or restore "
                    "it from a backup"
                ) from None

        self.tail = self._read(check)

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
        if not (seed == -1 or 0 <= seed <= MAX_SEED):
            raise self.fail(f"has seed {seed}, outside [0, {MAX_SEED}] (or -1 for none); the file is damaged")
        created = self.attr(file, "created", (str,), "/")
        planned = self.attr(file, "planned_epochs", (int,), "/") if "planned_epochs" in file.attrs else None
        if planned is not None and planned < 1:
            raise self.fail(f"has planned_epochs {planned}, expected a positive count; the file is damaged")
        environment = self._text_attrs(file, "environment")
        notes = self._text_attrs(file, "notes")
        config = self._text_attrs(file, "config") if "config" in file else None
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
        for index, payload in enumerate(self.tail):
            planned = self._tail_record(index, payload, epochs, batches, planned)
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
            "config": config,
            "initial": initial,
            "epochs": epochs,
            "format_version": version,
            "planned_epochs": planned,
        }

    def _tail_record(
        self, index: int, payload: bytes, epochs: list[Fingerprint], batches: list[Fingerprint], planned: int | None
    ) -> int | None:
        """Adds the epochs and batches of tail record `index` (checked as in the HDF5 part,
        and following what came before); returns `planned_epochs` after it."""
        where = f"tail record {index}"
        try:
            record = h5py.File(io.BytesIO(payload), "r")
        except (OSError, ValueError) as error:
            raise self.fail(f"{where} cannot be opened as HDF5: {error}") from None
        with record:
            if "planned_epochs" in record.attrs:
                planned = self.attr(record, "planned_epochs", (int,), where)
            for key in sorted(record.get("epochs", {})):
                fingerprint = self.fingerprint(record["epochs"][key], f"{where} /epochs/{key}")
                if fingerprint.epoch is None or f"{fingerprint.epoch:05d}" != key or (
                    epochs and fingerprint.epoch <= epochs[-1].epoch
                ):
                    raise self.fail(f"{where} holds epoch {fingerprint.epoch} out of order; the file is damaged")
                epochs.append(fingerprint)
            for key in sorted(record.get("batches", {})):
                found = self.batches(record["batches"][key])
                if any(f"{b.epoch:05d}" != key for b in found):
                    raise self.fail(f"{where} '/batches/{key}' holds epoch {found[0].epoch}; the file is damaged")
                batches.extend(found)
        return planned

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
        {"seed", "created", "environment", "notes", "config" (None: not recorded), "initial",
        "epochs", "batches", "format_version", "planned_epochs"}.

    Raises:
        ReferenceFileError: naming the file and what is wrong with it.
    """
    return _Reader(path).read()
