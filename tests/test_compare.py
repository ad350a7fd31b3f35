"""Tests for keras_repro.fingerprinting.compare on hand-made fingerprints."""

from __future__ import annotations

import pytest

from keras_repro.fingerprinting.compare import compare_fingerprints, compare_runs
from keras_repro.fingerprinting.digests import VariableDigest, make_fingerprint
from keras_repro.store.log import FingerprintLog

pytestmark = pytest.mark.unit


def _runs(reference_initial, reference_epochs, other_initial, other_epochs, reference_batches=(), other_batches=()):
    """compare_runs of two hand-made runs."""
    return compare_runs(FingerprintLog(reference_initial, tuple(reference_epochs), batches=tuple(reference_batches)),
                        FingerprintLog(other_initial, tuple(other_epochs), batches=tuple(other_batches)))


def _fp(epoch, **changes):
    """A fingerprint with three trainable variables, one optimizer variable and a data order."""
    records = [
        VariableDigest("model/dense/kernel", "trainable", "float32", (2, 2), "a" * 64),
        VariableDigest("model/dense/bias", "trainable", "float32", (2,), "b" * 64),
        VariableDigest("adam/iteration", "optimizer", "int64", (), "c" * 64),
        VariableDigest("order", "data", "int64", (10,), "d" * 64),
    ]
    records = [VariableDigest(r.path, r.part, r.dtype, r.shape, changes.get(r.path, r.digest)) for r in records]
    return make_fingerprint(records, epoch)


def test_identical_runs():
    """Equal fingerprints at every epoch: identical, no divergence."""
    run = [_fp(0), _fp(1)]
    result = _runs(_fp(0), run, _fp(0), list(run))
    assert result.identical and result.first_divergence is None
    assert result.epochs_compared == (0, 1)


def test_names_first_epoch_part_and_variable():
    """A change at epoch 1 in the bias is reported at epoch 1, trainable, bias."""
    reference = [_fp(0), _fp(1), _fp(2)]
    other = [_fp(0), _fp(1, **{"model/dense/bias": "e" * 64}), _fp(2, **{"model/dense/kernel": "f" * 64})]
    result = _runs(None, reference, None, other)
    found = result.first_divergence
    assert not result.identical
    assert (found.epoch, found.stage, found.part, found.variable) == (1, "epoch", "trainable", "model/dense/bias")
    assert str(found) == "epoch 1: trainable weights differ, first at 'model/dense/bias' (values differ)"


def test_data_order_is_named_before_weights():
    """When the order and the weights both differ, the order is the explanation."""
    found = compare_fingerprints(_fp(0), _fp(0, order="1" * 64, **{"model/dense/kernel": "2" * 64}), 0)
    assert found.part == "data" and "data order differs" in str(found)


def test_content_records_are_compared_only_where_both_runs_have_them():
    """A run whose data part holds the input's content verifies against a reference recorded
    before content was fingerprinted; where both hold it, other content is the first divergence."""
    content = VariableDigest("content/x", "data", "float32", (10, 2), "5" * 64)
    with_content = make_fingerprint([content, *_fp(0).records], 0)
    assert compare_fingerprints(_fp(0), with_content, 0) is None
    assert compare_fingerprints(with_content, _fp(0), 0) is None
    other = make_fingerprint([VariableDigest("content/x", "data", "float32", (10, 2), "6" * 64), *_fp(0).records], 0)
    found = compare_fingerprints(with_content, other, 0)
    assert (found.part, found.variable) == ("data", "content/x")
    assert str(found) == "epoch 0: data content differs, first at 'content/x' (values differ)"
    assert _runs(_fp(0), [_fp(0)], with_content, [with_content]).identical


def test_initial_state_divergence():
    """A different start is reported as the initial state, before any epoch."""
    result = _runs(_fp(0), [_fp(0)], _fp(0, **{"adam/iteration": "9" * 64}), [_fp(0)])
    found = result.first_divergence
    assert found.stage == "initial" and found.part == "optimizer" and found.variable == "adam/iteration"
    assert str(found).startswith("initial state (before the first step of epoch 0)")


def test_ignored_parts():
    """Ignored parts do not count as differences; the others still do."""
    changed = _fp(0, order="1" * 64)
    assert compare_fingerprints(_fp(0), changed, 0, ignore=("data",)) is None
    assert compare_fingerprints(_fp(0), changed, 0) is not None


def test_missing_epoch_is_a_difference():
    """A run with fewer epochs is not identical; the missing epoch is named."""
    result = _runs(None, [_fp(0), _fp(1)], None, [_fp(0)])
    assert not result.identical
    assert result.first_divergence.stage == "missing" and result.first_divergence.epoch == 1
    assert "only the reference has epoch 1" in str(result.first_divergence)


