"""`DeterministicModel`: a `keras.Model` whose fit is a pure function of its seed."""

from __future__ import annotations

import functools
import logging
from typing import Any

import keras
import numpy as np
from keras.src.models.functional import Functional

from keras_repro._backend import distribution_scope, input_hazards
from keras_repro.callbacks import SeedCallback
from keras_repro.determinism import use_deterministic_kernels
from keras_repro.errors import NondeterministicInputWarning, ReproWarning, warn
from keras_repro.fingerprinting import configuration
from keras_repro.fit import feeding, input_rng
from keras_repro.fit.context import EpochClock, FitContext
from keras_repro.fit.initial_weights import keep_names, redraw_layer, reinitialize_weights  # noqa: F401 - reinitialize_weights: public here too
from keras_repro.fit.input_resume import InputPasses
from keras_repro.fit.midepoch import EpochIteratorHooks, MidEpochResume
from keras_repro.fit.model_forms import (
    cloned_as_keras_sequential,
    functional_arguments,
    model_being_cloned,
    rebase_functional,
    register_for_h5,
    restoring,
    restoring_arguments,
)
from keras_repro.fit.ordering import SPLIT_MODES, split_indices
from keras_repro.seeding import seed_everything, seed_for, validate_seed

logger = logging.getLogger(__name__)

