"""DeterministicModel as a drop-in for keras.Model (issue 23): the causes of the Keras tests that
failed with keras_repro's classes substituted, each reproduced in a few lines. The Keras tests
themselves run in tests/keras_suite/run.py."""

from __future__ import annotations

import random
import warnings

import keras
import numpy as np
import pytest
from keras.src.models.functional import Functional

import keras_repro as kr
from keras_repro.fit.midepoch import EpochIteratorHooks
from keras_repro.model import DeterministicFunctional
from tests.conftest import make_data

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


def _graph(units=3):
    inputs = keras.Input((6,))
    return inputs, keras.layers.Dense(units)(keras.layers.Dense(4)(inputs))


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.unit
def test_functional_subclass_changes_no_class_of_keras_repro():
    """A subclass built as M(inputs, outputs) is functional; DeterministicModel and the other forms stay intact."""

    class Mine(kr.DeterministicModel):
        pass

    class Wrapped(kr.DeterministicModel):  # passes (inputs, outputs) on from its own __init__
        def __init__(self, units):
            super().__init__(*_graph(units), seed=1)

    mine = Mine(*_graph(), seed=1)
    wrapped = Wrapped(3)
    assert isinstance(mine, Functional) and isinstance(wrapped, Functional) and mine.seed == 1
    assert kr.DeterministicModel.__bases__ == (EpochIteratorHooks, keras.Model)  # the mixin: fit.midepoch
    assert DeterministicFunctional.__bases__ == (kr.DeterministicModel, Functional)
    # the same seed and graph: the same initial weights as the plain functional form; another seed: others
    assert _same(_weights(mine), _weights(kr.DeterministicModel(*_graph(), seed=1)))
    assert _same(_weights(mine), _weights(wrapped))
    assert not _same(_weights(mine), _weights(Mine(*_graph(), seed=2)))

    class Subclassed(kr.DeterministicModel):
        def __init__(self):
            super().__init__(seed=1)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    x = np.zeros((2, 6), "float32")
    assert Subclassed()(x).shape == (2, 2)
    assert kr.DeterministicSequential([keras.Input((6,)), keras.layers.Dense(2)], seed=1)(x).shape == (2, 2)


