"""The one module that branches on the Keras backend.

Everything that differs between TensorFlow, JAX and PyTorch lives here, behind
small functions with the same meaning on every backend.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)


def name() -> str:
    """The active Keras backend: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


def version() -> str:
    """The version of the active backend's framework."""
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(name(), "numpy")
    return str(getattr(__import__(module), "__version__", "unknown"))


def seed_backend(seed: int) -> None:
    """Seeds python, numpy, the backend framework and Keras' global SeedGenerator."""
    keras.utils.set_random_seed(seed)


def to_numpy(value: Any, replica: int = 0) -> np.ndarray:
    """A host numpy view of a variable's current value (no copy on CPU where possible).

    `replica` picks the copy of a variable that devices hold one each of (see
    `replica_devices`); a variable with a single copy ignores it.
    """
    if isinstance(value, keras.Variable):
        value = value.value
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(value, tf.distribute.DistributedValues):
            copies = value.values if _mirrored(value) else value.values[:1]
            value = copies[replica] if replica < len(copies) else copies[0]
        # `.numpy()` copies; `np.asarray` of the tensor `value()` reads (one ReadVariableOp;
        # `read_value()` adds an Identity op) is a view of the variable's buffer on CPU.
        read = getattr(value, "value", None)
        return np.asarray(read() if callable(read) else value)
    if backend == "torch":
        return value.detach().cpu().numpy()
    if replica:
        copies = _replicated_shards(value)
        if replica < len(copies):
            return np.asarray(copies[replica].data)
    return np.asarray(value)


def data_to_numpy(value: Any) -> np.ndarray:
    """A host NumPy copy of input data of any kind (NumPy, TensorFlow, JAX or torch
    arrays), whatever the backend."""
    return np.array(keras.ops.convert_to_numpy(value))


def child_determinism_environment() -> dict[str, str]:
    """Environment variables that turn on, in a child process, the deterministic kernels
    this process has on (TensorFlow's op determinism has no other way across processes)."""
    if name() == "tensorflow" and _tf_op_determinism_enabled() is True:
        return {"TF_DETERMINISTIC_OPS": "1"}
    return {}


def replica_devices(value: Any) -> tuple[str, ...]:
    """The devices that each hold their own copy of a variable, in replica order: the
    components of a TensorFlow MirroredVariable, the shards of a fully replicated JAX
    array. Empty when the variable has one copy (or copies that differ by design, such
    as TensorFlow sync-on-read variables)."""
    if isinstance(value, keras.Variable):
        value = value.value
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(value, tf.distribute.DistributedValues) and _mirrored(value) and len(value.values) > 1:
            return tuple(str(copy.device) for copy in value.values)
        return ()
    if backend == "jax":
        return tuple(str(shard.device) for shard in _replicated_shards(value))
    return ()


def _mirrored(value: Any) -> bool:
    """Whether a TensorFlow distributed variable keeps its copies equal (not sync-on-read)."""
    import tensorflow as tf

    return getattr(value, "synchronization", None) != tf.VariableSynchronization.ON_READ


def _replicated_shards(value: Any) -> list:
    """The per-device shards of a fully replicated JAX array on several devices, else []."""
    sharding = getattr(value, "sharding", None)
    shards = getattr(value, "addressable_shards", None) or []
    if sharding is None or not getattr(sharding, "is_fully_replicated", False) or len(shards) < 2:
        return []
    return list(shards)


