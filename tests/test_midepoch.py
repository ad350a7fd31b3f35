"""Exact mid-epoch resume with `keras.callbacks.BackupAndRestore(save_freq=N)`
(`keras_repro.fit.midepoch`): a fit interrupted inside an epoch and restarted with the same
backup folder ends as the straight run, for arrays and a seeded reshuffling tf.data pipeline;
`SeedCallback` verifies and records across the restart; what cannot be resumed exactly warns."""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import pytest

import keras_repro as kr
from keras_repro.fit import midepoch
from tests.conftest import run_child
from tests.pipelines import ReshuffledRows

pytestmark = pytest.mark.backends

ROWS, BATCH, EPOCHS, SAVE_FREQ = 48, 4, 3, 5  # 12 batches an epoch: backups at (0, 4), (0, 9), (1, 2), (1, 7)...
STOP = (1, 7)  # the interrupted fit raises after this batch (after its backup)
FORMS = ("arrays", "tf.data", "PyDataset")


def _arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(ROWS, 6)).astype("float32"), rng.normal(size=(ROWS, 1)).astype("float32")


def build(model_class=None):
    """A small model with layer RNG (Dropout) and optimizer state (Adam)."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(16, activation="relu")(inputs))
    outputs = keras.layers.Dense(1)(hidden)
    model = (model_class or kr.DeterministicModel)(inputs, outputs, **({} if model_class else {"seed": 3}))
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    return model


class Reshuffled(ReshuffledRows):
    """Batches of the rows in an order NumPy's global RNG reshuffles at every epoch's end."""

    def __init__(self):
        super().__init__(*_arrays(), BATCH)


def inputs(form):
    """The fit's input as keyword arguments (a tf.data pipeline is built after the model)."""
    x, y = _arrays()
    if form == "PyDataset":
        return {"x": Reshuffled()}
    if form == "tf.data":
        tf = pytest.importorskip("tensorflow")
        return {"x": tf.data.Dataset.from_tensor_slices((x, y)).shuffle(ROWS, seed=5).batch(BATCH)}
    return {"x": x, "y": y, "batch_size": BATCH}


class Interrupt(keras.callbacks.Callback):
    """Raises after batch `STOP[1]` of epoch `STOP[0]`, as a killed job would stop."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == STOP:
            raise RuntimeError("interrupted")


class Batches(keras.callbacks.Callback):
    """The (epoch, batch) numbers the fit's batch hooks see."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append((self.epoch, batch))


def fit(model, form, backup, *callbacks):
    """Fits `EPOCHS` epochs with a `BackupAndRestore(save_freq=SAVE_FREQ)`; True when it ended,
    False when it was interrupted."""
    try:
        model.fit(**inputs(form), epochs=EPOCHS, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(str(backup), save_freq=SAVE_FREQ), *callbacks])
    except RuntimeError as error:
        if "interrupted" not in str(error):
            raise
        return False
    return True


def digest(model):
    """The model's whole state: weights, optimizer variables, layer RNG."""
    return kr.fingerprint(model).digest


def run(mode, folder):
    """One process's part, for every form: "straight", "interrupted" or "restart" (of the
    interrupted fit, from its backup); records the fingerprints to `folder/<form>-<run>.h5`."""
    result = {}
    for form in FORMS:
        model = build()
        run_name = "straight" if mode == "straight" else "resumed"
        seed_callback = kr.SeedCallback(reference=os.path.join(folder, f"{form}-{run_name}.h5"), every_n_batches=2)
        extra = [Interrupt()] if mode == "interrupted" else []
        ended = fit(model, form, os.path.join(folder, f"{form}-backup"), seed_callback, *extra)
        result[form] = [ended, digest(model)]
    return result


CHILD = """
import json, sys
from tests.test_midepoch import run
print("RESULT" + json.dumps(run(sys.argv[1], sys.argv[2])))
"""


def test_a_fit_interrupted_mid_epoch_and_restarted_in_a_new_process_ends_as_the_straight_run(tmp_path):
    """BackupAndRestore(save_freq=5), an exception at epoch 1, batch 7, restarted in a new process:
    the final state (weights, optimizer, layer RNG) equals the straight run's, and the references
    recorded by the two runs are identical, every batch fingerprint included, for arrays, a seeded
    reshuffling tf.data pipeline and a PyDataset reshuffling with NumPy's global RNG."""
    pytest.importorskip("tensorflow")
    results = {}
    for mode in ("straight", "interrupted", "restart"):  # one process each
        output = run_child([sys.executable, "-c", CHILD, mode, str(tmp_path)],
                           env={"KERAS_BACKEND": keras.backend.backend()}).stdout
        results[mode] = json.loads(output.split("RESULT", 1)[1])
    for form in FORMS:
        assert results["straight"][form][0] and not results["interrupted"][form][0], form
        assert results["restart"][form] == results["straight"][form], form
        assert results["interrupted"][form][1] != results["straight"][form][1], form  # stopped mid-run
        straight = kr.load_fingerprints(tmp_path / f"{form}-straight.h5")
        resumed = kr.load_fingerprints(tmp_path / f"{form}-resumed.h5")
        assert straight.compare(resumed).identical, form
        assert [fp.digest for fp in straight.epochs] == [fp.digest for fp in resumed.epochs], form
        assert resumed.batches == straight.batches and len(straight.batches) == EPOCHS * ROWS // BATCH // 2, form
        assert not (tmp_path / f"{form}-backup").exists(), form  # BackupAndRestore removed it at the end



