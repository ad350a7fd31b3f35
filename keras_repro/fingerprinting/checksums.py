"""Batch checksums: a 64-bit integer check of every variable, computed where it lives.

A batch fingerprint (`SeedCallback(every_n_batches=N)`) must cost little next to a
training step, so it does not copy weights to the host and hash them with SHA-256 as
the epoch fingerprint does. Each variable is reduced on its device, in one compiled
call for the whole model, to two 32-bit lanes over its words:

    word w_i   each element's bits as an unsigned 32-bit integer: 4-byte elements as
               they are, 8-byte elements as two words (low, then high), 1- and 2-byte
               elements zero-extended; i counts words in row-major order
    lane 0     sum of w_i
    lane 1     sum of fmix32(w_i + i * 0x9E3779B9)
               (all arithmetic on unsigned 32-bit integers, mod 2**32)

`fmix32` is MurmurHash3's finalizer (a bijection of 32-bit integers). Integer sums are
exact and do not depend on the order of the additions, so every device and backend
gets the same lanes for the same bits. Lane 0 changes whenever a single word changes
(one float32 value, or half of a float64); any other difference goes unnoticed only if both lanes cancel, which for
differences that are not built to do so happens about once in 2**32 compared
variables. The epoch fingerprint (SHA-256 of every byte) still checks the same state
at the end of the epoch: a batch check locates a divergence, the epoch check proves
its absence.

`lanes` below is the definition, in NumPy; `keras_repro._backend.checksum_function`
computes the same on each backend, and the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METHOD = "checksum64-v1"
"""Name of this definition, stored with batch fingerprints (see `store`)."""

PHI = 0x9E3779B9
FMIX_1 = 0x85EBCA6B
FMIX_2 = 0xC2B2AE35
DIGEST_BYTES = 8
"""Bytes of a variable's batch digest: lane 0 then lane 1, each little-endian."""


def words(array: np.ndarray) -> np.ndarray:
    """The array's words as defined above: a flat uint32 array. Types NumPy lacks and `ml_dtypes`
    adds (bfloat16, the float8 types: NumPy kind "V") count by their bits, as their 1- or
    2-byte integers."""
    array = np.ascontiguousarray(array).reshape(-1)
    size = array.dtype.itemsize
    if array.dtype.kind not in "biufcV" or size not in (1, 2, 4, 8) or array.dtype.fields is not None:
        raise TypeError(f"cannot checksum an array of dtype {array.dtype}")
    if array.dtype.kind == "V":  # ml_dtypes' types are native-endian, like the machines that run them
        return array.view(f"u{size}").astype(np.uint32, copy=False) if size < 8 else array.view("<u4")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if size == 1:
        return little.view(np.uint8).astype(np.uint32)
    if size == 2:
        return little.view("<u2").astype(np.uint32)
    return little.view("<u4").astype(np.uint32, copy=False)


CHUNK_WORDS = 1 << 16
"""Words mixed at a time by `lanes` (256 KiB: the working set stays in the CPU cache)."""


def lanes(array: np.ndarray) -> np.ndarray:
    """The two checksum lanes of one array (uint32, shape (2,)): the definition.

    Example:

    >>> lanes(np.array([1.0], np.float32))
    array([1065353216, 2980753846], dtype=uint32)
    """
    w = words(array)
    plain = mixed = 0
    scratch = np.empty(min(w.size, CHUNK_WORDS), np.uint32)
    for start in range(0, w.size, CHUNK_WORDS):
        chunk = w[start : start + CHUNK_WORDS]
        h = np.arange(start, start + chunk.size, dtype=np.uint32)  # positions i
        np.multiply(h, np.uint32(PHI), out=h)
        np.add(h, chunk, out=h)
        _fmix32_inplace(h, scratch[: chunk.size])
        plain += int(chunk.sum(dtype=np.uint32))  # wraps around: the sum mod 2**32
        mixed += int(h.sum(dtype=np.uint32))
    return np.array([plain & 0xFFFFFFFF, mixed & 0xFFFFFFFF], dtype=np.uint32)


def _fmix32_inplace(h: np.ndarray, scratch: np.ndarray) -> None:
    """`fmix32` over a uint32 buffer, in place (`scratch` has its size)."""
    for shift, factor in ((16, FMIX_1), (13, FMIX_2), (16, None)):
        np.right_shift(h, np.uint32(shift), out=scratch)
        np.bitwise_xor(h, scratch, out=h)
        if factor is not None:
            np.multiply(h, np.uint32(factor), out=h)


