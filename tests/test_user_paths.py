"""What users do that earlier tests did not: default verbosity, the usual callbacks, loaded
and continued models, pretrained layers, interrupted recordings, read-only references and
the messages they get. One test (or a few) per defect of issue 11, each failing before its fix."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import sys
import threading
import warnings

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.store.reference import ReferenceFile, lock_path
from tests.conftest import edit_reference, make_data, make_model, run_child

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


def _functional(seed=7, **kwargs):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.25)(hidden)
    return kr.DeterministicModel(inputs, keras.layers.Dense(3, activation="softmax")(hidden), seed=seed, **kwargs)


def _sequential(seed=7, with_input=True):
    layers = [keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.25), keras.layers.Dense(3, activation="softmax")]
    return kr.DeterministicSequential(([keras.Input((6,))] if with_input else []) + layers, seed=seed)


def _compiled(model, learning_rate=0.01):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class LogsAreNumbers(keras.callbacks.Callback):
    """Fails a fit whose epoch logs hold anything a progress bar could not average."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(dict(logs))
        assert all(isinstance(v, (int, float, np.number)) for v in logs.values()), logs


class WeightsAtTrainBegin(keras.callbacks.Callback):
    """Keeps the weights the model holds when its fit begins."""

    def on_train_begin(self, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# 1. Default verbosity and the usual callbacks -----------------------------------------------


@pytest.mark.parametrize("verbose", ["auto", 1, 2])
def test_default_verbosity_with_and_without_a_callback(tmp_path, verbose, capsys):
    """fit at Keras' default verbosity works, with the model's own SeedCallback and with one
    given; the digests are reachable from History, the logs other callbacks see hold only numbers."""
    x, y = make_data()
    checker = LogsAreNumbers()
    model = _compiled(_functional())
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=verbose, callbacks=[checker])
    assert len(history.fingerprints.epochs) == 2 == len(history.history["loss"]) and "fingerprint" not in history.history
    callback = kr.SeedCallback(7, tmp_path / "run.h5")
    keras.backend.clear_session()
    history = _compiled(_functional()).fit(x, y, epochs=2, batch_size=16, verbose=verbose, callbacks=[callback, checker])
    assert history.fingerprints.epochs == callback.log.epochs
    assert all("fingerprint" not in logs for logs in checker.seen)
    assert "Epoch 2/2" in capsys.readouterr().out or verbose == 2


def test_csv_logger_and_tensorboard_see_numbers_only(tmp_path):
    """CSVLogger writes numeric columns only; TensorBoard writes its scalars without error."""
    x, y = make_data()
    log_path = tmp_path / "log.csv"
    callbacks = [keras.callbacks.CSVLogger(str(log_path)), keras.callbacks.TensorBoard(str(tmp_path / "tb")),
                 kr.SeedCallback(7, tmp_path / "run.h5")]
    _compiled(make_model(7)).fit(x, y, epochs=2, batch_size=16, callbacks=callbacks)
    with open(log_path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and "fingerprint" not in rows[0]
    assert all(value == "NA" or float(value) == float(value) for row in rows for value in row.values())  # NA: no validation
    assert os.listdir(tmp_path / "tb")


def test_history_key_is_opt_in():
    """History holds Keras' keys only, unless log_key names a key for the digests."""
    x, y = make_data()
    history = make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7, log_key="digest")])
    assert history.history["digest"] == [history.fingerprints.epochs[0].digest]
    history = make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7)])
    assert set(history.history) == {"loss", "accuracy"} and len(history.fingerprints.epochs) == 1


# 2. A DeterministicSequential given weights keeps them --------------------------------------


