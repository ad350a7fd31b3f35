"""Training scripts given to the command line (`keras-repro audit`, `preflight`, `bisect`):
imported by path, with the functions each command needs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from keras_repro.errors import ReproError
from keras_repro.tools.child import import_path


class ScriptError(ReproError, ValueError):
    """A training script given to `keras-repro audit` / `preflight` / `bisect` cannot be used."""


def load_script(path: str | os.PathLike, required: Sequence[str]) -> Any:
    """Imports a training script by path and checks it defines the functions `required`.

    Args:
        path: The `.py` file.
        required: Names of functions it must define, e.g. ("build_model", "data").

    Returns:
        The module.

    Raises:
        ScriptError: If the file is missing, cannot be imported, or lacks a function.
    """
    path = os.fspath(path)
    wanted = " and ".join(f"{name}()" for name in required)
    if not os.path.isfile(path):
        raise ScriptError(f"script '{path}' does not exist; pass a Python file that defines {wanted}. Received: script={path!r}")
    try:
        module = import_path(path)
    except Exception as error:  # noqa: BLE001 - any import failure is a bad script
        raise ScriptError(f"cannot import script '{path}': {type(error).__name__}: {error}") from error
    missing = [name for name in required if not callable(getattr(module, name, None))]
    if missing:
        raise ScriptError(
            f"script '{path}' must define {wanted}; it has no {' or '.join(f'{m}()' for m in missing)}. "
            f"Received: script={path!r}"
        )
    return module


def script_data(module: Any) -> tuple[Any, Any]:
    """(x, y) from a script's `data()`: a pair, or a dataset / array alone (y None)."""
    try:
        data = module.data()
    except Exception as error:  # noqa: BLE001 - a failing data() is bad input for the CLI
        raise ScriptError(f"data() of script '{module.__file__}' raised {type(error).__name__}: {error}") from error
    if data is None:
        raise ScriptError(f"data() of script '{module.__file__}' must return (x, y). Received: None")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    return data, None


def script_fit_kwargs(module: Any) -> dict[str, Any]:
    """A script's optional `FIT_KWARGS` dict (more `fit` arguments, e.g. shuffle)."""
    value = getattr(module, "FIT_KWARGS", None) or {}
    if not isinstance(value, Mapping):
        raise ScriptError(f"FIT_KWARGS of script '{module.__file__}' must be a dict. Received: {type(value).__name__}")
    return dict(value)
