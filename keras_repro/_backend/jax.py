"""The JAX backend: replicated arrays, the trainer's deferred state, XLA's determinism flag,
and batch checksums compiled with XLA."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from keras_repro._backend import flags
from keras_repro._backend.common import (  # noqa: F401 - the interface: shared implementations
    Deferred,
    child_determinism_environment,
    data_checks_gap,
    data_to_numpy,
    deferred_or_host,
    determinism_failure,
    distribution_scope,
    framework_rng_state,
    input_hazards,
    input_passes_per_epoch,
    native_ordered_input,
    symbolic_build_passes as input_build_passes,
    plain_text,
    seed_backend,
    set_framework_rng_state,
    trains_under_tf_distribute,
    value_of,
    with_lanes,
)
from keras_repro._backend.jax_trace import traced_step, traced_step_mode  # noqa: F401 - the interface

logger = logging.getLogger(__name__)


def version() -> str:
    return str(jax.__version__)


def to_numpy(value: Any, replica: int = 0) -> np.ndarray:
    """A host NumPy view of an array (replica k: its k-th shard when fully replicated). An
    array sharded across processes is gathered whole (a collective: see `read_batch`)."""
    value = value_of(value)
    if replica:
        copies = _replicated_shards(value)
        if replica < len(copies):
            return np.asarray(copies[replica].data)
    return read_batch([value])[0]


def _replicated_shards(value: Any) -> list:
    """The per-device shards of a fully replicated array on several devices, else []."""
    sharding = getattr(value, "sharding", None)
    if sharding is None or len(getattr(sharding, "addressable_devices", ())) < 2:
        return []  # (and: a replicated array put on one device of each process has no readable shards)
    shards = getattr(value, "addressable_shards", None) or []
    if sharding is None or not getattr(sharding, "is_fully_replicated", False) or len(shards) < 2:
        return []
    return list(shards)


def read_batch(variables: list, replica: int = 0) -> list[np.ndarray]:
    """Host arrays of several variables: views on CPU; on accelerators one `device_get`,
    which starts every copy before it waits for any.

    In a multi-process run, an array that no process holds whole (sharded across processes)
    is gathered whole with one `process_allgather` for all such arrays of the batch: a
    collective, which every process reaches in the same order since every process reads the
    same variables in the same order. A replicated array is read from this process's own copy,
    so copies that drifted apart stay visible (see `keras_repro.fit.processes`).
    """
    values = [value_of(variable) for variable in variables]
    spread = [index for index, value in enumerate(values) if _spread_over_processes(value)]
    local = [index for index, value in enumerate(values) if index not in spread] if spread else range(len(values))
    arrays: list[Any] = [None] * len(values)
    if spread:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([values[i] for i in spread], tiled=True)
        for index, array in zip(spread, gathered):
            arrays[index] = np.asarray(array)
    if replica or all(_on_cpu(values[i]) for i in local):
        for index in local:
            arrays[index] = _local_copy(values[index], replica)
    else:
        for index, array in zip(local, jax.device_get([values[i] for i in local])):
            arrays[index] = np.asarray(array)
    return arrays


def kept_values(variables: list) -> list:
    """Copies on the arrays' own devices (see `common`): no transfer either way. The arrays
    themselves would not do: Keras' compiled train step donates the buffers of the state it is
    given."""
    import jax.numpy as jnp

    return [jnp.copy(value_of(variable)) for variable in variables]


def _local_copy(value: Any, replica: int) -> np.ndarray:
    """A host array of a value this process holds whole (replica k: its k-th copy)."""
    if replica:
        copies = _replicated_shards(value)
        if replica < len(copies):
            return np.asarray(copies[replica].data)
    if getattr(value, "is_fully_addressable", True) or value.sharding.is_fully_replicated:
        return np.asarray(value)
    whole = np.empty(value.shape, np.dtype(value.dtype))  # sharded within this process only
    for shard in value.addressable_shards:
        whole[shard.index] = np.asarray(shard.data)
    return whole


def _spread_over_processes(value: Any) -> bool:
    """Whether some process does not hold the whole array (then it must be gathered)."""
    if getattr(value, "is_fully_addressable", True):
        return False
    return _sharded_across_processes(value.sharding, tuple(value.shape))


@functools.lru_cache(maxsize=1024)
def _sharded_across_processes(sharding: Any, shape: tuple[int, ...]) -> bool:
    """Whether the devices of some process hold only part of an array of this sharding: the
    same answer in every process (it reads the global sharding, not this process's part)."""
    if sharding.is_fully_replicated:
        return False
    tiles: dict[int, set] = {}  # the distinct tiles of a regular grid each process holds
    for device, index in sharding.devices_indices_map(shape).items():
        tiles.setdefault(device.process_index, set()).add(
            tuple(part.indices(size)[:2] for part, size in zip(index, shape)))
    total = int(np.prod(shape))
    return any(sum(int(np.prod([stop - start for start, stop in tile])) for tile in held) < total
               for held in tiles.values())


def _on_cpu(value: Any) -> bool:
    """Whether an array lives on the host."""
    try:
        return all(device.platform == "cpu" for device in value.devices())
    except AttributeError:
        return True


def replica_devices(value: Any) -> tuple[str, ...]:
    """The devices of a fully replicated array's shards."""
    return tuple(str(shard.device) for shard in _replicated_shards(value_of(value)))


def is_chief(model: Any = None) -> bool:
    """Process 0 of a multi-process run."""
    return jax.process_index() == 0


def process_count() -> int:
    """The processes of the run (`jax.process_count()`, 1 unless `jax.distributed` started)."""
    return int(jax.process_count())


def gather_from_processes(array: np.ndarray) -> np.ndarray:
    """Every process's `array`, stacked in process order (a collective: every process calls
    it at the same point, with an array of the same shape and dtype)."""
    array = np.asarray(array)
    if jax.process_count() == 1:
        return array[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=False))


