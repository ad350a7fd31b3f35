"""Two JAX processes on loopback (CPU, gloo collectives) training one DeterministicModel
together under a Keras distribution, with a SeedCallback.

Run as (KERAS_BACKEND=jax; both processes at once, with the same PORT and FOLDER):
    python tests/scripts/distributed/jax_multi_process.py PROCESS PORT FOLDER CASE

Cases (each process writes nothing but what it is told; process 1's reference path is
FOLDER/p1/..., a folder the test creates empty, so that a write there would show):
    dp-record: DataParallel. Records FOLDER/dp.h5 (3 epochs, batch checksums); then a new
        model trains 1 epoch, and process 0 saves it to FOLDER/resume.keras.
    dp-check: DataParallel, new processes. Verifies dp.h5; resumes resume.keras at epoch 1
        and verifies epochs 1-2; seed 8 against dp.h5; a drift injected in process 1 only
        (one ulp in one weight, after epoch 0) with no reference.
    mp-record: ModelParallel, the first Dense layer's kernel and bias and the second's kernel
        split across the two processes (mesh batch=1, model=2). Records FOLDER/mp.h5, and
        hashes the gathered kernel independently of the fingerprint.
    mp-check: ModelParallel, new processes, mode="verify" in both: the same seed; seed 8; one
        ulp injected after epoch 0 into the part of the sharded kernel that process 1 holds.
"""

import os
import sys
import tempfile

PROCESS, PORT, FOLDER, CASE = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
# DataParallel: two devices per process (a copy on each of the 4); ModelParallel: one per
# process, so that the model axis of the mesh spans the processes.
jax.config.update("jax_num_cpu_devices", 2 if CASE.startswith("dp") else 1)

import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro import _backend  # noqa: E402
from keras_repro.fingerprinting import (
    checksums,
    variables,  # noqa: E402
)
from keras_repro.fingerprinting.digests import hash_array  # noqa: E402

EPOCHS = 3


def reference(name: str) -> str:
    """Process 0's reference path, or process 1's own (private) one."""
    return os.path.join(FOLDER, name) if PROCESS == 0 else os.path.join(FOLDER, "p1", name)


def data_parallel() -> None:
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


def model_parallel() -> None:
    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), keras.distribution.list_devices())
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*d1/kernel"] = (None, "model")
    layout[".*d1/bias"] = ("model",)
    layout[".*d2/kernel"] = ("model", None)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))


def build_named(seed: int) -> kr.DeterministicModel:
    """common.build with named Dense layers, for the layout map."""
    inputs = keras.Input((8, 8))
    x = keras.layers.Rescaling(1 / 16)(keras.layers.Flatten()(inputs))
    x = keras.layers.Dropout(0.3)(keras.layers.Dense(32, activation="relu", name="d1")(x))
    model = kr.DeterministicModel(inputs, keras.layers.Dense(10, activation="softmax", name="d2")(x), seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(prefix: str, model, callback, epochs: int = EPOCHS, initial_epoch: int = 0, extra: tuple = ()) -> None:
    """Fits, and prints what the callback saw under keys starting with `prefix`."""
    x, y = common.data()
    try:
        model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, callbacks=[*extra, callback], **common.FIT)
    except kr.FingerprintMismatch as error:
        common.emit(f"{prefix}MISMATCH", str(error).replace("\n", " "))
    found = callback.divergence
    common.emit(f"{prefix}MODE", callback.resolved_mode)
    common.emit(f"{prefix}DIVERGENCE", str(found).replace("\n", " ") if found else None)
    if found is not None:
        common.emit(f"{prefix}FOUND", found.epoch, found.stage, found.part, found.variable, found.process)
    if callback.log.initial is not None:
        common.emit(f"{prefix}INITIAL", callback.log.initial.digest)
    common.emit(f"{prefix}EPOCHS", *[fp.digest for fp in callback.log.epochs])


def emit_environment(callback) -> None:
    environment = callback.log.environment
    for key in ("process_count", "distribution", "distribution.mesh", "distribution.layout_map"):
        common.emit("ENV_" + key.upper().replace(".", "_"), environment.get(key))


