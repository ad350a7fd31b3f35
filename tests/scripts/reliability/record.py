"""Records a fingerprint file for the reliability tests, epoch by epoch, saying so on stdout.

Run as: python tests/scripts/reliability/record.py REFERENCE [--epochs N] [--seed S]
        [--slow-write SECONDS] [--epoch-sleep SECONDS] [--markers]

Prints "FIT" just before `fit` starts, "EPOCH k DIGEST" (flushed) right after
`SeedCallback` has written epoch k to REFERENCE (a callback placed after it), and
"DONE" at the end. A `ReferenceFileError` is printed as "ERROR message" (exit 3).

--slow-write sleeps twice inside every whole write of the reference: after the initial
fingerprint group is written to the temporary file (the epochs still to come), and
after the rename (before write_run returns); and once inside every appended epoch
(keras_repro.store.tail): after its record is written, before the header that commits
it; so that more kills land inside a write, at its most delicate point. --markers prints "W+" before and "W-"
after every write, so a test can tell which kills landed inside one.
--epoch-sleep sleeps at every epoch begin (after SeedCallback has run), to make a
fit last long enough for two processes to overlap.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.store import hdf5 as store  # noqa: E402
from keras_repro.store import tail as store_tail


def _say(*words) -> None:
    print(*words, flush=True)


def _instrument_writes(slow: float, markers: bool) -> None:
    """Wraps the writer (in this process only) to slow it down and/or mark it."""
    write_run, write_fingerprint, fsync_folder = store.write_run, store._write_fingerprint, store._fsync_folder
    write_header = store_tail._write_header

    def slow_fingerprint(group, fingerprint):
        write_fingerprint(group, fingerprint)
        if group.name == "/initial":  # once per write, with the epochs still to come
            time.sleep(slow)

    def slow_fsync_folder(folder):
        time.sleep(slow)  # the rename is done, write_run has not returned yet
        fsync_folder(folder)

    def marked_write_run(*args, **kwargs):
        _say("W+", time.time())
        write_run(*args, **kwargs)
        _say("W-", time.time())

    def slow_header(handle, header):
        if header.count:  # a record is written, the header that commits it is not
            time.sleep(slow)
        write_header(handle, header)

    if slow:
        store._write_fingerprint = slow_fingerprint
        store._fsync_folder = slow_fsync_folder
        store_tail._write_header = slow_header
    if markers:
        store.write_run = marked_write_run


class Announce(keras.callbacks.Callback):
    """Placed after SeedCallback: prints each epoch once SeedCallback has recorded it."""

    def __init__(self, epoch_sleep: float) -> None:
        super().__init__()
        self.epoch_sleep = epoch_sleep

    def on_epoch_begin(self, epoch, logs=None):
        if self.epoch_sleep:
            time.sleep(self.epoch_sleep)

    def on_epoch_end(self, epoch, logs=None):
        _say("EPOCH", epoch, self.model.history.fingerprints.epochs[-1].digest)


def build(seed: int) -> kr.DeterministicModel:
    model = kr.DeterministicSequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(3, activation="softmax"),
        ],
        seed=seed,
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("reference")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--slow-write", type=float, default=0.0)
    parser.add_argument("--epoch-sleep", type=float, default=0.0)
    parser.add_argument("--markers", action="store_true")
    args = parser.parse_args()
    _instrument_writes(args.slow_write, args.markers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (np.abs(x[:, 0] * 3).astype(int) % 3).astype("int32")
    model = build(args.seed)
    callbacks = [kr.SeedCallback(args.seed, args.reference, mode="record"), Announce(args.epoch_sleep)]
    _say("FIT", time.time())
    try:
        model.fit(x, y, epochs=args.epochs, batch_size=16, verbose=0, callbacks=callbacks)
    except kr.ReferenceFileError as error:
        _say("ERROR", error)
        raise SystemExit(3)
    _say("DONE", time.time())


if __name__ == "__main__":
    main()
