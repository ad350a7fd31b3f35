"""An opt-in fix for Keras 3's `fit` under `tf.distribute.MultiWorkerMirroredStrategy`.

Up to Keras 3.15 (the newest version tested), every `fit` of a Keras model under a
`MultiWorkerMirroredStrategy` with more than one worker fails in Keras' TensorFlow trainer
(keras-team/keras#20585, tensorflow/tensorflow#72388), for two reasons:

1. `TensorFlowTrainer._maybe_symbolic_build` all-reduces the first (x, y) batch across the
   workers as one structure: "ValueError: Attempt to convert a value (PerReplica:{...})
   with an unsupported type". Only the batch's shapes and dtypes are used to build the
   model, so the fix takes this worker's local copy instead.
2. `reduce_per_replica` reduces every log with `strategy.reduce("MEAN", v, axis=0)`, which
   fails for the scalar loss: "Invalid reduction dimension 0 for input with 0 dimensions".
   The fix reduces scalars with axis=None.

`fix_multi_worker_fit()` replaces those two Keras functions in this process. The
replacements change nothing unless a strategy runs in multi-worker mode (more than one
worker): `MirroredStrategy`, single-worker runs and fits without a strategy take Keras' own
code. The fix is version-gated: on a Keras newer than `NEWEST_KERAS_NEEDING_FIX` it patches
nothing and warns, since it was not tested there (`force=True` applies it anyway).
tests/test_distributed.py checks that Keras still fails without it, and says when to raise
the bound or retire this module.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import keras

from keras_repro import _backend
from keras_repro.errors import ReproWarning, warn

logger = logging.getLogger(__name__)

NEWEST_KERAS_NEEDING_FIX = (3, 15)
"""The newest Keras (major, minor) the fix was tested with and found needed, every patch
release included: a newer Keras gets no fix unless forced."""

_MARK = "_keras_repro_multi_worker_fix"
"""The attribute that marks the functions the fix put into Keras."""


def _keras_version() -> tuple[int, int] | None:
    """Keras' (major, minor), or None when its version string cannot be read."""
    found = re.match(r"(\d+)\.(\d+)", str(keras.__version__))
    return (int(found.group(1)), int(found.group(2))) if found else None


def fix_multi_worker_fit(force: bool = False) -> bool:
    """Lets `fit` run under `tf.distribute.MultiWorkerMirroredStrategy` with Keras <= 3.15.

    Patches two functions of Keras' TensorFlow trainer in this process only
    (keras-team/keras#20585, tensorflow/tensorflow#72388; see this module's docstring).
    Call it in every worker before `fit`; calling it again changes nothing. The patched
    code runs only in multi-worker mode, so single-process training is unaffected.

    Args:
        force: Apply the fix on a Keras newer than `NEWEST_KERAS_NEEDING_FIX` too, where it
            was not tested (by default it is not applied there, with a warning).

    Returns:
        Whether the fix is in place in this process: False only on an untested (newer) Keras
        without `force`.

    Raises:
        RuntimeError: Keras does not run on the TensorFlow backend (only its trainer runs
            under `tf.distribute` strategies), or Keras no longer has the functions the fix
            replaces (with `force` on a Keras the fix does not fit).

    Example:

    >>> import keras_repro as kr                                # doctest: +SKIP
    >>> kr.fix_multi_worker_fit()                               # doctest: +SKIP
    True
    >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()  # doctest: +SKIP
    """
    if not _backend.trains_under_tf_distribute():
        raise RuntimeError(
            f"fix_multi_worker_fit patches Keras' TensorFlow trainer, but Keras runs on the "
            f"'{_backend.name()}' backend: tf.distribute strategies train only with "
            "KERAS_BACKEND=tensorflow."
        )
    from keras.src.backend.tensorflow import trainer

    if getattr(getattr(trainer, "reduce_per_replica", None), _MARK, False):
        return True  # applied before in this process
    version = _keras_version()
    if not force and (version is None or version > NEWEST_KERAS_NEEDING_FIX):
        newest = ".".join(map(str, NEWEST_KERAS_NEEDING_FIX))
        warn(
            f"fix_multi_worker_fit did not patch Keras {keras.__version__}: the fix was tested "
            f"up to Keras {newest}.x only. If fit under MultiWorkerMirroredStrategy still fails "
            "(keras-team/keras#20585), call fix_multi_worker_fit(force=True).",
            ReproWarning,
        )
        return False
    _install(trainer)
    logger.info("Patched Keras %s's TensorFlow trainer for MultiWorkerMirroredStrategy", keras.__version__)
    return True


def _install(trainer: Any) -> None:
    """Replaces the two functions of Keras' TensorFlow trainer module, after checking that
    this Keras still has them."""
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker")
    missing = [name for name in needed if not hasattr(trainer, name)]
    if not hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        missing.append("TensorFlowTrainer._maybe_symbolic_build")
    if missing:
        raise RuntimeError(
            f"fix_multi_worker_fit does not fit Keras {keras.__version__}: its TensorFlow trainer "
            f"has no {', '.join(missing)}. Nothing was patched."
        )
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    multi_worker = trainer._collective_all_reduce_multi_worker

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = self._distribute_strategy
        if strategy is not None and iterator is not None and data_batch is None and multi_worker(strategy):
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(lambda value: _local(value, strategy), next(batches))
                break
            iterator = None
        return build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):
            def mean(value: Any) -> Any:
                axis = 0 if _local(value, strategy).shape.rank else None
                return strategy.reduce("MEAN", value, axis=axis)

            return keras.tree.map_structure(mean, values)
        return reduce(values, strategy, reduction)

    for replacement in (_maybe_symbolic_build, reduce_per_replica):
        setattr(replacement, _MARK, True)
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica


def _local(value: Any, strategy: Any) -> Any:
    """This worker's first local copy of a distributed value (anything else as it is)."""
    import tensorflow as tf

    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value
