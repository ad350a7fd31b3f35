"""The conformance matrix: the model forms, lifecycles and fit options users meet, for one
backend, all in one process per phase.

Run as: python tests/scripts/conformance.py PHASE FOLDER [--cells ID,...]
        python tests/scripts/conformance.py table      (the table of docs/guarantees.md, in Markdown)

PHASE "first" (started with PYTHONHASHSEED=0) records every cell's reference, fits twice in
one process, continues fits, saves checkpoints and interrupts a recording. PHASE "second"
(another process, PYTHONHASHSEED=random) verifies every reference, resumes from the
checkpoints, completes the interrupted recording, and checks that another seed and a
one-ulp weight change are named. Every fit runs at Keras' default verbosity unless the cell
says otherwise. Results go to FOLDER/PHASE.json: {cell: {"checks": [[name, ok, detail]],
"error": text or null, "lifecycle": where an error happened, "seconds": s}}.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conformance_inputs as inputs  # the input rows: tf.data, PyDataset, generator, Grain

SEED, EPOCHS, AT = 7, 3, 2
"""Every cell trains EPOCHS epochs with seed SEED; resumed runs stop after AT epochs."""

FORMS = {
    "subclass": "a registered DeterministicModel subclass",
    "functional": "DeterministicModel(inputs, outputs)",
    "sequential": "DeterministicSequential with Input",
    "sequential_deferred": "DeterministicSequential built at its first fit",
    "nested": "a DeterministicModel holding a nested submodel",
    "plain": "keras.Sequential + kr.seed_everything + SeedCallback",
}
LIFECYCLES = {
    "repeat": "two fits in one process: histories `==`, digests equal",
    "fresh": "recorded, then verified in a fresh process with another PYTHONHASHSEED; another seed is named",
    "resume": "2 epochs + save + load_model in a new process + the rest == straight; loaded weights kept; load_weights into a fresh instance kept",
    "continue": "a second fit of the same model (plain, and with initial_epoch) verifies against the straight run",
    "interrupt": "a recording interrupted after epoch 0 is completed by the next run (verify 0, record 1-2) == straight",
    "perturb": "one ulp of one weight after epoch 1 is named at epoch 1, with its variable",
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of the matrix: a model form, the lifecycles checked, and a fit option."""

    id: str
    form: str
    lifecycles: tuple[str, ...]
    option: str = "default"
    family: str | None = None
    input: str | None = None


CORE = ("repeat", "fresh", "resume", "continue", "interrupt", "perturb")
OPTIONS = {
    "verbose_1": ("subclass", "verbose=1"),
    "verbose_2": ("sequential", "verbose=2"),
    "split_last": ("sequential_deferred", "validation_split=0.25, validation_split_mode='last'"),
    "split_shuffled": ("functional", "validation_split_mode='shuffled'"),
    "split_stratified": ("nested", "validation_split_mode='stratified'"),
    "validation_data": ("plain", "validation_data=(x_val, y_val)"),
    "sample_weight": ("subclass", "sample_weight"),
    "class_weight": ("sequential", "class_weight"),
    "partial_batch": ("plain", "a last partial batch (96 rows, batch_size=20)"),
    "shuffle_false": ("functional", "shuffle=False"),
    "shuffle_batch": ("sequential_deferred", "shuffle='batch'"),
    "dict_io": ("functional", "dict inputs and outputs"),
    "list_io": ("functional", "list inputs and outputs"),
    "mixed_precision": ("sequential", "mixed precision (mixed_bfloat16)"),
    "early_stopping": ("plain", "EarlyStopping (stops after 2 of 5 epochs)"),
    "model_checkpoint": ("functional", "ModelCheckpoint, resumed from its file"),
    "reduce_lr": ("subclass", "ReduceLROnPlateau"),
    "backup_and_restore": ("sequential", "BackupAndRestore, interrupted and restored"),
    "csv_logger": ("nested", "CSVLogger"),
    "tensorboard": ("sequential_deferred", "TensorBoard"),
    "keras_random": ("functional", "a layer adding keras.random.normal() drawn without a seed (jit_compile=False)"),
}
FAMILIES = {
    "mlp": "Dense + Dropout",
    "cnn_bn": "Conv2D + BatchNormalization + MaxPooling2D",
    "lstm": "LSTM",
    "embedding": "Embedding + GlobalAveragePooling1D",
    "noise": "GaussianNoise, Dropout, GaussianDropout",
    "augmentation": "RandomFlip, RandomRotation, RandomTranslation, RandomZoom",
}


