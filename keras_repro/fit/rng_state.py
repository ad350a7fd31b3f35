"""The random state Keras keeps: its layers' SeedGenerators and its global one.

Layers that draw random numbers (Dropout, noise, augmentation) own a `SeedGenerator`, whose
state is a variable of the model. A `keras.random` call given no seed draws instead from
Keras' *global* SeedGenerator (`keras.src.random.seed_generator.global_seed_generator()`),
which belongs to no model: it is in no `model.variables` and no checkpoint, and Keras creates
it on the first unseeded draw from Python's `random`. `SeedCallback` resets both kinds from
(seed, epoch) at every epoch start, so draws depend on the epoch alone and a resumed fit draws
what the straight run drew, and it holds the global one in the fingerprint's rng part.

What Keras 3.15.1 does with its global generator, by backend (measured):

* TensorFlow: a compiled train step captures the generator's state variable when it is
  traced. `keras.utils.set_random_seed` (which `kr.seed_everything` calls) drops the
  generator from Keras' global state, and Keras creates a new one at the next eager draw,
  while the compiled step goes on drawing from the old one. So keras_repro keeps one
  generator: it puts back the one it keeps wherever Keras dropped it, and resets in place
  every generator it has met as Keras' global one, so whatever holds one sees the reset.
* JAX: Keras refuses an unseeded draw inside a traced function, so in a compiled train step
  (`jit_compile=True`, the default): "[JAX RNG] When tracing a JAX function, you should only
  use seeded random ops". With `jit_compile=False` the step runs in a stateless scope that
  drops the generator's update: every step of an epoch draws the same numbers.
* PyTorch: eager; every unseeded draw advances the generator.

Like Keras' own global state, what is kept here is kept per thread.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from keras_repro import _backend
from keras_repro.fingerprinting.digests import GLOBAL_GENERATOR_PATH, VariableDigest, hash_array, summarize
from keras_repro.fingerprinting.variables import seed_generators
from keras_repro.seeding import seed_everything, seed_for

_kept = threading.local()
"""`.generators`: every SeedGenerator met as Keras' global one in this thread, the kept one first."""


def _state(generator: Any, value: int) -> np.ndarray:
    """The state [value, 0], in the generator's dtype and range."""
    return np.array([value % (_backend.seed_state_max() + 1), 0], dtype=np.dtype(generator.state.dtype))


def reset_seed_generators(model: Any, seed: int, epoch: int) -> int:
    """Sets every layer SeedGenerator of `model` to a state derived from
    (seed, epoch, its place in the model); returns how many were reset.

    Example:

    >>> reset_seed_generators(model, seed=7, epoch=3)     # doctest: +SKIP
    2
    """
    generators = seed_generators(model)
    for index, (_, generator) in enumerate(generators):
        generator.state.assign(_state(generator, seed_for(seed, "layer-rng", epoch, index)))
    return len(generators)


def keras_global_generator() -> Any:
    """Keras' global SeedGenerator as Keras holds it now, or None (Keras then creates one at
    the next unseeded draw). Unlike Keras' accessor, creates nothing and works while tracing."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    return global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)


def _generators() -> list[Any]:
    """The generators met as Keras' global one in this thread (the kept one first)."""
    if not hasattr(_kept, "generators"):
        _kept.generators = []
    return _kept.generators


def reset_global_generator(value: int | None) -> Any:
    """Makes the kept SeedGenerator Keras' global one again and, unless `value` is None, sets
    its state and that of every generator Keras used as its global one before, in place, to
    [value, 0]. The first call creates the kept one, or keeps the one Keras has.

    Args:
        value: The seed of the new state (reduced to the backend's range), or None to keep
            the states as they are.

    Returns:
        The kept generator, now Keras' global one.

    Example:

    >>> keras.utils.set_random_seed(1)        # Keras drops its global generator  # doctest: +SKIP
    >>> reset_global_generator(42) is reset_global_generator(43)                   # doctest: +SKIP
    True
    """
    import keras
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    generators = _generators()
    current = keras_global_generator()
    if current is not None and all(current is not known for known in generators):
        generators.append(current)
    if not generators:
        generators.append(keras.random.SeedGenerator(0, name="keras_repro_global_seed_generator"))
    kept = generators[0]
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, kept)
    if value is not None:
        for generator in generators:
            generator.state.assign(_state(generator, value))
    return kept


def reset_rng(model: Any, seed: int, epoch: int, reset: bool = True, inputs: Any = None) -> None:
    """At an epoch start: Keras' global SeedGenerator put back in place and, when `reset`,
    it, every layer SeedGenerator of `model` and those of its inputs (`inputs`: a
    `fit.input_rng.InputRng`, or None) reset from (seed, epoch).

    Example:

    >>> reset_rng(model, seed=7, epoch=3)     # doctest: +SKIP
    """
    reset_global_generator(seed_for(seed, "keras-rng", epoch) if reset else None)
    if reset:
        reset_seed_generators(model, seed, epoch)
        if inputs is not None:
            inputs.epoch_begin(seed, epoch)


def global_generator_records(summaries: bool = False) -> list[VariableDigest]:
    """The rng-part record of the kept global SeedGenerator's state (none before one is kept),
    for a fingerprint's `with_records`.

    Example:

    >>> fingerprint(model).with_records(global_generator_records())   # doctest: +SKIP
    """
    generators = _generators()
    if not generators:
        return []
    value = np.asarray(_backend.read_batch([generators[0].state])[0])
    dtype, shape = np.dtype(value.dtype).name, tuple(int(d) for d in value.shape)
    digest = hash_array(value, f"rng\0keras-global\0{dtype}\0{shape}\0".encode())
    return [VariableDigest(GLOBAL_GENERATOR_PATH, "rng", dtype, shape, digest, summarize(value) if summaries else None)]


def reseed_fit(seed: int) -> None:
    """At a fit's start: Python, NumPy and the backend seeded from (seed, "fit"), and Keras'
    global SeedGenerator reset from (seed, "keras-rng"), in place.

    Example:

    >>> reseed_fit(7)     # doctest: +SKIP
    """
    seed_everything(seed_for(seed, "fit"))
    reset_global_generator(seed_for(seed, "keras-rng"))


def reseed_epoch(model: Any, seed: int, epoch: int, reset: bool = True, inputs: Any = None) -> None:
    """At an epoch's start: Python, NumPy and the backend seeded from (seed, "epoch", epoch),
    then the RNG state reset as `reset_rng` does.

    Example:

    >>> reseed_epoch(model, seed=7, epoch=3)     # doctest: +SKIP
    """
    seed_everything(seed_for(seed, "epoch", epoch))
    reset_rng(model, seed, epoch, reset, inputs)
