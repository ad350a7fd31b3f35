"""The layer trace file: HDF5 beside the fingerprint format, checksummed the same way.

Schema (format "keras_repro.trace", version 1)::

    bytes 0-511     HDF5 user block: "keras_repro.trace\\nsha256 <64 hex>\\n", padded with
                    NUL bytes; the SHA-256 of every byte after it
    /               attrs: format, format_version, and the trace's meta (steps,
                    batch_size, backend, created, keras_repro_version)
    /environment    attrs: {name: text} (`keras_repro.fingerprinting.environment`)
    /entries        datasets, one row per entry, steps in order, each in execution order:
                      step (int64; -1: the variables before the first step),
                      kind (utf-8: input, output, loss, gradient, variable),
                      name (utf-8), lanes (uint32, rows x 2: the batch checksum),
                      input_lanes (uint32, rows x 2: of a layer call's inputs),
                      stats (float64, rows x 3: mean, abs_max, non_finite)

A file is written to a temporary file in its folder, sealed, fsync'ed and renamed over the
target, as fingerprint files are; reading checks the SHA-256 before HDF5 parses a byte, then
every field, so a damaged file raises `ReferenceFileError` naming the file and the field.
"""

from __future__ import annotations

import os
import tempfile

import h5py
import numpy as np

from keras_repro.errors import ReferenceFileError
from keras_repro.store import file_access, hdf5
from keras_repro.trace.entries import KINDS, STAT_NAMES, Trace

FORMAT_NAME = "keras_repro.trace"
FORMAT_VERSION = 1
USER_BLOCK = hdf5.USER_BLOCK  # the same user block as a fingerprint file: `body_digest` hashes what follows it
WHAT = "Trace file"
COLUMNS = {"step": (np.int64, 1), "kind": (str, 1), "name": (str, 1), "lanes": (np.uint32, 2),
           "input_lanes": (np.uint32, 2), "stats": (np.float64, len(STAT_NAMES))}


def _fail(path: str | os.PathLike, reason: str) -> ReferenceFileError:
    return ReferenceFileError(path, reason, what=WHAT)


