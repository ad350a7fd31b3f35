"""Resumed and continued fits of inputs other than arrays see the batches of the straight run
(`keras_repro.fit.input_resume`): a tf.data pipeline with a seeded reshuffling shuffle and a
PyDataset reshuffling with NumPy's global RNG; what cannot be replayed warns and is noted."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro import _backend
from keras_repro.fit import input_resume
from tests.conftest import run_python
from tests.pipelines import ReshuffledRows

pytestmark = pytest.mark.backends

ROWS, BATCH = 96, 32
FORMS = ("tf.data", "PyDataset", "PyDataset-workers-2")


def _arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(ROWS, 4)).astype("float32"), rng.normal(size=(ROWS, 1)).astype("float32")


class Reshuffled(ReshuffledRows):
    """Batches of the rows in an order NumPy's global RNG reshuffles at every epoch's end."""

    def __init__(self, **kwargs):
        super().__init__(*_arrays(), BATCH, **kwargs)


def pipeline(form):
    """A new input of `form`: build it right after the model (a tf.data shuffle's seed pairs with
    TensorFlow's global seed when it is built, which a DeterministicModel sets when created)."""
    if form == "tf.data":
        tf = pytest.importorskip("tensorflow")
        return tf.data.Dataset.from_tensor_slices(_arrays()).shuffle(512, seed=3).batch(BATCH)
    return Reshuffled(workers=2 if form.endswith("2") else 1)


def model():
    inputs = keras.Input((4,))
    built = kr.DeterministicModel(inputs, keras.layers.Dense(1)(inputs), seed=1)
    built.compile("adam", "mse")
    return built


def fed(history):
    """The digest of the batches fed at each epoch of a fit (the data part's `fed/x`)."""
    return [next(r.digest for r in fp.records if r.path == "fed/x") for fp in history.fingerprints.epochs]


def _stale_batches(form):
    """JAX, torch: Keras' first fit reads a batch to build the model, and a PyDataset's workers
    then feed each epoch batches fetched ahead in the one before: not resumable, warned."""
    return form.endswith("2") and bool(_backend.input_build_passes(None, first_fit=True))


def straight_run(form):
    trained = model()
    batches = fed(trained.fit(pipeline(form), epochs=4, verbose=0))
    return batches, kr.fingerprint(trained).digest


@pytest.mark.parametrize("form", FORMS)
def test_a_continued_fit_sees_the_straight_runs_batches(form):
    """fit(2 epochs) then fit(initial_epoch=2) on the same model and input equals 4 epochs straight."""
    batches, digest = straight_run(form)
    assert len(set(batches)) == 4  # the input changes every epoch
    continued = model()
    data = pipeline(form)
    first = fed(continued.fit(data, epochs=2, verbose=0))
    if _stale_batches(form):
        with pytest.warns(kr.errors.ReproWarning, match="fetched ahead in the one before"):
            continued.fit(data, epochs=4, initial_epoch=2, verbose=0)
        return
    second = fed(continued.fit(data, epochs=4, initial_epoch=2, verbose=0))
    assert first + second == batches
    assert kr.fingerprint(continued).digest == digest


@pytest.mark.parametrize("form", FORMS)
def test_a_new_input_resumed_at_epoch_2_replays_its_passes(form, tmp_path, monkeypatch):
    """A loaded model fit from epoch 2 on a new input equals the straight run's epochs 2-3;
    without the replay its epoch 2 sees other batches (epoch 0's for tf.data)."""
    batches, digest = straight_run(form)
    first = model()
    first.fit(pipeline(form), epochs=2, verbose=0)
    first.save(tmp_path / "at2.keras")
    resumed = keras.models.load_model(tmp_path / "at2.keras")
    if _stale_batches(form):
        with pytest.warns(kr.errors.ReproWarning, match="fetched ahead in the one before"):
            resumed.fit(pipeline(form), epochs=4, initial_epoch=2, verbose=0)
        return
    assert fed(resumed.fit(pipeline(form), epochs=4, initial_epoch=2, verbose=0)) == batches[2:]
    assert kr.fingerprint(resumed).digest == digest
    monkeypatch.setattr(input_resume.InputPasses, "prepare", lambda self, *args: {})
    unreplayed = keras.models.load_model(tmp_path / "at2.keras")
    seen = fed(unreplayed.fit(pipeline(form), epochs=3, initial_epoch=2, verbose=0))
    assert seen[0] != batches[2]
    if form == "tf.data":
        assert seen[0] == batches[0]


def test_a_validation_pipeline_is_replayed_too(tmp_path):
    """A reshuffling tf.data validation pipeline: the resumed epochs validate on the straight run's batches."""
    def validated(history):
        return [next(r.digest for r in fp.records if r.path == "validated/x") for fp in history.fingerprints.epochs]

    trained = model()
    straight = validated(trained.fit(pipeline("tf.data"), validation_data=pipeline("tf.data"), epochs=4, verbose=0))
    assert len(set(straight)) == 4
    first = model()
    first.fit(pipeline("tf.data"), validation_data=pipeline("tf.data"), epochs=2, verbose=0)
    first.save(tmp_path / "at2.keras")
    resumed = keras.models.load_model(tmp_path / "at2.keras")
    history = resumed.fit(pipeline("tf.data"), validation_data=pipeline("tf.data"), epochs=4, initial_epoch=2, verbose=0)
    assert validated(history) == straight[2:]


def test_image_dataset_from_directory_resumes_at_epoch_2(tmp_path):
    """As `image_dataset_from_directory(seed=...)` builds it (a seeded reshuffling shuffle): a loaded
    model fit from epoch 2 on a new dataset sees the straight run's epochs 2-3."""
    pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    for label in "ab":
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(24):
            keras.utils.save_img(tmp_path / "images" / label / f"{index}.png", rng.integers(0, 255, (8, 8, 3)).astype("uint8"))

    def images():
        return keras.utils.image_dataset_from_directory(tmp_path / "images", image_size=(8, 8), batch_size=8, seed=1337,
                                                        verbose=False)

    def image_model():
        inputs = keras.Input((8, 8, 3))
        built = kr.DeterministicModel(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)), seed=1)
        built.compile("adam", "mse")
        return built

    straight = fed(image_model().fit(images(), epochs=4, verbose=0))
    assert len(set(straight)) == 4
    first = image_model()
    first.fit(images(), epochs=2, verbose=0)
    first.save(tmp_path / "at2.keras")
    resumed = keras.models.load_model(tmp_path / "at2.keras")
    assert fed(resumed.fit(images(), epochs=4, initial_epoch=2, verbose=0)) == straight[2:]


