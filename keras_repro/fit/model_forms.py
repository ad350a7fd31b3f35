"""How `DeterministicModel` meets Keras' own ways of making a model: the functional form of a
subclass, `from_config` and `load_model`, `clone_model`, and legacy H5 files. Each hands the
model's seed over where Keras' code calls the class without one, and none changes a class the
user did not write."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import Any

import keras
from keras.src.models import cloning
from keras.src.models.functional import Functional

_RESTORING: contextvars.ContextVar[dict | None] = contextvars.ContextVar("keras_repro_restoring", default=None)


@contextlib.contextmanager
def restoring(arguments: dict) -> Iterator[None]:
    """While a saved model is rebuilt, its constructor takes these arguments (seed,
    keep_weights, deterministic_kernels) when the caller gives none, and stays quiet: its
    weights are about to be loaded."""
    token = _RESTORING.set(arguments)
    try:
        yield
    finally:
        _RESTORING.reset(token)


def restoring_arguments() -> dict | None:
    """The arguments of the model being restored (`restoring`), or None."""
    return _RESTORING.get()


def functional_arguments(args: tuple, kwargs: dict) -> bool:
    """Whether a constructor call is the functional form `(inputs, outputs)`, as Keras decides it."""
    return len(args) == 2 or (len(args) == 1 and "outputs" in kwargs) or ("inputs" in kwargs and "outputs" in kwargs)


def rebase_functional(cls: type, root: type, functional_root: type) -> type:
    """Puts `Functional` in the hierarchy of a user's subclass of `root` built in functional
    form, as Keras' `inject_functional_model_class` does for `keras.Model` subclasses, by
    rebasing only the user's own classes from `root` onto `functional_root`. Keras' version
    would rebase the first class below `keras.Model`, `root` itself, and with it every later
    Sequential and subclassed model of `root` in the process."""
    if cls is root:
        return functional_root
    if not issubclass(cls, root) or issubclass(cls, Functional):
        return cls
    cls.__bases__ = tuple(rebase_functional(base, root, functional_root) for base in cls.__bases__)
    return cls


def _caller_frame(function_name: str, depth: int = 12) -> Any:
    """The frame of Keras' `cloning.<function_name>` among the callers, or None (also when a
    Keras version has moved that code)."""
    code = getattr(getattr(cloning, function_name, None), "__code__", None)
    frame = sys._getframe(2)
    for _ in range(depth):  # the constructors of subclasses in between
        if frame is None or code is None:
            return None
        if frame.f_code is code:
            return frame
        frame = frame.f_back
    return None


def model_being_cloned(kind: type) -> Any:
    """The model of class `kind` that `keras.models.clone_model` is cloning, when it is the
    caller: Keras' clone of a functional model calls `model.__class__(inputs, outputs,
    name=...)`, passing no seed, from `_clone_functional_model`, whose frame holds the model."""
    frame = _caller_frame("_clone_functional_model")
    model = frame.f_locals.get("model") if frame is not None else None
    return model if isinstance(model, kind) else None


def cloned_as_keras_sequential() -> bool:
    """Whether `keras.models.clone_model` is reading a Sequential's layers to clone it: it then
    builds a plain `keras.Sequential` (its rule for every Sequential subclass), and no code of
    the subclass runs to give the clone a seed."""
    return _caller_frame("_clone_sequential_model", depth=3) is not None


def register_for_h5(*classes: type) -> None:
    """Lets `keras.models.load_model` read legacy H5 files of these classes: the H5 format
    stores a model's bare class name (`DeterministicFunctional`), which Keras looks up in
    `keras.saving.get_custom_objects()` (its registry holds the `keras_repro>` names of
    `register_keras_serializable`)."""
    objects = keras.saving.get_custom_objects()
    for cls in classes:
        objects.setdefault(cls.__name__, cls)
