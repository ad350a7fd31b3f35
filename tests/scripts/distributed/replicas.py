"""Replica consistency under `tf.distribute.MirroredStrategy` over two logical CPUs:
per-replica fingerprints, and a SeedCallback that names the replica and variable when
one device's copy of a mirrored variable is made to drift.

Run as: python tests/scripts/distributed/replicas.py
"""

import warnings

import tensorflow as tf

CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import common  # noqa: E402
import keras  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.fingerprinting.compare import replica_divergence  # noqa: E402
from keras_repro.fingerprinting.digests import replica_fingerprints  # noqa: E402

SEED = 7


class Nudge(keras.callbacks.Callback):
    """At the end of `epoch`, adds 1e-3 to replica 1's copy of `variable` only."""

    def __init__(self, variable, epoch):
        super().__init__()
        self.variable, self.epoch = variable, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            copy = self.variable.value.values[1]
            copy.assign(copy + 1e-3)


def main() -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = common.data()
    with strategy.scope():
        clean = common.build(SEED, batch_norm=True)
    callback = kr.SeedCallback(SEED)
    clean.fit(x, y, epochs=2, callbacks=[callback], **common.FIT)  # raises if the check misfires
    common.emit("CLEAN_DIVERGENCE", callback.divergence)
    common.emit("CLEAN_REPLICAS", *[common.without(fp, "non_trainable").digest for fp in replica_fingerprints(clean).values()])

    with strategy.scope():
        model = common.build(SEED, batch_norm=True)
    target = model.layers[-1].kernel
    common.emit("TARGET", target.path)
    callback = kr.SeedCallback(SEED)
    try:
        model.fit(x, y, epochs=3, callbacks=[Nudge(target, 1), callback], **common.FIT)
        common.emit("RAISED", False)
    except kr.FingerprintMismatch as error:
        common.emit("RAISED", True)
        common.emit("MESSAGE", str(error).replace("\n", " "))
    found = callback.divergence
    common.emit("FOUND", found.epoch, found.stage, found.part, found.variable, found.replica)
    common.emit("EPOCHS_DONE", len(callback.log.epochs))
    drifted = replica_fingerprints(model)
    common.emit("DRIFTED_KEYS", *drifted)
    common.emit("DRIFTED_REPLICAS", *[fp.digest for fp in drifted.values()])
    direct = replica_divergence(drifted)
    common.emit("DIRECT", direct.replica, direct.part, direct.variable, "|", direct)

    plain = common.build(SEED)  # no strategy: one entry, nothing to compare
    common.emit("PLAIN_KEYS", *replica_fingerprints(plain))
    common.emit("PLAIN_DIVERGENCE", replica_divergence(replica_fingerprints(plain)))

    with strategy.scope():
        early = common.build(SEED)
    bias = early.layers[-1].bias
    bias.value.values[1].assign(bias.value.values[1] + 1.0)
    callback = kr.SeedCallback(SEED, on_mismatch="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        early.fit(x, y, epochs=1, callbacks=[callback], **common.FIT)
    found = callback.divergence
    common.emit("EARLY_TARGET", bias.path)
    common.emit("EARLY_FOUND", found.epoch, found.stage, found.part, found.variable, found.replica)
    common.emit("EARLY_WARNED", any(isinstance(w.message, kr.FingerprintMismatchWarning) for w in caught))
    common.emit("EARLY_MESSAGE", str(found))


if __name__ == "__main__":
    main()
