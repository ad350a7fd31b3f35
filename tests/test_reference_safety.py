"""A reference is ours; nothing else is: files keras_repro did not write are refused in every
mode and left as they are, files and folders the user made read-only are read and never
rewritten (also as root, where only the permission bits say so), and every path problem is a
clear error naming the path.

The tests use chmod on tmp_path files and never rely on os.access: they hold as root (in
containers and hosted notebooks) and as an ordinary user."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import h5py
import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.store import hdf5 as store
from keras_repro.store.reference import lock_path
from tests.conftest import make_data, make_model

MODES = ("record", "auto", "verify")


def _fit(reference, mode="auto", epochs=3, **kwargs):
    """Fits the small test model with a SeedCallback on `reference`; returns the callback."""
    keras.backend.clear_session()
    callback = kr.SeedCallback(7, reference, mode=mode, **kwargs)
    x, y = make_data()
    history = make_model(7).fit(x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0, callbacks=[callback])
    callback.history = history.history
    return callback


@contextlib.contextmanager
def chmod(path, mode):
    """`path` gets `mode` for the block, then its mode before."""
    before = os.stat(path).st_mode
    os.chmod(path, mode)
    try:
        yield
    finally:
        os.chmod(path, before)


def _foreign_files(folder):
    """{kind: path} of files keras_repro did not write, each alone in its own folder."""
    files = {}

    def place(kind, name):
        (folder / kind).mkdir()
        files[kind] = folder / kind / name
        return files[kind]

    make_model(7).save_weights(place("save_weights", "my.weights.h5"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls the HDF5 format legacy
        make_model(7).save(place("legacy_model", "m.h5"))
    place("text", "run.h5").write_text("epoch,digest\n0,abc\n")
    place("empty", "run.h5").write_bytes(b"")
    with h5py.File(place("hdf5", "run.h5"), "w") as file:
        file.create_dataset("kernel", data=np.arange(6.0))
        file.attrs["format"] = "another.program"
    return files


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """The foreign files and their bytes."""
    files = _foreign_files(tmp_path_factory.mktemp("foreign"))
    return {kind: (path, path.read_bytes()) for kind, path in files.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["save_weights", "legacy_model", "text", "hdf5"])
def test_every_mode_refuses_a_file_keras_repro_did_not_write(foreign, kind, mode):
    """A weights file, a legacy Keras model, a text file and another program's
    HDF5 file are refused by record, auto and verify alike, with the same error naming the file
    and what to do; each is byte-identical afterwards, with no lock file beside it."""
    path, before = foreign[kind]
    with pytest.raises(kr.ReferenceFileError) as info:
        _fit(path, mode=mode, epochs=1)
    message = str(info.value)
    assert f"'{path}'" in message and "not a keras_repro fingerprint file" in message, message
    assert "left as it is" in message and "another path" in message, message
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name], os.listdir(path.parent)


def test_the_refusal_is_the_same_in_every_mode(foreign):
    """record, auto and verify give one message for a foreign file, word for word."""
    path, _ = foreign["save_weights"]
    messages = set()
    for mode in MODES:
        with pytest.raises(kr.ReferenceFileError) as info:
            _fit(path, mode=mode, epochs=1)
        messages.add(str(info.value))
    assert len(messages) == 1, messages


def test_saving_a_log_over_a_foreign_file_is_refused(foreign, tmp_path):
    """`log.save` (every whole write) refuses a file keras_repro did not write; a file it
    wrote is replaced."""
    run = tmp_path / "run.h5"
    _fit(run, epochs=1)
    log = kr.load_fingerprints(run)
    path, before = foreign["save_weights"]
    with pytest.raises(kr.ReferenceFileError, match="not a keras_repro fingerprint file.*left as it is"):
        log.save(path)
    assert path.read_bytes() == before
    other = tmp_path / "other.h5"
    log.save(other)
    dataclasses.replace(log, notes={"second": "save"}).save(other)
    assert kr.load_fingerprints(other).notes == {"second": "save"}


@pytest.mark.parametrize("mode", ["record", "auto"])
def test_an_empty_file_is_recorded_to_and_refused_by_verify(tmp_path, mode):
    """An empty file (as `tempfile` or `touch` makes one) holds nothing to lose: record and
    auto record into it, `log.save` writes it; verify refuses it, naming the file, and leaves
    it empty."""
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    with pytest.raises(kr.ReferenceFileError, match="is empty"):
        _fit(path, mode="verify", epochs=1)
    assert path.read_bytes() == b""
    _fit(path, mode=mode, epochs=1)
    assert [fp.epoch for fp in kr.load_fingerprints(path).epochs] == [0]
    saved = tmp_path / "saved.h5"
    saved.write_bytes(b"")
    kr.load_fingerprints(path).save(saved)
    assert kr.load_fingerprints(saved).epochs[0].digest == kr.load_fingerprints(path).epochs[0].digest


def test_a_damaged_file_of_ours_is_still_replaced_by_record(tmp_path):
    """A file that starts with keras_repro's header but is damaged (a flipped byte, a cut
    tail) is ours: auto refuses to extend it, record replaces it, as before; made read-only,
    it is refused by record too, and kept."""
    path = tmp_path / "run.h5"
    _fit(path, epochs=2)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    for damaged in (bytes(flipped), good[: len(good) * 3 // 4], good[:600]):
        path.write_bytes(damaged)
        with pytest.raises(kr.ReferenceFileError, match="damaged|cannot be opened"):
            _fit(path, mode="auto", epochs=2)
        callback = _fit(path, mode="record", epochs=2)
        assert callback.recorded_epochs == (0, 1)
        assert path.read_bytes() != damaged and len(kr.load_fingerprints(path).epochs) == 2
    path.write_bytes(bytes(flipped))
    with chmod(path, 0o444), pytest.raises(kr.ReferenceFileError, match=r"damaged.*\(it is not replaced: .*read-only"):
        _fit(path, mode="record", epochs=2)
    assert path.read_bytes() == bytes(flipped)


# Read-only files and folders ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(complete, incomplete): the bytes of a complete 3-epoch recording, and of the same
    epochs in a recording that planned 5 (stopped after 3)."""
    path = tmp_path_factory.mktemp("recorded") / "run.h5"
    _fit(path, mode="record", epochs=3)
    complete = path.read_bytes()
    log = kr.load_fingerprints(path)
    assert log.complete and len(log.epochs) == 3
    dataclasses.replace(log, planned_epochs=5).save(path)
    assert not kr.load_fingerprints(path).complete
    return complete, path.read_bytes()


