"""`trace_layers`: a few training steps of a compiled model, recorded layer by layer.

Each step runs as `fit` runs it (`keras_repro._backend.traced_step`: a `GradientTape` in a
`tf.function` on TensorFlow, `jax.value_and_grad` jitted on JAX, compiled once per model and
`compile()` as Keras' train function is, eagerly where the model runs eagerly; autograd on
PyTorch) with every layer's `call` wrapped (`capture.CallRecorder`), so the trace holds, per
step and in execution order: the batch fed, every layer call's output (with its inputs), the
loss, every trainable variable's gradient and every variable after the update. Each entry is a
64-bit checksum of its bits (the batch checksum, `keras_repro.fingerprinting.checksums`) and
float summaries (mean, largest absolute value, count of non-finite values) for comparisons
within a tolerance (`digests`).
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.trace.capture import CallRecorder, layer_paths, state_kept
from keras_repro.trace.digests import EntryDigests
from keras_repro.trace.entries import Trace

logger = logging.getLogger(__name__)

def trace_layers(model: Any, x: Any, y: Any = None, *, steps: int = 3, batch_size: int = 32,
                 sample_weight: Any = None, path: str | os.PathLike | None = None) -> Trace:
    """Trains `steps` steps of a compiled model on a copy of its state and records each layer.

    Step k trains on rows k * batch_size ... (k + 1) * batch_size - 1 of the arrays, in order
    (wrapping around at the end), eagerly, as the model's `train_step` would: forward, loss,
    gradients, optimizer update. Afterwards the model's variables, its optimizer's variables,
    the SeedGenerator states (the layers' and Keras' global one) and torch's global RNG are
    put back as they were, so tracing does not train the model (an unbuilt model is built first, as `fit`
    would, and an unbuilt optimizer is built: those stay). Metrics are not updated.

    Args:
        model: A compiled Keras model (Sequential, functional, subclassed, nested models in it).
        x: The inputs: an array, or a list or dict of arrays.
        y: The targets (same forms), or None.
        steps: Steps to trace (at least 1).
        batch_size: Rows per step.
        sample_weight: Per-row weights, or None.
        path: Where to write the trace file (HDF5, atomically), or None.

    Returns:
        The `Trace`; `compare_traces` names the first entry where two differ.

    Example:

    >>> trace = kr.trace_layers(model, x, y, steps=3, path="trace.h5")   # doctest: +SKIP
    >>> kr.compare_traces("trace.h5", "other.h5").identical              # doctest: +SKIP
    True
    """
    _validate(model, x, steps, batch_size)
    rows = _row_count(x)
    batches = [_batch((x, y, sample_weight), (k * batch_size + np.arange(batch_size)) % rows) for k in range(steps)]
    if not model.built:
        model(_tensors(batches[0][0])[0])  # builds it, as fit would
    recorder = CallRecorder(model)
    entries = EntryDigests()
    try:
        with state_kept(model) as variables:
            names = _variable_names(model, variables)
            kept = [variable for _, variable in variables]
            entries.add_step(-1, [("variable", name, [array], None)
                                  for name, array in zip(names, _backend.read_batch(kept))])
            trainable = {id(v): names[i] for i, (_, v) in enumerate(variables)}
            for step, (bx, by, bw) in enumerate(batches):
                found = _named_leaves("input", "x", bx) + _named_leaves("input", "y", by)
                found += _named_leaves("input", "sample_weight", bw)
                recorder.calls.clear()
                recorder.active = True
                try:
                    loss, gradients = _backend.traced_step(model, *_tensors(bx, by, bw), recorder.calls)
                finally:
                    recorder.active = False
                found += _computed_entries(recorder.calls, loss, model.trainable_variables, gradients, trainable)
                found += [("variable", name, [array], None) for name, array in zip(names, _backend.read_batch(kept))]
                entries.add_step(step, found)
    finally:
        recorder.remove()
    from keras_repro.fingerprinting.environment import collect
    from keras_repro.version import __version__

    meta = {"steps": str(steps), "batch_size": str(batch_size), "backend": _backend.name(),
            "step": _backend.traced_step_mode(model),
            "created": datetime.datetime.now(datetime.UTC).isoformat(), "keras_repro_version": __version__}
    trace = entries.trace(meta, collect())
    if path is not None:
        from keras_repro.trace.store import write_trace

        write_trace(path, trace)
    return trace


def _validate(model: Any, x: Any, steps: Any, batch_size: Any) -> None:
    """Refuses arguments a trace cannot use, Keras style."""
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError("trace_layers needs a compiled model (it trains with the model's loss and optimizer): "
                         f"call model.compile(...) first. Received: model={getattr(model, 'name', model)!r} "
                         "(not compiled)")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    leaves = keras.tree.flatten(x)
    if not leaves or not all(isinstance(leaf, np.ndarray) or keras.ops.is_tensor(leaf) for leaf in leaves):
        raise ValueError("trace_layers takes array inputs (an array, or a list or dict of arrays), not "
                         f"datasets or generators. Received: x of type {type(x).__name__}")


def _row_count(x: Any) -> int:
    """The rows of the inputs (the first dimension of the first array)."""
    return int(np.shape(keras.tree.flatten(x)[0])[0])


def _batch(data: Any, rows: np.ndarray) -> Any:
    """`data` (a structure of arrays, or None) restricted to `rows`, floats as floatx."""
    def take(array: Any) -> Any:
        if array is None:
            return None
        array = np.take(_backend.data_to_numpy(array), rows, axis=0)
        return array.astype(keras.config.floatx()) if array.dtype.kind == "f" else array

    return keras.tree.map_structure(take, data)


def _tensors(*data: Any) -> list:
    """Backend tensors of structures of host arrays."""
    return [keras.tree.map_structure(keras.ops.convert_to_tensor, item) if item is not None else None for item in data]


def _named_leaves(kind: str, name: str, structure: Any) -> list:
    """Entries for the arrays of a batch structure: "x", or "x/0", "x/1"... for several."""
    if structure is None:
        return []
    leaves = keras.tree.flatten(structure)
    if len(leaves) == 1:
        return [(kind, name, [np.asarray(leaves[0])], None)]
    return [(kind, f"{name}/{index}", [np.asarray(leaf)], None) for index, leaf in enumerate(leaves)]


def _computed_entries(calls: list, loss: Any, variables: list, gradients: list, names: dict) -> list:
    """Entries of what a step computed: each recorded layer call's outputs (with its inputs; a
    layer's repeated calls get "#2", "#3"...), the loss, each trainable variable's gradient. The
    tensors come to the host in one `read_batch` (views on CPU; on accelerators one transfer)."""
    tensors: dict[int, Any] = {}  # each tensor once (a layer's input is mostly an output before it)
    for tensor in [tensor for _, inputs, outputs in calls for tensor in (*outputs, *inputs)] + [loss, *gradients]:
        tensors.setdefault(id(tensor), tensor)
    host = dict(zip(tensors, _backend.read_batch(list(tensors.values()))))
    seen: dict[str, int] = {}
    found = []
    for path, inputs, outputs in calls:
        seen[path] = seen.get(path, 0) + 1
        name = path if seen[path] == 1 else f"{path}#{seen[path]}"
        found.append(("output", name, [host[id(t)] for t in outputs], [host[id(t)] for t in inputs]))
    found.append(("loss", "loss", [host[id(loss)]], None))
    found += [("gradient", names.get(id(v), v.path), [host[id(g)]], None) for v, g in zip(variables, gradients)]
    return found


def _variable_names(model: Any, variables: list) -> list[str]:
    """Each variable's name as the user's model names its layer: "encoder/dense_1/kernel",
    "dropout/seed_generator_state"; optimizer variables as "optimizer/NAME"."""
    owned: dict[int, str] = {}
    layers = {id(layer): layer for layer in model._flatten_layers(include_self=True)}
    for key, path in sorted(layer_paths(model).items(), key=lambda item: item[1].count("/")):
        layer = layers.get(key)
        if layer is None:
            continue
        own = list(getattr(layer, "_trainable_variables", ())) + list(getattr(layer, "_non_trainable_variables", ()))
        for variable in own:
            owned.setdefault(id(variable), f"{path}/{variable.name}")
        for generator in getattr(layer, "_seed_generators", ()):
            owned.setdefault(id(generator.state), f"{path}/{generator.name}/state")
    return [owned.get(id(v)) or (f"optimizer/{v.name}" if part == "optimizer" else str(v.path))
            for part, v in variables]
