"""`compare_traces`: the first step and entry, in execution order, where two layer traces
differ, and what kind of computation it is.

Entries are compared by position (Keras numbers auto-named layers per process, so names are
displayed, not compared); the first entry whose checksum differs is classified by what
matched before it:

    state       a variable differs before the first step: the runs start apart
    data        a batch fed differs, or the first layer's inputs do
    layer       a layer's output differs while its inputs match: the layer computes differently
    between     a layer's inputs differ while every output before matched: code outside layers
    loss        the loss differs while every layer output matched
    gradient    a gradient differs while every forward output and the loss matched: backward
    optimizer   a trainable or optimizer variable differs after the update while every
                gradient matched
    update      another variable (moving statistics, SeedGenerator state) differs after the step
    structure   the traces record different computations (kinds or counts of entries)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_repro.trace.entries import STAT_NAMES, Trace

CATEGORIES = ("state", "data", "layer", "between", "loss", "gradient", "optimizer", "update", "structure")


@dataclasses.dataclass(frozen=True)
class TraceDivergence:
    """The first entry where two traces differ.

    Attributes:
        step: The training step (-1: before the first step).
        position: The entry's position within the step, in execution order.
        kind: "input", "output", "loss", "gradient" or "variable".
        name: The entry's name in the first trace; `other_name` in the second.
        category: One of `CATEGORIES`; `explanation` says it in words.
        digests: The two checksums (16 hex digits each; "" where an entry is missing).
        stats: The two entries' float summaries ({name: value}), for a judgement by size.
    """

    step: int
    position: int
    kind: str
    name: str
    other_name: str
    category: str
    explanation: str
    digests: tuple[str, str] = ("", "")
    stats: tuple[dict, dict] = ({}, {})

    def __str__(self) -> str:
        where = "before the first step" if self.step < 0 else f"step {self.step}"
        other = f" (second trace: `{self.other_name}`)" if self.other_name and self.other_name != self.name else ""
        return f"{where}, entry {self.position} ({self.kind} `{self.name}`{other}): {self.explanation}"


@dataclasses.dataclass(frozen=True)
class TraceComparison:
    """The result of `compare_traces`: `identical`, the `first_divergence` (or None), the
    entries that differ in their bits but agree within the tolerance given, and the steps
    compared."""

    first_divergence: TraceDivergence | None
    within_tolerance: tuple[tuple[int, str], ...]
    steps_compared: int

    @property
    def identical(self) -> bool:
        """Whether every entry of every step matched bit for bit."""
        return self.first_divergence is None and not self.within_tolerance

    def __str__(self) -> str:
        if self.first_divergence is None:
            if self.within_tolerance:
                return (f"within tolerance: {self.steps_compared} steps compared, {len(self.within_tolerance)} "
                        f"entries differ in their bits (first: step {self.within_tolerance[0][0]}, "
                        f"`{self.within_tolerance[0][1]}`)")
            return f"identical: {self.steps_compared} steps compared"
        return f"differ: {self.first_divergence}"


def compare_traces(a: Trace | str | os.PathLike, b: Trace | str | os.PathLike, *,
                   rtol: float | None = None, atol: float | None = None) -> TraceComparison:
    """The first step and entry where two layer traces differ, and its kind.

    Args:
        a: The reference trace (a `Trace` or the path of a trace file).
        b: The trace to check.
        rtol: With `atol`, an entry whose bits differ but whose float summaries agree within
            `abs(x - y) <= atol + rtol * abs(y)` is listed in `within_tolerance` and the search
            goes on. None: bits only.
        atol: See `rtol`.

    Returns:
        A `TraceComparison`.

    Raises:
        ReferenceFileError: A path that is not a valid trace file (naming it and the field).

    Example:

    >>> result = kr.compare_traces("a.h5", "b.h5")      # doctest: +SKIP
    >>> result.first_divergence.category, result.first_divergence.name  # doctest: +SKIP
    ('layer', 'skew')
    """
    from keras_repro.trace.store import read_trace

    a = a if isinstance(a, Trace) else read_trace(a)
    b = b if isinstance(b, Trace) else read_trace(b)
    tolerant = rtol is not None or atol is not None
    within: list[tuple[int, str]] = []
    steps = sorted(set(a.step.tolist()) | set(b.step.tolist()))
    for step in steps:
        rows_a, rows_b = a.rows(step), b.rows(step)
        for position in range(max(len(rows_a), len(rows_b))):
            if position >= len(rows_a) or position >= len(rows_b):
                return _result(_missing(a, b, step, position, rows_a, rows_b), within, step)
            i, j = rows_a[position], rows_b[position]
            if a.kind[i] != b.kind[j]:
                return _result(_divergence(a, b, step, position, i, j, "structure",
                                           f"the traces record different computations here ({a.kind[i]} `{a.name[i]}` "
                                           f"in the first, {b.kind[j]} `{b.name[j]}` in the second): the models or "
                                           "their code differ"), within, step)
            if np.array_equal(a.lanes[i], b.lanes[j]):
                continue
            if tolerant and _close(a.stats[i], b.stats[j], rtol or 0.0, atol or 0.0):
                within.append((step, a.name[i]))
                continue
            category, explanation = _classify(a, b, step, rows_a, position, i, j)
            return _result(_divergence(a, b, step, position, i, j, category, explanation + _settings(a, b)), within, step)
    return TraceComparison(None, tuple(within), len([s for s in steps if s >= 0]))


def _settings(a: Trace, b: Trace) -> str:
    """What the traces' own settings say of a difference: other backends, or steps run compiled
    in one trace and eagerly in the other (their kernels round differently)."""
    backends, modes = (a.meta.get("backend"), b.meta.get("backend")), (a.meta.get("step"), b.meta.get("step"))
    if all(backends) and backends[0] != backends[1]:
        return (f". Likely cause: the traces come from different backends ({backends[0]}, {backends[1]}), whose "
                "kernels differ: compare traces of one backend")
    if all(modes) and modes[0] != modes[1]:
        return (f". Likely cause: the first trace ran its steps {modes[0]}, the second {modes[1]} (run_eagerly, or "
                "jit_compile on JAX), and compiled kernels round differently: trace both the same way")
    return ""


def _result(divergence: TraceDivergence, within: list, step: int) -> TraceComparison:
    return TraceComparison(divergence, tuple(within), max(step, 0) + (1 if step >= 0 else 0))


def _close(x: np.ndarray, y: np.ndarray, rtol: float, atol: float) -> bool:
    """Whether two entries' summaries agree within the tolerance (NaN equal to NaN)."""
    return bool(np.all(np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)))


