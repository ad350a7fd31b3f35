"""`SeedCallback`: reseeds a fit, fingerprints every epoch, records or verifies."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import filelock
import keras
import numpy as np

from keras_repro import environment, store
from keras_repro.checksums import BatchChecksums, expected_lanes
from keras_repro.compare import Divergence, compare_fingerprints, replica_divergence
from keras_repro.errors import FingerprintMismatch, FingerprintMismatchWarning, ReferenceFileError, ReproWarning
from keras_repro.fingerprints import (
    Fingerprint,
    fingerprint,
    replica_devices,
    replica_fingerprints,
    replica_local_paths,
    seed_generators,
)
from keras_repro.log import FingerprintLog, load_fingerprints
from keras_repro.seeding import derive_seed, seed_everything, validate_seed, warn_if_hash_randomized
from keras_repro import _backend

logger = logging.getLogger(__name__)

MODES = ("auto", "record", "verify")
ON_MISMATCH = ("raise", "warn")


def reset_layer_rng(model: Any, seed: int, epoch: int) -> int:
    """Sets every layer SeedGenerator of `model` to a state derived from
    (seed, epoch, its place in the model); returns how many were reset."""
    generators = seed_generators(model)
    limit = _backend.seed_state_max()
    for index, (_, generator) in enumerate(generators):
        value = derive_seed(seed, "layer-rng", epoch, index) % (limit + 1)
        generator.state.assign(np.array([value, 0], dtype=np.dtype(generator.state.dtype)))
    return len(generators)


class SeedCallback(keras.callbacks.Callback):
    """Reseeds a fit, fingerprints every epoch, and records or verifies a reference.

    At the start of each fit it reseeds Python, NumPy and the backend from `seed`.
    Before the first step it fingerprints the model (weights, optimizer state);
    at the start of every epoch it reseeds again from (seed, epoch) and resets
    every layer `SeedGenerator` (Dropout, noise, augmentation) from (seed, epoch,
    layer), so masks depend on the epoch alone, not on history. At every epoch
    end it fingerprints the model, puts the digest in `logs` (so it lands in
    `History`) and records it or checks it against the reference.

    Epochs are numbered as Keras numbers them in callbacks: from 0.

    Args:
        seed: An int in [0, 2**32 - 1].
        reference: Path of the fingerprint file (`.h5`), or None to keep the
            fingerprints in memory only (`callback.log`).
        mode: "record" writes `reference` (replacing it atomically); "verify"
            compares with it (it must exist); "auto" verifies when the file
            exists, else records.
        on_mismatch: "raise" stops training with `FingerprintMismatch` at the end
            of the first epoch that differs (or before the first step when the
            initial state differs); "warn" warns once and goes on.
        reset_layer_rng: Reset layer SeedGenerators at every epoch start (default).
        log_key: The `logs` key that receives the digest, or None for none.
        every_n_batches: Also fingerprint the state after every N-th batch, so a
            verify names the first divergent batch, not just the epoch. A batch
            fingerprint is a 64-bit integer checksum of each variable computed on
            its device in one compiled call (`keras_repro.checksums`): no copy to
            the host, but still a pass over every weight, which on CPU costs about
            as much as a small model's step (see benchmarks/batch_fingerprint.py).
            The epoch fingerprint still hashes every byte.
        check_replicas: Where devices each hold a copy of the variables
            (`tf.distribute` mirrored variables, replicated JAX arrays), check before
            the first step and at every epoch end that all copies are equal, and
            report the first replica and variable that drifted (as `on_mismatch` says),
            in record mode too. Costs a host read and hash per copy.

    Attributes:
        log: The `FingerprintLog` of the last fit.
        divergence: The first `Divergence` found by the last verify, or None.
        resolved_mode: "record" or "verify", once a fit has started.

    Example:

    >>> cb = SeedCallback(seed=7, reference="run.h5")          # doctest: +SKIP
    >>> model.fit(x, y, epochs=3, callbacks=[cb])              # doctest: +SKIP
    >>> cb.resolved_mode                                       # doctest: +SKIP
    'record'
    """

    def __init__(
        self,
        seed: int,
        reference: str | os.PathLike | None = None,
        mode: str = "auto",
        on_mismatch: str = "raise",
        reset_layer_rng: bool = True,
        log_key: str | None = "fingerprint",
        every_n_batches: int | None = None,
        check_replicas: bool = True,
    ) -> None:
        super().__init__()
        self.seed = validate_seed(seed)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        if on_mismatch not in ON_MISMATCH:
            raise ValueError(f"`on_mismatch` must be one of {ON_MISMATCH}. Received: on_mismatch={on_mismatch!r}")
        if mode == "verify" and reference is None:
            raise ValueError("mode='verify' needs a `reference` file to compare with. Received: reference=None")
        self.reference = None if reference is None else os.fspath(reference)
        self.mode = mode
        self.on_mismatch = on_mismatch
        self.reset_layer_rng = bool(reset_layer_rng)
        self.log_key = log_key
        if every_n_batches is not None and (
            isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1
        ):
            raise ValueError(f"`every_n_batches` must be a positive int or None. Received: every_n_batches={every_n_batches!r}")
        self.every_n_batches = every_n_batches
        # Keras runs batch hooks in a thread, overlapping the next steps, only for callbacks
        # that say they are safe; a batch fingerprint must read the state of its own batch.
        self.async_safe = every_n_batches is None
        self.check_replicas = bool(check_replicas)
        self._reset_state()

    def _reset_state(self) -> None:
        """Forgets everything about a previous fit, so the instance can be reused."""
        self.resolved_mode: str | None = None
        self.divergence: Divergence | None = None
        self._expected: FingerprintLog | None = None
        self._initial: Fingerprint | None = None
        self._epochs: list[Fingerprint] = []
        self._batches: list[Fingerprint] = []
        self._batch_lanes: list[tuple[int, int, np.ndarray]] = []  # not yet in _batches
        self._checksums: BatchChecksums | None = None
        self._expected_batches: dict[tuple[int, int], Fingerprint] = {}
        self._expected_lanes: dict[tuple[int, int], np.ndarray] = {}
        self._sha256_batches = False
        self._epoch = 0
        self._first_epoch: int | None = None
        self._environment: dict[str, str] = {}
        self._warned_missing = False
        self._chief = True
        self._release_lock()

    @property
    def log(self) -> FingerprintLog:
        """The fingerprints of the current (or last) fit."""
        return FingerprintLog(
            self._initial, tuple(self._epochs), dict(self._environment), self.seed, self._notes(), self.reference,
            batches=tuple(self._batch_fingerprints()),
        )

    def _notes(self) -> dict[str, str]:
        """Notes from the model (e.g. nondeterministic inputs), recorded with the run."""
        notes = getattr(self.model, "_repro_notes", None) if self.model is not None else None
        return dict(notes or {})

    # Keras hooks -----------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset_state()
        warn_if_hash_randomized()
        self._chief = _backend.is_chief(self.model)
        if self.mode == "auto" and not self._chief:
            # Only the chief reads or writes the reference in "auto" mode, so workers of
            # one run cannot resolve differently while the chief is writing it.
            self.resolved_mode = "record"
        elif self.mode == "auto":
            self.resolved_mode = "verify" if self.reference and os.path.exists(self.reference) else "record"
        else:
            self.resolved_mode = self.mode
        if self.reference and self._chief:
            self._lock = _acquire_lock(self.reference)
            if self.resolved_mode == "record":
                store.remove_stale_temporaries(self.reference)
        if self.resolved_mode == "verify":
            self._expected = load_fingerprints(self.reference)
            self._expected_batches = {(fp.epoch, fp.batch): fp for fp in self._expected.batches}
            self._expected_lanes = {key: expected_lanes(fp) for key, fp in self._expected_batches.items()}
            # A reference recorded before batch checksums holds SHA-256 batch fingerprints.
            self._sha256_batches = any(lanes is None for lanes in self._expected_lanes.values())
            self._release_lock()  # the reference is in memory; readers need no lock
        seed_everything(derive_seed(self.seed, "fit"))
        self._environment = environment.collect()
        logger.info("SeedCallback: %s mode, reference=%s", self.resolved_mode, self.reference)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        seed_everything(derive_seed(self.seed, "epoch", epoch))
        if self.reset_layer_rng:
            reset_layer_rng(self.model, self.seed, epoch)
        if self._first_epoch is None:
            self._first_epoch = epoch
            _build_optimizer_early(self.model)
            self._initial = self._fingerprint(epoch)
            self._check_replicas(epoch, "initial")
            self._check_initial(epoch)
            self._save()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.every_n_batches or (batch + 1) % self.every_n_batches:
            return
        key = (self._epoch, batch)
        if self._sha256_batches:
            _backend.sync_model_state(self.model)
            current = fingerprint(self.model).with_epoch(self._epoch, batch=batch)
            self._batches.append(current)
            if key in self._expected_batches:
                self._report(compare_fingerprints(self._expected_batches[key], current, self._epoch, "batch"))
            return
        if self._checksums is None:  # the variables are all there after the first step
            self._checksums = BatchChecksums(self.model)
        lanes = self._checksums.compute()
        self._batch_lanes.append((self._epoch, batch, lanes))
        expected = self._expected_lanes.get(key)  # never None here: see _sha256_batches
        if expected is not None and not np.array_equal(expected, lanes):
            current = self._checksums.fingerprint(lanes, self._epoch, batch)
            self._report(compare_fingerprints(self._expected_batches[key], current, self._epoch, "batch"))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        current = self._fingerprint(epoch, summaries=True).with_epoch(epoch, metrics)
        self._epochs.append(current)
        if logs is not None and self.log_key:
            logs[self.log_key] = current.digest
        self._check_replicas(epoch, "epoch")
        if self.resolved_mode == "verify":
            expected = self._expected.epoch(epoch)
            if expected is None:
                self._warn_missing(epoch)
            else:
                self._report(compare_fingerprints(expected, current, epoch))
        self._save()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._release_lock()
        if self.resolved_mode == "verify" and self.divergence is None:
            logger.info("SeedCallback: %d epochs verified against %s", len(self._epochs), self.reference)

    # helpers -----------------------------------------------------------------------

    def _release_lock(self) -> None:
        """Releases the reference's lock, if this callback holds it."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
        self._lock = None

    def _batch_fingerprints(self) -> list[Fingerprint]:
        """The batch fingerprints so far (made from their checksums on first use)."""
        if self._batch_lanes:
            self._batches.extend(self._checksums.fingerprint(v, e, b) for e, b, v in self._batch_lanes)
            self._batch_lanes.clear()
        return self._batches

    def _fingerprint(self, epoch: int, summaries: bool = True) -> Fingerprint:
        """The model's fingerprint, with the data-order records a DeterministicModel adds."""
        result = fingerprint(self.model, summaries=summaries).with_epoch(epoch)
        records = getattr(self.model, "_repro_data_records", None)
        if callable(records):
            result = result.with_records(records(epoch))
        return result

    def _check_replicas(self, epoch: int, stage: str) -> None:
        """Reports the first variable whose copy on some replica drifted from replica 0's."""
        if not self.check_replicas:
            return
        devices = replica_devices(self.model)
        if len(devices) > 1:
            found = replica_divergence(
                replica_fingerprints(self.model), epoch, stage, replica_local_paths(self.model), devices
            )
            self._report(found)

    def _check_initial(self, epoch: int) -> None:
        """Compares the state before the first step with the reference."""
        if self.resolved_mode != "verify":
            return
        if epoch == 0:
            expected, ignore = self._expected.initial, ()
        else:
            # A resumed fit starts from the state at the end of epoch k-1, except for
            # that epoch's data order and the layer RNG state, which was just reset.
            expected, ignore = self._expected.epoch(epoch - 1), ("data", "rng")
        if expected is None:
            logger.info("Reference has no state before epoch %d; initial state not verified", epoch)
            return
        self._report(compare_fingerprints(expected, self._initial, epoch, "initial", ignore=ignore))

    def _report(self, divergence: Divergence | None) -> None:
        """Raises or warns about the first divergence."""
        if divergence is None or self.divergence is not None:
            return
        self.divergence = divergence
        error = FingerprintMismatch(divergence, self.reference)
        if self.on_mismatch == "raise":
            raise error
        warnings.warn(str(error), FingerprintMismatchWarning, stacklevel=2)

    def _warn_missing(self, epoch: int) -> None:
        """Warns once that the reference is shorter than this run."""
        if not self._warned_missing:
            self._warned_missing = True
            warnings.warn(
                f"Reference '{self.reference}' has no epoch {epoch}; epochs from {epoch} on are "
                "not verified. Record a longer reference to check them.",
                ReproWarning,
                stacklevel=2,
            )

    def _save(self) -> None:
        """Rewrites the reference atomically (record mode, chief process only)."""
        if self.resolved_mode == "record" and self.reference and self._chief:
            self.log.save(self.reference)


