"""`SeedCallback`: reseeds a fit, fingerprints every epoch, records or verifies."""

from __future__ import annotations

import logging
import os
from typing import Any

import keras

from keras_repro import _backend
from keras_repro.arguments import positive_int
from keras_repro.determinism import warn_if_kernels_off
from keras_repro.errors import ReproWarning, warn
from keras_repro.fingerprinting import environment
from keras_repro.fingerprinting.compare import Divergence, compare_fingerprints
from keras_repro.fingerprinting.digests import Fingerprint, fingerprint
from keras_repro.fingerprinting.variables import build_optimizer_early
from keras_repro.fit.batch_checks import BatchChecker, resolve_capture
from keras_repro.fit.callback_state import warn_lost_state
from keras_repro.fit.context import EpochClock, FitContext, fit_seed
from keras_repro.fit.fed_data import DataChecks
from keras_repro.fit.processes import (
    agree,
    process_count,
    together,
)
from keras_repro.fit.rng_state import global_generator_records, reseed_epoch, reseed_fit, reset_seed_generators
from keras_repro.fit.verdicts import Verdicts
from keras_repro.seeding import (
    validate_seed,
    warn_if_hash_randomized,
)
from keras_repro.store.log import FingerprintLog
from keras_repro.store.recording import ReferenceSession, describe, epoch_span, mode_for
from keras_repro.store.reference import ReferenceFile, lock_path, normalize_path

logger = logging.getLogger(__name__)

ON_MISMATCH = ("raise", "warn")

__all__ = ["SeedCallback", "lock_path", "reset_seed_generators"]