def _divergence(a: Trace, b: Trace, step: int, position: int, i: int | None, j: int | None, category: str,
                explanation: str) -> TraceDivergence:
    entry = a if i is not None else b
    index = i if i is not None else j
    return TraceDivergence(
        step, position, entry.kind[index], entry.name[index], b.name[j] if j is not None else "", category, explanation,
        (a.digest(i) if i is not None else "", b.digest(j) if j is not None else ""),
        (_stats(a, i), _stats(b, j)))


def _stats(trace: Trace, index: int | None) -> dict:
    return {} if index is None else {name: float(v) for name, v in zip(STAT_NAMES, trace.stats[index])}


def _missing(a: Trace, b: Trace, step: int, position: int, rows_a: np.ndarray, rows_b: np.ndarray) -> TraceDivergence:
    """The divergence where one trace has entries the other lacks."""
    i = rows_a[position] if position < len(rows_a) else None
    j = rows_b[position] if position < len(rows_b) else None
    if not len(rows_a) or not len(rows_b):
        text = f"only the {'first' if len(rows_a) else 'second'} trace has step {step}: trace the same number of steps"
    else:
        text = (f"the {'first' if i is not None else 'second'} trace records more entries in this step: the models "
                "or their code differ")
    return _divergence(a, b, step, position, i, j, "structure", text)


def _classify(a: Trace, b: Trace, step: int, rows: np.ndarray, position: int, i: int, j: int) -> tuple[str, str]:
    """(category, explanation) of the first differing entry, from what matched before it."""
    kind, name = a.kind[i], a.name[i]
    if step < 0:
        return "state", (f"the runs start from different states: variable `{name}` differs before the first step "
                         "(other initial weights, or another checkpoint)")
    if kind == "input":
        return "data", f"the batch fed differs (`{name}`): the data or its order"
    if kind == "output":
        if np.array_equal(a.input_lanes[i], b.input_lanes[j]):
            return "layer", (f"layer `{name}` computes differently on the same inputs: a nondeterministic kernel or "
                             "process-dependent code in it")
        if not any(a.kind[k] == "output" for k in rows[:position]):
            return "data", (f"the inputs of the first layer `{name}` differ while the batches fed matched: the data "
                            "reaching the model (code in the model's call before its first layer)")
        return "between", (f"layer `{name}` gets different inputs while every layer output before it matched: code "
                           "outside the layers (in the call of the model that holds it) computes differently")
    if kind == "loss":
        return "loss", "the loss differs while every layer output matched: the loss function or code in it"
    if kind == "gradient":
        return "gradient", (f"the gradient of `{name}` differs while every forward output and the loss matched: "
                            "a nondeterministic backward kernel (or a custom gradient) of the layer that uses it")
    trainable = {a.name[k] for k in rows if a.kind[k] == "gradient"}
    if name in trainable or name.startswith("optimizer/"):
        return "optimizer", (f"variable `{name}` differs after the update while every gradient matched: the "
                             "optimizer (its update or its state)")
    return "update", (f"variable `{name}` differs after the step while every output and gradient matched: its "
                      "layer's state update (moving statistics, SeedGenerator state)")
