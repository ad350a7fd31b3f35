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
    if _backend.process_count() > 1:
        manifest["process_count"] = _backend.process_count()
    manifest.update(distribution_layout())
    manifest["deterministic_kernels"] = str(kernel_state())
    for key, value in _backend.determinism_state().items():
        manifest[f"determinism.{key}"] = value
    for key in sorted(os.environ):
        if key.startswith(RELEVANT_PREFIXES) or key in RELEVANT_NAMES:
            manifest[f"env.{key}"] = os.environ[key]
    return {key: str(value) for key, value in manifest.items()}


def distribution_layout() -> dict[str, str]:
    """The Keras distribution in effect (`keras.distribution.set_distribution`), as manifest
    entries: its kind, device mesh (axis names and sizes), batch axis and layout map; empty
    when none is set. The same in every process of a multi-process run.

    Example:

    >>> distribution_layout()  # doctest: +SKIP
    {'distribution': 'ModelParallel', 'distribution.mesh': 'batch=1, model=2',
     'distribution.batch_dim': 'batch', 'distribution.layout_map': ".*d1/kernel: (None, 'model')"}
    """
    import keras

    try:
        distribution = keras.distribution.distribution()
    except (AttributeError, NotImplementedError):  # a backend without the distribution API
        return {}
    if distribution is None:
        return {}
    found = {"distribution": type(distribution).__name__}
    mesh = getattr(distribution, "device_mesh", None)
    if mesh is not None:
        found["distribution.mesh"] = ", ".join(f"{name}={size}" for name, size in zip(mesh.axis_names, mesh.shape))
    if getattr(distribution, "batch_dim_name", None):
        found["distribution.batch_dim"] = str(distribution.batch_dim_name)
    layout_map = getattr(distribution, "_layout_map", None)  # ModelParallel's; no public accessor
    if layout_map is not None:
        found["distribution.layout_map"] = "; ".join(
            f"{key}: {tuple(getattr(layout, 'axes', layout))}" for key, layout in layout_map.items())
    return found


def differences(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """{key: (value in a, value in b)} for every key whose value differs."""
    return {
        key: (a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    }
