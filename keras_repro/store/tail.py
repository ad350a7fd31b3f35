"""The header of a fingerprint file and its append-only tail: how a recording adds an epoch
at a cost that does not grow with the epochs already in the file.

A file is its 512-byte header (the HDF5 user block), the HDF5 part, and, while a recording
runs, a tail of records appended after the HDF5 part::

    keras_repro.fingerprinting.digests\\n
    sha256 <SHA-256 of the HDF5 part>\\n
    tail <start> <end> <count> <chain>\\n     (only while the file has a tail)

`start` is where the HDF5 part ends and the records begin, `end` where the last complete
record ends, `count` the number of records and `chain` the hash chain over them
(chain_0 = the HDF5 part's SHA-256, chain_k = SHA-256(chain_k-1 + SHA-256 of record k)).
A record is a frame: b"KRTAIL01", the payload's length (8 bytes, little endian), the
payload's SHA-256 (32 bytes), then the payload (a small HDF5 image holding the new epochs;
see `keras_repro.store.hdf5`). The HDF5 library ignores the tail: an HDF5 tool sees the epochs
of the HDF5 part only, until the recording ends and `keras_repro.store.hdf5.fold` rewrites the
file whole. A file without a tail has the two-line header of format version 3 as before.

An append writes the record after `end`, fsyncs it, then writes the header (one 512-byte
write) and fsyncs again: a process killed in between leaves bytes after `end`, which
readers ignore and the next writer replaces, and the header still describes the previous,
complete file. Before the first append the header switches to the tail form with no
records, so the file is valid at every step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from typing import Any, BinaryIO

from keras_repro.errors import ReferenceFileError

FORMAT_NAME = "keras_repro.fingerprints"  # the format's name in every file (not a module path)
USER_BLOCK = 512
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAGIC = b"KRTAIL01"
FRAME = struct.Struct("<8sQ32s")
"""A record's frame: magic, payload length, SHA-256 of the payload."""


@dataclasses.dataclass(frozen=True)
class Header:
    """A parsed header: the HDF5 part's SHA-256 and, for a file with a tail, the tail's
    `start`, `end`, record `count` and hash `chain` (`start` is None without a tail)."""

    digest: str
    start: int | None = None
    end: int | None = None
    count: int = 0
    chain: str = ""

    @property
    def has_tail(self) -> bool:
        return self.start is not None

    def block(self) -> bytes:
        """The 512 bytes of this header."""
        text = f"{FORMAT_NAME}\nsha256 {self.digest}\n"
        if self.has_tail:
            text += f"tail {self.start} {self.end} {self.count} {self.chain}\n"
        return text.encode("ascii").ljust(USER_BLOCK, b"\0")


def header_block(digest: str) -> bytes:
    """The header of a file without a tail whose HDF5 part has SHA-256 `digest`."""
    return Header(digest).block()


def parse_header(head: bytes) -> Header | None:
    """The header in `head` (the file's first 512 bytes), or None if it is not one exactly
    as `Header.block` writes it."""
    text = head.rstrip(b"\0").decode("ascii", "replace")
    lines = text.split("\n")
    try:
        if lines[0] != FORMAT_NAME or not lines[1].startswith("sha256 "):
            return None
        digest = lines[1][len("sha256 ") :]
        if len(lines) == 3:
            header = Header(digest)
        elif len(lines) == 4 and lines[2].startswith("tail "):
            start, end, count, chain = lines[2][len("tail ") :].split(" ")
            header = Header(digest, int(start), int(end), int(count), chain)
        else:
            return None
    except (IndexError, ValueError):
        return None
    if len(digest) != 64 or (header.has_tail and len(header.chain) != 64) or header.block() != head:
        return None
    return header