def _generator():
    x, y = _arrays()
    while True:
        for start in range(0, ROWS, BATCH):
            yield x[start:start + BATCH], y[start:start + BATCH]


@pytest.mark.parametrize("form, named", [
    ("generator", "generator"),
    ("validation PyDataset", "only a training PyDataset is replayed"),
    ("repeat + steps_per_epoch", "steps_per_epoch=3"),
])
def test_what_cannot_be_replayed_warns_at_a_resumed_fit_and_is_noted(form, named):
    """A generator, a reshuffling validation PyDataset, a repeated pipeline with steps_per_epoch:
    a fit from epoch 1 warns naming the form and records a note; a fit from epoch 0 does neither."""
    steps = 3 if form != "validation PyDataset" else None

    def fit(**kwargs):
        built = model()
        if form == "generator":
            return built.fit(_generator(), steps_per_epoch=steps, verbose=0, **kwargs)
        if form == "validation PyDataset":
            return built.fit(pipeline("tf.data"), validation_data=Reshuffled(), verbose=0, **kwargs)
        tf = pytest.importorskip("tensorflow")
        repeated = tf.data.Dataset.from_tensor_slices(_arrays()).batch(BATCH).repeat()
        return built.fit(repeated, steps_per_epoch=steps, verbose=0, **kwargs)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(epochs=1)
    assert not [w for w in caught if "cannot see the batches" in str(w.message)]
    assert "input_resume" not in history.fingerprints.notes
    with pytest.warns(kr.errors.ReproWarning, match=r"starts at epoch 1 and cannot see the batches") as caught:
        history = fit(epochs=2, initial_epoch=1)
    assert any(named in str(w.message) for w in caught)
    assert named in history.fingerprints.notes["input_resume"]


CHILD = """
import json, keras, numpy as np
import keras_repro as kr
from keras_repro import _backend
from keras_repro.fit import input_resume
from tests.test_input_resume import FORMS, pipeline, fed, _stale_batches

FORMS = [form for form in FORMS if not _stale_batches(form)]
out = {{}}
for form in FORMS:
    resumed = keras.models.load_model({folder!r} + "/" + form + ".keras")
    out[form] = [fed(resumed.fit(pipeline(form), epochs=4, initial_epoch=2, verbose=0)), kr.fingerprint(resumed).digest]
input_resume.InputPasses.prepare = lambda self, *args: {{}}
for form in FORMS:
    resumed = keras.models.load_model({folder!r} + "/" + form + ".keras")
    out[form].append(fed(resumed.fit(pipeline(form), epochs=3, initial_epoch=2, verbose=0)))
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_two_epochs_saved_and_resumed_in_a_new_process_equal_four_straight(tmp_path):
    """2 epochs + save + load_model in a new process + fit(initial_epoch=2) == 4 straight epochs,
    batches and weights, for every form; the same process without the replay differs at epoch 2."""
    expected = {}
    for form in [form for form in FORMS if not _stale_batches(form)]:
        expected[form] = straight_run(form)
        first = model()
        first.fit(pipeline(form), epochs=2, verbose=0)
        first.save(tmp_path / f"{form}.keras")
    output = run_python(CHILD.format(folder=str(tmp_path)), env={"KERAS_BACKEND": keras.backend.backend()}).stdout
    result = json.loads(output.split("RESULT", 1)[1])
    for form, (batches, digest) in expected.items():
        resumed, resumed_digest, unreplayed = result[form]
        assert resumed == batches[2:], form
        assert resumed_digest == digest, form
        assert unreplayed[0] != batches[2], form