def _cells() -> list[Cell]:
    cells = [Cell(form, form, CORE) for form in FORMS]
    for option, (form, _) in OPTIONS.items():
        lifecycles = ("fresh",)
        if option in ("model_checkpoint", "keras_random"):
            lifecycles = ("fresh", "resume")
        elif option == "backup_and_restore":
            lifecycles = ("fresh", "interrupt")
        cells.append(Cell(option, form, lifecycles, option))
    cells += [Cell(f"family_{name}", "functional", ("fresh",), family=name) for name in FAMILIES]
    cells += [Cell(f"input_{row}", "functional", inputs.lifecycles(row), input=row) for row in inputs.INPUTS]
    return cells


CELLS = {cell.id: cell for cell in _cells()}


def markdown_table() -> str:
    """The table (docs/guarantees.md) of what the matrix checks on every backend, and its legend."""
    lines = ["| cell | model | fit | checked |", "|---|---|---|---|"]
    for cell in CELLS.values():
        if cell.family:
            form, option = "DeterministicModel or DeterministicSequential", f"{FAMILIES[cell.family]}; validation_split=0.2"
        elif cell.input:
            form, option = FORMS[cell.form], inputs.INPUTS[cell.input]
        else:
            form = FORMS[cell.form]
            option = OPTIONS[cell.option][1] if cell.option != "default" else (
                "defaults: verbose 'auto', shuffle=True" + ("" if cell.form == "plain" else ", validation_split=0.25"))
        lines.append(f"| `{cell.id}` | {form} | {option} | {', '.join(cell.lifecycles)} |")
    lines.append("")
    lines += [f"* **{name}**: {text}" for name, text in LIFECYCLES.items()]
    lines.append(inputs.LEGEND)
    return "\n".join(lines)


# Building -------------------------------------------------------------------------------------------

def _keras():
    sys.path.insert(0, REPO)
    import keras  # noqa: F401

    import keras_repro  # noqa: F401

    return keras


