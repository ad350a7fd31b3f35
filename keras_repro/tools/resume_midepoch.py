"""The mid-epoch runs of `assert_resumable(..., at=(epoch, batch))`.

The run to compare with the straight one is fit with `keras.callbacks.BackupAndRestore(folder,
save_freq=1)` (a backup after every batch) and stopped by an exception raised after batch
`batch` of epoch `epoch` (zero-based), as a killed job stops; then a new model is built and fit
again with the same folder, in this process or a fresh one, which resumes at the next batch
(`keras_repro.fit.midepoch`). The restarted fit's `SeedCallback` records from the interrupted
epoch on (with the checksums and batch fingerprints of its first batches, kept in the backup);
its epochs, from the interrupted one, are compared with the straight run's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import keras

logger = logging.getLogger(__name__)

NOTE = "mid_epoch_resume"
"""The note a resumed fit records (`keras_repro.fit.midepoch.MidEpochResume.note`)."""


class Interrupted(RuntimeError):
    """Raised by `Interrupt` to stop the first part of a mid-epoch resumed run."""


class Interrupt(keras.callbacks.Callback):
    """Raises `Interrupted` after batch `batch` of epoch `epoch` (zero-based).

    Example:

    >>> model.fit(x, y, epochs=3, callbacks=[backup, Interrupt(1, 7)])  # doctest: +SKIP
    """

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.point = (epoch, batch)
        self.epoch = -1
        self.fired = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (self.epoch, batch) == self.point:
            self.fired = True
            raise Interrupted(f"assert_resumable: stopped after batch {batch} of epoch {self.epoch}")


def fit(model: Any, x: Any, y: Any, epochs: int, backup_dir: str, callbacks: list, seed_callback: Any,
        fit_kwargs: dict, stop: tuple[int, int] | None = None) -> bool:
    """Fits `model` with `BackupAndRestore(backup_dir, save_freq=1)` (and an `Interrupt` at
    `stop`); returns whether it was interrupted.

    Raises:
        ValueError: If `stop` is given and the fit ended without reaching it (the batch is past
            the epoch's last one).
    """
    backup = keras.callbacks.BackupAndRestore(backup_dir, save_freq=1)
    interrupt = Interrupt(*stop) if stop is not None else None
    callbacks = [*callbacks, backup, seed_callback, *([interrupt] if interrupt else [])]
    try:
        model.fit(x, y, epochs=epochs, callbacks=callbacks, **fit_kwargs)
    except Interrupted:
        logger.info("assert_resumable: interrupted at %s", stop)
        return True
    if stop is not None:
        raise ValueError(
            f"`at=(epoch, batch)` must name a batch the fit trains: epoch {stop[0]} ended before batch "
            f"{stop[1]} (zero-based). Received: at={stop!r}"
        )
    return False


def not_exact(notes: dict) -> str | None:
    """Why the restarted fit says it did not resume exactly (its `mid_epoch_resume` note), or None."""
    note = notes.get(NOTE) or ""
    return note.split(": not exact: ", 1)[1] if ": not exact: " in note else None


def restart(build_model: Callable[[], Any], make_inputs: Callable[[], tuple[Any, Any, dict]], payload: dict,
            callbacks: list, seed_callback: Callable[[Any], Any]) -> Any:
    """Builds a new model and fits it again with the backup folder of the interrupted fit;
    returns its SeedCallback's log, without the state before its first step (the state after a
    batch inside the epoch, which no fingerprint of the straight run holds: its epochs are compared)."""
    keras.backend.clear_session()
    model = build_model()
    callback = seed_callback(model)
    x, y, kwargs = make_inputs()
    fit(model, x, y, payload["epochs"], payload["backup"], callbacks, callback, kwargs)
    return dataclasses.replace(callback.log, initial=None)