def foreign(path: str | os.PathLike) -> str | None:
    """Why the existing file `path` is not a keras_repro fingerprint file, or None when it is
    one: a file is keras_repro's when it starts with the first line of its header (every
    file keras_repro writes does, from its first write on), damaged further on or not.

    Raises:
        ReferenceFileError: If the file cannot be read.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(FORMAT_NAME) + 1)
    except OSError as error:
        raise ReferenceFileError(path, f"cannot be read: {error.strerror or error}") from None
    if not head:
        return "is empty (0 bytes): not a keras_repro fingerprint file"
    if head.startswith(HDF5_SIGNATURE):
        return (
            "is an HDF5 file without a keras_repro header, not a keras_repro fingerprint file: a file of "
            "another program (such as Keras' save_weights or a legacy .h5 model), or a fingerprint file "
            "of format version 1"
        )
    if head.startswith(b"keras_repro.trace\n"):
        return ("is a keras_repro layer trace (kr.trace_layers), not a fingerprint file: compare two traces with "
                "`keras-repro diff A.h5 B.h5` or kr.compare_traces")
    if head != f"{FORMAT_NAME}\n".encode():
        return "is not a keras_repro fingerprint file (its first bytes are not a keras_repro header)"
    return None


def refuse_foreign(path: str | os.PathLike) -> None:
    """Raises the one error every mode and every write gives for a file keras_repro did not
    write (`foreign`), which it leaves as it is."""
    reason = foreign(path)
    if reason is not None:
        raise ReferenceFileError(
            path, f"{reason}. keras_repro reads and writes only its own fingerprint files; this one is left "
            "as it is: pass another path (a new one to record to)",
        )


def chain_next(chain: str, record_digest: bytes) -> str:
    """The hash chain after one more record."""
    return hashlib.sha256(bytes.fromhex(chain) + record_digest).hexdigest()


def read_records(handle: BinaryIO, header: Header, size: int) -> list[bytes]:
    """The tail's record payloads, each checked against its frame, the chain and the header.

    Raises:
        ValueError: Saying what is wrong (the caller names the file).
    """
    if not header.has_tail:
        return []
    if not USER_BLOCK < header.start <= header.end <= size:
        raise ValueError(f"its header places the tail at bytes {header.start}-{header.end} of {size}")
    payloads, chain, position = [], header.digest, header.start
    handle.seek(position)
    for index in range(header.count):
        frame = handle.read(FRAME.size)
        if len(frame) != FRAME.size:
            raise ValueError(f"tail record {index} is cut short")
        magic, length, digest = FRAME.unpack(frame)
        if magic != MAGIC or position + FRAME.size + length > header.end:
            raise ValueError(f"tail record {index} at byte {position} has a damaged frame")
        payload = handle.read(length)
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError(f"tail record {index} at byte {position} does not match its SHA-256")
        chain = chain_next(chain, digest)
        payloads.append(payload)
        position += FRAME.size + length
    if position != header.end or chain != header.chain:
        raise ValueError("its tail records do not match the header's count, end or hash chain")
    return payloads


def signature(handle: Any) -> tuple[int, ...]:
    """What identifies a file's current content without reading it (device, inode, size,
    modification time): a changed signature means another writer changed it."""
    status = os.fstat(handle.fileno())
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


@dataclasses.dataclass
class WriteState:
    """What this process last wrote to one file, so the next write may append to it.

    `run` identifies the run (seed, creation time, environment, notes, initial digest);
    `epochs`, `batches` count the fingerprints in the file and `last_epoch`, `last_batch`
    are the digests of the last ones; `planned` is the stored `planned_epochs`.
    """

    signature: tuple[int, ...] | None = None
    header: Header | None = None
    run: tuple | None = None
    epochs: int = 0
    last_epoch: str | None = None
    batches: int = 0
    last_batch: str | None = None
    planned: int | None = None

    def forget(self) -> None:
        """After a failed or foreign write: the next write rewrites the file whole."""
        self.signature = self.header = self.run = None

    def current(self, path: str) -> bool:
        """Whether the file at `path` is still exactly what this state describes."""
        if self.signature is None or self.header is None:
            return False
        try:
            with open(path, "rb") as handle:
                return signature(handle) == self.signature
        except OSError:
            return False


def append_record(path: str, state: WriteState, payload: bytes) -> None:
    """Appends one record to the file `state` describes and updates the header and `state`.

    Raises:
        OSError: If a write fails; the file then still holds what it held before.
    """
    with open(path, "rb+") as handle:
        header = state.header
        if not header.has_tail:
            start = os.fstat(handle.fileno()).st_size
            header = Header(header.digest, start, start, 0, header.digest)
            _write_header(handle, header)
        digest = hashlib.sha256(payload).digest()
        handle.seek(header.end)
        handle.write(FRAME.pack(MAGIC, len(payload), digest) + payload)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())
        header = Header(
            header.digest, header.start, header.end + FRAME.size + len(payload), header.count + 1,
            chain_next(header.chain, digest),
        )
        _write_header(handle, header)
        state.header, state.signature = header, signature(handle)


def _write_header(handle: BinaryIO, header: Header) -> None:
    """Writes the header in one 512-byte write at offset 0, durably."""
    handle.seek(0)
    handle.write(header.block())
    handle.flush()
    os.fsync(handle.fileno())
