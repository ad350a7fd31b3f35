"""Speed and extra memory of `keras_repro.fingerprinting.digests.fingerprint` against a plain SHA-256.

Models
------
For each size in `--sizes` (millions of model parameters, default 1,10,25,100), two
`keras.Sequential` models of float32 Dense layers are built:

    balanced   Input(w) -> 4 x Dense(w), w chosen so 4 * (w*w + w) ~= size:
               the largest variable holds about 1/4 of the parameters;
    dominant   Input(w) -> Dense(w) -> Dense(10), w chosen so w*w ~= size:
               one kernel holds about all the parameters.

Each model is compiled with Adam and, unless `--weights-only` is given, the
optimizer is built (`model.optimizer.build(model.trainable_variables)`), so
`fingerprint` also hashes Adam's variables (two moments per weight, the iteration
counter, the learning rate): about 3 x the model's parameters. The "hashed"
column of both tables says which ("weights+adam" or "weights").

1. Speed (in this process)
--------------------------
Before timing, the numpy array of every variable that `fingerprint` hashes is
read once with `keras_repro._backend.to_numpy`, for each variable of
`keras_repro.fingerprinting.digests.model_variables(model)` (not timed). Then, after one
untimed warm-up of each, `--repeats` rounds each time with `time.perf_counter`:

    A  `fingerprint(model)`;
    B  the plain baseline: one `hashlib.sha256()` updated, in order, over the
       bytes of those arrays (one thread, no copy, no headers);
    R  reads only: `_backend.to_numpy(v)` for every variable, result dropped
       (not a target; it shows what reading the variables costs inside A).

A and B alternate and swap order every round (A B, B A, A B...), R follows them.
The table gives the medians, the ratio median(A) / median(B) with PASS/FAIL
against the target <= 1.0, and whether `to_numpy` returns a copy (two reads of
the largest variable not sharing memory). The title line also states how much
faster 2+ threads hash 4 MiB chunks than one thread on this machine: that is the
most `fingerprint`'s thread pool can gain over the single-threaded baseline.

2. Extra memory (one fresh child process per model)
---------------------------------------------------
Each measurement runs in `python benchmarks/fingerprint.py --memory-child ...`,
a fresh interpreter that builds the same model, fingerprints a tiny model once
(imports and lazy initialization are not counted), runs `gc.collect()` and
glibc's `malloc_trim(0)` (freed heap pages cannot hide new allocations), then
calls `fingerprint(model)` once while:

  * the kernel's peak resident set, VmHWM, is reset to the current RSS first by
    writing 5 to /proc/self/clear_refs (Linux >= 4.0); VmHWM after the call
    minus VmRSS before it is the exact peak extra RSS (column "peak extra");
  * a background thread reads the RSS from /proc/self/statm every 1 ms; its
    highest sample minus the RSS before is shown as a cross-check, and is used
    as "peak extra" where VmHWM cannot be reset;
  * in a second call under `tracemalloc`, the peak of traced allocations
    (numpy reports its array buffers to tracemalloc; TensorFlow's C++ allocations
    are not traced) shows how much of the peak numpy arrays explain.

The peak extra is compared with the bytes of the largest single variable, the
bound `fingerprint` documents; target ratio <= 1.0.

The script is a report: it prints PASS/FAIL and always exits 0.

Usage::

    python benchmarks/fingerprint.py [--sizes 1,10,25,100] [--repeats 5] [--weights-only]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any, Self

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.fingerprinting.digests import CHUNK_BYTES, _workers, fingerprint
from keras_repro.fingerprinting.variables import model_variables

LAYOUTS = ("balanced", "dominant")
TARGET_SPEED_RATIO = 1.0
TARGET_MEMORY_RATIO = 1.0
SAMPLE_INTERVAL_S = 0.001
CHILD_TIMEOUT_S = 600
RESULT_PREFIX = "FINGERPRINT_BENCHMARK_RESULT "
SEED = 0
MIB = 1 << 20


# Models ------------------------------------------------------------------------------


def dense_units(layout: str, size_m: float) -> tuple[int, list[int]]:
    """(input width, units of each Dense layer) for about `size_m` million parameters."""
    params = size_m * 1e6
    if layout == "dominant":
        width = max(1, round(math.sqrt(params)))
        return width, [width, 10]
    width = max(1, round((-1 + math.sqrt(1 + params)) / 2))  # 4 * (w*w + w) = params
    return width, [width] * 4


def build_model(layout: str, size_m: float, with_optimizer: bool) -> keras.Model:
    """A compiled Sequential of Dense layers; its Adam optimizer is built if asked."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    width, units = dense_units(layout, size_m)
    model = keras.Sequential([keras.Input((width,))] + [keras.layers.Dense(u) for u in units])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    if with_optimizer:
        model.optimizer.build(model.trainable_variables)
    return model