class DeterministicModel(EpochIteratorHooks, keras.Model):
    """A `keras.Model` whose training is a pure function of `seed`.

    * Seeds every RNG before a subclass creates its layers. In the functional and
      Sequential forms, where layers are created before the model, it re-draws each
      layer's weights from its own initializers seeded by (seed, layer position) when
      the model is created (or, for a Sequential without `Input`, when it is built),
      so `seed=7` means the same initial weights in any process. That happens once
      in a model's life: weights it is given later (`load_model`, `load_weights`,
      `set_weights`, training) are never re-drawn. Layers that already hold weights
      to keep (pretrained, `Embedding(weights=...)`) are named in `keep_weights`.
    * Owns `shuffle` and `validation_split` for array inputs: the order of each
      epoch and the split are pure functions of (seed, epoch), so
      `fit(..., initial_epoch=k)` replays exactly the order epoch k had, and a
      second `fit` of the same model continues the epoch count (see `SeedCallback`).
    * Adds a `SeedCallback(seed)` to `fit` when none is given: layer RNG states
      (Dropout, noise, augmentation) are reset from (seed, epoch) at each epoch
      start, and every epoch is fingerprinted, including the data order (the fit's
      `History` has them as `history.fingerprints`; `history.history` is as Keras fills it).
    * Works wherever Keras makes models: a subclass built as `M(inputs, outputs, seed=...)`,
      `from_config`, `load_model` (`.keras` and legacy `.h5`), `clone_model` of the
      functional form, layers whose config does not rebuild them (see `initial_weights`).
    * Saves its seed: `keras.models.load_model` restores it without custom_objects.

    Args:
        *args: As `keras.Model` (e.g. `inputs, outputs`).
        seed: An int in [0, 2**32 - 1].
        deterministic_kernels: Turn on the backend's deterministic kernels (TensorFlow op
            determinism, torch deterministic algorithms and cuDNN; JAX's XLA flag is set by
            `import keras_repro`), default True. They are process-wide switches, and cost
            speed on accelerators (`keras-repro preflight` measures how much); False trains
            without them, knowingly: no warning, and the run records them as off.
        keep_weights: Functional and Sequential forms: layers (or their names) whose
            weights to keep as they are instead of re-drawing them, e.g. a pretrained
            encoder; True keeps every layer's. The fingerprint's initial state is the
            state kept. Default: re-draw every layer (with a warning for nested
            models, which are often pretrained).
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
    >>> fine_tuned = DeterministicModel(inputs, head(encoder(inputs)), seed=7,
    ...                                 keep_weights=[encoder])  # doctest: +SKIP
    """

    _repro_seed_example = "`super().__init__(seed=7)` in the subclass's __init__"

    def __new__(cls, *args: Any, **kwargs: Any) -> DeterministicModel:
        if functional_arguments(args, kwargs):
            if cls is DeterministicModel:
                return super().__new__(DeterministicFunctional)
            rebase_functional(cls, DeterministicModel, DeterministicFunctional)
        return super().__new__(cls)

    def __init__(
        self, *args: Any, seed: int | None = None, keep_weights: Any = None, deterministic_kernels: bool = True,
        **kwargs: Any,
    ) -> None:
        restored = restoring_arguments()
        cloned = model_being_cloned(DeterministicModel) if seed is None and restored is None else None
        if cloned is not None:  # keras.models.clone_model: the clone has the model's seed
            seed, deterministic_kernels = cloned.seed, cloned._repro_kernels
        if seed is None and restored is not None:
            seed, keep_weights = restored.get("seed"), restored.get("keep_weights", keep_weights)
            deterministic_kernels = restored.get("deterministic_kernels", deterministic_kernels)
        if seed is None:
            raise ValueError(
                f"{type(self).__name__} needs a seed: {self._repro_seed_example}. Received: seed=None"
            )
        seed = validate_seed(seed)
        keep = keep_names(keep_weights)
        if deterministic_kernels:
            use_deterministic_kernels(True)  # before any layer or train step exists
        seed_everything(seed_for(seed, "build"))
        if functional_arguments(args, kwargs) and not isinstance(self, Functional):
            # a subclass whose own __init__ passes (inputs, outputs) on
            rebase_functional(type(self), DeterministicModel, DeterministicFunctional)
        super().__init__(*args, **kwargs)
        self._repro_seed = seed
        self._repro_kernels = bool(deterministic_kernels)
        self._repro_keep = keep
        self._repro_quiet = restored is not None
        self._repro_decided: tuple[int, ...] = ()  # ids of layers whose initial weights are settled
        self._repro_kept: tuple[str, ...] = ()
        if cloned is not None:  # layers the clone shares with the model (clone_function) are the model's
            shared = [layer for layer in self._flatten_layers(include_self=False, recursive=False)
                      if any(layer is other for other in cloned.layers) and layer.weights]
            self._repro_decided = tuple(id(layer) for layer in shared)
            self._repro_kept = tuple(layer.name for layer in shared)
        self._repro_init_notes: tuple[str, ...] = ()  # layers whose weights were not all re-drawn
        self._repro_feed: feeding.EpochFeed | None = None
        self._repro_draw_new_layers()

    @property
    def seed(self) -> int:
        """The seed this model's training is a function of."""
        return self._repro_seed

    def _repro_owns_prebuilt_layers(self) -> bool:
        """Whether layers were created before the model (functional and Sequential forms)."""
        return False

    def _repro_draw_new_layers(self) -> None:
        """Settles the initial weights of every built layer not settled yet: re-drawn from
        the seed, or kept as `keep_weights` says. Runs when the model is created and when a
        Sequential is built, never later, so given or trained weights are never re-drawn."""
        if not self._repro_owns_prebuilt_layers():
            return
        keep = self._repro_keep
        if isinstance(keep, tuple):
            self._repro_checkkeep_names(keep)
        decided, kept, drawn = set(self._repro_decided), list(self._repro_kept), 0
        for index, layer in enumerate(self.layers):
            if id(layer) in decided or not layer.built:
                continue
            decided.add(id(layer))
            if not layer.weights:
                continue
            if keep is True or (isinstance(keep, tuple) and layer.name in keep):
                kept.append(layer.name)
                continue
            note = redraw_layer(layer, self._repro_seed, index, quiet=self._repro_quiet)
            if note:
                self._repro_init_notes += (note,)
            drawn += 1
            if keep is None and isinstance(layer, keras.Model) and not self._repro_quiet:
                warn(
                    f"DeterministicModel re-drew the weights of '{layer.name}', a model nested in this one, "
                    f"from seed {self._repro_seed}, as it does for every layer created before the model. If it "
                    f"holds pretrained weights, keep them: keep_weights=['{layer.name}']; to re-draw every "
                    "layer without this warning, pass keep_weights=().",
                    ReproWarning,
                )
        self._repro_decided, self._repro_kept = tuple(decided), tuple(kept)
        if drawn:
            logger.debug("Re-drew %d layers of %s from seed %d", drawn, self.name, self._repro_seed)

    def _repro_checkkeep_names(self, names: tuple[str, ...]) -> None:
        """A clear error for `keep_weights` names that are no layer of the model."""
        if not self.built:
            return
        known = [layer.name for layer in self.layers]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"`keep_weights` names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not a layer of "
                f"'{self.name}'; its layers are {known}. Received: keep_weights={list(names)}"
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["seed"] = self._repro_seed
        if self._repro_keep is not None:
            config["keep_weights"] = self._repro_keep if self._repro_keep is True else list(self._repro_keep)
        if not self._repro_kernels:
            config["deterministic_kernels"] = False
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> DeterministicModel:
        config = dict(config)
        arguments = {name: config.pop(name, default) for name, default in
                     (("seed", None), ("keep_weights", None), ("deterministic_kernels", True))}
        with restoring(arguments):
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
        with a warning if they are known to be nondeterministic. Random layers mapped over
        a `tf.data` input are set from (seed, epoch) with the model's (`keras_repro.fit.input_rng`).

        In a multi-process run (a Keras distribution over several JAX processes), every
        process passes the same global arrays and the global `batch_size`: each feeds its
        own part of every batch, in the same order (see `keras_repro.fit.feeding`).

        Args:
            validation_split_mode: "last" (default, as Keras: the last fraction of the
                rows, before shuffling), "shuffled" (a seeded random subset) or
                "stratified" (a seeded random subset of each class of `y`: one array of
                integer or one-hot labels). Array inputs only.
            Others: as `keras.Model.fit`.

        Returns:
            The `History`.
        """
        if validation_split_mode not in SPLIT_MODES:
            raise ValueError(
                f"`validation_split_mode` must be one of {SPLIT_MODES}. Received: validation_split_mode={validation_split_mode!r}"
            )
        callbacks = list(callbacks or [])
        seed_callback = next((c for c in callbacks if isinstance(c, SeedCallback)), None)
        if seed_callback is None:
            seed_callback = SeedCallback()  # takes the model's seed
            callbacks.append(seed_callback)
        clock = EpochClock(self)
        resume = MidEpochResume.start(self, callbacks, seed_callback, x, steps_per_epoch)  # BackupAndRestore
        notes = {"kept_weights": ", ".join(self._repro_kept)} if self._repro_kept else {}
        notes.update(resume.note())
        if self._repro_init_notes:
            notes["initial_weights"] = "; ".join(self._repro_init_notes)
        context = functools.partial(
            FitContext, clock, notes=notes, kernels_chosen_off=not self._repro_kernels, callbacks=tuple(callbacks),
            seed=self._repro_seed, resume=resume,
        )
        common = dict(
            epochs=epochs, verbose=verbose, class_weight=class_weight, initial_epoch=initial_epoch,
            validation_steps=validation_steps, validation_batch_size=validation_batch_size,
            validation_freq=validation_freq,
        )
        if not _is_arrays(x):
            if validation_split_mode != "last":
                raise ValueError(
                    "`validation_split_mode` applies to array inputs, which DeterministicModel splits itself; "
                    f"this input is a {type(x).__name__}. Pass validation_data, or arrays. "
                    f"Received: validation_split_mode={validation_split_mode!r}"
                )
            self._repro_feed = None
            inputs_rng = input_rng.prepare((x, validation_data), steps_per_epoch is None, self._repro_kernels)
            if inputs_rng and seed_callback.reset_layer_rng:  # before Keras reads a batch
                inputs_rng.epoch_begin(self._repro_seed, clock.epoch(resume.first_epoch(initial_epoch)))
                notes.update(inputs_rng.note())
            notes.update(self._repro_input_hazards(x))
            passes = InputPasses(x, validation_data, self._repro_seed, validation_freq)  # resumed, continued fits
            notes.update(passes.prepare(self, clock.epoch(resume.first_epoch(initial_epoch)), steps_per_epoch))
            seed_callback.use_fit_context(context(settings=configuration.other_input(x),
                                                  input_rng=inputs_rng if seed_callback.reset_layer_rng else None))
            with passes.hooks_muted_until_train_begin(), resume.active(self):
                return super().fit(
                    x, y, batch_size=batch_size, callbacks=[passes.callback()] + callbacks, validation_split=validation_split,
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
        validation_data_given = validation_data is not None
        if validation_data is None and validation_split:
            labels = _split_labels(None if y is None else data[1], validation_split_mode)
            train_rows, validation_rows = split_indices(rows, validation_split, validation_split_mode, self._repro_seed, labels)
            validation_data = keras.tree.map_structure(lambda a: np.take(a, validation_rows, axis=0), data)
        else:
            train_rows, validation_rows = np.arange(rows, dtype=np.int64), np.arange(0, dtype=np.int64)
        if len(train_rows) == 0:
            raise ValueError(f"No training rows left after validation_split={validation_split} of {rows} rows")
        names = [name for name, part in zip(("x", "y", "sample_weight"), (x, y, sample_weight)) if part is not None]
        named = feeding.named_arrays(dict(zip(names, data)))
        self._repro_feed = feeding.EpochFeed(train_rows, validation_rows, self._repro_seed, shuffle, batch_size or 32,
                                             feeding.content_records(named))
        self._repro_build(data[0], train_rows)
        source, setter = feeding.ordered_input(data, self._repro_feed, clock)
        settings = configuration.array_input(named, batch_size or 32, shuffle, validation_split, validation_split_mode,
                                             validation_data_given)
        seed_callback.use_fit_context(context(data_records=self._repro_feed.records, settings=settings))
        validation = feeding.process_validation(validation_data, validation_batch_size or batch_size or 32)
        # As Keras: validation batches of `batch_size` unless told otherwise (the data given to
        # Keras' fit here is batched already, so it cannot fall back to `batch_size` itself).
        common["validation_batch_size"] = None if validation is not validation_data else validation_batch_size or batch_size
        with feeding.fed_by_process(), resume.active(self):
            return super().fit(
                source, callbacks=[setter] + callbacks, validation_data=validation, shuffle=False, **common
            )

    def _repro_build(self, x: Any, train_rows: np.ndarray) -> None:
        """Builds an unbuilt model on a sample batch (a Sequential then settles its weights)."""
        if not self.built:
            sample = keras.tree.map_structure(lambda a: np.take(a, train_rows[:1], axis=0), x)
            with distribution_scope(self):  # variables must be mirrored, as Keras would build them
                self(sample, training=False)

    def _repro_input_hazards(self, x: Any) -> dict[str, str]:
        """Warns (once per input) about known nondeterminism in inputs it cannot reorder;
        returns the note to record."""
        hazards = input_hazards(x)
        if not hazards:
            return {}
        warn(
            "DeterministicModel cannot reorder this input, and it is nondeterministic: "
            + "; ".join(hazards)
            + ". Fix the pipeline as suggested, or pass arrays so the model owns the order.",
            NondeterministicInputWarning,
        )
        return {"input_hazards": "; ".join(hazards)}


def _split_labels(y: Any, mode: str) -> np.ndarray | None:
    """The class labels a stratified split uses: `y` itself, or its only array."""
    if mode != "stratified" or y is None:
        return y
    leaves = keras.tree.flatten(y) if isinstance(y, (list, tuple, dict)) else [y]
    if len(leaves) != 1:
        names = sorted(y) if isinstance(y, dict) else list(range(len(leaves)))
        raise ValueError(
            "validation_split_mode='stratified' needs one array of class labels, and `y` holds "
            f"{len(leaves)} ({names}). Stratify by one output yourself (split the rows and pass "
            "validation_data), or use validation_split_mode='shuffled'. "
            f"Received: y of type {type(y).__name__}"
        )
    return leaves[0]


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
class DeterministicFunctional(DeterministicModel, Functional):
    """The functional form of `DeterministicModel`: `DeterministicModel(inputs, outputs, seed=...)`."""

    _repro_seed_example = "`kr.DeterministicModel(inputs, outputs, seed=7)`"

    def _repro_owns_prebuilt_layers(self) -> bool:
        return True


@keras.saving.register_keras_serializable(package="keras_repro", name="DeterministicSequential")
class DeterministicSequential(DeterministicModel, keras.Sequential):
    """`keras.Sequential` with the guarantees of `DeterministicModel`.

    Example:

    >>> model = DeterministicSequential(                          # doctest: +SKIP
    ...     [keras.Input((8,)), keras.layers.Dense(10)], seed=7)
    """

    _repro_seed_example = "`kr.DeterministicSequential([keras.Input(...), ...], seed=7)`"

    def __init__(
        self,
        layers: list | None = None,
        trainable: bool = True,
        name: str | None = None,
        seed: int | None = None,
        keep_weights: Any = None,
        deterministic_kernels: bool = True,
    ) -> None:
        super().__init__(layers, trainable=trainable, name=name, seed=seed, keep_weights=keep_weights,
                         deterministic_kernels=deterministic_kernels)

    def _repro_owns_prebuilt_layers(self) -> bool:
        return True

    @keras.Sequential.layers.getter  # keeps Keras' setter (and its error)
    def layers(self) -> list:
        if cloned_as_keras_sequential():
            warn(
                f"keras.models.clone_model returns a plain keras.Sequential for every Sequential subclass, so "
                f"the clone of '{self.name}' has no seed and trains as keras.Sequential does. For a clone of "
                "the same class and seed, use Keras' recipe for subclassed models: "
                "type(model).from_config(model.get_config()).",
                ReproWarning,
            )
        return keras.Sequential.layers.fget(self)

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        if getattr(self, "_repro_seed", None) is not None:  # not during keras.Sequential.__init__
            self._repro_draw_new_layers()


DeterministicModel = keras.saving.register_keras_serializable(package="keras_repro", name="DeterministicModel")(DeterministicModel)
register_for_h5(DeterministicModel, DeterministicFunctional, DeterministicSequential)
