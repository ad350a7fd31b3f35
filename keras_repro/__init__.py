"""keras_repro: reproducible Keras training, and proof of it.

Example:

>>> import keras_repro as kr                       # doctest: +SKIP
>>> kr.seed_everything(7)                          # doctest: +SKIP
7
"""

from keras_repro.audit import AuditDivergence, AuditReport, BisectReport, audit, bisect, find_hazards
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
from keras_repro.plotting import plot_drift, plot_heatmap, plot_metrics
from keras_repro.seeding import derive_seed, seed_everything
from keras_repro.testing import assert_reproducible
from keras_repro.version import __version__

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
    "NondeterministicInputWarning",
    "ReferenceFileError",
    "ReproError",
    "ReproWarning",
    "SeedCallback",
    "__version__",
    "assert_reproducible",
    "audit",
    "bisect",
    "derive_seed",
    "enable_determinism",
    "find_hazards",
    "fingerprint",
    "load_fingerprints",
    "plot_drift",
    "plot_heatmap",
    "plot_metrics",
    "seed_everything",
]
