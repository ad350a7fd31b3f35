"""`tf.distribute.MirroredStrategy` over two logical CPUs: a functional DeterministicModel
built and compiled under the strategy's scope, fit on arrays with a SeedCallback.

Run as: python tests/scripts/distributed/mirrored.py MODE FOLDER SEED
  fit      fit 3 epochs with SeedCallback(SEED, FOLDER/mirrored.h5, every_n_batches=2) ("auto" mode)
  checks   as `fit`, then: the initial weights against a model built without the
           strategy; reinitialize_weights on scrambled per-device copies; the data
           order of the fit against explicit per-epoch datasets and per-epoch fits
  subclass a subclassed DeterministicModel created under the scope, fit outside it
"""

import os
import sys

import tensorflow as tf

CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import common  # noqa: E402
import keras  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.model import reinitialize_weights  # noqa: E402

EPOCHS = 3


def strategy() -> tf.distribute.MirroredStrategy:
    found = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    common.emit("REPLICAS", found.num_replicas_in_sync)
    return found


def fit(folder: str, seed: int, checks: bool) -> None:
    mirrored = strategy()
    if checks:
        common.emit("PLAIN_INITIAL", kr.fingerprint(common.build(seed)).parts["trainable"])
    with mirrored.scope():
        model = common.build(seed)
    common.emit("VARIABLE_TYPE", type(model.layers[-1].kernel.value).__name__)
    common.emit("MIRRORED_INITIAL", kr.fingerprint(model).parts["trainable"])
    common.emit("INITIAL_COPIES_EQUAL", common.tf_copies_equal(model))
    x, y = common.data()
    callback = kr.SeedCallback(seed, os.path.join(folder, "mirrored.h5"), every_n_batches=2)
    try:
        model.fit(x, y, epochs=EPOCHS, callbacks=[callback], **common.FIT)
    except kr.FingerprintMismatch as error:
        common.emit("MISMATCH", str(error).replace("\n", " "))
    common.emit_log(callback)
    common.emit("FINAL_COPIES_EQUAL", common.tf_copies_equal(model))
    if checks:
        reinitialized(mirrored, seed)
        order(mirrored, model, seed, x, y)


def reinitialized(mirrored, seed: int) -> None:
    """reinitialize_weights must set every device's copy, not just the first."""
    with mirrored.scope():
        model = common.build(seed)
    common.tf_scramble_copies(model)
    common.emit("SCRAMBLED_COPIES_EQUAL", common.tf_copies_equal(model))
    reinitialize_weights(model, seed)
    common.emit("REINITIALIZED_COPIES_EQUAL", common.tf_copies_equal(model))
    common.emit("REINITIALIZED", kr.fingerprint(model).parts["trainable"])


def order(mirrored, straight, seed: int, x, y) -> None:
    """The fit's state equals fits fed each epoch's rows explicitly, and fits of one epoch
    each (initial_epoch=e: the trainer pulls a batch of the epoch-0 order to build before
    the order of epoch e is set), so the order set at each epoch begin is what was fed."""
    feed = straight._repro_feed
    with mirrored.scope():
        explicit, stale, per_epoch = common.build(seed), common.build(seed), common.build(seed)
    for epoch in range(EPOCHS):
        for model, rows in ((explicit, feed.rows(epoch)), (stale, feed.rows(0))):  # stale: a control
            dataset = tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(common.FIT["batch_size"])
            model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0, callbacks=[kr.SeedCallback(seed)])
        per_epoch.fit(x, y, initial_epoch=epoch, epochs=epoch + 1, callbacks=[kr.SeedCallback(seed)], **common.FIT)
    outcomes = (("ORDER_STRAIGHT", straight), ("ORDER_EXPLICIT", explicit), ("ORDER_PER_EPOCH", per_epoch), ("ORDER_STALE", stale))
    for key, model in outcomes:
        common.emit(key, common.without(kr.fingerprint(model), "data").digest)


class Net(kr.DeterministicModel):
    """A subclassed DeterministicModel: its layers are built by the first fit."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.out = keras.layers.Dense(10, activation="softmax")

    def call(self, x):
        return self.out(self.hidden(self.flatten(x)))


def subclass(folder: str, seed: int) -> None:
    with strategy().scope():
        model = Net(seed)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = common.data()
    callback = kr.SeedCallback(seed, os.path.join(folder, "subclass.h5"))
    model.fit(x, y, epochs=1, callbacks=[callback], **common.FIT)
    common.emit("VARIABLE_TYPE", type(model.out.kernel.value).__name__)
    common.emit("FINAL_COPIES_EQUAL", common.tf_copies_equal(model))
    common.emit_log(callback)


if __name__ == "__main__":
    mode, folder, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode in ("fit", "checks"):
        fit(folder, seed, checks=mode == "checks")
    elif mode == "subclass":
        subclass(folder, seed)
    else:
        raise SystemExit(f"unknown mode {mode}")