def seed_state_max() -> int:
    return 2**32 - 1


def backends_initialized() -> bool:
    """Whether JAX has created its backends (after which XLA_FLAGS are not read again)."""
    try:
        from jax._src import xla_bridge

        check = getattr(xla_bridge, "backends_are_initialized", None)
        return bool(check()) if check is not None else bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # pragma: no cover - private layout changed
        return True


def enable_op_determinism(threads: int | None, inter_op_threads: int | None) -> tuple[dict, dict]:
    """XLA's determinism flag, which only takes effect before JAX starts; no thread settings."""
    applied: dict[str, Any] = {}
    not_applied: dict[str, str] = {}
    flag = flags.xla_determinism_flag()
    if flags.has_xla_determinism_flag(os.environ.get("XLA_FLAGS")):
        applied["xla_deterministic_ops"] = True
    elif flag is None:
        not_applied["xla_deterministic_ops"] = "this jaxlib knows none of XLA's determinism flags"
    elif backends_initialized():
        not_applied["xla_deterministic_ops"] = (
            f"JAX is already initialized; set XLA_FLAGS={flag} before the first JAX operation "
            "(or start with `keras-repro run`)"
        )
    else:
        os.environ["XLA_FLAGS"] = flags.with_xla_determinism(os.environ.get("XLA_FLAGS"), flag)
        applied["xla_deterministic_ops"] = True
    for key, value in (("intra_op_threads", threads), ("inter_op_threads", inter_op_threads)):
        if value is not None:
            not_applied[key] = "JAX has no runtime thread-count setting; use XLA_FLAGS"
    return applied, not_applied


_started_without_flag = False
"""Set once, at `import keras_repro`: JAX had started before, without XLA's determinism flag."""


def prepare_kernels_at_import() -> None:
    """Adds XLA's determinism flag to XLA_FLAGS while JAX has not started (it reads them once)."""
    global _started_without_flag
    present = flags.has_xla_determinism_flag(os.environ.get("XLA_FLAGS"))
    if backends_initialized():
        _started_without_flag = not present
        return
    flag = flags.xla_determinism_flag()
    if not present and flag is not None:
        os.environ["XLA_FLAGS"] = flags.with_xla_determinism(os.environ.get("XLA_FLAGS"), flag)


def set_deterministic_kernels(on: bool) -> None:
    """Nothing: XLA's flag is fixed when JAX starts (see `prepare_kernels_at_import`)."""


def kernels_in_effect() -> tuple[bool, str]:
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if _started_without_flag:
        return False, ("JAX started before keras_repro could set XLA's determinism flag: import keras_repro "
                       "before anything runs JAX (restart the kernel), or start the program with `keras-repro run`")
    if flags.has_xla_determinism_flag(xla_flags):
        return True, next(f for f in flags.XLA_DETERMINISM_FLAGS if f in xla_flags.split())
    if flags.opted_out():
        return False, f"XLA's determinism flag was not set: {flags.OPT_OUT_VARIABLE}=0"
    if flags.xla_determinism_flag() is None:
        return False, "this jaxlib knows none of XLA's determinism flags"
    return False, (f"XLA_FLAGS lacks {flags.xla_determinism_flag()}: it was turned off, or set after JAX "
                   "started; start the program with `keras-repro run`")


def determinism_state() -> dict[str, Any]:
    return {"xla_deterministic_ops": flags.has_xla_determinism_flag(os.environ.get("XLA_FLAGS"))}


def devices() -> list[str]:
    try:
        return [str(d) for d in jax.devices()]
    except Exception as error:  # noqa: BLE001 - the manifest must never break a run
        logger.debug("Could not list devices: %s", error)
        return []


