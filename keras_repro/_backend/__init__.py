"""The one place that knows backends: one interface, one module per backend, chosen once.

As Keras' own `keras/src/backend/__init__.py` does, the module of the backend Keras runs
on (`tensorflow`, `jax` or `torch`; `common` holds the defaults, used as they are by Keras'
NumPy backend) is picked once, on first use, and its functions are the interface below.
Nothing outside this package compares backend names. `flags` holds the settings that must
be in place before a backend starts; importing it does not import Keras.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

INTERFACE = (
    "version", "seed_backend", "to_numpy", "read_batch", "data_to_numpy", "replica_devices", "is_chief",
    "distribution_scope", "seed_state_max", "enable_op_determinism", "determinism_state", "devices",
    "accelerators", "native_ordered_input", "input_hazards", "sync_model_state", "deferred_checksums",
    "child_determinism_environment", "prepare_kernels_at_import", "set_deterministic_kernels",
    "kernels_in_effect", "determinism_failure", "plain_text", "async_batch_hooks_help",
    "trains_under_tf_distribute", "process_count", "gather_from_processes",
    "step_lanes", "lanes_to_host", "wrap_step", "build_with_lanes", "data_checks_gap", "input_build_passes",
    "input_passes_per_epoch", "traced_step", "framework_rng_state", "set_framework_rng_state",
    "traced_step_mode", "kept_values",
)
"""What every backend module provides (see `common` for each function's meaning)."""


@functools.cache
def _chosen() -> tuple[str, ModuleType]:
    import keras

    backend = keras.backend.backend()
    module = backend if backend in ("tensorflow", "jax", "torch") else "common"
    return backend, importlib.import_module(f"keras_repro._backend.{module}")


def name() -> str:
    """The active Keras backend: "tensorflow", "jax", "torch" or "numpy"."""
    return _chosen()[0]


def __getattr__(attribute: str) -> Any:
    """The chosen module's function (kept here after the first lookup)."""
    if attribute == "_module":
        return _chosen()[1]
    if attribute not in INTERFACE:
        raise AttributeError(f"module 'keras_repro._backend' has no attribute '{attribute}'")
    value = getattr(_chosen()[1], attribute)
    globals()[attribute] = value
    return value


def checksum_function(variables: list, replica: int = 0, model: Any = None) -> Any:
    """The batch checksum lanes of `variables` now, uint32 (variables, 2): `deferred_checksums`
    brought to the host at once."""
    start, finish = __getattr__("deferred_checksums")(variables, replica, model)
    return lambda: finish([start()])[0]