@pytest.fixture
def interrupted(tmp_path):
    """A straight reference (arrays) and the backup folder of a fit interrupted at `STOP`."""
    reference = tmp_path / "straight.h5"
    straight = build()
    assert fit(straight, "arrays", tmp_path / "unused", kr.SeedCallback(reference=reference, every_n_batches=2))
    assert not fit(build(), "arrays", tmp_path / "backup", Interrupt())
    return {"reference": reference, "backup": tmp_path / "backup", "digest": digest(straight), "folder": tmp_path}


def test_a_restart_in_the_same_process_skips_the_trained_batches_and_verifies_the_straight_reference(interrupted):
    """The restart numbers batches as the straight run (epoch 1 resumes at batch 8), its SeedCallback
    verifies every epoch and batch of the straight reference, and it ends in the straight run's state."""
    assert midepoch.read_position(interrupted["backup"]).batches == STOP[1] + 1
    model, seen = build(), Batches()
    seed_callback = kr.SeedCallback(reference=interrupted["reference"], mode="verify", every_n_batches=2)
    assert fit(model, "arrays", interrupted["backup"], seed_callback, seen)
    assert seen.seen[0] == (1, STOP[1] + 1) and seen.seen[-1] == (EPOCHS - 1, ROWS // BATCH - 1)
    assert len(seen.seen) == (EPOCHS - 1) * ROWS // BATCH - (STOP[1] + 1)
    assert seed_callback.verified_epochs == (1, 2) and seed_callback.divergence is None
    assert digest(model) == interrupted["digest"]


def test_without_the_skip_or_with_a_plain_keras_model_the_restart_differs(interrupted, monkeypatch):
    """The other direction: restarting the epoch from its first batch (Keras' behaviour) is caught
    by the verify at the first batch fingerprint after the resume, and a plain keras.Model,
    interrupted and restarted the same way, ends elsewhere than its straight run."""
    monkeypatch.setattr(midepoch.MidEpochResume, "iterator_built", lambda self, iterator: None)
    seed_callback = kr.SeedCallback(reference=interrupted["reference"], mode="verify", every_n_batches=2)
    with pytest.raises(kr.FingerprintMismatch, match="epoch 1"):
        fit(build(), "arrays", interrupted["backup"], seed_callback)
    monkeypatch.undo()
    plain = {}
    for name, callbacks in (("straight", []), ("interrupted", [Interrupt()]), ("restart", [])):
        keras.utils.set_random_seed(3)  # the same initial weights (the restart loads the backup's)
        plain[name] = build(keras.Model)
        fit(plain[name], "arrays", interrupted["folder"] / ("plain-straight" if name == "straight" else "plain"), *callbacks)
    assert digest(plain["straight"]) != digest(plain["restart"])


def test_a_backup_without_keras_repro_state_warns_and_notes_why(interrupted):
    """A backup whose keras_repro_resume.json is missing (written by a plain keras.Model, or lost)
    cannot be resumed exactly: the fit warns at its start naming why, and the reference notes it."""
    os.remove(interrupted["backup"] / midepoch.STATE_FILE)
    model = build()
    with pytest.warns(kr.ReproWarning, match="cannot do so exactly: the backup in .* has no keras_repro_resume.json"):
        fit(model, "arrays", interrupted["backup"])
    assert "has no keras_repro_resume.json" in model.history.fingerprints.notes["mid_epoch_resume"]


@pytest.mark.unit
def test_the_framework_rng_state_round_trips_through_the_backup_form():
    """The framework's global RNG (torch's: its CPU state, then each CUDA device's) survives the
    backup's JSON form, so the draws after a restore repeat; a backup written when only torch's
    CPU state was kept (one encoded array) still restores it. Nothing to keep on TF and JAX."""
    state = json.loads(json.dumps(midepoch._global_rng_state()))
    if keras.backend.backend() != "torch":
        assert state == {"framework": None}
        return
    import torch

    first = torch.rand(4)
    midepoch._set_global_rng_state(state)
    assert torch.equal(torch.rand(4), first)
    assert not torch.equal(torch.rand(4), first)  # the state moves on: the restore is what repeated it
    older = {"framework": state["framework"][0]}
    midepoch._set_global_rng_state(older)
    assert torch.equal(torch.rand(4), first)


@pytest.mark.unit
def test_the_backup_position_and_the_forms_that_cannot_be_positioned(tmp_path):
    """read_position gives (epoch, batches trained) and keras_repro's state when it belongs to the same
    backup; a stale state file is a problem named; a generator input warns naming the form."""
    assert midepoch.read_position(tmp_path) is None
    (tmp_path / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 4}))
    (tmp_path / midepoch.STATE_FILE).write_text(json.dumps({"format": midepoch.FORMAT, "epoch": 2, "batch": 4}))
    position = midepoch.read_position(tmp_path)
    assert (position.epoch, position.batches, position.problem) == (2, 5, None) and position.state is not None
    (tmp_path / midepoch.STATE_FILE).write_text(json.dumps({"format": midepoch.FORMAT, "epoch": 2, "batch": 1}))
    stale = midepoch.read_position(tmp_path)
    assert stale.state is None and "belongs to another backup (epoch 2, batch 1" in stale.problem
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=5)
    with pytest.warns(kr.ReproWarning, match=r"resumes epoch 2 after batch 4 .* a generator \(generator\)"):
        resume = midepoch.MidEpochResume.start(None, [backup], None, (batch for batch in ()))
    assert "generator" in resume.note()["mid_epoch_resume"]
    assert midepoch.MidEpochResume.start(None, [keras.callbacks.BackupAndRestore(str(tmp_path))], None).backup is None
    (tmp_path / "training_metadata.json").write_text("{")
    with pytest.raises(ValueError, match=r"training_metadata.json' cannot be read .* Received: backup_dir="):
        midepoch.read_position(tmp_path)
