"""Stand-ins for two Keras 3 TensorFlow-trainer bugs that make every `fit` fail under
`tf.distribute.MultiWorkerMirroredStrategy` (keras-team/keras#20585,
tensorflow/tensorflow#72388), so the multi-worker test exercises keras_repro, not them.

1. `_maybe_symbolic_build` all-reduces the first (x, y) batch as one structure:
   "ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type".
   Only its shapes and dtypes are used, so the shim takes this worker's local copy.
2. `reduce_per_replica` reduces every log with `strategy.reduce("MEAN", v, axis=0)`,
   which fails for the scalar loss: "Invalid reduction dimension 0 for input with 0
   dimensions". The shim uses axis=None for scalars.

Import it before `fit`; `install()` is idempotent and changes nothing but these two.
"""

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_ORIGINAL_BUILD = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
_ORIGINAL_REDUCE = tf_trainer.reduce_per_replica


def _local(value, strategy):
    """This worker's first local component of a distributed value."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    if self._distribute_strategy is not None and iterator is not None and data_batch is None:
        for _, _, batches in iterator:
            data_batch = tree.map_structure(lambda v: _local(v, self.distribute_strategy), next(batches))
            break
        iterator = None
    return _ORIGINAL_BUILD(self, iterator=iterator, data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
        def reduce(value):
            axis = 0 if _local(value, strategy).shape.rank else None
            return strategy.reduce("MEAN", value, axis=axis)

        return tree.map_structure(reduce, values)
    return _ORIGINAL_REDUCE(values, strategy, reduction)


def install():
    """Patches the two Keras functions (for this process only)."""
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = _reduce_per_replica
