"""Exact mid-epoch resume with `keras.callbacks.BackupAndRestore(save_freq=N)`.

Keras' `BackupAndRestore` saves `model.save_weights` (the weights and the optimizer's
variables) and `training_metadata.json` ({"epoch": the epoch in progress, "batch": the last
batch trained}) every N batches. Restarted with the same folder, Keras loads the weights and
starts at that epoch, but from its first batch (keras-team/keras#22010): the batches already
trained are trained again, with mid-epoch weights. The weights file also lacks what a
`DeterministicModel` draws from mid-epoch: the layers' SeedGenerator states (Dropout, noise),
Keras' global SeedGenerator, and the metrics' running state (measured on TensorFlow, JAX and
torch, Keras 3.15.1).

When a `DeterministicModel` is fit with a `BackupAndRestore` whose `save_freq` is a number of
batches:

* every time it saves, keras_repro writes `keras_repro_resume.json` beside it, atomically:
  the position (epoch, batch), the SeedGenerator and metric states, the framework's global RNG
  (torch's Dropout without a seed draws from it), and the `SeedCallback`'s state of the epoch
  in progress (checksums of the batches fed, batch fingerprints);
* a fit that finds a backup taken after batch b of epoch k restores those states at the start
  of epoch k and skips batches 0..b of it: the epoch's input is read from its start (arrays in
  the model's order of epoch k; a `tf.data` pipeline, `PyDataset` or generator as Keras reads
  it) and batches 0..b are dropped, so a seeded reshuffle, an augmentation map or a
  `PyDataset`'s reads draw what they drew, and training goes on at batch b + 1.

Batch numbers are absolute: the resumed epoch's batch hooks (`on_train_batch_begin/end`, the
progress bar, `BackupAndRestore` itself, `SeedCallback(every_n_batches=...)`) see b + 1, b + 2,
..., as in the straight run, and later backups record the batch as the straight run would.
What cannot be positioned exactly warns at the resumed fit's start, naming the form and why,
and the reference records a note (`mid_epoch_resume`).

The entry point is `MidEpochResume.start(model, callbacks, seed_callback, x, steps_per_epoch)`;
`read_position(backup_dir)` tells where a backup folder would resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.errors import ReproWarning, warn
from keras_repro.fingerprinting.digests import Fingerprint, VariableDigest
from keras_repro.fingerprinting.variables import seed_generators
from keras_repro.fit import rng_state

logger = logging.getLogger(__name__)

STATE_FILE = "keras_repro_resume.json"
"""keras_repro's part of a backup, written in the `BackupAndRestore` folder."""

FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a backup resumes: `batches` batches of `epoch` were trained (0: none).

    Attributes:
        epoch: The epoch in progress when the backup was taken.
        batches: Batches of it already trained.
        state: keras_repro's saved state (None: the folder has none that matches).
        problem: Why the position cannot be resumed exactly (None: it can).
    """

    epoch: int
    batches: int
    state: dict | None = None
    problem: str | None = None


def backup_callback(callbacks: Any) -> Any:
    """The fit's `BackupAndRestore` that saves every N batches, or None."""
    for callback in keras.tree.flatten(callbacks or []):
        if isinstance(callback, keras.callbacks.BackupAndRestore) and not isinstance(callback.save_freq, str) \
                and callback.save_freq:
            return callback
    return None


def read_position(backup_dir: str | os.PathLike) -> Position | None:
    """Where a fit with a `BackupAndRestore(backup_dir, save_freq=N)` would resume: None when
    the folder holds no backup.

    Example:

    >>> read_position("/tmp/no-such-backup") is None
    True
    """
    metadata_path = os.path.join(os.fspath(backup_dir), "training_metadata.json")
    if not os.path.exists(metadata_path):
        return None
    try:
        with open(metadata_path, encoding="utf-8") as handle:
            metadata = json.load(handle)
        epoch, batch = int(metadata["epoch"]), int(metadata.get("batch", 0))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"BackupAndRestore's '{metadata_path}' cannot be read ({type(error).__name__}: {error}): the backup "
            f"is damaged. Remove the folder to train from the start. Received: backup_dir={os.fspath(backup_dir)!r}"
        ) from error
    state_path = os.path.join(os.fspath(backup_dir), STATE_FILE)
    if not os.path.exists(state_path):
        return Position(epoch, batch + 1, None, (
            f"the backup in '{backup_dir}' has no {STATE_FILE} (it was written by a fit that was not "
            "a kr.DeterministicModel's, or by an older keras_repro)"))
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as error:
        return Position(epoch, batch + 1, None, f"'{state_path}' cannot be read ({type(error).__name__}: {error})")
    if state.get("format") != FORMAT or (state.get("epoch"), state.get("batch")) != (epoch, batch):
        return Position(epoch, batch + 1, None, (
            f"'{state_path}' belongs to another backup (epoch {state.get('epoch')}, batch {state.get('batch')}; "
            f"the weights are from epoch {epoch}, batch {batch}: the fit stopped while saving)"))
    return Position(epoch, batch + 1, state)


