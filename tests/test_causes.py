"""The cause a FingerprintMismatch names, for each change injected between a recording and a
verify (issue 22): the place (epoch, part, variable) stays where the runs part, and the cause
is what actually differs. In-process, tiny models, two epochs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fingerprinting import digests
from tests.conftest import edit_reference, make_data

EPOCHS, BATCH = 2, 16


@keras.saving.register_keras_serializable(package="tests_causes")
class Entropy(keras.layers.Layer):
    """Adds a value drawn from fresh entropy when the train step is built: no seed controls it."""

    def call(self, inputs, training=False):
        return inputs + float(np.random.default_rng().normal() * 1e-3) if training else inputs


def _build(seed=7, units=8, activation="relu", optimizer=None, loss="sparse_categorical_crossentropy",
           entropy=False, plain=False):
    """The small functional model of every case (plain: a keras.Model seeded before building)."""
    keras.backend.clear_session()
    if plain:
        kr.seed_everything(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(units, activation=activation)(inputs)
    if entropy:
        hidden = Entropy()(hidden)
    hidden = keras.layers.Dropout(0.25)(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs) if plain else kr.DeterministicModel(inputs, outputs, seed=seed)
    model.compile(optimizer=optimizer() if optimizer else keras.optimizers.Adam(1e-3),
                  loss=loss if isinstance(loss, str) else loss())
    return model


def _data(rows=64, scale=1.0, shift_labels=False):
    x, y = make_data(rows)
    return x * np.float32(scale), (y + 1) % 3 if shift_labels else y


@dataclasses.dataclass(frozen=True)
class Case:
    """One injected change: how the verify differs from the recording, where they part
    (stage, epoch, part, part of the variable's path) and the cause expected (a regex)."""

    name: str
    place: tuple
    cause: str
    build: dict = dataclasses.field(default_factory=dict)
    fit: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    callback_seed: int | None = 7  # None: the DeterministicModel's
    reference: dict = dataclasses.field(default_factory=dict)  # build settings of the recording


CASES = [
    Case("model seed 8 (the callback takes it)", ("initial", 0, "data", "order"),
         r"^the reference was recorded with seed 7; this run uses seed 8$",
         build={"seed": 8}, callback_seed=None),
    Case("callback seed (plain model)", ("initial", 0, "rng", "seed_generator"),
         r"^the reference was recorded with seed 7; this run uses seed 8$", callback_seed=8,
         build={"plain": True}, reference={"plain": True}),
    Case("wider layer", ("initial", 0, "trainable", "kernel"),
         r"^the configuration differs from the reference's: model: layer 1 \('dense\w*', Dense\): units 8 in the "
         r"reference, 16 in this run; weights \(6x8, 8\) in the reference, \(6x16, 16\) in this run$",
         build={"units": 16}),
    Case("another activation", ("epoch", 0, "trainable", "kernel"),
         r"^the configuration differs from the reference's: model: layer 1 \('dense\w*', Dense\): activation relu "
         r"in the reference, tanh in this run$", build={"activation": "tanh"}),
    Case("batch size", ("epoch", 0, "data", "fed/x"),  # the batches fed differ first
         r"^the configuration differs from the reference's: batch size: 16 in the reference, 32 in this run; "
         r"steps per epoch: 4 in the reference, 2 in this run$", fit={"batch_size": 32}),
    Case("shuffle off", ("initial", 0, "data", "order"),
         r"^the configuration differs from the reference's: shuffle: True in the reference, False in this run$",
         fit={"shuffle": False}),
    Case("validation split", ("initial", 0, "data", "order"),
         r"^the configuration differs from the reference's: validation split: 0 in the reference, 0\.25 \(last\) in "
         r"this run; steps per epoch: 4 in the reference, 3 in this run$", fit={"validation_split": 0.25}),
    Case("data scaled by 1.0001", ("initial", 0, "data", "content/x"),
         r"^the training data differ: x holds other values than in the reference \(same dtype and shape; sum \S+ in "
         r"the reference, \S+ in this run\)", data={"scale": 1.0001}),
    Case("other labels", ("initial", 0, "data", "content/y"),
         r"^the training data differ: y holds other values than in the reference", data={"shift_labels": True}),
    Case("more rows", ("initial", 0, "data", "content/x"),
         r"^the configuration differs from the reference's: input: arrays: x float32 \(64, 6\); y int32 \(64,\) in the "
         r"reference, arrays: x float32 \(80, 6\); y int32 \(80,\) in this run; steps per epoch: 4 in the reference, "
         r"5 in this run$", data={"rows": 80}),
    Case("learning rate set at compile", ("initial", 0, "optimizer", "learning_rate"),
         r"^the configuration differs from the reference's: learning rate: 0\.001 in the reference, 0\.002 in this run$",
         build={"optimizer": lambda: keras.optimizers.Adam(2e-3)}),
    Case("another optimizer", ("initial", 0, "optimizer", ""),
         r"^the configuration differs from the reference's: optimizer: Adam in the reference, SGD in this run; "
         r"learning rate: 0\.001 in the reference, 0\.01 in this run$", build={"optimizer": keras.optimizers.SGD}),
    Case("an optimizer hyperparameter", ("epoch", 0, "trainable", "kernel"),
         r"^the configuration differs from the reference's: optimizer: beta_1 0\.9 in the reference, 0\.8 in this run$",
         build={"optimizer": lambda: keras.optimizers.Adam(1e-3, beta_1=0.8)}),
    Case("another loss", ("epoch", 0, "trainable", "kernel"),
         r"^the configuration differs from the reference's: loss: sparse_categorical_crossentropy in the reference, "
         r"SparseCategoricalCrossentropy\(reduction=sum, .*\) in this run$",
         build={"loss": lambda: keras.losses.SparseCategoricalCrossentropy(reduction="sum")}),
    Case("layer RNG not reset", ("initial", 0, "rng", "seed_generator"),
         r"^the configuration differs from the reference's: SeedCallback reset_layer_rng: True in the reference, "
         r"False in this run$", fit={"reset_layer_rng": False}),
    Case("a nondeterministic step", ("epoch", 0, "trainable", "kernel"),
         r"^a training step is nondeterministic: the seed, the configuration \(.*\), the environment, the data "
         r"\(content, order and every batch fed\) and the layer RNG state agree with the reference's; look for "
         r"randomness no seed controls", build={"entropy": True}, reference={"entropy": True}),
    Case("a nondeterministic step, plain keras.Model", ("epoch", 0, "trainable", "kernel"),  # the batches fed agree
         r"^a training step is nondeterministic: the seed, the configuration \(.*\), the environment, the data fed "
         r"\(the checksum of every batch\) and the layer RNG state agree with the reference's; look for randomness",
         build={"entropy": True, "plain": True}, reference={"entropy": True, "plain": True}),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Callable[[dict], str]:
    """Records (once per module) the reference of a build, with the default fit and data."""
    folder, paths = tmp_path_factory.mktemp("causes"), {}

    def reference(build: dict) -> str:
        key = repr(sorted(build.items()))
        if key not in paths:
            paths[key] = str(folder / f"reference_{len(paths)}.h5")
            x, y = _data()
            _build(**build).fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0,
                                callbacks=[kr.SeedCallback(7, paths[key], mode="record")])
        return paths[key]

    return reference


def _assert_place(divergence, place):
    """The divergence is at (stage, epoch, part, a variable whose path holds ...), or at one of a
    list of such places (where backends differ)."""
    places = place if isinstance(place, list) else [place]
    assert any((divergence.stage, divergence.epoch, divergence.part) == (stage, epoch, part)
               and variable in (divergence.variable or "") for stage, epoch, part, variable in places), divergence


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_injected_change_gets_its_cause(case, recorded):
    """Verified against the reference of the unchanged run, the change is named as the cause."""
    path = recorded(case.reference)
    x, y = _data(**case.data)
    fit = dict(case.fit)
    callback = kr.SeedCallback(case.callback_seed, path, mode="verify", reset_layer_rng=fit.pop("reset_layer_rng", True))
    fit.setdefault("batch_size", BATCH)
    with pytest.raises(kr.FingerprintMismatch) as info:
        _build(**case.build).fit(x, y, epochs=EPOCHS, verbose=0, callbacks=[callback], **fit)
    _assert_place(info.value.divergence, case.place)
    assert re.search(case.cause, info.value.cause), info.value.cause
    assert f"Likely cause: {info.value.cause}" in str(info.value)


def test_a_callback_seed_other_than_the_models_is_refused(recorded):
    """One seed owns a fit: SeedCallback(8) on a DeterministicModel(seed=7) raises before any step,
    naming both; SeedCallback() takes the model's seed, and a plain model needs one."""
    x, y = _data()
    model = _build()
    with pytest.raises(ValueError, match=r"SeedCallback's seed \(8\) differs from the model's \(7\)"):
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[kr.SeedCallback(8)])
    assert model.optimizer.iterations.numpy() == 0
    callback = kr.SeedCallback(None, recorded({}), mode="verify")
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=[callback])
    assert callback.seed == 7 and callback.verified_epochs == (0, 1)
    with pytest.raises(ValueError, match="SeedCallback has no seed"):
        _build(plain=True).fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[kr.SeedCallback()])


