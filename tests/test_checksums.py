"""Tests for batch checksums: the definition, its detection power, and the backends."""

from __future__ import annotations

import keras
import ml_dtypes
import numpy as np
import pytest

from keras_repro import _backend
from keras_repro.fingerprinting import checksums
from keras_repro.fingerprinting.batch_checksums import BatchChecksums
from keras_repro.fingerprinting.digests import PARTS, fingerprint
from keras_repro.fingerprinting.variables import model_variables

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too

MASK = 0xFFFFFFFF


def _fmix32(h: int) -> int:
    """MurmurHash3's finalizer on Python ints: written independently of the library."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK
    return h ^ (h >> 16)


def _lanes_by_hand(words: list[int]) -> list[int]:
    return [
        sum(words) & MASK,
        sum(_fmix32((w + i * 0x9E3779B9) & MASK) for i, w in enumerate(words)) & MASK,
    ]


@pytest.mark.unit
def test_lanes_match_the_definition_computed_by_hand():
    words = [0, 1, 2, 0xFFFFFFFF, 0x80000000, 12345]
    assert checksums.lanes(np.array(words, np.uint32)).tolist() == _lanes_by_hand(words)
    # MurmurHash3's published finalizer values pin the hand-made fmix32 itself.
    assert _fmix32(0) == 0 and _fmix32(1) == 0x514E28B7


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.array([1.0], np.float32), [0x3F800000]),
        (np.array([1.0], np.float64), [0x00000000, 0x3FF00000]),  # low word, then high
        (np.array([2**32 + 7], np.int64), [7, 1]),
        (np.array([1.0], np.float16), [0x3C00]),  # zero-extended
        (np.array([-1], np.int8), [0xFF]),
        (np.array([True, False]), [1, 0]),
        (np.array([[1, 2], [3, 4]], np.int32), [1, 2, 3, 4]),  # row-major
        (np.array([1.0], np.dtype(">f4")), [0x3F800000]),  # byte order does not matter
        (np.array([1.0, -2.0], ml_dtypes.bfloat16), [0x3F80, 0xC000]),  # types ml_dtypes adds: by their bits
        (np.array([1.0], ml_dtypes.float8_e4m3fn), [0x38]),
    ],
)
@pytest.mark.unit
def test_words_of_each_dtype(array, words):
    assert checksums.words(array).tolist() == words
    assert checksums.lanes(array).tolist() == _lanes_by_hand(words)


@pytest.mark.unit
def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="cannot checksum an array of dtype"):
        checksums.words(np.array(["a"]))
    with pytest.raises(TypeError, match="cannot checksum an array of dtype"):  # a structured type
        checksums.words(np.zeros(2, np.dtype([("a", "<u2")])))


@pytest.mark.unit
def test_any_single_bit_flip_changes_both_lanes():
    rng = np.random.default_rng(0)
    array = rng.standard_normal(1000).astype(np.float32)
    base = checksums.lanes(array)
    bits = array.view(np.uint32)
    for _ in range(200):
        changed = bits.copy()
        changed[rng.integers(array.size)] ^= np.uint32(1) << np.uint32(rng.integers(32))
        moved = checksums.lanes(changed.view(np.float32))
        assert moved[0] != base[0] and moved[1] != base[1]


@pytest.mark.unit
def test_differences_that_cancel_in_the_sum_are_caught_by_the_mixed_lane():
    """Two values one ulp up and down, or two values swapped, keep lane 0; lane 1 moves."""
    array = np.linspace(-1, 1, 64, dtype=np.float32)
    base = checksums.lanes(array)
    ulps = array.copy()
    ulps[3] = np.nextafter(ulps[3], np.float32(np.inf))
    ulps[40] = np.nextafter(ulps[40], np.float32(-np.inf))
    swapped = array.copy()
    swapped[[5, 9]] = swapped[[9, 5]]
    for changed in (ulps, swapped):
        moved = checksums.lanes(changed)
        if changed is swapped:
            assert moved[0] == base[0]
        assert moved[1] != base[1]
    assert np.array_equal(checksums.lanes(array.copy()), base)


@pytest.mark.unit
def test_digest_round_trip():
    pair = np.array([1, 0xFFFFFFFF], np.uint32)
    digest = checksums.lanes_to_digest(pair)
    assert digest == "01000000ffffffff" and len(digest) == 2 * checksums.DIGEST_BYTES
    assert checksums.digest_to_lanes(digest).tolist() == pair.tolist()


def _trained_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.GaussianNoise(0.1),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((16, 6), "float32"), np.zeros((16, 2), "float32"), batch_size=8, verbose=0)
    return model


def test_backend_checksums_equal_the_definition():
    """The compiled form of the active backend gives the NumPy definition's lanes for every
    variable: float weights, BatchNorm statistics, integer counters, SeedGenerator states."""
    model = _trained_model()
    variables = [v for _, v in sorted(model_variables(model), key=lambda pv: PARTS.index(pv[0]))]
    dtypes = {str(v.dtype) for v in variables}
    assert len(dtypes) >= 2, dtypes  # floats and integers both covered
    expected = np.stack([checksums.lanes(_backend.to_numpy(v)) for v in variables])
    computed = BatchChecksums(model).compute()
    assert computed.dtype == np.uint32 and computed.shape == (len(variables), 2)
    assert np.array_equal(computed, expected)
    # ...and follows the state: one ulp on one weight moves exactly that row.
    kernel = model.layers[-1].kernel
    value = np.array(_backend.to_numpy(kernel))
    value.flat[0] = np.nextafter(value.flat[0], np.float32(np.inf))
    kernel.assign(value)
    moved = BatchChecksums(model).compute()
    changed_rows = np.flatnonzero((moved != computed).any(axis=1)).tolist()
    assert changed_rows == [next(i for i, v in enumerate(variables) if v is kernel)]


def test_bfloat16_variables_are_checksummed_and_fingerprinted():
    """Variables of a bfloat16 layer (NumPy has no bfloat16; ml_dtypes adds it): the compiled
    checksums equal the definition, and one changed value moves that variable's epoch digest
    and checksum only."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, dtype="bfloat16"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((16, 6), "float32"), np.zeros((16, 2), "float32"), batch_size=8, verbose=0)
    kernel = model.layers[0].kernel
    assert str(kernel.dtype) == "bfloat16"
    variables = [v for _, v in sorted(model_variables(model), key=lambda pv: PARTS.index(pv[0]))]
    computed = BatchChecksums(model).compute()
    assert np.array_equal(computed, np.stack([checksums.lanes(_backend.to_numpy(v)) for v in variables]))
    before = fingerprint(model)
    kernel.assign(kernel * 2)
    after = fingerprint(model)
    moved = [a.path for a, b in zip(before.records, after.records) if a.digest != b.digest]
    assert moved == [kernel.path]
    rows = np.flatnonzero((BatchChecksums(model).compute() != computed).any(axis=1)).tolist()
    assert rows == [next(i for i, v in enumerate(variables) if v is kernel)]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch device form runs on the torch backend")
