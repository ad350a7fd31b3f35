"""The environment manifest stored with every run: versions, backend, devices,
determinism switches and the environment variables that change results."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from keras_repro.seeding import hash_randomization_enabled

RELEVANT_PREFIXES = ("TF_", "XLA_", "CUDA_", "CUBLAS_", "KERAS_", "OMP_", "MKL_", "JAX_", "TORCH_")
RELEVANT_NAMES = ("PYTHONHASHSEED", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")


def _version(module_name: str) -> str:
    """A module's `__version__`, or "not installed"."""
    try:
        module = __import__(module_name)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def collect() -> dict[str, str]:
    """The manifest of this process, as {name: text}.

    Example:

    >>> collect()["backend"] in ("tensorflow", "jax", "torch", "numpy")
    True
    """
    import keras

    from keras_repro import _backend
    from keras_repro.determinism import kernel_state
    from keras_repro.version import __version__

    manifest: dict[str, Any] = {
        "keras_repro": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "keras": keras.__version__,
        "backend": _backend.name(),
        "backend_version": _backend.version(),
        "numpy": _version("numpy"),
        "h5py": _version("h5py"),
        "devices": ", ".join(_backend.devices()),
        "hash_randomization": hash_randomization_enabled(),
        "byteorder": sys.byteorder,
    }
    manifest["deterministic_kernels"] = str(kernel_state())
    for key, value in _backend.determinism_state().items():
        manifest[f"determinism.{key}"] = value
    for key in sorted(os.environ):
        if key.startswith(RELEVANT_PREFIXES) or key in RELEVANT_NAMES:
            manifest[f"env.{key}"] = os.environ[key]
    return {key: str(value) for key, value in manifest.items()}


def differences(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """{key: (value in a, value in b)} for every key whose value differs."""
    return {
        key: (a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    }