def _data(option: str):
    """(x, y) for a cell: 96 rows of 6 features in 3 classes (dict/list structures for *_io)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (np.abs(x[:, 0] * 3).astype(int) % 3).astype("int32")
    if option == "dict_io":
        return {"a": x[:, :4], "b": x[:, 4:]}, {"label": y, "size": x[:, :1] * 2}
    if option == "list_io":
        return [x[:, :4], x[:, 4:]], [y, x[:, :1] * 2]
    return x, y


def _family(name: str, seed: int):
    """A model family on the bundled digits: (model, x, y)."""
    import keras

    import keras_repro as kr
    from keras_repro.datasets import load_digits

    L = keras.layers
    images, labels = load_digits()
    images, labels = images[:240].astype("float32") / 16, labels[:240].astype("int32")
    flat = images.reshape(-1, 64)
    if name == "mlp":
        inputs = keras.Input((64,))
        hidden = L.Dropout(0.2)(L.Dense(32, activation="relu")(inputs))
        return kr.DeterministicModel(inputs, L.Dense(10, activation="softmax")(hidden), seed=seed), flat, labels
    if name == "cnn_bn":
        inputs = keras.Input((8, 8, 1))
        h = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inputs)))
        h = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", activation="relu")(L.MaxPooling2D(2)(h)))
        return kr.DeterministicModel(inputs, L.Dense(10, activation="softmax")(L.Flatten()(h)), seed=seed), images[..., None], labels
    if name == "lstm":
        return kr.DeterministicSequential([keras.Input((8, 8)), L.LSTM(12), L.Dense(10, activation="softmax")], seed=seed), images, labels
    if name == "embedding":
        inputs = keras.Input((64,), dtype="int32")
        h = L.GlobalAveragePooling1D()(L.Embedding(17, 8)(inputs))
        tokens = (flat * 16).astype("int32")
        return kr.DeterministicModel(inputs, L.Dense(10, activation="softmax")(h), seed=seed), tokens, labels
    if name == "noise":
        model = kr.DeterministicSequential(
            [keras.Input((64,)), L.GaussianNoise(0.1), L.Dense(32, activation="relu"), L.Dropout(0.3),
             L.GaussianDropout(0.2), L.Dense(10, activation="softmax")], seed=seed)
        return model, flat, labels
    inputs = keras.Input((8, 8, 1))
    h = L.RandomZoom(0.1)(L.RandomTranslation(0.1, 0.1)(L.RandomRotation(0.05)(L.RandomFlip("horizontal")(inputs))))
    h = L.Flatten()(L.MaxPooling2D(2)(L.Conv2D(8, 3, padding="same", activation="relu")(h)))
    return kr.DeterministicModel(inputs, L.Dense(10, activation="softmax")(h), seed=seed), images[..., None], labels


def _layers():
    import keras

    L = keras.layers
    return [L.Dense(8, activation="relu"), L.BatchNormalization(), L.Dropout(0.25), L.Dense(3, activation="softmax")]


def _register_subclass():
    """The subclass form, as users write it (registered, so load_model finds it)."""
    import keras

    import keras_repro as kr

    @keras.saving.register_keras_serializable(package="conformance")
    class Net(kr.DeterministicModel):
        def __init__(self, seed=SEED, **kwargs):
            super().__init__(seed=seed, **kwargs)
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.norm = keras.layers.BatchNormalization()
            self.dropout = keras.layers.Dropout(0.25)
            self.out = keras.layers.Dense(3, activation="softmax")

        def call(self, inputs, training=False):
            return self.out(self.dropout(self.norm(self.hidden(inputs), training=training), training=training))

    return Net


def _register_noise():
    """A layer drawing from Keras' global SeedGenerator (`seed=None`), as users write one."""
    import keras

    @keras.saving.register_keras_serializable(package="conformance")
    class UnseededNoise(keras.layers.Layer):
        def call(self, inputs, training=False):
            if training:
                return inputs + keras.random.normal(keras.ops.shape(inputs)) * 0.01
            return inputs

    return UnseededNoise


def build(cell: Cell, seed: int = SEED):
    """The cell's compiled model, (x, y), and whether it is a DeterministicModel."""
    import keras

    import keras_repro as kr

    if cell.family:
        model, x, y = _family(cell.family, seed)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model, x, y
    x, y = _data(cell.option)
    if cell.option in ("dict_io", "list_io"):
        a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
        hidden = keras.layers.Dropout(0.25)(keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b])))
        label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
        size = keras.layers.Dense(1, name="size")(hidden)
        if cell.option == "dict_io":
            model = kr.DeterministicModel({"a": a, "b": b}, {"label": label, "size": size}, seed=seed)
            loss = {"label": "sparse_categorical_crossentropy", "size": "mse"}
        else:
            model = kr.DeterministicModel([a, b], [label, size], seed=seed)
            loss = ["sparse_categorical_crossentropy", "mse"]
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
        return model, x, y
    form = cell.form
    if form == "subclass":
        model = NET(seed=seed)
    elif form == "functional":
        inputs = keras.Input((6,))
        hidden = inputs
        for layer in _layers()[:-1]:
            hidden = layer(hidden)
        if cell.option == "keras_random":
            hidden = NOISE()(hidden)
        model = kr.DeterministicModel(inputs, _layers()[-1](hidden), seed=seed)
    elif form == "sequential":
        model = kr.DeterministicSequential([keras.Input((6,))] + _layers(), seed=seed)
    elif form == "sequential_deferred":
        model = kr.DeterministicSequential(_layers(), seed=seed)
    elif form == "nested":
        block = keras.Sequential([keras.Input((6,))] + _layers()[:2], name="block")
        inputs = keras.Input((6,))
        hidden = keras.layers.Dropout(0.25)(block(inputs))
        model = kr.DeterministicModel(inputs, keras.layers.Dense(3, activation="softmax")(hidden), seed=seed, keep_weights=())
    else:
        kr.seed_everything(seed)
        model = keras.Sequential([keras.Input((6,))] + _layers())
    # JAX refuses unseeded keras.random calls in a compiled step (keras_repro.fit.rng_state)
    jit = {"jit_compile": False} if cell.option == "keras_random" else {}
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"], **jit)
    return model, x, y