def accelerators() -> list[str]:
    try:
        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    except Exception:  # noqa: BLE001 - no backend: no accelerator
        return []


def async_batch_hooks_help() -> bool:
    """True: steps are dispatched asynchronously, and a synchronous batch-end hook makes every
    step wait for the one before."""
    return True


def sync_model_state(model: Any) -> None:
    """Writes the trainer's state back to the variables: the JAX trainer keeps it outside
    them during an epoch and writes it back only at epoch end."""
    if getattr(model, "_jax_state", None) is not None:
        model.jax_state_sync()


def deferred_checksums(variables: list, replica: int = 0, model: Any = None) -> Deferred:
    """Batch checksums compiled with XLA and dispatched asynchronously: `start` returns before
    they are computed (they read the arrays they were given, even if the next step donates
    them), and `finish` brings a group over in one transfer. With `model`, they read the
    trainer's state mid-epoch instead of syncing it back (a write per variable, a rebuild)."""
    import jax.numpy as jnp

    def build() -> Deferred:
        if replica:
            raise TypeError("replicas are read on the host")
        run = _checksum_runner()
        values = _current_values(variables, model)

        def finish(pending: list) -> np.ndarray:
            return np.asarray(jnp.stack(pending)) if pending else np.zeros((0, len(variables), 2), np.uint32)

        return (lambda: run(values())), finish

    return deferred_or_host(build, variables, replica, to_numpy)


def _current_values(variables: list, model: Any) -> Callable[[], list]:
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


def _lanes(value: Any) -> Any:
    """The checksum lanes (`keras_repro.fingerprinting.checksums`) of one array, traced: uint32 (2,)."""
    import jax.numpy as jnp

    from keras_repro.fingerprinting import checksums

    u32 = jnp.uint32
    value = jnp.asarray(value)
    if value.dtype == jnp.bool_:
        value = value.astype(u32)
    elif value.dtype.itemsize == 1:
        value = jax.lax.bitcast_convert_type(value, jnp.uint8).astype(u32)
    elif value.dtype.itemsize == 2:
        value = jax.lax.bitcast_convert_type(value, jnp.uint16).astype(u32)
    else:
        value = jax.lax.bitcast_convert_type(value, u32)
    w = value.reshape(-1)
    h = w + jnp.arange(w.size, dtype=u32) * u32(checksums.PHI)
    h = h ^ (h >> u32(16))
    h = h * u32(checksums.FMIX_1)
    h = h ^ (h >> u32(13))
    h = h * u32(checksums.FMIX_2)
    h = h ^ (h >> u32(16))
    # One variadic reduce for both lanes: one pass, 2-3x faster on CPU than two sums.
    plain, mixed = jax.lax.reduce((w, h), (u32(0), u32(0)), lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))
    return jnp.stack([plain, mixed])


def step_lanes(leaves: list) -> Any:
    """The checksum lanes of each array, uint32 (len(leaves), 2), inside the traced step."""
    import jax.numpy as jnp

    return jnp.stack([_lanes(leaf) for leaf in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def lanes_to_host(pending: list) -> np.ndarray:
    """Lanes that `step_lanes` returned, brought to the host in one `device_get`: uint32 (n, leaves, 2)."""
    return np.stack([np.asarray(lanes, dtype=np.uint32) for lanes in jax.device_get(pending)])


def wrap_step(step: Callable, key: str, lanes_of: Callable[[Any], Any]) -> Callable:
    """A JAX train or test step `(state, data) -> (logs, state)` whose logs also hold, under
    `key`, `lanes_of(data)`."""
    def step_with_lanes(state: Any, data: Any) -> Any:
        logs, state = step(state, data)
        return with_lanes(logs, key, lanes_of(data)), state

    return step_with_lanes


def build_with_lanes(model: Any, kind: str, key: str, take: Callable[[Any], None]) -> Callable:
    """Has Keras build the model's `kind` ("train" or "test") function anew around its step (a
    `wrap_step`), taking `key` out of the logs of every step, so `steps_per_execution` steps
    a call each hand theirs over (Keras' loop calls the jitted step in Python)."""
    keras_make = model._make_function

    def make_function(step_function: Callable, *args: Any, **kwargs: Any) -> Callable:
        def step(state: Any, data: Any) -> Any:
            logs, state = step_function(state, data)
            take(logs.pop(key, None) if isinstance(logs, dict) else None)
            return logs, state

        return keras_make(step, *args, **kwargs)

    model._make_function = make_function
    try:
        getattr(model, f"make_{kind}_function")(force=True)
    finally:
        del model._make_function
    return getattr(model, f"{kind}_function")


@functools.cache
def _checksum_runner() -> Any:
    import jax.numpy as jnp

    return jax.jit(lambda values: jnp.stack([_lanes(v) for v in values]))
