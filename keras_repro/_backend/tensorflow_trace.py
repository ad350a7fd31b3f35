"""TensorFlow's traced step (`keras_repro.trace`): the step `fit` runs, a `tf.function` (with
XLA where the model's `jit_compile` asks for it) unless the model runs eagerly, its layers'
outputs returned beside the loss and the gradients."""

from __future__ import annotations

import weakref
from typing import Any

import tensorflow as tf

from keras_repro._backend.common import StepCache, call_model, model_loss


def traced_step_mode(model: Any) -> str:
    """ "eager" where `fit` would run the step eagerly (`run_eagerly`), else "compiled"."""
    return "eager" if getattr(model, "run_eagerly", False) else "compiled"


def traced_step(model: Any, x: Any, y: Any, sample_weight: Any, calls: list) -> tuple[Any, list]:
    """One step under a `GradientTape`, as Keras' TensorFlow `train_step` (see `common`)."""
    if traced_step_mode(model) == "eager":
        loss, gradients = _step(model, list(model.trainable_variables), x, y, sample_weight)
        _compiled_update(model.optimizer, list(model.trainable_variables))(gradients)
        return loss, gradients
    return _STEPS.get(model)(x, y, sample_weight, calls)


def _step(model: Any, variables: list, x: Any, y: Any, sample_weight: Any) -> tuple[Any, list]:
    """Forward, loss and gradients (zeros for a variable the loss does not reach)."""
    with tf.GradientTape() as tape:
        y_pred = call_model(model, x)
        loss = model_loss(model, x, y, y_pred, sample_weight)
        scaled = model.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, variables)
    return loss, [tf.zeros_like(v.value) if g is None else tf.convert_to_tensor(g) for g, v in zip(gradients, variables)]


class _CompiledStep:
    """A model's whole traced step in one `tf.function`. Layer calls recorded while it is traced
    are symbolic: the function returns their tensors, and keeps their paths, so each call fills
    the `calls` it is given with (path, inputs, outputs) of concrete tensors."""

    def __init__(self, model: Any) -> None:
        owner = weakref.ref(model)  # the cache holds models weakly: so does their step
        variables = list(model.trainable_variables)
        self.paths: list[str] = []
        self.calls: list = []

        def step(x: Any, y: Any, sample_weight: Any) -> tuple:
            model = owner()
            self.calls.clear()
            loss, gradients = _step(model, variables, x, y, sample_weight)
            model.optimizer.apply_gradients(zip(gradients, variables))
            self.paths = [path for path, _, _ in self.calls]
            return loss, gradients, [(inputs, outputs) for _, inputs, outputs in self.calls]

        self.function = tf.function(step, jit_compile=bool(getattr(model, "jit_compile", False)))

    def __call__(self, x: Any, y: Any, sample_weight: Any, calls: list) -> tuple[Any, list]:
        self.calls = calls  # where a (re)trace records
        loss, gradients, arrays = self.function(x, y, sample_weight)
        calls[:] = [(path, list(inputs), list(outputs)) for path, (inputs, outputs) in zip(self.paths, arrays)]
        return loss, list(gradients)


_STEPS = StepCache(_CompiledStep)

_UPDATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""A compiled optimizer update per optimizer (the eager one is half of an eager traced step's time)."""


def _compiled_update(optimizer: Any, variables: list) -> Any:
    """`optimizer.apply_gradients` to `variables` as a `tf.function` (kept per optimizer and
    variable list: Keras' optimizer code does not change within a process)."""
    key = tuple(id(v) for v in variables)
    cached = _UPDATES.get(optimizer)
    if cached is None or cached[0] != key:
        update = tf.function(lambda gradients: optimizer.apply_gradients(zip(gradients, variables)), autograph=False)
        cached = _UPDATES[optimizer] = (key, update)
    return cached[1]