def is_chief(model: Any = None) -> bool:
    """Whether this process writes shared files (fingerprint references).

    False only for the non-chief processes of a multi-worker run: on TensorFlow, every
    task but "chief" (or worker 0 when the cluster has no chief) of the model's strategy's
    cluster resolver; on JAX, every process but process 0. True otherwise.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        resolver = getattr(strategy, "cluster_resolver", None)
        task_type = getattr(resolver, "task_type", None)
        if not task_type:
            return True
        if task_type == "chief":
            return True
        cluster = resolver.cluster_spec().as_dict()
        return task_type == "worker" and int(resolver.task_id or 0) == 0 and "chief" not in cluster
    if backend == "jax":
        import jax

        return jax.process_index() == 0
    if backend == "torch":
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return True


def distribution_scope(model: Any) -> contextlib.AbstractContextManager:
    """The scope a model's variables must be created in: on TensorFlow, the scope of the
    tf.distribute strategy the model was created under (as Keras builds it); else none."""
    strategy = getattr(model, "_distribute_strategy", None) if name() == "tensorflow" else None
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def seed_state_max() -> int:
    """The largest value a SeedGenerator state entry can hold on this backend."""
    return 2**31 - 1 if name() == "torch" else 2**32 - 1


def enable_op_determinism(threads: int | None, inter_op_threads: int | None) -> tuple[dict, dict]:
    """Turns on the backend's deterministic kernels and optional CPU thread limits.

    Returns:
        (applied, not_applied): what was set, and what could not be with the reason.
    """
    applied: dict[str, Any] = {}
    not_applied: dict[str, str] = {}
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

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
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
        applied["torch_deterministic_algorithms"] = True
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        applied["cudnn_deterministic"] = True
        if torch.cuda.is_available() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            applied["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        if threads is not None:
            torch.set_num_threads(threads)
            applied["intra_op_threads"] = threads
        if inter_op_threads is not None:
            try:
                torch.set_num_interop_threads(inter_op_threads)
                applied["inter_op_threads"] = inter_op_threads
            except RuntimeError as error:
                not_applied["inter_op_threads"] = f"torch already started its thread pool ({error})"
    elif backend == "jax":
        flag = "--xla_gpu_deterministic_ops=true"
        import jax

        initialized = _jax_backends_initialized(jax)
        if flag in os.environ.get("XLA_FLAGS", ""):
            applied["xla_deterministic_ops"] = True
        elif initialized:
            not_applied["xla_deterministic_ops"] = (
                "JAX is already initialized; set XLA_FLAGS=" + flag + " before the first "
                "JAX operation (or start with `keras-repro run`)"
            )
        else:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
            applied["xla_deterministic_ops"] = True
        for key, value in (("intra_op_threads", threads), ("inter_op_threads", inter_op_threads)):
            if value is not None:
                not_applied[key] = "JAX has no runtime thread-count setting; use XLA_FLAGS"
    else:
        not_applied["op_determinism"] = f"no determinism switch for the {backend} backend"
    return applied, not_applied


def _jax_backends_initialized(jax_module: Any) -> bool:
    """Whether JAX has already created its backends (after which XLA_FLAGS are ignored)."""
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # pragma: no cover - private layout changed
        return True


def determinism_state() -> dict[str, Any]:
    """The determinism switches currently in force, for the environment manifest."""
    backend = name()
    state: dict[str, Any] = {}
    if backend == "tensorflow":
        import tensorflow as tf

        state["tf_op_determinism"] = _tf_op_determinism_enabled()
        state["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
        state["inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif backend == "torch":
        import torch

        state["torch_deterministic_algorithms"] = bool(torch.are_deterministic_algorithms_enabled())
        state["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        state["intra_op_threads"] = torch.get_num_threads()
    elif backend == "jax":
        state["xla_deterministic_ops"] = "--xla_gpu_deterministic_ops=true" in os.environ.get(
            "XLA_FLAGS", ""
        )
    return state


def _tf_op_determinism_enabled() -> bool | str:
    """Whether TF op determinism is on ("unknown" if TF no longer exposes it)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return "unknown"


def devices() -> list[str]:
    """Names of the devices the backend computes on."""
    backend = name()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
        if backend == "jax":
            import jax

            return [str(d) for d in jax.devices()]
        if backend == "torch":
            import torch

            found = ["cpu"]
            if torch.cuda.is_available():
                found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            return found
    except Exception as error:  # noqa: BLE001 - the manifest must never break a run
        logger.debug("Could not list devices: %s", error)
    return []


def native_ordered_input(data: tuple, rows_for_epoch: Any, num_rows: int, batch_size: int) -> tuple[Any, Any] | None:
    """An input pipeline that visits `data` rows in the order `rows_for_epoch(epoch)` gives.

    On TensorFlow this is a tf.data pipeline over row indices held in a variable
    (set at each epoch start) that gathers each batch from the arrays, the same
    shape as Keras' own array pipeline, so it keeps native speed. Other backends
    return None and use the backend-neutral `PyDataset` in `keras_repro.feeding`.

    Returns:
        (dataset, set_epoch) or None.
    """
    if name() != "tensorflow":
        return None
    import tensorflow as tf

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


