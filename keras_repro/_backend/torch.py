"""The PyTorch backend: torch.distributed ranks, deterministic algorithms and cuBLAS, and
batch checksums with torch ops on accelerators (NumPy over zero-copy views on CPU)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from keras_repro._backend import flags
from keras_repro._backend.common import (  # noqa: F401 - the interface: shared implementations
    Deferred,
    async_batch_hooks_help,
    build_with_lanes,
    call_model,
    child_determinism_environment,
    data_checks_gap,
    data_to_numpy,
    deferred_or_host,
    distribution_scope,
    first_match,
    gather_from_processes,
    host_checksums,
    input_hazards,
    input_passes_per_epoch,
    model_loss,
    native_ordered_input,
    symbolic_build_passes as input_build_passes,
    plain_text,
    process_count,
    replica_devices,
    seed_backend,
    sync_model_state,
    traced_step_mode,
    trains_under_tf_distribute,
    value_of,
    wrap_step,
)

logger = logging.getLogger(__name__)


def version() -> str:
    return str(torch.__version__)


def to_numpy(value: Any, replica: int = 0) -> np.ndarray:
    """A host NumPy view (CPU tensors) or copy (accelerators) of a tensor."""
    return _numpy(value_of(value).detach().cpu())


def _numpy(tensor: Any) -> np.ndarray:
    """`tensor.numpy()` of a CPU tensor; a type NumPy lacks (bfloat16, float8) as the `ml_dtypes`
    type of the same bits (Keras depends on ml_dtypes), as JAX and TensorFlow hand them over."""
    found = _ml_dtypes().get(tensor.dtype)
    if found is None:
        return tensor.numpy()
    bits, kind = found
    return tensor.view(bits).numpy().view(kind)


@functools.cache
def _ml_dtypes() -> dict:
    """{torch dtype NumPy lacks: (torch integer type of its size, ml_dtypes type)}."""
    import ml_dtypes

    pairs = {"bfloat16": torch.int16, "float8_e4m3fn": torch.uint8, "float8_e5m2": torch.uint8}
    return {getattr(torch, name): (bits, getattr(ml_dtypes, name)) for name, bits in pairs.items()
            if hasattr(torch, name) and hasattr(ml_dtypes, name)}


def kept_values(variables: list) -> list:
    """Host copies (see `common`): variables are updated in place."""
    return [np.array(array, copy=True) for array in read_batch(variables)]


def read_batch(variables: list, replica: int = 0) -> list[np.ndarray]:
    """Host arrays of several tensors: views on CPU; from accelerators, asynchronous copies
    into a pinned staging buffer (one synchronization per batch; pageable copies reach a
    fraction of the host link's speed). Two buffers alternate, so a batch's views stay valid
    while the next batch is read; they are kept for the next fingerprint."""
    tensors = [value_of(variable).detach() for variable in variables]
    if all(t.device.type == "cpu" for t in tensors):
        return [_numpy(t) for t in tensors]
    try:
        return _STAGING.copy(tensors)
    except (RuntimeError, TypeError) as error:  # no pinned memory, or a dtype NumPy lacks
        logger.debug("pinned staging failed (%s): reading tensor by tensor", error)
        return [_numpy(t.cpu()) for t in tensors]


class _Staging:
    """Two pinned host buffers, used in turn, grown as needed (guarded by a lock)."""

    ALIGN = 64

    def __init__(self) -> None:
        import threading

        self._buffers: list[Any] = [None, None]
        self._turn = 0
        self._lock = threading.Lock()

    def copy(self, tensors: list) -> list[np.ndarray]:
        sizes = [t.numel() * t.element_size() for t in tensors]
        total = sum(-(-size // self.ALIGN) * self.ALIGN for size in sizes)
        with self._lock:
            self._turn = 1 - self._turn
            buffer = self._buffers[self._turn]
            if buffer is None or buffer.numel() < total:
                buffer = self._buffers[self._turn] = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        views, offset = [], 0
        for tensor, size in zip(tensors, sizes):
            target = buffer[offset : offset + size].view(tensor.dtype).view(tensor.shape)
            target.copy_(tensor.contiguous(), non_blocking=True)
            views.append(target)
            offset += -(-size // self.ALIGN) * self.ALIGN
        torch.cuda.synchronize()
        return [_numpy(view) for view in views]


_STAGING = _Staging()


def is_chief(model: Any = None) -> bool:
    """Rank 0 of an initialized torch.distributed process group (or no group)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def seed_state_max() -> int:
    """torch's SeedGenerator state is int32."""
    return 2**31 - 1


def enable_op_determinism(threads: int | None, inter_op_threads: int | None) -> tuple[dict, dict]:
    """Deterministic algorithms, cuDNN's deterministic mode, cuBLAS's workspace, threads."""
    applied: dict[str, Any] = {}
    not_applied: dict[str, str] = {}
    torch.use_deterministic_algorithms(True)
    applied["torch_deterministic_algorithms"] = True
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    applied["cudnn_deterministic"] = True
    if torch.cuda.is_available() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags.CUBLAS_WORKSPACE_CONFIG
        applied["CUBLAS_WORKSPACE_CONFIG"] = flags.CUBLAS_WORKSPACE_CONFIG
    if threads is not None:
        torch.set_num_threads(threads)
        applied["intra_op_threads"] = threads
    if inter_op_threads is not None:
        try:
            torch.set_num_interop_threads(inter_op_threads)
            applied["inter_op_threads"] = inter_op_threads
        except RuntimeError as error:
            not_applied["inter_op_threads"] = f"torch already started its thread pool ({error})"
    return applied, not_applied


_cublas_late = False
"""Set once, at `import keras_repro`: CUDA had started before, without cuBLAS's workspace setting."""


def prepare_kernels_at_import() -> None:
    """Sets CUBLAS_WORKSPACE_CONFIG before cuBLAS makes its first handle (it reads it then)."""
    global _cublas_late
    if "CUBLAS_WORKSPACE_CONFIG" in os.environ or not torch.cuda.is_available():
        return
    if torch.cuda.is_initialized():
        _cublas_late = True
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags.CUBLAS_WORKSPACE_CONFIG


def set_deterministic_kernels(on: bool) -> None:
    """Deterministic algorithms and cuDNN's deterministic mode (no benchmarking) on or off."""
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False


def kernels_in_effect() -> tuple[bool, str]:
    if not (torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic):
        return False, "torch deterministic algorithms are off"
    if accelerators() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        why = f"{flags.OPT_OUT_VARIABLE}=0" if flags.opted_out() else "start the program with `keras-repro run`"
        return False, f"CUBLAS_WORKSPACE_CONFIG is not set: {why}"
    if accelerators() and _cublas_late:
        return False, ("CUDA started before keras_repro could set CUBLAS_WORKSPACE_CONFIG: import keras_repro "
                       "first, or start the program with `keras-repro run`")
    return True, "torch deterministic algorithms, cuDNN deterministic"


def determinism_failure(error: BaseException) -> str | None:
    """torch raises RuntimeError "<op> does not have a deterministic implementation, but you
    set 'torch.use_deterministic_algorithms(True)'"."""
    if not isinstance(error, RuntimeError) or "deterministic implementation" not in plain_text(error):
        return None
    return first_match(plain_text(error), (r"(\S+) does not have a deterministic",))


def determinism_state() -> dict[str, Any]:
    return {
        "torch_deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "intra_op_threads": torch.get_num_threads(),
    }


def devices() -> list[str]:
    return ["cpu"] + accelerators()


def accelerators() -> list[str]:
    try:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no driver: no accelerator
        return []


def deferred_checksums(variables: list, replica: int = 0, model: Any = None) -> Deferred:
    """torch ops where the variables live on an accelerator (results stay there until
    `finish`); on CPU, NumPy over zero-copy views in one `FlatLayout` pass on the training
    thread (torch's integer ops are slower there and go parallel, which on a busy machine
    waits for descheduled threads; a worker thread loses on a machine without a free core)."""
    if not any(value_of(v).device.type != "cpu" for v in variables):
        return deferred_or_host(lambda: host_checksums(variables, replica, to_numpy), variables, replica, to_numpy)

    def build() -> Deferred:
        run = _device_checksum_function(variables)

        def finish(pending: list) -> np.ndarray:
            if not pending:
                return np.zeros((0, len(variables), 2), np.uint32)
            return (torch.stack(pending).cpu().numpy() & 0xFFFFFFFF).astype(np.uint32)

        return run, finish

    return deferred_or_host(build, variables, replica, to_numpy)


# torch lacks unsigned 32-bit arithmetic on some devices: compute in int32, whose products and
# sums wrap around to the same bits, shift logically by masking the sign extension off, and sum
# in int64, keeping the low 32 bits.

def _signed(constant: int) -> int:
    return constant - (1 << 32) if constant >= 1 << 31 else constant


def _words(value: Any) -> Any:
    """The checksum words of a tensor as int32 (`keras_repro.fingerprinting.checksums`), flat."""
    value = value.detach().contiguous().reshape(-1)
    size = value.element_size()
    if value.dtype == torch.bool or size == 1:
        return value.view(torch.uint8).to(torch.int32)
    if size == 2:
        return value.view(torch.int16).to(torch.int32) & 0xFFFF
    return value.view(torch.int32)


def _positions(sizes: list[int], device: Any) -> Any:
    """i * PHI (mod 2**32, as int32) for the words of arrays of `sizes` laid end to end."""
    from keras_repro.fingerprinting import checksums

    positions = torch.cat([torch.arange(n, dtype=torch.int64) for n in sizes])
    positions = (positions * checksums.PHI) & 0xFFFFFFFF
    return torch.where(positions >= 1 << 31, positions - (1 << 32), positions).to(device=device, dtype=torch.int32)


def _device_lanes(values: list, sizes: list[int], positions: Any) -> Any:
    """The lanes of int32 word tensors (`_words`) on their device: int64 (len(values), 2)."""
    from keras_repro.fingerprinting import checksums

    def shifted(h: Any, bits: int) -> Any:
        return (h >> bits) & ((1 << (32 - bits)) - 1)

    w = torch.cat(values)
    h = w + positions
    h = h ^ shifted(h, 16)
    h = h * _signed(checksums.FMIX_1)
    h = h ^ shifted(h, 13)
    h = h * _signed(checksums.FMIX_2)
    h = h ^ shifted(h, 16)
    sums = [torch.stack([a.sum(dtype=torch.int64), b.sum(dtype=torch.int64)]) for a, b in zip(w.split(sizes), h.split(sizes))]
    return torch.stack(sums)


def _device_checksum_function(variables: list) -> Callable[[], np.ndarray]:
    cache: dict[str, Any] = {}

    def run() -> np.ndarray:
        with torch.no_grad():
            values = [_words(v.value) for v in variables]
            if "positions" not in cache:  # the layout is fixed: compute the positions once
                cache["sizes"] = [int(v.numel()) for v in values]
                cache["positions"] = _positions(cache["sizes"], values[0].device)
            return _device_lanes(values, cache["sizes"], cache["positions"])  # on the device: `finish` brings a group over

    return run


_HOST_LAYOUTS: dict[tuple[int, ...], Any] = {}
"""`FlatLayout`s of the batches `step_lanes` checked on the host, by their words' sizes."""


def step_lanes(leaves: list) -> Any:
    """The checksum lanes of each tensor of a batch: uint32 NumPy (len(leaves), 2) from zero-copy
    views of CPU tensors, in one `FlatLayout` pass (torch's integer ops are slower there);
    int64 on the device for tensors on an accelerator (`lanes_to_host` keeps the low 32 bits)."""
    from keras_repro.fingerprinting import checksums

    tensors = [leaf if isinstance(leaf, torch.Tensor) else torch.as_tensor(leaf) for leaf in leaves]
    if any(t.device.type != "cpu" for t in tensors):
        with torch.no_grad():
            words = [_words(t) for t in tensors]
            sizes = [int(w.numel()) for w in words]
            return _device_lanes([w.to(tensors[0].device) for w in words], sizes, _positions(sizes, tensors[0].device))
    # a batch holds no gradient: `detach` is free, and `numpy()` is a view (or the words' copy
    # for 1- and 2-byte types, made by `checksums.words`)
    words = [checksums.words(_numpy(t.detach())) for t in tensors]
    sizes = tuple(w.size for w in words)
    layout = _HOST_LAYOUTS.get(sizes)
    if layout is None:
        if len(_HOST_LAYOUTS) > 16:
            _HOST_LAYOUTS.clear()
        layout = _HOST_LAYOUTS[sizes] = checksums.FlatLayout(sizes)
    return layout.lanes(words)


def lanes_to_host(pending: list) -> np.ndarray:
    """Lanes that `step_lanes` returned, brought to the host together: uint32 (n, leaves, 2)."""
    if all(isinstance(lanes, np.ndarray) for lanes in pending):
        return np.stack(pending).astype(np.uint32, copy=False)
    host = [lanes.cpu().numpy() if isinstance(lanes, torch.Tensor) else lanes for lanes in pending]
    return (np.stack(host).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)


def traced_step(model: Any, x: Any, y: Any, sample_weight: Any, calls: list) -> tuple[Any, list]:
    """One eager step with autograd, as Keras' torch `train_step` (see `common`)."""
    variables = list(model.trainable_variables)
    y_pred = call_model(model, x)
    model.zero_grad()
    loss = model_loss(model, x, y, y_pred, sample_weight)
    model.optimizer.scale_loss(loss).backward()
    gradients = [torch.zeros_like(v.value) if v.value.grad is None else v.value.grad.detach().clone() for v in variables]
    with torch.no_grad():
        model.optimizer.apply(gradients, variables)
    model.zero_grad()
    return loss.detach(), gradients


def framework_rng_state() -> list[np.ndarray]:
    """torch's global RNG states, the CPU's then each CUDA device's: Keras' torch Dropout
    without a seed draws its masks there."""
    states = [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    return [state.numpy().copy() for state in states]


def set_framework_rng_state(states: list[np.ndarray]) -> None:
    tensors = [torch.from_numpy(np.asarray(state, dtype=np.uint8).copy()) for state in states]
    torch.set_rng_state(tensors[0])
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device, state in enumerate(tensors[1 : 1 + devices]):
        torch.cuda.set_rng_state(state, device)
