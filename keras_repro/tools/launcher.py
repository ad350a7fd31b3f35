"""`keras-repro run`: start a program with the variables that only work when set
before the interpreter (and the backends) start.

The program it starts is the user's top-level program, not a fresh process of a check: it
is not marked as one (`keras_repro.tools.nesting`), so it may call `kr.audit` or
`kr.assert_resumable`, which start their own. `run` refuses only inside a fresh process of
a check (a module that starts `keras-repro run` at import), like every entry point that
starts processes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

from keras_repro._backend import flags
from keras_repro.seeding import MAX_SEED
from keras_repro.tools import nesting

XLA_DETERMINISM_FLAG = flags.XLA_DETERMINISM_FLAGS[0]
"""The preferred spelling; the one set is what the installed jaxlib knows (`flags`)."""


def launch_environment(
    base: Mapping[str, str],
    hash_seed: int = 0,
    deterministic: bool = True,
    threads: int | None = None,
) -> dict[str, str]:
    """The environment to start a training program in.

    Args:
        base: The environment to start from (usually `os.environ`).
        hash_seed: Value of PYTHONHASHSEED (fixes `str` hashing, hence set order).
        deterministic: Also ask every backend for deterministic kernels
            (TF_DETERMINISTIC_OPS, the XLA flag the installed jaxlib knows,
            CUBLAS_WORKSPACE_CONFIG).
        threads: If set, the CPU thread count for TensorFlow, OpenMP, MKL and OpenBLAS.

    Returns:
        A new dict; `base` is not modified.

    Example:

    >>> launch_environment({}, hash_seed=0, deterministic=False)
    {'PYTHONHASHSEED': '0'}
    """
    if isinstance(hash_seed, bool) or not isinstance(hash_seed, int) or not 0 <= hash_seed <= MAX_SEED:
        raise ValueError(f"--hash-seed must be an integer in [0, {MAX_SEED}]. Received: {hash_seed!r}")
    env = dict(base)
    env["PYTHONHASHSEED"] = str(hash_seed)
    if deterministic:
        env["TF_DETERMINISTIC_OPS"] = "1"
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", flags.CUBLAS_WORKSPACE_CONFIG)
        flag = flags.xla_determinism_flag()
        if flag is not None:  # an unknown flag would abort the program at JAX's start
            env["XLA_FLAGS"] = flags.with_xla_determinism(env.get("XLA_FLAGS"), flag)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1. Received: {threads}")
        for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    return env


def run(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Runs `command` with `env`; returns its exit code (127 if it cannot be started).

    Raises:
        MissingMainGuardError: Inside a fresh process of keras_repro (`nesting`).
    """
    nesting.refuse_nested("keras-repro run")
    try:
        return subprocess.run(list(command), env=dict(env), check=False).returncode
    except FileNotFoundError:
        return 127
    except KeyboardInterrupt:  # the child got the signal too; report it like a shell
        return 130


def changed(env: Mapping[str, str], base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables `env` sets differently from `base`."""
    return {key: value for key, value in env.items() if base.get(key) != value}