def fit_arguments(cell: Cell, folder: str, x, y, tag: str) -> tuple[dict, list]:
    """The cell's fit keyword arguments (x, y excluded) and extra callbacks."""
    import keras
    import numpy as np

    option = cell.option
    kwargs = {"epochs": EPOCHS, "batch_size": 16}
    if cell.family:
        kwargs.update(batch_size=32, validation_split=0.2)
    elif cell.form != "plain":
        kwargs["validation_split"] = 0.25
    callbacks = []
    if option == "verbose_1":
        kwargs["verbose"] = 1
    elif option == "verbose_2":
        kwargs["verbose"] = 2
    elif option.startswith("split_"):
        kwargs["validation_split_mode"] = option[len("split_"):]
    elif option == "validation_data":
        kwargs["validation_data"] = (x[:16] * 0.5, y[:16])
    elif option == "sample_weight":
        kwargs["sample_weight"] = np.linspace(0.5, 1.5, len(y)).astype("float32")
    elif option == "class_weight":
        kwargs["class_weight"] = {0: 1.0, 1: 2.0, 2: 0.5}
    elif option == "partial_batch":
        kwargs["batch_size"] = 20
    elif option == "shuffle_false":
        kwargs["shuffle"] = False
    elif option == "shuffle_batch":
        kwargs["shuffle"] = "batch"
    elif option == "early_stopping":
        kwargs["epochs"] = 5
        callbacks.append(keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9))
    elif option == "model_checkpoint":
        callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(folder, f"{cell.id}-{tag}-{{epoch}}.keras")))
    elif option == "reduce_lr":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9, min_lr=1e-4))
    elif option == "backup_and_restore":
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(folder, f"{cell.id}-{tag}-backup")))
    elif option == "csv_logger":
        callbacks.append(keras.callbacks.CSVLogger(os.path.join(folder, f"{cell.id}-{tag}.csv")))
    elif option == "tensorboard":
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(folder, f"{cell.id}-{tag}-tb")))
    return kwargs, callbacks


# Running ---------------------------------------------------------------------------------------------

class Checks:
    """The checks of one cell, each filed under a lifecycle."""

    def __init__(self) -> None:
        self.items: list[list] = []
        self.lifecycle = "fresh"

    def __call__(self, name: str, ok: bool, detail: object = "") -> bool:
        self.items.append([self.lifecycle, name, bool(ok), str(detail)[:600]])
        return bool(ok)


class StopAt:
    """A callback that interrupts a fit (as Ctrl-C would) at the start of an epoch."""

    def __new__(cls, epoch):
        import keras

        class _Stop(keras.callbacks.Callback):
            def on_epoch_begin(self, e, logs=None):
                if e == epoch:
                    raise KeyboardInterrupt

        return _Stop()


class Capture:
    """A callback keeping the weights at train begin and the logs other callbacks see."""

    def __new__(cls):
        import keras

        class _Capture(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.weights, self.logs = None, []

            def on_train_begin(self, logs=None):
                self.weights = [w.copy() for w in self.model.get_weights()]

            def on_epoch_end(self, epoch, logs=None):
                self.logs.append(dict(logs or {}))

        return _Capture()


def _is_number(text: str) -> bool:
    if text == "NA":  # CSVLogger's "no value" (a val_ column without validation data)
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numbers_only(capture) -> bool:
    import numpy as np

    return all(isinstance(v, (int, float, np.number)) for logs in capture.logs for v in logs.values())


def _same(a, b) -> bool:
    import numpy as np

    return a is not None and b is not None and len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))


