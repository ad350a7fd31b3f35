"""Tests for keras_repro.fingerprinting.configuration: what a fit's configuration records, without training,
and how two configurations are said to differ."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fingerprinting import configuration

pytestmark = [pytest.mark.backends, pytest.mark.unit]  # tests/matrix.py runs this module on JAX and torch too


def _model(units=8, dtype=None, optimizer="adam", loss="sparse_categorical_crossentropy"):
    """A compiled functional model (Keras numbers its layer names per process)."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(units, activation="relu", dtype=dtype)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model.compile(optimizer=optimizer, loss=loss)
    return model


def test_structure_ignores_layer_names_and_names_what_differs():
    """Two identical builds (other auto names) have the same structure digest; another width or
    dtype policy (a name that is a setting) changes it, and the difference names the layer."""
    first, second = configuration.model_structure(_model()), configuration.model_structure(_model())
    assert json.loads(first["model.layer.0001"])["name"] != json.loads(second["model.layer.0001"])["name"]
    assert first["model.digest"] == second["model.digest"] and first["model.layers"] == "3"
    wider = configuration.model_structure(_model(units=16))
    assert wider["model.digest"] != first["model.digest"]
    assert configuration.model_difference(first, wider) == (
        f"layer 1 ('{json.loads(first['model.layer.0001'])['name']}', Dense): units 8 in the reference, 16 in this "
        "run; weights (6x8, 8) in the reference, (6x16, 16) in this run")
    mixed = configuration.model_structure(_model(dtype="mixed_float16"))
    assert mixed["model.digest"] != first["model.digest"]
    assert "dtype DTypePolicy(name=float32) in the reference, DTypePolicy(name=mixed_float16) in this run" in (
        configuration.model_difference(first, mixed))


def test_a_layer_more_is_named():
    """A model with a layer more: the layer counts and the first extra layer."""
    inputs = keras.Input((6,))
    longer = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs)))
    shorter = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    text = configuration.model_difference(configuration.model_structure(longer), configuration.model_structure(shorter))
    assert text.startswith("layer 1 (") and "units 8 in the reference, 3 in this run" in text
    same_start = configuration.model_structure(shorter)
    extra = dict(same_start, **{"model.layer.0002": same_start["model.layer.0001"], "model.layers": "3"})
    assert configuration.model_difference(same_start, extra).startswith(
        "the reference's model has 2 layers, this run's 3; the first only in this run's is layer 2 (")


def test_compile_settings_keep_the_learning_rate_apart():
    """The optimizer's configuration without its name or learning rate (printed as float32
    prints it); a schedule is its configuration; a loss object shows its settings."""
    settings = configuration.compile_settings(_model(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.8)))
    optimizer = json.loads(settings["optimizer"])
    assert optimizer["class"] == "Adam" and optimizer["config"]["beta_1"] == "0.8"
    assert "name" not in optimizer["config"] and "learning_rate" not in optimizer["config"]
    assert settings["learning_rate"] == "0.001" and settings["loss"] == "sparse_categorical_crossentropy"
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    settings = configuration.compile_settings(
        _model(optimizer=keras.optimizers.SGD(schedule), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
    assert settings["learning_rate"].startswith("ExponentialDecay(initial_learning_rate=0.1, decay_steps=10")
    scaled = configuration.compile_settings(_model(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(2e-3))))
    assert scaled["learning_rate"] == "0.002" and "learning_rate" not in scaled["optimizer"]
    assert settings["loss"].startswith("SparseCategoricalCrossentropy(") and "from_logits=True" in settings["loss"]


def test_inputs_are_described_by_kind():
    """Arrays by name, dtype and shape; other inputs by kind, ordered by the input itself."""
    arrays = configuration.array_input([("x", np.zeros((4, 2), "float32")), ("y", np.zeros(4, "int32"))],
                                       8, "batch", 0.25, "shuffled", False)
    assert arrays == {"input": "arrays: x float32 (4, 2); y int32 (4,)", "input.ordered_by": "keras_repro",
                      "batch_size": "8", "shuffle": "batch", "validation_split": "0.25 (shuffled)"}
    assert configuration.array_input([], 8, True, 0.25, "last", True)["validation_split"] == "0"

    class Frames(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return np.zeros((1, 2)), np.zeros(1)

    assert configuration.other_input(Frames())["input"] == "PyDataset (Frames)"
    assert configuration.other_input(iter(range(3))) == {"input": "generator", "input.ordered_by": "the input"}
    tf = pytest.importorskip("tensorflow")
    assert configuration.other_input(tf.data.Dataset.range(3))["input"] == "tf.data.Dataset"


def test_collect_for_a_plain_model_and_a_deterministic_one():
    """A plain keras.Model: no seed, its input ordered by Keras; a DeterministicModel: its seed."""
    plain = configuration.collect(_model(), {"steps": 4}, {}, True)
    assert (plain["model.seed"], plain["input.ordered_by"], plain["steps"]) == ("none", "Keras", "4")
    assert plain["reset_layer_rng"] == "True" and plain["jit_compile"] in ("True", "False")
    inputs = keras.Input((6,))
    model = kr.DeterministicModel(inputs, keras.layers.Dense(3)(inputs), seed=11)
    model.compile(optimizer="sgd", loss="mse")
    mine = configuration.collect(model, None, {"input": "tf.data.Dataset", "input.ordered_by": "the input"}, False)
    assert (mine["model.seed"], mine["model.class"], mine["steps"]) == ("11", "DeterministicFunctional", "unknown")


def test_differences_are_named_in_order():
    """In `ORDER`: the input before the batch size before the model; who orders the input is
    not repeated when the input itself differs; the learning rate only when asked; other keys last."""
    reference = {"batch_size": "16", "input": "arrays: x", "input.ordered_by": "keras_repro", "learning_rate": "0.1",
                 "zeta": "1"}
    current = {"batch_size": "32", "input": "tf.data.Dataset", "input.ordered_by": "the input", "learning_rate": "0.2",
               "zeta": "2"}
    assert [key for key, _ in configuration.differences(reference, current)] == [
        "input", "batch_size", "learning_rate", "zeta"]
    assert [key for key, _ in configuration.differences(reference, current, learning_rate=False)] == [
        "input", "batch_size", "zeta"]
    assert configuration.differences(reference, dict(reference)) == []
    assert configuration.differences({}, {"shuffle": "True"}) == [
        ("shuffle", "shuffle: (not recorded) in the reference, True in this run")]
    adam = json.dumps({"class": "Adam", "config": {"beta_1": "0.9"}, "digest": "a"})
    sgd = json.dumps({"class": "SGD", "config": {}, "digest": "b"})
    assert configuration.differences({"optimizer": adam}, {"optimizer": sgd}) == [
        ("optimizer", "optimizer: Adam in the reference, SGD in this run")]


def test_float_text_is_the_shortest_that_reads_back():
    """float32 values print as float32 prints them; other floats keep every digit they need."""
    assert configuration.float_text(float(np.float32(0.001))) == "0.001"
    assert configuration.float_text(0.1) == "0.1" and configuration.float_text(1 / 3) == repr(1 / 3)


def test_objects_without_a_config_are_recorded_without_their_address():
    """A value JSON cannot hold is recorded by its repr, less the memory address that changes
    from process to process, so the same model built in two processes has the same digest."""
    def activation(x):
        return x

    first, second = configuration._normalized({"f": activation}), configuration._normalized({"f": lambda x: x})
    assert first == {"f": f"<function {activation.__qualname__}>"} and " at 0x" not in second["f"]
