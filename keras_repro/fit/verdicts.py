"""What a fit does with the divergences it finds: the first one is raised or warned about, with
its likely cause, and a verify then stops extending its reference. In a multi-process run
(JAX) a divergence found by any process is acted on by all, at the moments every process
reaches together (`settle`, a collective; `keras_repro.fit.processes`). Copies of the
variables on several devices, and in several processes, are checked here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from keras_repro.errors import FingerprintMismatch, FingerprintMismatchWarning, warn
from keras_repro.fingerprinting.compare import Divergence, replica_divergence
from keras_repro.fingerprinting.diagnosis import likely_cause
from keras_repro.fingerprinting.digests import Fingerprint, replica_fingerprints
from keras_repro.fingerprinting.variables import replica_devices, replica_local_paths
from keras_repro.fit.processes import agree, divergence_of, divergence_verdict, process_divergence
from keras_repro.store.log import FingerprintLog
from keras_repro.store.recording import ReferenceSession

logger = logging.getLogger(__name__)


class Verdicts:
    """The divergences of one fit, and what is done about the first.

    Args:
        model: The model being fit.
        session: The fit's `ReferenceSession` (its expected run; it stops extending the file).
        reference: The reference's path (for the message), or None.
        on_mismatch: "raise" or "warn".
        processes: The number of processes of the run (1 but in a multi-process JAX run).
        log: Returns the fit's `FingerprintLog` so far (for the likely cause).
        before_raise: Called before a `FingerprintMismatch` is raised (Keras skips
            `on_train_end` after an exception).

    Example:

    >>> verdicts = Verdicts(model, session, "run.h5", "raise", 1, lambda: log, close)  # doctest: +SKIP
    >>> verdicts.report(compare_fingerprints(expected, current, epoch=0))              # doctest: +SKIP
    """

    def __init__(self, model: Any, session: ReferenceSession, reference: str | None, on_mismatch: str,
                 processes: int, log: Callable[[], FingerprintLog], before_raise: Callable[[], None]) -> None:
        self._model, self._session, self._reference = model, session, reference
        self._on_mismatch, self._processes, self._log, self._before_raise = on_mismatch, processes, log, before_raise
        self.divergence: Divergence | None = None
        self._undecided: Divergence | None = None

    def report(self, divergence: Divergence | None) -> None:
        """Raises or warns about the first divergence; in a multi-process run it is kept until
        the processes decide together (`settle`)."""
        if divergence is None or self.divergence is not None:
            return
        if self._processes > 1:
            self._undecided = self._undecided or divergence
            return
        self._act_on(divergence)

    def settle(self) -> None:
        """Multi-process: all act on the first divergence any process found (a collective)."""
        if self._processes == 1:
            return
        mine, self._undecided = self._undecided, None
        found = agree(divergence_verdict(mine, self._reference, self._likely_cause(mine)) if mine else None)
        if found is not None and self.divergence is None:
            divergence, reference, cause = divergence_of(found[1])
            self._act_on(divergence, (reference, cause))  # as the process that found it words it

    def check_replicas(self, epoch: int, stage: str, current: Fingerprint) -> None:
        """Reports the first variable whose copy on some device of this process drifted from
        replica 0's, then in some process from process 0's (`current`: this process's state)."""
        devices = replica_devices(self._model)
        if len(devices) > 1:
            paths = replica_local_paths(self._model)
            self.report(replica_divergence(replica_fingerprints(self._model), epoch, stage, paths, devices))
        if self._processes > 1:  # a collective: every process checks, whatever it found
            self.report(process_divergence(current, epoch, stage, replica_local_paths(self._model)))

    def _act_on(self, divergence: Divergence, worded: tuple[str | None, str | None] | None = None) -> None:
        """Raises or warns about a divergence, found against `worded` = (reference, likely cause)
        (by default this fit's reference and the cause this process sees)."""
        self.divergence = divergence
        self._session.stop_extending()
        reference, cause = worded or (self._reference, self._likely_cause(divergence))
        error = FingerprintMismatch(divergence, reference, cause)
        if self._on_mismatch == "raise":
            self._before_raise()
            raise error
        warn(str(error), FingerprintMismatchWarning)

    def _likely_cause(self, divergence: Divergence) -> str | None:
        """The likely cause of a divergence from the reference (`keras_repro.fingerprinting.
        diagnosis`); None for a replica's or a process's."""
        if divergence.replica is not None or divergence.process is not None:
            return None
        deterministic = getattr(self._model, "_repro_seed", None) is not None
        return likely_cause(divergence, self._session.expected, self._log(), deterministic_model=deterministic)
