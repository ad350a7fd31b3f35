"""Reference writes at constant cost: how long writing epoch n of a recording takes as the
file grows, and how the file's size grows.

One recording of a small model (1,000 epochs of 100 batches, batch fingerprints every 10th
batch, `SeedCallback(mode="record")`). Every call of `keras_repro.store.hdf5.write_run` (one per
epoch) is timed in this process, and the file's size read after it. The table shows, for
windows of epochs, the median write time and the file size; the targets (issue 14): the
write of epoch 1,000 at most 2x that of epoch 10 (medians of the appended epochs 6-15 and
990-999), and the size linear in epochs (bytes per epoch over the second half within 10%
of the first half). The recording's last epoch is written whole, once (so that HDF5 tools
read the finished file); it is timed on its own line.
`--whole` writes every epoch whole, as before appending existed, for comparison (use fewer
epochs: its cost grows with the file). The backend is the one Keras picks (KERAS_BACKEND).
Always exits 0: it is a report.

Usage::

    python benchmarks/reference_growth.py [--epochs 1000] [--batches 100] [--whole]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_repro as kr  # noqa: E402
from keras_repro.store import hdf5 as store
from keras_repro.store import reference  # noqa: E402

TARGET_RATIO = 2.0
TARGET_LINEARITY = 0.10
BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=100, help="batches per epoch")
    parser.add_argument("--every", type=int, default=10, help="every_n_batches")
    parser.add_argument("--whole", action="store_true", help="write every epoch whole (no appending)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="reference-growth-")
    path = os.path.join(folder, "run.h5")
    writes: list[tuple[float, int]] = []  # (seconds, file size after)
    write_run = store.write_run

    def timed_write_run(*a, **k):
        if args.whole:
            k["state"] = None
        start = time.perf_counter()
        write_run(*a, **k)
        writes.append((time.perf_counter() - start, os.path.getsize(path)))

    store.write_run = timed_write_run
    assert reference.store is store  # the reference file writes through the timed function

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batches * BATCH, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    warnings.simplefilter("ignore", kr.errors.HashRandomizationWarning)  # not what this measures
    kr.seed_everything(7)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = kr.SeedCallback(7, path, mode="record", every_n_batches=args.every)
    started = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback])
    elapsed = time.perf_counter() - started

    epoch_writes = writes[1:]  # writes[0] is the initial state, before epoch 1
    n = len(epoch_writes)
    print(f"backend {keras.backend.backend()}, {args.epochs} epochs x {args.batches} batches, "
          f"every_n_batches={args.every}, {'whole writes' if args.whole else 'appending'}; fit {elapsed:.0f} s")
    print(f"{'epochs':<14}{'median write ms':>16}{'file MB after':>15}")
    windows = [(6, 15), (91, 100), (491, 500), (990, 999)]
    medians = {}
    for first, last in windows:
        if last >= n:
            continue
        window = epoch_writes[first - 1 : last]
        medians[(first, last)] = statistics.median(s for s, _ in window)
        print(f"{first:>4}-{last:<9}{medians[(first, last)] * 1e3:>16.2f}{window[-1][1] / 2**20:>15.3f}")
    seconds, size = epoch_writes[-1]
    print(f"{n:>4} (last)     {seconds * 1e3:>16.2f}{size / 2**20:>15.3f}   written whole, once")
    if (990, 999) in medians:
        ratio = medians[(990, 999)] / medians[(6, 15)]
        print(f"write near epoch 1000 / near epoch 10: {ratio:.2f}  <= {TARGET_RATIO:.1f} "
              f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    if n >= 5:
        grown = [size for _, size in epoch_writes[:-1]]  # the appended epochs (the last is whole)
        half = len(grown) // 2
        first_half = (grown[half - 1] - writes[0][1]) / half
        second_half = (grown[-1] - grown[half - 1]) / (len(grown) - half)
        change = second_half / first_half - 1
        print(f"bytes per epoch: first half {first_half:.0f}, second half {second_half:.0f} ({change:+.1%})  "
              f"within {TARGET_LINEARITY:.0%} {'PASS' if abs(change) <= TARGET_LINEARITY else 'FAIL'}")


if __name__ == "__main__":
    main()
