"""The conformance matrix's rows for inputs other than arrays (issue 17): each trains a
`DeterministicModel` on a pipeline that a factory builds anew in every fit, right after the
model (as a script builds it), and runs in the per-backend processes of
tests/scripts/conformance.py.

* fresh: recorded in the first process, verified in the second (another PYTHONHASHSEED), the
  batches fed included; another seed is named.
* resume: 2 epochs + save in the first process; load_model + a new pipeline + fit(initial_epoch=2)
  in the second == the straight run (batches, weights, digests), with no warning. For a form
  that cannot be resumed exactly (a generator; a PyDataset fed by workers on JAX and torch), the
  resumed fit instead warns, naming the form and why, and its fingerprints note it.

Grain rows run only where `import grain` works (it is an optional extra): elsewhere the cell
reports itself skipped, with the reason, and the test skips it.
"""

from __future__ import annotations

import os
import warnings

SEED, EPOCHS, AT, BATCH = 7, 3, 2, 16
ROWS, IMAGES, SIDE = 96, 48, 8

INPUTS = {
    "images": "image_dataset_from_directory(validation_split=0.25, subset='both', seed=1337), "
              "RandomFlip + RandomRotation mapped over the training set",
    "tf_data": "tf.data from tensors, shuffle(seed=3) reshuffled each iteration",
    "pydataset_0": "PyDataset reshuffling in on_epoch_end (NumPy global RNG), workers=0",
    "pydataset_2": "PyDataset reshuffling in on_epoch_end (NumPy global RNG), workers=2 "
                   "(use_multiprocessing=False); on JAX and torch the resumed fit warns",
    "generator": "a generator, steps_per_epoch one pass; the resumed fit warns (not resumable)",
    "grain": "Grain MapDataset.source(...).shuffle(seed=3).batch(16) (skipped where grain is not installed)",
}
"""{row: the input it feeds}; each row is the cell `input_<row>` with lifecycles fresh, resume."""

MID_EPOCH = {
    "mid_epoch_arrays": "arrays (160 rows, batch_size=16), Dropout + Adam; BackupAndRestore(save_freq=5), "
                        "an exception after epoch 1, batch 7, restarted with the same folder",
    "mid_epoch_tf_data": "tf.data from tensors, shuffle(seed=3) reshuffled each iteration, batch(16), Dropout + "
                         "Adam; BackupAndRestore(save_freq=5), an exception after epoch 1, batch 7, restarted "
                         "with the same folder",
}
"""Mid-epoch BackupAndRestore rows (issue 17, item 4): lifecycle resume only."""
INPUTS.update(MID_EPOCH)
MID_ROWS, STOP, SAVE_FREQ = 160, (1, 7), 5  # 10 batches an epoch: backups at (0, 4), (0, 9), (1, 4), (1, 9)...
BACKED_UP = 4  # the batch of epoch STOP[0] the last backup before STOP follows: the restart resumes at batch 5


def lifecycles(row: str) -> tuple[str, ...]:
    """The lifecycles the row's cell checks."""
    return ("resume",) if row in MID_EPOCH else ("fresh", "resume")


LEGEND = ("* **resume** of an input row: 2 epochs + save, then load_model + a new pipeline + "
          "fit(initial_epoch=2) in a new process == straight, batches fed included; where the row says "
          "the resumed fit warns, the check is that warning (naming the form and why) and its note in "
          "the fingerprints\n"
          "* **resume** of a `mid_epoch_*` row: a fit with BackupAndRestore(save_freq=5) raises after epoch 1, "
          "batch 7 in one process and is restarted with the same backup folder in a new process (it resumes at "
          "batch 5, after the last backup): its final fingerprint digest == a straight run's, the reference "
          "recorded across the restart (batch fingerprints included) compares identical to the straight one, "
          "and no warning says the resume is not exact")