def input_hazards(data: Any) -> list[str]:
    """Known sources of nondeterminism in an input pipeline keras_repro cannot reorder."""
    hazards: list[str] = []
    module = type(data).__module__
    if module.startswith("tensorflow") and hasattr(data, "_inputs"):
        seen: set[int] = set()
        stack = [data]
        while stack:
            dataset = stack.pop()
            if id(dataset) in seen:
                continue
            seen.add(id(dataset))
            kind = type(dataset).__name__
            seed, seed2 = getattr(dataset, "_seed", None), getattr(dataset, "_seed2", None)
            if "Shuffle" in kind and seed is not None and int(seed) == 0 and int(seed2) == 0:
                hazards.append("tf.data shuffle without a seed (pass seed=... to Dataset.shuffle)")
            if str(getattr(dataset, "_deterministic", "")).lower() == "false":
                hazards.append(f"tf.data {kind} with deterministic=False")
            try:
                stack.extend(dataset._inputs())
            except Exception:  # noqa: BLE001 - private API; stop walking, keep what was found
                break
        try:
            if data.options().deterministic is False:
                hazards.append("tf.data options with deterministic=False")
        except Exception:  # noqa: BLE001
            pass
    elif module.startswith("torch.utils.data"):
        sampler = getattr(data, "sampler", None)
        if type(sampler).__name__ == "RandomSampler" and getattr(sampler, "generator", None) is None:
            hazards.append("torch DataLoader with shuffle=True and no generator (pass generator=torch.Generator().manual_seed(...))")
    return sorted(set(hazards))


def sync_model_state(model: Any) -> None:
    """Makes the model's variables current mid-epoch.

    The JAX trainer keeps the training state outside the variables during an epoch
    and writes it back only at epoch end; `jax_state_sync` writes it back now (and
    tells the trainer to read it again before the next step). Other backends update
    the variables in place.
    """
    if name() == "jax" and getattr(model, "_jax_state", None) is not None:
        model.jax_state_sync()


def checksum_function(variables: list, replica: int = 0, model: Any = None) -> Callable[[], np.ndarray]:
    """A function returning the batch checksum lanes (`keras_repro.checksums`) of these
    variables, uint32 of shape (variables, 2), computed on their devices in one
    compiled call (JAX, TensorFlow), with a few vectorized torch ops (PyTorch tensors
    on an accelerator), or in NumPy over zero-copy views (PyTorch on CPU, faster there
    than torch's integer ops).

    Falls back to reading the variables to the host (`to_numpy`) where the compiled
    form cannot run, e.g. on TensorFlow distributed variables. With `model`, the JAX
    form reads the trainer's current state mid-epoch instead of syncing it back into
    the variables (which would cost a write per variable and a state rebuild before the
    next step); without it, call `sync_model_state` first.
    """
    from keras_repro import checksums

    if not variables:
        return lambda: np.zeros((0, 2), np.uint32)

    def on_host() -> np.ndarray:
        return np.stack([checksums.lanes(to_numpy(v, replica)) for v in variables])

    backend = name()
    try:
        if backend == "tensorflow":
            compiled = _tf_checksum_function(variables)
        elif backend == "jax" and not replica:
            compiled = _jax_checksum_function(variables, model)
        elif backend == "torch" and any(v.value.device.type != "cpu" for v in variables):
            compiled = _torch_checksum_function(variables)
        else:
            return on_host
        compiled()  # compile now, and find out whether it runs here
    except Exception as error:  # noqa: BLE001 - any failure means: use the host path
        logger.debug("batch checksums on the host: the %s form failed (%s)", backend, error)
        return on_host
    return compiled


def _tf_checksum_function(variables: list) -> Callable[[], np.ndarray]:
    import tensorflow as tf

    if any(isinstance(v.value, tf.distribute.DistributedValues) for v in variables):
        raise TypeError("distributed variables")
    run = _tf_checksum_runner()
    handles = [v.value for v in variables]
    return lambda: np.asarray(run(handles))


# One compiled checksum function per backend (`functools.cache`), reused for every model:
# JAX and TensorFlow compile it once per layout (shapes and dtypes) and keep that, so only
# the first fit with a given model shape pays the compilation.
@functools.cache
def _tf_checksum_runner() -> Any:
    import tensorflow as tf

    from keras_repro import checksums

    u32 = tf.uint32

    def words(value: Any) -> Any:
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

    def fmix(h: Any) -> Any:
        shift = tf.bitwise.right_shift
        h = tf.bitwise.bitwise_xor(h, shift(h, tf.constant(16, u32)))
        h = h * tf.constant(checksums.FMIX_1, u32)
        h = tf.bitwise.bitwise_xor(h, shift(h, tf.constant(13, u32)))
        h = h * tf.constant(checksums.FMIX_2, u32)
        return tf.bitwise.bitwise_xor(h, shift(h, tf.constant(16, u32)))

    def lanes(value: Any) -> Any:
        w = words(tf.convert_to_tensor(value))
        positions = tf.cast(tf.range(tf.size(w)), u32) * tf.constant(checksums.PHI, u32)
        return tf.stack([tf.reduce_sum(w), tf.reduce_sum(fmix(w + positions))])

    @tf.function(jit_compile=True, autograph=False)
    def run(values: list) -> Any:
        return tf.stack([lanes(v) for v in values])

    return run


