"""Tests for `audit` and `bisect`, and the `keras-repro audit` / `bisect` commands."""

from __future__ import annotations

import os
import sys

import keras
import pytest

import keras_repro as kr
from keras_repro.cli import main
from keras_repro.errors import ReproWarning
from keras_repro.tools.audit import (
    CHILD_ENVIRONMENT_VARIABLE,
    AuditDivergence,
    audit,
    bisect,
    find_hazards,
)
from tests.conftest import REPO, run_child
from tests.scripts.audit import models

SCRIPTS = os.path.join(REPO, "tests", "scripts", "audit")
DETERMINISTIC_SCRIPT = os.path.join(SCRIPTS, "deterministic.py")
NOISY_SCRIPT = os.path.join(SCRIPTS, "noisy.py")
NO_BUILD_SCRIPT = os.path.join(SCRIPTS, "no_build_model.py")
STEPS, BATCH = 8, 16
NOISY_BATCH = models.NOISE_PERIOD - 1  # the 4th step (batch 3) adds the first noise


@pytest.fixture(scope="module")
def data():
    """The audit tests' training data (256 rows, 6 features, 3 classes)."""
    return models.data()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data):
    """.keras checkpoints at the end of epoch 0 of a deterministic and a noisy model (batch 32)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name in ("build_deterministic", "build_noisy"):
        keras.backend.clear_session()
        model = getattr(models, name)()
        model.fit(*data, batch_size=32, epochs=1, verbose=0, callbacks=[kr.SeedCallback(7)])
        paths[name] = str(folder / f"{name}.keras")
        model.save(paths[name])
    return paths


def _assert_noise_divergence(divergence, comparison, epoch=0):
    """The divergence is the noisy layer's drift, at the step that first adds noise."""
    assert isinstance(divergence, AuditDivergence) and divergence.comparison == comparison
    assert (divergence.epoch, divergence.stage, divergence.batch) == (epoch, "batch", NOISY_BATCH)
    assert divergence.part == "non_trainable" and divergence.variable.endswith("noisy/drift")


def test_deterministic_model_is_identical_in_process(data):
    """A DeterministicModel's first steps are bit-identical over two builds."""
    report = audit(models.build_deterministic, *data, steps=STEPS, batch_size=BATCH, fresh_process=False)
    assert report.identical and report.divergence is None and report.steps == STEPS
    assert [c.name for c in report.checks] == ["in-process", "fresh process"]
    assert report.checks[1].skipped and "fresh_process=False" in report.checks[1].skipped
    assert not [h for h in report.hazards if "layer" in h]
    assert str(report).splitlines()[1].startswith(f"REPRODUCIBLE: the first {STEPS} training steps")


def test_training_nondeterminism_names_batch_and_variable(data):
    """Noise from fresh entropy at every 4th step: batch 3, the layer's drift, in-process."""
    report = audit(models.build_noisy, *data, steps=STEPS, batch_size=BATCH, fresh_process=False)
    assert not report.identical
    _assert_noise_divergence(report.divergence, "in-process")
    text = str(report)
    assert "NOT REPRODUCIBLE: in-process: epoch 0, batch 3" in text and "noisy/drift" in text
    assert "hint: a training step is nondeterministic" in text
    layer = report.layer  # the two builds traced layer by layer: the layer's state update at step 3
    assert (layer.step, layer.name, layer.category) == (3, "noisy/drift", "update") and "layer trace: step 3" in text


def test_init_nondeterminism_names_initial_state(data):
    """A kernel perturbed with unseeded entropy at build: the initial state and that kernel."""
    report = audit(models.build_perturbed, *data, steps=STEPS, batch_size=BATCH, fresh_process=False)
    divergence = report.divergence
    assert not report.identical and divergence.comparison == "in-process"
    assert (divergence.stage, divergence.epoch, divergence.batch) == ("initial", 0, None)
    assert divergence.part == "trainable" and divergence.variable.endswith("dense/kernel")
    assert "hint: build_model() does not build the same state twice" in str(report)