def _encode(array: Any) -> dict:
    array = np.array(array, order="C")  # (np.ascontiguousarray makes a 0-d array 1-d)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "hex": array.tobytes().hex()}


def _decode(value: dict) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(value["hex"]), dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()


def _fingerprint_to_json(fingerprint: Fingerprint) -> dict:
    return dataclasses.asdict(fingerprint)


def _fingerprint_from_json(value: dict) -> Fingerprint:
    records = tuple(VariableDigest(**{**record, "shape": tuple(record["shape"]),
                                      "stats": None if record.get("stats") is None else tuple(record["stats"])})
                    for record in value["records"])
    return Fingerprint(value["digest"], records, value.get("epoch"), dict(value.get("metrics") or {}), value.get("batch"))


def _values(variables: list) -> list[dict]:
    return [_encode(keras.ops.convert_to_numpy(variable.value)) for variable in variables]


def _assign(variables: list, values: list[dict], what: str) -> str | None:
    """Assigns saved values; says why not when they do not fit."""
    if len(variables) != len(values):
        return f"the model has {len(variables)} {what}, the backup {len(values)}"
    for variable, value in zip(variables, values):
        array = _decode(value)
        if tuple(variable.shape) != array.shape:
            return f"{what} '{variable.path}' has shape {tuple(variable.shape)}, the backup {array.shape}"
        variable.assign(array)
    return None


def _global_generators() -> list:
    """The SeedGenerators used as Keras' global one in this thread, the kept one first."""
    return rng_state._generators()


def _assign_global(values: list[dict]) -> str | None:
    """Every global SeedGenerator set to the saved state of the kept one (as `rng_state` resets them)."""
    generators = _global_generators()
    if len(values) != min(len(generators), 1):
        return "Keras' global SeedGenerator is not in both the backup and this fit"
    for generator in generators:
        _assign([generator.state], values, "global SeedGenerators")
    return None


def _global_rng_state() -> dict:
    """The framework's global RNG state, which the model draws from mid-epoch where Keras does
    not use a SeedGenerator (torch's Dropout without a seed). Python's and NumPy's are left as
    the replayed reads leave them: the input pipeline draws from them (a `PyDataset` in
    `__getitem__`, read ahead by Keras), and reading the dropped batches again redraws those."""
    framework = _backend.framework_rng_state()
    return {"framework": None if framework is None else [_encode(state) for state in framework]}


def _set_global_rng_state(state: dict) -> None:
    framework = state["framework"]
    if isinstance(framework, dict):  # written before the accelerators' states were kept: torch's CPU state alone
        framework = [framework]
    if framework is not None:
        _backend.set_framework_rng_state([_decode(value) for value in framework])


def _generator_states(model: Any) -> list:
    return [generator.state for _, generator in seed_generators(model)]