def warned(row: str) -> str | None:
    """What the resumed fit's warning must name, for a row that cannot be resumed exactly here."""
    from keras_repro import _backend

    if row == "generator":
        return "a generator"
    if row == "pydataset_2" and _backend.input_build_passes(None, first_fit=True):
        return "fed by workers"
    return None


def skipped(row: str) -> str | None:
    """Why the row cannot run in this environment, or None."""
    if row == "grain":
        import importlib.util

        if importlib.util.find_spec("grain") is None:
            return "grain is not installed (pip install '.[grain]'): the Grain row is not checked"
    return None


# Pipelines ---------------------------------------------------------------------------------------

def _arrays(rows: int = ROWS):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 6)).astype("float32")
    return x, (np.abs(x[:, 0] * 3).astype(int) % 3).astype("int32")


def _reshuffled_class():
    import keras
    import numpy as np

    class Reshuffled(keras.utils.PyDataset):
        """Batches in an order NumPy's global RNG reshuffles at every epoch's end."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.x, self.y = _arrays()
            self.order = np.arange(ROWS)

        def __len__(self):
            return ROWS // BATCH

        def __getitem__(self, index):
            rows = self.order[index * BATCH:(index + 1) * BATCH]
            return self.x[rows], self.y[rows]

        def on_epoch_end(self):
            np.random.shuffle(self.order)

    return Reshuffled


def _write_images(folder: str) -> str:
    """IMAGES tiny PNGs in 2 class folders (once per folder)."""
    import keras
    import numpy as np

    images = os.path.join(folder, "images")
    if not os.path.isdir(images):
        rng = np.random.default_rng(0)
        for label in "ab":
            os.makedirs(os.path.join(images, label))
            for index in range(IMAGES // 2):
                pixels = rng.integers(0, 255, (SIDE, SIDE, 3)).astype("uint8")
                keras.utils.save_img(os.path.join(images, label, f"{index}.png"), pixels)
    return images


def pipeline(row: str, folder: str) -> tuple[object, dict]:
    """A new input of the row, and the fit arguments that go with it."""
    import keras

    if row == "images":
        train, validation = keras.utils.image_dataset_from_directory(
            _write_images(folder), image_size=(SIDE, SIDE), batch_size=8, validation_split=0.25,
            subset="both", seed=1337, verbose=False)
        layers = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)]

        def augment(images):  # as keras-io's image classification example (a Sequential would not
            for layer in layers:  # switch to TensorFlow inside the map on JAX and torch)
                images = layer(images)
            return images

        train = train.map(lambda x, y: (augment(x), y))
        return train, {"validation_data": validation}
    if row == "tf_data":
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(_arrays()).shuffle(ROWS, seed=3).batch(BATCH), {}
    if row.startswith("pydataset"):
        return RESHUFFLED(workers=int(row[-1]), use_multiprocessing=False), {}
    if row == "generator":
        def batches():
            x, y = _arrays()
            while True:
                for start in range(0, ROWS, BATCH):
                    yield x[start:start + BATCH], y[start:start + BATCH]

        return batches(), {"steps_per_epoch": ROWS // BATCH}
    import grain

    x, y = _arrays()
    return grain.MapDataset.source([(x[i], y[i]) for i in range(ROWS)]).shuffle(seed=3).batch(BATCH), {}


def build(row: str, seed: int = SEED):
    """The row's compiled model."""
    import keras

    import keras_repro as kr

    L = keras.layers
    if row == "images":
        inputs = keras.Input((SIDE, SIDE, 3))
        hidden = L.Flatten()(L.Rescaling(1 / 255)(inputs))
        classes = 2
    else:
        inputs = hidden = keras.Input((6,))
        classes = 3
    hidden = L.Dense(8, activation="relu")(hidden)
    model = kr.DeterministicModel(inputs, L.Dense(classes, activation="softmax")(hidden), seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit(row, folder, callbacks, model=None, seed=SEED, **overrides):
    """Builds (unless given) the row's model, then a new pipeline, and fits; returns the model."""
    import keras

    if model is None:
        keras.backend.clear_session()
        model = build(row, seed)
    data, kwargs = pipeline(row, folder)
    kwargs.update({"epochs": EPOCHS, "verbose": 0}, **overrides)
    model.fit(data, callbacks=list(callbacks), **kwargs)
    return model


# Phases ------------------------------------------------------------------------------------------

def _path(folder, row, name):
    return os.path.join(folder, f"input_{row}-{name}")


def first_phase(row: str, folder: str, check) -> None:
    """Records the reference; trains AT epochs and saves the checkpoint."""
    import numpy as np

    if row in MID_EPOCH:
        return _mid_first_phase(row, folder, check)

    import keras_repro as kr

    check.lifecycle = "fresh"
    recorder = kr.SeedCallback(SEED, _path(folder, row, "reference.h5"), mode="record")
    model = _fit(row, folder, [recorder])
    fed = [next((r.digest for r in fp.records if r.path == "fed/x"), None) for fp in recorder.log.epochs]
    check("recorded, with the batches fed at every epoch", recorder.recorded_epochs == tuple(range(EPOCHS))
          and None not in fed, recorder.summary)
    if row not in ("generator", "grain"):  # these feed the same batches every epoch
        check("the input changes from epoch to epoch", len(set(fed)) == EPOCHS, fed)
    np.savez(_path(folder, row, "final.npz"), *model.get_weights())
    check.lifecycle = "resume"
    first = _fit(row, folder, [kr.SeedCallback(SEED)], epochs=AT)
    first.save(_path(folder, row, "checkpoint.keras"))


def second_phase(row: str, folder: str, check) -> None:
    """Verifies in a fresh process, names another seed; resumes from the checkpoint."""
    import keras
    import numpy as np

    import keras_repro as kr

    if row in MID_EPOCH:
        return _mid_second_phase(row, folder, check)

    reference = _path(folder, row, "reference.h5")
    with np.load(_path(folder, row, "final.npz")) as arrays:
        final = [arrays[k] for k in arrays.files]
    check.lifecycle = "fresh"
    verifier = kr.SeedCallback(SEED, reference, mode="verify", on_mismatch="warn")
    model = _fit(row, folder, [verifier])
    check("verified in a fresh process (batches fed included)", verifier.divergence is None
          and verifier.verified_epochs == tuple(range(EPOCHS)), (verifier.divergence, verifier.summary))
    check("fresh process: final weights equal", _same(model.get_weights(), final))
    try:
        _fit(row, folder, [kr.SeedCallback(SEED + 1, reference, mode="verify")], seed=SEED + 1)
        check("another seed is detected", False, "no FingerprintMismatch")
    except kr.FingerprintMismatch as error:
        check("another seed is detected before the first step", error.divergence.stage == "initial", error)
    check.lifecycle = "resume"
    keras.backend.clear_session()
    loaded = keras.models.load_model(_path(folder, row, "checkpoint.keras"))
    callback = kr.SeedCallback(SEED, reference, mode="verify", on_mismatch="warn")
    expected = warned(row)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _fit(row, folder, [callback], model=loaded, initial_epoch=AT)
    resume_warnings = [str(w.message) for w in caught if "cannot see the batches" in str(w.message)]
    if expected:
        note = callback.log.notes.get("input_resume", "")
        check(f"the resumed fit warns, naming {expected!r}", any(expected in text for text in resume_warnings),
              resume_warnings or [str(w.message) for w in caught])
        check("the resumed run's fingerprints note it", expected in note, callback.log.notes)
        return
    check("the resumed fit does not warn about its input", not resume_warnings, resume_warnings)
    check("resumed in a new process == straight (batches fed, weights, optimizer state, digests)",
          callback.divergence is None and callback.verified_epochs == tuple(range(AT, EPOCHS)),
          (callback.divergence, callback.summary))
    check("resumed: final weights == straight", _same(resumed.get_weights(), final))


# Mid-epoch BackupAndRestore rows ----------------------------------------------------------------

def _mid_build():
    """A DeterministicModel with layer RNG (Dropout) and optimizer state (Adam)."""
    import keras

    import keras_repro as kr

    keras.backend.clear_session()
    inputs = keras.Input((6,))
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(16, activation="relu")(inputs))
    model = kr.DeterministicModel(inputs, keras.layers.Dense(3, activation="softmax")(hidden), seed=SEED)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _mid_fit(row, folder, backup, reference, stop=None):
    """A new model fit EPOCHS epochs with BackupAndRestore(backup, save_freq=SAVE_FREQ), a SeedCallback
    recording `reference` (and an exception after batch stop[1] of epoch stop[0]); returns
    (model, callback, whether it was interrupted, the warnings)."""
    import keras

    import keras_repro as kr

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == stop:
                raise RuntimeError("interrupted")

    model = _mid_build()
    x, y = _arrays(MID_ROWS)
    if row == "mid_epoch_tf_data":
        import tensorflow as tf

        data = {"x": tf.data.Dataset.from_tensor_slices((x, y)).shuffle(MID_ROWS, seed=3).batch(BATCH)}
    else:
        data = {"x": x, "y": y, "batch_size": BATCH}
    callback = kr.SeedCallback(SEED, _path(folder, row, reference), every_n_batches=2)
    callbacks = [keras.callbacks.BackupAndRestore(_path(folder, row, backup), save_freq=SAVE_FREQ), callback]
    interrupted = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.fit(**data, epochs=EPOCHS, verbose=0, callbacks=callbacks + ([Interrupt()] if stop else []))
        except RuntimeError as error:
            if "interrupted" not in str(error):
                raise
            interrupted = True
    return model, callback, interrupted, [str(w.message) for w in caught]