def test_hazard_unseeded_dropout_in_plain_model(data):
    """A plain keras.Model with Dropout(seed=None) is a hazard; a seeded Dropout is not."""
    report = audit(models.build_plain_unseeded_dropout, *data, steps=4, batch_size=BATCH, fresh_process=False)
    assert report.identical  # SeedCallback resets the Dropout's RNG, so the audit itself repeats
    assert any("layer 'dropout' (Dropout)" in h and "without an explicit seed" in h for h in report.hazards)
    seeded = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5, seed=3)])
    assert not [h for h in find_hazards(seeded) if "layer" in h]


def test_hazard_unseeded_tf_data_shuffle(data):
    """An unseeded tf.data shuffle is a hazard; both runs train on the same first batches."""
    import tensorflow as tf

    tf.random.set_seed(None)  # no global seed: the shuffle draws a fresh seed every iteration
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(256).batch(BATCH)
    report = audit(models.build_deterministic, dataset, steps=5, fresh_process=False)
    assert report.identical and report.steps == 5
    assert "input: tf.data shuffle without a seed (pass seed=... to Dataset.shuffle)" in report.hazards


def test_local_build_model_skips_fresh_process_with_warning(data):
    """A closure cannot be imported by a fresh process: warned (at the caller) and reported."""

    def build():
        return models.build_deterministic()

    with pytest.warns(ReproWarning, match="local function") as caught:
        report = audit(build, *data, steps=2, batch_size=BATCH)
    assert [w.filename for w in caught if "local function" in str(w.message)] == [__file__]
    assert report.identical and "local function" in report.checks[1].skipped
    assert "fresh process: skipped" in str(report)


@pytest.mark.unit
def test_bad_arguments_say_what_to_do(data):
    """Bad steps, reserved fit arguments, a SeedCallback and an uncompiled model are refused."""
    with pytest.raises(ValueError, match="Received: steps=0"):
        audit(models.build_deterministic, *data, steps=0)
    with pytest.raises(ValueError, match="sets epochs itself"):
        audit(models.build_deterministic, *data, epochs=3)
    with pytest.raises(ValueError, match="adds its own SeedCallback"):
        audit(models.build_deterministic, *data, callbacks=[kr.SeedCallback(7)])
    with pytest.raises(ValueError, match="must return a compiled model"):
        audit(lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]), *data, steps=1, fresh_process=False)


def test_nested_audit_in_fresh_process_fails_clearly(monkeypatch, data, checkpoints):
    """audit() or bisect() run in a fresh process (a script imported there): a clear error, no recursion."""
    monkeypatch.setenv(CHILD_ENVIRONMENT_VARIABLE, "1")
    with pytest.raises(kr.MissingMainGuardError, match="audit.. was called inside a fresh process.*if __name__ == "):
        audit(models.build_deterministic, *data)
    with pytest.raises(kr.MissingMainGuardError, match="bisect.. was called inside a fresh process.*if __name__ == "):
        bisect(checkpoints["build_deterministic"], *data, epoch=1)


@pytest.mark.slow
def test_deterministic_model_is_identical_in_fresh_process(data):
    """The same steps in a fresh process with another PYTHONHASHSEED are bit-identical."""
    report = audit(models.build_deterministic, *data, steps=STEPS, batch_size=BATCH)
    fresh = report.checks[1]
    assert report.identical and fresh.skipped is None and fresh.divergence is None
    assert "PYTHONHASHSEED=" in fresh.description


@pytest.mark.slow
def test_hash_dependent_model_diverges_only_in_fresh_process(data):
    """Noise seeded by hash(name): identical in-process, batch 3 and the drift in a fresh process."""
    report = audit(models.build_hash_noisy, *data, steps=STEPS, batch_size=BATCH)
    assert report.checks[0].divergence is None
    _assert_noise_divergence(report.divergence, "fresh process")
    assert "hint: identical within this process but not in a fresh one" in str(report)
    assert (report.layer.step, report.layer.name, report.layer.category) == (3, "noisy/drift", "update")


