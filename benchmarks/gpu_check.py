"""The accelerator check: what keras_repro promises on a GPU, measured, in one table.

For every backend importable here (on the lent H200: JAX and PyTorch with CUDA; TensorFlow
when installed), in fresh processes:

  kernels on    a DeterministicModel (Embedding, Conv1D, BatchNormalization, Dropout)
                recorded in one process and verified in another, deterministic kernels
                on (the default): "identical" is the promise;
  preflight     `kr.preflight()` without a model: the environment checks and the known-issue
                table's verdict for the installed versions, those not ok;
  kernels off   the same pair with KERAS_REPRO_DETERMINISTIC_KERNELS=0 and
                DeterministicModel(deterministic_kernels=False): a report, not a promise;
                where the runs differ, `Comparison.verdict` (noise or different) says which;
  resume        the conformance cells `functional` and `sequential` (2 epochs, save,
                load_model in a new process, the rest == straight; tests/scripts/conformance.py);
  fingerprint   `fingerprint()` of a Dense model of `--parameters` parameters with Adam
                state, on the accelerator: seconds and GB/s (median of 5, one warm-up);
  batch every1  fit time with SeedCallback(every_n_batches=1) / without (benchmarks/
  / every10     batch_fingerprint.py --repeats 3), and every 10th batch.

Prints one Markdown table (the GPU column of docs/guarantees.md) and writes it, with each child's
output, to --out. Always exits 0: it is a report.

On the lent machine Keras is carried as wheels (see the device tool's README), e.g.:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --out $OUT
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch", "tensorflow")

PAIR = r'''
import json, os, sys
import keras, numpy as np
import keras_repro as kr
mode, path, kernels = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
rng = np.random.default_rng(0)
x = rng.integers(0, 500, size=(2048, 64)).astype("int32")
y = rng.integers(0, 10, size=(2048,)).astype("int32")
inputs = keras.Input((64,), dtype="int32")
h = keras.layers.Embedding(500, 64)(inputs)
h = keras.layers.Conv1D(64, 5, activation="relu")(h)
h = keras.layers.BatchNormalization()(h)
h = keras.layers.GlobalAveragePooling1D()(h)
h = keras.layers.Dropout(0.3)(h)
model = kr.DeterministicModel(inputs, keras.layers.Dense(10, activation="softmax")(h), seed=7,
                              deterministic_kernels=kernels)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
callback = kr.SeedCallback(7, path, mode=mode, on_mismatch="warn")
model.fit(x, y, epochs=3, batch_size=64, validation_split=0.2, verbose=0, callbacks=[callback])
verdict = None
if mode == "verify" and callback.divergence is not None:
    try:
        comparison = kr.load_fingerprints(path).compare(callback.log)
        verdict = f"{comparison.verdict}: {comparison.explanation}"
    except Exception as error:  # a report: say so and go on
        verdict = f"not judged ({type(error).__name__}: {error})"
print("RESULT " + json.dumps({"divergence": None if callback.divergence is None else str(callback.divergence),
                             "kernels": callback.log.environment.get("deterministic_kernels"),
                             "devices": callback.log.environment.get("devices"), "verdict": verdict}))
'''

PREFLIGHT = r'''
import json
import keras_repro as kr
report = kr.preflight()
flagged = [f"{f.status} {f.name}" for f in (*report.environment, *report.known_issues) if f.status != "ok"]
print("RESULT " + json.dumps({"flagged": flagged, "text": str(report)}))
'''

FINGERPRINT = r'''
import json, statistics, sys, time
import keras, numpy as np
import keras_repro as kr
parameters = int(sys.argv[1])
width = int((parameters / 4) ** 0.5)
model = keras.Sequential([keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(4)])
model.compile(optimizer="adam", loss="mse")
model.optimizer.build(model.trainable_variables)
nbytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.variables + model.optimizer.variables)
kr.fingerprint(model)
times = []
for _ in range(5):
    start = time.perf_counter(); kr.fingerprint(model); times.append(time.perf_counter() - start)
median = statistics.median(times)
print("RESULT " + json.dumps({"seconds": median, "gb_per_s": nbytes / median / 1e9, "bytes": nbytes}))
'''


def _child(backend: str, code: str, args: list[str], env: dict | None = None, timeout: int = 900) -> tuple[dict | None, str]:
    """Runs `code` for a backend in a fresh process; returns (its RESULT json, its output)."""
    full = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", **(env or {}))
    full["PYTHONPATH"] = os.pathsep.join([REPO, full.get("PYTHONPATH", "")])
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return (json.loads(lines[-1][7:]) if lines else None), output


def _pair(backend: str, folder: str, kernels: bool) -> tuple[str, str]:
    """Record then verify in two processes; the cell text and the log."""
    path = os.path.join(folder, f"{backend}-{'on' if kernels else 'off'}.h5")
    env = {} if kernels else {"KERAS_REPRO_DETERMINISTIC_KERNELS": "0"}
    switch = "on" if kernels else "off"
    recorded, log1 = _child(backend, PAIR, ["record", path, switch], env)
    verified, log2 = _child(backend, PAIR, ["verify", path, switch], env)
    if not recorded or not verified:
        return "error (see log)", log1 + log2
    verdict = "identical" if verified["divergence"] is None else f"differs: {verified['divergence']} (verdict {verified.get('verdict')})"
    return f"{verdict} [kernels {verified['kernels']}]", log1 + log2


def _preflight(backend: str) -> tuple[str, str]:
    """`kr.preflight()` without a model: the stack checks that are not ok."""
    result, log = _child(backend, PREFLIGHT, [])
    if not result:
        return "error (see log)", log
    return ("; ".join(result["flagged"]) or "all ok"), result["text"]


def _resume(backend: str, folder: str) -> tuple[str, str]:
    """The conformance matrix's resume cells."""
    script = os.path.join(REPO, "tests", "scripts", "conformance.py")
    work = os.path.join(folder, f"{backend}-conformance")
    os.makedirs(work, exist_ok=True)
    log = ""
    for phase, hash_seed in (("first", "0"), ("second", "random")):
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONHASHSEED=hash_seed, TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, script, phase, work, "--cells", "functional,sequential"],
                              capture_output=True, text=True, env=env, timeout=900)
        log += done.stdout[-3000:] + done.stderr[-3000:]
    try:
        with open(os.path.join(work, "second.json")) as handle:
            results = json.load(handle)
    except OSError:
        return "error (see log)", log
    failed = [f"{cell}: {c[1]}" for cell, r in results.items() for c in r["checks"] if c[0] == "resume" and not c[2]]
    errors = [cell for cell, r in results.items() if r["error"]]
    return ("identical" if not failed and not errors else f"FAILS: {'; '.join(failed + errors)[:200]}"), log


