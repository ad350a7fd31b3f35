"""Tests for keras_repro.store.hdf5: round trips, atomic writes and every kind of bad file."""

from __future__ import annotations

import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest

from keras_repro import ReferenceFileError, SeedCallback, load_fingerprints
from keras_repro.store import hdf5 as store
from tests.conftest import edit_reference, make_data, make_model


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real fingerprint file of a 3-epoch run."""
    path = tmp_path_factory.mktemp("store") / "run.h5"
    model = make_model(7)
    x, y = make_data()
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[SeedCallback(7, path, mode="record")])
    return path


@pytest.fixture
def copy(recorded, tmp_path):
    """A private copy of the recorded file to damage."""
    target = tmp_path / "copy.h5"
    shutil.copy(recorded, target)
    return target


def test_round_trip_is_exact(recorded, tmp_path):
    """Reading, saving and reading again gives equal fingerprints, metrics and environment."""
    log = load_fingerprints(recorded)
    assert [fp.epoch for fp in log.epochs] == [0, 1, 2]
    assert log.initial is not None and log.initial.epoch == 0
    assert log.seed == 7 and log.environment["backend"]
    assert "loss" in log.epochs[0].metrics
    log.save(tmp_path / "again.h5")
    again = load_fingerprints(tmp_path / "again.h5")
    assert again.epochs == log.epochs and again.initial == log.initial
    assert dict(again.environment) == dict(log.environment) and again.seed == log.seed
    assert again.compare(log).identical


def test_configuration_round_trips_and_an_absent_one_reads_as_none(recorded, tmp_path):
    """The recording fit's configuration is stored in /config and read back as written; a file
    without that group (as earlier versions wrote) reads as "not recorded" (None)."""
    log = load_fingerprints(recorded)
    assert log.config["model.class"] == "Sequential" and log.config["model.seed"] == "none"
    assert log.config["steps"] == "4" and log.config["input.ordered_by"] == "Keras"
    log.save(tmp_path / "again.h5")
    assert dict(load_fingerprints(tmp_path / "again.h5").config) == dict(log.config)
    old = tmp_path / "old.h5"
    shutil.copy(recorded, old)
    with edit_reference(old) as file:
        del file["config"]
    assert load_fingerprints(old).config is None
    assert load_fingerprints(old).compare(log).identical


def test_write_is_atomic_and_leaves_no_temporary(recorded, tmp_path, monkeypatch):
    """A failure while writing keeps the previous file intact and removes the temporary."""
    target = tmp_path / "run.h5"
    shutil.copy(recorded, target)
    before = target.read_bytes()
    log = load_fingerprints(target)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_write_fingerprint", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        log.save(target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.h5"]


def test_write_to_missing_folder_is_a_clear_error(recorded, tmp_path):
    """Writing into a folder that does not exist names the file and what to check."""
    log = load_fingerprints(recorded)
    with pytest.raises(ReferenceFileError, match="folder exists and is writable"):
        log.save(tmp_path / "nope" / "run.h5")


def _expect(path, *fragments):
    """Loading `path` raises ReferenceFileError naming the file and every fragment."""
    with pytest.raises(ReferenceFileError) as info:
        load_fingerprints(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


@pytest.mark.unit
def test_missing_file(tmp_path):
    _expect(tmp_path / "absent.h5", "does not exist")


@pytest.mark.unit
def test_folder_instead_of_file(tmp_path):
    _expect(tmp_path, "is a folder")


@pytest.mark.unit
def test_empty_file(tmp_path):
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    _expect(path, "is empty")


@pytest.mark.unit
def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("epoch,digest\n0,abc\n")
    _expect(path, "not a keras_repro fingerprint file", "first bytes")


@pytest.mark.parametrize("keep", [8, 100, 0.5, 0.9])
def test_truncated_file(copy, keep):
    """A file cut anywhere after the signature is reported, never a raw h5py error."""
    data = copy.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    copy.write_bytes(data[:size])
    error = _expect(copy)
    assert error.reason


@pytest.mark.unit
def test_foreign_hdf5(tmp_path):
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("kernel", data=np.zeros(3))
    _expect(path, "HDF5 file without a keras_repro header", "another program")


def test_written_files_carry_the_checksum_of_their_contents(recorded):
    """The user block holds the SHA-256 of every byte after it, and HDF5 tools still read it."""
    data = recorded.read_bytes()
    header = data[: store.USER_BLOCK]
    assert header.startswith(b"keras_repro.fingerprints\nsha256 ")
    assert hashlib.sha256(data[store.USER_BLOCK :]).hexdigest().encode() in header
    with h5py.File(recorded, "r") as file:
        assert file.attrs["format"] == store.FORMAT_NAME
        assert file.userblock_size == store.USER_BLOCK


def test_edit_after_writing_is_refused_until_sealed(copy):
    """An h5py edit (valid HDF5, wrong content) fails the checksum; sealing it again makes
    the schema checks see it, which then name the edited field."""
    with h5py.File(copy, "r+") as file:
        file["epochs/00001"].attrs["epoch"] = 7
    _expect(copy, "changed after keras_repro wrote it", "Record it again")
    store.seal(copy)
    _expect(copy, "holds epoch 7")


def test_untouched_copy_passes_the_checksum(copy, recorded):
    """The other direction: a byte-identical copy, and one sealed again unchanged, load."""
    assert load_fingerprints(copy).compare(load_fingerprints(recorded)).identical
    store.seal(copy)
    assert load_fingerprints(copy).compare(load_fingerprints(recorded)).identical


@pytest.mark.parametrize("offset", [0, 30, 60, 300, 511])
def test_damaged_header_is_refused(copy, offset):
    """Any byte of the user block changed: the magic, the digest or the padding."""
    data = bytearray(copy.read_bytes())
    data[offset] ^= 0x01
    copy.write_bytes(bytes(data))
    error = _expect(copy)
    assert "header" in error.reason or "not a keras_repro" in error.reason


def test_zeroed_header_is_refused(copy):
    """HDF5 would find the superblock at byte 512 on its own; the missing header still fails."""
    data = bytearray(copy.read_bytes())
    data[: store.USER_BLOCK] = bytes(store.USER_BLOCK)
    copy.write_bytes(bytes(data))
    _expect(copy, "not a keras_repro fingerprint file")


def test_older_format_version_is_refused(copy):
    with edit_reference(copy) as file:
        file.attrs["format_version"] = store.MIN_FORMAT_VERSION - 1
    _expect(copy, f"format version {store.MIN_FORMAT_VERSION - 1}", "older", "record it again")


def test_wrong_format_name(copy):
    with edit_reference(copy) as file:
        file.attrs["format"] = "something.else"
    _expect(copy, "has format 'something.else'")


def test_future_version(copy):
    with edit_reference(copy) as file:
        file.attrs["format_version"] = store.FORMAT_VERSION + 1
    _expect(copy, f"format version {store.FORMAT_VERSION + 1}", "upgrade keras_repro")


def test_wrong_attribute_type(copy):
    with edit_reference(copy) as file:
        file.attrs["format_version"] = "one"
    _expect(copy, "'format_version' has type str")


def test_missing_dataset(copy):
    with edit_reference(copy) as file:
        del file["epochs/00001/digest"]
    _expect(copy, "dataset '/epochs/00001/digest' is missing")


def test_missing_epochs_group(copy):
    with edit_reference(copy) as file:
        del file["epochs"]
    _expect(copy, "'/epochs' is missing")


def test_changed_variable_digest_is_caught(copy):
    """A flipped digest no longer matches the stored total: damaged, not a silent pass."""
    with edit_reference(copy) as file:
        digests = file["epochs/00002/digest"][()]
        digests[0] = b"0" * 64
        del file["epochs/00002/digest"]
        file["epochs/00002"].create_dataset("digest", data=digests)
    _expect(copy, "'/epochs/00002' digest does not match its variables")


def test_wrong_column_type(copy):
    with edit_reference(copy) as file:
        del file["initial/part"]
        file["initial"].create_dataset("part", data=np.zeros(len(file["initial/path"])))
    _expect(copy, "expected text")


def test_mismatched_epoch_label(copy):
    with edit_reference(copy) as file:
        file["epochs/00001"].attrs["epoch"] = 7
    _expect(copy, "holds epoch 7")


def test_flipped_bytes_never_escape_as_other_exceptions(recorded, tmp_path):
    """Flipping bytes anywhere gives ReferenceFileError (the checksum covers every byte), nothing else."""
    data = bytearray(recorded.read_bytes())
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(40):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), size=8):
            damaged[position] ^= 0xFF
        path = tmp_path / f"flip{trial}.h5"
        path.write_bytes(bytes(damaged))
        try:
            load_fingerprints(path)
            outcomes.add("read")
        except ReferenceFileError as error:
            assert str(path) in str(error)
            outcomes.add("error")
    assert outcomes == {"error"}


@pytest.fixture(scope="module")
def with_batches(tmp_path_factory):
    """A real fingerprint file with batch checksums."""
    path = tmp_path_factory.mktemp("store_batches") / "batches.h5"
    model = make_model(7)
    x, y = make_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[SeedCallback(7, path, every_n_batches=2)])
    return path


def test_batch_checksums_round_trip(with_batches, tmp_path):
    log = load_fingerprints(with_batches)
    assert log.batches and all(len(r.digest) == 16 for fp in log.batches for r in fp.records)
    with h5py.File(with_batches, "r") as file:
        assert {g.attrs["method"] for g in file["batches"].values()} == {"checksum64-v1"}
        assert file["batches/00000/variable_digests"].shape[2] == 8
    log.save(tmp_path / "again.h5")
    assert load_fingerprints(tmp_path / "again.h5").batches == log.batches


@pytest.fixture
def batches_copy(with_batches, tmp_path):
    """A private copy of the file with batch checksums, to damage."""
    target = tmp_path / "copy.h5"
    shutil.copy(with_batches, target)
    return target


def test_unknown_batch_method_is_refused(batches_copy):
    with edit_reference(batches_copy) as file:
        file["batches/00000"].attrs["method"] = "crc128"
    _expect(batches_copy, "method 'crc128'", "upgrade keras_repro")


def test_batch_method_that_does_not_match_the_digest_width_is_refused(batches_copy):
    with edit_reference(batches_copy) as file:
        file["batches/00001"].attrs["method"] = "sha256"
    _expect(batches_copy, "variable_digests' has shape", "damaged")


def test_format_3_requires_the_batch_method(batches_copy):
    with edit_reference(batches_copy) as file:
        del file["batches/00000"].attrs["method"]
    _expect(batches_copy, "'method'")