@pytest.mark.parametrize("with_input", [True, False], ids=["with-input", "built-at-first-fit"])
@pytest.mark.parametrize("how", ["load_model", "build_set_weights", "load_weights"])
def test_sequential_given_weights_keeps_them(tmp_path, how, with_input):
    """After load_model, build + set_weights or load_weights, the next fit starts from the
    given weights (at learning rate 0 they stay); another seed's fresh model does not."""
    x, y = make_data()
    trained = _compiled(_sequential(with_input=with_input))
    trained.fit(x, y, epochs=2, batch_size=16, verbose=0)
    weights = [w.copy() for w in trained.get_weights()]
    if how == "load_model":
        trained.save(tmp_path / "m.keras")
        model = keras.models.load_model(tmp_path / "m.keras")
    else:
        model = _sequential(with_input=with_input)
        if not with_input:
            model.build((None, 6))
        if how == "build_set_weights":
            model.set_weights(weights)
        else:
            trained.save_weights(tmp_path / "m.weights.h5")
            model.load_weights(tmp_path / "m.weights.h5")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    seen = WeightsAtTrainBegin()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[seen])
    assert _same(seen.weights, weights) and _same(model.get_weights(), weights)
    fresh = _sequential(seed=7, with_input=with_input)
    fresh.build((None, 6))
    assert not _same(fresh.get_weights(), weights)


@pytest.mark.unit
def test_sequential_built_layer_by_layer_draws_every_layer_from_the_seed():
    """add() after Input: every layer's weights come from the seed, whatever was drawn before."""

    def build(noise):
        keras.backend.clear_session()
        if noise:
            keras.layers.Dense(4)  # draws a default seed from Python's random
            np.random.random()
        model = kr.DeterministicSequential(seed=7)
        model.add(keras.Input((6,)))
        model.add(keras.layers.Dense(8))
        model.add(keras.layers.Dense(3))
        return model.get_weights()

    assert _same(build(False), build(True))


# 3. Pretrained layers in the functional form ---------------------------------------------------


def _pretrained_encoder():
    """A nested model whose weights were 'trained' (set to known values)."""
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu")], name="encoder")
    encoder.set_weights([np.full((6, 8), 0.5, "float32"), np.full((8,), 0.25, "float32")])
    return encoder


def _transfer_model(keep=None, **kwargs):
    """A functional model over a pretrained encoder and an Embedding given its weights;
    `keep(encoder, embedding)` gives keep_weights."""
    encoder = _pretrained_encoder()
    embedding = keras.layers.Embedding(10, 4, weights=np.arange(40, dtype="float32").reshape(10, 4), name="embedding")
    if keep is not None:
        kwargs["keep_weights"] = keep(encoder, embedding)
    numbers, tokens = keras.Input((6,)), keras.Input((3,), dtype="int32")
    merged = keras.layers.Concatenate()([encoder(numbers), keras.layers.Flatten()(embedding(tokens))])
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(merged)
    return kr.DeterministicModel([numbers, tokens], outputs, seed=7, **kwargs), encoder, embedding


def test_keep_weights_keeps_pretrained_layers_and_the_fingerprint_shows_them(tmp_path):
    """keep_weights (layers or names) keeps a pretrained encoder and Embedding(weights=...);
    the head is still drawn from the seed; the initial fingerprint holds the kept values and
    the run notes them."""
    model, encoder, embedding = _transfer_model(keep=lambda encoder, embedding: ["encoder", embedding])
    assert np.all(model.get_layer("encoder").get_weights()[0] == 0.5)
    assert np.array_equal(embedding.get_weights()[0], np.arange(40, dtype="float32").reshape(10, 4))
    head = model.get_layer("head").get_weights()[0].copy()
    keras.backend.clear_session()
    again, _, _ = _transfer_model(keep_weights=["encoder", "embedding"])
    assert np.array_equal(again.get_layer("head").get_weights()[0], head)
    _compiled(model)
    x = [make_data()[0], np.random.default_rng(0).integers(0, 10, (64, 3)).astype("int32")]
    callback = kr.SeedCallback(7, tmp_path / "run.h5")
    model.fit(x, make_data()[1], epochs=1, verbose=0, callbacks=[callback])
    log = kr.load_fingerprints(tmp_path / "run.h5")
    assert log.notes["kept_weights"] == "embedding, encoder"  # in the model's layer order
    kept = [r for r in log.initial.records if r.path.endswith("embedding/embeddings")]
    assert kept and kept[0].stats[0] == float(np.arange(40).sum())


