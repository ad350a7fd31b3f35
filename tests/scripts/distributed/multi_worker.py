"""One worker of a two-worker `tf.distribute.MultiWorkerMirroredStrategy` run on
loopback (TF_CONFIG set by the caller): a functional DeterministicModel built under the
strategy's scope, fit on arrays with `SeedCallback(7, REFERENCE, mode=MODE)`.

Run as: TF_CONFIG=... python tests/scripts/distributed/multi_worker.py REFERENCE [MODE]
(MODE: "auto", the default, "record" or "verify")
"""

import sys

import common  # noqa: E402
import keras_mwms_shim  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_repro as kr  # noqa: E402

SEED = 7


def main(reference: str, mode: str) -> None:
    keras_mwms_shim.install()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    common.emit("TASK", resolver.task_type, resolver.task_id)
    common.emit("REPLICAS", strategy.num_replicas_in_sync)
    with strategy.scope():
        model = common.build(SEED)
    x, y = common.data()
    callback = kr.SeedCallback(SEED, reference, mode=mode)
    try:
        model.fit(x, y, epochs=2, callbacks=[callback], **common.FIT)
    except kr.FingerprintMismatch as error:
        common.emit("MISMATCH", str(error).replace("\n", " "))
    common.emit_log(callback)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "auto")