def _fit(cell, folder, tag, callbacks=(), model=None, data=None, **overrides):
    """Builds (unless given) and fits the cell's model; returns (model, history, capture)."""
    import keras

    if model is None:
        keras.backend.clear_session()
        model, x, y = build(cell, overrides.pop("model_seed", SEED))
    else:
        overrides.pop("model_seed", None)
        x, y = data
    kwargs, extra = fit_arguments(cell, folder, x, y, tag)
    kwargs.update(overrides)
    capture = Capture()
    history = model.fit(x, y, callbacks=[*extra, *callbacks, capture], **kwargs)
    return model, history, capture


def _path(folder, cell, name):
    return os.path.join(folder, f"{cell.id}-{name}")


def _option_checks(cell, folder, tag, check):
    """What the fit option itself promises (files written, logs numeric)."""
    if cell.option == "csv_logger":
        with open(os.path.join(folder, f"{cell.id}-{tag}.csv")) as handle:
            rows = list(csv.DictReader(handle))
        check("csv: one numeric row per epoch, no digest column",
              len(rows) == EPOCHS and all("fingerprint" not in r for r in rows)
              and all(_is_number(v) for r in rows for v in r.values()), rows[:1])
    if cell.option == "tensorboard":
        check("tensorboard wrote its logs", bool(os.listdir(os.path.join(folder, f"{cell.id}-{tag}-tb"))))


def first_phase(cell: Cell, folder: str, check: Checks) -> None:
    """Records the reference; in-process repeats, continuations, checkpoints, an interruption."""
    import numpy as np

    import keras_repro as kr

    reference = _path(folder, cell, "reference.h5")
    check.lifecycle = "fresh"
    recorder = kr.SeedCallback(SEED, reference, mode="record")
    model, history, capture = _fit(cell, folder, "record", [recorder])
    check("recorded", recorder.resolved_mode == "record" and recorder.recorded_epochs == tuple(range(len(history.epoch))),
          recorder.summary)
    check("History holds Keras' keys only; its fingerprints attribute the digests",
          "fingerprint" not in history.history and history.fingerprints.epochs == recorder.log.epochs)
    check("logs other callbacks see hold numbers only", _numbers_only(capture), capture.logs[:1])
    _option_checks(cell, folder, "record", check)
    np.savez(_path(folder, cell, "final.npz"), *model.get_weights())
    if "repeat" in cell.lifecycles:
        check.lifecycle = "repeat"
        again, history2, _ = _fit(cell, folder, "repeat", [kr.SeedCallback(SEED)])
        check("two fits in one process: histories ==", history.history == history2.history)
        check("two fits in one process: weights equal", _same(model.get_weights(), again.get_weights()))
    if "resume" in cell.lifecycles and cell.option != "model_checkpoint":
        check.lifecycle = "resume"
        first, _, _ = _fit(cell, folder, "first", [kr.SeedCallback(SEED)], epochs=AT)
        first.save(_path(folder, cell, "checkpoint.keras"))
        first.save_weights(_path(folder, cell, "checkpoint.weights.h5"))
        np.savez(_path(folder, cell, "checkpoint.npz"), *first.get_weights())
    if "continue" in cell.lifecycles:
        check.lifecycle = "continue"
        for variant, second in (("fit again", {}), ("initial_epoch", {"initial_epoch": AT, "epochs": EPOCHS})):
            callback = kr.SeedCallback(SEED, reference, mode="verify", on_mismatch="warn")
            model, _, _ = _fit(cell, folder, "continue", [callback], epochs=AT)
            x, y = _data(cell.option)
            _fit(cell, folder, "continue", [callback], model=model, data=(x, y), **(second or {"epochs": EPOCHS - AT}))
            check(f"continued ({variant}) verifies the later epochs", callback.divergence is None
                  and callback.verified_epochs == tuple(range(AT, EPOCHS)), (callback.divergence, callback.verified_epochs))
    if "interrupt" in cell.lifecycles:
        check.lifecycle = "interrupt"
        interrupted = _path(folder, cell, "interrupted.h5")
        try:
            _fit(cell, folder, "interrupted", [kr.SeedCallback(SEED, interrupted), StopAt(1)])
            check("interrupted", False, "the fit was not interrupted")
        except KeyboardInterrupt:
            log = kr.load_fingerprints(interrupted)
            check("an interrupted recording is incomplete", not log.complete and len(log.epochs) == 1, log.planned_epochs)


