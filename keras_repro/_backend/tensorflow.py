"""The TensorFlow backend: tf.distribute, op determinism, a tf.data order pipeline, and
batch checksums compiled with XLA."""

from __future__ import annotations

import functools
import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_repro._backend.common import (  # noqa: F401 - the interface: shared implementations
    Deferred,
    async_batch_hooks_help,
    build_with_lanes,
    data_to_numpy,
    deferred_or_host,
    first_match,
    framework_rng_state,
    gather_from_processes,
    input_hazards,
    plain_text,
    process_count,
    seed_backend,
    set_framework_rng_state,
    sync_model_state,
    value_of,
    wrap_step,
)
from keras_repro._backend.tensorflow_trace import traced_step, traced_step_mode  # noqa: F401 - the interface

logger = logging.getLogger(__name__)


def version() -> str:
    return str(tf.__version__)


def trains_under_tf_distribute() -> bool:
    return True


def to_numpy(value: Any, replica: int = 0) -> np.ndarray:
    """A host NumPy view of a variable: one ReadVariableOp, viewed without a copy on CPU
    (`.numpy()` copies; `read_value()` adds an Identity op)."""
    value = value_of(value)
    if isinstance(value, tf.distribute.DistributedValues):
        copies = value.values if _mirrored(value) else value.values[:1]
        value = copies[replica] if replica < len(copies) else copies[0]
    read = getattr(value, "value", None)
    return np.asarray(read() if callable(read) else value)


def kept_values(variables: list) -> list:
    """Host copies (see `common`): variables are updated in place."""
    return [np.array(array, copy=True) for array in read_batch(variables)]


def read_batch(variables: list, replica: int = 0) -> list[np.ndarray]:
    """Host arrays of several variables: `to_numpy` of each."""
    return [to_numpy(variable, replica) for variable in variables]


def replica_devices(value: Any) -> tuple[str, ...]:
    """The devices of a MirroredVariable's copies (sync-on-read variables differ by design)."""
    value = value_of(value)
    if isinstance(value, tf.distribute.DistributedValues) and _mirrored(value) and len(value.values) > 1:
        return tuple(str(copy.device) for copy in value.values)
    return ()


def _mirrored(value: Any) -> bool:
    """Whether a distributed variable keeps its copies equal (not sync-on-read)."""
    return getattr(value, "synchronization", None) != tf.VariableSynchronization.ON_READ


def is_chief(model: Any = None) -> bool:
    """False for every task of the model's strategy's cluster but "chief" (or worker 0
    when the cluster has no chief)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and int(resolver.task_id or 0) == 0 and "chief" not in cluster


def distribution_scope(model: Any):
    """The scope of the tf.distribute strategy the model was created under (as Keras builds it)."""
    import contextlib

    strategy = getattr(model, "_distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def seed_state_max() -> int:
    return 2**32 - 1


def enable_op_determinism(threads: int | None, inter_op_threads: int | None) -> tuple[dict, dict]:
    """Op determinism, and thread limits (which only work before TensorFlow runs an op)."""
    applied: dict[str, Any] = {}
    not_applied: dict[str, str] = {}
    tf.config.experimental.enable_op_determinism()
    applied["tf_op_determinism"] = True
    for key, value, setter in (
        ("intra_op_threads", threads, tf.config.threading.set_intra_op_parallelism_threads),
        ("inter_op_threads", inter_op_threads, tf.config.threading.set_inter_op_parallelism_threads),
    ):
        if value is None:
            continue
        try:
            setter(value)
            applied[key] = value
        except RuntimeError as error:
            not_applied[key] = (
                "TensorFlow is already initialized; call enable_determinism() before "
                f"any TensorFlow op runs ({error})"
            )
    return applied, not_applied


def op_determinism_enabled() -> bool | str:
    """Whether TF op determinism is on ("unknown" if TF no longer exposes it)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return "unknown"


