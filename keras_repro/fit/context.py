"""What one fit is, for `SeedCallback`: its epoch numbering, its data records and its
configuration (`keras_repro.fingerprinting.configuration`), collected here for the reference.

Keras numbers the epochs of every `fit` call from `initial_epoch` (0 by default), so
a second `fit` of the same model, continuing its training as notebooks do, calls its
epochs 0, 1, ... again. keras_repro numbers epochs as the model's training goes on:
a fit that starts at epoch 0 on a model that already finished k epochs in this
process is epochs k, k+1, ... (the same as one longer fit), while an explicit
`initial_epoch=k` is kept as given.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from keras_repro.fingerprinting import configuration
from keras_repro.fingerprinting.digests import VariableDigest

logger = logging.getLogger(__name__)

TRAINED_EPOCHS_ATTRIBUTE = "_keras_repro_trained_epochs"
"""Set on a model object: one past the last epoch it finished in this process."""


class EpochClock:
    """Maps the Keras epoch numbers of one fit to the model's epoch numbers.

    Args:
        model: The model being fit.

    Example:

    >>> clock = EpochClock(model)     # doctest: +SKIP
    >>> clock.epoch(0)                # a second fit(epochs=3) after fit(epochs=3)
    3
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._offset: int | None = None

    @property
    def offset(self) -> int:
        """Model epoch minus Keras epoch (0 until the first epoch began)."""
        return self._offset or 0

    def epoch(self, keras_epoch: int) -> int:
        """The model's number of the epoch Keras numbers `keras_epoch`."""
        if self._offset is None:
            trained = int(getattr(self._model, TRAINED_EPOCHS_ATTRIBUTE, 0) or 0)
            self._offset = trained if keras_epoch == 0 and trained > 0 else 0
            if self._offset:
                logger.info(
                    "This fit continues the training of '%s' after epoch %d: its epochs are numbered "
                    "from %d (pass initial_epoch=%d to say so explicitly)",
                    getattr(self._model, "name", "model"), trained - 1, trained, trained,
                )
        return keras_epoch + self._offset

    def finished(self, keras_epoch: int) -> None:
        """Notes on the model that the epoch Keras numbers `keras_epoch` has finished."""
        setattr(self._model, TRAINED_EPOCHS_ATTRIBUTE, self.epoch(keras_epoch) + 1)


def _no_records(epoch: int) -> list[VariableDigest]:
    """No data-order records (inputs keras_repro does not order)."""
    return []


@dataclasses.dataclass
class FitContext:
    """What a `DeterministicModel` tells its `SeedCallback` about one fit.

    Attributes:
        clock: The fit's epoch numbering.
        data_records: The data part of the fingerprint of a (model-numbered) epoch:
            its training order and the validation split.
        notes: Remarks recorded with the run ({topic: text}).
        kernels_chosen_off: The model was told to train without deterministic kernels
            (`DeterministicModel(deterministic_kernels=False)`): no warning about them.
        settings: What the fit's caller knows of its configuration: the input, batch size,
            shuffle, validation split (`configuration.array_input` / `other_input`); empty
            for a model that is not a DeterministicModel.
        callbacks: The fit's callbacks, when the model knows them (`DeterministicModel`):
            a resumed fit names those whose state starts afresh (`keras_repro.fit.callback_state`).
        seed: The model's seed (`DeterministicModel(seed=...)`): the one seed of the fit, which
            a `SeedCallback(seed=None)` takes; None for other models.
        input_rng: The SeedGenerators of its `tf.data` inputs, set at epoch starts with the
            model's (`keras_repro.fit.input_rng.InputRng`), or None.
        resume: Its mid-epoch resume from a `BackupAndRestore` backup
            (`keras_repro.fit.midepoch.MidEpochResume`), or None.
    """

    clock: EpochClock
    data_records: Callable[[int], list[VariableDigest]] = _no_records
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    kernels_chosen_off: bool = False
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    callbacks: tuple[Any, ...] = ()
    seed: int | None = None
    input_rng: Any = None
    resume: Any = None

    def configuration(self, model: Any, params: Mapping[str, Any] | None, reset_layer_rng: bool) -> dict[str, str]:
        """The fit's configuration, to record with its fingerprints: `settings`, the fit's
        steps per epoch (`params`), the model's seed, structure and compiled settings.

        Example:

        >>> context.configuration(model, callback.params, reset_layer_rng=True)["batch_size"]  # doctest: +SKIP
        '32'
        """
        return configuration.collect(model, params, self.settings, reset_layer_rng)


def fit_seed(given: int | None, model_seed: int | None) -> int:
    """The one seed of a fit: the model's (a `DeterministicModel`'s) or the callback's.

    Args:
        given: The seed given to `SeedCallback` (None: take the model's).
        model_seed: The model's seed, or None for a model that has none.

    Returns:
        The seed the fit uses.

    Raises:
        ValueError: When neither has a seed, or both have and they differ.

    Example:

    >>> fit_seed(None, 7), fit_seed(7, 7), fit_seed(7, None)
    (7, 7, 7)
    """
    if given is None and model_seed is None:
        raise ValueError(
            "SeedCallback has no seed: the model has none (it is not a kr.DeterministicModel). Pass one, "
            "e.g. kr.SeedCallback(7, 'reference.h5'). Received: seed=None"
        )
    if given is not None and model_seed is not None and given != model_seed:
        raise ValueError(
            f"SeedCallback's seed ({given}) differs from the model's ({model_seed}): the model draws its initial "
            "weights and orders the data from its seed, so a reference recorded under another would misname both. "
            "Drop the callback's seed (kr.SeedCallback(reference=...) takes the model's) or pass the same one. "
            f"Received: seed={given}"
        )
    return model_seed if given is None else given


DEFAULT_SEED = 7
"""The seed keras_repro's own fits (`assert_reproducible`, `audit`, `bisect`) give a model
that has none of its own (not a `DeterministicModel`) when no seed is passed."""


def callback_seed(model: Any, seed: int | None) -> int | None:
    """The seed to give the `SeedCallback` of a fit keras_repro runs itself: `seed`, else None
    for a `DeterministicModel` (the callback takes its seed), else `DEFAULT_SEED`.

    Example:

    >>> callback_seed(object(), None)
    7
    """
    if seed is None and getattr(model, "_repro_seed", None) is None:
        return DEFAULT_SEED
    return seed