def _mid_first_phase(row, folder, check):
    """The straight run (its reference and final digest); the run interrupted at STOP."""
    import keras_repro as kr

    check.lifecycle = "resume"
    straight, _, interrupted, _ = _mid_fit(row, folder, "straight-backup", "straight.h5")
    check("the straight run ends", not interrupted)
    with open(_path(folder, row, "digest.txt"), "w") as handle:
        handle.write(kr.fingerprint(straight).digest)
    _, _, interrupted, _ = _mid_fit(row, folder, "backup", "resumed.h5", stop=STOP)
    check(f"the fit raises after epoch {STOP[0]}, batch {STOP[1]}", interrupted)


def _mid_second_phase(row, folder, check):
    """Restarts the interrupted fit with its backup folder in this new process; compares."""
    import keras_repro as kr

    check.lifecycle = "resume"
    model, callback, interrupted, caught = _mid_fit(row, folder, "backup", "resumed.h5")
    not_exact = [text for text in caught if "cannot do so exactly" in text or "does not fit this model" in text]
    check("the restart ends, with no warning that the resume is not exact", not interrupted and not not_exact,
          not_exact)
    note = callback.log.notes.get("mid_epoch_resume", "")
    check(f"the restart resumed epoch {STOP[0]} after batch {BACKED_UP} (the last backup)",
          note.startswith(f"resumed epoch {STOP[0]} after batch {BACKED_UP}"), callback.log.notes)
    with open(_path(folder, row, "digest.txt")) as handle:
        expected = handle.read()
    check("final fingerprint digest == the straight run's", kr.fingerprint(model).digest == expected)
    straight = kr.load_fingerprints(_path(folder, row, "straight.h5"))
    resumed = kr.load_fingerprints(_path(folder, row, "resumed.h5"))
    check("the reference recorded across the restart compares identical to the straight one (batches included)",
          straight.compare(resumed).identical and resumed.batches == straight.batches
          and [fp.digest for fp in resumed.epochs] == [fp.digest for fp in straight.epochs],
          straight.compare(resumed).verdict)


def _same(a, b) -> bool:
    import numpy as np

    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))


RESHUFFLED = None


def register() -> None:
    """Defines the PyDataset class (after Keras is imported)."""
    global RESHUFFLED
    RESHUFFLED = _reshuffled_class()