@pytest.mark.unit
def test_default_redraws_and_warns_about_a_nested_model():
    """By default every layer is re-drawn, and a nested model (often pretrained) gets a
    warning naming it and keep_weights; keep_weights=() re-draws silently."""
    with pytest.warns(kr.ReproWarning, match=r"'encoder', a model nested.*keep_weights=\['encoder'\]"):
        model, _, _ = _transfer_model()
    assert not np.all(model.get_layer("encoder").get_weights()[0] == 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", kr.ReproWarning)
        _transfer_model(keep_weights=())


@pytest.mark.unit
def test_keep_weights_errors():
    """Unknown names and wrong types fail with the model's layer names and the argument."""
    with pytest.raises(ValueError, match=r"\['encodr'\].*not a layer.*Received: keep_weights"):
        _transfer_model(keep_weights=["encodr"])
    with pytest.raises(ValueError, match="keep_weights"):
        _functional(keep_weights=3)


@pytest.mark.unit
def test_loading_a_model_with_kept_weights_restores_it(tmp_path):
    """A saved model with keep_weights loads with its trained weights, without a warning."""
    model, _, _ = _transfer_model(keep_weights=["encoder"])
    model.save(tmp_path / "t.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", kr.ReproWarning)
        loaded = keras.models.load_model(tmp_path / "t.keras")
    assert _same(loaded.get_weights(), model.get_weights())


# 4. Continuing, and completing an interrupted recording -----------------------------------------


def test_second_fit_continues_the_run_and_extends_the_reference(tmp_path):
    """fit(3) then fit(3) on the same model, one SeedCallback (record or auto): the reference
    holds epochs 0-5, equal to a straight fit(6), which then verifies against it."""
    x, y = make_data()
    straight = kr.SeedCallback(7, tmp_path / "straight.h5")
    _compiled(_functional()).fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[straight])
    for mode in ("record", "auto"):
        keras.backend.clear_session()
        path = tmp_path / f"{mode}.h5"
        callback = kr.SeedCallback(7, path, mode=mode)
        model = _compiled(_functional())
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
        assert callback.resolved_mode == ("record" if mode == "record" else "extend")
        assert callback.recorded_epochs == (3, 4, 5)
        log = kr.load_fingerprints(path)
        assert [fp.epoch for fp in log.epochs] == list(range(6)) and log.complete
        assert [fp.digest for fp in log.epochs] == [fp.digest for fp in straight.log.epochs]
    keras.backend.clear_session()
    verifier = kr.SeedCallback(7, tmp_path / "auto.h5")
    _compiled(_functional()).fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[verifier])
    assert verifier.resolved_mode == "verify" and verifier.verified_epochs == tuple(range(6))


def test_continuing_a_verified_fit_in_the_same_process(tmp_path):
    """A verify run continued with fit(initial_epoch=...) or a plain second fit verifies the
    later epochs (a DeterministicModel; a plain model with shuffle=False, since Keras' own
    shuffle is not resumable on TensorFlow); a continuation from other weights is caught at
    its start."""
    x, y = make_data()
    for build, shuffle in ((_functional, True), (lambda: make_model(7), False)):
        path = tmp_path / f"run-{shuffle}.h5"
        keras.backend.clear_session()
        _compiled(build()).fit(x, y, epochs=4, batch_size=16, shuffle=shuffle, verbose=0, callbacks=[kr.SeedCallback(7, path)])
        for second in ({"epochs": 4, "initial_epoch": 2}, {"epochs": 2}):
            keras.backend.clear_session()
            model = _compiled(build())
            callback = kr.SeedCallback(7, path, mode="verify")
            model.fit(x, y, epochs=2, batch_size=16, shuffle=shuffle, verbose=0, callbacks=[callback])
            model.fit(x, y, batch_size=16, shuffle=shuffle, verbose=0, callbacks=[callback], **second)
            assert callback.divergence is None and callback.verified_epochs == (2, 3)
        bias = model.trainable_weights[1]
        bias.assign(bias + 1.0)
        with pytest.raises(kr.FingerprintMismatch, match="before the first step of epoch 4"):
            model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[kr.SeedCallback(7, path)])


