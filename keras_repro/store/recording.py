"""The reference side of one fit: which epochs it verifies, which it records, and writing them.

A fit covers epochs `first .. planned_end - 1` (model-numbered, see `keras_repro.fit.context`).
With a reference file:

* "record": the fit's epochs are written, after each epoch. When the fit continues
  a run (it starts at epoch k > 0) and the file holds that run's epochs up to k - 1,
  ending in the state this fit starts from, the file is extended; otherwise replaced.
* "verify": the epochs the file holds are checked; the file is never written and
  needs no write access.
* "auto": "record" when the file is missing; otherwise the epochs it holds are
  verified and the ones it lacks are recorded after them (an interrupted recording
  is completed, a continued fit extends it), unless a divergence was found first.

In every mode, a file keras_repro did not write is refused and left as it is, and a file
that must not be written (it or its folder is read-only, by its permission bits too:
`keras_repro.store.file_access`) is verified as in "verify" and kept as it is: a fit that would
have written it warns once, naming the file and what it holds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

from keras_repro.errors import ReferenceFileError, ReproWarning, warn
from keras_repro.fingerprinting import environment as environment_module
from keras_repro.fingerprinting.digests import Fingerprint
from keras_repro.store.log import FingerprintLog
from keras_repro.store.reference import ReferenceFile

logger = logging.getLogger(__name__)

MODES = ("auto", "record", "verify")


def epoch_span(epochs: Sequence[int]) -> str:
    """ "epochs 2-4", "epoch 3", "epochs 0, 2-3" or "no epochs"."""
    numbers = sorted(set(epochs))
    if not numbers:
        return "no epochs"
    runs, start, previous = [], numbers[0], numbers[0]
    for number in numbers[1:] + [None]:
        if number != previous + 1:
            runs.append(f"{start}-{previous}" if previous != start else f"{start}")
            start = number
        previous = number if number is not None else previous
    return ("epochs " if len(numbers) > 1 else "epoch ") + ", ".join(runs)


@dataclasses.dataclass
class ReferenceSession:
    """One fit's use of a reference file.

    Args:
        reference: The file, or None to keep the fingerprints in memory only.
        mode: "auto", "record" or "verify".
        seed: The run's seed (stored in the file).
        chief: False for the non-chief processes of a multi-worker run: they never
            write, and in "auto" mode never read, the file.

    Attributes:
        expected: The recorded run that this fit verifies against, or None.
        record_from: The first epoch this fit writes to the file, or None.
        resolved_mode: "record", "verify", or "extend" once a verify run recorded
            epochs its reference lacked.
        kept: Why the file is kept as it is although the mode would write it (it or
            its folder cannot be written), or None.
    """

    reference: ReferenceFile | None
    mode: str
    seed: int
    chief: bool = True
    expected: FingerprintLog | None = None
    record_from: int | None = None
    resolved_mode: str | None = None
    kept: str | None = None
    _base: FingerprintLog | None = None
    _first: int = 0
    _planned_end: int = 0
    _last_recorded: int | None = None
    _written: FingerprintLog | None = None

    @property
    def mode_now(self) -> str:
        """ "record", "verify" or "extend": `resolved_mode` once the fit began, before that the
        mode as far as it is known (in "auto": "verify" when the chief finds the file)."""
        if self.resolved_mode is not None:
            return self.resolved_mode
        if self.mode != "auto":
            return self.mode
        exists = self.reference is not None and os.path.exists(self.reference.path)
        return "verify" if self.chief and exists else "record"

    @property
    def writes(self) -> bool:
        """Whether this fit writes the file from `record_from` on."""
        return self.record_from is not None and self.reference is not None and self.chief

    def begin(self, first: int, planned_end: int) -> None:
        """Decides what the fit does with the file, before its first step.

        Raises:
            ReferenceFileError: The file cannot be used as the mode requires (a path
                problem, a file keras_repro did not write, a damaged or missing file);
                the lock is then released.
        """
        self._first, self._planned_end = first, planned_end
        reference = self.reference
        if reference is None or (not self.chief and self.mode != "verify"):
            self.resolved_mode, self.record_from = "record", first
            return
        try:
            self._open(reference)
        except BaseException:
            reference.release()
            raise

    def _open(self, reference: ReferenceFile) -> None:
        """Refuses what is not ours, then verifies or records as the mode and the file's
        permissions allow."""
        exists = reference.exists()  # refuses a file keras_repro did not write, before any lock
        if self.mode == "verify" or not self.chief:
            self._begin_verify(reference)
        elif not exists:
            self._begin_record(reference)
        else:
            kept = reference.read_only()
            if kept is None and not reference.lock(required=False):
                kept = reference.lock_failure
            if self.mode == "record" and kept is None:
                self._begin_record(reference)
            else:
                self._begin_verify(reference, kept)

    def _begin_record(self, reference: ReferenceFile) -> None:
        """Record mode: lock, clean up, and keep the earlier epochs a continued fit extends."""
        reference.lock(required=True)
        reference.remove_stale_temporaries()
        self.resolved_mode, self.record_from = "record", self._first
        if self._first > 0 and reference.exists():
            try:
                self._base = reference.read()
            except ReferenceFileError as error:
                logger.info("Replacing %s, which cannot be read: %s", reference.path, error)

    def _begin_verify(self, reference: ReferenceFile, kept: str | None = None) -> None:
        """Verify (or auto on an existing file): read it; extend it past its last epoch in auto
        mode. A file `kept` as it is (see `kept`) is only verified, in every mode."""
        # Refused while a recorder holds the lock (the chief's check; other workers only read).
        locked = reference.lock(required=False) if self.chief else False
        try:
            self.expected = reference.read()
        except ReferenceFileError as error:
            if kept is None:
                raise
            raise ReferenceFileError(reference.path, f"{error.reason} (it is not replaced: {kept})") from None
        self.resolved_mode = "verify"
        if self.mode == "verify" or not self.chief:
            reference.release()
            return
        recorded = [fp.epoch for fp in self.expected.epochs]
        after = max(recorded) + 1 if recorded else self.expected.first_epoch or 0
        if kept is None and not locked:
            kept = reference.lock_failure
        if kept is not None:
            reference.release()
            if self.mode == "record" or self._planned_end > after:
                self.kept = kept
                self._warn_kept(recorded, after)
            return
        if self._planned_end <= after:
            reference.release()
            return
        if self._first > after:
            reference.release()
            warn(f"Reference '{reference.path}' ends before epoch {after}, and this fit starts at epoch "
                 f"{self._first}: its epochs are neither verified nor recorded. Resume from epoch {after}, "
                 "or record a new reference", ReproWarning)
            return
        reference.remove_stale_temporaries()
        self._base, self.record_from = self.expected, after

    def _warn_kept(self, recorded: Sequence[int], after: int) -> None:
        """Warns once that the file is kept as it is: why, what it holds, what this fit verifies."""
        log = self.expected
        holds = epoch_span(recorded)
        if not log.complete and log.planned_epochs is not None:
            holds += f" ({len(recorded)} of {log.planned_epochs} planned: an interrupted recording)"
        mine = [epoch for epoch in recorded if self._first <= epoch < self._planned_end]
        does = f"this fit verifies {epoch_span(mine)} against it" if mine else "this fit verifies none of its epochs"
        later = max(after, self._first)
        if self._planned_end > later:
            does += f", does not verify its epochs from {later} on,"
        warn(f"Reference '{self.reference.path}' cannot be written, so it is kept as it is: {self.kept}. It holds "
             f"{holds}; {does} and records nothing. To record, make it writable or pass another path", ReproWarning)

    def initial_reference(self) -> tuple[Fingerprint | None, tuple[str, ...]]:
        """The recorded state this fit's initial state must equal, and the parts to ignore.

        A fit starting at epoch k > 0 starts from the state at the end of epoch k - 1,
        except for that epoch's data order and the layer RNG state (reset for epoch k).
        """
        log = self.expected or self._base
        if log is None:
            return None, ()
        if self._first == 0:
            return (log.initial if log.initial is not None and log.initial.epoch == 0 else None), ()
        return log.epoch(self._first - 1), ("data", "rng")

    def keep_base(self, keep: bool) -> None:
        """Record mode: whether the earlier epochs in the file belong to this run (they end
        in the state the fit starts from), so the file is extended rather than replaced."""
        if self.expected is None and not keep and self._base is not None:
            logger.info("%s holds another run: replacing it", self.reference.path)
            self._base = None

    def expected_epoch(self, epoch: int) -> Fingerprint | None:
        """The recorded fingerprint this fit's epoch must equal, or None."""
        if self.expected is None or (self.record_from is not None and epoch >= self.record_from):
            return None
        return self.expected.epoch(epoch)

    def stop_extending(self) -> None:
        """After a divergence: a verify run never extends its reference."""
        if self.expected is not None and self.record_from is not None:
            self.record_from = None
            self.close()

    def save(self, current: FingerprintLog, last_epoch: int | None = None, stopped_early: bool = False) -> None:
        """Writes the file: the kept earlier epochs, then this fit's from `record_from` on.
        An epoch of the fit is appended to the file; the fit's last (planned or stopped)
        is written whole, so a finished recording is one HDF5 file that HDF5 tools read.

        Args:
            current: This fit's fingerprints so far.
            last_epoch: The epoch just finished (None for the initial write).
            stopped_early: The fit ended before its planned epochs (a callback
                stopped it): the run plans no further epochs.
        """
        if not self.writes:
            return
        start = self.record_from
        if last_epoch is not None and last_epoch < start:
            return
        if last_epoch is not None:
            self._last_recorded = last_epoch
            if self.expected is not None and self.resolved_mode == "verify":
                self.resolved_mode = "extend"
                logger.info("SeedCallback: '%s' has no epoch %d: recording from epoch %d on", self.reference.path,
                            start, start)
        base = self._base
        kept = [fp for fp in base.epochs if fp.epoch < start] if base else []
        planned = self._planned_end
        if stopped_early and self._last_recorded is not None:
            planned = self._last_recorded + 1
        elif base is not None and base.planned_epochs is not None:
            planned = max(planned, base.planned_epochs)
        log = FingerprintLog(
            initial=base.initial if base is not None and kept else current.initial,
            epochs=tuple(kept + [fp for fp in current.epochs if fp.epoch >= start]),
            environment=(environment_module.recorded(base.environment) if base is not None and kept
                         else dict(current.environment)),
            seed=self.seed,
            notes=_merged_notes(base, current, start) if base is not None and kept else dict(current.notes),
            created=base.created if base is not None and kept else None,
            batches=tuple([fp for fp in base.batches if fp.epoch < start] if base else [])
            + tuple(fp for fp in current.batches if fp.epoch >= start),
            planned_epochs=planned,
            config=base.config if base is not None and kept else current.config,
        )
        last = stopped_early or (last_epoch is not None and last_epoch + 1 >= self._planned_end)
        self.reference.write(log, whole=last)
        self._written = None if last else log

    def recorded(self, epochs: Sequence[int]) -> list[int]:
        """The epochs of this fit that were written to the file."""
        if not self.writes:
            return []
        return [epoch for epoch in epochs if epoch >= self.record_from]

    def close(self) -> None:
        """Releases the file's lock; a fit that ended before its last epoch (an exception,
        a divergence) first folds the epochs it appended into the HDF5 part (rewriting the
        last run written: nothing is read back)."""
        if self.reference is not None:
            if self._written is not None:
                self.reference.fold(self._written)
                self._written = None
            self.reference.release()


