"""What a layer trace reads from a model: its layers by path, their calls during one step
(each layer's `call` wrapped for the duration of the trace), and its state, kept aside and
put back so that tracing leaves the model as it found it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras

from keras_repro import _backend
from keras_repro.fingerprinting.variables import build_optimizer_early, model_variables


def layer_paths(model: Any) -> dict[int, str]:
    """{id(layer): path} of every layer under `model`, as the user's model names them:
    "d1", "encoder/dense_1" (a layer reached by several paths keeps the first)."""
    paths: dict[int, str] = {}

    def walk(layer: Any, prefix: str) -> None:
        for child in getattr(layer, "_layers", ()):
            if id(child) in paths or isinstance(child, keras.layers.InputLayer):
                continue
            path = f"{prefix}{child.name}"
            paths[id(child)] = path
            walk(child, f"{path}/")

    walk(model, "")
    return paths


def tensor_leaves(structure: Any) -> list:
    """The tensors of a nested structure of call arguments or outputs, in order."""
    return [leaf for leaf in keras.tree.flatten(structure) if keras.ops.is_tensor(leaf)]


class CallRecorder:
    """Wraps the `call` of every layer under a model; while `active`, each finished call
    appends (path, input tensors, output tensors) to `calls`, in execution order (a layer
    that calls others finishes after them). `remove` puts every `call` back."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[str, list, list]] = []
        self.active = False
        self._wrapped: list[tuple[Any, bool, Any]] = []
        paths = layer_paths(model)
        layers = {id(layer): layer for layer in model._flatten_layers(include_self=False)}
        for key, path in paths.items():
            if key in layers:
                self._wrap(layers[key], path)

    def _wrap(self, layer: Any, path: str) -> None:
        """Replaces `layer.call` on the instance (Keras' `__call__` looks it up there)."""
        had_own, own = "call" in layer.__dict__, layer.__dict__.get("call")
        original = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            outputs = original(*args, **kwargs)
            if self.active:
                self.calls.append((path, tensor_leaves((args, kwargs)), tensor_leaves(outputs)))
            return outputs

        object.__setattr__(layer, "call", call)
        self._wrapped.append((layer, had_own, own))

    def remove(self) -> None:
        """Puts back every layer's own `call`."""
        for layer, had_own, own in reversed(self._wrapped):
            if had_own:
                object.__setattr__(layer, "call", own)
            else:
                object.__delattr__(layer, "call")
        self._wrapped.clear()


def _global_seed_generator() -> Any:
    """Keras' global SeedGenerator (used by random calls without a seed), if one exists."""
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("global_seed_generator")


@contextlib.contextmanager
def state_kept(model: Any) -> Iterator[list[tuple[str, Any]]]:
    """Keeps a copy of the model's variables (weights, SeedGenerator states), its optimizer's
    variables, Keras' global SeedGenerator state and the framework's global RNG (torch's, which
    unseeded Dropout draws from there), and puts them back on exit, however the block ends. Yields `model_variables(model)` (the optimizer built first)."""
    build_optimizer_early(model)
    variables = model_variables(model)
    generator = _global_seed_generator()
    kept = [variable for _, variable in variables]
    if generator is not None:
        kept.append(generator.state)
    values = _backend.kept_values(kept)
    framework = _backend.framework_rng_state()
    try:
        yield variables
    finally:
        for variable, value in zip(kept, values):
            variable.assign(value)
        _backend.set_framework_rng_state(framework)
