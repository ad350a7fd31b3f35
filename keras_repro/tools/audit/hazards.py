"""Known sources of nondeterminism that can be seen without training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras_repro import _backend
from keras_repro.determinism import kernel_state
from keras_repro.model import DeterministicModel
from keras_repro.seeding import hash_randomization_enabled


def find_hazards(model: Any, x: Any = None) -> list[str]:
    """Known sources of nondeterminism visible without training.

    Args:
        model: A built `keras.Model`.
        x: The training input, or None: `tf.data` pipelines and torch
            `DataLoader`s are inspected for unseeded shuffles and
            `deterministic=False`.

    Returns:
        One sentence per hazard, each saying what to do; empty when none is found.

    Example:

    >>> find_hazards(keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5)]))  # doctest: +SKIP
    ["layer 'dropout' (Dropout) draws from a SeedGenerator without an explicit seed ..."]
    """
    hazards = _layer_hazards(model)
    hazards += [f"input: {hazard}" for hazard in _backend.input_hazards(x)]
    if hash_randomization_enabled():
        hazards.append(
            "string hash randomization is on in this process (PYTHONHASHSEED was not set before "
            "Python started), so the order of sets of strings changes between runs: start training "
            "with `keras-repro run -- python ...` or `PYTHONHASHSEED=0 python ...`"
        )
    hazards += _device_hazards()
    return hazards


def _layer_hazards(model: Any) -> list[str]:
    """Layers that draw from a SeedGenerator created without a seed, outside a DeterministicModel."""
    if isinstance(model, DeterministicModel):
        return []
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        generators = list(getattr(layer, "_seed_generators", ()))
        if generators and not _has_explicit_seed(layer, generators):
            found.append(
                f"layer '{layer.name}' ({type(layer).__name__}) draws from a SeedGenerator without an "
                "explicit seed, in a model that is not a DeterministicModel: without kr.SeedCallback "
                "its random numbers depend on the global RNG state when it was created (pass seed=... "
                "to the layer, or use kr.DeterministicModel or kr.SeedCallback)"
            )
    return found


def _has_explicit_seed(layer: Any, generators: Sequence[Any]) -> bool:
    """Whether a layer's random numbers come from a seed it was given."""
    try:
        if layer.get_config().get("seed") is not None:
            return True
    except Exception:  # noqa: BLE001 - a layer without a usable config: judge by its generators
        pass
    return all(getattr(generator, "_initial_seed", None) is not None for generator in generators)


def _device_hazards() -> list[str]:
    """Accelerator kernels without the backend's determinism switch."""
    state = kernel_state()
    if _backend.accelerators() and not state.in_effect:
        return [f"deterministic kernels are not in effect on this accelerator: {state.detail}"]
    return []
