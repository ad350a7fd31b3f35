"""What a `tf.data` pipeline holds that draws random numbers, found in its graph.

A `tf.data.Dataset` keeps the datasets it is built from (`_inputs()`) and the functions
its `map`, `filter`, `interleave`... run, traced when the pipeline was built. Those graphs
say, without running anything:

* which Keras `SeedGenerator` states the functions read and advance (a random Keras layer,
  `RandomFlip`, `RandomRotation`..., mapped over the data: on TensorFlow its own generator,
  on JAX and PyTorch a TensorFlow one Keras creates when the map is traced). They are
  variables named `.../seed_generator_state`, captured by the function; keras_repro can
  set them (`keras_repro.fit.input_rng`).
* which TensorFlow random ops run without a seed (`tf.random.uniform` with neither an op
  seed nor a global seed when the pipeline was built: attributes seed = seed2 = 0). Their
  numbers change in every run, and nothing outside the graph can set them.
* which functions with state run in parallel (`num_parallel_calls`): without TensorFlow's
  op determinism, the calls race on the state, so which element gets which draw changes
  from run to run (measured: a parallel map of RandomFlip, reset to the same state, gave
  other images in every pass). With it, TensorFlow runs such functions one at a time, in
  order.

Used for any Keras backend: a `tf.data` pipeline is TensorFlow whatever Keras trains on.
TensorFlow is imported only for an input that is a `tf.data` dataset already.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

STATE_NAME = "seed_generator_state"
"""The name Keras gives the variable of every SeedGenerator."""

RANDOM_OPS = (
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "RandomShuffle",
    "Multinomial", "RandomGamma", "RandomPoisson", "RandomPoissonV2", "ParameterizedTruncatedNormal",
    "RandomCrop", "SampleDistortedBoundingBox", "SampleDistortedBoundingBoxV2",
)
"""TensorFlow's stateful random ops seeded by the attributes `seed` and `seed2`."""


def is_dataset(data: Any) -> bool:
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow)."""
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "_inputs")


def datasets(data: Any) -> list[Any]:
    """Every dataset of the pipeline `data` ends in, each once, from `data` back to its sources."""
    found, seen, stack = [], set(), [data]
    while stack:
        dataset = stack.pop()
        if id(dataset) in seen:
            continue
        seen.add(id(dataset))
        found.append(dataset)
        try:
            stack.extend(reversed(list(dataset._inputs())))
        except Exception:  # noqa: BLE001 - private API: keep what was found
            logger.debug("Cannot walk the inputs of %s", type(dataset).__name__)
    return found


def _functions(dataset: Any) -> list[Any]:
    """The traced functions (ConcreteFunctions) a dataset runs: map, filter, interleave..."""
    functions = []
    for name in sorted(vars(dataset)):
        function = getattr(getattr(dataset, name), "function", None)
        if function is not None and hasattr(function, "graph"):
            functions.append(function)
    return functions


def _kind(dataset: Any) -> str:
    """A dataset's kind as users know it: "ParallelMapDataset", "MapDataset"..."""
    return type(dataset).__name__.lstrip("_")


def seed_generator_states(data: Any) -> list[Any]:
    """The `tf.Variable` states of the Keras SeedGenerators the pipeline's functions draw
    from, in pipeline order (from `data` back to its sources), each once."""
    found, seen = [], set()
    for dataset in datasets(data):
        for function in _functions(dataset):
            for variable in function.graph.variables:
                if _is_seed_state(variable) and id(variable) not in seen:
                    seen.add(id(variable))
                    found.append(variable)
    return found


def _is_seed_state(variable: Any) -> bool:
    """Whether a variable is a Keras SeedGenerator's state ([seed, counter], integers)."""
    name = str(getattr(variable, "name", "")).split(":")[0]
    dtype = getattr(variable, "dtype", None)
    return (name.split("/")[-1] == STATE_NAME and tuple(variable.shape) == (2,)
            and bool(getattr(dtype, "is_integer", False)))


def state_name(variable: Any) -> str:
    """A SeedGenerator state's name without its tensor suffix ("seed_generator_2")."""
    parts = str(variable.name).split(":")[0].split("/")
    return "/".join(parts[:-1]) or parts[-1]


