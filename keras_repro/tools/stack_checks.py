"""The environment a deterministic run needs, checked: string hashing fixed at start, the
backend's deterministic kernels, XLA's determinism flag and cuBLAS' workspace setting on a
GPU, and pinned thread counts; each "ok", "warn" or "fail" with the fix. With the known-issue
table (`keras_repro.tools.known_issues`) this is the stack part of `kr.preflight`.
"""

from __future__ import annotations

from collections.abc import Callable

from keras_repro._backend.flags import CUBLAS_WORKSPACE_CONFIG, XLA_DETERMINISM_FLAGS, has_xla_determinism_flag
from keras_repro.tools.known_issues import FAIL, OK, WARN, Finding, Stack, check_known_issues, current_stack

THREAD_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Variables that pin the threads a reduction is split over."""

RUN = "start the program with `keras-repro run -- python train.py`"


def _hash_seed(stack: Stack, randomized: Callable[[], bool]) -> Finding:
    if not randomized():
        return Finding("PYTHONHASHSEED", OK, "set before the interpreter started: string hashing is fixed")
    now = stack.env.get("PYTHONHASHSEED")
    late = f" (PYTHONHASHSEED={now} was set after the start, which has no effect)" if now else ""
    return Finding("PYTHONHASHSEED", WARN, (
        f"string hashing is randomized{late}: the order of sets of strings changes from run to run; keras_repro's "
        "own guarantee holds, code that iterates such sets does not"), f"{RUN} (it sets PYTHONHASHSEED=0)")


def _kernels() -> Finding:
    from keras_repro.determinism import kernel_state

    state = kernel_state()
    if state.in_effect:
        return Finding("deterministic kernels", OK, f"on ({state.detail})")
    return Finding("deterministic kernels", WARN, f"not in effect ({state.detail})",
                   "kr.enable_determinism() (a DeterministicModel turns them on at its first fit; TensorFlow: "
                   "TF_DETERMINISTIC_OPS=1)")


def _xla_flag(stack: Stack) -> Finding:
    value = stack.env.get("XLA_FLAGS", "")
    if has_xla_determinism_flag(value):
        return Finding("XLA_FLAGS", OK, f"holds XLA's determinism flag ({value})")
    if stack.device != "gpu":
        return Finding("XLA_FLAGS", OK, f"no determinism flag ({value or 'unset'}); not needed on {stack.device}: "
                                        "XLA's CPU kernels do not race")
    return Finding("XLA_FLAGS", FAIL, f"a GPU, and no determinism flag ({value or 'unset'}): XLA (JAX, TensorFlow with "
                                      "jit_compile) may pick racing kernels and autotune differently from run to run",
                   f"{RUN}, or set XLA_FLAGS={XLA_DETERMINISM_FLAGS[0]} before the backend starts")


def _cublas(stack: Stack) -> Finding:
    value = stack.env.get("CUBLAS_WORKSPACE_CONFIG")
    if value in (CUBLAS_WORKSPACE_CONFIG, ":16:8"):
        return Finding("CUBLAS_WORKSPACE_CONFIG", OK, f"{value}: cuBLAS kernels are deterministic")
    if stack.device != "gpu" or stack.versions.get("torch") is None:
        return Finding("CUBLAS_WORKSPACE_CONFIG", OK, f"{value or 'unset'}; needed only for torch on a CUDA GPU")
    return Finding("CUBLAS_WORKSPACE_CONFIG", FAIL, (
        f"{value or 'unset'} on a GPU with torch: torch.use_deterministic_algorithms raises on cuBLAS calls, "
        "or they are nondeterministic"), f"{RUN}, or set CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE_CONFIG} before start")


def _threads(stack: Stack) -> Finding:
    pinned = {name: stack.env[name] for name in THREAD_VARIABLES if stack.env.get(name)}
    if pinned:
        return Finding("threads", OK, "pinned: " + ", ".join(f"{k}={v}" for k, v in pinned.items()))
    return Finding("threads", WARN, ("not pinned: thread pools follow the core count, so on a machine with another "
                                     "count reductions split differently (the runs then differ by rounding noise)"),
                   "keras-repro run --threads N -- python train.py, or kr.enable_determinism(threads=N)")


def environment_checks(stack: Stack | None = None, randomized: Callable[[], bool] | None = None) -> list[Finding]:
    """The environment checks, each a `Finding`.

    Args:
        stack: The stack to check (default: `known_issues.current_stack()`).
        randomized: Whether string hashing is randomized (default:
            `keras_repro.seeding.hash_randomization_enabled`).

    Example:

    >>> [f.name for f in environment_checks()]  # doctest: +SKIP
    ['PYTHONHASHSEED', 'deterministic kernels', 'XLA_FLAGS', 'CUBLAS_WORKSPACE_CONFIG', 'threads']
    """
    from keras_repro.seeding import hash_randomization_enabled

    stack = current_stack() if stack is None else stack
    return [_hash_seed(stack, randomized or hash_randomization_enabled), _kernels(), _xla_flag(stack),
            _cublas(stack), _threads(stack)]


def check_stack(stack: Stack | None = None) -> tuple[tuple[Finding, ...], tuple[Finding, ...]]:
    """(environment checks, known issues) of the installed (or given) stack.

    Example:

    >>> environment, issues = check_stack()  # doctest: +SKIP
    >>> [f.status for f in issues]            # doctest: +SKIP
    ['ok', 'ok', 'ok']
    """
    stack = current_stack() if stack is None else stack
    return tuple(environment_checks(stack)), tuple(check_known_issues(stack))