def _fingerprint(backend: str, parameters: int) -> tuple[str, str]:
    result, log = _child(backend, FINGERPRINT, [str(parameters)])
    if not result:
        return "error (see log)", log
    return f"{result['seconds']:.3f} s, {result['gb_per_s']:.1f} GB/s ({result['bytes'] / 2**30:.2f} GiB)", log


def _batches(backend: str) -> tuple[str, str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "batch_fingerprint.py"), "--repeats", "3"],
                          capture_output=True, text=True, env=env, timeout=900)
    ratios = {line.split()[0]: line.split()[2] for line in done.stdout.splitlines()
              if line.split() and line.split()[0] in ("every1", "every10")}
    if not ratios:
        return "error (see log)", done.stdout[-3000:] + done.stderr[-3000:]
    return f"every1 {ratios.get('every1')}, every10 {ratios.get('every10')}", done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder for the table and the logs")
    parser.add_argument("--parameters", type=int, default=100_000_000, help="fingerprint model size (default 100M)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="gpu-check-")
    os.makedirs(out, exist_ok=True)
    backends = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    rows: dict[str, dict[str, str]] = {}
    logs: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            for name, run in (
                ("preflight: stack checks not ok", lambda: _preflight(backend)),
                ("record/verify, kernels on", lambda: _pair(backend, folder, True)),
                ("record/verify, kernels off", lambda: _pair(backend, folder, False)),
                ("resume in a new process", lambda: _resume(backend, folder)),
                (f"fingerprint(), {args.parameters / 1e6:g}M parameters + Adam", lambda: _fingerprint(backend, args.parameters)),
                ("batch checksums / none", lambda: _batches(backend)),
            ):
                cell, log = run()
                rows.setdefault(name, {})[backend] = cell
                logs.append(f"===== {backend}: {name}\n{log}")
                print(f"{backend:10} {name:30} {cell}", flush=True)
    table = ["| check | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    table += [f"| {name} | " + " | ".join(cells.get(b, "-") for b in backends) + " |" for name, cells in rows.items()]
    text = "\n".join(table)
    print(f"\n{text}\n\n({time.perf_counter() - start:.0f} s)")
    with open(os.path.join(out, "gpu_check.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(out, "gpu_check.log"), "w") as handle:
        handle.write("\n".join(logs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
