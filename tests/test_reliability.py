"""Reliability of the fingerprint file: SIGKILL during recording, damaged files, and two
processes recording to the same reference at once."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import filelock
import h5py
import numpy as np
import pytest

from keras_repro import SeedCallback, cli, load_fingerprints
from keras_repro.callbacks import lock_path
from keras_repro.store import hdf5 as store
from tests.conftest import REPO, make_data, make_model, run_child, start_child

SCRIPTS = os.path.join(REPO, "tests", "scripts", "reliability")
RECORD = os.path.join(SCRIPTS, "record.py")
LOAD_CORPUS = os.path.join(SCRIPTS, "load_corpus.py")
BACKEND = "jax"  # the fastest to start and to train the tiny model; the file code is backend-free


def _env(**extra):
    return {"KERAS_BACKEND": BACKEND, "PYTHONHASHSEED": "0", **extra}


def _parse(stdout_lines):
    """{"EPOCH": [(k, digest)], "markers": ["W+", "W-", ...], "FIT": t, "DONE": t, "ERROR": text}."""
    parsed = {"EPOCH": [], "markers": []}
    for line in stdout_lines:
        word, _, rest = line.rstrip("\n").partition(" ")
        if word == "EPOCH":
            epoch, digest = rest.split()
            parsed["EPOCH"].append((int(epoch), digest))
        elif word in ("W+", "W-"):
            parsed["markers"].append(word)
        elif word in ("FIT", "DONE"):
            parsed[word] = float(rest)
        elif word == "ERROR":
            parsed[word] = rest
    return parsed


# 1. Crash safety ---------------------------------------------------------------------------

KILL_EPOCHS = 100
TEMPORARY = re.compile(r"\.run\.h5\..+\.tmp")


def _run_and_kill(folder, anchor, delay, slow):
    """Starts a recording, SIGKILLs it `delay` s after it printed the line starting with `anchor`
    ("FIT ": fit starts; "W+ ": the first write starts; "EPOCH 0 ": the first epoch, with the
    step compilation, is recorded);
    returns (returncode, stdout lines)."""
    reference = folder / "run.h5"
    command = [sys.executable, RECORD, str(reference), "--epochs", str(KILL_EPOCHS), "--markers"]
    if slow:
        command += ["--slow-write", str(slow)]
    process = start_child(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines, started = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if line.startswith(anchor):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(180), f"the recording never printed {anchor!r}"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)
    reader.join(60)
    return process.returncode, lines


def _check_after_kill(folder, parsed, full):
    """The reference is absent or a valid prefix of the full run; returns what the kill hit."""
    names = set(os.listdir(folder))
    temporaries = {name for name in names if TEMPORARY.fullmatch(name)}
    assert names - temporaries <= {"run.h5", ".run.h5.lock"}, f"stray files: {names}"
    assert len(temporaries) <= 1, f"more than one leftover temporary: {temporaries}"
    markers, printed = parsed["markers"], parsed["EPOCH"]
    in_write = bool(markers) and markers[-1] == "W+"
    completed = markers.count("W-")
    if temporaries:
        assert in_write, "a temporary file was left although no write was interrupted"
    assert [epoch for epoch, _ in printed] == list(range(len(printed)))
    # The lock of a killed process is released by the OS: the next recording is not refused.
    lock = filelock.FileLock(lock_path(str(folder / "run.h5")))
    lock.acquire(timeout=0)
    lock.release()
    if "run.h5" not in names:
        assert not printed and completed == 0, "the reference vanished after a completed write"
        return "no reference yet", in_write, bool(temporaries)
    log = load_fingerprints(folder / "run.h5")  # never partial: ReferenceFileError would fail the test
    epochs = len(log.epochs)
    assert [fp.epoch for fp in log.epochs] == list(range(epochs))
    assert len(printed) <= epochs <= len(printed) + 1, (len(printed), epochs)
    # The first write holds no epoch; write k+1 holds epochs 0..k. Killed inside a write, the
    # rename may or may not have happened.
    assert epochs in ((completed - 1, completed) if in_write else (completed - 1,)), (completed, epochs, in_write)
    assert [fp.digest for fp in log.epochs[: len(printed)]] == [digest for _, digest in printed]
    assert log.initial is not None and log.initial.digest == full.initial.digest
    assert [fp.digest for fp in log.epochs] == [fp.digest for fp in full.epochs[:epochs]]
    assert log.seed == 7
    return ("inside a write" if in_write else "between writes"), in_write, bool(temporaries)


def _record_in_full(folder):
    """An uninterrupted recording; returns its stdout lines."""
    result = run_child([sys.executable, RECORD, folder / "run.h5", "--epochs", KILL_EPOCHS], env=_env())
    return result.stdout.splitlines()


@pytest.mark.slow
def test_sigkill_during_recording_leaves_a_valid_reference(tmp_path):
    """20 recordings (JAX, 100 epochs of a tiny model, the reference rewritten at every epoch)
    SIGKILLed at seeded random moments: 4 within 0.1 s of fit's start (mostly before the first
    write), 4 within 0.04 s of the start of the first write (of the initial state), 12 within
    1.2 s after epoch 0 was recorded (epoch 0 holds the step compilation; later epochs take about
    10 ms plus a write of 4 to 45 ms, growing with the file); half with writes slowed by 2 x 20 ms
    (mid-file and after the rename). After each kill the reference is absent or a valid file
    with epochs 0..m-1, equal to the first m epochs of an uninterrupted run, where m is the
    number of epochs announced or one more. Only a temporary of the interrupted write may be
    left, and the lock is free. Writes take about 70% (85% slowed) of the fit; the markers
    printed around every write count the kills that landed inside one: at least 5 must."""
    rng = np.random.default_rng(20240607)
    plans = [("FIT ", float(rng.uniform(0.0, 0.1)), 0.02 if i % 2 else 0.0) for i in range(4)]
    plans += [("W+ ", float(rng.uniform(0.0, 0.04)), 0.02 if i % 2 else 0.0) for i in range(4)]
    plans += [("EPOCH 0 ", float(rng.uniform(0.0, 1.2)), 0.02 if i % 2 else 0.0) for i in range(12)]
    full_folder = tmp_path / "full"
    full_folder.mkdir()

    def one(index):
        folder = tmp_path / f"kill{index:02d}"
        folder.mkdir()
        return _run_and_kill(folder, *plans[index])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = pool.map(one, range(len(plans)))
        full_lines = pool.submit(_record_in_full, full_folder)
        runs = list(runs)
    full = load_fingerprints(full_folder / "run.h5")
    assert [d for _, d in _parse(full_lines.result())["EPOCH"]] == [fp.digest for fp in full.epochs]

    outcomes = collections.Counter()
    killed = in_writes = leftovers = 0
    for index, (returncode, lines) in enumerate(runs):
        parsed = _parse(lines)
        where, in_write, leftover = _check_after_kill(tmp_path / f"kill{index:02d}", parsed, full)
        if returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert returncode == 0 and "DONE" in parsed, (index, returncode, lines[-3:])
        outcomes[where] += 1
        in_writes += in_write
        leftovers += leftover
    print(f"\nkills: {killed}, outcomes: {dict(outcomes)}, inside a write: {in_writes}, "
          f"temporaries left: {leftovers}")
    assert killed >= 20
    assert in_writes >= 5, f"only {in_writes} kills landed inside a write"


def test_atomic_write_keeps_normal_file_permissions(tmp_path):
    """The reference gets the permissions of a normally created file (umask), not mkstemp's 0600,
    so other users and services (CI, a shared folder) can read it."""
    x, y = make_data()
    model = make_model(7)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[SeedCallback(7, tmp_path / "run.h5", mode="record")])
    previous = os.umask(0o022)
    try:
        log = load_fingerprints(tmp_path / "run.h5")
        log.save(tmp_path / "saved.h5")
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(previous)
    expected = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "saved.h5").st_mode) == expected == 0o644


def test_recording_removes_temporaries_of_killed_writes(tmp_path):
    """A write killed midway leaves `.run.h5.XXXX.tmp`; the next recording (holding the lock)
    deletes it, and leaves the temporaries of other references alone."""
    stale, other = tmp_path / ".run.h5.k1l2d.tmp", tmp_path / ".other.h5.k1l2d.tmp"
    stale.write_bytes(b"half a file")
    other.write_bytes(b"someone else's write")
    x, y = make_data()
    callback = SeedCallback(7, tmp_path / "run.h5", mode="record")
    make_model(7).fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    assert not stale.exists()
    assert other.exists()
    assert len(load_fingerprints(tmp_path / "run.h5").epochs) == 1


# 2. Corruption ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real fingerprint file of a 3-epoch run, with batch fingerprints (every 2nd batch)."""
    path = tmp_path_factory.mktemp("reliability") / "run.h5"
    model = make_model(7)
    x, y = make_data()
    callback = SeedCallback(7, path, mode="record", every_n_batches=2)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
    return path


