"""One worker of a two-worker `tf.distribute.MultiWorkerMirroredStrategy` run on
loopback (TF_CONFIG set by the caller): a functional DeterministicModel built under the
strategy's scope, fit on arrays with `SeedCallback(7, REFERENCE, mode=MODE)`.

With FIX "fix" (the default) the worker first calls `kr.fix_multi_worker_fit()`, as a user
would; with "nofix" it does not, and prints the error `fit` raised (FIT_ERROR), if any.

Run as: TF_CONFIG=... python tests/scripts/distributed/multi_worker.py REFERENCE [MODE [FIX]]
(MODE: "auto", the default, "record" or "verify")
"""

import sys

import common  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_repro as kr  # noqa: E402

SEED = 7


def main(reference: str, mode: str, fix: bool) -> None:
    if fix:
        common.emit("FIXED", kr.fix_multi_worker_fit(), kr.fix_multi_worker_fit())  # the second call: no change
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
    except Exception as error:  # without the fix, Keras' own failure is the result
        if fix:
            raise
        common.emit("FIT_ERROR", type(error).__name__, str(error).replace("\n", " ")[:2000])
        return
    common.emit_log(callback)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "auto", sys.argv[3:4] != ["nofix"])