def test_the_unchanged_run_verifies(recorded):
    """The other direction: the recording's own settings verify bit for bit, so each change
    above is what made its run differ."""
    for build in ({"plain": True}, {}):  # plain first: a DeterministicModel turns deterministic kernels on
        x, y = _data()
        callback = kr.SeedCallback(7, recorded(build), mode="verify")
        _build(**build).fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=[callback])
        assert callback.divergence is None and callback.verified_epochs == (0, 1)


def _rop(patience):
    """A ReduceLROnPlateau that lowers the rate once `patience` epochs in a row did not improve
    by 10 (none does)."""
    return keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=patience, min_delta=10.0)


@pytest.mark.parametrize(
    "seed_callback_first, place",
    [(False, ("epoch", 2, "optimizer", "learning_rate")), (True, ("epoch", 3, "trainable", "kernel"))],
    ids=["ReduceLROnPlateau before SeedCallback", "SeedCallback before ReduceLROnPlateau"],
)
def test_a_resumed_reduce_lr_on_plateau_is_named(tmp_path, seed_callback_first, place):
    """Straight, ReduceLROnPlateau lowers the rate at the end of epoch 2; resumed at epoch 2 it
    starts afresh and does not: the learning rate is named, and that its state is not restored."""
    x, y = _data()
    path, checkpoint = tmp_path / "straight.h5", tmp_path / "at2.keras"

    def callbacks(mode):
        seed = kr.SeedCallback(7, path, mode=mode)
        return [seed, _rop(2)] if seed_callback_first else [_rop(2), seed]

    _build().fit(x, y, epochs=4, batch_size=BATCH, verbose=0, callbacks=callbacks("record"))
    rates = [next(r.stats[0] for r in fp.part("optimizer") if r.path.endswith("/learning_rate"))
             for fp in kr.load_fingerprints(path).epochs]
    assert rates[0] == rates[1] == 2 * rates[3]  # the straight run halved the rate at the end of epoch 2
    model = _build()
    model.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[_rop(2)])
    model.save(checkpoint)
    keras.backend.clear_session()
    resumed = keras.models.load_model(checkpoint)
    with pytest.raises(kr.FingerprintMismatch) as info:
        resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=BATCH, verbose=0, callbacks=callbacks("verify"))
    _assert_place(info.value.divergence, place)
    assert re.search(
        r"^the learning rate '\w+/learning_rate' differs at epoch \d \(0\.0005 in the reference, 0\.001 in this run\): "
        r"a callback or schedule changed it during training; one run resumed or continued at epoch 2, and callbacks "
        r"such as ReduceLROnPlateau keep their state \(wait, cooldown, best\) outside the model", info.value.cause,
    ), info.value.cause


