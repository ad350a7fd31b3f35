"""The layer behind an audit's divergence: both sides of the comparison that differed traced
layer by layer (`keras_repro.trace`) up to the step that differed, and compared."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import keras

from keras_repro.seeding import seed_everything
from keras_repro.tools import child
from keras_repro.tools.audit.reports import IN_PROCESS, Check
from keras_repro.tools.audit.steps import Feed

logger = logging.getLogger(__name__)


def _trace(build_model: Callable[[], Any], parts: tuple, batch_size: int, steps: int, seed: int) -> Any:
    """A fresh build (after `seed_everything(seed)`) traced for `steps` steps of the arrays."""
    from keras_repro.trace.record import trace_layers

    keras.backend.clear_session()
    seed_everything(seed)
    model = build_model()
    x, y, sample_weight = parts
    return trace_layers(model, x, y, steps=steps, batch_size=batch_size, sample_weight=sample_weight)


class _Saved:
    """A trace as the fresh process hands its result back: something with `save(path)`."""

    def __init__(self, trace: Any) -> None:
        self.trace = trace

    def save(self, path: str) -> None:
        from keras_repro.trace.store import write_trace

        write_trace(path, self.trace)


def _child_trace(payload: Mapping[str, Any], parts: Any) -> _Saved:
    """The fresh process's side: imports build_model and traces it."""
    build_model = child.load_target(payload["target"])
    return _Saved(_trace(build_model, parts, payload["batch_size"], payload["steps"], payload["seed"]))


def locate_layer(build_model: Callable[[], Any], feed: Feed, seed: int | None, check: Check) -> Any:
    """The first `TraceDivergence` between the two sides of `check` (a comparison that found a
    divergence at some batch), traced up to that batch; None where it cannot be traced (inputs
    other than arrays, a build_model the fresh process cannot import) or the traces agree (the
    difference lies outside the traced steps, in the input pipeline or the metrics, say)."""
    divergence = check.divergence
    if divergence is None or feed.kind != "arrays":
        return None
    from keras_repro.trace.compare import compare_traces
    from keras_repro.trace.store import read_trace

    steps = 1 if divergence.batch is None else int(divergence.batch) + 1
    seed = 7 if seed is None else int(seed)
    try:
        first = _trace(build_model, feed.parts, feed.batch_size, steps, seed)
        if check.name == IN_PROCESS:
            other = _trace(build_model, feed.parts, feed.batch_size, steps, seed)
        else:
            target, reason = child.locate(build_model)
            if target is None:
                logger.info("audit: no layer trace in a fresh process: %s", reason)
                return None
            payload = {"target": target, "batch_size": feed.batch_size, "steps": steps, "seed": seed}
            other = child.run("keras_repro.tools.audit.layers:_child_trace", payload, feed.parts,
                              "the audit's layer trace", child.other_hash_seed(), read=read_trace)
    except (ValueError, TypeError, AttributeError, NotImplementedError) as error:
        logger.info("audit: the layer trace failed (%s)", error)
        return None
    return compare_traces(first, other).first_divergence


def locate_layer_from_checkpoint(path: str, x: Any, y: Any, sample_weight: Any, batch_size: int, divergence: Any,
                                 reseed: Callable[[], None]) -> Any:
    """The first `TraceDivergence` between two layer traces from the checkpoint `path` (loaded
    after `reseed()` each time, as `bisect` replays it) up to the replays' first divergent batch
    (the rows in order: a trace does not shuffle); None where it cannot be traced (inputs other
    than arrays, a model saved without its compilation) or the traces agree."""
    if divergence is None:
        return None
    from keras_repro.trace.compare import compare_traces
    from keras_repro.trace.record import trace_layers

    steps = 1 if divergence.batch is None else int(divergence.batch) + 1
    traces = []
    try:
        for _ in range(2):
            keras.backend.clear_session()
            reseed()
            model = keras.models.load_model(path)
            traces.append(trace_layers(model, x, y, steps=steps, batch_size=batch_size, sample_weight=sample_weight))
    except (ValueError, TypeError, AttributeError, NotImplementedError) as error:
        logger.info("bisect: the layer trace failed (%s)", error)
        return None
    return compare_traces(*traces).first_divergence