def test_bisect_deterministic_epoch_replays_identically(checkpoints, data):
    """Epoch 1 from the deterministic checkpoint replays bit-identically; keras-repro diff is named."""
    report = bisect(checkpoints["build_deterministic"], *data, epoch=1, batch_size=32)
    assert report.identical and report.divergence is None and report.steps == 8
    assert "keras-repro diff" in str(report)


def test_bisect_names_first_divergent_batch_and_variable(checkpoints, data):
    """From the noisy checkpoint (8 steps done), step 12 adds noise: epoch 1, batch 3, drift."""
    report = bisect(checkpoints["build_noisy"], *data, epoch=1, batch_size=32)
    assert not report.identical
    _assert_noise_divergence(report.divergence, "replay", epoch=1)
    assert "NOT REPRODUCIBLE: replay: epoch 1, batch 3" in str(report)
    assert (report.layer.step, report.layer.name, report.layer.category) == (3, "noisy/drift", "update")
    assert "layer trace: step 3" in str(report)


@pytest.mark.unit
def test_bisect_bad_checkpoint(tmp_path, data):
    """A missing or non-.keras checkpoint is refused with what to pass."""
    with pytest.raises(FileNotFoundError, match="Received: checkpoint="):
        bisect(str(tmp_path / "none.keras"), *data, epoch=1)
    with pytest.raises(ValueError, match=r"must be a `\.keras` file"):
        bisect(str(tmp_path / "model.h5"), *data, epoch=1)


def test_cli_audit_divergent_exit_1(capsys):
    """`keras-repro audit noisy.py --in-process-only`: exit 1, batch and variable printed."""
    args = ["audit", NOISY_SCRIPT, "--steps", "6", "--batch-size", str(BATCH), "--in-process-only"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "NOT REPRODUCIBLE: in-process: epoch 0, batch 3" in out and "noisy/drift" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["audit", os.path.join(SCRIPTS, "missing.py")], "does not exist"),
        (["audit", NO_BUILD_SCRIPT], "it has no build_model()"),
        (["audit", DETERMINISTIC_SCRIPT, "--steps", "0"], "Received: steps=0"),
        (["bisect", "missing.keras", DETERMINISTIC_SCRIPT, "--epoch", "1"], "does not exist"),
    ],
)
@pytest.mark.unit
def test_cli_bad_input_exit_2_one_line(args, message, capsys):
    """A missing file, a script without build_model() or a bad option: exit 2, one line."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_bisect_exit_codes(checkpoints, capsys):
    """`keras-repro bisect`: exit 0 for the deterministic checkpoint, 1 naming batch 3 for the noisy one."""
    assert main(["bisect", checkpoints["build_deterministic"], DETERMINISTIC_SCRIPT, "--epoch", "1"]) == 0
    assert "IDENTICAL: epoch 1 replays bit-identically" in capsys.readouterr().out
    assert main(["bisect", checkpoints["build_noisy"], NOISY_SCRIPT, "--epoch", "1"]) == 1
    out = capsys.readouterr().out
    assert "replay: epoch 1, batch 3" in out and "noisy/drift" in out


@pytest.mark.slow
def test_cli_audit_identical_exit_0(capsys):
    """`keras-repro audit deterministic.py`: exit 0; the fresh process imports the script by path."""
    assert main(["audit", DETERMINISTIC_SCRIPT, "--steps", str(STEPS), "--batch-size", str(BATCH)]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCIBLE" in out and "fresh process (this process against a fresh one" in out
    assert "NOT REPRODUCIBLE" not in out


@pytest.mark.slow
def test_cli_audit_module_divergent_exit_1():
    """`python -m keras_repro audit noisy.py` in a new process: exit 1, the divergence on stdout."""
    result = run_child([sys.executable, "-m", "keras_repro", "audit", NOISY_SCRIPT, "--steps", 6, "--batch-size", BATCH],
                       timeout=600, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "in-process: epoch 0, batch 3" in result.stdout and "noisy/drift" in result.stdout