@pytest.mark.parametrize("data_checks", [True, False])
def test_a_resumed_repeated_tf_data_pipeline_is_named(tmp_path, data_checks):
    """A .repeat()ed tf.data pipeline with steps_per_epoch continues across epochs in the
    straight run and starts again in a resumed one: the batches fed are named at the resumed
    epoch, as a pipeline that restarted; without data checks, the cause says it may have."""
    tf = pytest.importorskip("tensorflow")
    x, y = _data()

    def dataset():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()

    path, checkpoint = tmp_path / "straight.h5", tmp_path / "at1.keras"
    _build().fit(dataset(), epochs=3, steps_per_epoch=3, verbose=0,
                 callbacks=[kr.SeedCallback(7, path, data_checks=data_checks)])
    model = _build()
    model.fit(dataset(), epochs=1, steps_per_epoch=3, verbose=0)
    model.save(checkpoint)
    keras.backend.clear_session()
    resumed = keras.models.load_model(checkpoint)
    with pytest.raises(kr.FingerprintMismatch) as info:
        resumed.fit(dataset(), epochs=3, initial_epoch=1, steps_per_epoch=3, verbose=0,
                    callbacks=[kr.SeedCallback(7, path, mode="verify", data_checks=data_checks)])
    if data_checks:
        _assert_place(info.value.divergence, ("epoch", 1, "data", "fed/x"))
        assert info.value.cause.startswith(
            "the input pipeline fed different data at epoch 1 (x; SeedCallback(every_n_batches=1) names the first "
            "batch): one run resumed or continued at epoch 1, and its input (a tf.data.Dataset) starts again from its "
            "first element"
        ), info.value.cause
        return
    _assert_place(info.value.divergence, ("epoch", 1, "trainable", "kernel"))
    assert info.value.cause.startswith(
        "the input pipeline may have restarted: one run resumed or continued at epoch 1, and its input (a "
        "tf.data.Dataset) is neither ordered nor fingerprinted by keras_repro"
    ), info.value.cause