class FlatLayout:
    """`lanes` of many arrays at once, as if their words were laid end to end.

    Faster than `lanes` per array where there are many small arrays (biases, optimizer
    scalars): the mixing runs over chunks of the whole sequence of words, a few NumPy
    calls a chunk, instead of a dozen calls per array. The same result, array by array.

    The work is in two stages, so a caller can run the second on another thread:
    `positioned` reads the arrays once, into a buffer of w_i + i * PHI (which is also a
    snapshot of them), and `mix` computes the lanes from that buffer. Lane 0 is summed
    from the buffer, less the sum of the positions i * PHI (a constant per array).

    Args:
        sizes: Words (`words(array).size`) of each array, in order.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = [int(n) for n in sizes]
        self.total = sum(self.sizes)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.chunk = CHUNK_WORDS
        self._ramp = np.arange(min(self.total, self.chunk), dtype=np.uint32) * np.uint32(PHI)  # i * PHI
        # sum of i * PHI over each array: PHI * n (n - 1) / 2, mod 2**32
        self._position_sums = np.array([(PHI * (n * (n - 1) // 2)) & 0xFFFFFFFF for n in self.sizes], np.uint32)
        self._scratch = np.empty(min(self.total, self.chunk), np.uint32)
        # (begin, end, rows, offsets, bounds): each chunk of the buffer and the arrays in it.
        # Few arrays (the common batch: x and y): `rows` is a slice of them, `bounds` where
        # each lies in the chunk (empty ones too), summed one by one; many: `rows` indexes the
        # non-empty ones and `offsets` where they start, for `reduceat` (which cannot sum an
        # empty piece)
        self._chunks = []
        first = 0
        for begin in range(0, self.total, self.chunk):
            end = min(begin + self.chunk, self.total)
            rows, offsets, index = [], [], first
            while index < len(self.sizes) and self.starts[index] < end:
                if min(self.starts[index + 1], end) > max(self.starts[index], begin):
                    rows.append(index)
                    offsets.append(int(max(self.starts[index], begin) - begin))
                if self.starts[index + 1] > end:
                    break
                index += 1
            first = index
            if rows and rows[-1] - rows[0] < _FEW_ARRAYS:
                span = range(rows[0], rows[-1] + 1)
                bounds = [(int(min(max(self.starts[r] - begin, 0), end - begin)),
                           int(min(max(self.starts[r + 1] - begin, 0), end - begin))) for r in span]
                self._chunks.append((begin, end, slice(span.start, span.stop), None, bounds))
            else:
                self._chunks.append((begin, end, np.array(rows, np.intp), np.array(offsets, np.intp), None))

    def positioned(self, arrays: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Stage 1: a uint32 buffer of `total` words holding w_i + i * PHI of every array
        (`arrays`: their `words`, in order)."""
        out = np.empty(self.total, np.uint32) if out is None else out
        ramp = self._ramp
        for index, w in enumerate(arrays):
            start, n = int(self.starts[index]), self.sizes[index]
            for lo in range(0, n, self.chunk):
                hi = min(lo + self.chunk, n)
                target = out[start + lo : start + hi]
                np.add(w[lo:hi], ramp[: hi - lo], out=target)
                if lo:  # positions continue: (lo + k) * PHI
                    np.add(target, np.uint32((lo * PHI) & 0xFFFFFFFF), out=target)
        return out

    def mix(self, buffer: np.ndarray) -> np.ndarray:
        """Stage 2: the lanes, uint32 (arrays, 2), from a `positioned` buffer (which it
        overwrites)."""
        result = np.zeros((len(self.sizes), 2), np.uint32)
        for begin, end, rows, offsets, bounds in self._chunks:
            h = buffer[begin:end]
            result[rows, 0] += _sums(h, offsets, bounds)
            _fmix32_inplace(h, self._scratch[: end - begin])
            result[rows, 1] += _sums(h, offsets, bounds)
        result[:, 0] -= self._position_sums
        return result

    def lanes(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """uint32 (arrays, 2): the lanes of each of `arrays` (their `words`)."""
        return self.mix(self.positioned(arrays))


_FEW_ARRAYS = 4
"""Up to this many arrays in a chunk, `FlatLayout` sums each slice instead of calling `reduceat`."""


def _sums(h: np.ndarray, offsets: np.ndarray | None, bounds: list[tuple[int, int]] | None) -> np.ndarray:
    """uint32 sums (mod 2**32) of pieces of `h`: from each of `offsets` to the next (`reduceat`,
    no piece empty), or each (start, stop) of `bounds`."""
    if bounds is None:
        return np.add.reduceat(h, offsets, dtype=np.uint32)
    return np.array([h[lo:hi].sum(dtype=np.uint32) for lo, hi in bounds], np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """`fmix32` of a uint32 array (a new array)."""
    h = np.array(h, dtype=np.uint32)
    _fmix32_inplace(h, np.empty_like(h))
    return h


def running_lanes(words_: np.ndarray, start: int = 0, before: np.ndarray | None = None) -> np.ndarray:
    """The lanes of every prefix of a sequence of words, uint32 (len(words_), 2): row k holds
    `lanes` of the words up to and including k. The sequence may go on from an earlier part:
    `start` words came before, whose lanes are `before`. Used to fold the checksums of the
    batches an input fed into one running checksum (`keras_repro.fit.fed_data`).

    Example:

    >>> w = np.array([7, 8, 9], np.uint32)
    >>> bool((running_lanes(w)[-1] == lanes(w)).all())
    True
    """
    w = np.asarray(words_, dtype=np.uint32).reshape(-1)
    positions = (np.arange(start, start + w.size, dtype=np.uint64) * PHI).astype(np.uint32)
    result = np.stack([np.cumsum(w, dtype=np.uint32), np.cumsum(fmix32(w + positions), dtype=np.uint32)], axis=1)
    if before is not None:
        result += np.asarray(before, dtype=np.uint32)
    return result


def lanes_to_digest(pair: Sequence[int] | np.ndarray) -> str:
    """A variable's batch digest (hex) from its two lanes."""
    return np.asarray(pair, dtype="<u4").tobytes().hex()


def digest_to_lanes(digest: str) -> np.ndarray:
    """The two lanes (uint32) of a batch digest."""
    return np.frombuffer(bytes.fromhex(digest), dtype="<u4").astype(np.uint32)


def expected_lanes(fingerprint: Any) -> np.ndarray | None:
    """The lanes (variables, 2) stored in a batch fingerprint, or None if it holds other digests."""
    if not fingerprint.records or any(len(r.digest) != 2 * DIGEST_BYTES for r in fingerprint.records):
        return None
    return np.stack([digest_to_lanes(r.digest) for r in fingerprint.records])
