"""JAX's traced step (`keras_repro.trace`): the step `fit` runs, `jax.value_and_grad` over
`compute_loss_and_updates` and the optimizer's `stateless_apply`, jitted unless the model runs
eagerly or without `jit_compile` (as Keras' JAX trainer decides), the layers' outputs coming
out of the gradient as auxiliary outputs."""

from __future__ import annotations

import weakref
from typing import Any

import jax

from keras_repro._backend.common import StepCache


def traced_step_mode(model: Any) -> str:
    """ "compiled" where `fit` would jit the step, else "eager"."""
    jitted = not getattr(model, "run_eagerly", False) and getattr(model, "jit_compile", True)
    return "compiled" if jitted else "eager"


class _Step:
    """A model's traced step as one stateless function of the variables' values, jitted or not.
    Layer calls recorded while it runs (or is traced) come out as auxiliary outputs; their paths
    are kept, so each call fills the `calls` it is given with concrete arrays."""

    def __init__(self, model: Any, jitted: bool) -> None:
        owner = weakref.ref(model)  # the cache holds models weakly: so does their step
        self.paths: list[str] = []
        self.calls: list = []

        def loss_of(trainable: list, non_trainable: list, metrics: list, optimizer: list, x: Any, y: Any,
                    sample_weight: Any) -> tuple:
            self.calls.clear()
            scaled, (loss, _, new_non_trainable, _) = owner().compute_loss_and_updates(
                trainable, non_trainable, metrics, x, y, sample_weight, training=True, optimizer_variables=optimizer)
            self.paths = [path for path, _, _ in self.calls]
            return scaled, (loss, new_non_trainable, [(i, o) for _, i, o in self.calls])

        def step(trainable: list, non_trainable: list, metrics: list, optimizer: list, x: Any, y: Any,
                 sample_weight: Any) -> tuple:
            (_, (loss, new_non_trainable, arrays)), gradients = jax.value_and_grad(loss_of, has_aux=True)(
                trainable, non_trainable, metrics, optimizer, x, y, sample_weight)
            new_trainable, new_optimizer = owner().optimizer.stateless_apply(optimizer, gradients, trainable)
            return loss, list(gradients), arrays, new_trainable, new_non_trainable, new_optimizer

        self.function = jax.jit(step) if jitted else step

    def __call__(self, model: Any, x: Any, y: Any, sample_weight: Any, calls: list) -> tuple[Any, list]:
        self.calls = calls  # where a (re)trace records
        trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
        optimizer = list(model.optimizer.variables)
        loss, gradients, arrays, new_trainable, new_non_trainable, new_optimizer = self.function(
            [v.value for v in trainable], [v.value for v in non_trainable], [v.value for v in model.metrics_variables],
            [v.value for v in optimizer], x, y, sample_weight)
        calls[:] = [(path, list(inputs), list(outputs)) for path, (inputs, outputs) in zip(self.paths, arrays)]
        for variable, value in zip(trainable + non_trainable + optimizer,
                                   list(new_trainable) + list(new_non_trainable) + list(new_optimizer)):
            variable.assign(value)
        return loss, gradients


_STEPS = StepCache(lambda model: _Step(model, jitted=True))


def traced_step(model: Any, x: Any, y: Any, sample_weight: Any, calls: list) -> tuple[Any, list]:
    """One step as Keras' JAX `train_step` (see `common`)."""
    if traced_step_mode(model) == "compiled":
        return _STEPS.get(model)(model, x, y, sample_weight, calls)
    return _Step(model, jitted=False)(model, x, y, sample_weight, calls)
