"""Seeding: one call that seeds every RNG a Keras program draws from, and a pure
function that derives independent seeds from a base seed and keys."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import struct
import sys

import numpy as np

from keras_repro.errors import HashRandomizationWarning, warn

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
"""Seeds are ints in [0, MAX_SEED]: the one definition of the range."""

SEED_KEYS = {
    "build": "every RNG, before a DeterministicModel creates its layers",
    "init": "a layer built before its model: its initial weights (with its position)",
    "init-variable": "a variable of such a layer its config does not rebuild, drawn by its initializer "
                     "(with the layer's position and the variable's)",
    "fit": "every RNG, at the start of a fit",
    "epoch": "every RNG, at the start of an epoch (with the epoch)",
    "layer-rng": "a layer SeedGenerator's state (with the epoch and the generator's position)",
    "input-rng": "a SeedGenerator a tf.data input draws from (with the epoch and its position in the pipeline)",
    "keras-rng": "Keras' global SeedGenerator's state (at a fit's start; at an epoch's start, with the epoch)",
    "order": "the order of an epoch's rows (with the epoch)",
    "split": "a seeded validation split (stratified: with the class's position)",
    "bisect": "every RNG, before bisect loads a checkpoint (with the epoch)",
}
"""What each seed keras_repro derives from the run's seed is for: `seed_for(seed, key, ...)`.
Changing a key changes every run's numbers, so they are fixed here, once."""


def validate_seed(seed: object, name: str = "seed") -> int:
    """Returns `seed` if it is an int in [0, 2**32 - 1], else raises a clear `ValueError`."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"`{name}` must be an integer in [0, {MAX_SEED}]. "
            f"Received: {name}={seed!r} (of type {type(seed).__name__})"
        )
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(
            f"`{name}` must be an integer in [0, {MAX_SEED}]; fold a larger value into range "
            f"with `keras_repro.derive_seed({seed})`. Received: {name}={seed}"
        )
    return int(seed)


def _encode_key(key: object) -> bytes:
    """Encodes one key with a type tag and a length prefix, so encodings never collide."""
    if isinstance(key, (bool, np.bool_)):
        tag, body = b"b", b"1" if key else b"0"
    elif isinstance(key, (int, np.integer)):
        tag, body = b"i", str(int(key)).encode("ascii")
    elif isinstance(key, str):
        tag, body = b"s", key.encode("utf-8")
    elif isinstance(key, bytes):
        tag, body = b"y", key
    else:
        raise TypeError(
            "derive_seed keys must be int, str or bytes, so the derived seed is the same "
            f"in every process. Received: key={key!r} (of type {type(key).__name__})"
        )
    return tag + struct.pack(">Q", len(body)) + body


def derive_seed(seed: int, *keys: int | str | bytes) -> int:
    """Derives a 32-bit seed from a base seed and any number of keys.

    Pure and stable: the result depends only on the arguments, never on
    `PYTHONHASHSEED`, the platform or the process (SHA-256, not `hash()`).
    Different keys give statistically independent seeds. The base seed may be any
    int, so `derive_seed(value)` also folds a larger value into [0, 2**32 - 1].

    Args:
        seed: The base seed, an int (a seed in [0, 2**32 - 1], or any larger value).
        *keys: ints, strs or bytes that name what the seed is for, e.g.
            `("order", epoch)`.

    Returns:
        An int in [0, 2**32 - 1].

    Example:

    >>> derive_seed(7, "order", 3) == derive_seed(7, "order", 3)
    True
    >>> derive_seed(7, "order", 3) == derive_seed(7, "order", 4)
    False
    >>> 0 <= derive_seed(2**64) <= MAX_SEED
    True
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"`seed` must be an integer. Received: seed={seed!r} (of type {type(seed).__name__})"
        )
    digest = hashlib.sha256(b"keras_repro.derive_seed\x00" + _encode_key(int(seed)))
    for key in keys:
        digest.update(_encode_key(key))
    return int.from_bytes(digest.digest()[:4], "big")


def seed_for(seed: int, key: str, *numbers: int) -> int:
    """The seed keras_repro uses for `key` (one of `SEED_KEYS`), from the run's seed.

    Example:

    >>> seed_for(7, "order", 3) == derive_seed(7, "order", 3)
    True
    """
    if key not in SEED_KEYS:
        raise ValueError(f"Unknown seed key {key!r}; the keys are {sorted(SEED_KEYS)}")
    return derive_seed(seed, key, *numbers)


def _startup_environment_value(name: str) -> str | None:
    """Returns `name` as the interpreter saw it at start (Linux), else from os.environ."""
    try:
        with open("/proc/self/environ", "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:
        return os.environ.get(name)
    prefix = name.encode() + b"="
    for entry in entries:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def hash_randomization_enabled() -> bool:
    """Whether `str` hashes change between interpreter runs.

    `sys.flags.hash_randomization` is also 1 for a fixed non-zero PYTHONHASHSEED, so
    the value the interpreter was started with decides.
    """
    if not sys.flags.hash_randomization:
        return False
    value = _startup_environment_value("PYTHONHASHSEED")
    return value is None or not value.strip().isdigit()


@functools.lru_cache(maxsize=None)
def warn_if_hash_randomized() -> bool:
    """Warns once per process when string hashing is randomized; returns whether it is."""
    randomized = hash_randomization_enabled()
    if randomized:
        warn(
            "This interpreter runs with string hash randomization (PYTHONHASHSEED was not "
            "set before Python started), so iteration order over sets of strings can change "
            "between runs. Setting os.environ['PYTHONHASHSEED'] inside the program has no "
            "effect on the running interpreter: start it with `PYTHONHASHSEED=0 python ...` "
            "or `keras-repro run -- python ...`.",
            HashRandomizationWarning,
        )
    return randomized


def seed_everything(seed: int) -> int:
    """Seeds Python `random`, NumPy's global RNG, the backend RNG and Keras' global
    `SeedGenerator`.

    Call it before building a model so that initializers with `seed=None` draw
    the same initial weights every run. Warns once per process if the interpreter
    was started without `PYTHONHASHSEED`.

    Args:
        seed: An int in [0, 2**32 - 1].

    Returns:
        The seed, so `seed = seed_everything(7)` reads naturally.

    Raises:
        ValueError: If `seed` is not an int in range.

    Example:

    >>> seed_everything(7)
    7
    """
    seed = validate_seed(seed)
    from keras_repro import _backend

    random.seed(seed)
    np.random.seed(seed)
    _backend.seed_backend(seed)
    logger.debug("Seeded python, numpy and the %s backend with %d", _backend.name(), seed)
    warn_if_hash_randomized()
    return seed