def test_history_holds_keras_keys_only():
    """history.history has the keys a keras.Model fit gives; the fingerprints are history.fingerprints."""
    x, y = make_data()
    keras_history = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    keras_history.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = keras_history.fit(x, y, epochs=2, validation_split=0.25, verbose=0).history
    model = kr.DeterministicSequential([keras.Input((6,)), keras.layers.Dense(3)], seed=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
    assert list(history.history) == list(expected) and all(
        isinstance(value, float) for values in history.history.values() for value in values)
    assert [fp.epoch for fp in history.fingerprints.epochs] == [0, 1] and history.fingerprints.seed == 3


class ScaleLayer(keras.layers.Layer):
    """A custom layer as Keras' tests write them: no arguments, so its config does not rebuild it."""

    def __init__(self):
        super().__init__()

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * self.scale


class BlockLayer(keras.layers.Layer):
    """A custom layer holding a sublayer, also not rebuilt by its config."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)

    def call(self, x):
        return self.dense(x)


class UnitsDense(keras.layers.Dense):
    """A Dense subclass without from_config: its config has arguments its __init__ lacks."""

    def __init__(self, units):
        super().__init__(units)


def test_layers_a_config_does_not_rebuild_are_accepted():
    """Sublayers and variables with known initializers are drawn from the seed; the rest kept and named."""

    def build(seed, noise=False):
        keras.backend.clear_session()
        if noise:
            random.random(), keras.layers.Dense(2)
        inputs = keras.Input((6,))
        scale, block, dense = ScaleLayer(), BlockLayer(), UnitsDense(3)
        outputs = dense(block(scale(inputs)))
        kept = scale.get_weights()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = kr.DeterministicModel(inputs, outputs, seed=seed)
        return model, kept, [str(w.message) for w in caught if issubclass(w.category, kr.ReproWarning)]

    model, kept, messages = build(5)
    assert len(messages) == 1 and "scale_layer" in messages[0] and "kept as drawn" in messages[0]
    assert _same(model.layers[1].get_weights(), kept)  # the variable it could not re-draw: untouched
    base = _weights(model)[1:]  # the block's Dense and the Dense subclass
    assert _same(base, _weights(build(5, noise=True)[0])[1:])
    other = _weights(build(6)[0])[1:]
    assert not np.array_equal(base[0], other[0]) and not np.array_equal(base[2], other[2])  # the kernels
    x, y = make_data()
    model.compile(optimizer="sgd", loss="mse")
    log = model.fit(x, np.eye(3)[y], epochs=1, verbose=0).fingerprints
    assert "scale_layer" in log.notes["initial_weights"]


@pytest.mark.unit
def test_nested_trainer_layer_and_quantized_custom_layers_are_accepted():
    """Keras' own cases: a Trainer-layer nested in a model, and a model of custom nested layers quantized after."""
    from keras.src.trainers.trainer import Trainer

    class TrainerDense(Trainer, keras.layers.Dense):
        def __init__(self, units):
            keras.layers.Dense.__init__(self, units=units, use_bias=False, kernel_initializer="ones")
            Trainer.__init__(self)

    class Twice(keras.layers.Layer):
        def __init__(self, units):
            super().__init__()
            self.first, self.second = UnitsDense(units), keras.layers.Dense(units)

        def call(self, x):
            return self.second(self.first(x))

    def quantized_kernels(model_class, **kwargs):
        inputs = keras.Input((6,))
        model = model_class(inputs, Twice(4)(TrainerDense(3)(inputs)), **kwargs)
        np.testing.assert_array_equal(model.layers[1].kernel, np.ones((6, 3)))
        model.quantize("int8")
        assert model(np.ones((2, 6), "float32")).shape == (2, 4)
        return [keras.backend.standardize_dtype(w.dtype) for w in model.weights if w.name == "kernel"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels = quantized_kernels(kr.DeterministicModel, seed=4)
    assert not [w for w in caught if "could not re-draw" in str(w.message)]  # every weight drawn from the seed
    assert kernels == quantized_kernels(keras.Model) and "int8" in kernels


@pytest.mark.unit
def test_clone_model_keeps_class_and_seed():
    """clone_model of a functional DeterministicModel: same class, seed and initial weights; a clone
    sharing the layers keeps their weights."""
    model = kr.DeterministicModel(*_graph(), seed=9)
    initial = _weights(model)
    for variable in model.trainable_variables:
        variable.assign(variable + 1.0)  # as if trained
    clone = keras.models.clone_model(model)
    assert type(clone) is DeterministicFunctional and clone.seed == 9
    assert _same(_weights(clone), initial)
    shared = keras.models.clone_model(model, clone_function=lambda layer: layer)
    assert shared.seed == 9 and _same(_weights(shared), _weights(model))
    assert not _same(_weights(model), initial)


@pytest.mark.unit
def test_clone_model_of_a_sequential_says_what_keras_gives():
    """Keras clones every Sequential subclass as keras.Sequential: a warning says so and names the recipe that keeps class and seed."""
    model = kr.DeterministicSequential([keras.Input((6,)), keras.layers.Dense(2)], seed=9)
    with pytest.warns(kr.ReproWarning, match=r"type\(model\).from_config\(model.get_config\(\)\)"):
        clone = keras.models.clone_model(model)
    assert type(clone) is keras.Sequential
    with pytest.raises(AttributeError, match="`Sequential.layers` attribute is reserved"):
        model.layers = []  # the property keeps Keras' setter
    recipe = type(model).from_config(model.get_config())
    assert type(recipe) is kr.DeterministicSequential and recipe.seed == 9
    assert _same(_weights(recipe), _weights(kr.DeterministicSequential([keras.Input((6,)), keras.layers.Dense(2)], seed=9)))


@pytest.mark.unit
def test_from_config_and_legacy_h5_keep_class_and_seed(tmp_path):
    """from_config and a legacy .h5 save/load (with or without custom_objects) give the class and seed back."""
    x = np.ones((2, 6), "float32")
    for model in (kr.DeterministicModel(*_graph(), seed=12),
                  kr.DeterministicSequential([keras.Input((6,)), keras.layers.Dense(2)], seed=13)):
        rebuilt = type(model).from_config(model.get_config())
        assert type(rebuilt) is type(model) and rebuilt.seed == model.seed
        path = str(tmp_path / f"{model.name}.h5")
        model.save(path)
        for custom_objects in (None, {"DeterministicModel": kr.DeterministicModel}):
            loaded = keras.models.load_model(path, custom_objects=custom_objects)
            assert type(loaded) is type(model) and loaded.seed == model.seed
            same_output = keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
            np.testing.assert_array_equal(*same_output)


@pytest.mark.parametrize("validation_batch_size, expected", [(None, 10), (5, 2)])
def test_validation_batches_as_keras_makes_them(validation_batch_size, expected):
    """Validation runs in batches of batch_size (or validation_batch_size), as with keras.Model."""

    class Count(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            self.batches = 0

        def on_test_batch_end(self, batch, logs=None):
            self.batches += 1

    x, y = make_data(20)
    counts = []
    for model in (keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]),
                  kr.DeterministicSequential([keras.Input((6,)), keras.layers.Dense(3)], seed=1)):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        counter = Count()
        model.fit(x[:10], y[:10], batch_size=1, validation_data=(x[10:], y[10:]), epochs=1, verbose=0,
                  validation_batch_size=validation_batch_size, callbacks=[counter])
        counts.append(counter.batches)
    assert counts == [expected, expected]
