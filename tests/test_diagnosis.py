"""Tests for keras_repro.fingerprinting.diagnosis: the ranking of causes on hand-made evidence, without training."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from keras_repro.fingerprinting import diagnosis
from keras_repro.fingerprinting.compare import Divergence
from keras_repro.fingerprinting.diagnosis import RANKS, Evidence, likely_cause, rank_causes
from keras_repro.fingerprinting.digests import VariableDigest, make_fingerprint
from keras_repro.store.log import FingerprintLog

pytestmark = pytest.mark.unit

CONFIG = {"model.seed": "7", "input": "arrays: x float32 (64, 6)", "input.ordered_by": "keras_repro",
          "batch_size": "16", "steps": "4", "learning_rate": "0.001", "model.digest": "m"}
ENVIRONMENT = {"backend": "tensorflow", "keras": "3.15.1", "keras_repro": "0.1.0"}


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fp(epoch=0, content="x", order="o", rng="r", kernel="k", rate=0.001, with_content=True):
    """A fingerprint: data (content, order), rng, one kernel, the optimizer's learning rate."""
    records = [VariableDigest("content/x", "data", "float32", (64, 6), _hex(content), (1.5, 1, 0, 1, 0, 0))] if with_content else []
    records += [
        VariableDigest("order", "data", "int64", (64,), _hex(order)),
        VariableDigest("model/dropout/seed_generator", "rng", "int64", (2,), _hex(rng), (0, 0, 0, 0, 0, 0)),
        VariableDigest("model/dense/kernel", "trainable", "float32", (6, 8), _hex(kernel), (0, 0, 0, 0, 0, 0)),
        VariableDigest("adam/learning_rate", "optimizer", "float32", (), _hex(str(rate)), (rate, rate, rate, rate, 0, 0)),
    ]
    return make_fingerprint(records, epoch)


def _evidence(**changes):
    """Evidence of two runs that agree in everything but `changes`."""
    base = dict(reference_seed=7, seed=7, reference_config=CONFIG, config=CONFIG, reference_environment=ENVIRONMENT,
                environment=ENVIRONMENT, expected=_fp(), current=_fp(), reference_start=0, start=0)
    return Evidence(**{**base, **changes})


AT_KERNEL = Divergence(0, "epoch", "trainable", "model/dense/kernel", reason="values differ")


def test_a_step_is_named_only_when_everything_else_was_compared():
    """Everything recorded and equal: a nondeterministic step, saying what agrees. Each piece of
    evidence missing turns it into "not determined", naming what could not be compared."""
    cause = rank_causes(AT_KERNEL, _evidence())[0]
    assert cause.kind == "step" and cause.text.startswith(
        "a training step is nondeterministic: the seed, the configuration (model structure, optimizer, loss and fit "
        "settings), the environment, the data (content and order) and the layer RNG state agree with the reference's")
    unknown = {
        "the configuration (the reference was recorded by an earlier keras_repro": _evidence(reference_config=None),
        "the input's content (the reference does not record it)": _evidence(expected=_fp(with_content=False)),
        "the input's content and order (a tf.data.Dataset, which keras_repro neither orders nor fingerprints)":
            _evidence(config=dict(CONFIG, input="tf.data.Dataset", **{"input.ordered_by": "the input"}),
                      reference_config=dict(CONFIG, input="tf.data.Dataset", **{"input.ordered_by": "the input"})),
        "the environment": _evidence(reference_environment={}),
    }
    for missing, found in unknown.items():
        cause = rank_causes(AT_KERNEL, found)[0]
        assert cause.kind == "step" and cause.text.startswith("not determined: ") and missing in cause.text, cause
    nothing = rank_causes(AT_KERNEL, Evidence())[0].text
    assert nothing.startswith("not determined: the configuration") and "the input (its kind is not recorded)" in nothing


