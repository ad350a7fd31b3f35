"""`DeterministicModel`: a `keras.Model` whose fit is a pure function of its seed."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_repro import feeding
from keras_repro._backend import distribution_scope, input_hazards
from keras_repro.callbacks import SeedCallback
from keras_repro.errors import NondeterministicInputWarning, ReproError
from keras_repro.fingerprints import VariableDigest
from keras_repro.ordering import split_indices
from keras_repro.seeding import derive_seed, seed_everything, validate_seed

logger = logging.getLogger(__name__)

_RESTORING_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar("keras_repro_restoring_seed", default=None)


@contextlib.contextmanager
def _restoring(seed: int | None) -> Iterator[None]:
    """While a saved model is rebuilt, constructors without a seed take this one."""
    token = _RESTORING_SEED.set(seed)
    try:
        yield
    finally:
        _RESTORING_SEED.reset(token)


def _functional_arguments(args: tuple, kwargs: dict) -> bool:
    """Whether a constructor call is the functional form `(inputs, outputs)`."""
    return len(args) == 2 or (len(args) == 1 and "outputs" in kwargs) or "inputs" in kwargs


def reinitialize_weights(model: keras.Model, seed: int) -> int:
    """Re-draws every top-level layer's weights from its own initializers, seeded
    from (seed, layer position) alone; returns how many layers were re-drawn.

    Each layer is rebuilt from its config (`from_config` + `build_from_config`)
    after seeding, and its fresh weights are copied into the model, so initial
    weights no longer depend on what was drawn before the layers were built.
    Initializers given an explicit seed keep it.
    """
    count = 0
    for index, layer in enumerate(model.layers):
        if not layer.weights:
            continue
        try:
            build_config = layer.get_build_config()
            seed_everything(derive_seed(seed, "init", index))
            twin = layer.__class__.from_config(layer.get_config())
            if build_config:
                twin.build_from_config(build_config)
        except Exception as error:  # noqa: BLE001 - any layer may fail; say which, and what to do
            raise ReproError(
                f"DeterministicModel cannot re-initialize layer '{layer.name}' "
                f"({type(layer).__name__}) from its config: {error}. Give the layer a "
                "get_config() that rebuilds it, or subclass DeterministicModel and create "
                "the layer in __init__ after super().__init__(seed=...)."
            ) from error
        if [tuple(w.shape) for w in twin.weights] != [tuple(w.shape) for w in layer.weights]:
            raise ReproError(
                f"DeterministicModel cannot re-initialize layer '{layer.name}': rebuilt from its "
                "config it has other weights. Create it in a DeterministicModel subclass instead."
            )
        for target, source in zip(layer.weights, twin.weights):
            target.assign(source)
        count += 1
    return count


class DeterministicModel(keras.Model):
    """A `keras.Model` whose training is a pure function of `seed`.

    * Seeds every RNG before a subclass creates its layers; in the functional form
      (`DeterministicModel(inputs, outputs, seed=7)`), where the layers exist
      already, re-draws their weights from their initializers seeded by (seed,
      layer), so `seed=7` means the same initial weights in any process.
    * Owns `shuffle` and `validation_split` for array inputs: the order of each
      epoch and the split are pure functions of (seed, epoch), so
      `fit(..., initial_epoch=k)` replays exactly the order epoch k had.
    * Adds a `SeedCallback(seed)` to `fit` when none is given: layer RNG states
      (Dropout, noise, augmentation) are reset from (seed, epoch) at each epoch
      start, and every epoch is fingerprinted, including the data order.
    * Saves its seed: `keras.models.load_model` restores it without custom_objects.

    Args:
        *args: As `keras.Model` (e.g. `inputs, outputs`).
        seed: An int in [0, 2**32 - 1].
        **kwargs: As `keras.Model`.

    Example:

    >>> class Net(DeterministicModel):                    # doctest: +SKIP
    ...     def __init__(self, **kwargs):
    ...         super().__init__(seed=7, **kwargs)
    ...         self.hidden = keras.layers.Dense(32, activation="relu")
    ...         self.out = keras.layers.Dense(10)
    ...     def call(self, x):
    ...         return self.out(self.hidden(x))
    >>> inputs = keras.Input((8,))                        # doctest: +SKIP
    >>> model = DeterministicModel(inputs, keras.layers.Dense(2)(inputs), seed=7)  # doctest: +SKIP
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> DeterministicModel:
        if cls is DeterministicModel and _functional_arguments(args, kwargs):
            return super().__new__(DeterministicFunctional)
        return super().__new__(cls)

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        if seed is None:
            seed = _RESTORING_SEED.get()
        if seed is None:
            raise ValueError(
                f"{type(self).__name__} needs a seed: `super().__init__(seed=7)` in a subclass, or "
                "`DeterministicModel(inputs, outputs, seed=7)`. Received: seed=None"
            )
        seed = validate_seed(seed)
        seed_everything(derive_seed(seed, "build"))
        super().__init__(*args, **kwargs)
        self._repro_seed = seed
        self._repro_feed: feeding.EpochFeed | None = None
        self._repro_notes: dict[str, str] = {}
        self._repro_initialized = False
        self._repro_maybe_reinitialize()

    @property
    def seed(self) -> int:
        """The seed this model's training is a function of."""
        return self._repro_seed

    def _repro_maybe_reinitialize(self) -> None:
        """Re-draws prebuilt layers' weights from the seed (functional and Sequential forms)."""
        if self._repro_initialized or not self._repro_owns_prebuilt_layers() or not self.built:
            return
        count = reinitialize_weights(self, self._repro_seed)
        self._repro_initialized = True
        logger.debug("Re-initialized %d layers of %s from seed %d", count, self.name, self._repro_seed)

    def _repro_owns_prebuilt_layers(self) -> bool:
        """Whether layers were created before the model (functional and Sequential forms)."""
        return False

    def _repro_data_records(self, epoch: int) -> list[VariableDigest]:
        """Fingerprint records of the data order of `epoch` (used by SeedCallback)."""
        return self._repro_feed.records(epoch) if self._repro_feed is not None else []

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["seed"] = self._repro_seed
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> DeterministicModel:
        config = dict(config)
        seed = config.pop("seed", None)
        with _restoring(seed):
            return super().from_config(config, custom_objects=custom_objects)

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: list | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool | str = True,
        class_weight: dict | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_batch_size: int | None = None,
        validation_freq: int = 1,
        validation_split_mode: str = "last",
    ) -> keras.callbacks.History:
        """Trains like `keras.Model.fit`, with the data order a pure function of (seed, epoch).

        Array inputs (NumPy arrays, tensors, and lists/dicts of them) are reordered
        by the model; datasets, generators and `PyDataset`s are passed on unchanged,
        with a warning if they are known to be nondeterministic.

        Args:
            validation_split_mode: "last" (default, as Keras: the last fraction of the
                rows, before shuffling), "shuffled" (a seeded random subset) or
                "stratified" (a seeded random subset of each class of `y`).
            Others: as `keras.Model.fit`.

        Returns:
            The `History`.
        """
        callbacks = list(callbacks or [])
        if not any(isinstance(c, SeedCallback) for c in callbacks):
            callbacks.append(SeedCallback(self._repro_seed))
        common = dict(
            epochs=epochs, verbose=verbose, class_weight=class_weight, initial_epoch=initial_epoch,
            validation_steps=validation_steps, validation_batch_size=validation_batch_size,
            validation_freq=validation_freq,
        )
        if not _is_arrays(x):
            self._repro_feed = None
            self._repro_note_input_hazards(x)
            return super().fit(
                x, y, batch_size=batch_size, callbacks=callbacks, validation_split=validation_split,
                validation_data=validation_data, shuffle=shuffle, sample_weight=sample_weight,
                steps_per_epoch=steps_per_epoch, **common,
            )
        if steps_per_epoch is not None:
            raise ValueError(
                "DeterministicModel.fit owns the order of array inputs epoch by epoch and does not "
                "support `steps_per_epoch` with them: drop it (one epoch = one pass over the rows), "
                f"or pass a tf.data.Dataset. Received: steps_per_epoch={steps_per_epoch}"
            )
        data = tuple(part for part in (x, y, sample_weight) if part is not None)
        if sample_weight is not None and y is None:
            raise ValueError("`sample_weight` needs `y`. Received: y=None")
        data = keras.tree.map_structure(np.asarray, data)
        rows = _row_count(data)
        if validation_data is None and validation_split:
            train_rows, validation_rows = split_indices(
                rows, validation_split, validation_split_mode, self._repro_seed, None if y is None else data[1]
            )
            validation_data = keras.tree.map_structure(lambda a: np.take(a, validation_rows, axis=0), data)
        else:
            split_indices(rows, 0.0, validation_split_mode)  # validates the mode
            train_rows, validation_rows = np.arange(rows, dtype=np.int64), np.arange(0, dtype=np.int64)
        if len(train_rows) == 0:
            raise ValueError(f"No training rows left after validation_split={validation_split} of {rows} rows")
        self._repro_feed = feeding.EpochFeed(train_rows, validation_rows, self._repro_seed, shuffle, batch_size or 32)
        self._repro_build(data[0], train_rows)
        source, setter = feeding.ordered_input(data, self._repro_feed)
        return super().fit(
            source, callbacks=[setter] + callbacks, validation_data=validation_data, shuffle=False, **common
        )

    def _repro_build(self, x: Any, train_rows: np.ndarray) -> None:
        """Builds an unbuilt model on a sample batch, then re-draws prebuilt layers."""
        if not self.built:
            sample = keras.tree.map_structure(lambda a: np.take(a, train_rows[:1], axis=0), x)
            with distribution_scope(self):  # variables must be mirrored, as Keras would build them
                self(sample, training=False)
        self._repro_maybe_reinitialize()

    def _repro_note_input_hazards(self, x: Any) -> None:
        """Warns (once per input) about known nondeterminism in inputs it cannot reorder."""
        hazards = input_hazards(x)
        self._repro_notes = {"input_hazards": "; ".join(hazards)} if hazards else {}
        if hazards:
            warnings.warn(
                "DeterministicModel cannot reorder this input, and it is nondeterministic: "
                + "; ".join(hazards)
                + ". Fix the pipeline as suggested, or pass arrays so the model owns the order.",
                NondeterministicInputWarning,
                stacklevel=3,
            )