class StopAt(keras.callbacks.Callback):
    """Interrupts a fit (as Ctrl-C would) at the start of an epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_recording_is_completed_by_the_next_run(tmp_path):
    """A recording interrupted after epoch 1 of 5 is incomplete; the next run (same process,
    auto) verifies epochs 0-1 and records 2-4; the file then equals an uninterrupted one."""
    x, y = make_data()
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        make_model(7).fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[kr.SeedCallback(7, path), StopAt(2)])
    log = kr.load_fingerprints(path)
    assert [fp.epoch for fp in log.epochs] == [0, 1] and log.planned_epochs == 5 and not log.complete
    keras.backend.clear_session()
    callback = kr.SeedCallback(7, path)  # the same thread takes over the interrupted fit's lock
    make_model(7).fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[callback])
    assert callback.resolved_mode == "extend"
    assert callback.verified_epochs == (0, 1) and callback.recorded_epochs == (2, 3, 4)
    assert "verified epochs 0-1" in callback.summary and "recorded epochs 2-4" in callback.summary
    completed = kr.load_fingerprints(path)
    assert completed.complete and [fp.epoch for fp in completed.epochs] == list(range(5))
    keras.backend.clear_session()
    straight = kr.SeedCallback(7)
    make_model(7).fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[straight])
    assert [fp.digest for fp in completed.epochs] == [fp.digest for fp in straight.log.epochs]


def test_a_diverging_run_never_extends_its_reference(tmp_path):
    """An incomplete reference verified by a run that differs is left as it was."""
    x, y = make_data()
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        make_model(7).fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[kr.SeedCallback(7, path), StopAt(2)])
    before = path.read_bytes()
    callback = kr.SeedCallback(7, path, on_mismatch="warn")
    with pytest.warns(kr.FingerprintMismatchWarning):
        make_model(8).fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback])
    assert path.read_bytes() == before and callback.recorded_epochs == ()


def test_early_stopping_leaves_a_complete_reference(tmp_path):
    """A fit stopped by EarlyStopping plans no further epochs: its reference is complete."""
    x, y = make_data()
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    make_model(7).fit(x, y, epochs=10, verbose=0, callbacks=[stop, kr.SeedCallback(7, tmp_path / "run.h5")])
    log = kr.load_fingerprints(tmp_path / "run.h5")
    assert len(log.epochs) == 2 and log.planned_epochs == 2 and log.complete


# 5. Verifying a read-only reference ----------------------------------------------------------------


@contextlib.contextmanager
def read_only(folder):
    """`folder` and its files cannot be written: for real (chmod) for an ordinary user; for
    root, whom permissions do not stop, every call that would write below it fails with
    EROFS, as on a read-only file system."""
    folder = os.path.abspath(folder)
    if os.geteuid() != 0:
        modes = {name: os.stat(os.path.join(folder, name)).st_mode for name in os.listdir(folder)}
        for name in modes:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
            for name, mode in modes.items():
                os.chmod(os.path.join(folder, name), mode)
        return
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path):
        return os.path.abspath(os.fspath(path)).startswith(folder + os.sep) or os.path.abspath(os.fspath(path)) == folder

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    real = {name: getattr(os, name) for name in ("open", "replace", "rename", "unlink", "remove", "mkdir", "chmod")}

    def guarded_open(path, flags, *args, **kwargs):
        if flags & writing and inside(path):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def guard(name):
        def call(path, *args, **kwargs):
            if inside(path) or (args and isinstance(args[0], (str, os.PathLike)) and inside(args[0])):
                refuse(path)
            return real[name](path, *args, **kwargs)
        return call

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", guarded_open)
        for name in ("replace", "rename", "unlink", "remove", "mkdir", "chmod"):
            patch.setattr(os, name, guard(name))
        yield


def test_verify_a_read_only_reference_in_a_read_only_folder(tmp_path):
    """A reference in a folder nobody may write (as in a CI checkout) verifies; auto mode
    verifies too (and says it cannot extend a longer run); record mode verifies it and warns
    that it is kept; a new reference there fails with a clear error; nothing in the folder
    changes."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    path = folder / "run.h5"
    x, y = make_data()
    make_model(7).fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[kr.SeedCallback(7, path)])
    os.remove(lock_path(str(path)))
    before = path.read_bytes()
    with read_only(folder):
        for mode in ("verify", "auto"):
            keras.backend.clear_session()
            callback = kr.SeedCallback(7, path, mode=mode)
            make_model(7).fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
            assert callback.resolved_mode == "verify" and callback.verified_epochs == (0, 1)
            assert callback.divergence is None
        keras.backend.clear_session()
        with pytest.warns(kr.ReproWarning, match="cannot be written, so it is kept as it is.* from 2 on"):
            make_model(7).fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[kr.SeedCallback(7, path)])
        keras.backend.clear_session()
        recorder = kr.SeedCallback(7, path, mode="record")
        with pytest.warns(kr.ReproWarning, match="cannot be written, so it is kept as it is"):
            make_model(7).fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[recorder])
        assert recorder.resolved_mode == "verify" and recorder.verified_epochs == (0, 1)
        assert recorder.recorded_epochs == ()
        with pytest.raises(kr.ReferenceFileError, match="new.h5': cannot be recorded: "):
            make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7, folder / "new.h5")])
    assert sorted(os.listdir(folder)) == ["run.h5"] and path.read_bytes() == before