@dataclasses.dataclass
class ModelInfo:
    """What a benchmarked model is and what `fingerprint` hashes of it."""

    layout: str
    size_m: float
    hashed: str
    shape: str
    params: int
    variables: int
    hashed_bytes: int
    largest_bytes: int


def describe(model: keras.Model, layout: str, size_m: float, with_optimizer: bool) -> ModelInfo:
    """Parameter count, number and bytes of the hashed variables, the largest one."""
    sizes = [variable_bytes(v) for _, v in model_variables(model)]
    dims = [int(model.inputs[0].shape[-1])] + [int(layer.units) for layer in model.layers]
    return ModelInfo(
        layout=layout,
        size_m=size_m,
        hashed="weights+adam" if with_optimizer else "weights",
        shape="x".join(str(d) for d in dims),
        params=int(model.count_params()),
        variables=len(sizes),
        hashed_bytes=sum(sizes),
        largest_bytes=max(sizes),
    )


def variable_bytes(variable: Any) -> int:
    """Bytes of a variable, from its shape and dtype."""
    return math.prod(int(d) for d in variable.shape) * np.dtype(str(variable.dtype)).itemsize


# Speed -------------------------------------------------------------------------------


def byte_views(model: keras.Model) -> list[memoryview]:
    """Flat byte views of the arrays of every fingerprinted variable (read once, untimed)."""
    views = []
    for _, variable in model_variables(model):
        array = np.ascontiguousarray(_backend.to_numpy(variable)).reshape(-1)
        views.append(memoryview(array).cast("B") if array.size else memoryview(b""))
    return views


def plain_sha256(views: Sequence[memoryview]) -> str:
    """B: one SHA-256 updated sequentially over every array's bytes."""
    hasher = hashlib.sha256()
    for view in views:
        hasher.update(view)
    return hasher.hexdigest()


def read_all(variables: Sequence[Any]) -> None:
    """R: `to_numpy` of every variable, result dropped at once."""
    for variable in variables:
        _backend.to_numpy(variable)


def to_numpy_copies(variable: Any) -> bool:
    """Whether two `to_numpy` reads of a variable return separate buffers (a copy each)."""
    return not np.shares_memory(_backend.to_numpy(variable), _backend.to_numpy(variable))


def timed(function: Callable[..., Any], *args: Any) -> float:
    """Seconds taken by one call."""
    gc.collect()
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


@dataclasses.dataclass
class SpeedResult:
    """Timings of one model: lists of seconds per measurement, in run order."""

    info: ModelInfo
    fingerprint_s: list[float]
    sha256_s: list[float]
    reads_s: list[float]
    copies: bool

    @property
    def ratio(self) -> float:
        """median(fingerprint) / median(plain sha256)."""
        return statistics.median(self.fingerprint_s) / statistics.median(self.sha256_s)


def measure_speed(layout: str, size_m: float, repeats: int, with_optimizer: bool) -> SpeedResult:
    """Warm-up, then `repeats` rounds of A and B in alternating order, then R."""
    model = build_model(layout, size_m, with_optimizer)
    info = describe(model, layout, size_m, with_optimizer)
    variables = [v for _, v in model_variables(model)]
    views = byte_views(model)
    largest = max(variables, key=variable_bytes)
    fingerprint(model), plain_sha256(views), read_all(variables)  # warm-up
    result = SpeedResult(info, [], [], [], to_numpy_copies(largest))
    for repeat in range(repeats):
        first_a = repeat % 2 == 0
        for is_a in (first_a, not first_a):
            if is_a:
                result.fingerprint_s.append(timed(fingerprint, model))
            else:
                result.sha256_s.append(timed(plain_sha256, views))
        result.reads_s.append(timed(read_all, variables))
    del views, variables, largest, model
    gc.collect()
    return result


def thread_speedup(total_bytes: int = 64 * MIB, rounds: int = 3) -> tuple[int, float]:
    """(threads, how much faster `threads` threads hash 4 MiB chunks than one thread)."""
    data = memoryview(np.random.default_rng(SEED).bytes(total_bytes))
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, total_bytes, CHUNK_BYTES)]
    threads = _workers()

    def run(workers: int) -> float:
        with concurrent.futures.ThreadPoolExecutor(workers) as executor:
            list(executor.map(lambda c: hashlib.sha256(c).digest(), chunks))  # warm-up
            return statistics.median(
                timed(lambda: list(executor.map(lambda c: hashlib.sha256(c).digest(), chunks))) for _ in range(rounds)
            )

    return threads, run(1) / run(threads)