def _is_arrays(x: Any) -> bool:
    """Whether `x` is an array or a list/tuple/dict of arrays (not a dataset or generator)."""
    if x is None:
        return False
    leaves = keras.tree.flatten(x) if isinstance(x, (list, tuple, dict)) else [x]
    return bool(leaves) and all(hasattr(leaf, "shape") and hasattr(leaf, "__array__") for leaf in leaves)


def _row_count(data: tuple) -> int:
    """The common number of rows of every array; a clear error if they disagree."""
    counts = {int(leaf.shape[0]) for leaf in keras.tree.flatten(data)}
    if len(counts) != 1:
        raise ValueError(f"All arrays passed to fit must have the same number of rows. Received row counts: {sorted(counts)}")
    return counts.pop()


@keras.saving.register_keras_serializable(package="keras_repro", name="DeterministicFunctional")
class DeterministicFunctional(DeterministicModel, keras.src.models.functional.Functional):
    """The functional form of `DeterministicModel`: `DeterministicModel(inputs, outputs, seed=...)`."""

    def _repro_owns_prebuilt_layers(self) -> bool:
        return True


@keras.saving.register_keras_serializable(package="keras_repro", name="DeterministicSequential")
class DeterministicSequential(DeterministicModel, keras.Sequential):
    """`keras.Sequential` with the guarantees of `DeterministicModel`.

    Example:

    >>> model = DeterministicSequential(                          # doctest: +SKIP
    ...     [keras.Input((8,)), keras.layers.Dense(10)], seed=7)
    """

    def __init__(self, layers: list | None = None, trainable: bool = True, name: str | None = None, seed: int | None = None) -> None:
        super().__init__(layers, trainable=trainable, name=name, seed=seed)

    def _repro_owns_prebuilt_layers(self) -> bool:
        return True

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        if getattr(self, "_repro_seed", None) is not None:
            self._repro_maybe_reinitialize()


DeterministicModel = keras.saving.register_keras_serializable(package="keras_repro", name="DeterministicModel")(DeterministicModel)