# 6. Stratified splits of dict and list targets, and the mode for other inputs ------------------


def _two_outputs():
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = {"digit": keras.layers.Dense(3, activation="softmax", name="digit")(hidden),
               "size": keras.layers.Dense(1, name="size")(hidden)}
    model = kr.DeterministicModel(inputs, outputs, seed=7)
    model.compile(optimizer="adam", loss={"digit": "sparse_categorical_crossentropy", "size": "mse"})
    return model


def test_stratified_split_of_several_targets_says_what_to_do():
    """Several targets: a ValueError naming them and the alternatives; one target in a dict or
    list is used as the labels."""
    x, y = make_data()
    with pytest.raises(ValueError, match=r"one array of class labels.*\['digit', 'size'\].*'shuffled'"):
        _two_outputs().fit(x, {"digit": y, "size": x[:, :1]}, validation_split=0.25,
                           validation_split_mode="stratified", verbose=0)
    for wrapped in ({"out": y}, [y]):
        keras.backend.clear_session()
        inputs = keras.Input((6,))
        model = kr.DeterministicModel(inputs, {"out": keras.layers.Dense(3, activation="softmax", name="out")(inputs)}
                                      if isinstance(wrapped, dict) else [keras.layers.Dense(3, activation="softmax")(inputs)],
                                      seed=7)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, wrapped, validation_split=0.25, validation_split_mode="stratified", epochs=1, verbose=0)
        assert np.bincount(y[model._repro_feed.validation_rows], minlength=3).tolist() == [
            round(c * 0.25) for c in np.bincount(y, minlength=3)]


@pytest.mark.unit
def test_split_mode_is_validated_for_every_input():
    """A wrong mode fails for datasets too; a seeded split of a dataset is refused clearly."""
    tf = pytest.importorskip("tensorflow")
    x, y = make_data()
    model = _compiled(_functional())
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match="validation_split_mode.*Received: validation_split_mode='random'"):
        model.fit(dataset, validation_split_mode="random", verbose=0)
    with pytest.raises(ValueError, match="applies to array inputs"):
        model.fit(dataset, validation_split_mode="stratified", verbose=0)


# 7. Smaller defects ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_lock_held_by_another_thread_is_blamed_on_that_fit(tmp_path):
    """A lock held by a fit of another thread of this process says so; one left by an
    interrupted fit of this thread is taken over."""
    path = str(tmp_path / "run.h5")
    holder = ReferenceFile(path)
    thread = threading.Thread(target=holder.lock, args=(True,))
    thread.start()
    thread.join()
    with pytest.raises(kr.ReferenceFileError, match="another fit of this process"):
        ReferenceFile(path).lock(required=True)
    holder.release()
    left = ReferenceFile(path)
    left.lock(required=True)  # never released: its fit was interrupted
    taker = ReferenceFile(path)
    assert taker.lock(required=True) and taker.locked
    taker.release()


def test_reference_path_mistakes(tmp_path, monkeypatch):
    """A folder, an empty path, `~` and a missing folder each do the documented thing."""
    with pytest.raises(kr.ReferenceFileError, match=f"'{tmp_path}': is a folder"):
        kr.SeedCallback(7, tmp_path, mode="record")
    with pytest.raises(ValueError, match="Received: reference=''"):
        kr.SeedCallback(7, "")
    monkeypatch.setenv("HOME", str(tmp_path))
    callback = kr.SeedCallback(7, "~/runs/new/run.h5")
    assert callback.reference == str(tmp_path / "runs" / "new" / "run.h5")
    x, y = make_data()
    make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert (tmp_path / "runs" / "new" / "run.h5").exists()  # missing folders are created, as ModelCheckpoint does
    assert not (tmp_path / "~").exists() and not os.path.exists("~")