# Memory (child process) --------------------------------------------------------------


def read_status(field: str) -> int:
    """A field of /proc/self/status (e.g. VmRSS, VmHWM) in bytes; -1 if unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (write 5 to /proc/self/clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Gives free glibc heap memory back to the system."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler:
    """A background thread keeping the highest RSS read from /proc/self/statm every `interval` s."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.peak = -1
        self.samples = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        """The current resident set in bytes."""
        return int(os.pread(self._fd, 256, 0).split()[1]) * self._page

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            self.samples += 1
            if self._stop.wait(self.interval):
                break
        self.peak = max(self.peak, self.rss())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


def warm_up() -> None:
    """Fingerprints a tiny model, so imports and lazy initialization are not measured."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    fingerprint(model)


def measure_memory(layout: str, size_m: float, with_optimizer: bool) -> dict[str, Any]:
    """Peak extra RSS of one `fingerprint(model)` call, in this (fresh) process."""
    model = build_model(layout, size_m, with_optimizer)
    info = describe(model, layout, size_m, with_optimizer)
    warm_up()
    gc.collect()
    malloc_trim()
    hwm_reset = reset_peak_rss()
    with RssSampler() as sampler:
        before = read_status("VmRSS")
        fingerprint(model)
    hwm = read_status("VmHWM") if hwm_reset else -1
    gc.collect()
    malloc_trim()
    tracemalloc.start()
    fingerprint(model)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "info": dataclasses.asdict(info),
        "rss_before": before,
        "hwm_extra": hwm - before if hwm >= 0 else None,
        "sampled_extra": sampler.peak - before,
        "samples": sampler.samples,
        "traced_peak": traced_peak,
    }


# Memory (parent side) ----------------------------------------------------------------


def memory_in_child(layout: str, size_m: float, with_optimizer: bool) -> dict[str, Any]:
    """Runs one fresh child process; its result, or {"error": ...}."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        f"{layout}:{size_m:g}",
    ]
    if not with_optimizer:
        command.append("--weights-only")
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"child exited {done.returncode}: {tail}"}


# Report ------------------------------------------------------------------------------


def mib(value: float) -> str:
    """Bytes as MiB with one decimal."""
    return f"{value / MIB:.1f}"


def verdict(ratio: float, target: float) -> str:
    """PASS or FAIL against a target ratio."""
    return "PASS" if ratio <= target else "FAIL"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text table, columns aligned (text left, numbers right)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if cell[:1].isdigit() or cell[:1] == "-" else cell.ljust(width)
            for cell, width in zip(cells, widths)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]


