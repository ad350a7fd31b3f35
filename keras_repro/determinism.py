"""`enable_determinism`: the backend's deterministic-kernel switches, with a report
of what took effect."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

from keras_repro import _backend
from keras_repro.errors import ReproWarning

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
    for name, value in (("threads", threads), ("inter_op_threads", inter_op_threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive int or None. Received: {name}={value!r}")
    applied, not_applied = _backend.enable_op_determinism(threads, inter_op_threads)
    report = DeterminismReport(_backend.name(), applied, not_applied)
    for key, reason in not_applied.items():
        warnings.warn(f"Determinism setting '{key}' was not applied: {reason}", ReproWarning, stacklevel=2)
    logger.debug("%s", report)
    return report
