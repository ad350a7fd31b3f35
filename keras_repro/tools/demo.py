"""The demo behind `keras-repro demo`: train twice on bundled data, record, verify."""

from __future__ import annotations

import dataclasses
import os
import warnings

from keras_repro.fingerprinting.compare import Divergence
from keras_repro.store.log import FingerprintLog


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo did.

    Attributes:
        first: The recorded run.
        second: The verified run.
        divergence: The first divergence of run 2, or None if reproducible.
        reference: The path of the recorded fingerprint file.
        parameters: The model's parameter count.
        backend: The Keras backend.
        dataset: A short name of the data set.
    """

    first: FingerprintLog
    second: FingerprintLog
    divergence: Divergence | None
    reference: str
    parameters: int
    backend: str
    dataset: str


def build_model(seed: int):
    """A small MLP with Dropout and BatchNormalization for 8x8 digits."""
    import keras

    from keras_repro.model import DeterministicSequential

    return DeterministicSequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ],
        seed=seed,
    )


def train_once(seed: int, epochs: int, reference: str, mode: str):
    """Builds, compiles and fits the demo model once with a SeedCallback."""
    from keras_repro.callbacks import SeedCallback
    from keras_repro.datasets import load_digits

    images, labels = load_digits()
    model = build_model(seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callback = SeedCallback(seed, reference=reference, mode=mode, on_mismatch="warn")
    model.fit(
        images.astype("float32"),
        labels,
        epochs=epochs,
        batch_size=64,
        shuffle=True,
        validation_split=0.2,
        validation_split_mode="stratified",
        callbacks=[callback],
        verbose=0,
    )
    return model, callback


def run_demo(out: str, seed: int = 7, epochs: int = 5) -> DemoResult:
    """Trains the demo model twice: run 1 records `out/reference.h5`, run 2 verifies.

    Example:

    >>> result = run_demo("/tmp/demo")  # doctest: +SKIP
    >>> result.divergence is None       # doctest: +SKIP
    True
    """
    from keras_repro import _backend
    from keras_repro.determinism import prepare_at_import

    prepare_at_import()  # the command imports lazily: set what only works before the backend starts
    reference = os.path.join(out, "reference.h5")
    model, first = train_once(seed, epochs, reference, "record")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the verdict reports a divergence
        _, second = train_once(seed, epochs, reference, "verify")
    second.log.save(os.path.join(out, "run2.h5"))
    return DemoResult(
        first=first.log,
        second=second.log,
        divergence=second.divergence,
        reference=reference,
        parameters=int(model.count_params()),
        backend=_backend.name(),
        dataset="the bundled 8x8 digits (1,797 images)",
    )