def _warnings_naming(caught, path):
    """The ReproWarnings among `caught`; each must name `path`."""
    found = [w for w in caught if issubclass(w.category, kr.ReproWarning)
             and not issubclass(w.category, kr.HashRandomizationWarning)]
    for warning in found:
        assert f"'{path}'" in str(warning.message), str(warning.message)
    return found


@pytest.mark.parametrize("state, mode, epochs", [
    ("complete", "record", 3),
    ("complete", "record", 4),
    ("complete", "auto", 4),
    ("incomplete", "record", 4),
    ("incomplete", "auto", 4),   # extends it by one epoch
    ("incomplete", "auto", 5),   # by two
])
def test_a_read_only_reference_is_verified_and_kept(recorded, tmp_path, state, mode, epochs):
    """A reference made read-only (chmod 444) is byte-identical after a record or auto fit that
    would write it: the fit verifies the epochs it holds, finishes, and warns exactly once,
    naming the file and what is kept."""
    path = tmp_path / "run.h5"
    path.write_bytes(recorded[0] if state == "complete" else recorded[1])
    before = path.read_bytes()
    with chmod(path, 0o444), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = _fit(path, mode=mode, epochs=epochs)
    assert path.read_bytes() == before
    assert len(callback.history["loss"]) == epochs
    assert callback.verified_epochs == (0, 1, 2) and callback.recorded_epochs == ()
    assert callback.divergence is None and callback.resolved_mode == "verify"
    found = _warnings_naming(caught, path)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert "read-only" in message and "kept as it is" in message and "epochs 0-2" in message, message
    if state == "incomplete":
        assert "3 of 5 planned" in message, message


def test_a_read_only_reference_still_catches_a_divergence(recorded, tmp_path):
    """Record mode on a read-only file of another run verifies against it: the other seed is
    reported, and the file is kept."""
    path = tmp_path / "run.h5"
    path.write_bytes(recorded[0])
    keras.backend.clear_session()
    x, y = make_data()
    with chmod(path, 0o444), pytest.warns(kr.ReproWarning, match="read-only"):
        with pytest.raises(kr.FingerprintMismatch, match="seed 7; this run uses seed 8"):
            make_model(7).fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
                              callbacks=[kr.SeedCallback(8, path, mode="record")])
    assert path.read_bytes() == recorded[0]


