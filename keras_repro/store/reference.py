"""A reference file as `SeedCallback` uses it: its path, its lock, reading and writing it.

Only keras_repro's own fingerprint files are used: any other file at the path is refused
before anything is created beside it (`exists`). Recording takes an OS lock (`.NAME.lock`
beside the file, via `filelock`; the kernel releases it when the process dies), so a
second recorder gets a clear error instead of interleaving its epochs. Verifying needs
no write access: it checks that no recorder holds the lock where it can, and reads the
file as it is where it cannot (a read-only checkout). Whether the file or its folder may
be written is `keras_repro.store.file_access`'s decision (`read_only`). Within one process a
lock is owned by one fit at a time: a fit that was interrupted (an exception, a stopped
notebook cell) leaves its lock to the next fit of the same thread, which takes it over.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any

import filelock

from keras_repro.errors import ReferenceFileError
from keras_repro.store import file_access
from keras_repro.store import hdf5 as store
from keras_repro.store import tail as store_tail
from keras_repro.store.log import FingerprintLog, load_fingerprints

logger = logging.getLogger(__name__)


def normalize_path(reference: Any) -> str | None:
    """The reference path as `SeedCallback` uses it: `~` expanded; None stays None.

    Raises:
        ValueError: For an empty path or something that is not a path.
        ReferenceFileError: For a path that names a folder, or one under a file.
    """
    if reference is None:
        return None
    if not isinstance(reference, (str, os.PathLike)):
        raise ValueError(
            "`reference` must be the path of a fingerprint file (e.g. 'run.h5') or None. "
            f"Received: reference={reference!r}"
        )
    path = os.path.expanduser(os.fspath(reference))
    if not path.strip():
        raise ValueError(
            "`reference` must be the path of a fingerprint file (e.g. 'run.h5'), or None to keep "
            f"the fingerprints in memory only. Received: reference={reference!r}"
        )
    file_access.check_path(path)
    return path


def lock_path(reference: str) -> str:
    """The lock file that guards a reference: `.NAME.lock` beside it."""
    folder, name = os.path.split(os.path.abspath(reference))
    return os.path.join(folder, f".{name}.lock")


@dataclasses.dataclass
class _Holder:
    """Who holds a reference's lock in this process."""

    lock: filelock.FileLock
    thread: int


_held: dict[str, _Holder] = {}
_held_guard = threading.Lock()


class ReferenceFile:
    """One reference file: where it is, whether this process may write it, what it holds.

    Args:
        path: The file, as `normalize_path` returns it.

    Example:

    >>> reference = ReferenceFile("run.h5")        # doctest: +SKIP
    >>> reference.lock(required=False)             # doctest: +SKIP
    True
    >>> reference.read().epochs[-1].epoch          # doctest: +SKIP
    4
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock: filelock.FileLock | None = None
        self._written = store.WriteState()
        self.lock_failure: str | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock is not None

    def exists(self) -> bool:
        """Whether a fingerprint file is there: an empty file (0 bytes, such as one that
        `tempfile` or `touch` made) holds nothing to lose, and counts as none.

        Raises:
            ReferenceFileError: If the path is a folder or under a file, or names a file
                keras_repro did not write (left as it is).
        """
        file_access.check_path(self.path)
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return False
        store_tail.refuse_foreign(self.path)
        return True

    def read_only(self) -> str | None:
        """Why the file (or its folder) must not be written, or None (`file_access.read_only`)."""
        return file_access.read_only(self.path)

    def read(self) -> FingerprintLog:
        """The recorded run (`ReferenceFileError` if it is missing or damaged)."""
        return load_fingerprints(self.path)

    def lock(self, required: bool) -> bool:
        """Takes the lock without waiting; returns whether it is held.

        Args:
            required: True to record: any failure raises. False to verify: a lock held
                by a recorder still raises, but a folder where no lock can be made
                (read-only) returns False, since no recorder can write there either;
                `lock_failure` then says why.

        Raises:
            ReferenceFileError: If another process, or another fit of this process
                running in another thread, holds the lock; or (`required`) if the
                lock cannot be made, or a missing folder cannot be created.
        """
        if self._lock is not None:
            return True
        key = lock_path(self.path)
        with _held_guard:
            holder = _held.get(key)
            if holder is not None and holder.thread != threading.get_ident():
                raise ReferenceFileError(
                    self.path,
                    "is being recorded by another fit of this process (in another thread). Wait for "
                    "that fit to finish, or record to another file",
                )
            if holder is not None:  # a fit of this thread was interrupted and left it locked
                logger.info("Taking over the lock of %s from an interrupted fit", self.path)
                holder.lock.release()
                del _held[key]
            if required:
                file_access.make_folder(self.path)
            lock = filelock.FileLock(key)
            # A folder the user made read-only gets no lock file, also where the system allows it.
            self.lock_failure = file_access.read_only(os.path.dirname(key))
            if self.lock_failure is None:
                try:
                    lock.acquire(timeout=0)
                except filelock.Timeout:
                    raise ReferenceFileError(
                        self.path,
                        f"is being recorded by another process (it holds '{key}'). Wait for that fit to "
                        "finish, or record to another file",
                    ) from None
                except OSError as error:
                    self.lock_failure = f"its lock '{key}' cannot be created ({error.strerror or error})"
            if self.lock_failure is not None:
                if not required:
                    logger.info("Reading %s without its lock: %s", self.path, self.lock_failure)
                    return False
                raise ReferenceFileError(
                    self.path, f"cannot be recorded: {self.lock_failure}. Record to a writable folder"
                )
            _held[key] = _Holder(lock, threading.get_ident())
            self._lock = lock
        return True

    def release(self) -> None:
        """Releases the lock, if this object holds it."""
        if self._lock is None:
            return
        with _held_guard:
            key = lock_path(self.path)
            holder = _held.get(key)
            if holder is not None and holder.lock is self._lock:
                del _held[key]
            self._lock.release()
            self._lock = None

    def remove_stale_temporaries(self) -> None:
        """Deletes temporaries left by killed writes (only while holding the lock)."""
        if self._lock is not None:
            store.remove_stale_temporaries(self.path)

    def write(self, log: FingerprintLog, whole: bool = False) -> None:
        """Writes `log` to the file (the lock must be held): appended when it only adds to
        what this object wrote last, else (or if `whole`) the file is replaced atomically."""
        if self._lock is None:
            raise RuntimeError(f"ReferenceFile.write without the lock of '{self.path}'")
        if whole:
            self._written.forget()
        store.write_run(self.path, **_run(log), state=None if whole else self._written)

    def fold(self, log: FingerprintLog) -> None:
        """After a recording that stopped before its last write: rewrites the file whole if
        epochs were appended, so HDF5 tools see them too. A failure is logged: the file is
        valid either way."""
        if self._lock is None:
            return
        try:
            store.fold(self.path, self._written, **_run(log))
        except ReferenceFileError as error:
            logger.warning("Could not fold the appended epochs of %s into its HDF5 part: %s", self.path, error)


def _run(log: FingerprintLog) -> dict[str, Any]:
    """The fields of `log` as `store.write_run` takes them."""
    return {
        "seed": log.seed, "environment": log.environment, "initial": log.initial, "epochs": list(log.epochs),
        "notes": log.notes, "created": log.created, "batches": list(log.batches),
        "planned_epochs": log.planned_epochs, "config": log.config,
    }
