"""Tests for the tolerance tier and batch-level fingerprints."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fingerprinting import digests
from keras_repro.fingerprinting.compare import classify
from keras_repro.fingerprinting.digests import summarize
from tests.conftest import make_data, make_model

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


def _scaled_copy(model, factor, index=0):
    """Fingerprints of `model` before and after scaling one trainable variable by `factor`."""
    before = kr.fingerprint(model, summaries=True)
    variable = model.trainable_weights[index]
    original = keras.ops.convert_to_numpy(variable).copy()
    variable.assign(original * factor)
    after = kr.fingerprint(model, summaries=True)
    variable.assign(original)
    return before, after, variable.path


@pytest.mark.unit
def test_summaries_are_exact_float64_statistics():
    """sum, L2, min, max over finite values, and NaN / Inf counts."""
    values = np.array([1.5, -2.0, np.nan, np.inf, 4.0], dtype="float32")
    assert summarize(values) == (3.5, float(np.sqrt(1.5**2 + 4 + 16)), -2.0, 4.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "factor, rtol, expected",
    [(1 + 1e-6, 1e-4, "within_tolerance"), (1 + 1e-2, 1e-4, "diverged"), (1 + 1e-6, 0.0, "diverged")],
)
@pytest.mark.unit
def test_tolerance_classifies_known_perturbations(factor, rtol, expected):
    """A 1e-6 relative change is within rtol=1e-4; a 1e-2 change is not; exact mode never tolerates."""
    model = make_model(3)
    before, after, path = _scaled_copy(model, factor)
    reference = kr.FingerprintLog(before, (before.with_epoch(0),))
    other = kr.FingerprintLog(after, (after.with_epoch(0),))
    result = reference.compare(other, rtol=rtol)
    assert not result.identical and result.status == expected
    assert result.verdict == "different"  # the initial weights differ: never rounding noise
    statuses = {(d.stage, d.variable): d.status for d in result.details}
    assert statuses[("epoch", path)] == expected
    assert {s for (stage, v), s in statuses.items() if v != path} == {"identical"}
    if expected == "diverged":
        assert result.first_divergence.variable == path
    changed = next(d for d in result.details if d.variable == path and d.stage == "epoch")
    assert changed.relative_difference == pytest.approx(factor - 1, rel=0.2)  # float32 rounding


@pytest.mark.unit
def test_nan_count_change_is_never_within_tolerance():
    """A NaN appearing is a divergence at any tolerance."""
    a = digests.VariableDigest("w", "trainable", "float32", (3,), "0" * 64, (1.0, 1.0, 0.0, 1.0, 0.0, 0.0))
    b = digests.VariableDigest("w", "trainable", "float32", (3,), "1" * 64, (1.0, 1.0, 0.0, 1.0, 1.0, 0.0))
    assert classify(a, b, rtol=1.0, atol=1.0)[0] == "diverged"


def test_summaries_survive_the_file(tmp_path):
    """Recorded epochs keep their summaries; a tolerance compare between files works."""
    path = tmp_path / "run.h5"
    model = make_model(3)
    x, y = make_data()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[kr.SeedCallback(3, path)])
    log = kr.load_fingerprints(path)
    assert all(r.stats is not None for r in log.epochs[-1].records if r.part != "data")
    assert log.compare(log, rtol=1e-3).identical
    frame = log.to_dataframe(variables=True)
    assert {"part", "variable", "sum", "l2", "min", "max", "nan", "inf"} <= set(frame.columns)


class NudgeAtBatch(keras.callbacks.Callback):
    """Moves the first element of the last kernel by one ulp after (epoch, batch)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch, self.path = (epoch, batch), 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            from keras_repro import _backend

            _backend.sync_model_state(self.model)
            variable = self.model.layers[-1].kernel
            values = keras.ops.convert_to_numpy(variable).copy()
            values.reshape(-1)[0] = np.nextafter(values.reshape(-1)[0], np.inf)
            variable.assign(values)
            self.path = variable.path


def _fit(callbacks, epochs=2):
    keras.backend.clear_session()
    model = make_model(5)
    x, y = make_data()
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, shuffle=False, callbacks=callbacks)


def test_verify_names_the_first_divergent_batch(tmp_path):
    """One ulp injected after batch 3 of epoch 1 is reported at epoch 1, batch 3, with the variable."""
    path = tmp_path / "run.h5"
    _fit([kr.SeedCallback(5, path, every_n_batches=1)])
    assert len(kr.load_fingerprints(path).batches) == 16
    message = _verify_passes_then_names_a_nudge_at_epoch_1_batch_3(path)
    assert "epoch 1, batch 3: trainable weights differ" in message