def test_causes_are_ranked_configuration_data_hyperparameter_rng_step():
    """With everything differing at once, every cause is listed, in `RANKS` order: the seed, the
    configuration, then the data; the environment is not a cause of a data difference."""
    found = _evidence(seed=8, config=dict(CONFIG, batch_size="32"), environment=dict(ENVIRONMENT, keras="9"),
                      current=_fp(content="y", rng="other", rate=0.002))
    at_content = Divergence(0, "initial", "data", "content/x", "content/x", "a" * 64, "b" * 64, "values differ")
    causes = rank_causes(at_content, found)
    kinds = [cause.kind for cause in causes]
    assert kinds == sorted(kinds, key=RANKS.index) and kinds[:3] == ["configuration", "configuration", "data"]
    assert causes[0].text == "the reference was recorded with seed 7; this run uses seed 8"
    assert causes[1].text == "the configuration differs from the reference's: batch size: 16 in the reference, 32 in this run"
    assert not any("environment" in cause.text for cause in causes[:-1])
    assert causes[2].text.startswith("the training data differ: x holds other values than in the reference (same "
                                     "dtype and shape; sum 1.5 in the reference, 1.5 in this run)")
    at_kernel = rank_causes(AT_KERNEL, dataclasses.replace(found, seed=7, config=CONFIG))
    assert at_kernel[0].text == "the reference was recorded in another environment: keras: 3.15.1 -> 9"
    backend = rank_causes(AT_KERNEL, _evidence(environment=dict(ENVIRONMENT, backend="jax")))[0].text
    assert backend == "the reference was recorded with the tensorflow backend; this run uses jax"


def test_the_model_seed_is_named_first_among_settings():
    """Another DeterministicModel seed is said with the line that sets it."""
    found = _evidence(config=dict(CONFIG, **{"model.seed": "8"}))
    at_order = Divergence(0, "initial", "data", "order", "order", "a" * 64, "b" * 64, "values differ")
    assert rank_causes(at_order, found)[0].text == (
        "the reference's model was created with seed 7 (kr.DeterministicModel(..., seed=7)); this run's with seed 8")
    assert rank_causes(at_order, found)[1].text.endswith("rows, and the configuration differs (above)")
    assert rank_causes(at_order, _evidence())[0].text.startswith(
        "the data order differs: it follows from the model's seed, shuffle, batch size, validation split and number of "
        "rows, which agree with the reference's: not determined")


def test_the_learning_rate_of_a_resumed_fit_is_named_from_the_fingerprints():
    """A fit resumed at epoch 2 starts with the rate a callback left, so the configuration's rate is
    not compared; the rate that differs at epoch 2 is named, with ReduceLROnPlateau's state."""
    at_rate = Divergence(2, "epoch", "optimizer", "adam/learning_rate", reason="values differ")
    found = _evidence(config=dict(CONFIG, learning_rate="0.0005"), start=2, expected=_fp(2, rate=0.0005),
                      current=_fp(2, rate=0.001))
    causes = rank_causes(at_rate, found)
    assert causes[0].kind == "hyperparameter" and causes[0].text.startswith(
        "the learning rate 'adam/learning_rate' differs at epoch 2 (0.0005 in the reference, 0.001 in this run): a "
        "callback or schedule changed it during training; one run resumed or continued at epoch 2, and callbacks such "
        "as ReduceLROnPlateau keep their state (wait, cooldown, best) outside the model")
    at_kernel = dataclasses.replace(AT_KERNEL, epoch=3)
    later = rank_causes(at_kernel, dataclasses.replace(found, expected=_fp(3, kernel="a", rate=0.0005),
                                                       current=_fp(3, kernel="b", rate=0.001)))
    assert later[0].kind == "hyperparameter" and "differs at epoch 3" in later[0].text
    straight = rank_causes(at_rate, dataclasses.replace(found, start=0, config=CONFIG))[0].text
    assert straight.endswith("(a callback such as ReduceLROnPlateau or LearningRateScheduler in one run only, or "
                             "reacting to other metrics)")
    at_start = Divergence(0, "initial", "optimizer", "adam/learning_rate", reason="values differ")
    compiled = rank_causes(at_start, dataclasses.replace(found, start=0, config=CONFIG, reference_config=None,
                                                         expected=_fp(rate=0.001), current=_fp(rate=0.002)))[0]
    assert compiled.text.startswith("the learning rate 'adam/learning_rate' differs before the first step (0.001 in "
                                    "the reference, 0.002 in this run): compile the optimizer")


