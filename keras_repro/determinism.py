"""Deterministic kernels: on by default for `DeterministicModel`, checked where they matter.

GPU kernels are the last source of nondeterminism that seeds cannot fix: atomics in
reductions, autotuned convolutions, cuBLAS workspaces. Each backend has a switch, and two of
them only work before the backend starts: JAX reads XLA's flag once, cuBLAS its workspace
setting once. So `import keras_repro` sets those two while it still can (unless
`KERAS_REPRO_DETERMINISTIC_KERNELS=0`), `DeterministicModel` turns on the run-time ones
(TensorFlow op determinism, torch deterministic algorithms) unless given
`deterministic_kernels=False`, every run records whether they were in effect, and a fit on an
accelerator without them warns once, saying what to do.

`enable_determinism` sets the same switches by hand, with thread limits, and reports.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from typing import Any

from keras_repro import _backend
from keras_repro._backend import flags
from keras_repro.arguments import positive_int
from keras_repro.errors import ReproWarning, warn

OPT_OUT_VARIABLE = flags.OPT_OUT_VARIABLE

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DeterminismReport:
    """What `enable_determinism` set, and what it could not.

    Attributes:
        backend: The Keras backend.
        applied: {setting: value} that took effect.
        not_applied: {setting: reason} for settings that could not be applied.
    """

    backend: str
    applied: dict[str, Any]
    not_applied: dict[str, str]

    @property
    def complete(self) -> bool:
        """True when every requested setting took effect."""
        return not self.not_applied

    def __str__(self) -> str:
        lines = [f"determinism on {self.backend}:"]
        lines += [f"  set {key} = {value}" for key, value in self.applied.items()]
        lines += [f"  NOT set {key}: {reason}" for key, reason in self.not_applied.items()]
        return "\n".join(lines)


def enable_determinism(threads: int | None = None, inter_op_threads: int | None = None) -> DeterminismReport:
    """Turns on deterministic kernels for the active backend.

    TensorFlow: `tf.config.experimental.enable_op_determinism()`. PyTorch:
    `torch.use_deterministic_algorithms(True)` and cuDNN deterministic mode. JAX:
    the XLA deterministic-ops flag, which only takes effect before JAX starts.

    Args:
        threads: If set, the number of intra-op CPU threads (1 removes the last
            source of reduction-order differences on CPU). Must be set before the
            backend runs its first op.
        inter_op_threads: If set, the number of inter-op threads.

    Returns:
        A `DeterminismReport`; check `.not_applied` for settings that came too late.

    Raises:
        ValueError: If a thread count is not a positive int.

    Example:

    >>> report = enable_determinism(threads=1)  # doctest: +SKIP
    >>> report.complete                          # doctest: +SKIP
    True
    """
    threads = positive_int("threads", threads, optional=True)
    inter_op_threads = positive_int("inter_op_threads", inter_op_threads, optional=True)
    applied, not_applied = _backend.enable_op_determinism(threads, inter_op_threads)
    report = DeterminismReport(_backend.name(), applied, not_applied)
    for key, reason in not_applied.items():
        warnings.warn(f"Determinism setting '{key}' was not applied: {reason}", ReproWarning, stacklevel=2)
    logger.debug("%s", report)
    return report


@dataclasses.dataclass(frozen=True)
class KernelState:
    """Whether deterministic kernels are in effect.

    Attributes:
        in_effect: True when the backend's switch is on (and was in time).
        detail: What turns them on, or why they are not in effect and what to do.
    """

    in_effect: bool
    detail: str

    def __str__(self) -> str:
        return f"on ({self.detail})" if self.in_effect else f"not in effect ({self.detail})"


def prepare_at_import() -> None:
    """Sets, while the backend has not started, what only works before (`import keras_repro`)."""
    if not flags.opted_out():
        _backend.prepare_kernels_at_import()


def use_deterministic_kernels(on: bool = True) -> KernelState:
    """Switches the backend's run-time deterministic kernels on (or off); returns the state.

    Example:

    >>> use_deterministic_kernels().in_effect      # doctest: +SKIP
    True
    """
    _backend.set_deterministic_kernels(on)
    return kernel_state()


def kernel_state() -> KernelState:
    """Whether deterministic kernels are in effect now, and what or why not."""
    return KernelState(*_backend.kernels_in_effect())


def warn_if_kernels_off(chosen_off: bool = False) -> KernelState:
    """Warns, once per process and reason, when a fit on an accelerator runs without
    deterministic kernels (unless a `DeterministicModel` was told not to use them)."""
    state = kernel_state()
    if not state.in_effect and not chosen_off and _backend.accelerators():
        _warn_once(state.detail)
    return state


@functools.cache
def _warn_once(detail: str) -> None:
    """One warning per reason."""
    warn(
        f"Deterministic kernels are not in effect on this accelerator: {detail}. Runs may differ from "
        "the first step on. Fix it as said, or pass deterministic_kernels=False to DeterministicModel "
        "to train without them knowingly; `keras-repro preflight` lists what deterministic kernels cost.",
        ReproWarning,
    )