def is_trace_file(path: str | os.PathLike) -> bool:
    """Whether `path` starts with a trace file's header (damaged further on or not)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(FORMAT_NAME) + 1) == f"{FORMAT_NAME}\n".encode()
    except OSError:
        return False


def _header(digest: str) -> bytes:
    return f"{FORMAT_NAME}\nsha256 {digest}\n".encode("ascii").ljust(USER_BLOCK, b"\0")


def write_trace(path: str | os.PathLike, trace: Trace) -> None:
    """Writes `trace` to `path` atomically (temporary file, seal, fsync, rename).

    Raises:
        ReferenceFileError: If `path` is a folder, read-only, a file keras_repro did not
            write as a trace, or the write fails; an existing file is then left as it is.

    Example:

    >>> write_trace("trace.h5", kr.trace_layers(model, x, y))   # doctest: +SKIP
    """
    target = os.path.abspath(os.fspath(path))
    file_access.check_path(path)
    file_access.make_folder(path)
    reason = file_access.read_only(target)
    if reason is not None:
        raise _fail(path, f"cannot be written: {reason}; it is left as it is. Write to another path. "
                          f"Received: path={os.fspath(path)!r}")
    if os.path.exists(target) and os.path.getsize(target) > 0 and not is_trace_file(target):
        raise _fail(path, "exists and is not a keras_repro trace file; it is left as it is. Pass another path. "
                          f"Received: path={os.fspath(path)!r}")
    folder = os.path.dirname(target)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
        os.close(handle)
    except OSError as error:
        raise _fail(path, f"cannot be written: {error.strerror or error}. Write to a writable folder. "
                          f"Received: path={os.fspath(path)!r}") from error
    try:
        with h5py.File(temporary, "w", userblock_size=USER_BLOCK) as file:
            file.attrs["format"] = FORMAT_NAME
            file.attrs["format_version"] = FORMAT_VERSION
            for key, value in trace.meta.items():
                file.attrs[key] = str(value)
            environment = file.create_group("environment")
            for key, value in trace.environment.items():
                environment.attrs[key] = str(value)
            group = file.create_group("entries")
            text = h5py.string_dtype("utf-8")
            group.create_dataset("step", data=trace.step.astype(np.int64))
            group.create_dataset("kind", data=list(trace.kind), dtype=text)
            group.create_dataset("name", data=list(trace.name), dtype=text)
            group.create_dataset("lanes", data=trace.lanes.astype(np.uint32).reshape(-1, 2))
            group.create_dataset("input_lanes", data=trace.input_lanes.astype(np.uint32).reshape(-1, 2))
            group.create_dataset("stats", data=trace.stats.astype(np.float64).reshape(-1, len(STAT_NAMES)))
        with open(temporary, "rb+") as sealed:
            digest = hdf5.body_digest(sealed)
            sealed.seek(0)
            sealed.write(_header(digest))
            sealed.flush()
            os.fsync(sealed.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and not isinstance(error, ReferenceFileError):
            raise _fail(path, f"cannot be written: {error.strerror or error}; the previous file is unchanged. "
                              f"Received: path={os.fspath(path)!r}") from error
        raise


def read_trace(path: str | os.PathLike) -> Trace:
    """Reads and validates a trace file.

    Raises:
        ReferenceFileError: Missing, not a trace file, damaged, or a field of the wrong form
            (the message names the file and the field, and ends with what it received).

    Example:

    >>> read_trace("trace.h5").steps   # doctest: +SKIP
    3
    """
    file_access.check_path(path)
    if not os.path.exists(path):
        raise _fail(path, f"does not exist. Write one with keras_repro.trace_layers(..., path=...). "
                          f"Received: path={os.fspath(path)!r}")
    if not is_trace_file(path):
        raise _fail(path, "is not a keras_repro trace file (its first bytes are not a trace header). Pass a file "
                          "written by keras_repro.trace_layers. Received: path=" + repr(os.fspath(path)))
    try:
        with open(path, "rb") as handle:
            head = handle.read(USER_BLOCK)
            lines = head.rstrip(b"\0").decode("ascii", "replace").split("\n")
            digest = lines[1][len("sha256 "):] if len(lines) > 1 and lines[1].startswith("sha256 ") else ""
            if len(digest) != 64 or _header(digest) != head:
                raise _fail(path, "has a damaged header (bytes 0-511). Trace again. Received: header="
                                  + repr(head.rstrip(b"\0")[:80]))
            actual = hdf5.body_digest(handle)
    except OSError as error:
        raise _fail(path, f"cannot be read: {error.strerror or error}. Received: path={os.fspath(path)!r}") from None
    if actual != digest:
        raise _fail(path, "is damaged or was changed after keras_repro wrote it: the SHA-256 of its contents does "
                          f"not match the one in its header. Trace again. Received: sha256={actual[:16]}...")
    try:
        with h5py.File(path, "r") as file:
            return _parse(path, file)
    except OSError as error:
        raise _fail(path, f"cannot be read as HDF5 ({error}); the file is damaged. Trace again. "
                          f"Received: path={os.fspath(path)!r}") from None


def _parse(path: str | os.PathLike, file: h5py.File) -> Trace:
    """The validated `Trace` of an open file."""
    version = file.attrs.get("format_version")
    if file.attrs.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
        raise _fail(path, f"field 'format_version' must be {FORMAT_VERSION}: this keras_repro reads trace files "
                          f"of that version. Received: format_version={version!r}")
    if "entries" not in file or not isinstance(file["entries"], h5py.Group):
        raise _fail(path, "field 'entries' is missing; the file is damaged. Received: fields=" + repr(sorted(file)))
    group, columns, rows = file["entries"], {}, None
    for name, (kind, width) in COLUMNS.items():
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise _fail(path, f"field 'entries/{name}' is missing; the file is damaged. Received: "
                              f"fields={sorted(group)!r}")
        data = group[name]
        values = data.asstr()[()] if kind is str and data.dtype.kind == "O" else data[()]
        shape = (len(values),) if width == 1 else (len(values), width)
        good = np.shape(values) == shape and (kind is str and np.asarray(values).dtype.kind == "O"
                                              or kind is not str and np.asarray(values).dtype == kind)
        if not good or (rows is not None and len(values) != rows):
            raise _fail(path, f"field 'entries/{name}' must hold {rows if rows is not None else 'one row per entry'} "
                              f"rows of {'text' if kind is str else np.dtype(kind).name}"
                              f"{'' if width == 1 else f' x {width}'}; the file is damaged. Received: "
                              f"shape={np.shape(values)}, dtype={np.asarray(values).dtype}")
        rows = len(values)
        columns[name] = values
    bad = sorted({k for k in columns["kind"]} - set(KINDS))
    if bad:
        raise _fail(path, f"field 'entries/kind' holds unknown kinds (known: {', '.join(KINDS)}); the file is "
                          f"damaged. Received: kind={bad[0]!r}")
    steps = columns["step"]
    if steps.size and (np.any(np.diff(steps) < 0) or steps.min() < -1):
        raise _fail(path, "field 'entries/step' must count up from -1; the file is damaged. Received: "
                          f"step={steps.tolist()[:8]}")
    meta = {key: str(value) for key, value in file.attrs.items() if key not in ("format", "format_version")}
    environment = {key: str(value) for key, value in file["environment"].attrs.items()} if "environment" in file else {}
    return Trace(steps, tuple(str(k) for k in columns["kind"]), tuple(str(n) for n in columns["name"]),
                 columns["lanes"], columns["input_lanes"], columns["stats"], meta, environment)
