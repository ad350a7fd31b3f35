"""The environment manifest stored with every run: versions, backend, devices,
determinism switches and the environment variables that change results.

A reference file is meant to be committed and shared, so the manifest holds only:

* the software and machine: keras_repro, Python, Keras, the backend and its version, NumPy,
  h5py, the platform, processor and CPU count, the devices, the byte order, the number of
  processes and the Keras distribution (mesh, layout map) of a distributed run;
* the determinism switches in force (`deterministic_kernels`, `determinism.*`) and whether
  string hashing is randomized;
* `env.NAME` for each variable of `RECORDED_VARIABLES` that is set: variables named one by
  one because they change results, never every variable with a prefix; and never one whose
  name looks secret (`looks_secret`), even if listed.

Files written by earlier keras_repro builds kept every `TF_`, `XLA_`, `CUDA_`,
`CUBLAS_`, `KERAS_`, `OMP_`, `MKL_`, `JAX_` and `TORCH_` variable (Terraform's `TF_TOKEN_*`
and `TF_VAR_*` among them): `redacted` hides their values on display, comparisons ignore
them (`recorded`), and a recording that extends such a file drops them.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Mapping
from typing import Any

from keras_repro.seeding import hash_randomization_enabled

RECORDED_VARIABLES: dict[str, str] = {
    # Python
    "PYTHONHASHSEED": "string hashing, hence the order of sets and of dicts built from them",
    # Keras and keras_repro
    "KERAS_BACKEND": "which backend runs the model (also recorded as `backend`)",
    "KERAS_REPRO_DETERMINISTIC_KERNELS": "0 leaves XLA_FLAGS and CUBLAS_WORKSPACE_CONFIG unset at import",
    # TensorFlow
    "TF_DETERMINISTIC_OPS": "TensorFlow's deterministic kernels (and errors for ops without one)",
    "TF_CUDNN_DETERMINISTIC": "deterministic cuDNN convolution algorithms (older spelling of the above)",
    "TF_CUDNN_USE_AUTOTUNE": "cuDNN algorithms chosen by timing, which can pick another one per run",
    "TF_CUDNN_WORKSPACE_LIMIT_IN_MB": "the cuDNN workspace bounds which convolution algorithms can run",
    "TF_MATMUL_AUTOTUNE_ENABLE": "GPU matmul algorithms chosen by timing",
    "TF_USE_CUDNN_BATCHNORM_SPATIAL_PERSISTENT": "another cuDNN batch-normalization kernel, other rounding",
    "TF_ENABLE_ONEDNN_OPTS": "oneDNN CPU kernels, which sum in another order",
    "TF_SET_ONEDNN_FPMATH_MODE": "oneDNN may compute float32 ops in bfloat16 or TF32",
    "TF_NUM_INTRAOP_THREADS": "threads per op: another count splits reductions differently",
    "TF_NUM_INTEROP_THREADS": "threads running independent ops",
    "TF_XLA_FLAGS": "TensorFlow's XLA auto-clustering and compiler options (fusions change rounding)",
    # XLA and JAX
    "XLA_FLAGS": "XLA compiler options: the determinism flag, autotuning, fusions, host device count",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "GPU memory JAX takes: it bounds which algorithms autotuning can pick",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "the same, as a fraction of the GPU memory",
    "XLA_PYTHON_CLIENT_ALLOCATOR": "the same, through the allocator used",
    "JAX_PLATFORMS": "the devices JAX runs on (cpu, cuda, tpu)",
    "JAX_ENABLE_X64": "64-bit default dtypes",
    "JAX_DEFAULT_MATMUL_PRECISION": "matmul and convolution precision on accelerators (bfloat16 passes, TF32)",
    "JAX_DEFAULT_PRNG_IMPL": "the random-number algorithm (threefry, rbg): other random values",
    "JAX_THREEFRY_PARTITIONABLE": "other random values under sharding",
    "JAX_DISABLE_JIT": "op-by-op execution without XLA fusions: other rounding",
    # CUDA, cuBLAS and PyTorch
    "CUDA_VISIBLE_DEVICES": "which GPUs, and how many, a run uses",
    "CUBLAS_WORKSPACE_CONFIG": "needed for deterministic cuBLAS (torch.use_deterministic_algorithms)",
    "NVIDIA_TF32_OVERRIDE": "0 forbids TF32 in cuBLAS and cuDNN: float32 matmuls at full precision",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1 forces TF32 in PyTorch's cuBLAS matmuls",
    "TORCH_BLAS_PREFER_CUBLASLT": "cuBLASLt instead of cuBLAS for PyTorch matmuls: other kernels",
    # CPU math libraries and threads
    "OMP_NUM_THREADS": "OpenMP threads (oneDNN, PyTorch on CPU): another count splits reductions differently",
    "MKL_NUM_THREADS": "the same for Intel MKL",
    "OPENBLAS_NUM_THREADS": "the same for OpenBLAS (NumPy)",
    "VECLIB_MAXIMUM_THREADS": "the same for Apple Accelerate",
    "KMP_DETERMINISTIC_REDUCTION": "Intel OpenMP's reductions in a fixed order",
    "MKL_CBWR": "MKL's conditional numerical reproducibility (one code path on every CPU)",
    "MKL_ENABLE_INSTRUCTIONS": "the instruction set MKL uses: other kernels, other rounding",
    "OPENBLAS_CORETYPE": "the CPU kernels OpenBLAS uses",
    "ONEDNN_MAX_CPU_ISA": "the instruction set oneDNN uses (DNNL_MAX_CPU_ISA: its older name)",
    "DNNL_MAX_CPU_ISA": "the same, older name",
    "ONEDNN_DEFAULT_FPMATH_MODE": "oneDNN may compute float32 ops in bfloat16 or TF32",
}
"""The environment variables a manifest records when set, each with why it can change
results. Nothing else from the environment is stored."""

SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "PWD", "KEY", "CREDENTIAL", "AUTH",
                  "PRIVATE", "COOKIE", "SESSION", "SIGNATURE", "CERT")
"""Parts of a variable name that mark it as a secret: such a variable is never stored."""

REDACTED = "(redacted)"
"""What `redacted` shows instead of a value that is not shown."""

ENV_PREFIX = "env."
"""Manifest keys of environment variables: `env.NAME`."""

CHANGES_NOTE = "environment_from_epoch_"
"""Name of the note an extended recording adds, listing what changed in the environment."""


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name looks like it holds a secret.

    Example:

    >>> looks_secret("TF_TOKEN_app_terraform_io"), looks_secret("XLA_FLAGS")
    (True, False)
    """
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def is_recorded(key: str) -> bool:
    """Whether a manifest key is one this version records: every key but `env.NAME`, which
    only for a listed (`RECORDED_VARIABLES`) name that does not look secret.

    Example:

    >>> is_recorded("keras"), is_recorded("env.XLA_FLAGS"), is_recorded("env.TF_VAR_db_password")
    (True, True, False)
    """
    if not key.startswith(ENV_PREFIX):
        return True
    name = key[len(ENV_PREFIX):]
    return name in RECORDED_VARIABLES and not looks_secret(name)


