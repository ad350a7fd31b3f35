"""Deterministic-kernel settings that must be in place before a backend starts, readable
without importing Keras or a backend (`keras-repro run` sets them for a program it starts).

XLA reads `XLA_FLAGS` once, when JAX creates its backends, and aborts the whole process
on a flag it does not know; cuBLAS reads `CUBLAS_WORKSPACE_CONFIG` when it creates a
handle. So the XLA flag is only set in a spelling the installed jaxlib knows.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import mmap
import os

logger = logging.getLogger(__name__)

XLA_DETERMINISM_FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_exclude_nondeterministic_ops=true")
"""XLA's determinism flags, preferred first: `xla_gpu_deterministic_ops` (jaxlib 0.4.30 to
0.10 at least) also turns autotuning off; `xla_gpu_exclude_nondeterministic_ops` (XLA, May
2024 on) picks deterministic kernels only."""

OPT_OUT_VARIABLE = "KERAS_REPRO_DETERMINISTIC_KERNELS"
"""Set to "0" before `import keras_repro` to leave XLA_FLAGS and CUBLAS_WORKSPACE_CONFIG alone."""

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""The cuBLAS workspace setting that makes its kernels deterministic (or ":16:8")."""


def _flag_name(flag: str) -> str:
    return flag[2:].split("=", 1)[0]


def has_xla_determinism_flag(xla_flags: str | None) -> bool:
    """Whether an XLA_FLAGS value turns on one of the determinism flags."""
    words = (xla_flags or "").split()
    return any(flag in words for flag in XLA_DETERMINISM_FLAGS)


def _xla_binaries() -> list[str]:
    """The jaxlib and JAX plugin libraries that parse XLA_FLAGS (found without importing jax)."""
    found = []
    for package in ("jaxlib", "jax_plugins"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            found += glob.glob(os.path.join(folder, "*.so")) + glob.glob(os.path.join(folder, "*", "*.so"))
    return [path for path in found if _contains(path, b"XLA_FLAGS")]


def _contains(path: str, text: bytes) -> bool:
    """Whether a (large) file holds `text`, searched through a memory map."""
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(text) >= 0
    except (OSError, ValueError):
        return False


@functools.cache
def xla_determinism_flag() -> str | None:
    """The XLA determinism flag every installed XLA library knows, or None (no jaxlib, or
    none of `XLA_DETERMINISM_FLAGS`: setting an unknown one would abort the program).

    Example:

    >>> xla_determinism_flag()        # doctest: +SKIP
    '--xla_gpu_deterministic_ops=true'
    """
    binaries = _xla_binaries()
    for flag in XLA_DETERMINISM_FLAGS:
        if binaries and all(_contains(path, _flag_name(flag).encode()) for path in binaries):
            return flag
    logger.debug("No XLA determinism flag known to %s", binaries)
    return None


def with_xla_determinism(xla_flags: str | None, flag: str) -> str:
    """`xla_flags` with `flag` added (unless a determinism flag is there already)."""
    if has_xla_determinism_flag(xla_flags):
        return xla_flags or ""
    return f"{xla_flags or ''} {flag}".strip()


def opted_out() -> bool:
    """Whether `OPT_OUT_VARIABLE` asks keras_repro to leave the start-up switches alone."""
    return os.environ.get(OPT_OUT_VARIABLE, "1").strip() == "0"
