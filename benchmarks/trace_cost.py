"""What a layer trace costs: a traced step / a plain step, on CPU, per Keras backend.

What is measured
----------------
Two models on synthetic MNIST-shaped data (28x28x1 float32, 10 classes, batch 32, Adam,
sparse categorical cross-entropy on logits):

    mlp      Flatten -> Dense(128, relu) -> Dense(10)
    convnet  Conv2D(8, 3, relu) -> MaxPooling2D -> Conv2D(16, 3, relu) -> Flatten -> Dense(10)

    plain    `model.train_on_batch` (Keras' compiled train step, as `fit` runs it), the median
             of `--repeats` x `--steps` steps after warm-up steps
    traced   `kr.trace_layers(model, x, y, steps=--steps)` (steps run as fit runs them, with
             every layer output, the loss, every gradient and every variable checksummed on the
             host, the state kept aside and put back), its wall time divided by the steps, the
             median of `--repeats` calls after one warm-up call (which builds the compiled step,
             as the plain step's warm-up builds Keras' train function)

Both are measured side by side in one process per backend (the parent starts a child per
backend, with KERAS_BACKEND set), in turns: `--steps` plain steps, one trace, and again, so
that a drift in the machine's speed reaches both. The target is a ratio of at most 3. The script prints a
table and always exits 0: it is a report, not a test.

Usage::

    python benchmarks/trace_cost.py [--backends tensorflow,jax,torch] [--steps 5] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TARGET = 3.0
PREFIX = "TRACE_COST "


def _models():
    import keras

    def mlp():
        return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                                 keras.layers.Dense(10)])

    def convnet():
        return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                                 keras.layers.MaxPooling2D(), keras.layers.Conv2D(16, 3, activation="relu"),
                                 keras.layers.Flatten(), keras.layers.Dense(10)])

    return {"mlp": mlp, "convnet": convnet}


def child(steps: int, repeats: int) -> None:
    """Measures both models on this process's backend; prints one JSON line per model."""
    import keras
    import numpy as np

    import keras_repro as kr

    rng = np.random.RandomState(0)
    x = rng.rand(32 * steps, 28, 28, 1).astype("float32")
    y = rng.randint(0, 10, size=(32 * steps,))
    for name, build in _models().items():
        keras.utils.set_random_seed(1)
        model = build()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(3):
            model.train_on_batch(x[:32], y[:32])
        kr.trace_layers(model, x, y, steps=steps, batch_size=32)
        plain, traced = [], []
        for _ in range(repeats):  # the two interleaved, so a drift in the machine's speed hits both
            for step in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x[32 * step: 32 * (step + 1)], y[32 * step: 32 * (step + 1)])
                plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            kr.trace_layers(model, x, y, steps=steps, batch_size=32)
            traced.append((time.perf_counter() - start) / steps)
        print(PREFIX + json.dumps({"backend": keras.backend.backend(), "model": name,
                                   "plain_ms": 1e3 * statistics.median(plain), "traced_ms": 1e3 * statistics.median(traced)}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.repeats)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for backend in args.backends.split(","):
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps),
                                 "--repeats", str(args.repeats)], env=env, capture_output=True, text=True, check=False)
        found = [json.loads(line[len(PREFIX):]) for line in result.stdout.splitlines() if line.startswith(PREFIX)]
        if not found:
            print(f"{backend}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        rows += found
    print(f"| backend | model | plain step (ms) | traced step (ms) | traced / plain | target <= {TARGET:g}x |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["traced_ms"] / row["plain_ms"]
        print(f"| {row['backend']} | {row['model']} | {row['plain_ms']:.2f} | {row['traced_ms']:.2f} | {ratio:.1f}x | "
              f"{'met' if ratio <= TARGET else 'missed'} |")


if __name__ == "__main__":
    main()
