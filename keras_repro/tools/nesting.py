"""One guard for every entry point that starts fresh processes: a keras_repro fresh process
never starts another.

`audit` and `assert_resumable` (and its `resumable` fixture) run part of their check in a
fresh Python process, which imports the user's module to find `build_model` (`child`). A
script that makes its check at import, without `if __name__ == "__main__":`, would make it
again there, and that process would start another, without end: 45 nested TensorFlow
processes and 17.6 GB in ten minutes, nothing printed. Python's `multiprocessing` meets the
same problem when it spawns, and refuses in the child; so does keras_repro:

* `child.run` starts every fresh process with `CHILD_ENVIRONMENT_VARIABLE` set (to what
  started it), which the processes it might start inherit.
* Every entry point calls `refuse_nested` first: `audit`, `bisect`, `assert_reproducible`,
  `assert_resumable`, the `reproducible` and `resumable` fixtures, `keras-repro run`, and
  `child.run` itself (which starts the processes). Inside a fresh process it raises `MissingMainGuardError` at once,
  before any training, naming the module being imported and the missing guard.
* The fresh process hands that error to its parent (`child.main`), which raises it again
  with the same message instead of a generic failure: two processes in all.

What "inside" means for the launcher: `keras-repro run -- python train.py` is the user's
top-level program, not a fresh process of a check: it does not set the variable, so
`train.py` may call `kr.audit` (which starts its own fresh process). The launcher itself
refuses only when it runs inside a fresh process of a check (a module that starts
`keras-repro run` at import).

Example:

>>> refuse_nested("audit")   # in the user's program: nothing happens
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, MutableMapping

from keras_repro.errors import MissingMainGuardError

CHILD_ENVIRONMENT_VARIABLE = "KERAS_REPRO_AUDIT_CHILD"
"""Set in every fresh process keras_repro starts (to what started it: "audit",
"assert_resumable"); the name is kept from when only `audit` set it."""

_IMPORTING: contextvars.ContextVar[str | None] = contextvars.ContextVar("keras_repro_importing", default=None)
"""The module (a file or a module name) a fresh process is importing, while it does."""


def mark_child(env: MutableMapping[str, str], started_by: str) -> None:
    """Marks the environment of a fresh process that `started_by` starts."""
    env[CHILD_ENVIRONMENT_VARIABLE] = started_by


def started_by() -> str | None:
    """What started this fresh process ("audit", "assert_resumable"; "" if not said), or
    None when this is not a fresh process of keras_repro."""
    value = os.environ.get(CHILD_ENVIRONMENT_VARIABLE)
    if value is None or not value.strip():
        return None
    return "" if value.strip() == "1" else value.strip()


@contextlib.contextmanager
def importing(module: str) -> Iterator[None]:
    """Marks the import of the user's module in a fresh process, for `refuse_nested`'s message."""
    token = _IMPORTING.set(module)
    try:
        yield
    finally:
        _IMPORTING.reset(token)


def refuse_nested(what: str) -> None:
    """Raises `MissingMainGuardError` inside a fresh process of keras_repro; does nothing
    elsewhere. Every entry point that starts fresh processes (or trains) calls it first.

    Args:
        what: The entry point, as the user called it ("audit()", "keras-repro run").

    Raises:
        MissingMainGuardError: Inside a fresh process: naming the module it was importing
            (if it was) and the missing `if __name__ == "__main__":` guard.
    """
    parent = started_by()
    if parent is None:
        return
    by = f" (started by {parent})" if parent else ""
    module = _IMPORTING.get()
    guard = 'if __name__ == "__main__":'
    if module is not None:
        raise MissingMainGuardError(
            f"{what} was called while a fresh process of keras_repro{by} imported '{module}' to find "
            f"build_model: that module runs {what} at import. Put its top-level code under `{guard}`: like "
            "Python's multiprocessing, keras_repro imports the main module again in each fresh process, and "
            f"without the guard each one would start another. Received: {what} at import of '{module}'"
        )
    raise MissingMainGuardError(
        f"{what} was called inside a fresh process of keras_repro{by}, from build_model or the training it "
        f"runs: a fresh process never starts another. Call it from your main program only, under `{guard}`. "
        f"Received: a nested {what}"
    )