def test_a_reference_without_configuration_verifies_and_says_what_is_unknown(tmp_path):
    """A reference written before the configuration, the data content and Keras' global
    SeedGenerator were recorded (all taken out here) verifies the same run; a run with another activation parts from it at epoch 0,
    and with no configuration to compare, the cause is "not determined", naming what is unknown."""
    x, y = _data()
    path = tmp_path / "old.h5"
    _build().fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=[kr.SeedCallback(7, path)])
    log = kr.load_fingerprints(path)
    assert any(digests.added_later(r) == "content" for r in log.initial.records)
    assert any(r.path == digests.GLOBAL_GENERATOR_PATH for r in log.initial.records)
    old = [digests.make_fingerprint([r for r in fp.records if not digests.added_later(r)], fp.epoch,
                                            fp.metrics) for fp in (log.initial, *log.epochs)]
    dataclasses.replace(log, initial=old[0], epochs=tuple(old[1:]), config=None).save(path)
    with edit_reference(path) as file:
        assert "config" not in file and [p.decode() for p in file["initial/path"][()] if b"/" not in p] == ["order"]
    callback = kr.SeedCallback(7, path, mode="verify")
    _build().fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=[callback])
    assert callback.divergence is None and callback.verified_epochs == (0, 1)
    with pytest.raises(kr.FingerprintMismatch) as info:
        _build(activation="tanh").fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0,
                                      callbacks=[kr.SeedCallback(7, path, mode="verify")])
    _assert_place(info.value.divergence, ("epoch", 0, "trainable", "kernel"))
    cause = info.value.cause
    assert cause.startswith("not determined: the seed, the environment, the data order and the layer RNG state agree "
                            "with the reference's, but the configuration (the reference was recorded by an earlier "
                            "keras_repro, which did not record it) and the input's content (the reference does not "
                            "record it) could not be compared"), cause