@pytest.mark.unit
def test_reference_errors_name_the_file_once(tmp_path):
    """Messages say "Fingerprint file '...'" once, not once per layer of wrapping."""
    import h5py

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file.attrs["x"] = 1
    for path in (foreign, tmp_path / "absent.h5"):
        with pytest.raises(kr.ReferenceFileError) as info:
            kr.load_fingerprints(path)
        assert str(info.value).count("Fingerprint file") == 1, str(info.value)


def test_mismatch_names_the_likely_cause(tmp_path):
    """Another seed, another backend in the reference, and a plain model's initial weights
    each come with their likely cause, first."""
    x, y = make_data()
    path = tmp_path / "run.h5"
    make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7, path)])
    with pytest.raises(kr.FingerprintMismatch, match="Likely cause: the reference was recorded with seed 7; this run uses seed 8"):
        make_model(7).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(8, path)])
    with pytest.raises(kr.FingerprintMismatch, match=r"Likely cause: the initial weights differ.*seed_everything"):
        make_model(None).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7, path)])
    other = "jax" if keras.backend.backend() != "jax" else "torch"
    with edit_reference(path) as file:
        file["environment"].attrs["backend"] = other
    with pytest.raises(kr.FingerprintMismatch) as info:
        make_model(None).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7, path)])
    assert info.value.cause == f"the reference was recorded with the {other} backend; this run uses {keras.backend.backend()}"


@pytest.mark.unit
def test_seed_messages_say_what_to_write():
    """derive_seed folds any int (as validate's message suggests); each model form's
    missing-seed message shows that form."""
    assert 0 <= kr.derive_seed(2**40) <= 2**32 - 1 and kr.derive_seed(2**40) != kr.derive_seed(2**40 + 1)
    with pytest.raises(ValueError, match=r"derive_seed\(1099511627776\)") as info:
        kr.seed_everything(2**40)
    assert "Received: seed=1099511627776" in str(info.value)
    with pytest.raises(ValueError, match=r"DeterministicSequential\(\[keras.Input"):
        kr.DeterministicSequential([keras.Input((3,)), keras.layers.Dense(1)])
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match=r"DeterministicModel\(inputs, outputs, seed=7\)"):
        kr.DeterministicModel(inputs, keras.layers.Dense(1)(inputs))


def test_hash_randomization_warning_points_at_the_users_line():
    """The warning, raised deep inside fit, is attributed to this file's fit(...) line."""
    from keras_repro import seeding

    if not seeding.hash_randomization_enabled():
        pytest.skip("this interpreter was started with a fixed PYTHONHASHSEED")
    seeding.warn_if_hash_randomized.cache_clear()
    x, y = make_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_model(None).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7)])
    found = [w for w in caught if issubclass(w.category, kr.HashRandomizationWarning)]
    assert found and found[0].filename == __file__, [(w.filename, w.lineno) for w in found]


def test_show_and_diff_read_files_without_keras(tmp_path):
    """`keras-repro show` / `diff` import neither Keras nor a backend (h5py and NumPy only)."""
    x, y = make_data()
    for name, seed in (("a.h5", 7), ("b.h5", 8)):
        make_model(seed).fit(x, y, epochs=1, verbose=0, callbacks=[kr.SeedCallback(seed, tmp_path / name)])
    code = ("import runpy, sys; sys.argv = ['keras-repro'] + sys.argv[1:]; "
            "sys.orig_argv = ['python', '-m', 'keras_repro'] + sys.argv[1:]; "
            "exec('try:\\n runpy.run_module(\"keras_repro\", run_name=\"__main__\")\\nexcept SystemExit as e: code = e.code'); "
            "print('EXIT', code, sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    for command in (["show", str(tmp_path / "a.h5")], ["diff", str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]):
        result = run_child([sys.executable, "-c", code, *command], timeout=120, check=False)
        lines = result.stdout.splitlines()
        assert lines[-1] in ("EXIT 0 []", "EXIT 1 []"), (result.stdout[-2000:], result.stderr[-2000:])
    assert "likely cause: the reference was recorded with seed 7; this run uses seed 8" in result.stdout
