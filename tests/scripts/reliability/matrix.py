"""The determinism matrix: trains every model family for 2 epochs, recording or verifying.

Run as: python tests/scripts/reliability/matrix.py MODE FOLDER [--seed S] [--families a,b]

MODE is "record" (writes FOLDER/FAMILY.h5) or "verify" (checks against it, with
on_mismatch="warn" so every family runs). Every family is a DeterministicModel
(functional or DeterministicSequential) with seed S (default 7), trained with
shuffle=True and validation_split=0.2. Prints one line per family:

    FAMILY name backend DIGESTS d0,d1 DIVERGENCE None|text SECONDS t
    FAMILY name backend ERROR type: message SECONDS t   (if building or training failed)
"""

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.datasets import load_digits  # noqa: E402

ROWS = 480
L = keras.layers


def _digits():
    images, labels = load_digits()
    return images[:ROWS], labels[:ROWS].astype("int32")


def mlp(seed):
    """Dense + Dropout on the flattened digits."""
    images, labels = _digits()
    model = kr.DeterministicSequential(
        [keras.Input((64,)), L.Dense(32, activation="relu"), L.Dropout(0.3), L.Dense(16, activation="relu"),
         L.Dropout(0.2), L.Dense(10, activation="softmax")],
        seed=seed,
    )
    return model, images.reshape(-1, 64).astype("float32") / 16, labels


def cnn_bn(seed):
    """Conv2D + BatchNormalization + MaxPooling2D on 8x8 digits."""
    images, labels = _digits()
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.BatchNormalization()(x)
    x = L.Flatten()(x)
    outputs = L.Dense(10, activation="softmax")(x)
    return kr.DeterministicModel(inputs, outputs, seed=seed), images[..., None].astype("float32") / 16, labels


def lstm(seed):
    """LSTM over the 8 rows of each digit (8 steps of 8 features)."""
    images, labels = _digits()
    model = kr.DeterministicSequential(
        [keras.Input((8, 8)), L.LSTM(12), L.Dense(10, activation="softmax")], seed=seed
    )
    return model, images.astype("float32") / 16, labels


def embedding(seed):
    """Embedding + GlobalAveragePooling1D over integer tokens (the 64 pixel values 0..16)."""
    images, labels = _digits()
    inputs = keras.Input((64,), dtype="int32")
    x = L.Embedding(17, 8)(inputs)
    x = L.GlobalAveragePooling1D()(x)
    outputs = L.Dense(10, activation="softmax")(x)
    return kr.DeterministicModel(inputs, outputs, seed=seed), images.reshape(-1, 64).astype("int32"), labels


def noise(seed):
    """Dropout, GaussianNoise and GaussianDropout."""
    images, labels = _digits()
    model = kr.DeterministicSequential(
        [keras.Input((64,)), L.GaussianNoise(0.1), L.Dense(32, activation="relu"), L.Dropout(0.3),
         L.GaussianDropout(0.2), L.Dense(10, activation="softmax")],
        seed=seed,
    )
    return model, images.reshape(-1, 64).astype("float32") / 16, labels


def augmentation(seed):
    """RandomFlip, RandomRotation, RandomTranslation and RandomZoom before a small conv net."""
    images, labels = _digits()
    inputs = keras.Input((8, 8, 1))
    x = L.RandomFlip("horizontal")(inputs)
    x = L.RandomRotation(0.05)(x)
    x = L.RandomTranslation(0.1, 0.1)(x)
    x = L.RandomZoom(0.1)(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    outputs = L.Dense(10, activation="softmax")(x)
    return kr.DeterministicModel(inputs, outputs, seed=seed), images[..., None].astype("float32") / 16, labels


FAMILIES = {f.__name__: f for f in (mlp, cnn_bn, lstm, embedding, noise, augmentation)}


def run(name, mode, folder, seed):
    model, x, y = FAMILIES[name](seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    reference = os.path.join(folder, f"{name}.h5")
    callback = kr.SeedCallback(seed, reference, mode=mode, on_mismatch="warn")
    model.fit(x, y, epochs=2, batch_size=32, shuffle=True, validation_split=0.2, verbose=0, callbacks=[callback])
    digests = ",".join(fp.digest for fp in callback.log.epochs)
    divergence = callback.divergence
    return f"DIGESTS {digests} DIVERGENCE {' '.join(str(divergence).split())}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["record", "verify"])
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    backend = keras.backend.backend()
    for name in args.families.split(","):
        start = time.perf_counter()
        try:
            line = run(name, args.mode, args.folder, args.seed)
        except Exception as error:  # noqa: BLE001 - report and go on with the next family
            traceback.print_exc()
            line = f"ERROR {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        print("FAMILY", name, backend, line, f"SECONDS {time.perf_counter() - start:.1f}", flush=True)


if __name__ == "__main__":
    main()
