"""Running part of a check in a fresh Python process: the job, its data, the user's code.

`audit` trains its steps once more in a new interpreter, and `assert_resumable`
continues a checkpoint there: a fresh process with another `PYTHONHASHSEED` is the
only way to catch state that a process carries (string hashing, import order, RNG
draws at import). The parent writes a job (a pickled dict), the arrays (`.npz`) and
the location of the user's function; the child imports it, runs an entry function
of keras_repro and saves the resulting `FingerprintLog`, which the parent reads.

A fresh process never starts another (`keras_repro.tools.nesting`): a check called in it (a
script without `if __name__ == "__main__":`) raises `MissingMainGuardError` there, which
the child hands to the parent through a file and the parent raises again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from keras_repro.errors import MissingMainGuardError, ReproError
from keras_repro.seeding import MAX_SEED, _startup_environment_value
from keras_repro.store.log import FingerprintLog
from keras_repro.store.reader import load_fingerprints
from keras_repro.tools import nesting
from keras_repro.tools.nesting import CHILD_ENVIRONMENT_VARIABLE  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

TIMEOUT = 900.0
"""Seconds a fresh-process run may take."""

NESTED_EXIT = 3
"""Exit code of a fresh process that refused a nested check (`MissingMainGuardError`)."""

SCRIPT_PREFIX = "_keras_repro_script_"
"""Module-name prefix of scripts imported by path."""


@dataclasses.dataclass(frozen=True)
class Target:
    """How a fresh process finds a function: a module name and/or a file, and a qualified name."""

    module: str | None
    path: str | None
    qualname: str


def _resolve(module: Any, qualname: str) -> Any:
    """`module.<qualname>`, following dots."""
    value = module
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def locate(function: Any, name: str = "build_model") -> tuple[Target | None, str]:
    """(target, "") if a fresh process can import `function`, else (None, why not)."""
    qualname = getattr(function, "__qualname__", None)
    module_name = getattr(function, "__module__", None)
    if not qualname or not module_name:
        return None, f"{name} ({function!r}) has no qualified name a fresh process could import"
    if "<" in qualname:
        return None, f"{name} ('{qualname}') is a local function or a lambda; define it at module level"
    module = sys.modules.get(module_name)
    try:
        found = module is not None and _resolve(module, qualname) is function
    except AttributeError:
        found = False
    if not found:
        return None, f"'{module_name}.{qualname}' does not name {name} in its loaded module"
    path = getattr(module, "__file__", None)
    path = os.path.abspath(path) if path and path.endswith(".py") and os.path.isfile(path) else None
    spec = getattr(module, "__spec__", None)
    import_name = spec.name if spec is not None and spec.name not in (None, "__main__") else None
    if import_name is None and path is None:
        return None, (
            f"{name} is defined in '{module_name}', which has no source file a fresh process could "
            "import (a notebook or an interactive session?); define it in a module or a script file"
        )
    return Target(import_name, path, qualname), ""


def import_path(path: str) -> Any:
    """Imports a Python file as a module of its own (once per process), its folder on sys.path."""
    path = os.path.abspath(path)
    name = SCRIPT_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"'{path}' is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_target(target: Target) -> Any:
    """The function `locate` described, imported (in the fresh process)."""
    module = None
    if target.module and not target.module.startswith(SCRIPT_PREFIX):
        try:
            with nesting.importing(target.module):
                module = importlib.import_module(target.module)
        except ImportError:
            module = None
        source = getattr(module, "__file__", None)
        if module is not None and target.path and source and os.path.realpath(source) != os.path.realpath(target.path):
            module = None  # another module of the same name: use the file
    if module is None:
        if not target.path:
            raise ReproError(f"The fresh process cannot import module '{target.module}'. Received: target={target}")
        with nesting.importing(target.path):
            module = import_path(target.path)
    return _resolve(module, target.qualname)


def map_leaves(value: Any, function: Callable[[Any], Any]) -> Any:
    """Applies `function` to every leaf of nested dicts, lists and tuples; None stays None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {key: map_leaves(item, function) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_leaves(item, function) for item in value)
    return function(value)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """Where an array goes in a saved structure."""

    index: int


def save_arrays(path: str, value: Any) -> bytes:
    """Writes every array leaf of `value` to a `.npz` file; returns the pickled structure."""
    leaves: list[np.ndarray] = []

    def place(array: Any) -> _Leaf:
        leaves.append(np.asarray(array))
        return _Leaf(len(leaves) - 1)

    structure = map_leaves(value, place)
    np.savez(path, **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)})
    return pickle.dumps(structure)


