"""Data fingerprints by content (`keras_repro.fit.fed_data`): every batch a fit feeds, in every input
form, checksummed inside the step and recorded in the data part. Run on each backend
(KERAS_BACKEND=jax / torch)."""

from __future__ import annotations

import contextlib
import importlib.util

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_repro as kr
from keras_repro import _backend
from keras_repro.errors import FingerprintMismatch, ReproWarning
from keras_repro.fingerprinting import checksums
from keras_repro.fingerprinting.digests import hash_array
from keras_repro.fit import fed_data

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too

ROWS, BATCH, STEPS, EPOCHS = 24, 4, 6, 2


def _data(epochs: int = EPOCHS, change: tuple | None = None) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """batches[epoch][batch] = (x, y); `change` = (epoch, batch, "x" or "y") alters one value."""
    rng = np.random.default_rng(0)
    x = rng.random((ROWS, 8), dtype=np.float32)
    y = rng.integers(0, 3, ROWS).astype("int32")
    batches = [[(x[b * BATCH:(b + 1) * BATCH].copy(), y[b * BATCH:(b + 1) * BATCH].copy()) for b in range(STEPS)]
               for _ in range(epochs)]
    if change is not None:
        epoch, batch, leaf = change
        bx, by = batches[epoch][batch]
        if leaf == "x":
            bx[1, 3] += 0.5
        else:
            by[2] = (by[2] + 1) % 3
    return batches


class _Batches(keras.utils.PyDataset):
    """A PyDataset that gives each epoch's own batches: `_Epochs` tells it the epoch (Keras
    calls the PyDataset's own epoch hooks a number of times that depends on the backend)."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches, self.epoch = batches, 0

    def __len__(self) -> int:
        return STEPS

    def __getitem__(self, index: int) -> tuple:
        return self.batches[self.epoch][index]


class _Epochs(keras.callbacks.Callback):
    """Sets a `_Batches`' epoch as each epoch begins."""

    def __init__(self, dataset: _Batches) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = epoch


def _feed(form: str, batches: list) -> tuple[tuple, dict]:
    """(fit's positional arguments, keyword arguments) for an input form."""
    if form == "tf.data":  # one pass over every epoch's batches; steps_per_epoch goes on where it stopped
        x = np.concatenate([bx for epoch in batches for bx, _ in epoch])
        y = np.concatenate([by for epoch in batches for _, by in epoch])
        return (tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH),), {"steps_per_epoch": STEPS, "shuffle": False}
    if form == "PyDataset":  # Keras shuffles the order of a PyDataset's batches unless told not to
        dataset = _Batches(batches)
        return (dataset,), {"shuffle": False, "callbacks": [_Epochs(dataset)]}
    if form == "generator":
        return ((batch for epoch in batches for batch in epoch),), {"steps_per_epoch": STEPS, "shuffle": False}
    if form == "arrays":  # a plain keras.Model orders arrays: not shuffled, they are fed as they are
        x, y = (np.concatenate([batch[i] for batch in batches[0]]) for i in (0, 1))
        return (x, y), {"batch_size": BATCH, "shuffle": False}
    raise ValueError(form)


