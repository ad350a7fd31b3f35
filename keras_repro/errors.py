"""Exceptions and warnings raised by keras_repro.

Every exception subclasses both `ReproError` (so callers can catch everything the
library raises) and the built-in type that best describes it (so existing
`except ValueError` / `except OSError` handlers keep working).
"""

from __future__ import annotations

import sys
import warnings

_NOT_USER_CODE = ("keras_repro", "keras", "tensorflow", "jax", "jaxlib", "torch", "optree", "absl", "tree",
                  "threading", "concurrent", "contextlib", "runpy")
"""Top-level packages whose frames a warning skips to point at the user's line."""


class ReproError(Exception):
    """Base class of every exception raised by keras_repro."""


class ReferenceFileError(ReproError, OSError):
    """A fingerprint file is missing, unreadable, corrupt or of an unknown format.

    The message always names the file and the reason, and says what to do. A layer trace
    file (`keras_repro.trace`) gives the same error, its message starting "Trace file".

    Attributes:
        path: The file that could not be used.
        reason: A short description of what is wrong with it.
    """

    def __init__(self, path: object, reason: str, what: str = "Fingerprint file") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{what} '{self.path}': {reason}")

    def __str__(self) -> str:
        return self.args[0]


class FingerprintMismatch(ReproError, AssertionError):
    """A run diverged from its reference fingerprint.

    Attributes:
        divergence: The `keras_repro.fingerprinting.compare.Divergence` that was found.
        reference: The path of the reference file, or None.
        cause: The likely cause (`keras_repro.fingerprinting.diagnosis`), or None.
        next_step: What to run next to find the layer where the runs part (a layer trace).
    """

    NEXT_STEP = ("To find the layer: in both settings run kr.trace_layers(model, x, y, steps=3, path=...) from the "
                 "same starting weights (writing trace_a.h5 and trace_b.h5), then `keras-repro diff trace_a.h5 "
                 "trace_b.h5`")

    def __init__(self, divergence: object, reference: object = None, cause: str | None = None) -> None:
        self.divergence = divergence
        self.reference = None if reference is None else str(reference)
        self.cause = cause
        self.next_step = self.NEXT_STEP
        where = f" (reference: '{self.reference}')" if self.reference else ""
        why = f". Likely cause: {cause}" if cause else ""
        text = f"Run is not reproducible{where}: {divergence}{why}".rstrip(".")
        super().__init__(f"{text}. {self.next_step}")


class MissingMainGuardError(ReproError, RuntimeError):
    """A check that starts fresh processes (`audit`, `assert_resumable`...) was called inside
    one of those processes: most often a script that runs it at import, without
    `if __name__ == "__main__":`, as Python's `multiprocessing` requires for spawn
    (`keras_repro.tools.nesting`). Raised there, and again in the parent with the same message."""


class ReproWarning(UserWarning):
    """Base class of the warnings issued by keras_repro."""


class FingerprintMismatchWarning(ReproWarning):
    """A verify run diverged from its reference and `on_mismatch="warn"` was chosen."""


class HashRandomizationWarning(ReproWarning):
    """The interpreter runs with string hash randomization (PYTHONHASHSEED unset)."""


class NondeterministicInputWarning(ReproWarning):
    """An input pipeline that keras_repro cannot reorder is known to be nondeterministic."""


def warn(message: str, category: type[Warning]) -> None:
    """`warnings.warn` at the user's line: the first caller outside keras_repro and the
    frameworks it runs inside (Keras' fit loop, TensorFlow, JAX, torch), so a warning
    raised in a callback points at the user's `fit(...)`, not at library code.

    Example:

    >>> warn("reference is incomplete", ReproWarning)   # doctest: +SKIP
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _NOT_USER_CODE:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)
