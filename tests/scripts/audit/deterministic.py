"""A reproducible training script for `keras-repro audit` / `bisect`: a seeded
DeterministicSequential with Dropout on a fixed random problem."""

import keras
import numpy as np

import keras_repro as kr


def build_model():
    model = kr.DeterministicSequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(3, activation="softmax"),
        ],
        seed=7,
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = (np.abs(x[:, 0] * 3).astype(int) % 3).astype("int32")
    return x, y


if __name__ == "__main__":
    print(kr.audit(build_model, *data()))
