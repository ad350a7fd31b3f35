"""`preflight`: before a long run, the stack (the environment a deterministic run needs, and
the known determinism bugs of the installed versions: `keras_repro.tools.stack_checks`), the
ops without a deterministic kernel and what the deterministic kernels cost.

Deterministic kernels fail loudly where a backend has none for an op on this device
(TensorFlow's `UnimplementedError`, torch's `RuntimeError` from deterministic algorithms,
XLA's "does not have a deterministic implementation"), usually on a GPU, usually hours into
a run started without them. `preflight` trains a few steps with them on, names every op that
failed with the layer it comes from (from the error's node path, or by training each layer
alone), and times the steps with the kernels on and off where the backend can switch them
in one process (TensorFlow, PyTorch; JAX's switch is fixed when JAX starts).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.determinism import kernel_state, use_deterministic_kernels
from keras_repro.fingerprinting.variables import build_optimizer_early
from keras_repro.tools.audit.steps import check_positive, prepare_feed
from keras_repro.tools.known_issues import FAIL, Finding
from keras_repro.tools.stack_checks import check_stack

logger = logging.getLogger(__name__)

ON, OFF = "deterministic", "default"
"""The two settings timed, as `PreflightReport.step_seconds` names them."""


@dataclasses.dataclass(frozen=True)
class PreflightFailure:
    """An op without a deterministic implementation on this device.

    Attributes:
        op: The op as the backend names it ("" when its error does not say).
        layer: The layer it comes from, or None when it could not be found.
        error: The exception's type and first line.
    """

    op: str
    layer: str | None
    error: str

    def __str__(self) -> str:
        where = f"in layer '{self.layer}'" if self.layer else "in a layer that could not be found"
        return f"{self.op or 'an op'} {where}: {self.error}"


@dataclasses.dataclass(frozen=True)
class PreflightReport:
    """What `preflight` found.

    Attributes:
        backend: The Keras backend.
        devices: The devices it trained on.
        kernels: The deterministic-kernel state before the preflight (`KernelState` text).
        failures: Every op without a deterministic implementation that failed.
        steps: Training steps per setting.
        step_seconds: {"deterministic": s, "default": s}: the median step time with the
            deterministic kernels on and off (None where not measured).
        notes: What could not be checked, and why.
        hazards: Known nondeterminism of the input `x` seen without running it (as
            `kr.audit` lists it: `keras_repro._backend.input_hazards`), e.g. a random op
            without a seed in a `tf.data` map.
        environment: The environment checks (`stack_checks.environment_checks`), each ok, warn
            or fail with its fix.
        known_issues: The known-issue table's verdict for the installed versions
            (`keras_repro.tools.known_issues`).

    Example:

    >>> report = kr.preflight(build_model, x, y)   # doctest: +SKIP
    >>> report.ok, report.slowdown                   # doctest: +SKIP
    (True, 1.08)
    """

    backend: str
    devices: tuple[str, ...]
    kernels: str
    failures: tuple[PreflightFailure, ...]
    steps: int
    step_seconds: dict[str, float | None]
    notes: tuple[str, ...] = ()
    hazards: tuple[str, ...] = ()
    environment: tuple[Finding, ...] = ()
    known_issues: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every op ran with deterministic kernels and no stack check failed."""
        return not self.failures and not any(f.status == FAIL for f in (*self.environment, *self.known_issues))

    @property
    def slowdown(self) -> float | None:
        """Step time with deterministic kernels / without, or None where not measured."""
        on, off = self.step_seconds.get(ON), self.step_seconds.get(OFF)
        return on / off if on and off else None

    def __str__(self) -> str:
        lines = [f"preflight ({self.steps} steps, backend {self.backend}, devices {', '.join(self.devices) or '-'})",
                 f"deterministic kernels before: {self.kernels}"]
        lines += ["environment:", *(f"  {finding}" for finding in self.environment)] if self.environment else []
        lines += ["known issues:", *(f"  {finding}" for finding in self.known_issues)] if self.known_issues else []
        if not self.steps:
            lines.append(("FAIL" if not self.ok else "stack checked") + ": no model given, so no step was trained")
            return "\n".join(lines + [f"note: {note}" for note in self.notes])
        if self.failures:
            lines.append(f"NOT READY: {len(self.failures)} op(s) have no deterministic implementation on this device:")
            lines += [f"  - {failure}" for failure in self.failures]
        else:
            lines.append("READY: every step ran with deterministic kernels")
        timing = {name: f"{seconds * 1e3:.2f} ms" if seconds is not None else "not measured"
                  for name, seconds in self.step_seconds.items()}
        lines.append(f"step time: deterministic kernels {timing.get(ON)}, default kernels {timing.get(OFF)}"
                     + (f" (x{self.slowdown:.2f})" if self.slowdown else ""))
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"hazard: input: {hazard}" for hazard in self.hazards]
        return "\n".join(lines)