def test_shape_and_count_differences_are_explained():
    """A reshaped variable or an extra variable gets a reason, not just 'differs'."""
    base = _fp(0)
    records = [
        VariableDigest(r.path, r.part, r.dtype, (4,), "0" * 64) if r.path == "model/dense/kernel" else r
        for r in base.records
    ]
    found = compare_fingerprints(base, make_fingerprint(records), 0)
    assert "shape (2, 2) vs (4,)" in found.reason
    extra = make_fingerprint(list(base.records) + [VariableDigest("model/new", "trainable", "float32", (), "3" * 64)])
    found = compare_fingerprints(base, extra, 0)
    assert found.variable == "model/new" and "only in the other run" in found.reason


def test_a_resumed_run_is_compared_from_its_first_epoch():
    """A run resumed at epoch 2 is compared from there: its start against the reference's
    epoch 1 (less the data order and layer RNG, which are reset), then epochs 2 and 3."""
    straight = [_fp(e) for e in range(4)]
    resumed_start = _fp(2, order="5" * 64)  # the start of epoch 2 has epoch 2's order, not epoch 1's
    result = _runs(_fp(0), straight, resumed_start, [_fp(2), _fp(3)])
    assert result.identical and result.epochs_compared == (2, 3)
    other_start = _fp(2, **{"model/dense/bias": "e" * 64})
    found = _runs(_fp(0), straight, other_start, [_fp(2), _fp(3)]).first_divergence
    assert (found.stage, found.epoch, found.variable) == ("initial", 2, "model/dense/bias")
    found = _runs(_fp(0), straight, resumed_start, [_fp(2), _fp(3, **{"model/dense/kernel": "f" * 64})]).first_divergence
    assert (found.stage, found.epoch, found.variable) == ("epoch", 3, "model/dense/kernel")
    found = _runs(resumed_start, [_fp(2), _fp(3)], _fp(0), straight[:3]).first_divergence
    assert (found.stage, found.epoch) == ("missing", 3)  # symmetric, and the later epoch is still required


def test_complete_tells_an_interrupted_recording():
    """A log is complete when it holds every planned epoch from its first on."""
    from keras_repro.store.log import FingerprintLog

    assert FingerprintLog(_fp(0), (_fp(0), _fp(1)), planned_epochs=2).complete
    assert not FingerprintLog(_fp(0), (_fp(0),), planned_epochs=2).complete
    assert FingerprintLog(_fp(2), (_fp(2), _fp(3)), planned_epochs=4).complete  # a resumed recording
    assert FingerprintLog(_fp(0), (_fp(0),)).complete  # files without planned_epochs: assumed complete


def _batch(epoch, batch, value="1"):
    """A hand-made batch fingerprint (checksum-sized digests)."""
    records = [VariableDigest("model/dense/kernel", "trainable", "float32", (2, 2), value * 16)]
    return make_fingerprint(records, epoch, None, batch)


def test_one_engine_names_the_first_state_in_training_order():
    """Batches of an epoch come before its end, in batch order, whatever differs later; a batch
    only one run has is named where it is missing; epochs before batches of later epochs."""
    epochs = [_fp(0), _fp(1)]
    batches = [_batch(e, b) for e in (0, 1) for b in (0, 1, 2)]
    changed = [_batch(e, b, "2" if (e, b) in ((0, 2), (1, 0)) else "1") for e in (0, 1) for b in (0, 1, 2)]
    found = _runs(_fp(0), epochs, _fp(0), [_fp(0), _fp(1, **{"model/dense/bias": "e" * 64})], batches, changed).first_divergence
    assert (found.stage, found.epoch, found.batch) == ("batch", 0, 2)
    found = _runs(_fp(0), epochs, _fp(0), epochs, batches, batches[:2] + batches[3:]).first_divergence
    assert (found.stage, found.epoch) == ("missing", 0) and "batch 2 of epoch 0" in found.reason
    found = _runs(_fp(0), epochs, _fp(0), [_fp(0, **{"model/dense/bias": "e" * 64}), _fp(1)], batches, batches).first_divergence
    assert (found.stage, found.epoch) == ("epoch", 0)  # equal batches, then the epoch's end
    found = _runs(_fp(0), epochs, _fp(0), [_fp(0, **{"model/dense/bias": "e" * 64}), _fp(1)], batches, batches)
    assert not found.identical


def test_within_tolerance_batches_only_locate_a_diverged_epoch():
    """With a tolerance, a differing batch checksum alone is no divergence (it has no
    summaries); it locates the batch of an epoch that diverged beyond the tolerance."""
    epochs = [_fp(0)]
    batches = [_batch(0, b) for b in range(3)]
    changed = [_batch(0, 0), _batch(0, 1, "2"), _batch(0, 2)]
    from keras_repro.store.log import FingerprintLog

    reference = FingerprintLog(_fp(0), tuple(epochs), batches=tuple(batches))
    assert compare_runs(reference, FingerprintLog(_fp(0), tuple(epochs), batches=tuple(changed)), rtol=0.1).first_divergence is None
    diverged = FingerprintLog(_fp(0), (_fp(0, **{"model/dense/bias": "e" * 64}),), batches=tuple(changed))
    found = compare_runs(reference, diverged, rtol=0.1).first_divergence
    assert (found.stage, found.batch) == ("batch", 1)