def _merged_notes(base: FingerprintLog, current: FingerprintLog, start: int) -> dict[str, str]:
    """The notes of an extended file: the earlier ones (values an older version should not have
    stored redacted), this fit's, and what changed."""
    notes = {**environment_module.redacted_notes(base.notes)[0], **current.notes}
    changes = environment_module.differences(dict(base.environment), dict(current.environment))
    changes = {k: v for k, v in changes.items() if k not in ("env.PYTHONHASHSEED", "hash_randomization")}
    if changes:
        notes[f"environment_from_epoch_{start}"] = "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changes.items())
    return notes


def mode_for(mode: str) -> str:
    """`mode`, validated."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    return mode


def describe(session: ReferenceSession | None, verified: Sequence[int], recorded: Sequence[int]) -> str:
    """One sentence saying what a fit did with its reference."""
    if session is None or session.reference is None:
        return f"fingerprinted {epoch_span(recorded or verified)} in memory"
    path = session.reference.path
    parts = []
    if verified:
        parts.append(f"verified {epoch_span(verified)} against '{path}'")
    if recorded:
        parts.append(f"recorded {epoch_span(recorded)} {'in' if verified else 'to'} '{path}'")
    return " and ".join(parts) or f"neither verified nor recorded an epoch of '{path}'"