def second_phase(cell: Cell, folder: str, check: Checks) -> None:
    """Verifies in a fresh process; resumes; completes; and names what differs."""
    import numpy as np

    import keras_repro as kr

    reference = _path(folder, cell, "reference.h5")
    recorded = kr.load_fingerprints(reference)
    if "fresh" in cell.lifecycles:
        check.lifecycle = "fresh"
        verifier = kr.SeedCallback(SEED, reference, mode="verify", on_mismatch="warn")
        model, history, capture = _fit(cell, folder, "verify", [verifier])
        check("verified in a fresh process", verifier.divergence is None
              and verifier.verified_epochs == tuple(fp.epoch for fp in recorded.epochs), (verifier.divergence, verifier.summary))
        check("fresh process: digests equal", [fp.digest for fp in verifier.log.epochs] == [fp.digest for fp in recorded.epochs])
        with np.load(_path(folder, cell, "final.npz")) as final:
            check("fresh process: final weights equal", _same(model.get_weights(), [final[k] for k in final.files]))
        check("logs other callbacks see hold numbers only", _numbers_only(capture))
        _option_checks(cell, folder, "verify", check)
        try:
            _fit(cell, folder, "other-seed", [kr.SeedCallback(SEED + 1, reference, mode="verify")], model_seed=SEED + 1)
            check("another seed is detected", False, "no FingerprintMismatch")
        except kr.FingerprintMismatch as error:
            check("another seed is detected before the first step, with the seed as likely cause",
                  error.divergence.stage == "initial" and f"seed {SEED}; this run uses seed {SEED + 1}" in str(error), error)
    if "resume" in cell.lifecycles:
        check.lifecycle = "resume"
        _resume_checks(cell, folder, check, recorded)
    if "interrupt" in cell.lifecycles:
        check.lifecycle = "interrupt"
        interrupted = _path(folder, cell, "interrupted.h5")
        completer = kr.SeedCallback(SEED, interrupted)
        _fit(cell, folder, "interrupted", [completer])
        # BackupAndRestore resumes at epoch 1 (its backup holds epoch 0): its start is checked against epoch 0.
        verified = () if cell.option == "backup_and_restore" else (0,)
        done = kr.load_fingerprints(interrupted)
        check("the next run completes an interrupted recording",
              completer.divergence is None and completer.verified_epochs == verified
              and completer.recorded_epochs == tuple(range(1, EPOCHS)) and done.complete, completer.summary)
        check("the completed recording == straight", [fp.digest for fp in done.epochs] == [fp.digest for fp in recorded.epochs])
    if "perturb" in cell.lifecycles:
        check.lifecycle = "perturb"
        nudge = _nudge_after(1)
        try:
            _fit(cell, folder, "perturb", [nudge, kr.SeedCallback(SEED, reference, mode="verify")])
            check("one ulp is detected", False, "no FingerprintMismatch")
        except kr.FingerprintMismatch as error:
            found = error.divergence
            check("one ulp after epoch 1 is named at epoch 1 with its variable",
                  (found.stage, found.epoch, found.part, found.variable) == ("epoch", 1, "trainable", nudge.path), found)