def determinism_state() -> dict[str, Any]:
    return {
        "tf_op_determinism": op_determinism_enabled(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def devices() -> list[str]:
    try:
        return [d.name for d in tf.config.list_logical_devices()]
    except Exception as error:  # noqa: BLE001 - the manifest must never break a run
        logger.debug("Could not list devices: %s", error)
        return []


def accelerators() -> list[str]:
    return [name for name in devices() if ":GPU:" in name or ":TPU:" in name]


def prepare_kernels_at_import() -> None:
    """Nothing: op determinism can be switched on at any time."""


def set_deterministic_kernels(on: bool) -> None:
    """Op determinism on or off (off: a private function, as Keras itself reads the state)."""
    if on:
        tf.config.experimental.enable_op_determinism()
        return
    try:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        logger.debug("TensorFlow cannot turn op determinism off")


def kernels_in_effect() -> tuple[bool, str]:
    if op_determinism_enabled() is True:
        return True, "TensorFlow op determinism"
    return False, "TensorFlow op determinism is off"


def determinism_failure(error: BaseException) -> str | None:
    """TensorFlow raises UnimplementedError for a GPU kernel without a deterministic version,
    FailedPreconditionError for tf.timestamp and RuntimeError for an unseeded random op
    under op determinism; graph errors name the node, whose path holds the layer's."""
    if not isinstance(error, (tf.errors.OpError, RuntimeError)):
        return None
    text = plain_text(error)
    if not any(word in text.lower() for word in ("deterministic", "determinism")):
        return None
    return first_match(text, (r"implementation of (\w+)", r"\{\{node ([^}]+)\}\}", r"node (\S+)", r"(\w+) cannot be called",
                              r"(Random ops)", r"HLO instruction %?([\w.\-]+)"))


def child_determinism_environment() -> dict[str, str]:
    """TF_DETERMINISTIC_OPS=1 when op determinism is on here (no other way across processes)."""
    return {"TF_DETERMINISTIC_OPS": "1"} if op_determinism_enabled() is True else {}


def native_ordered_input(data: tuple, rows_for_epoch: Any, num_rows: int, batch_size: int) -> tuple[Any, Any] | None:
    """An input pipeline that visits `data` rows in the order `rows_for_epoch(epoch)` gives.

    On TensorFlow this is a tf.data pipeline over row indices held in a variable
    (set at each epoch start) that gathers each batch from the arrays, the same
    shape as Keras' own array pipeline, so it keeps native speed. Other backends
    return None and use the backend-neutral `PyDataset` in `keras_repro.fit.feeding`.

    Returns:
        (dataset, set_epoch) or None.
    """
    rows = tf.Variable(rows_for_epoch(0), trainable=False, dtype=tf.int64, name="keras_repro_rows")
    full, rest = divmod(num_rows, batch_size)
    # tf.data packs Python lists into one tensor: list inputs (several model inputs) become tuples.
    tensors = tf.nest.map_structure(tf.convert_to_tensor, keras.tree.lists_to_tuples(data))

    @tf.autograph.experimental.do_not_convert
    def batches(_):
        order = rows.read_value()
        result = tf.data.Dataset.from_tensor_slices(tf.reshape(order[: full * batch_size], [full, batch_size]))
        if rest:
            result = result.concatenate(tf.data.Dataset.from_tensors(order[full * batch_size :]))
        return result

    @tf.autograph.experimental.do_not_convert
    def gather(indices, arrays):
        return tf.nest.map_structure(lambda array: tf.gather(array, indices), arrays)

    dataset = tf.data.Dataset.zip((tf.data.Dataset.range(1).flat_map(batches), tf.data.Dataset.from_tensors(tensors).repeat()))
    dataset = dataset.map(gather).apply(tf.data.experimental.assert_cardinality(full + (1 if rest else 0)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    def set_epoch(epoch: int) -> None:
        rows.assign(rows_for_epoch(epoch))

    return dataset, set_epoch


def input_build_passes(model: Any, first_fit: bool = False) -> int:
    """Keras' TensorFlow trainer builds from a batch of a new pass only under a `tf.distribute`
    strategy, and then at every fit (`_maybe_symbolic_build`)."""
    return int(getattr(model, "_distribute_strategy", None) is not None)


def input_passes_per_epoch(data: Any) -> int:
    """On TensorFlow, Keras' epoch loop iterates the `tf.data` dataset itself: a new iterator at
    each epoch's start and, when the dataset's cardinality is known, another at its end."""
    if not isinstance(data, tf.data.Dataset):
        return 1
    try:
        return 2 if int(data.cardinality()) >= 0 else 1
    except Exception:  # noqa: BLE001 - a dataset whose cardinality cannot be had
        return 1


def deferred_checksums(variables: list, replica: int = 0, model: Any = None) -> Deferred:
    """Batch checksums compiled with XLA, called as a concrete function (the polymorphic
    function's matching of two handles a variable cost about 0.13 ms a call); results stay
    tensors until `finish` stacks them (on the host for distributed variables)."""

    def build() -> Deferred:
        if any(isinstance(v.value, tf.distribute.DistributedValues) for v in variables):
            raise TypeError("distributed variables")
        handles = [v.value for v in variables]
        run = _checksum_runner().get_concrete_function(handles)

        def finish(pending: list) -> np.ndarray:
            return np.asarray(tf.stack(pending)) if pending else np.zeros((0, len(handles), 2), np.uint32)

        return (lambda: run(handles)), finish

    return deferred_or_host(build, variables, replica, to_numpy)


def _words(value: Any) -> Any:
    """The checksum words (`keras_repro.fingerprinting.checksums`) of a tensor, flat uint32; strings as the
    int64 FarmHash fingerprint of each string, composite tensors (ragged, sparse) as the words
    of their components in turn."""
    u32 = tf.uint32
    if isinstance(value, (tf.RaggedTensor, tf.SparseTensor)):
        return tf.concat([_words(part) for part in tf.nest.flatten(value, expand_composites=True)], 0)
    value = tf.convert_to_tensor(value)
    if value.dtype == tf.string:
        value = tf.strings.to_hash_bucket_fast(value, 2**63 - 1)
    size = value.dtype.size
    if value.dtype == tf.bool:
        value = tf.cast(value, u32)
    elif size == 1:
        value = tf.cast(tf.bitcast(value, tf.uint8) if value.dtype != tf.uint8 else value, u32)
    elif size == 2:
        value = tf.cast(tf.bitcast(value, tf.uint16) if value.dtype != tf.uint16 else value, u32)
    elif value.dtype != u32:
        value = tf.bitcast(value, u32)  # 8-byte elements become (low, high) pairs
    return tf.reshape(value, [-1])


def _fmix(h: Any) -> Any:
    from keras_repro.fingerprinting import checksums

    u32, shift = tf.uint32, tf.bitwise.right_shift
    h = tf.bitwise.bitwise_xor(h, shift(h, tf.constant(16, u32)))
    h = h * tf.constant(checksums.FMIX_1, u32)
    h = tf.bitwise.bitwise_xor(h, shift(h, tf.constant(13, u32)))
    h = h * tf.constant(checksums.FMIX_2, u32)
    return tf.bitwise.bitwise_xor(h, shift(h, tf.constant(16, u32)))


def _mixed_words(w: Any) -> Any:
    """fmix32(w_i + i * PHI) of a flat uint32 tensor."""
    from keras_repro.fingerprinting import checksums

    positions = tf.cast(tf.range(tf.size(w)), tf.uint32) * tf.constant(checksums.PHI, tf.uint32)
    return _fmix(w + positions)


def step_lanes(leaves: list) -> Any:
    """The checksum lanes of each tensor, uint32 (len(leaves), 2), as ops of the graph being
    traced (a train step): two plain sums each, which XLA fuses where the step is compiled."""
    if not leaves:
        return tf.zeros([0, 2], tf.uint32)
    rows = []
    for leaf in leaves:
        w = _words(leaf)
        rows.append(tf.stack([tf.reduce_sum(w), tf.reduce_sum(_mixed_words(w))]))
    return tf.stack(rows)


def lanes_to_host(pending: list) -> np.ndarray:
    """Lanes that `step_lanes` returned, brought to the host together: uint32 (n, leaves, 2)."""
    return np.asarray(tf.stack(pending)).astype(np.uint32, copy=False)


def data_checks_gap(model: Any) -> str | None:
    """Why a train step cannot hand each batch's checksum to the host, or None: a step that runs
    on several replicas (each sees a part of the batch, and Keras averages what steps return),
    or several steps per call (Keras returns the last step's logs only)."""
    strategy = getattr(model, "distribute_strategy", None)
    replicas = int(getattr(strategy, "num_replicas_in_sync", 1) or 1)
    if replicas > 1:
        return f"the model trains on {replicas} replicas of a tf.distribute strategy"
    steps = getattr(model, "steps_per_execution", 1)
    if isinstance(steps, int) and steps > 1:
        return f"the model runs {steps} steps per call (steps_per_execution={steps}) on TensorFlow"
    return None


# One compiled checksum function per process (`functools.cache`), shared by every model: XLA
# compiles it once per layout (shapes and dtypes), so only the first fit of a layout pays.
@functools.cache
def _checksum_runner() -> Any:
    u32 = tf.uint32
    try:  # XLA's variadic reduce: both sums in one pass, 2-3x faster on CPU than two reduce_sums
        from tensorflow.compiler.tf2xla.python import xla as tf_xla

        @tf.function(autograph=False)
        def add_pairs(a0: Any, b0: Any, a1: Any, b1: Any) -> Any:
            return a0 + a1, b0 + b1

        reducer = add_pairs.get_concrete_function(*[tf.TensorSpec([], u32)] * 4)
    except (ImportError, AttributeError):  # pragma: no cover - a semi-private module moved
        tf_xla = None

    def lanes(value: Any) -> Any:
        w = _words(tf.convert_to_tensor(value))
        if tf_xla is not None:
            zero = tf.constant(0, u32)
            return tf.stack(tf_xla.variadic_reduce([w, _mixed_words(w)], [zero, zero], [0], reducer))
        return tf.stack([tf.reduce_sum(w), tf.reduce_sum(_mixed_words(w))])

    @tf.function(jit_compile=True, autograph=False)
    def run(values: list) -> Any:
        return tf.stack([lanes(v) for v in values])

    return run
