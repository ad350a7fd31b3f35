"""Keras' JAX distribution API: `keras.distribution.DataParallel` over two host CPU
devices; a functional DeterministicModel fit on arrays with a SeedCallback.

Run as (KERAS_BACKEND=jax, XLA_FLAGS=--xla_force_host_platform_device_count=2 set by
the caller, before JAX starts): python tests/scripts/distributed/jax_data_parallel.py FOLDER SEED
"""

import os
import sys

import common  # noqa: E402
import keras  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.fingerprinting import digests  # noqa: E402


def main(folder: str, seed: int) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    devices = keras.distribution.list_devices("cpu")
    common.emit("DEVICES", len(devices))
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    model = common.build(seed)
    kernel = model.layers[-1].kernel.value
    common.emit("KERNEL_DEVICES", len(kernel.sharding.device_set), kernel.sharding.is_fully_replicated)
    x, y = common.data()
    callback = kr.SeedCallback(seed, os.path.join(folder, "jax.h5"), every_n_batches=2)
    try:
        model.fit(x, y, epochs=3, callbacks=[callback], **common.FIT)
    except kr.FingerprintMismatch as error:
        common.emit("MISMATCH", str(error).replace("\n", " "))
    common.emit_log(callback)
    replicas = digests.replica_fingerprints(model)
    common.emit("REPLICA_DIGESTS", *[fp.digest for fp in replicas.values()])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