def _resume_checks(cell, folder, check, recorded):
    """Loads the checkpoint in this (fresh) process, resumes, compares with straight."""
    import keras
    import numpy as np

    import keras_repro as kr

    if cell.option == "model_checkpoint":
        checkpoint, saved = os.path.join(folder, f"{cell.id}-record-{AT}.keras"), None
    else:
        checkpoint = _path(folder, cell, "checkpoint.keras")
        with np.load(_path(folder, cell, "checkpoint.npz")) as arrays:
            saved = [arrays[k] for k in arrays.files]
    keras.backend.clear_session()
    loaded = keras.models.load_model(checkpoint)
    saved = saved or [w.copy() for w in loaded.get_weights()]
    callback = kr.SeedCallback(SEED, _path(folder, cell, "reference.h5"), mode="verify", on_mismatch="warn")
    x, y = _data(cell.option)
    model, _, capture = _fit(cell, folder, "resume", [callback], model=loaded, data=(x, y), initial_epoch=AT)
    check("load then fit keeps the loaded weights", _same(capture.weights, saved))
    check("resumed in a new process == straight (weights, optimizer state, digests)",
          callback.divergence is None and callback.verified_epochs == tuple(range(AT, EPOCHS)), (callback.divergence, callback.summary))
    with np.load(_path(folder, cell, "final.npz")) as final:
        check("resumed: final weights == straight", _same(model.get_weights(), [final[k] for k in final.files]))
    if cell.option == "model_checkpoint":
        return
    keras.backend.clear_session()
    fresh, x, y = build(cell)
    if cell.form == "subclass":
        fresh(x[:1])  # Keras builds a subclassed model's layers when it is first called
    elif not fresh.built:
        fresh.build((None, 6))
    fresh.load_weights(_path(folder, cell, "checkpoint.weights.h5"))
    _, _, capture = _fit(cell, folder, "load-weights", [kr.SeedCallback(SEED)], model=fresh, data=(x, y),
                         initial_epoch=AT)
    check("load_weights into a fresh instance: the fit starts from them", _same(capture.weights, saved))


def _nudge_after(epoch):
    """A callback moving the first trainable weight's first element by one ulp after `epoch`."""
    import keras
    import numpy as np

    class Nudge(keras.callbacks.Callback):
        path = None

        def on_epoch_end(self, e, logs=None):
            if e == epoch:
                variable = self.model.trainable_weights[0]
                Nudge.path = variable.path
                values = keras.ops.convert_to_numpy(variable).copy()
                values.reshape(-1)[0] = np.nextafter(values.reshape(-1)[0], np.inf)
                variable.assign(values)

    nudge = Nudge()
    return nudge


def run_cell(cell: Cell, phase: str, folder: str) -> dict:
    import keras

    check = Checks()
    start = time.perf_counter()
    error = None
    if cell.input and inputs.skipped(cell.input):
        return {"checks": [], "error": None, "lifecycle": None, "skipped": inputs.skipped(cell.input), "seconds": 0.0}
    if cell.option == "mixed_precision":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        if cell.input:
            (inputs.first_phase if phase == "first" else inputs.second_phase)(cell.input, folder, check)
        else:
            (first_phase if phase == "first" else second_phase)(cell, folder, check)
    except Exception:  # noqa: BLE001 - report the cell and go on with the next
        error = traceback.format_exc()[-3000:]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"checks": check.items, "error": error, "lifecycle": check.lifecycle,
            "seconds": round(time.perf_counter() - start, 2)}


NET = NOISE = None


def main() -> None:
    global NET, NOISE
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["first", "second", "table"])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--cells", default=",".join(CELLS))
    args = parser.parse_args()
    if args.phase == "table":
        print(markdown_table())
        return
    _keras()
    NET, NOISE = _register_subclass(), _register_noise()
    inputs.register()
    results = {}
    output = os.path.join(args.folder, f"{args.phase}.json")
    if os.path.exists(output):  # a run of some cells adds to the results of the others
        with open(output) as handle:
            results = json.load(handle)
    for name in args.cells.split(","):
        results[name] = run_cell(CELLS[name], args.phase, args.folder)
        print(f"CELL {name} {results[name]['seconds']} s", file=sys.stderr, flush=True)
    with open(output, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