def _verify_passes_then_names_a_nudge_at_epoch_1_batch_3(path):
    """Verifies against `path` with the same seed (passes), then with one ulp injected after
    batch 3 of epoch 1, which must be named with its variable; returns the error message."""
    _fit([kr.SeedCallback(5, path, every_n_batches=1)])  # same seed: passes
    nudge = NudgeAtBatch(1, 3)
    with pytest.raises(kr.FingerprintMismatch) as info:
        _fit([nudge, kr.SeedCallback(5, path, every_n_batches=1)])
    found = info.value.divergence
    assert (found.stage, found.epoch, found.batch, found.variable) == ("batch", 1, 3, nudge.path)
    return str(info.value)


def test_offline_compare_names_the_batch(tmp_path):
    """Two recordings with batch fingerprints: compare() names the batch, not only the epoch."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _fit([kr.SeedCallback(5, a, every_n_batches=2)])
    _fit([NudgeAtBatch(0, 5), kr.SeedCallback(5, b, every_n_batches=2)])
    found = kr.load_fingerprints(a).compare(kr.load_fingerprints(b)).first_divergence
    assert (found.stage, found.epoch, found.batch) == ("batch", 0, 5)
    assert kr.load_fingerprints(a).compare(kr.load_fingerprints(a)).identical


@pytest.mark.unit
def test_every_n_batches_validation():
    """every_n_batches must be a positive int."""
    with pytest.raises(ValueError, match="every_n_batches"):
        kr.SeedCallback(1, every_n_batches=0)


def test_same_seed_verify_compares_batch_checksums_without_building_fingerprints(tmp_path, monkeypatch):
    """A matching batch costs an array comparison: no per-variable records are built and
    compared unless the checksums differ."""
    from keras_repro import callbacks
    from keras_repro.fit import batch_checks

    path = tmp_path / "run.h5"
    _fit([kr.SeedCallback(5, path, every_n_batches=1)])
    stages = []
    real = callbacks.compare_fingerprints
    for module in (callbacks, batch_checks):
        monkeypatch.setattr(module, "compare_fingerprints", lambda *a, **k: stages.append(a[3:4]) or real(*a, **k))
    _fit([kr.SeedCallback(5, path, every_n_batches=1)])
    assert stages and ("batch",) not in stages
    stages.clear()
    with pytest.raises(kr.FingerprintMismatch):
        _fit([NudgeAtBatch(0, 2), kr.SeedCallback(5, path, every_n_batches=1)])
    assert stages[-1] == ("batch",)


class LegacyBatchCallback(kr.SeedCallback):
    """Records SHA-256 batch fingerprints, as keras_repro did before format version 3."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._batch_checker._sha256 = True


def _as_format_2(path):
    """Labels a file recorded with SHA-256 batches as format version 2, as that version wrote it."""
    from tests.conftest import edit_reference

    with edit_reference(path) as file:
        file.attrs["format_version"] = 2
        for group in file["batches"].values():
            assert group.attrs["method"] == "sha256"
            del group.attrs["method"]


def test_reference_with_sha256_batches_still_verifies_batch_by_batch(tmp_path):
    """A format-2 reference (SHA-256 batch fingerprints) is verified with SHA-256 batches,
    and still names the first divergent batch and variable."""
    path = tmp_path / "old.h5"
    _fit([LegacyBatchCallback(5, path, every_n_batches=1)])
    _as_format_2(path)
    log = kr.load_fingerprints(path)
    assert len(log.batches) == 16 and all(len(r.digest) == 64 for r in log.batches[0].records)
    _verify_passes_then_names_a_nudge_at_epoch_1_batch_3(path)


def test_offline_compare_skips_batches_made_by_different_methods(tmp_path):
    """SHA-256 and checksum batch fingerprints cannot be compared: the epoch is named instead
    of a spurious batch difference."""
    old, new, nudged = tmp_path / "old.h5", tmp_path / "new.h5", tmp_path / "nudged.h5"
    _fit([LegacyBatchCallback(5, old, every_n_batches=1)])
    _fit([kr.SeedCallback(5, new, every_n_batches=1)])
    _fit([NudgeAtBatch(0, 5), kr.SeedCallback(5, nudged, every_n_batches=1)])
    assert kr.load_fingerprints(old).compare(kr.load_fingerprints(new)).identical
    found = kr.load_fingerprints(old).compare(kr.load_fingerprints(nudged)).first_divergence
    assert (found.stage, found.epoch, found.batch) == ("epoch", 0, None)
