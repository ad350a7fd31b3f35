"""keras_repro: reproducible Keras training, and proof of it.

`import keras_repro` imports Keras and registers the model classes, so
`keras.models.load_model` finds a saved `DeterministicModel`, and sets the deterministic-
kernel switches that only work before the backend starts (see `keras_repro.determinism`). The `keras-repro`
command (and `python -m keras_repro`) imports only what each subcommand needs:
reading a fingerprint file (`show`, `diff`) needs h5py and NumPy, not Keras.

Example:

>>> import keras_repro as kr                       # doctest: +SKIP
>>> kr.seed_everything(7)                          # doctest: +SKIP
7
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from keras_repro.version import __version__

_EXPORTS = {
    "AuditDivergence": "keras_repro.tools.audit",
    "AuditReport": "keras_repro.tools.audit",
    "BisectReport": "keras_repro.tools.audit",
    "audit": "keras_repro.tools.audit",
    "bisect": "keras_repro.tools.audit",
    "find_hazards": "keras_repro.tools.audit",
    "SeedCallback": "keras_repro.callbacks",
    "Comparison": "keras_repro.fingerprinting.compare",
    "Divergence": "keras_repro.fingerprinting.compare",
    "DeterminismReport": "keras_repro.determinism",
    "enable_determinism": "keras_repro.determinism",
    "FingerprintMismatch": "keras_repro.errors",
    "FingerprintMismatchWarning": "keras_repro.errors",
    "HashRandomizationWarning": "keras_repro.errors",
    "MissingMainGuardError": "keras_repro.errors",
    "NondeterministicInputWarning": "keras_repro.errors",
    "ReferenceFileError": "keras_repro.errors",
    "ReproError": "keras_repro.errors",
    "ReproWarning": "keras_repro.errors",
    "Fingerprint": "keras_repro.fingerprinting.digests",
    "fingerprint": "keras_repro.fingerprinting.digests",
    "FingerprintLog": "keras_repro.store.log",
    "load_fingerprints": "keras_repro.store.reader",
    "DeterministicModel": "keras_repro.model",
    "DeterministicSequential": "keras_repro.model",
    "fix_multi_worker_fit": "keras_repro.fit.multi_worker",
    "PreflightReport": "keras_repro.tools.preflight",
    "preflight": "keras_repro.tools.preflight",
    "plot_drift": "keras_repro.plotting",
    "plot_heatmap": "keras_repro.plotting",
    "plot_metrics": "keras_repro.plotting",
    "derive_seed": "keras_repro.seeding",
    "seed_everything": "keras_repro.seeding",
    "assert_reproducible": "keras_repro.testing",
    "assert_resumable": "keras_repro.testing",
    "Trace": "keras_repro.trace.entries",
    "trace_layers": "keras_repro.trace.record",
    "TraceComparison": "keras_repro.trace.compare",
    "TraceDivergence": "keras_repro.trace.compare",
    "compare_traces": "keras_repro.trace.compare",
}

__all__ = [*sorted(_EXPORTS), "__version__"]  # one list of public names: _EXPORTS


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_repro' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _started_as_command() -> bool:
    """Whether this interpreter was started to run the `keras-repro` command."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    if any(os.path.basename(arg).split(".")[0] == "keras-repro" for arg in argv[:3]):
        return True
    return any(flag == "-m" and module == "keras_repro" for flag, module in zip(argv, argv[1:]))


if not _started_as_command():  # the command imports only what its subcommand needs
    for _name in _EXPORTS:
        __getattr__(_name)
    del _name
    from keras_repro.determinism import prepare_at_import

    prepare_at_import()  # JAX's XLA flag and cuBLAS's workspace: only before the backend starts
