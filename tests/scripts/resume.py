"""Trains the resume-test model: `straight` (4 epochs) or `first` (2 epochs, save) or
`resume` (load, 2 more epochs). Prints the final fingerprint digest.

Run as: python tests/scripts/resume.py MODE FOLDER
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.datasets import load_digits  # noqa: E402

SEED = 7


def build() -> kr.DeterministicModel:
    inputs = keras.Input((8, 8))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Rescaling(1 / 16)(x)
    x = keras.layers.GaussianNoise(0.1)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = kr.DeterministicModel(inputs, outputs, seed=SEED)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(mode: str, folder: str) -> None:
    images, labels = load_digits()
    images, labels = images[:600].astype("float32"), labels[:600]
    fit = dict(batch_size=32, shuffle=True, validation_split=0.2, verbose=0)
    reference = os.path.join(folder, "straight.h5")
    if mode == "straight":
        model = build()
        model.fit(images, labels, epochs=4, callbacks=[kr.SeedCallback(SEED, reference, mode="record")], **fit)
    elif mode == "first":
        model = build()
        model.fit(images, labels, epochs=2, **fit)
        model.save(os.path.join(folder, "checkpoint.keras"))
    elif mode == "resume":
        model = keras.models.load_model(os.path.join(folder, "checkpoint.keras"))
        callback = kr.SeedCallback(SEED, reference, mode="verify", on_mismatch="warn")
        model.fit(images, labels, epochs=4, initial_epoch=2, callbacks=[callback], **fit)
        print("DIVERGENCE", callback.divergence)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("BACKEND", keras.backend.backend())
    print("DIGEST", kr.fingerprint(model).without("rng").digest)
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    print("WEIGHTS", weights.tobytes().hex()[:64], weights.size)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
