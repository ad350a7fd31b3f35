"""Reading a model's state: its variables by part, their names, its layers' SeedGenerators
and the variables that devices each hold a copy of. `fingerprint()` and `BatchChecksums`
both list a model's variables here, so they always agree on what is covered, in what order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_repro import _backend


def model_variables(model: Any) -> list[tuple[str, Any]]:
    """(part, variable) for every variable of a model and its optimizer, in a fixed order."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def add(part: str, variables: Iterable[Any]) -> None:
        for variable in variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append((part, variable))

    add("trainable", model.trainable_weights)
    add("non_trainable", model.non_trainable_weights)
    add("rng", model.variables)  # what is left of model.variables: SeedGenerator states
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        add("optimizer", optimizer.variables)
    return found


def replica_devices(model: Any) -> tuple[str, ...]:
    """The devices of the replicas of a model's variables (replica k on the k-th), from the
    variable with the most copies; empty when no variable has several copies."""
    found: tuple[str, ...] = ()
    for _, variable in model_variables(model):
        devices = _backend.replica_devices(variable)
        if len(devices) > len(found):
            found = devices
    return found


def replica_local_variables(model: Any) -> set[int]:
    """ids of the variables whose replica copies differ by design: the moving statistics
    of `BatchNormalization(synchronized=False)` layers (the default), which each replica
    updates from its own part of the batch."""
    local: set[int] = set()
    for layer in model._flatten_layers():
        if type(layer).__name__ == "BatchNormalization" and not getattr(layer, "synchronized", True):
            local.update(id(v) for v in (getattr(layer, "moving_mean", None), getattr(layer, "moving_variance", None)) if v is not None)
    return local


def replica_local_paths(model: Any) -> set[str]:
    """Display paths (as fingerprint records name them) of `replica_local_variables`."""
    local = replica_local_variables(model)
    return {variable_path(v, "") for _, v in model_variables(model) if id(v) in local}


def variable_path(variable: Any, default: str) -> str:
    """A variable's Keras path (or name), for display."""
    return str(getattr(variable, "path", None) or getattr(variable, "name", None) or default)


def seed_generators(model: Any) -> list[tuple[str, Any]]:
    """(display path, SeedGenerator) for every SeedGenerator of a model's layers, in order."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, prefix: str) -> None:
        for generator in getattr(layer, "_seed_generators", ()):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append((f"{prefix}/{generator.name}", generator))
        for child in getattr(layer, "_layers", ()):
            walk(child, f"{prefix}/{child.name}")

    walk(model, model.name)
    return found


def seed_generator_paths(model: Any) -> dict[int, str]:
    """{id(state variable): "layer/path/seed_generator"} for display."""
    return {id(generator.state): path for path, generator in seed_generators(model)}


def array_shape(variable: Any) -> tuple[int, ...]:
    """A variable's shape as a tuple of ints."""
    return tuple(int(d) for d in variable.shape)


def nbytes(variable: Any) -> int:
    """Size of a variable in bytes, from its shape and dtype, without reading it."""
    try:
        return int(np.prod(array_shape(variable))) * np.dtype(str(variable.dtype)).itemsize
    except TypeError:
        return 0




def build_optimizer_early(model: Any) -> None:
    """Builds the optimizer as its first step would, so the initial fingerprint covers it.

    The TensorFlow trainer defers the build to the first traced step; the variables it
    creates (zeros, the iteration counter, the learning rate) are the same either way.

    Example:

    >>> build_optimizer_early(model); model.optimizer.built     # doctest: +SKIP
    True
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or getattr(optimizer, "built", True):
        return
    if all(layer.built for layer in model._flatten_layers()) and model.trainable_variables:
        optimizer.build(model.trainable_variables)