def _jax_checksum_function(variables: list, model: Any = None) -> Callable[[], np.ndarray]:
    run = _jax_checksum_runner()
    values = _jax_current_values(variables, model)
    return lambda: np.asarray(run(values()))


def _jax_current_values(variables: list, model: Any) -> Callable[[], list]:
    """A function returning the variables' current arrays: from the JAX trainer's state
    while it holds them (mid-epoch), else from the variables."""
    slots: dict[int, tuple[str, int]] = {}
    if model is not None:
        optimizer = getattr(model, "optimizer", None)
        groups = (
            ("trainable_variables", model.trainable_variables),
            ("non_trainable_variables", model.non_trainable_variables),
            ("optimizer_variables", optimizer.variables if optimizer is not None else []),
        )
        for key, group in groups:
            for index, variable in enumerate(group):
                slots.setdefault(id(variable), (key, index))
    places = [slots.get(id(v)) for v in variables]

    def values() -> list:
        state = getattr(model, "_jax_state", None)
        if not state or getattr(model, "_jax_state_synced", True):
            return [v.value for v in variables]
        if any(place is None or state.get(place[0]) is None for place in places):
            model.jax_state_sync()  # a variable outside the state: read them all synced
            return [v.value for v in variables]
        return [state[key][index] for key, index in places]

    return values


@functools.cache
def _jax_checksum_runner() -> Any:
    import jax
    import jax.numpy as jnp

    from keras_repro import checksums

    u32 = jnp.uint32

    def words(value: Any) -> Any:
        if value.dtype == jnp.bool_:
            value = value.astype(u32)
        elif value.dtype.itemsize == 1:
            value = jax.lax.bitcast_convert_type(value, jnp.uint8).astype(u32)
        elif value.dtype.itemsize == 2:
            value = jax.lax.bitcast_convert_type(value, jnp.uint16).astype(u32)
        else:
            value = jax.lax.bitcast_convert_type(value, u32)
        return value.reshape(-1)

    def fmix(h: Any) -> Any:
        h = h ^ (h >> u32(16))
        h = h * u32(checksums.FMIX_1)
        h = h ^ (h >> u32(13))
        h = h * u32(checksums.FMIX_2)
        return h ^ (h >> u32(16))

    def lanes(value: Any) -> Any:
        w = words(value)
        positions = jnp.arange(w.size, dtype=u32) * u32(checksums.PHI)
        return jnp.stack([w.sum(dtype=u32), fmix(w + positions).sum(dtype=u32)])

    return jax.jit(lambda values: jnp.stack([lanes(v) for v in values]))


def _torch_checksum_function(variables: list) -> Callable[[], np.ndarray]:
    import torch

    from keras_repro import checksums

    # torch lacks unsigned 32-bit arithmetic on some devices: compute in int32, whose
    # products and sums wrap around to the same bits, shift logically by masking the
    # sign extension off, and sum in int64, keeping the low 32 bits.
    def signed(constant: int) -> int:
        return constant - (1 << 32) if constant >= 1 << 31 else constant

    def words(value: Any) -> Any:
        value = value.detach().contiguous().reshape(-1)
        size = value.element_size()
        if value.dtype == torch.bool or size == 1:
            return value.view(torch.uint8).to(torch.int32)
        if size == 2:
            return value.view(torch.int16).to(torch.int32) & 0xFFFF
        return value.view(torch.int32)

    def shifted(h: Any, bits: int) -> Any:
        return (h >> bits) & ((1 << (32 - bits)) - 1)

    cache: dict[str, Any] = {}

    def run() -> np.ndarray:
        with torch.no_grad():
            values = [words(v.value) for v in variables]
            w = torch.cat(values)
            if "positions" not in cache:  # the layout is fixed: compute the positions once
                cache["sizes"] = [int(v.numel()) for v in values]
                positions = torch.cat([torch.arange(n, dtype=torch.int64) for n in cache["sizes"]])
                positions = (positions * checksums.PHI) & 0xFFFFFFFF
                cache["positions"] = torch.where(positions >= 1 << 31, positions - (1 << 32), positions).to(
                    device=w.device, dtype=torch.int32
                )
            h = w + cache["positions"]
            h = h ^ shifted(h, 16)
            h = h * signed(checksums.FMIX_1)
            h = h ^ shifted(h, 13)
            h = h * signed(checksums.FMIX_2)
            h = h ^ shifted(h, 16)
            sums = [
                torch.stack([a.sum(dtype=torch.int64), b.sum(dtype=torch.int64)])
                for a, b in zip(w.split(cache["sizes"]), h.split(cache["sizes"]))
            ]
            return (torch.stack(sums).cpu().numpy() & 0xFFFFFFFF).astype(np.uint32)

    return run