def recorded(manifest: Mapping[str, str]) -> dict[str, str]:
    """The entries of a manifest that this version records (`is_recorded`): what a new
    recording keeps of an older file's manifest, and what comparisons look at.

    Example:

    >>> recorded({"keras": "3.15.1", "env.TF_TOKEN_x": "secret"})
    {'keras': '3.15.1'}
    """
    return {key: value for key, value in manifest.items() if is_recorded(key)}


def redacted(manifest: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """A manifest for display: the value of every entry this version would not record
    (from files of older versions) replaced by `REDACTED`; and the keys replaced.

    Example:

    >>> redacted({"keras": "3.15.1", "env.TF_VAR_db_password": "hunter2"})
    ({'keras': '3.15.1', 'env.TF_VAR_db_password': '(redacted)'}, ['env.TF_VAR_db_password'])
    """
    hidden = [key for key in manifest if not is_recorded(key)]
    return {key: REDACTED if key in hidden else value for key, value in manifest.items()}, hidden


_NOTE_ENTRY = re.compile(r"(?:^|; )(env\.[A-Za-z_][A-Za-z0-9_]*|[a-z_][a-z0-9_.]*): ")
"""Where an entry of a note of changes starts: "; KEY: " (manifest keys other than env.NAME
are lower case), so a redacted value runs on to the next such key."""


def redacted_note(text: str) -> tuple[str, bool]:
    """A note listing environment changes ("key: a -> b; ..."), as written by older versions,
    with the values of keys this version would not record replaced by `REDACTED`; and
    whether any was.

    Example:

    >>> redacted_note("env.TF_TOKEN_x: a -> b; keras: 3.14 -> 3.15")
    ('env.TF_TOKEN_x: (redacted); keras: 3.14 -> 3.15', True)
    """
    starts = list(_NOTE_ENTRY.finditer(text))
    parts, changed = [text[: starts[0].start()] if starts else text], False
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        value = text[match.end():end]
        if not is_recorded(match.group(1)) and value != REDACTED:
            value, changed = REDACTED, True
        parts.append(f"{match.group(0)}{value}")
    return ("".join(parts), True) if changed else (text, False)


def redacted_notes(notes: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Notes with `redacted_note` applied to those listing environment changes
    (`environment_from_epoch_K`); and the names of the notes it changed."""
    shown, changed = {}, []
    for key, text in notes.items():
        if key.startswith(CHANGES_NOTE):
            text, hidden = redacted_note(text)
            if hidden:
                changed.append(key)
        shown[key] = text
    return shown, changed


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
    for name in sorted(RECORDED_VARIABLES):
        if name in os.environ and not looks_secret(name):
            manifest[f"{ENV_PREFIX}{name}"] = os.environ[name]
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


def differences(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """{key: (value in a, value in b)} for every recorded key (`is_recorded`) whose value
    differs: entries an older version stored and this one does not are not compared, nor shown.

    Example:

    >>> differences({"env.OMP_NUM_THREADS": "4", "env.TF_VAR_x": "1"}, {"env.OMP_NUM_THREADS": "8"})
    {'env.OMP_NUM_THREADS': ('4', '8')}
    """
    a, b = recorded(a), recorded(b)
    return {
        key: (a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    }
