"""keras_repro: reproducible Keras training, and proof of it.

Names are imported on first use, so reading fingerprint files (and the
`keras-repro show` / `diff` commands) does not start TensorFlow.

Example:

>>> import keras_repro as kr                       # doctest: +SKIP
>>> kr.seed_everything(7)                          # doctest: +SKIP
7
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Comparison": "keras_repro.compare",
    "DeterminismReport": "keras_repro.determinism",
    "DeterministicModel": "keras_repro.model",
    "DeterministicSequential": "keras_repro.model",
    "Divergence": "keras_repro.compare",
    "Fingerprint": "keras_repro.fingerprints",
    "FingerprintLog": "keras_repro.log",
    "FingerprintMismatch": "keras_repro.errors",
    "FingerprintMismatchWarning": "keras_repro.errors",
    "HashRandomizationWarning": "keras_repro.errors",
    "NondeterministicInputWarning": "keras_repro.errors",
    "ReferenceFileError": "keras_repro.errors",
    "ReproError": "keras_repro.errors",
    "ReproWarning": "keras_repro.errors",
    "SeedCallback": "keras_repro.callbacks",
    "derive_seed": "keras_repro.seeding",
    "enable_determinism": "keras_repro.determinism",
    "fingerprint": "keras_repro.fingerprints",
    "load_fingerprints": "keras_repro.log",
    "seed_everything": "keras_repro.seeding",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Imports a public name from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_repro' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from keras_repro.callbacks import SeedCallback
    from keras_repro.compare import Comparison, Divergence
    from keras_repro.determinism import DeterminismReport, enable_determinism
    from keras_repro.errors import (
        FingerprintMismatch,
        FingerprintMismatchWarning,
        HashRandomizationWarning,
        NondeterministicInputWarning,
        ReferenceFileError,
        ReproError,
        ReproWarning,
    )
    from keras_repro.fingerprints import Fingerprint, fingerprint
    from keras_repro.log import FingerprintLog, load_fingerprints
    from keras_repro.model import DeterministicModel, DeterministicSequential
    from keras_repro.seeding import derive_seed, seed_everything
