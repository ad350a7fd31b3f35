"""Tests for the append-only tail (keras_repro.store.tail): a recording appends each epoch
at constant cost, the file is valid after every step of an append, a damaged tail is
refused, and the recording folds the tail into the HDF5 part when it ends."""

from __future__ import annotations

import dataclasses
import os
import shutil

import h5py
import keras
import pytest

from keras_repro import ReferenceFileError, SeedCallback, load_fingerprints
from keras_repro.store import hdf5 as store
from keras_repro.store import tail as store_tail
from tests.conftest import make_data, make_model


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 4-epoch run with batch fingerprints, as a FingerprintLog, and the headers its file
    had after each epoch (read by a callback placed after the SeedCallback)."""
    path = tmp_path_factory.mktemp("tail") / "run.h5"
    headers = []

    class Headers(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            with open(path, "rb") as handle:
                headers.append(store_tail.parse_header(handle.read(store.USER_BLOCK)))
            log = load_fingerprints(path)  # valid, with every epoch so far, mid-recording
            assert [fp.epoch for fp in log.epochs] == list(range(epoch + 1))

    x, y = make_data()
    callback = SeedCallback(7, path, mode="record", every_n_batches=2)
    make_model(7).fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback, Headers()])
    return path, callback.log, headers


def _write(path, log, count, state, **changes):
    """Writes `log` with its first `count` epochs (and their batches) through `state`."""
    run = {
        "seed": log.seed, "environment": log.environment, "initial": log.initial, "notes": log.notes,
        "created": log.created, "planned_epochs": log.planned_epochs,
        "epochs": list(log.epochs[:count]), "batches": [fp for fp in log.batches if fp.epoch < count],
    }
    run.update(changes)
    store.write_run(path, **run, state=state)


def _header(path):
    with open(path, "rb") as handle:
        return store_tail.parse_header(handle.read(store.USER_BLOCK))


def test_a_recording_appends_each_epoch_and_writes_the_last_whole(recorded):
    """Epoch k's write is one more record (the HDF5 part unchanged); the last epoch's write
    makes the file whole HDF5 again (the version 3 header), so h5py sees every epoch."""
    path, log, headers = recorded
    assert [h.count for h in headers[:3]] == [1, 2, 3]
    assert len({(h.digest, h.start) for h in headers[:3]}) == 1  # the HDF5 part is never rewritten
    assert all(b.end > a.end for a, b in zip(headers[:3], headers[1:3]))
    assert not headers[3].has_tail and not _header(path).has_tail
    with h5py.File(path, "r") as file:
        assert sorted(file["epochs"]) == ["00000", "00001", "00002", "00003"]
    again = load_fingerprints(path)
    assert again.epochs == log.epochs and again.batches == log.batches and again.initial == log.initial


def test_appended_and_whole_files_read_the_same(recorded, tmp_path):
    """The same run written epoch by epoch (appending) and at once (whole) reads back equal,
    including planned_epochs changed by a later record."""
    _, log, _ = recorded
    appended, whole = tmp_path / "appended.h5", tmp_path / "whole.h5"
    state = store.WriteState()
    for epochs in range(len(log.epochs) + 1):
        _write(appended, log, epochs, state)
    _write(appended, log, len(log.epochs), state, planned_epochs=9)
    assert _header(appended).count == len(log.epochs) + 1
    _write(whole, log, len(log.epochs), None, planned_epochs=9)
    a, w = load_fingerprints(appended), load_fingerprints(whole)
    assert (a.epochs, a.batches, a.initial, a.planned_epochs) == (w.epochs, w.batches, w.initial, w.planned_epochs)
    assert a.planned_epochs == 9


@pytest.mark.parametrize(
    "change",
    ["seed", "notes", "rewritten epoch", "file replaced"],
)
def test_anything_but_an_addition_rewrites_the_file_whole(recorded, tmp_path, change):
    """Appending is only for additions to exactly what this process wrote: another seed or
    notes, a changed earlier epoch, or a file changed behind its back get a whole write."""
    _, log, _ = recorded
    path = tmp_path / "run.h5"
    state = store.WriteState()
    _write(path, log, 1, state)
    _write(path, log, 2, state)
    assert _header(path).count == 1
    changes = {}
    if change == "seed":
        changes["seed"] = 8
    elif change == "notes":
        changes["notes"] = {"topic": "new"}
    elif change == "rewritten epoch":
        changes["epochs"] = [log.epochs[0], log.epochs[2].with_epoch(1), log.epochs[2]]
    else:
        shutil.copy(path, tmp_path / "other.h5")
        os.replace(tmp_path / "other.h5", path)
    _write(path, log, 3, state, **changes)
    assert not _header(path).has_tail
    again = load_fingerprints(path)
    assert len(again.epochs) == 3
    assert (again.seed, dict(again.notes)) == (changes.get("seed", log.seed), changes.get("notes", dict(log.notes)))
    if change == "rewritten epoch":
        assert again.epochs[1].digest == log.epochs[2].digest


def test_a_killed_append_leaves_the_previous_file(recorded, tmp_path):
    """Bytes after the tail's end (a record written, the header not yet) are ignored; a
    record cut short is never seen; the next writer replaces them."""
    _, log, _ = recorded
    path = tmp_path / "run.h5"
    state = store.WriteState()
    _write(path, log, 2, state)
    _write(path, log, 3, state)
    complete = path.read_bytes()
    header = _header(path)
    with open(path, "ab") as handle:
        handle.write(store_tail.FRAME.pack(store_tail.MAGIC, 10_000, b"\0" * 32) + b"half a record")
    assert [fp.epoch for fp in load_fingerprints(path).epochs] == [0, 1, 2]
    path.write_bytes(complete[: header.end - 5])  # the header counts a record the file lacks
    with pytest.raises(ReferenceFileError, match="tail"):
        load_fingerprints(path)
    path.write_bytes(complete)
    _write(path, log, 4, store.WriteState())  # a new writer: whole
    assert not _header(path).has_tail and len(load_fingerprints(path).epochs) == 4


@pytest.mark.parametrize("where", ["record byte", "frame", "header count", "header chain", "header end"])
def test_a_damaged_tail_is_refused(recorded, tmp_path, where):
    """Any change to a record or to the header's account of the tail is a ReferenceFileError
    naming the file, never a wrong run."""
    _, log, _ = recorded
    path = tmp_path / "run.h5"
    state = store.WriteState()
    for epochs in (1, 2, 3):
        _write(path, log, epochs, state)
    header = _header(path)
    data = bytearray(path.read_bytes())
    if where == "record byte":
        data[header.end - 100] ^= 1
    elif where == "frame":
        data[header.start] ^= 1
    else:
        changed = {
            "header count": dataclasses.replace(header, count=header.count - 1),
            "header chain": dataclasses.replace(header, chain=store_tail.chain_next(header.chain, b"x")),
            "header end": dataclasses.replace(header, end=header.end + 1),
        }[where]
        data[: store.USER_BLOCK] = changed.block()
    path.write_bytes(bytes(data))
    with pytest.raises(ReferenceFileError, match="run.h5"):
        load_fingerprints(path)


@pytest.mark.unit
def test_header_round_trip_and_damage():
    """`parse_header` reads exactly what `Header.block` writes, and nothing else."""
    plain = store_tail.Header("a" * 64)
    tail = store_tail.Header("a" * 64, 4096, 5000, 2, "b" * 64)
    assert store_tail.parse_header(plain.block()) == plain
    assert store_tail.parse_header(tail.block()) == tail
    for bad in (tail.block().replace(b"tail", b"tall"), tail.block()[:-1] + b"x", plain.block().replace(b"a", b"g", 1)):
        assert store_tail.parse_header(bad) is None


def test_an_interrupted_recording_keeps_its_tail_until_the_next_recording(tmp_path):
    """A fit stopped by an exception after epoch 1 of 4 leaves epochs 0-1 in the tail
    (keras_repro reads them; the HDF5 part holds none); the re-run completes the file, whole."""
    path = tmp_path / "run.h5"

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    x, y = make_data()
    with pytest.raises(KeyboardInterrupt):
        make_model(7).fit(x, y, epochs=4, batch_size=16, verbose=0,
                          callbacks=[SeedCallback(7, path), Interrupt()])
    assert _header(path).count == 2
    assert [fp.epoch for fp in load_fingerprints(path).epochs] == [0, 1]
    with h5py.File(path, "r") as file:
        assert list(file["epochs"]) == []
    callback = SeedCallback(7, path)
    make_model(7).fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback])
    assert callback.verified_epochs == (0, 1) and callback.recorded_epochs == (2, 3)
    assert not _header(path).has_tail
    with h5py.File(path, "r") as file:
        assert sorted(file["epochs"]) == ["00000", "00001", "00002", "00003"]