def processor() -> str:
    """A readable CPU name: platform.processor(), else /proc/cpuinfo, else the machine type."""
    name = platform.processor()
    if name:
        return name
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def title(argv: Sequence[str], threads: int, speedup: float) -> list[str]:
    """Title lines: machine, backend and versions, thread scaling, reproducing command."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = " ".join(shlex.quote(part) for part in ["python", "benchmarks/fingerprint.py", *argv])
    return [
        (
            f"keras_repro.fingerprint benchmark | {processor()} ({platform.machine()}), cpu_count {os.cpu_count()}, "
            f"usable {usable} | {platform.system()} {platform.release()} | Python {platform.python_version()} | "
            f"backend {_backend.name()} {_backend.version()} | Keras {keras.__version__} | numpy {np.__version__}"
        ),
        (
            f"SHA-256 of 4 MiB chunks with {threads} threads is x{speedup:.2f} as fast as with 1 thread on this "
            "machine (the most fingerprint's thread pool can gain over the 1-thread baseline)"
        ),
        f"reproduce: {command}",
    ]


def speed_lines(results: Sequence[SpeedResult]) -> list[str]:
    """Table 1 and the raw timings."""
    headers = (
        "layout",
        "hashed",
        "Dense widths",
        "model params",
        "vars",
        "hashed MiB",
        "largest MiB",
        "B sha256 s",
        "A fingerprint s",
        "A/B",
        f"<= {TARGET_SPEED_RATIO:.1f}",
        "R to_numpy s",
        "to_numpy copies",
    )
    rows = []
    for result in results:
        info = result.info
        rows.append(
            (
                info.layout,
                info.hashed,
                info.shape,
                f"{info.params:,}",
                str(info.variables),
                mib(info.hashed_bytes),
                mib(info.largest_bytes),
                f"{statistics.median(result.sha256_s):.4f}",
                f"{statistics.median(result.fingerprint_s):.4f}",
                f"{result.ratio:.3f}",
                verdict(result.ratio, TARGET_SPEED_RATIO),
                f"{statistics.median(result.reads_s):.4f}",
                "yes" if result.copies else "no",
            )
        )
    repeats = len(results[0].fingerprint_s) if results else 0
    lines = [
        (
            f"1. Speed: medians of {repeats} interleaved rounds, seconds. A = fingerprint(model); B = hashlib.sha256 "
            "updated over the same numpy arrays (read beforehand, untimed); R = to_numpy of every variable only."
        ),
        *table(headers, rows),
        "timings, s (run order):",
    ]
    for result in results:
        lines.append(
            f"  {result.info.layout} {result.info.params:,}: A "
            + " ".join(f"{t:.4f}" for t in result.fingerprint_s)
            + " | B "
            + " ".join(f"{t:.4f}" for t in result.sha256_s)
        )
    return lines


def memory_lines(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """Table 2."""
    headers = (
        "layout",
        "hashed",
        "model params",
        "largest var MiB",
        "RSS before MiB",
        "peak extra MiB",
        "extra/largest",
        f"<= {TARGET_MEMORY_RATIO:.1f}",
        "1ms-sampled extra MiB",
        "samples",
        "numpy traced peak MiB",
    )
    rows = []
    errors = []
    for label, result in zip(labels, results):
        if "error" in result:
            errors.append(f"  {label}: ERROR {result['error']}")
            continue
        info = result["info"]
        extra = result["hwm_extra"] if result["hwm_extra"] is not None else result["sampled_extra"]
        ratio = extra / info["largest_bytes"]
        rows.append(
            (
                info["layout"],
                info["hashed"],
                f"{info['params']:,}",
                mib(info["largest_bytes"]),
                mib(result["rss_before"]),
                mib(extra),
                f"{ratio:.3f}",
                verdict(ratio, TARGET_MEMORY_RATIO),
                mib(result["sampled_extra"]),
                str(result["samples"]),
                mib(result["traced_peak"]),
            )
        )
    source = (
        "VmHWM (reset before the call) - VmRSS before"
        if any(r.get("hwm_extra") is not None for r in results)
        else "highest 1 ms RSS sample - VmRSS before (VmHWM could not be reset)"
    )
    return [
        f"2. Extra memory of one fingerprint(model) call, fresh process per model; peak extra = {source}.",
        *table(headers, rows),
        *errors,
    ]


# Entry point -------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1,10,25,100",
        help="millions of model parameters (default 1,10,25,100)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model (default 5)")
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="do not build Adam: hash the model weights only",
    )
    parser.add_argument("--skip-memory", action="store_true", help="print the speed table only")
    parser.add_argument("--memory-child", metavar="LAYOUT:SIZE", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    try:
        arguments.sizes = [float(part) for part in arguments.sizes.split(",") if part.strip()]
    except ValueError:
        parser.error("--sizes must be comma-separated numbers, e.g. 1,10,25")
    if not arguments.sizes or min(arguments.sizes) <= 0 or arguments.repeats < 1:
        parser.error("--sizes must be positive numbers and --repeats >= 1")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """Parent: speed here, memory in a child per model, then the report. Child: one memory run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    with_optimizer = not arguments.weights_only
    if arguments.memory_child:
        layout, size = arguments.memory_child.split(":")
        print(
            RESULT_PREFIX + json.dumps(measure_memory(layout, float(size), with_optimizer)),
            flush=True,
        )
        return 0
    models = [(layout, size) for size in arguments.sizes for layout in LAYOUTS]
    lines = title(argv, *thread_speedup()) + [""]
    try:
        lines += speed_lines(
            [measure_speed(layout, size, arguments.repeats, with_optimizer) for layout, size in models]
        )
    except Exception as error:  # noqa: BLE001 - a report: show the failure, go on
        lines.append(f"1. Speed: ERROR {type(error).__name__}: {error}")
    if not arguments.skip_memory:
        memory = [memory_in_child(layout, size, with_optimizer) for layout, size in models]
        lines += [""] + memory_lines(memory, [f"{layout} {size:g}M" for layout, size in models])
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - a report: print the failure, exit 0 all the same
        traceback.print_exc()
    sys.exit(0)