def _write_atomically(path: str, content: dict) -> None:
    folder = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(prefix=".keras_repro_resume.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(content, stream)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


class MidEpochResume:
    """One fit's mid-epoch backups and resume (see the module docstring).

    Args:
        backup: The fit's `BackupAndRestore` (save_freq a number of batches), or None.
        seed_callback: The fit's `SeedCallback` (its in-progress epoch is saved too).
        position: Where this fit resumes (None: it starts afresh, or at an epoch's start).
        problems: Why the position cannot be resumed exactly ([]: it can).

    Example:

    >>> resume = MidEpochResume.start(model, callbacks, seed_callback, x)    # doctest: +SKIP
    >>> with resume.active(model):                                           # doctest: +SKIP
    ...     keras.Model.fit(model, x, callbacks=callbacks, ...)
    """

    def __init__(self, backup: Any = None, seed_callback: Any = None, position: Position | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        self.backup = backup
        self.seed_callback = seed_callback
        self.position = position
        self.problems = tuple(problems)
        self._pending_skip = position.batches if self.resumes_mid_epoch else 0
        self._restored = False

    @classmethod
    def start(cls, model: Any, callbacks: Any, seed_callback: Any, x: Any = None,
              steps_per_epoch: int | None = None) -> MidEpochResume:
        """The resume of a fit about to start: reads the backup folder of its `BackupAndRestore`,
        warns (once, naming the form and why) when the position cannot be resumed exactly."""
        backup = backup_callback(callbacks)
        if backup is None:
            return cls()
        position = read_position(backup.backup_dir)
        if position is None:
            return cls(backup, seed_callback, None)
        problems = [position.problem] if position.problem else []
        if steps_per_epoch is not None:
            problems.append(f"with steps_per_epoch={steps_per_epoch}, batch {position.batches - 1} of epoch "
                            f"{position.epoch} is no known place in the input (drop steps_per_epoch)")
        elif x is not None and hasattr(x, "__next__") and not isinstance(x, keras.utils.PyDataset):
            problems.append(f"the training input is a generator ({type(x).__name__}): its first "
                            f"{position.batches} batches are read again and dropped, which repeats them only if "
                            "the generator starts where the straight run's epoch started (use a PyDataset or tf.data)")
        resume = cls(backup, seed_callback, position, tuple(problems))
        if problems:
            warn(f"This fit resumes epoch {position.epoch} after batch {position.batches - 1} from the backup in "
                 f"'{backup.backup_dir}' and cannot do so exactly: {'; '.join(problems)}.", ReproWarning)
        return resume

    @property
    def resumes_mid_epoch(self) -> bool:
        """Whether this fit starts inside an epoch (a backup taken after one of its batches)."""
        return self.position is not None and self.position.batches > 0

    @property
    def exact(self) -> bool:
        """Whether this fit resumes inside an epoch with all the state it needs."""
        return self.resumes_mid_epoch and self.position.state is not None

    def first_epoch(self, initial_epoch: int) -> int:
        """The epoch the fit starts at: the backup's, else `initial_epoch`."""
        return self.position.epoch if self.position is not None else initial_epoch

    def note(self) -> dict[str, str]:
        """The note the reference records about this resume."""
        if not self.resumes_mid_epoch:
            return {}
        where = f"resumed epoch {self.position.epoch} after batch {self.position.batches - 1} from a backup"
        return {"mid_epoch_resume": f"{where}: not exact: {'; '.join(self.problems)}" if self.problems else where}

    @contextlib.contextmanager
    def active(self, model: Any) -> Iterator[None]:
        """Around Keras' fit of `model`: keras_repro's state is saved with every backup, and a
        resumed epoch skips the batches already trained (with absolute batch numbers)."""
        if self.backup is None:
            yield
            return
        model._repro_resume = self
        backup, saved = self.backup, self.backup.__dict__.get("_save_model")
        original = backup._save_model

        def save_model() -> None:
            original()
            self.save()

        backup._save_model = save_model
        if self.resumes_mid_epoch:  # later backups count batches as the straight run did
            backup._current_epoch = self.position.epoch
            backup._last_batch_seen = self.position.batches - 1
            backup._batches_seen_since_last_saving = 0
        try:
            yield
        finally:
            model._repro_resume = None
            if saved is None:
                backup.__dict__.pop("_save_model", None)
            else:
                backup._save_model = saved

    # saving -------------------------------------------------------------------------

    def save(self) -> None:
        """Writes keras_repro's state beside the backup `BackupAndRestore` has just written."""
        backup = self.backup
        model = backup.model  # on JAX, this brings the trainer's state into the variables
        state: dict[str, Any] = {
            "format": FORMAT, "epoch": int(backup._current_epoch), "batch": int(backup._last_batch_seen),
            "layer_rng": _values(_generator_states(model)),
            "global_rng": _values([generator.state for generator in _global_generators()[:1]]),
            "metrics": _values(list(model.metrics_variables)),
            "global": _global_rng_state(),
        }
        if self.seed_callback is not None:
            state["seed_callback"] = seed_callback_state(self.seed_callback, state["epoch"])
        _write_atomically(os.path.join(backup.backup_dir, STATE_FILE), state)

    # resuming -----------------------------------------------------------------------

    def restore(self, model: Any, epoch: int, seed_callback: Any = None) -> None:
        """At the resumed epoch's start (after `SeedCallback` reset it from (seed, epoch)): the
        RNG and metric states as they were after the backup's batch, and the `SeedCallback`'s
        state of the epoch. Later epochs start afresh."""
        if not self.exact or self._restored or epoch != self.position.epoch:
            return
        self._restored = True
        state = self.position.state
        problems = [problem for problem in (
            _assign(_generator_states(model), state["layer_rng"], "layer SeedGenerators"),
            _assign_global(state["global_rng"]),
            _assign(list(model.metrics_variables), state["metrics"], "metric variables"),
        ) if problem]
        if problems:
            warn(f"The backup's state does not fit this model ({'; '.join(problems)}): the resumed epoch "
                 f"{epoch} is not the straight run's.", ReproWarning)
        if seed_callback is not None and "seed_callback" in state:
            restore_seed_callback(seed_callback, state["seed_callback"], epoch, self.position.batches)
        logger.info("Resumed epoch %d after batch %d", epoch, self.position.batches - 1)

    def iterator_built(self, epoch_iterator: Any) -> None:
        """Keras made the fit's epoch iterator: its first epoch skips the batches already trained,
        numbering the rest as the straight run did."""
        if not self._pending_skip or "_enumerate_iterator" in epoch_iterator.__dict__:
            return
        skip, self._pending_skip = self._pending_skip, 0
        original = epoch_iterator._enumerate_iterator
        if epoch_iterator.num_batches and skip >= epoch_iterator.num_batches:
            warn(f"The backup was taken after the last batch of epoch {self.position.epoch}: the resumed fit ends "
                 "that epoch with no batch, so Keras' logs and History hold no metrics for it (and Keras' JAX "
                 "trainer cannot run an epoch of no batch: it raises UnboundLocalError).", ReproWarning)

        def enumerate_resumed() -> Iterator[tuple[int, int, Any]]:
            del epoch_iterator._enumerate_iterator  # later epochs as Keras makes them
            for begin, end, iterator in original():
                if begin < skip:
                    try:
                        for _ in range(end - begin + 1):  # trained before the backup: read, dropped
                            next(iterator)
                    except StopIteration:
                        return
                    continue
                if begin == skip and self.exact:  # the framework's RNG as after the last batch trained
                    _set_global_rng_state(self.position.state["global"])
                yield begin, end, iterator

        epoch_iterator._enumerate_iterator = enumerate_resumed


def seed_callback_state(callback: Any, epoch: int) -> dict:
    """A `SeedCallback`'s state of the epoch in progress: the checksums of the batches fed so far
    and the batch fingerprints taken."""
    data, state = callback._data, {}
    if data.enabled and data._epoch == epoch:
        data._fetch("train")
        state["fed"] = [_encode(row) for row in data._rows["train"]]
        state["running"] = [None if row is None else _encode(row) for row in data._running]
        state["names"] = list(data.names("train", len(data._rows["train"][0]))) if data._rows["train"] else []
    checker = callback._batch_checker
    if checker is not None:
        checker.fetch()
        state["batches"] = [_fingerprint_to_json(fp) for fp in checker.fingerprints() if fp.epoch == epoch]
    return state


def restore_seed_callback(callback: Any, state: dict, epoch: int, batches: int) -> None:
    """Gives a `SeedCallback` the state of the resumed epoch (`seed_callback_state`)."""
    data = callback._data
    if data.enabled and "fed" in state:
        data._rows["train"] = [_decode(row) for row in state["fed"]]
        data._running = [None if row is None else _decode(row) for row in state["running"]]
        if data._functions is not None and state.get("names"):  # an epoch resumed after its last batch traces no step
            data._functions.hand.names.setdefault("train", tuple(state["names"]))
    checker = callback._batch_checker
    if checker is not None and "batches" in state:
        restored = [_fingerprint_from_json(fp) for fp in state["batches"]]
        checker._fingerprints.extend(restored)
        last = batches - 1
        if checker.capture == "end" and batches % checker.every == 0 and all(fp.batch != last for fp in restored):
            callback._resume_capture = (epoch, last)  # the state after it is the one restored: taken at the next batch


class EpochIteratorHooks:
    """Mixed into `DeterministicModel`: hands the fit's epoch iterator to its `MidEpochResume`
    (Keras builds the model from it before the first epoch: `_maybe_symbolic_build` on
    TensorFlow, `_symbolic_build` on JAX and torch)."""

    _repro_resume: MidEpochResume | None = None

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> Any:
        resume = self._repro_resume
        result = super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if resume is not None and iterator is not None:
            resume.iterator_built(iterator)
            if resume.exact and self._compile_metrics is not None and not self._compile_metrics.built:
                # TensorFlow builds metrics when it traces the first step: the resumed epoch's
                # metric state is restored before that, so they are built now, from the input's spec
                spec = iterator._distributed_dataset.element_spec
                self._symbolic_build(data_batch=keras.tree.map_structure(
                    lambda s: keras.KerasTensor(tuple(s.shape), s.dtype.name), spec))
        return result

    def _symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> Any:
        resume = self._repro_resume
        result = super()._symbolic_build(iterator=iterator, data_batch=data_batch)
        if resume is not None and iterator is not None:
            resume.iterator_built(iterator)
        return result