GROUPS = ("initial", "epochs/00000", "epochs/00001", "epochs/00002")


def _replace(group, name, data, **kwargs):
    del group[name]
    group.create_dataset(name, data=data, **kwargs)


def _set_row(dataset_path, row, value):
    """An edit that replaces one row of a text column (`value`: str for utf-8, bytes for S64)."""
    def edit(file):
        group, name = dataset_path.rsplit("/", 1)
        dataset = file[dataset_path]
        if dataset.dtype.kind == "O":
            values, dtype = list(dataset.asstr()[()]), h5py.string_dtype("utf-8")
        else:
            values, dtype = list(dataset[()]), dataset.dtype
        values[row] = value
        _replace(file[group], name, np.array(values, dtype=object if dtype.kind == "O" else dtype), dtype=dtype)
    return edit


def _structural_variants():
    """(name, expectation, edit(h5py.File)) for schema-level damage.

    Expectations: "error" (must raise ReferenceFileError), "any" (raise, or load equal), or
    a tuple of the fields that may change because the edit removed an optional element.
    """
    text = h5py.string_dtype("utf-8")

    def set_attr(where, key, value):
        return lambda f: f[where].attrs.__setitem__(key, value)

    def del_attr(where, key):
        return lambda f: f[where].attrs.__delitem__(key)

    def delete(where):
        return lambda f: f.__delitem__(where)

    def as_dataset(where):
        def edit(f):
            del f[where]
            f.create_dataset(where, data=np.zeros(3))
        return edit

    def as_group(where):
        def edit(f):
            del f[where]
            f.create_group(where)
        return edit

    def rename(where, new):
        return lambda f: f.move(where, new)

    variants = [
        ("root-format-wrong", "error", set_attr("/", "format", "something.else")),
        ("root-format-missing", "error", del_attr("/", "format")),
        ("root-format-int", "error", set_attr("/", "format", 1)),
        ("root-format-array", "error", set_attr("/", "format", np.array([b"a", b"b"]))),
        ("root-format-empty", "error", set_attr("/", "format", "")),
        ("root-version-string", "error", set_attr("/", "format_version", "1")),
        ("root-version-float", "error", set_attr("/", "format_version", 1.0)),
        ("root-version-bool", "error", set_attr("/", "format_version", True)),
        ("root-version-future", "error", set_attr("/", "format_version", store.FORMAT_VERSION + 1)),
        ("root-version-zero", "error", set_attr("/", "format_version", 0)),
        ("root-version-negative", "error", set_attr("/", "format_version", -1)),
        ("root-version-missing", "error", del_attr("/", "format_version")),
        ("root-version-array", "error", set_attr("/", "format_version", np.array([1, 1]))),
        ("root-seed-string", "error", set_attr("/", "seed", "7")),
        ("root-seed-float", "error", set_attr("/", "seed", 7.0)),
        ("root-seed-bool", "error", set_attr("/", "seed", True)),
        ("root-seed-missing", "error", del_attr("/", "seed")),
        ("root-seed-negative", "error", set_attr("/", "seed", -5)),  # -1 means "no seed"; -5 is damage
        ("root-seed-too-large", "error", set_attr("/", "seed", 2**40)),
        ("root-created-missing", "error", del_attr("/", "created")),
        ("root-created-int", "error", set_attr("/", "created", 20240101)),
        ("root-library-version-missing", "any", del_attr("/", "keras_repro_version")),
        ("root-unknown-attribute", "any", set_attr("/", "extra", 1)),
        ("group-environment-missing", "error", delete("environment")),
        ("group-environment-dataset", "error", as_dataset("environment")),
        ("group-notes-missing", "error", delete("notes")),
        ("group-notes-dataset", "error", as_dataset("notes")),
        ("group-epochs-missing", "error", delete("epochs")),
        ("group-epochs-dataset", "error", as_dataset("epochs")),
        ("group-initial-missing", ("initial: presence",), delete("initial")),
        ("group-initial-dataset", "error", as_dataset("initial")),
        ("group-epoch-dataset", "error", as_dataset("epochs/00001")),
        ("group-batches-dataset", "error", as_dataset("batches")),
        ("group-batch-epoch-dataset", "error", as_dataset("batches/00001")),
        ("epoch-label-attr", "error", set_attr("epochs/00001", "epoch", 7)),
        ("epoch-label-attr-negative", "error", set_attr("epochs/00001", "epoch", -1)),
        ("epoch-label-attr-float", "error", set_attr("epochs/00001", "epoch", 1.0)),
        ("epoch-label-attr-string", "error", set_attr("epochs/00001", "epoch", "1")),
        ("epoch-label-key", "error", rename("epochs/00001", "epochs/00007")),
        ("epoch-label-key-unpadded", "error", rename("epochs/00001", "epochs/1")),
        ("epoch-label-initial", "error", set_attr("initial", "epoch", 5)),  # the run starts at epoch 0
        ("epoch-label-batches", "error", set_attr("batches/00001", "epoch", 5)),
        ("epoch-label-batches-missing", "error", del_attr("batches/00001", "epoch")),
        ("batches-number-dataset-missing", "error", delete("batches/00000/batch")),
        ("batches-number-strings", "error", lambda f: _replace(f["batches/00000"], "batch", np.array([b"a", b"b"]))),
        # Batch numbers are labels no digest covers (like the epoch keys, which are checked
        # against the groups' attributes); only the file checksum protects them.
        ("batches-number-changed", ("batch 0/3: epoch label",), lambda f: _replace(f["batches/00000"], "batch", np.array([1, 2]))),
        ("batches-raw-missing", "error", delete("batches/00000/variable_digests")),
        ("batches-raw-group", "error", as_group("batches/00000/variable_digests")),
        ("batches-raw-float", "error", lambda f: _replace(
            f["batches/00000"], "variable_digests", f["batches/00000/variable_digests"][()].astype("float64"))),
        ("batches-raw-shape", "error", lambda f: _replace(
            f["batches/00000"], "variable_digests", f["batches/00000/variable_digests"][()][:, :-1])),
        ("batches-raw-byte", "error", lambda f: _replace(
            f["batches/00000"], "variable_digests", f["batches/00000/variable_digests"][()] ^ np.eye(1, 8, 5, dtype=np.uint8))),
        ("batches-method-unknown", "error", set_attr("batches/00000", "method", "crc32")),
        ("batches-method-missing", "error", del_attr("batches/00000", "method")),
        ("batches-method-number", "error", set_attr("batches/00001", "method", 3)),
        ("batches-method-sha256", "error", set_attr("batches/00001", "method", "sha256")),
        ("batches-digest-changed", "error", _set_row("batches/00002/digest", 1, b"0" * 64)),
        ("batches-path-missing", "error", delete("batches/00002/path")),
    ]
    for group in GROUPS:
        tag = group.replace("epochs/", "epoch")
        where = "initial" if group == "initial" else f"epoch {int(group[-5:])}"
        for column in ("path", "part", "dtype", "shape", "digest"):
            variants.append((f"{tag}-{column}-missing", "error", delete(f"{group}/{column}")))
        variants += [
            (f"{tag}-digest-attr-missing", "error", del_attr(group, "digest")),
            (f"{tag}-digest-attr-int", "error", set_attr(group, "digest", 5)),
            (f"{tag}-digest-attr-changed", "error", lambda f, g=group: f[g].attrs.__setitem__(
                "digest", ("0" if f[g].attrs["digest"][0] != "0" else "1") + f[g].attrs["digest"][1:])),
            (f"{tag}-digest-attr-upper", "error", lambda f, g=group: f[g].attrs.__setitem__("digest", f[g].attrs["digest"].upper())),
            (f"{tag}-epoch-attr-missing", "error", del_attr(group, "epoch")),
            (f"{tag}-row-digest-changed", "error", _set_row(f"{group}/digest", 2, b"0" * 64)),
            (f"{tag}-row-digest-not-hex", "error", _set_row(f"{group}/digest", 0, b"z" * 64)),
            (f"{tag}-row-digest-short", "error", _set_row(f"{group}/digest", 1, b"0" * 63)),
            (f"{tag}-row-part-unknown", "error", _set_row(f"{group}/part", 0, "weights")),
            (f"{tag}-row-part-moved", "error", _set_row(f"{group}/part", 0, "optimizer")),
            (f"{tag}-row-shape-malformed", "error", _set_row(f"{group}/shape", 0, "a,b")),
            (f"{tag}-column-path-float", "error", lambda f, g=group: _replace(f[g], "path", np.zeros(len(f[g]["path"])))),
            (f"{tag}-column-dtype-int", "error", lambda f, g=group: _replace(f[g], "dtype", np.zeros(len(f[g]["dtype"]), dtype=int))),
            (f"{tag}-column-digest-int", "error", lambda f, g=group: _replace(f[g], "digest", np.zeros(len(f[g]["digest"]), dtype=int))),
            (f"{tag}-column-digest-2d", "error", lambda f, g=group: _replace(f[g], "digest", f[g]["digest"][()].reshape(-1, 1))),
            (f"{tag}-column-part-extra-row", "error", lambda f, g=group: _replace(
                f[g], "part", list(f[g]["part"].asstr()[()]) + ["trainable"], dtype=text)),
            (f"{tag}-column-digest-row-missing", "error", lambda f, g=group: _replace(f[g], "digest", f[g]["digest"][()][:-1])),
            (f"{tag}-column-path-group", "error", as_group(f"{group}/path")),
            (f"{tag}-stats-shape", "error", lambda f, g=group: _replace(f[g], "stats", f[g]["stats"][()][:, :5])),
            (f"{tag}-stats-int", "error", lambda f, g=group: _replace(f[g], "stats", np.zeros(f[g]["stats"].shape, dtype=int))),
            (f"{tag}-stats-group", "error", as_group(f"{group}/stats")),
            (f"{tag}-stats-missing", (f"{where}: stats",), delete(f"{group}/stats")),
        ]
    variants += [
        ("epoch1-metrics-missing", ("epoch 1: metrics",), delete("epochs/00001/metrics")),
        ("epoch1-metrics-dataset", "error", as_dataset("epochs/00001/metrics")),
        ("epoch1-metrics-string", "error", set_attr("epochs/00001/metrics", "loss", "low")),
    ]
    return variants