class Drift(keras.callbacks.Callback):
    """After epoch 0, process 1 moves the first weight of its part of `variable` (its copy of
    a replicated variable, its shard of a sharded one) by one ulp, without telling process 0."""

    def __init__(self, variable) -> None:
        super().__init__()
        self.variable = variable

    def on_epoch_end(self, epoch, logs=None):
        self.model  # noqa: B018 - Keras writes the JAX trainer's state back to the variables
        if epoch != 0 or PROCESS != 1:
            return
        value = self.variable.value
        local = np.array(value.addressable_data(0))
        local.flat[0] = np.nextafter(local.flat[0], np.float32(np.inf))
        copies = [jax.device_put(local, device) for device in value.sharding.addressable_devices]
        self.variable._value = jax.make_array_from_single_device_arrays(value.shape, value.sharding, copies)


def dp_record() -> None:
    data_parallel()
    callback = kr.SeedCallback(7, reference("dp.h5"), every_n_batches=2)
    fit("", common.build(7), callback)
    emit_environment(callback)
    common.emit("REPLICA_DEVICES", *variables.replica_devices(callback.model))
    common.emit("KERNEL", *_kernel_layout(callback.model))
    resumable = common.build(7)
    fit("FIRST_", resumable, kr.SeedCallback(7), epochs=1)
    # Saving is a collective (Keras puts values on the devices): process 1 saves to a scratch file.
    resumable.save(os.path.join(FOLDER, "resume.keras") if PROCESS == 0 else os.path.join(tempfile.mkdtemp(), "x.keras"))


def dp_check() -> None:
    data_parallel()
    fit("", common.build(7), kr.SeedCallback(7, reference("dp.h5"), every_n_batches=2))
    resumed = keras.models.load_model(os.path.join(FOLDER, "resume.keras"))
    fit("RESUMED_", resumed, kr.SeedCallback(7, reference("dp.h5"), every_n_batches=2), initial_epoch=1)
    fit("OTHER_", common.build(8), kr.SeedCallback(8, reference("dp.h5")))
    drifting = common.build(7)
    target = drifting.trainable_variables[0]
    common.emit("DRIFT_TARGET", target.path)
    fit("DRIFT_", drifting, kr.SeedCallback(7), extra=(Drift(target),))


def mp_record() -> None:
    model_parallel()
    model = build_named(7)
    callback = kr.SeedCallback(7, reference("mp.h5"), every_n_batches=2)
    fit("", model, callback, epochs=2)
    emit_environment(callback)
    kernel = model.get_layer("d1").kernel
    common.emit("KERNEL", *_kernel_layout(model))
    # The whole kernel, gathered here without keras_repro, hashed as fingerprints hash it.
    whole = np.asarray(multihost_utils.process_allgather(kernel.value, tiled=True))
    index = [r.path for r in callback.log.epochs[-1].part("trainable")].index(kernel.path)
    header = f"trainable\0{index}\0{whole.dtype.name}\0{tuple(whole.shape)}\0".encode()
    common.emit("KERNEL_WHOLE", whole.shape[0], whole.shape[1], hash_array(whole, header))
    common.emit("KERNEL_RECORDED", callback.log.epochs[-1].variables[kernel.path])
    # A batch checksum of the kernel (compiled over the global array) against the host's of the whole.
    common.emit("KERNEL_CHECKSUM", *_backend.checksum_function([kernel])()[0].tolist(), *checksums.lanes(whole).tolist())


def mp_check() -> None:
    model_parallel()
    shared = os.path.join(FOLDER, "mp.h5")  # both processes read it: mode="verify"
    fit("", build_named(7), kr.SeedCallback(7, shared, mode="verify", every_n_batches=2), epochs=2)
    fit("OTHER_", build_named(8), kr.SeedCallback(8, shared, mode="verify"), epochs=2)
    drifting = build_named(7)
    kernel = drifting.get_layer("d1").kernel
    common.emit("SHARD_TARGET", kernel.path)
    fit("SHARD_", drifting, kr.SeedCallback(7, shared, mode="verify"), epochs=2, extra=(Drift(kernel),))


def _kernel_layout(model) -> tuple:
    """The first Dense kernel's global shape, this process's part of it, and whether the
    process holds all of it."""
    value = model.trainable_variables[0].value
    shape = "x".join(map(str, value.shape))
    return shape, "x".join(map(str, value.addressable_data(0).shape)), value.is_fully_addressable


if __name__ == "__main__":
    keras.distribution.initialize(f"127.0.0.1:{PORT}", num_processes=2, process_id=PROCESS)
    common.emit("PROCESS", jax.process_index(), jax.process_count())
    {"dp-record": dp_record, "dp-check": dp_check, "mp-record": mp_record, "mp-check": mp_check}[CASE]()
    multihost_utils.sync_global_devices("done")