def preflight(
    model: Any = None,
    x: Any = None,
    y: Any = None,
    *,
    steps: int = 5,
    batch_size: int = 32,
    sample_weight: Any = None,
) -> PreflightReport:
    """Checks the stack (environment, known issues of the installed versions), trains a few
    steps with deterministic kernels, names the ops that have none on this device, and times
    the steps with the kernels on and off.

    Args:
        model: A compiled `keras.Model`, or a function of no arguments returning one (then
            each setting trains a fresh model). A model is trained for the steps and then
            put back as it was (weights and optimizer state). None: check the stack only.
        x: Training input: arrays (the first `steps * batch_size` rows are used), or a
            dataset, `PyDataset`, generator or DataLoader (its first `steps` batches).
        y: Targets for array inputs.
        steps: Steps per setting (the first of each is not timed: it compiles).
        batch_size: Rows per step for array inputs.
        sample_weight: Optional sample weights for array inputs.

    Returns:
        A `PreflightReport`; `print(report)` for a readable summary.

    Raises:
        TypeError, ValueError: On bad arguments.

    Example:

    >>> print(kr.preflight(build_model, x, y, steps=5))   # doctest: +SKIP
    preflight (5 steps, backend torch, devices cpu, cuda:0)
    ...
    >>> kr.preflight().known_issues[0].status              # doctest: +SKIP
    'ok'
    """
    check_positive("steps", steps)
    check_positive("batch_size", batch_size)
    environment, known_issues = check_stack()
    if model is None:
        report = PreflightReport(_backend.name(), tuple(_backend.devices()), str(kernel_state()), (), 0,
                                 {ON: None, OFF: None}, (), (), environment, known_issues)
        logger.info("%s", report)
        return report
    if isinstance(model, keras.Model):
        build, fixed = None, model
    elif callable(model):
        build, fixed = model, None
    else:
        raise TypeError(f"`model` must be a compiled keras.Model or a function returning one. Received: {model!r}")
    batches = prepare_feed(x, y, int(steps), int(batch_size), sample_weight).batches()
    before = kernel_state()
    failures: list[PreflightFailure] = []
    seconds: dict[str, float | None] = {ON: None, OFF: None}
    notes: list[str] = []
    try:
        for setting, on in ((ON, True), (OFF, False)):
            state = use_deterministic_kernels(on)
            if state.in_effect != on:
                notes.append(_cannot_switch(on, state.detail))
                continue
            seconds[setting], found = _run(build, fixed, batches)
            if on:
                failures += found
    finally:
        use_deterministic_kernels(before.in_effect)
    report = PreflightReport(_backend.name(), tuple(_backend.devices()), str(before), tuple(failures),
                             len(batches), seconds, tuple(notes), tuple(_backend.input_hazards(x)),
                             environment, known_issues)
    logger.info("%s", report)
    return report


def _cannot_switch(on: bool, detail: str) -> str:
    """The note for a setting that cannot be had in this process."""
    if on:
        return (f"deterministic kernels cannot be turned on in this process ({detail}), so the ops without "
                "one were not looked for")
    return (f"deterministic kernels cannot be turned off in this process ({detail}): compare with a run started "
            "by `keras-repro run --no-determinism -- python ...`")