class SeedCallback(keras.callbacks.Callback):
    """Reseeds a fit, fingerprints every epoch, and records or verifies a reference.

    At the start of each fit it reseeds Python, NumPy and the backend from `seed`, and
    on an accelerator warns once when deterministic kernels are not in effect.
    Before the first step it fingerprints the model (weights, optimizer state);
    at the start of every epoch it reseeds again from (seed, epoch) and resets
    every layer `SeedGenerator` (Dropout, noise, augmentation) from (seed, epoch,
    layer) and Keras' global one (what `keras.random` calls without a seed draw
    from) from (seed, epoch), in place, so masks depend on the epoch alone, not on
    history. At every epoch end it fingerprints the model (Keras' global
    SeedGenerator in the rng part) and records or verifies it. The fit's fingerprints
    are `callback.log` and `history.fingerprints` (`history.history` holds Keras' numbers only).

    Epochs are numbered as Keras numbers them in callbacks, from 0, except that a
    fit starting at epoch 0 on a model that already trained k epochs in this
    process (a second `fit`, as notebooks do) continues the numbering at k: the
    two fits are recorded and verified as one longer run.

    Args:
        seed: An int in [0, 2**32 - 1], or None (default) to take the seed of the
            `kr.DeterministicModel` it fits: one seed owns the fit, so a different one
            raises `ValueError` naming both. A plain `keras.Model` needs one here.
        reference: Path of the fingerprint file (`.h5`; `~` is expanded and missing
            folders are created when recording), or None to keep the fingerprints in
            memory only (`callback.log`).
        mode: "auto" (default) records when the file is missing; when it exists,
            verifies the epochs it holds and records those it lacks after them (so an
            interrupted recording is completed and a continued fit extends it).
            "record" writes the file (replacing another run's; a continued fit extends
            its own run's). "verify" only compares: the file must exist. Every mode
            refuses a file keras_repro did not write, leaving it as it is, and only
            verifies a file or folder made read-only (chmod; also as root), warning
            once if the mode would have written it.
        on_mismatch: "raise" stops training with `FingerprintMismatch` at the end
            of the first epoch that differs (or before the first step when the
            initial state differs); "warn" warns once and goes on.
        reset_layer_rng: Reset layer SeedGenerators and Keras' global one (unseeded
            `keras.random` calls) at every epoch start (default; `keras_repro.fit.rng_state`).
        log_key: Opt-in: also add every epoch's digest to `history.history` under this
            key (code that plots every key expects numbers there). Never in `logs`.
        every_n_batches: Also fingerprint the state after every N-th batch, so a
            verify names the first divergent batch, not just the epoch. A batch
            fingerprint is a 64-bit integer checksum of each variable computed on
            its device in one compiled call (`keras_repro.fingerprinting.checksums`), left there and
            brought to the host in groups (`keras_repro.fit.batch_checks`): still a pass
            over every weight, which on CPU costs a fraction of a small model's step
            (see benchmarks/batch_fingerprint.py). The epoch fingerprint still
            hashes every byte.
        fetch_every: Batch checksums brought to the host together (and at every epoch
            end): a verify names the first divergent batch, found up to this many
            checks after it.
        capture: When a batch's state is checksummed: "end" (in `on_train_batch_end`),
            "begin" (when the next batch begins, so Keras may run batch-end hooks on a
            thread), or "auto" (default): "begin" on JAX, else "end". See
            `keras_repro.fit.batch_checks`.
        check_replicas: Where devices each hold a copy of the variables
            (`tf.distribute` mirrored variables, replicated JAX arrays), check before
            the first step and at every epoch end that all copies are equal, and
            report the first replica and variable that drifted (as `on_mismatch` says),
            in record mode too. Costs a host read and hash per copy. In a multi-process
            run (JAX), also check that every process holds the same state as process 0
            (`keras_repro.fit.processes`); every process must pass the same value.
        data_checks: Checksum every batch the fit feeds or validates on (x, y, sample_weight; any
            input form) inside its step, into the data part (`fed/x`...; `keras_repro.fit.fed_data`).

    Multi-process runs (JAX): every process runs the callback with the same arguments; only
    process 0 writes the reference (and, but with mode="verify", reads it); a divergence or a
    reference error found by any process is acted on by all, at the initial check and at each
    epoch end (`keras_repro.fit.processes`).

    Attributes:
        log: The `FingerprintLog` of the last fit.
        divergence: The first `Divergence` found by the last verify, or None.
        resolved_mode: "record" or "verify" once a fit has begun its first epoch;
            "extend" when a verify went on to record epochs its reference lacked.
        verified_epochs: The epochs of the last fit checked against the reference.
        recorded_epochs: The epochs of the last fit written to the reference.
        summary: One sentence saying what the last fit did with the reference.

    Example:

    >>> cb = SeedCallback(seed=7, reference="run.h5")          # doctest: +SKIP
    >>> model.fit(x, y, epochs=3, callbacks=[cb])              # doctest: +SKIP
    >>> cb.resolved_mode, cb.summary                           # doctest: +SKIP
    ('record', "recorded epochs 0-2 to 'run.h5'")
    """

    def __init__(
        self,
        seed: int | None = None,
        reference: str | os.PathLike | None = None,
        mode: str = "auto",
        on_mismatch: str = "raise",
        reset_layer_rng: bool = True,
        log_key: str | None = None,
        every_n_batches: int | None = None,
        check_replicas: bool = True,
        fetch_every: int = 32,
        capture: str = "auto",
        data_checks: bool = True,
    ) -> None:
        super().__init__()
        self._given_seed = None if seed is None else validate_seed(seed)
        self.seed = self._given_seed  # the fit's seed once a fit began (`keras_repro.fit.context.fit_seed`)
        self.mode = mode_for(mode)
        if on_mismatch not in ON_MISMATCH:
            raise ValueError(f"`on_mismatch` must be one of {ON_MISMATCH}. Received: on_mismatch={on_mismatch!r}")
        if mode == "verify" and reference is None:
            raise ValueError("mode='verify' needs a `reference` file to compare with. Received: reference=None")
        self.reference = normalize_path(reference)
        self.on_mismatch = on_mismatch
        self.reset_layer_rng = bool(reset_layer_rng)
        self.log_key = log_key
        self.every_n_batches = positive_int("every_n_batches", every_n_batches, optional=True)
        self.fetch_every = positive_int("fetch_every", fetch_every)
        self.capture = resolve_capture(capture)
        # Keras runs batch-end hooks in a thread, overlapping the next steps, only for
        # callbacks that say they are safe: a batch fingerprint must read the state of its
        # own batch, which capture="begin" reads when the next batch begins.
        self.async_safe = every_n_batches is None or self.capture == "begin"
        self.check_replicas = bool(check_replicas)
        self.data_checks = bool(data_checks)
        self._handed: FitContext | None = None
        self._session: ReferenceSession | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        """Forgets everything about a previous fit, so the instance can be reused."""
        if self._session is not None:
            self._session.close()
        self._session = None
        self._verdicts: Verdicts | None = None
        self.verified_epochs: tuple[int, ...] = ()
        self.recorded_epochs: tuple[int, ...] = ()
        self._context: FitContext | None = None
        self._initial: Fingerprint | None = None
        self._epochs: list[Fingerprint] = []
        self._batch_checker: BatchChecker | None = None
        self._epoch = 0
        self._first_epoch: int | None = None
        self._environment: dict[str, str] = {}
        self._warned_missing = False
        self._processes = 1
        self._config: dict[str, str] | None = None
        self._data = DataChecks(None, enabled=False)
        self._resume_capture: tuple[int, int] | None = None  # a batch fingerprint a mid-epoch resume takes

    def use_fit_context(self, context: FitContext) -> None:
        """Called by `DeterministicModel.fit` before it fits: the next fit's epoch numbering,
        data-order records, notes and seed. Other models get a default context.

        Raises:
            ValueError: When this callback was given a seed other than the model's.
        """
        fit_seed(self._given_seed, context.seed)
        self._handed = context

    @property
    def log(self) -> FingerprintLog:
        """The fingerprints of the current (or last) fit."""
        return FingerprintLog(
            self._initial, tuple(self._epochs), dict(self._environment), self.seed, self._notes(), self.reference,
            batches=tuple(self._batch_checker.fingerprints() if self._batch_checker else ()), config=self._config,
        )

    @property
    def resolved_mode(self) -> str | None:
        """ "record", "verify" or "extend" (see the class docstring); None before a fit."""
        return self._session.mode_now if self._session is not None else None

    @property
    def summary(self) -> str:
        """What the last fit did with the reference, in one sentence."""
        recorded = self.recorded_epochs if self.reference else [fp.epoch for fp in self._epochs]
        return describe(self._session, self.verified_epochs, recorded)

    def _notes(self) -> dict[str, str]:
        """Notes recorded with the run (e.g. nondeterministic inputs, kept weights)."""
        return {**self._context.notes, **self._data.notes} if self._context is not None else {}

    # Keras hooks -----------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset_state()
        warn_if_hash_randomized()
        self._context, self._handed = self._handed or FitContext(EpochClock(self.model)), None
        self.seed = fit_seed(self._given_seed, self._context.seed)
        warn_if_kernels_off(self._context.kernels_chosen_off)
        chief = _backend.is_chief(self.model)
        self._session = ReferenceSession(
            ReferenceFile(self.reference) if self.reference else None, self.mode, self.seed, chief
        )
        self._processes = process_count()
        self._verdicts = Verdicts(self.model, self._session, self.reference, self.on_mismatch, self._processes,
                                  lambda: self.log, self._stop)
        self._data = DataChecks.started(self.model, self.data_checks)  # wraps the steps until on_train_end
        if self.every_n_batches:
            self._batch_checker = BatchChecker(self.every_n_batches, self.fetch_every, self.capture, self._report,
                                               self._data.running)
        reseed_fit(self.seed)
        self._environment = environment.collect()
        logger.info("SeedCallback: %s mode, reference=%s", self.resolved_mode, self.reference)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        epoch = self._epoch = self._context.clock.epoch(epoch)
        reseed_epoch(self.model, self.seed, epoch, self.reset_layer_rng, self._context.input_rng)
        self._data.epoch_begin(epoch)
        if self._context.resume is not None:  # a fit resumed inside this epoch (`fit.midepoch`)
            self._context.resume.restore(self.model, epoch, self)
        if self._first_epoch is None:
            self._begin(epoch)

    def _begin(self, epoch: int) -> None:
        """Before the first step: fingerprint the initial state, open the reference, check."""
        self._first_epoch = epoch
        warn_lost_state(self._context.callbacks, epoch, epoch - self._context.clock.offset, self.model)
        build_optimizer_early(self.model)
        self._config = self._context.configuration(self.model, self.params, self.reset_layer_rng)
        self._initial = self._fingerprint(epoch)
        planned_end = self._context.clock.epoch(int((self.params or {}).get("epochs") or 0) - 1) + 1
        together(lambda: self._session.begin(epoch, max(planned_end, epoch + 1)), self.reference, self._session.close)
        if self._session.expected is not None and self._batch_checker is not None:
            self._batch_checker.expect(self._session.expected)
        if self._processes > 1 and self._batch_checker is not None:  # one kind of batch check in all
            self._batch_checker.use_sha256(agree({"sha256": True} if self._batch_checker.sha256 else None) is not None)
        self._check_replicas(epoch, "initial", self._initial)
        self._check_initial(epoch)
        self._settle()
        self._session.save(self.log)

    # Batch hooks use `self._model`: on JAX, Keras' `self.model` writes the trainer's state back
    # into the variables (a write per variable, and the next step rebuilds its state), which
    # the checksums avoid by reading the trainer's state.

    def _capture_resumed(self) -> None:
        """A mid-epoch resume's batch fingerprint of the state it restored (`fit.midepoch`)."""
        if self._resume_capture is not None:
            self._batch_checker._capture(self._model, *self._resume_capture)
            self._resume_capture = None

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._capture_resumed()
        if self._batch_checker is not None:
            self._batch_checker.batch_begin(self._model, self._epoch, batch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._batch_checker is not None:
            self._batch_checker.batch_end(self._model, self._epoch, batch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._context.clock.finished(epoch)
        epoch = self._epoch
        self._capture_resumed()  # an epoch resumed after its last batch has none
        if self._batch_checker is not None:  # the epoch's batches first: they name the first divergence
            self._batch_checker.epoch_end(self.model, epoch)
        metrics = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        current = self._fingerprint(epoch, summaries=True).with_epoch(epoch, metrics)
        self._epochs.append(current)
        self._check_replicas(epoch, "epoch", current)
        expected = self._session.expected_epoch(epoch)
        if expected is not None:
            self.verified_epochs += (epoch,)
            self._report(compare_fingerprints(expected, current, epoch))
        elif self._session.record_from is None and self._session.expected is not None:
            self._warn_missing(epoch)
        self._settle()
        self._add_to_history(current.digest)
        self._session.save(self.log, epoch)
        self.recorded_epochs = tuple(self._session.recorded([fp.epoch for fp in self._epochs]))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._session is None:
            return
        if self._batch_checker is not None:
            self._batch_checker.fetch()  # batches after the last epoch's end (a stopped fit)
        self._settle()
        last = self._epochs[-1].epoch if self._epochs else None
        if last is not None and getattr(self.model, "stop_training", False):
            self._session.save(self.log, last, stopped_early=True)  # the run plans no further epochs
        self._stop()
        if self.reference:
            logger.info("SeedCallback: %s", self.summary)

    @property
    def divergence(self) -> Divergence | None:
        """The first `Divergence` the last fit found, or None."""
        return self._verdicts.divergence if self._verdicts is not None else None

    # helpers -----------------------------------------------------------------------

    def _add_to_history(self, digest: str) -> None:
        """Puts the fit's log on its History as `fingerprints` (the digest under `log_key` if given)."""
        history = getattr(self.model, "history", None)
        if isinstance(history, keras.callbacks.History):
            history.fingerprints = self.log
            if self.log_key:
                history.history.setdefault(self.log_key, []).append(digest)

    def _fingerprint(self, epoch: int, summaries: bool = True) -> Fingerprint:
        """The model's fingerprint, with the data-order records of the fit's context."""
        extra = [*self._context.data_records(epoch), *self._data.records(epoch), *global_generator_records(summaries)]
        return fingerprint(self.model, summaries=summaries).with_epoch(epoch).with_records(extra)

    def _stop(self) -> None:
        """Closes the reference and puts the model's own steps back (at the end of a fit, or
        before a `FingerprintMismatch` is raised: Keras then skips on_train_end)."""
        self._session.close()
        self._data.stop()

    def _report(self, divergence: Divergence | None) -> None:
        """Raises or warns about the first divergence (`keras_repro.fit.verdicts`)."""
        self._verdicts.report(divergence)

    def _settle(self) -> None:
        """Multi-process: all act on the first divergence any process found (a collective)."""
        self._verdicts.settle()

    def _check_replicas(self, epoch: int, stage: str, current: Fingerprint) -> None:
        """Checks the copies of the variables on other devices and in other processes."""
        if self.check_replicas:
            self._verdicts.check_replicas(epoch, stage, current)

    def _check_initial(self, epoch: int) -> None:
        """Compares the state before the first step with the reference (or, recording a
        continued run, decides whether the file's earlier epochs belong to it)."""
        expected, ignore = self._session.initial_reference()
        if self._context.resume is not None and self._context.resume.resumes_mid_epoch:
            expected = None  # the state after a batch inside the epoch: no record holds it
            self._session.keep_base(True)
        if expected is None:
            if self._session.expected is not None:
                logger.info("Reference has no state before epoch %d; initial state not verified", epoch)
            return
        found = compare_fingerprints(expected, self._initial, epoch, "initial", ignore=ignore)
        if self._session.expected is None:
            self._session.keep_base(found is None)
        else:
            self._report(found)

    def _warn_missing(self, epoch: int) -> None:
        """Warns once that the reference is shorter than this run (unless it is kept: said then)."""
        if self._warned_missing or self._session.kept is not None:
            return
        self._warned_missing = True
        expected = self._session.expected
        state = "" if expected.complete else (
            f" (it is incomplete: its recording stopped after {epoch_span([fp.epoch for fp in expected.epochs])} "
            f"of {expected.planned_epochs} planned)"
        )
        warn(
            f"Reference '{self.reference}' has no epoch {epoch}{state}; epochs from {epoch} on are not "
            "verified. Record a longer reference to check them (mode='auto' extends it).",
            ReproWarning,
        )


def _is_number(value: Any) -> bool:
    """Whether a logs value can be stored as a float metric."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)