def lock_path(reference: str) -> str:
    """The lock file that guards a reference: `.NAME.lock` beside it."""
    folder, name = os.path.split(os.path.abspath(reference))
    return os.path.join(folder, f".{name}.lock")


def _acquire_lock(reference: str) -> filelock.FileLock:
    """Takes the reference's lock without waiting; a clear error if another process holds it."""
    lock = filelock.FileLock(lock_path(reference))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise ReferenceFileError(
            reference,
            f"is being recorded by another process (it holds '{lock.lock_file}'). Wait for that "
            "fit to finish, or record to another file",
        ) from None
    except OSError as error:
        raise ReferenceFileError(
            reference, f"cannot be locked ({error.strerror or error}); check that the folder exists and is writable"
        ) from None
    return lock


def _build_optimizer_early(model: Any) -> None:
    """Builds the optimizer as its first step would, so the initial fingerprint covers it.

    The TensorFlow trainer defers the build to the first traced step; the variables it
    creates (zeros, the iteration counter, the learning rate) are the same either way.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or getattr(optimizer, "built", True):
        return
    if all(layer.built for layer in model._flatten_layers()) and model.trainable_variables:
        optimizer.build(model.trainable_variables)


def _is_number(value: Any) -> bool:
    """Whether a logs value can be stored as a float metric."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)