def _run(build: Callable[[], Any] | None, fixed: Any, batches: Sequence[tuple]) -> tuple[float | None, list]:
    """Trains the steps on a fresh model (or on `fixed`, restored afterwards); returns the
    median step time (None if a step failed) and the failures found."""
    model = build() if build is not None else fixed
    if getattr(model, "optimizer", None) is None:
        raise ValueError("preflight needs a compiled model (call model.compile(...) first)")
    saved = _snapshot(model) if build is None else None
    times = []
    try:
        model.make_train_function(force=True)
        for x, y, sample_weight in batches:
            start = time.perf_counter()
            model.train_on_batch(x, y, sample_weight=sample_weight)
            times.append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - what failed is the finding
        op = _backend.determinism_failure(error)
        if op is None:
            raise
        return None, _failures(model, op, error)
    finally:
        if saved is not None:
            _restore(model, saved)
    return statistics.median(times[1:] or times), []


def _snapshot(model: Any) -> list[tuple[Any, np.ndarray]]:
    """Every variable of the model and its optimizer (built first) with its value."""
    build_optimizer_early(model)
    variables = list(model.variables) + list(getattr(model.optimizer, "variables", []))
    return [(v, keras.ops.convert_to_numpy(v).copy()) for v in variables]


def _restore(model: Any, saved: list[tuple[Any, np.ndarray]]) -> None:
    """Puts every variable back (the JAX trainer's state first written back to them)."""
    _backend.sync_model_state(model)
    for variable, value in saved:
        variable.assign(value)


def _summary(error: BaseException) -> str:
    """The exception's type and the line of its message that speaks of determinism."""
    lines = [line.strip() for line in _backend.plain_text(error).strip().splitlines() if line.strip()]
    line = next((line for line in lines if "determinis" in line.lower()), lines[0] if lines else "")
    return f"{type(error).__name__}: {line}"[:300]


def _failures(model: Any, op: str, error: BaseException) -> list[PreflightFailure]:
    """The failure found, with its layer: named in the error, or found by probing layers."""
    named = _layer_named_in(model, f"{op} {_backend.plain_text(error)}")
    if named:
        return [PreflightFailure(op.rsplit("/", 1)[-1], named, _summary(error))]
    probed = [PreflightFailure(found or op, layer, message) for layer, found, message in _probe_layers(model)]
    return probed or [PreflightFailure(op, None, _summary(error))]


def _leaf_layers(model: Any) -> list[Any]:
    """The layers of a model that hold no other layers."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if not list(layer._flatten_layers(include_self=False, recursive=False))]


def _layer_named_in(model: Any, text: str) -> str | None:
    """The longest layer name that stands as a path segment in an error (TensorFlow node
    names carry the layer's scope, e.g. "sequential/conv2d/Conv2D")."""
    for name in sorted({layer.name for layer in _leaf_layers(model)}, key=len, reverse=True):
        if re.search(rf"(?:^|[/\s{{'\"]){re.escape(name)}(?:_\d+)?(?:/|[\s}}'\"]|$)", text):
            return name
    return None


def _probe_layers(model: Any) -> list[tuple[str, str, str]]:
    """(layer, op, error) for every leaf layer that fails a training step on its own: a twin
    of it (from its config) in a one-layer model, trained one step on zeros."""
    found = []
    for layer in _leaf_layers(model):
        spec = _input_spec(layer)
        if spec is None:
            continue
        shape, dtype = spec
        try:
            twin = layer.__class__.from_config(layer.get_config())
            inputs = keras.Input(shape[1:], dtype=dtype)
            outputs = twin(inputs)
            probe = keras.Model(inputs, outputs)
            probe.compile(optimizer="sgd", loss="mse")
            batch = np.zeros((2, *shape[1:]), dtype=dtype)
            target = np.zeros((2, *outputs.shape[1:]), dtype="float32")
            probe.train_on_batch(batch, target)
        except Exception as error:  # noqa: BLE001 - a probe that fails otherwise is no finding
            op = _backend.determinism_failure(error)
            if op is not None:
                found.append((layer.name, op.rsplit("/", 1)[-1], _summary(error)))
    return found


def _input_spec(layer: Any) -> tuple[tuple, str] | None:
    """(input shape, dtype) of a layer with one input: from the model's graph, else from
    the shape it was built with."""
    try:
        tensor = layer.input
        if not isinstance(tensor, (list, tuple, dict)):
            return tuple(tensor.shape), str(tensor.dtype)
    except (AttributeError, ValueError):
        pass
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
            return tuple(shape), "float32"
    return None
