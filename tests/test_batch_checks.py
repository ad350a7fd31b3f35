"""Batch checksums brought to the host in groups, checksummed at batch end or when the next
batch begins: the same fingerprints either way, and a divergence named at its exact batch."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fingerprinting import checksums
from tests.conftest import make_data, make_model
from tests.test_tolerance_and_batches import NudgeAtBatch, _fit

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


@pytest.mark.parametrize("every", [1, 2, 3])
def test_begin_capture_records_what_end_capture_records(every):
    logs = {}
    for capture in ("end", "begin"):
        callback = kr.SeedCallback(5, every_n_batches=every, capture=capture, fetch_every=3)
        _fit([callback], epochs=2)
        logs[capture] = [(fp.epoch, fp.batch, fp.digest) for fp in callback.log.batches]
    assert logs["end"] == logs["begin"] and len(logs["end"]) == 2 * (8 // every)


def test_a_divergence_is_named_at_its_batch_though_found_a_group_later(tmp_path):
    """20 batches an epoch, checksums fetched in groups of 4: a one-ulp change after batch 7
    (the last of a group) or batch 5 (found when batch 7's group comes to the host) of epoch 0
    is named at its own batch, by either capture."""
    x, y = make_data(n=160)
    path = tmp_path / "run.h5"

    def fit(*callbacks):
        keras.backend.clear_session()
        make_model(5).fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False, callbacks=list(callbacks))

    fit(kr.SeedCallback(5, path, every_n_batches=1, fetch_every=4, capture="end"))
    assert [fp.batch for fp in kr.load_fingerprints(path).batches] == list(range(20))
    for capture in ("end", "begin"):
        for at in (7, 5):
            seen = []

            class Count(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    seen.append(batch)

            nudge = NudgeAtBatch(0, at)
            with pytest.raises(kr.FingerprintMismatch) as info:
                fit(nudge, kr.SeedCallback(5, path, every_n_batches=1, fetch_every=4, capture=capture), Count())
            found = info.value.divergence
            assert (found.stage, found.epoch, found.batch, found.variable) == ("batch", 0, at, nudge.path)
            if at == 5:  # found with its group (batches 4-7), after batch 5 ended
                assert max(seen) == (6 if capture == "end" else 7), (capture, seen[-3:])


def test_begin_capture_names_a_change_after_an_epochs_last_batch(tmp_path):
    path = tmp_path / "run.h5"
    _fit([kr.SeedCallback(5, path, every_n_batches=1, capture="end")])
    nudge = NudgeAtBatch(0, 7)
    with pytest.raises(kr.FingerprintMismatch) as info:
        _fit([nudge, kr.SeedCallback(5, path, every_n_batches=1, capture="begin")])
    found = info.value.divergence
    assert (found.stage, found.epoch, found.batch, found.variable) == ("batch", 0, 7, nudge.path)


class _AsyncNoop(keras.callbacks.Callback):
    async_safe = True

    def on_train_batch_end(self, batch, logs=None):
        pass


def test_begin_capture_under_async_dispatch():
    """With every callback async-safe Keras runs batch-end hooks on threads, in any order;
    capture="begin" still records the state of each batch."""
    end = kr.SeedCallback(5, every_n_batches=1, capture="end")
    _fit([end])
    begin = kr.SeedCallback(5, every_n_batches=1, capture="begin")
    assert begin.async_safe and not end.async_safe
    _fit([begin, _AsyncNoop()])
    assert [fp.digest for fp in end.log.batches] == [fp.digest for fp in begin.log.batches]


@pytest.mark.unit
def test_flat_layout_equals_the_definition():
    """The host form checksums many arrays in one pass, exactly as `lanes` does one by one."""
    rng = np.random.default_rng(1)
    n = checksums.CHUNK_WORDS
    for _ in range(60):
        sizes = [int(rng.choice([0, 1, 3, 100, n - 1, n, n + 5, 2 * n + 7])) for _ in range(rng.integers(1, 8))]
        arrays = [rng.integers(0, 2**32, s, dtype=np.uint32) for s in sizes]
        expected = np.stack([checksums.lanes(a) for a in arrays])
        assert np.array_equal(checksums.FlatLayout(sizes).lanes(arrays), expected), sizes


@pytest.mark.unit
def test_argument_errors():
    with pytest.raises(ValueError, match="fetch_every"):
        kr.SeedCallback(1, every_n_batches=1, fetch_every=0)
    with pytest.raises(ValueError, match="capture"):
        kr.SeedCallback(1, every_n_batches=1, capture="middle")