def test_verifying_a_read_only_reference_does_not_warn(recorded, tmp_path):
    """verify, and auto with nothing to add, on a read-only file: verified, no warning."""
    path = tmp_path / "run.h5"
    path.write_bytes(recorded[0])
    with chmod(path, 0o444), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("verify", "auto"):
            assert _fit(path, mode=mode, epochs=3).verified_epochs == (0, 1, 2)
    assert not _warnings_naming(caught, path)
    assert path.read_bytes() == recorded[0]


def test_a_read_only_folder_is_honoured_by_its_mode_bits(recorded, tmp_path):
    """A folder made read-only (chmod 555) is not written, also as root: record verifies the
    reference in it and warns once; no lock file appears; a new reference there is refused
    before training, naming the folder."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    path = folder / "run.h5"
    path.write_bytes(recorded[0])
    with chmod(folder, 0o555):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback = _fit(path, mode="record", epochs=3)
        assert callback.verified_epochs == (0, 1, 2) and callback.recorded_epochs == ()
        found = _warnings_naming(caught, path)
        assert len(found) == 1 and f"'{folder}' is read-only" in str(found[0].message), found
        for mode in ("record", "auto"):
            with pytest.raises(kr.ReferenceFileError, match=f"new.h5': cannot be recorded: '{folder}' is read-only"):
                _fit(folder / "new.h5", mode=mode, epochs=1)
        assert os.listdir(folder) == ["run.h5"] and path.read_bytes() == recorded[0]
    assert not os.path.exists(lock_path(str(path)))


def test_store_never_writes_a_read_only_file(recorded, tmp_path):
    """Every write (a whole `log.save` too) refuses a read-only file and leaves it as it is."""
    path = tmp_path / "run.h5"
    path.write_bytes(recorded[0])
    log = kr.load_fingerprints(path)
    with chmod(path, 0o444):
        with pytest.raises(kr.ReferenceFileError, match=r"run.h5': cannot be written: .*run.h5' is read-only"):
            log.save(path)
        with pytest.raises(kr.ReferenceFileError, match="read-only"):
            store.write_run(path, seed=7, environment={}, initial=None, epochs=[], state=store.WriteState())
    assert path.read_bytes() == recorded[0]


# Path problems -------------------------------------------------------------------------------


def test_a_missing_folder_in_a_read_only_folder_is_a_clear_error(tmp_path):
    """A reference in a missing subfolder of a read-only folder: ReferenceFileError naming the
    reference, the folder that cannot be written and the fix; nothing is created."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    path = folder / "runs" / "run.h5"
    with chmod(folder, 0o555):
        for mode in ("record", "auto"):
            with pytest.raises(kr.ReferenceFileError) as info:
                _fit(path, mode=mode, epochs=1)
            message = str(info.value)
            assert f"'{path}'" in message and f"'{folder}' is read-only" in message, message
            assert "writable folder" in message, message
        with pytest.raises(kr.ReferenceFileError, match="does not exist"):
            _fit(path, mode="verify", epochs=1)
    assert os.listdir(folder) == []


@pytest.mark.unit
def test_a_reference_under_a_file_is_a_clear_error(tmp_path):
    """A reference whose folder is a file: ReferenceFileError naming both, in every mode,
    when the callback is made (nothing is written)."""
    parent = tmp_path / "notes.txt"
    parent.write_text("not a folder")
    for path in (parent / "run.h5", parent / "deeper" / "run.h5"):
        for mode in MODES:
            with pytest.raises(kr.ReferenceFileError) as info:
                kr.SeedCallback(7, path, mode=mode)
            message = str(info.value)
            assert f"'{path}'" in message and f"'{parent}' is a file, not a folder" in message, message
    assert parent.read_text() == "not a folder" and os.listdir(tmp_path) == ["notes.txt"]


def test_a_reference_whose_folder_became_a_file_is_a_clear_error(tmp_path):
    """The folder turned into a file after the callback was made: the fit raises the same error."""
    folder = tmp_path / "runs"
    callback = kr.SeedCallback(7, folder / "run.h5", mode="record")
    folder.write_text("now a file")
    keras.backend.clear_session()
    x, y = make_data()
    with pytest.raises(kr.ReferenceFileError, match=f"'{folder}' is a file, not a folder"):
        make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert folder.read_text() == "now a file"


def test_compare_with_a_path_says_to_load_it(tmp_path):
    """`log.compare("ref.h5")` is a TypeError saying to load the file first."""
    path = tmp_path / "ref.h5"
    log = _fit(path, epochs=1).log
    for other in (str(path), path):
        with pytest.raises(TypeError, match=r"kr.load_fingerprints\(path\).*Received: other="):
            log.compare(other)
    assert log.compare(kr.load_fingerprints(path)).identical
