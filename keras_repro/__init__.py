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
from typing import TYPE_CHECKING, Any

from keras_repro.version import __version__

_EXPORTS = {
    "AuditDivergence": "keras_repro.audit",
    "AuditReport": "keras_repro.audit",
    "BisectReport": "keras_repro.audit",
    "audit": "keras_repro.audit",
    "bisect": "keras_repro.audit",
    "find_hazards": "keras_repro.audit",
    "SeedCallback": "keras_repro.callbacks",
    "Comparison": "keras_repro.compare",
    "Divergence": "keras_repro.compare",
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
    "Fingerprint": "keras_repro.fingerprints",
    "fingerprint": "keras_repro.fingerprints",
    "FingerprintLog": "keras_repro.log",
    "load_fingerprints": "keras_repro.log",
    "DeterministicModel": "keras_repro.model",
    "DeterministicSequential": "keras_repro.model",
    "fix_multi_worker_fit": "keras_repro.multi_worker",
    "PreflightReport": "keras_repro.preflight",
    "preflight": "keras_repro.preflight",
    "plot_drift": "keras_repro.plotting",
    "plot_heatmap": "keras_repro.plotting",
    "plot_metrics": "keras_repro.plotting",
    "derive_seed": "keras_repro.seeding",
    "seed_everything": "keras_repro.seeding",
    "assert_reproducible": "keras_repro.testing",
    "assert_resumable": "keras_repro.testing",
}

__all__ = [
    "AuditDivergence",
    "AuditReport",
    "BisectReport",
    "Comparison",
    "DeterminismReport",
    "DeterministicModel",
    "DeterministicSequential",
    "Divergence",
    "Fingerprint",
    "FingerprintLog",
    "FingerprintMismatch",
    "FingerprintMismatchWarning",
    "HashRandomizationWarning",
    "MissingMainGuardError",
    "NondeterministicInputWarning",
    "PreflightReport",
    "ReferenceFileError",
    "ReproError",
    "ReproWarning",
    "SeedCallback",
    "__version__",
    "assert_reproducible",
    "assert_resumable",
    "audit",
    "bisect",
    "derive_seed",
    "enable_determinism",
    "find_hazards",
    "fingerprint",
    "fix_multi_worker_fit",
    "load_fingerprints",
    "plot_drift",
    "plot_heatmap",
    "plot_metrics",
    "preflight",
    "seed_everything",
]


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


if TYPE_CHECKING or not _started_as_command():
    from keras_repro.audit import (
        AuditDivergence,
        AuditReport,
        BisectReport,
        audit,
        bisect,
        find_hazards,
    )
    from keras_repro.callbacks import SeedCallback
    from keras_repro.compare import Comparison, Divergence
    from keras_repro.determinism import DeterminismReport, enable_determinism
    from keras_repro.errors import (
        FingerprintMismatch,
        FingerprintMismatchWarning,
        HashRandomizationWarning,
        MissingMainGuardError,
        NondeterministicInputWarning,
        ReferenceFileError,
        ReproError,
        ReproWarning,
    )
    from keras_repro.fingerprints import Fingerprint, fingerprint
    from keras_repro.log import FingerprintLog, load_fingerprints
    from keras_repro.model import DeterministicModel, DeterministicSequential
    from keras_repro.multi_worker import fix_multi_worker_fit
    from keras_repro.plotting import plot_drift, plot_heatmap, plot_metrics
    from keras_repro.preflight import PreflightReport, preflight
    from keras_repro.seeding import derive_seed, seed_everything
    from keras_repro.testing import assert_reproducible, assert_resumable

if not TYPE_CHECKING and not _started_as_command():
    from keras_repro.determinism import prepare_at_import

    prepare_at_import()  # JAX's XLA flag and cuBLAS's workspace: only before the backend starts