@pytest.mark.parametrize("ordered_by, start, epoch, restarted", [
    ("the input", 1, 1, True), ("Keras", 1, 2, True), ("keras_repro", 1, 1, False), ("the input", 0, 1, False),
])
def test_a_restarted_pipeline_is_named_for_inputs_keras_repro_does_not_order(ordered_by, start, epoch, restarted):
    """Resumed at epoch 1, a dataset's or Keras' order may start over; arrays a DeterministicModel
    orders do not, and a straight run has nothing to restart."""
    config = dict(CONFIG, input="tf.data.Dataset", **{"input.ordered_by": ordered_by})
    found = _evidence(config=config, reference_config=config, start=start)
    cause = rank_causes(dataclasses.replace(AT_KERNEL, epoch=epoch), found)[0]
    assert (cause.kind == "data") == restarted, cause
    if ordered_by == "the input" and restarted:
        assert cause.text.startswith("the input pipeline may have restarted: one run resumed or continued at epoch 1, "
                                     "and its input (a tf.data.Dataset) is neither ordered nor fingerprinted")


def test_rng_and_the_initial_state_come_after_the_data():
    """The layer RNG state, then the initial weights, are named when nothing earlier differs."""
    at_rng = Divergence(0, "epoch", "rng", "model/dropout/seed_generator", reason="values differ")
    assert rank_causes(at_rng, _evidence())[0].text.startswith("layer RNG state differs")
    at_start = Divergence(0, "initial", "trainable", "model/dense/kernel", reason="values differ")
    assert rank_causes(at_start, _evidence())[0].text.startswith("the initial weights differ: check that the model")
    plain = rank_causes(at_start, _evidence(deterministic_model=False))[0].text
    assert plain.startswith("the initial weights differ: seed before building the model")


def test_likely_cause_reads_two_logs():
    """From two `FingerprintLog`s: a run resumed at epoch 1 is compared, at its initial state, with
    the reference's end of epoch 0, and their configurations are compared."""
    reference = FingerprintLog(_fp(0), (_fp(0), _fp(1)), ENVIRONMENT, 7, config=CONFIG)
    resumed = FingerprintLog(_fp(1, rate=0.002), (_fp(1),), ENVIRONMENT, 7, config=dict(CONFIG, learning_rate="0.002"))
    found = diagnosis.evidence(Divergence(1, "initial", "optimizer", "adam/learning_rate"), reference, resumed)
    assert (found.expected, found.current, found.resumed_at) == (reference.epochs[0], resumed.initial, 1)
    cause = likely_cause(Divergence(1, "initial", "optimizer", "adam/learning_rate"), reference, resumed)
    assert cause.startswith("the learning rate 'adam/learning_rate' this fit starts with differs from the reference's "
                            "at the end of epoch 0 (0.001 in the reference, 0.002 in this run)")
    missing = Divergence(2, "missing", None, None, reason="only the reference has epoch 2")
    assert likely_cause(missing, reference, resumed).startswith("one run has an epoch or batch the other lacks")


def test_the_data_part_says_what_differs():
    """Other shapes of an array, another validation split, a record only one run has, and an order
    that differs against a reference that records no configuration, each said as such."""
    shape = dataclasses.replace(_fp(), records=tuple(
        dataclasses.replace(r, shape=(80, 6)) if r.path == "content/x" else r for r in _fp().records))
    at_content = Divergence(0, "initial", "data", "content/x", "content/x", "a" * 64, "b" * 64, "shape (64, 6) vs (80, 6)")
    assert rank_causes(at_content, _evidence(current=shape))[0].text.startswith(
        "the training data differ: x is float32 (64, 6) in the reference, float32 (80, 6) in this run")
    at_split = Divergence(0, "initial", "data", "validation_split", "validation_split", "a" * 64, "b" * 64, "values differ")
    assert rank_causes(at_split, _evidence())[0].text.startswith("the validation split differs")
    only_one = Divergence(0, "initial", "data", "validation_split", reason="2 variables in the reference, 3 in the other run")
    assert rank_causes(only_one, _evidence())[0].text.startswith("the data records differ (2 variables in the reference")
    at_order = Divergence(0, "initial", "data", "order", "order", "a" * 64, "b" * 64, "values differ")
    assert rank_causes(at_order, _evidence(reference_config=None))[0].text.startswith(
        "the data order differs: it follows from the model's seed, shuffle, batch size, validation split and number "
        "of rows, and one of them differs (the reference was recorded by an earlier keras_repro")
