"""Stock Keras callbacks that carry state from epoch to epoch, and the warning a resumed fit
gives when that state starts afresh.

Keras resets `ReduceLROnPlateau`'s and `EarlyStopping`'s counters and best value at every
`fit` (`on_train_begin`) and saves them nowhere: not in a `.keras` file, and not with
`BackupAndRestore`, whose backup holds the weights, the optimizer and the epoch only. A fit
that resumes training (`initial_epoch=k`, a fit restored by `BackupAndRestore`, or a second
`fit` of the same model) therefore starts them as at epoch 0, and from its first epoch on it
may differ from the uninterrupted run. keras_repro restores none of it (see below why); at
the first epoch of such a fit it warns once, naming each callback, what starts afresh, and
what to do. A callback whose state cannot matter is not named: none at epoch 0;
`ReduceLROnPlateau` once the learning rate is at its `min_lr`; `EarlyStopping` while the
resumed epoch is within its `start_from_epoch` warm-up; state already set again by the user
(a callback listed after it that restores saved values in `on_train_begin`).

Why not restore it: Keras offers no place that every way of resuming shares (weights-only
checkpoints and `BackupAndRestore` write no extra state), callbacks run in list order, so a
state saved at epoch end by `ModelCheckpoint` may miss the update of a callback listed after
it and silently be one epoch stale, and `EarlyStopping(restore_best_weights=True)` keeps a
whole copy of the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.errors import ReproWarning, warn

logger = logging.getLogger(__name__)


def _learning_rate_at_floor(callback: Any, model: Any) -> bool:
    """Whether every learning rate `ReduceLROnPlateau` would lower is already at its `min_lr`."""
    optimizer = getattr(model, "optimizer", None)
    optimizers = getattr(optimizer, "optimizers", None) or ([optimizer] if optimizer is not None else [])
    try:
        rates = [float(_backend.to_numpy(o.learning_rate)) for o in optimizers]
    except (AttributeError, TypeError, ValueError):  # a schedule: ReduceLROnPlateau cannot lower it
        return False
    return bool(rates) and all(rate <= np.float32(callback.min_lr) for rate in rates)


def lost_state(callback: Any, epoch: int, keras_epoch: int, model: Any) -> str | None:
    """What of `callback`'s state starts afresh in a fit whose first epoch is `epoch` (Keras
    numbers it `keras_epoch`: 0 in a continued fit), and what it changes; None when nothing
    that could matter was lost.

    Example:

    >>> lost_state(keras.callbacks.ReduceLROnPlateau(), 2, 2, model)   # doctest: +SKIP
    'ReduceLROnPlateau (wait, cooldown_counter and best: it may lower the learning rate at other epochs)'
    """
    name = type(callback).__name__
    if epoch <= 0:
        return None
    if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        fresh = callback.best is None and callback.wait == 0 and callback.cooldown_counter == 0
        if fresh and not _learning_rate_at_floor(callback, model):
            return f"{name} (wait, cooldown_counter and best: it may lower the learning rate at other epochs)"
    elif isinstance(callback, keras.callbacks.EarlyStopping):
        fresh = callback.best is None and callback.wait == 0 and callback.best_weights is None
        warming_up = keras_epoch == epoch and epoch <= callback.start_from_epoch
        if fresh and not warming_up:
            kept = ", best_weights" if callback.restore_best_weights else ""
            best = (" and restore the best weights of this fit's epochs only" if callback.restore_best_weights else "")
            return f"{name} (wait, best, best_epoch{kept}: it may stop at another epoch{best})"
    elif isinstance(callback, keras.callbacks.ModelCheckpoint):
        lost = []
        if callback.save_best_only and callback.best is None:
            lost.append("best: this fit's first epoch counts as an improvement and may replace a better checkpoint; "
                        "pass initial_value_threshold=<the best so far>")
        if not isinstance(callback.save_freq, str) and getattr(callback, "_last_batch_seen", None) is None:
            lost.append("the batch count: it may save at other batches")
        if lost:
            return f"{name} ({'; '.join(lost)})"
    elif isinstance(callback, keras.callbacks.LearningRateScheduler) and keras_epoch != epoch:
        return (f"{name} (the epoch its schedule is called with, which Keras restarts at {keras_epoch}: "
                f"fit with initial_epoch={epoch} to continue the schedule)")
    return None


def warn_lost_state(callbacks: Iterable[Any], epoch: int, keras_epoch: int, model: Any) -> list[str]:
    """Warns once when the callbacks of a fit resuming training at `epoch` (Keras' `keras_epoch`)
    start with state an uninterrupted run would not have; returns what was named.

    Example:

    >>> warn_lost_state(callbacks, 2, 2, model)                                # doctest: +SKIP
    ['ReduceLROnPlateau (wait, cooldown_counter and best: ...)']
    """
    lost = [found for callback in callbacks if (found := lost_state(callback, epoch, keras_epoch, model))]
    if lost:
        how = "resumes training" if keras_epoch == epoch else "continues the training of this model"
        warn(
            f"This fit {how} at epoch {epoch}, but Keras restores no callback's state (it resets it at every "
            f"fit and saves it nowhere, BackupAndRestore included), so these start afresh: {'; '.join(lost)}. "
            f"From epoch {epoch} on this fit may differ from an uninterrupted run (a verify against its "
            "reference says where). To resume exactly, set these attributes again from values saved with your "
            "checkpoint, in on_train_begin of a callback listed after them, or train without interruption.",
            ReproWarning,
        )
        logger.info("Callback state not restored at epoch %d: %s", epoch, lost)
    return lost