def _model(cls: type = keras.Sequential) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = cls([keras.Input((8,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(form: str, batches: list, **callback) -> tuple[keras.Model, kr.SeedCallback, keras.callbacks.History]:
    model, seed_callback = _model(), kr.SeedCallback(5, **callback)
    args, kwargs = _feed(form, batches)
    kwargs["callbacks"] = [*kwargs.get("callbacks", []), seed_callback]
    history = model.fit(*args, epochs=EPOCHS, verbose=0, **kwargs)
    return model, seed_callback, history


def _fed(fp: kr.Fingerprint) -> dict[str, str]:
    return {r.path: r.digest for r in fp.part("data") if r.path.startswith(("fed/", "validated/"))}


# The checksum definition ----------------------------------------------------------------------

@pytest.mark.unit
def test_running_lanes_are_the_lanes_of_each_prefix():
    """Row k of `running_lanes` is `lanes` of the words up to k, also when it goes on from a part."""
    words = np.random.default_rng(1).integers(0, 2**32, 101, dtype=np.uint64).astype(np.uint32)
    running = checksums.running_lanes(words)
    assert all(np.array_equal(running[k], checksums.lanes(words[: k + 1])) for k in range(len(words)))
    assert np.array_equal(checksums.running_lanes(words[40:], 40, running[39]), running[40:])
    changed = words.copy()
    changed[40] ^= 1
    assert np.array_equal(checksums.running_lanes(changed)[:40], running[:40])
    assert not (checksums.running_lanes(changed)[40:] == running[40:]).all(axis=1).any()


@pytest.mark.parametrize("dtype", ["float32", "int32", "uint8", "bool", "float16", "bfloat16", "int64"])
@pytest.mark.unit
def test_step_lanes_equal_the_definition(dtype):
    """The backend's in-step checksum of a batch's arrays is `checksums.lanes` of each."""
    if dtype == "int64" and _backend.name() == "jax":
        dtype = "int32"  # JAX without x64 holds no 8-byte integers
    rng = np.random.default_rng(2)
    arrays = [(rng.random((5, 3)) * 100).astype(dtype), (rng.random(7) * 100).astype(dtype)]
    tensors = [keras.ops.convert_to_tensor(a) for a in arrays]
    found = _backend.lanes_to_host([_backend.step_lanes(tensors)])[0]
    assert found.tolist() == [checksums.lanes(a).tolist() for a in arrays]


@pytest.mark.unit
def test_named_leaves_name_each_array_of_a_batch():
    """Leaves are named by their place in (x, y, sample_weight), as the content records are."""
    batch = ({"image": 1, "mask": 2}, [3, 4], 5)
    assert [name for name, _ in fed_data.named_leaves(batch)] == ["x/image", "x/mask", "y/0", "y/1", "sample_weight"]
    assert [name for name, _ in fed_data.named_leaves(7)] == ["x"]


# Both directions, every input form -------------------------------------------------------------

FORMS = ["tf.data", "PyDataset", "generator", "arrays"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("leaf", ["x", "y"])
def test_one_changed_value_is_named_at_its_epoch_batch_and_leaf(tmp_path, form, leaf):
    """Same data verifies; one value changed in one batch is named at that epoch, batch and leaf,
    as data, before any weight."""
    reference = str(tmp_path / "ref.h5")
    epoch = 0 if form == "arrays" else 1  # arrays are the same every epoch
    _fit(form, _data(), reference=reference, every_n_batches=1)
    _, same, _ = _fit(form, _data(), reference=reference, every_n_batches=1, mode="verify")
    assert same.divergence is None and same.verified_epochs == (0, 1)
    with pytest.raises(FingerprintMismatch) as raised:
        _fit(form, _data(change=(epoch, 2, leaf)), reference=reference, every_n_batches=1, mode="verify")
    found = raised.value.divergence
    assert (found.epoch, found.stage, found.batch, found.part, found.variable) == (epoch, "batch", 2, "data", f"fed/{leaf}")
    assert f"the input pipeline fed different data at epoch {epoch}, batch 2 ({leaf})" in str(raised.value)


def test_epoch_fingerprints_name_the_epoch_without_batch_checks(tmp_path):
    """Without every_n_batches the epoch's data part names the epoch and leaf."""
    reference = str(tmp_path / "ref.h5")
    _fit("generator", _data(), reference=reference)
    with pytest.raises(FingerprintMismatch) as raised:
        _fit("generator", _data(change=(1, 4, "x")), reference=reference, mode="verify")
    found = raised.value.divergence
    assert (found.epoch, found.stage, found.part, found.variable) == (1, "epoch", "data", "fed/x")
    assert "the input pipeline fed different data at epoch 1 (x; SeedCallback(every_n_batches=1) names" in str(raised.value)


def test_validation_batches_are_fingerprinted(tmp_path):
    """Validation data are recorded per epoch and a changed value is named as validation data."""
    batches = _data()
    rng = np.random.default_rng(3)
    vx, vy = rng.random((8, 8), dtype=np.float32), rng.integers(0, 3, 8).astype("int32")
    reference = str(tmp_path / "ref.h5")

    def fit(vx: np.ndarray, mode: str) -> kr.SeedCallback:
        model, seed_callback = _model(), kr.SeedCallback(5, reference=reference, mode=mode)
        args, kwargs = _feed("PyDataset", batches)
        kwargs["callbacks"].append(seed_callback)
        model.fit(*args, validation_data=(vx, vy), epochs=EPOCHS, verbose=0, **kwargs)
        return seed_callback

    recorded = fit(vx, "record")
    assert {"validated/x", "validated/y"} <= set(_fed(recorded.log.epochs[0]))
    assert fit(vx, "verify").divergence is None
    changed = vx.copy()
    changed[5, 0] += 1.0
    with pytest.raises(FingerprintMismatch) as raised:
        fit(changed, "verify")
    assert (raised.value.divergence.epoch, raised.value.divergence.variable) == (0, "validated/x")
    assert "the validation data differ at epoch 0 (x)" in str(raised.value)


# What the checks leave unchanged --------------------------------------------------------------

class _Logs(keras.callbacks.Callback):
    """Every key Keras hands to batch and epoch hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()

    def on_train_batch_end(self, batch, logs=None):
        self.keys |= set(logs or {})

    def on_test_batch_end(self, batch, logs=None):
        self.keys |= set(logs or {})

    def on_epoch_end(self, epoch, logs=None):
        self.keys |= set(logs or {})


def test_the_checks_change_no_number_trained_and_no_log():
    """Weights are bit-identical with and without data checks (array and tf.data inputs), and no
    callback, History or evaluate() sees the reserved key."""
    x, y = (np.concatenate([batch[i] for batch in _data()[0]]) for i in (0, 1))
    digests, keys = {}, {}
    for checks in (True, False):
        model = kr.DeterministicSequential([keras.Input((8,)), keras.layers.Dense(5), keras.layers.Dense(3)], seed=3)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        logs = _Logs()
        history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_split=0.25, verbose=0,
                            callbacks=[kr.SeedCallback(3, data_checks=checks), logs])
        plain = _model()
        plain.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), epochs=EPOCHS, verbose=0, shuffle=False,
                  callbacks=[kr.SeedCallback(3, data_checks=checks)])
        digests[checks] = (kr.fingerprint(model).digest, kr.fingerprint(plain).digest)
        keys[checks] = (logs.keys, set(history.history), set(model.evaluate(x, y, verbose=0, return_dict=True)))
    assert digests[True] == digests[False]
    assert keys[True] == keys[False]
    assert fed_data.KEY not in set().union(*keys[True])
    assert set(keys[True][1]) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_a_second_fit_reuses_the_wrapped_functions_and_each_fit_puts_them_back():
    """After a fit the model's own functions are back (predict and evaluate as before); a second
    fit reuses the wrapped ones, records its batches, and a compile builds them anew."""
    model = _model()
    args, kwargs = _feed("arrays", _data())
    keras_function = None
    for fit in range(2):
        seed_callback = kr.SeedCallback(5)
        model.fit(*args, epochs=1, verbose=0, callbacks=[seed_callback], **kwargs)
        assert "train_step" not in model.__dict__ and "test_step" not in model.__dict__
        assert model.train_function is not getattr(model, fed_data.CACHE_ATTRIBUTE).functions["train"]
        assert set(_fed(seed_callback.log.epochs[0])) == {"fed/x", "fed/y"}
        if fit == 0:
            wrapped = getattr(model, fed_data.CACHE_ATTRIBUTE)
            keras_function = model.train_function
    assert getattr(model, fed_data.CACHE_ATTRIBUTE) is wrapped and model.train_function is keras_function
    assert model.predict(args[0][:2], verbose=0).shape == (2, 3)
    assert set(model.evaluate(*args, verbose=0, return_dict=True)) == {"loss"}
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*args, epochs=1, verbose=0, callbacks=[kr.SeedCallback(5)], **kwargs)
    assert getattr(model, fed_data.CACHE_ATTRIBUTE) is not wrapped


def _by_definition(epoch_batches: list) -> dict[str, str]:
    """The fed/x and fed/y records of an epoch's batches, from `checksums.lanes` of each."""
    records = {}
    for index, name in enumerate(("x", "y")):
        column = np.array([checksums.lanes(batch[index]) for batch in epoch_batches], np.uint32)
        path = f"fed/{name}"
        records[path] = hash_array(column, f"data\0{path}\0uint32\0{column.shape}\0".encode())
    return records


def test_a_plain_model_fed_tf_data_records_the_checksum_of_each_batch():
    """A plain keras.Model with a SeedCallback, fed a tf.data pipeline, records the checksum of
    every batch it fed (by the definition), and History holds no more than before."""
    batches = _data(change=(1, 3, "x"))
    _, seed_callback, history = _fit("tf.data", batches)
    shapes = {r.path: r.shape for r in seed_callback.log.epochs[1].part("data")}
    assert shapes == {"fed/x": (STEPS, 2), "fed/y": (STEPS, 2)}
    assert [_fed(fp) for fp in seed_callback.log.epochs] == [_by_definition(epoch) for epoch in batches]
    assert _fed(seed_callback.log.epochs[0])["fed/y"] == _fed(seed_callback.log.epochs[1])["fed/y"]
    assert _fed(seed_callback.log.epochs[0])["fed/x"] != _fed(seed_callback.log.epochs[1])["fed/x"]
    assert set(history.history) == {"loss"}


def test_a_subclass_train_step_is_wrapped_as_it_is():
    """A model whose class overrides train_step keeps it (called, same weights) and gets data records."""
    class Counting(keras.Sequential):
        calls = 0

        def train_step(self, *args):
            Counting.calls += 1
            return super().train_step(*args)

    digests = []
    for checks in (True, False):
        model = _model(Counting)
        args, kwargs = _feed("arrays", _data())
        seed_callback = kr.SeedCallback(5, data_checks=checks)
        model.fit(*args, epochs=1, verbose=0, callbacks=[seed_callback], **kwargs)
        digests.append(kr.fingerprint(model).digest)
        assert bool(_fed(seed_callback.log.epochs[0])) is checks
    assert Counting.calls > 0 and digests[0] == digests[1]


def test_references_with_and_without_data_records_verify_each_other(tmp_path):
    """Data records are added later: a reference recorded without them (as earlier versions wrote
    them) verifies a run with them, batch fingerprints included, and the other way round."""
    for recorded, verified in ((False, True), (True, False)):
        reference = str(tmp_path / f"{recorded}.h5")
        _fit("PyDataset", _data(), reference=reference, every_n_batches=2, data_checks=recorded)
        _, seed_callback, _ = _fit("PyDataset", _data(), reference=reference, every_n_batches=2, data_checks=verified,
                                   mode="verify")
        assert seed_callback.divergence is None and seed_callback.verified_epochs == (0, 1)


def test_several_steps_per_call_are_checked_or_named():
    """With steps_per_execution=2 every batch is checked where the backend's loop allows it (the
    same records as one step per call); where it does not (TensorFlow), the fit warns and notes it."""
    if _backend.name() == "torch":
        pytest.skip("Keras' torch trainer runs one step per call")
    batches = _data()
    model = _model()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)
    seed_callback = kr.SeedCallback(5)
    gap = _backend.data_checks_gap(model)
    if gap is not None:
        with pytest.warns(ReproWarning, match="steps_per_execution=2"):
            model.fit(_Batches(batches), epochs=1, verbose=0, shuffle=False, callbacks=[seed_callback])  # epoch 0
        assert "steps_per_execution=2" in seed_callback.log.notes["data_checks"]
        assert _fed(seed_callback.log.epochs[0]) == {}
        return
    model.fit(_Batches(batches), epochs=1, verbose=0, shuffle=False, callbacks=[seed_callback])
    _, one_step, _ = _fit("PyDataset", batches)
    assert _fed(seed_callback.log.epochs[0]) == _fed(one_step.log.epochs[0]) != {}


@pytest.mark.skipif(importlib.util.find_spec("grain") is None, reason="grain is not installed (pip install '.[grain]')")
def test_grain_batches_are_fingerprinted(tmp_path):
    """A Grain dataset's batches are recorded, and a changed value is named at its batch."""
    import grain

    def dataset(change: bool) -> object:
        (x, y), = [(np.concatenate([b[0] for b in e]), np.concatenate([b[1] for b in e])) for e in _data(1)]
        if change:
            x = x.copy()
            x[13, 2] += 1.0
        return grain.MapDataset.source([(x[i], y[i]) for i in range(ROWS)]).batch(BATCH)

    reference = str(tmp_path / "ref.h5")
    for change, mode in ((False, "record"), (False, "verify"), (True, "verify")):
        model, seed_callback = _model(), kr.SeedCallback(5, reference=reference, mode=mode, every_n_batches=1)
        if change:
            with pytest.raises(FingerprintMismatch) as raised:
                model.fit(dataset(change), epochs=1, verbose=0, shuffle=False, callbacks=[seed_callback])
            found = raised.value.divergence
            assert (found.epoch, found.batch, found.variable) == (0, 13 // BATCH, "fed/x")
        else:
            model.fit(dataset(change), epochs=1, verbose=0, shuffle=False, callbacks=[seed_callback])
            assert seed_callback.divergence is None and _fed(seed_callback.log.epochs[0])


@pytest.mark.unit
def test_strings_are_checksummed_by_their_fingerprint_on_tensorflow():
    """On TensorFlow, string batches (a text pipeline) are checksummed: equal strings, equal lanes;
    one changed string, other lanes."""
    if _backend.name() != "tensorflow":
        pytest.skip("string tensors are TensorFlow's")
    words = tf.constant([["a cat", "a dog"], ["two", "three"]])
    same = _backend.lanes_to_host([_backend.step_lanes([words]), _backend.step_lanes([tf.identity(words)])])
    other = _backend.lanes_to_host([_backend.step_lanes([tf.constant([["a cat", "a dog"], ["two", "thre"]])])])
    assert np.array_equal(same[0], same[1]) and not np.array_equal(same[0], other[0])


def test_a_batch_that_cannot_be_checksummed_warns_and_trains_as_without(monkeypatch):
    """If the checksum of a batch fails inside the step, training goes on as without data checks,
    and the fit warns once, naming the error, and notes it."""
    digests = {}
    for checks in (False, True):
        if checks:
            def refuse(leaves):
                raise TypeError("no checksum for this batch")

            monkeypatch.setattr(_backend, "step_lanes", refuse)
        model, seed_callback = _model(), kr.SeedCallback(5, data_checks=checks)
        args, kwargs = _feed("arrays", _data())
        with pytest.warns(ReproWarning, match="no checksum for this batch") if checks else contextlib.nullcontext():
            model.fit(*args, epochs=EPOCHS, verbose=0, callbacks=[seed_callback], **kwargs)
        digests[checks] = kr.fingerprint(model).digest
        assert _fed(seed_callback.log.epochs[-1]) == {}
    assert digests[True] == digests[False]
    assert "no checksum for this batch" in seed_callback.log.notes["data_checks.train"]