def test_torch_device_form_equals_the_definition():
    """The torch-ops form (used for tensors on accelerators) computed here on CPU tensors."""
    model = _trained_model()
    variables = [v for _, v in model_variables(model)]
    expected = np.stack([checksums.lanes(_backend.to_numpy(v)) for v in variables])
    run = _backend._module._device_checksum_function(variables)
    lanes = (run().cpu().numpy() & 0xFFFFFFFF).astype(np.uint32)  # what `finish` makes of its result
    assert np.array_equal(lanes, expected)


def test_batch_fingerprint_records_name_each_variable():
    model = _trained_model()
    checks = BatchChecksums(model)
    fp = checks.fingerprint(checks.compute(), epoch=1, batch=4)
    assert (fp.epoch, fp.batch) == (1, 4)
    assert [r.path for r in fp.records] == list(fp.variables)
    assert all(len(d) == 16 for d in fp.variables.values())
    assert np.array_equal(checksums.expected_lanes(fp), checks.compute())
    # Same variables, in the same order, as the epoch fingerprint's records.
    assert [(r.path, r.part, r.shape) for r in fp.records] == [
        (r.path, r.part, r.shape) for r in fingerprint(model).records
    ]


class _CheckAgainstDefinition(keras.callbacks.Callback):
    """After each batch, syncs the model and computes the lanes from the variables with the
    NumPy definition (SeedCallback brings its own to the host later, in groups)."""

    def __init__(self):
        super().__init__()
        self.expected = []

    def on_train_batch_end(self, batch, logs=None):
        _backend.sync_model_state(self.model)
        ordered = sorted(model_variables(self.model), key=lambda pv: PARTS.index(pv[0]))
        self.expected.append(np.stack([checksums.lanes(_backend.to_numpy(v)) for _, v in ordered]))


def test_mid_epoch_checksums_are_of_the_current_state():
    """During a fit (where JAX keeps the state outside the variables) every batch checksum
    equals the definition applied to that batch's state, and the state moves each batch,
    though the checksums come to the host in groups, after the state has moved on."""
    import keras_repro as kr

    model = _trained_model()
    seed_callback = kr.SeedCallback(3, every_n_batches=1, capture="end", fetch_every=5)
    check = _CheckAgainstDefinition()
    x, y = np.random.default_rng(0).random((48, 6), "float32"), np.zeros((48, 2), "float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[seed_callback, check])
    computed = [checksums.expected_lanes(fp)[len(fp.part("data")):] for fp in seed_callback.log.batches]  # the state's
    assert len(computed) == len(check.expected) == 12
    assert all(np.array_equal(c, e) for c, e in zip(computed, check.expected))
    state = [r for r in seed_callback.log.batches[0].records if r.part != "data"]
    trainable = [i for i, r in enumerate(state) if r.part == "trainable"]
    for before, after in zip(computed, computed[1:]):
        assert not np.array_equal(before[trainable], after[trainable])