def set_state(variable: Any, value: int) -> None:
    """Sets a SeedGenerator state to [value, 0]."""
    import numpy as np

    variable.assign(np.array([value, 0], dtype=variable.dtype.as_numpy_dtype))


def _nodes(function: Any) -> list[Any]:
    """Every node of a function's graph, its nested functions' (tf.cond branches...) too."""
    graph = function.graph.as_graph_def()
    return list(graph.node) + [node for nested in graph.library.function for node in nested.node_def]


def unseeded_random_ops(data: Any) -> list[str]:
    """The TensorFlow random ops of the pipeline's functions that have no seed at all, as
    "RandomUniform ('random_uniform/RandomUniform') in a MapDataset function"."""
    found = []
    for dataset in datasets(data):
        for function in _functions(dataset):
            for node in _nodes(function):
                if node.op in RANDOM_OPS and node.attr["seed"].i == 0 and node.attr["seed2"].i == 0:
                    found.append(f"{node.op} ('{node.name}') in a {_kind(dataset)} function")
    return found


def _stateful(function: Any) -> bool:
    """Whether a traced function changes state: writes a variable (a SeedGenerator advancing)
    or runs a stateful random op. Reading a variable that nothing writes races with nothing."""
    return any(node.op in RANDOM_OPS or node.op.startswith("Assign") or "Scatter" in node.op
               for node in _nodes(function))


def parallel_stateful(data: Any) -> list[str]:
    """The datasets that run a function with state in parallel (`num_parallel_calls`), as
    "ParallelMapDataset"."""
    found = []
    for dataset in datasets(data):
        if getattr(dataset, "_num_parallel_calls", None) is None:
            continue
        if any(_stateful(function) for function in _functions(dataset)):
            found.append(_kind(dataset))
    return found


def op_determinism() -> bool:
    """Whether TensorFlow's op determinism is on (then stateful functions run in order)."""
    import tensorflow as tf

    return bool(tf.config.experimental.is_op_determinism_enabled()) if hasattr(
        tf.config.experimental, "is_op_determinism_enabled") else _config_determinism()


def _config_determinism() -> bool:
    """`is_op_determinism_enabled` where `tf.config.experimental` does not export it."""
    from tensorflow.python.framework import config

    return bool(config.is_op_determinism_enabled())


def run_in_order() -> None:
    """Turns TensorFlow's op determinism on, so the pipeline's functions with state run one
    at a time, in order (and `deterministic=False` is overridden)."""
    import tensorflow as tf

    if not op_determinism():
        tf.config.experimental.enable_op_determinism()
        logger.info("Turned TensorFlow op determinism on: the tf.data functions with state run in order")


def hazards(data: Any) -> list[str]:
    """The sources of nondeterminism a `tf.data` pipeline shows in its graph, one sentence
    each, saying what to do (a race of parallel calls only while op determinism is off)."""
    found: list[str] = []
    walked = datasets(data)
    for dataset in walked:
        kind = _kind(dataset)
        seed, seed2 = getattr(dataset, "_seed", None), getattr(dataset, "_seed2", None)
        if "Shuffle" in kind and seed is not None and int(seed) == 0 and int(seed2) == 0:
            found.append("tf.data shuffle without a seed (pass seed=... to Dataset.shuffle)")
        if str(getattr(dataset, "_deterministic", "")).lower() == "false":
            found.append(f"tf.data {kind} with deterministic=False")
    try:
        if data.options().deterministic is False:
            found.append("tf.data options with deterministic=False")
    except Exception:  # noqa: BLE001
        pass
    found += [
        f"tf.data random op without a seed: {op}; its numbers change in every run (call "
        "kr.seed_everything(seed) before building the pipeline, or pass seed=... to the op)"
        for op in unseeded_random_ops(data)
    ]
    if not op_determinism():
        found += [
            f"tf.data {kind} runs a function with random state in parallel (num_parallel_calls) without "
            "TensorFlow op determinism: the calls race, so which element gets which random draw changes "
            "between runs (kr.DeterministicModel turns op determinism on; else call "
            "tf.config.experimental.enable_op_determinism(), or drop num_parallel_calls)"
            for kind in parallel_stateful(data)
        ]
    return sorted(set(found))
