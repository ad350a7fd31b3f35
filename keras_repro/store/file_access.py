"""Whether a reference path can be used and written: the one place that decides.

A folder where the reference file should be, or a file where one of its folders should be,
is a path problem (`ReferenceFileError` naming the path and the fix). A file or folder may
be written when the operating system allows it *and* its permission bits let someone write
it: as root (in containers and hosted notebooks) every write succeeds, so the bits `chmod`
set are the user's only word that a reference must stay as it is.
"""

from __future__ import annotations

import os
import stat

from keras_repro.errors import ReferenceFileError

_ANY_WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def check_path(path: str | os.PathLike) -> None:
    """Raises `ReferenceFileError` if `path` is a folder, or a folder above it is a file.

    Example:

    >>> check_path("notes.txt/run.h5")   # doctest: +SKIP
    ReferenceFileError: Fingerprint file 'notes.txt/run.h5': cannot be used: 'notes.txt' is a file, ...
    """
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise ReferenceFileError(path, "is a folder; pass the path of a file in it, such as 'run.h5'")
    above = _nearest_existing(os.path.dirname(target))
    if not os.path.isdir(above):
        raise ReferenceFileError(
            path, f"cannot be used: '{above}' is a file, not a folder. Pass a path in a folder, or move that file"
        )


def read_only(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be written, or None if it can.

    The file itself when it exists, else (and also) its folder; a missing folder is judged
    by the nearest folder above it that exists (where it would be created). Pass a folder
    to ask about the folder alone.

    Example:

    >>> os.chmod("run.h5", 0o444); read_only("run.h5")   # doctest: +SKIP
    "'/work/run.h5' is read-only (-r--r--r--)"
    """
    target = os.path.abspath(os.fspath(path))
    if os.path.exists(target):
        reason = _why_not_writable(target)
        if reason is not None or os.path.isdir(target):
            return reason
    return _why_not_writable(_nearest_existing(os.path.dirname(target)))


def make_folder(path: str | os.PathLike) -> None:
    """Creates the missing folders above the file `path`, as `ModelCheckpoint` does.

    Raises:
        ReferenceFileError: A folder above is a file, or the folder cannot be created
            (the nearest existing one is read-only, or the system refuses).
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if os.path.isdir(folder):
        return
    check_path(path)
    reason = read_only(folder)
    if reason is None:
        try:
            os.makedirs(folder, exist_ok=True)
            return
        except OSError as error:
            reason = error.strerror or str(error)
    raise ReferenceFileError(
        path, f"cannot be recorded: {reason}, so its folder '{folder}' cannot be created. Create that folder, "
        "or record to a writable folder",
    )


def _nearest_existing(folder: str) -> str:
    """`folder`, or the nearest path above it that exists (a file or a folder)."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def _why_not_writable(path: str) -> str | None:
    """Why the existing `path` cannot be written (its permission bits, or the system's
    answer for this user), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"'{path}' cannot be examined ({error.strerror or error})"
    if not mode & _ANY_WRITE:
        return f"'{path}' is read-only ({stat.filemode(mode)})"
    if not os.access(path, os.W_OK):
        return f"'{path}' is not writable by this user ({stat.filemode(mode)})"
    return None