def _byte_variants(data, rng):
    """(name, bytes) for truncations, flipped bytes, zeroed and overwritten ranges."""
    size = len(data)
    offsets = {0, 1, 4, 7, 8, 9, 12, 16, 24, 32, 48, 64, 96, 128, 200, 256, 400, 512, 800, 1024, 2048, 4096,
               size // 4, size // 2, size * 3 // 4, size - 64, size - 8, size - 1}
    offsets |= {int(o) for o in rng.integers(0, size, 40)}
    variants = [(f"truncate-{offset:07d}", data[:offset]) for offset in sorted(offsets)]
    for trial in range(70):
        damaged = bytearray(data)
        position = int(rng.integers(0, size))
        damaged[position] ^= int(rng.integers(1, 256))
        variants.append((f"flip1-{trial:02d}-at{position:07d}", bytes(damaged)))
    for trial in range(20):
        damaged = bytearray(data)
        for position in rng.integers(0, size, 8):
            damaged[position] ^= int(rng.integers(1, 256))
        variants.append((f"flip8-{trial:02d}", bytes(damaged)))
    for trial in range(40):
        start, length = int(rng.integers(0, size)), int(np.exp(rng.uniform(0, np.log(4096))))
        damaged = bytearray(data)
        damaged[start:start + length] = bytes(len(damaged[start:start + length]))
        variants.append((f"zero-{trial:02d}-at{start:07d}-len{length}", bytes(damaged)))
    for trial in range(10):
        start, length = int(rng.integers(0, size)), int(rng.integers(1, 512))
        damaged = bytearray(data)
        chunk = damaged[start:start + length]
        damaged[start:start + length] = rng.integers(0, 256, len(chunk), dtype=np.uint8).tobytes()
        variants.append((f"garbage-{trial:02d}-at{start:07d}-len{length}", bytes(damaged)))
    return variants


STALL_SECONDS = 6
"""A variant whose load takes longer than this is a hang (a normal load takes milliseconds)."""


def _run_corpus(original, folder, names):
    """Loads every variant in a subprocess, killed and restarted after the variant it hangs or
    crashes on; {name: record}."""
    results, remaining = {}, list(names)
    while remaining:
        with open(folder / "loader-stderr.txt", "w") as stderr:
            process = start_child([sys.executable, LOAD_CORPUS, original, folder, *remaining], env=_env(),
                                  stdout=subprocess.PIPE, stderr=stderr)
        lines = queue.Queue()
        threading.Thread(target=lambda: [*map(lines.put, process.stdout), lines.put(None)], daemon=True).start()
        begun, hung, tail = None, False, []
        while True:
            try:
                line = lines.get(timeout=STALL_SECONDS if begun else 180)
            except queue.Empty:
                process.kill()
                hung = True
                break
            if line is None:
                break
            tail = (tail + [line])[-5:]
            if line.startswith("BEGIN "):
                begun = line.split(" ", 1)[1].strip()
            elif line.startswith("{"):
                record = json.loads(line)
                results[record["name"]] = record
                begun = None
        process.wait(60)
        if begun is not None:
            outcome = f"hang (no result within {STALL_SECONDS} s)" if hung else f"crash (exit {process.returncode})"
            results[begun] = {"name": begun, "outcome": outcome, "message": "", "changed": []}
        elif hung or process.returncode != 0:
            raise AssertionError(f"the corpus loader failed ({process.returncode}): {''.join(tail)}"
                                 f"{(folder / 'loader-stderr.txt').read_text()[-3000:]}")
        remaining = [name for name in remaining if name not in results]
    return results


@pytest.fixture(scope="module")
def corpus(recorded, tmp_path_factory):
    """At least 200 damaged copies of `recorded` and what loading each one did."""
    folder = tmp_path_factory.mktemp("corpus")
    data = recorded.read_bytes()
    expectations = {}
    for index, (name, expectation, edit) in enumerate(_structural_variants()):
        path = folder / f"{name}.h5"
        shutil.copy(recorded, path)
        with h5py.File(path, "r+") as file:
            edit(file)
        if index % 10 == 0:  # left as h5py wrote it: the checksum must refuse it
            shutil.copy(path, folder / f"unsealed-{name}.h5")
            expectations[f"unsealed-{name}"] = "error"
        store.seal(path)  # the schema checks must find the damage behind a valid checksum
        expectations[name] = expectation
    for name, damaged in _byte_variants(data, np.random.default_rng(1234)):
        if damaged == data:  # zeroed bytes that were zero already: not damage
            continue
        (folder / f"{name}.h5").write_bytes(damaged)
        expectations[name] = "error"  # the checksum covers every byte
    start = time.perf_counter()
    results = _run_corpus(recorded, folder, sorted(expectations))
    seconds = time.perf_counter() - start
    counts = collections.Counter(r["outcome"] for r in results.values())
    print(f"\ncorpus of {len(results)} variants loaded in {seconds:.1f} s: {dict(counts)}")
    return folder, expectations, results


def test_damaged_files_raise_reference_file_error(corpus):
    """Every damaged variant (truncated, bytes flipped, zeroed or overwritten, attributes, groups,
    datasets, digests or labels wrong) loads or raises ReferenceFileError naming the file and a
    reason; never another exception, a hang or a crash."""
    folder, expectations, results = corpus
    assert len(results) == len(expectations) >= 200
    escaped = {n: r for n, r in results.items() if r["outcome"] not in ("error", "same", "changed")}
    assert not escaped, f"other exceptions, hangs or crashes: {json.dumps(escaped, indent=1)[:6000]}"
    for name, record in results.items():
        if record["outcome"] == "error":
            assert record["names_file"], record
            assert str(folder / f"{name}.h5") in record["message"], record
            assert record["reason"].strip(), record
    errors = sum(r["outcome"] == "error" for r in results.values())
    assert errors > 150, collections.Counter(r["outcome"] for r in results.values())


def test_damage_is_never_silently_accepted(corpus):
    """A damaged file that loads has exactly the original content (the damage missed every byte
    that means something), except for the documented optional elements an edit removed; the
    schema-level damage always raises."""
    _, expectations, results = corpus
    accepted = {}
    for name, record in results.items():
        expectation = expectations[name]
        if expectation == "error" and record["outcome"] == "same":
            accepted[name] = ["nothing: the schema damage was not reported"]
        elif record["outcome"] == "changed":
            if isinstance(expectation, tuple) and set(record["changed"]) <= set(expectation):
                continue
            accepted[name] = record["changed"]
    assert not accepted, (
        f"{len(accepted)} damaged files loaded with other content than was recorded:\n"
        + "\n".join(f"  {name}: {changed}" for name, changed in sorted(accepted.items()))
    )


def test_cli_show_reports_damaged_files_in_one_line(corpus):
    """`keras-repro show` on 30 damaged variants: exit 2 with one stderr line naming the file
    for those that raise, exit 0 with the table for those that load."""
    folder, _, results = corpus
    errors = sorted(n for n, r in results.items() if r["outcome"] == "error")
    loads = sorted(n for n, r in results.items() if r["outcome"] == "same")
    sample = errors[:: max(1, len(errors) // 24)][:24] + loads[:: max(1, len(loads) // 6)][:6]
    assert len(sample) >= 20
    for name in sample:
        path = str(folder / f"{name}.h5")
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(["show", path])
        if results[name]["outcome"] == "error":
            assert code == 2, (name, code)
            lines = stderr.getvalue().splitlines()
            assert len(lines) == 1, (name, stderr.getvalue())
            assert lines[0].startswith("keras-repro: error: Fingerprint file") and path in lines[0], lines
            assert not stdout.getvalue(), (name, stdout.getvalue())
        else:
            assert code == 0, (name, stderr.getvalue())
            assert "epochs:   3" in stdout.getvalue()


def test_all_error_messages_are_one_line(corpus):
    """Every ReferenceFileError message of the corpus is a single line (the CLI prints it as is)."""
    _, _, results = corpus
    multi = {n: r["message"] for n, r in results.items() if r["outcome"] == "error" and "\n" in r["message"]}
    assert not multi, json.dumps(multi, indent=1)[:4000]


# 3. Concurrent writers ---------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_recording_the_same_reference(tmp_path):
    """Two recordings of one reference started together (seeds 7 and 8, 4 epochs of 1 s): they
    overlap, one records, the other fails with "being recorded by another process" and writes
    nothing; the file holds the winner's epochs only."""
    reference = tmp_path / "run.h5"
    processes = {
        seed: start_child([sys.executable, RECORD, reference, "--epochs", 4, "--epoch-sleep", 1.0, "--seed", seed],
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for seed in (7, 8)
    }
    outputs = {}
    for seed, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        outputs[seed] = process.returncode, _parse(stdout.splitlines()), stderr
    winners = [seed for seed, (code, _, _) in outputs.items() if code == 0]
    losers = [seed for seed, (code, _, _) in outputs.items() if code != 0]
    assert len(winners) == 1 and len(losers) == 1, (
        "both recorded: the runs did not overlap" if len(winners) == 2 else
        {seed: (code, out, err[-2000:]) for seed, (code, out, err) in outputs.items()})
    (winner,), (loser,) = winners, losers
    code, lost, stderr = outputs[loser]
    assert code == 3, stderr[-3000:]
    assert "being recorded by another process" in lost["ERROR"] and str(reference) in lost["ERROR"], lost
    assert not lost["EPOCH"]
    won = outputs[winner][1]
    assert won["FIT"] - 1.0 < lost["FIT"] < won["DONE"], "the loser did not start while the winner recorded"
    log = load_fingerprints(reference)
    assert log.seed == winner
    assert [(fp.epoch, fp.digest) for fp in log.epochs] == won["EPOCH"]
    assert [e for e, _ in won["EPOCH"]] == [0, 1, 2, 3]
    assert set(os.listdir(tmp_path)) <= {"run.h5", ".run.h5.lock"}
