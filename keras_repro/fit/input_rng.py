"""Random state outside the model: the Keras SeedGenerators a `tf.data` input draws from.

keras-io's image classification example maps `RandomFlip` and `RandomRotation` over its
training `tf.data` pipeline. Those layers are created before any model, usually before
anything is seeded, so each draws its SeedGenerator's seed from an unseeded Python `random`
(Keras' `make_default_seed`): every process augments differently, and nothing in the model
knows. (On JAX and PyTorch, Keras gives each such layer a TensorFlow SeedGenerator of its
own when the map is traced, seeded the same way.)

`DeterministicModel.fit` finds those generators in the pipeline's graph
(`keras_repro._backend.tf_data`) and sets each, as it sets the model's own, from
(seed, epoch, its position in the pipeline): at the start of the fit, before Keras reads a
batch, and at the start of every epoch, when Keras makes the epoch's iterator. So the draws
of epoch k depend on the seed and k alone: two runs repeat, and a resumed fit draws what the
straight run drew. Two conditions, both checked:

* The pipeline's functions with state must run in order. A parallel map
  (`num_parallel_calls`) races on the state unless TensorFlow's op determinism is on; the
  model turns it on (with its deterministic kernels, the default), and it then runs such
  functions one at a time. Without it the fit warns (`_backend.input_hazards`).
* The epoch's iterator must start after the epoch's reset. Keras makes a new iterator every
  epoch unless `steps_per_epoch` is given; then one iterator runs on across epochs, with
  elements read ahead, and the state is set once, at the start of the fit only (a straight
  run still repeats).

A plain `keras.Model` with a `SeedCallback` gets none of this: a callback never sees the
input. There, and for random layers called in a `PyDataset` or a generator, the one line
that makes them repeat is `kr.seed_everything(seed)` before the pipeline is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from keras_repro._backend import tf_data
from keras_repro.seeding import seed_for

logger = logging.getLogger(__name__)


class InputRng:
    """The SeedGenerator states of a fit's `tf.data` inputs, and when to set them.

    Args:
        states: The states (`tf.Variable`s), in pipeline order.
        each_epoch: Set them at every epoch start (Keras makes a new iterator each epoch),
            else at the start of the fit only.

    Example:

    >>> rng = InputRng.of([train_ds], each_epoch=True)   # doctest: +SKIP
    >>> rng.epoch_begin(seed=7, epoch=0)                 # doctest: +SKIP
    """

    def __init__(self, states: Sequence[Any], each_epoch: bool) -> None:
        self.states = tuple(states)
        self.each_epoch = bool(each_epoch)
        self._started = False

    @classmethod
    def of(cls, inputs: Sequence[Any], each_epoch: bool) -> InputRng:
        """The SeedGenerator states of every `tf.data` dataset among `inputs` (others have none
        keras_repro can find), each once."""
        states: list[Any] = []
        for data in inputs:
            if tf_data.is_dataset(data):
                states += [s for s in tf_data.seed_generator_states(data) if all(s is not t for t in states)]
        return cls(states, each_epoch)

    def __bool__(self) -> bool:
        return bool(self.states)

    def epoch_begin(self, seed: int, epoch: int) -> None:
        """Sets every state from (seed, epoch, position): at the fit's first call, and at
        later ones when `each_epoch`."""
        if self._started and not self.each_epoch:
            return
        self._started = True
        for index, state in enumerate(self.states):
            tf_data.set_state(state, seed_for(seed, "input-rng", epoch, index) % 2**31)
        if self.states:
            logger.debug("Set %d tf.data SeedGenerator states for epoch %d", len(self.states), epoch)

    def note(self) -> dict[str, str]:
        """The note recorded with the run: which states are set, and when."""
        if not self.states:
            return {}
        names = ", ".join(tf_data.state_name(state) for state in self.states)
        when = "every epoch start" if self.each_epoch else "the fit's start (steps_per_epoch: one iterator runs on)"
        return {"input_rng": f"tf.data SeedGenerators set from (seed, epoch) at {when}: {names}"}


def prepare(inputs: Sequence[Any], each_epoch: bool, in_order: bool) -> InputRng:
    """The `InputRng` of a fit's inputs; when `in_order` (the model wants deterministic
    kernels) and a function with state runs in parallel, turns TensorFlow's op determinism
    on so it runs in order (on TensorFlow the model has done so already). Not where the
    pipeline has a random op without a seed: TensorFlow would then refuse to iterate it
    ("When determinism is enabled, random ops must have a seed specified"); the fit warns
    about both instead.

    Example:

    >>> rng = prepare([train_ds, val_ds], each_epoch=True, in_order=True)   # doctest: +SKIP
    """
    datasets = [data for data in inputs if tf_data.is_dataset(data)]
    if in_order and any(tf_data.parallel_stateful(data) for data in datasets):
        if any(tf_data.unseeded_random_ops(data) for data in datasets):
            logger.info("Not turning TF op determinism on: it refuses the pipeline's unseeded random ops")
        else:
            tf_data.run_in_order()
    return InputRng.of(inputs, each_epoch)