def load_arrays(path: str, structure: bytes) -> Any:
    """Reads what `save_arrays` wrote."""
    with np.load(path, allow_pickle=False) as arrays:
        return map_leaves(pickle.loads(structure), lambda leaf: arrays[f"leaf_{leaf.index}"])


def pickled(value: Any, what: str) -> tuple[bytes | None, str]:
    """(pickled value, "") to send to a fresh process, or (None, why it cannot be sent)."""
    try:
        return pickle.dumps(value), ""
    except Exception as error:  # noqa: BLE001 - anything pickle refuses
        return None, f"the {what} cannot be sent to another process ({type(error).__name__}: {error})"


def other_hash_seed() -> str:
    """A PYTHONHASHSEED other than this process's."""
    value = (_startup_environment_value("PYTHONHASHSEED") or "").strip()
    if value.isdigit():
        return str((int(value) + 1) % (MAX_SEED + 1))
    return "1"


def _environment(hash_seed: str, started_by: str) -> dict[str, str]:
    """This process's environment, with another PYTHONHASHSEED and the same backend, marked
    as a fresh process (`nesting`)."""
    from keras_repro import _backend

    env = dict(os.environ, PYTHONHASHSEED=hash_seed, KERAS_BACKEND=_backend.name())
    nesting.mark_child(env, started_by)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(_backend.child_determinism_environment())
    return env


def run(entry: str, payload: Mapping[str, Any], arrays: Any, what: str, hash_seed: str | None = None,
        read: Callable[[str], Any] | None = None) -> FingerprintLog:
    """Runs `entry(payload, arrays)` in a new interpreter; returns the log it produced (or,
    with `read`, what `read` makes of the file the entry's result `save`d: a layer trace).

    Args:
        entry: "module:function" of keras_repro, called in the child with the payload
            and the arrays; it returns a `FingerprintLog`.
        payload: Picklable values (pickled bytes inside are unpickled by the entry,
            after the user's folders are on `sys.path`).
        arrays: Nested lists/tuples/dicts of arrays, sent through a `.npz` file.
        what: What the run is, for error messages ("the audit", "assert_resumable").
        hash_seed: The child's PYTHONHASHSEED (default: another than this process's).

    Raises:
        MissingMainGuardError: If the child refused a check called in it (the user's module
            runs one at import), with the child's message.
        ReproError: If the child fails or takes longer than `TIMEOUT`, with its last lines.
    """
    nesting.refuse_nested(what)
    hash_seed = hash_seed or other_hash_seed()
    with tempfile.TemporaryDirectory(prefix="keras-repro-child-") as folder:
        data_path, job_path, out_path, error_path = (
            os.path.join(folder, n) for n in ("data.npz", "job.pkl", "run.h5", "refused.txt"))
        job = {
            "entry": entry,
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
            "payload": dict(payload),
            "data": data_path,
            "structure": save_arrays(data_path, arrays),
            "out": out_path,
            "refused": error_path,
        }
        with open(job_path, "wb") as handle:
            pickle.dump(job, handle)
        code = "import sys; from keras_repro.tools.child import main; sys.exit(main(sys.argv[1:]))"
        logger.info("%s: fresh process with PYTHONHASHSEED=%s", what, hash_seed)
        try:
            result = subprocess.run([sys.executable, "-c", code, job_path], env=_environment(hash_seed, what),
                                    capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ReproError(
                f"The fresh-process run of {what} took more than {TIMEOUT:.0f} s; train fewer steps, or "
                "skip the fresh process. Received: fresh_process=True"
            ) from None
        if os.path.exists(error_path):
            with open(error_path, encoding="utf-8") as handle:
                raise MissingMainGuardError(f"The fresh process of {what} stopped: {handle.read()}")
        if result.returncode != 0 or not os.path.exists(out_path):
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise ReproError(
                f"The fresh-process run of {what} failed (exit {result.returncode}). Its last lines:\n{tail}\n"
                "Fix the error above (the fresh process imports your module again: keep its training "
                "under `if __name__ == \"__main__\":`)."
            )
        return (read or load_fingerprints)(out_path)


def main(argv: list[str]) -> int:
    """The fresh process: reads the job, puts the user's folders on sys.path, runs the entry."""
    with open(argv[0], "rb") as handle:
        job = pickle.load(handle)
    sys.path[:0] = [p for p in job["sys_path"] if p not in sys.path]
    module_name, function_name = job["entry"].split(":")
    entry = getattr(importlib.import_module(module_name), function_name)
    try:
        log = entry(job["payload"], load_arrays(job["data"], job["structure"]))
    except MissingMainGuardError as error:  # the parent raises it again, with this message
        with open(job["refused"], "w", encoding="utf-8") as handle:
            handle.write(str(error))
        return NESTED_EXIT
    log.save(job["out"])
    return 0
