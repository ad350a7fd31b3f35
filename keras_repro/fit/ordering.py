"""Data order and validation splits as pure functions of (seed, epoch).

Nothing here reads global state: the same arguments give the same indices in any
process, on any backend.
"""

from __future__ import annotations

import math

import numpy as np

from keras_repro.seeding import seed_for

SPLIT_MODES = ("last", "shuffled", "stratified")


def _generator(seed: int, key: str, *numbers: int) -> np.random.Generator:
    """A NumPy generator seeded from (seed, key, *numbers) alone (`SEED_KEYS`)."""
    return np.random.Generator(np.random.PCG64(seed_for(seed, key, *numbers)))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool | str = True, batch_size: int = 32) -> np.ndarray:
    """The positions (0..n-1) of the training rows in the order epoch `epoch` visits them.

    Args:
        n: Number of training rows.
        seed: The run's seed.
        epoch: The 0-based epoch.
        shuffle: False keeps the order; True permutes all rows; "batch" keeps rows in
            batch-sized contiguous chunks, visiting the chunks in a shuffled order and
            the rows of each chunk in a shuffled order (for data read in chunks).
        batch_size: Chunk size for `shuffle="batch"`.

    Returns:
        An int64 array, a permutation of `range(n)`.

    Example:

    >>> epoch_order(5, seed=7, epoch=0, shuffle=False).tolist()
    [0, 1, 2, 3, 4]
    >>> sorted(epoch_order(5, seed=7, epoch=1).tolist())
    [0, 1, 2, 3, 4]
    """
    if shuffle is False or shuffle is None:
        return np.arange(n, dtype=np.int64)
    rng = _generator(seed, "order", epoch)
    if shuffle == "batch":
        starts = np.arange(0, n, batch_size)
        pieces = []
        for start in starts[rng.permutation(len(starts))]:
            chunk = np.arange(start, min(start + batch_size, n), dtype=np.int64)
            pieces.append(chunk[rng.permutation(len(chunk))])
        return np.concatenate(pieces) if pieces else np.arange(0, dtype=np.int64)
    if shuffle is True:
        return rng.permutation(n).astype(np.int64)
    raise ValueError(f"`shuffle` must be True, False or 'batch'. Received: shuffle={shuffle!r}")


def split_indices(
    n: int,
    validation_split: float,
    mode: str = "last",
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices, both sorted.

    Args:
        n: Number of rows.
        validation_split: Fraction in [0, 1) held out for validation.
        mode: "last" (Keras' behaviour: the last fraction, before any shuffling),
            "shuffled" (a seeded random subset) or "stratified" (a seeded random
            subset of each class, for class labels).
        seed: Seed for "shuffled" and "stratified".
        labels: Class labels for "stratified": integer ids of shape (n,) or one-hot
            of shape (n, classes).

    Returns:
        (train_rows, validation_rows) as sorted int64 arrays.

    Example:

    >>> train, val = split_indices(10, 0.2)
    >>> val.tolist()
    [8, 9]
    """
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"`validation_split` must be in [0, 1). Received: validation_split={validation_split}")
    if mode not in SPLIT_MODES:
        raise ValueError(f"`validation_split_mode` must be one of {SPLIT_MODES}. Received: validation_split_mode={mode!r}")
    split_at = int(math.floor(n * (1.0 - validation_split)))
    if mode == "last":
        return np.arange(split_at, dtype=np.int64), np.arange(split_at, n, dtype=np.int64)
    if mode == "shuffled":
        permutation = _generator(seed, "split").permutation(n)
        held_out = permutation[: n - split_at]
    else:
        classes = _class_ids(labels, n)
        held_out_parts = []
        for index, value in enumerate(np.unique(classes)):
            rows = np.flatnonzero(classes == value)
            take = int(round(len(rows) * validation_split))
            held_out_parts.append(rows[_generator(seed, "split", index).permutation(len(rows))[:take]])
        held_out = np.concatenate(held_out_parts)
    mask = np.zeros(n, dtype=bool)
    mask[held_out] = True
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def _class_ids(labels: np.ndarray | None, n: int) -> np.ndarray:
    """Integer class ids from integer or one-hot labels."""
    if labels is None:
        raise ValueError("validation_split_mode='stratified' needs class labels `y`. Received: y=None")
    labels = np.asarray(labels)
    if labels.shape[0] != n:
        raise ValueError(f"`y` has {labels.shape[0]} rows but `x` has {n}")
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    labels = labels.reshape(n, -1)[:, 0] if labels.ndim > 1 else labels
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise ValueError(
            "validation_split_mode='stratified' needs class labels (integer ids or one-hot); "
            "`y` holds non-integer values. Use validation_split_mode='shuffled' for regression targets."
        )
    return labels
