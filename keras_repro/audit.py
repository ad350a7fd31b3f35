"""`audit` and `bisect`: run a stretch of training again and name where it differs.

`audit(build_model, x, y)` trains the first `steps` steps twice in this process
(two builds, `keras.backend.clear_session()` before each) and once more in a fresh
Python process started with another `PYTHONHASHSEED`, fingerprints the state
after every batch (`SeedCallback(seed, every_n_batches=1)`), and names the first
batch, part and variable where two runs differ. It also lists known hazards it
can see without training: unseeded layer RNG outside a `DeterministicModel`,
nondeterministic input pipelines, string hash randomization, GPU kernels without
op determinism.

`bisect(checkpoint, x, y, epoch=K)` starts twice from the `.keras` checkpoint
saved before epoch K and replays that epoch batch by batch, to tell nondeterminism
within a process from a difference of environment.

What they can and cannot find:

* They compare runs bit for bit, so any nondeterminism that shows in the first
  `steps` steps (or in the replayed epoch) is found, with its first batch and
  variable. Nondeterminism that only shows later, or only sometimes (a race that
  two runs happen to win the same way), can be missed: a clean audit is evidence,
  not proof.
* Both runs get the same data. Arrays are cut to their first `steps * batch_size`
  rows and fed with `fit(shuffle=...)` as given; any other input (`tf.data`,
  `PyDataset`, a generator, a torch `DataLoader`) is read once, its first `steps`
  batches kept, and both runs train on those batches. Nondeterminism of the input
  pipeline itself is therefore not observed; the hazards list names the known
  kinds (`_backend.input_hazards`).
* Every run reseeds as `SeedCallback` does (Python, NumPy, the backend at train
  start; layer `SeedGenerator`s at epoch start). Randomness those seeds control is
  reproducible in the audit even if a program without `SeedCallback` would not be;
  the hazards list names the layers concerned.
* `build_model` is called as it is: if it does not seed (or build a
  `DeterministicModel`), two builds start from other weights and the audit says so
  at the initial state.
* `bisect` cannot see anything that happened before the checkpoint, nor a
  difference between machines or library versions: when the epoch replays
  identically, compare the two runs' fingerprint files with `keras-repro diff`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_repro import _backend, child
from keras_repro.callbacks import SeedCallback
from keras_repro.child import CHILD_ENVIRONMENT_VARIABLE, map_leaves
from keras_repro.compare import Divergence, compare_runs
from keras_repro.determinism import kernel_state
from keras_repro.diagnosis import FRESH_PROCESS, REPLAY, training_cause
from keras_repro.errors import ReproError, ReproWarning, warn
from keras_repro.log import FingerprintLog
from keras_repro.model import DeterministicModel, _is_arrays
from keras_repro.seeding import derive_seed, hash_randomization_enabled, seed_everything, validate_seed

logger = logging.getLogger(__name__)

IN_PROCESS = "in-process"
"""The names of the comparisons, as `AuditDivergence.comparison` gives them."""

_RESERVED = ("x", "y", "epochs", "initial_epoch", "batch_size", "steps_per_epoch")


class ScriptError(ReproError, ValueError):
    """A training script given to `keras-repro audit` / `bisect` cannot be used."""


# Reports --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuditDivergence(Divergence):
    """A `Divergence` that also names the comparison that found it.

    Attributes:
        comparison: "in-process" (two builds in this process), "fresh process"
            (this process against a new one) or "replay" (two replays of a
            checkpoint's epoch). The others as in `Divergence`.
    """

    comparison: str = ""

    def __str__(self) -> str:
        return f"{self.comparison}: {Divergence.__str__(self)}" if self.comparison else Divergence.__str__(self)


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison an audit made (or skipped).

    Attributes:
        name: "in-process" or "fresh process".
        description: What was compared, e.g. "two builds in this process".
        divergence: The first difference, or None when identical (or skipped).
        skipped: Why the comparison was not made, or None if it was.
    """

    name: str
    description: str
    divergence: AuditDivergence | None = None
    skipped: str | None = None

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        verdict = "identical" if self.divergence is None else f"differ at {Divergence.__str__(self.divergence)}"
        return f"{self.name} ({self.description}): {verdict}"


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What `audit` found.

    Attributes:
        identical: True when every comparison made found the runs bit-identical.
        divergence: The first `AuditDivergence` (its `.comparison` says which
            comparison found it; in-process first), or None.
        hazards: Known sources of nondeterminism found without training (see
            `find_hazards`); they do not change `identical`.
        steps: The number of training steps compared.
        checks: Every comparison, made or skipped, in order.
        seed: The seed of the `SeedCallback` of every run.
        backend: The Keras backend.

    Example:

    >>> report = audit(build_model, x, y, steps=10)   # doctest: +SKIP
    >>> report.identical, report.divergence           # doctest: +SKIP
    (True, None)
    """

    identical: bool
    divergence: AuditDivergence | None
    hazards: list[str]
    steps: int
    checks: tuple[Check, ...] = ()
    seed: int | None = None
    backend: str = ""

    def __str__(self) -> str:
        if self.identical:
            made = [c for c in self.checks if not c.skipped]
            head = (f"REPRODUCIBLE: the first {self.steps} training steps are bit-identical "
                    f"({', '.join(c.name for c in made)})")
        else:
            head = f"NOT REPRODUCIBLE: {self.divergence}"
        lines = [f"audit ({self.steps} steps, seed {self.seed}, backend {self.backend})", head, ""]
        lines += [f"  {check}" for check in self.checks]
        if self.divergence is not None:
            lines += ["", f"hint: {training_cause(self.divergence, comparison=self.divergence.comparison)}"]
        lines += [""] + _hazard_lines(self.hazards)
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BisectReport:
    """What `bisect` found.

    Attributes:
        identical: True when the two replays of the epoch are bit-identical.
        divergence: The first `AuditDivergence` between the replays
            (`comparison == "replay"`), or None.
        epoch: The replayed epoch (0-based, as Keras numbers it in callbacks).
        checkpoint: The `.keras` file both replays started from.
        steps: The number of batches replayed.
        hazards: Known sources of nondeterminism (see `find_hazards`).
        seed: The seed of the `SeedCallback` of both replays.
    """

    identical: bool
    divergence: AuditDivergence | None
    epoch: int
    checkpoint: str
    steps: int
    hazards: list[str]
    seed: int | None = None

    def __str__(self) -> str:
        lines = [f"bisect epoch {self.epoch} from '{self.checkpoint}' ({self.steps} batches, replayed twice, seed {self.seed})"]
        if self.identical:
            lines += [
                f"IDENTICAL: epoch {self.epoch} replays bit-identically in this process.",
                "The divergence between your runs is not nondeterminism within one process: compare",
                "their environments and fingerprints with `keras-repro diff A.h5 B.h5` (versions,",
                "devices, PYTHONHASHSEED, determinism switches), or run `keras-repro audit` to compare",
                "with a fresh process.",
            ]
        else:
            lines += [f"NOT REPRODUCIBLE: {self.divergence}", "", f"hint: {training_cause(self.divergence, comparison=self.divergence.comparison)}"]
        return "\n".join(lines + [""] + _hazard_lines(self.hazards))


def _hazard_lines(hazards: Sequence[str]) -> list[str]:
    """The hazards section of a report."""
    if not hazards:
        return ["hazards: none found"]
    return ["hazards (known nondeterminism; the audit's reseeding may hide some of it):"] + [f"  - {h}" for h in hazards]


# Hazards --------------------------------------------------------------------------


def find_hazards(model: Any, x: Any = None) -> list[str]:
    """Known sources of nondeterminism visible without training.

    Args:
        model: A built `keras.Model`.
        x: The training input, or None: `tf.data` pipelines and torch
            `DataLoader`s are inspected for unseeded shuffles and
            `deterministic=False`.

    Returns:
        One sentence per hazard, each saying what to do; empty when none is found.

    Example:

    >>> find_hazards(keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5)]))  # doctest: +SKIP
    ["layer 'dropout' (Dropout) draws from a SeedGenerator without an explicit seed ..."]
    """
    hazards = _layer_hazards(model)
    hazards += [f"input: {hazard}" for hazard in _backend.input_hazards(x)]
    if hash_randomization_enabled():
        hazards.append(
            "string hash randomization is on in this process (PYTHONHASHSEED was not set before "
            "Python started), so the order of sets of strings changes between runs: start training "
            "with `keras-repro run -- python ...` or `PYTHONHASHSEED=0 python ...`"
        )
    hazards += _device_hazards()
    return hazards


def _layer_hazards(model: Any) -> list[str]:
    """Layers that draw from a SeedGenerator created without a seed, outside a DeterministicModel."""
    if isinstance(model, DeterministicModel):
        return []
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        generators = list(getattr(layer, "_seed_generators", ()))
        if generators and not _has_explicit_seed(layer, generators):
            found.append(
                f"layer '{layer.name}' ({type(layer).__name__}) draws from a SeedGenerator without an "
                "explicit seed, in a model that is not a DeterministicModel: without kr.SeedCallback "
                "its random numbers depend on the global RNG state when it was created (pass seed=... "
                "to the layer, or use kr.DeterministicModel or kr.SeedCallback)"
            )
    return found


def _has_explicit_seed(layer: Any, generators: Sequence[Any]) -> bool:
    """Whether a layer's random numbers come from a seed it was given."""
    try:
        if layer.get_config().get("seed") is not None:
            return True
    except Exception:  # noqa: BLE001 - a layer without a usable config: judge by its generators
        pass
    return all(getattr(generator, "_initial_seed", None) is not None for generator in generators)


def _device_hazards() -> list[str]:
    """Accelerator kernels without the backend's determinism switch."""
    state = kernel_state()
    if _backend.accelerators() and not state.in_effect:
        return [f"deterministic kernels are not in effect on this accelerator: {state.detail}"]
    return []


# Data -----------------------------------------------------------------------------


class _Replay(keras.utils.PyDataset):
    """The same batches, in the same order, every time."""

    def __init__(self, batches: Sequence[tuple]) -> None:
        super().__init__()
        self._batches = list(batches)

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index: int) -> Any:
        batch = list(self._batches[index])
        while batch and batch[-1] is None:
            batch.pop()
        return tuple(batch)


@dataclasses.dataclass(frozen=True)
class _Feed:
    """The data of every audit run: leading rows of arrays, or the first batches of an input.

    Attributes:
        kind: "arrays" (`parts` is (x, y, sample_weight)) or "batches" (`parts` is
            a tuple of (x, y, sample_weight) batches).
        parts: The data, as NumPy arrays.
        batch_size: Rows per batch (arrays only).
    """

    kind: str
    parts: tuple
    batch_size: int

    def fit(self, model: Any, callbacks: list, fit_kwargs: Mapping[str, Any]) -> None:
        """Trains `model` for one epoch on this data."""
        if self.kind == "arrays":
            x, y, sample_weight = self.parts
            model.fit(x, y, batch_size=self.batch_size, sample_weight=sample_weight, epochs=1,
                      callbacks=callbacks, **fit_kwargs)
        else:
            kwargs = {k: v for k, v in fit_kwargs.items() if k != "shuffle"}
            model.fit(_Replay(self.parts), epochs=1, shuffle=False, callbacks=callbacks, **kwargs)

    def batches(self) -> list[tuple]:
        """The data as a list of (x, y, sample_weight) batches, in order."""
        if self.kind == "batches":
            return [tuple(batch) + (None,) * (3 - len(batch)) for batch in self.parts]
        x, y, sample_weight = self.parts
        rows = len(keras.tree.flatten(x)[0])
        cut = lambda value, start: map_leaves(value, lambda a: a[start : start + self.batch_size])  # noqa: E731
        return [(cut(x, s), cut(y, s), cut(sample_weight, s)) for s in range(0, rows, self.batch_size)]


def _prepare_feed(x: Any, y: Any, steps: int, batch_size: int, sample_weight: Any) -> _Feed:
    """The data of `steps` steps: arrays cut to `steps * batch_size` rows, or the first batches."""
    if _is_arrays(x):
        rows = steps * batch_size
        cut = lambda value: map_leaves(value, lambda a: _backend.data_to_numpy(a)[:rows])  # noqa: E731
        parts = (cut(x), cut(y), cut(sample_weight))
        if not min((len(leaf) for leaf in keras.tree.flatten(parts[0])), default=0):
            raise ValueError(f"`x` has no rows to train on. Received: x with shape {getattr(x, 'shape', '?')}")
        return _Feed("arrays", parts, batch_size)
    if y is not None or sample_weight is not None:
        raise ValueError(
            "When `x` is a dataset, generator or PyDataset it must yield the targets itself; pass "
            f"y=None and no sample_weight. Received: y={type(y).__name__}"
        )
    batches = tuple(
        tuple(map_leaves(part, _backend.data_to_numpy) for part in keras.utils.unpack_x_y_sample_weight(batch))
        for batch in _first_batches(x, steps)
    )
    if not batches:
        raise ValueError(f"`x` yielded no batches; pass an input with at least one batch. Received: x={x!r}")
    return _Feed("batches", batches, batch_size)


def _first_batches(x: Any, steps: int) -> list:
    """The first `steps` batches of a dataset, PyDataset, generator or DataLoader."""
    if isinstance(x, keras.utils.PyDataset):
        count = steps if x.num_batches is None else min(steps, x.num_batches)
        return [x[i] for i in range(count)]
    try:
        iterator = iter(x)
    except TypeError:
        raise ValueError(
            "`x` must be arrays (NumPy arrays, tensors, or lists/dicts of them), a tf.data.Dataset, a "
            f"keras.utils.PyDataset, a torch DataLoader or a generator. Received: x of type {type(x).__name__}"
        ) from None
    return list(itertools.islice(iterator, steps))


# One run --------------------------------------------------------------------------


def _check_positive(name: str, value: Any) -> int:
    """Returns `value` if it is a positive int, else raises a clear ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


def validate_options(batch_size: int, seed: int, steps: int | None = None) -> None:
    """Raises ValueError unless `batch_size` (and `steps`, if given) are positive ints and
    `seed` is in [0, 2**32 - 1]."""
    if steps is not None:
        _check_positive("steps", steps)
    _check_positive("batch_size", batch_size)
    validate_seed(seed)


def _split_fit_kwargs(fit_kwargs: Mapping[str, Any], function: str) -> tuple[dict, list]:
    """(fit arguments, user callbacks), after refusing those the audit sets itself."""
    reserved = sorted(set(fit_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"{function}() sets {', '.join(reserved)} itself; remove them from its keyword arguments. "
            f"Received: {', '.join(f'{k}={fit_kwargs[k]!r}' for k in reserved)}"
        )
    kwargs = dict(fit_kwargs)
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if any(isinstance(c, SeedCallback) for c in callbacks):
        raise ValueError(
            f"{function}() adds its own SeedCallback(seed, every_n_batches=1); remove yours from "
            "`callbacks` and pass its seed as seed=... Received: callbacks with a SeedCallback"
        )
    kwargs.setdefault("verbose", 0)
    return kwargs, callbacks


def _check_model(model: Any) -> None:
    """Raises a clear error unless build_model returned a compiled keras.Model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"build_model() must return a keras.Model. Received: {type(model).__name__}")
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "build_model() must return a compiled model (call model.compile(optimizer=..., loss=...) "
            f"before returning it). Received: model '{model.name}' without an optimizer"
        )


def _run_once(build_model: Callable[[], Any], feed: _Feed, seed: int, fit_kwargs: Mapping[str, Any],
              callbacks: Sequence[Any]) -> tuple[FingerprintLog, Any]:
    """Clears the session, builds, trains one epoch of `feed` with batch fingerprints."""
    keras.backend.clear_session()
    model = build_model()
    _check_model(model)
    callback = SeedCallback(seed, every_n_batches=1, log_key=None)
    feed.fit(model, [callback, *callbacks], fit_kwargs)
    return callback.log, model


def _named(divergence: Divergence | None, comparison: str) -> AuditDivergence | None:
    """`divergence` as an `AuditDivergence` naming the comparison."""
    if divergence is None:
        return None
    values = {field.name: getattr(divergence, field.name) for field in dataclasses.fields(Divergence)}
    return AuditDivergence(**values, comparison=comparison)


def _fresh_process_check(build_model: Callable[[], Any], feed: _Feed, seed: int, fit_arguments: tuple[bytes | None, str],
                         reference: FingerprintLog) -> Check:
    """Compares `reference` with a fresh process's run, or says why it cannot."""
    hash_seed = child.other_hash_seed()
    description = f"this process against a fresh one with PYTHONHASHSEED={hash_seed}"
    target, reason = child.locate(build_model)
    fit_blob, fit_reason = fit_arguments
    if target is None or fit_blob is None:
        return Check(FRESH_PROCESS, description, skipped=reason or fit_reason)
    payload = {"target": target, "kind": feed.kind, "batch_size": feed.batch_size, "seed": seed, "fit": fit_blob}
    other = child.run("keras_repro.audit:_child_task", payload, feed.parts, "the audit", hash_seed)
    return Check(FRESH_PROCESS, description, _named(compare_runs(reference, other).first_divergence, FRESH_PROCESS))


def _child_task(payload: Mapping[str, Any], parts: Any) -> FingerprintLog:
    """The fresh process of an audit: imports build_model, trains the same steps."""
    build_model = child.load_target(payload["target"])
    feed = _Feed(payload["kind"], parts, payload["batch_size"])
    fit_kwargs, callbacks = pickle.loads(payload["fit"])  # after sys.path is set: it may hold the user's classes
    log, _ = _run_once(build_model, feed, payload["seed"], fit_kwargs, callbacks)
    return log


# Public API -----------------------------------------------------------------------


def audit(
    build_model: Callable[[], Any],
    x: Any,
    y: Any = None,
    *,
    steps: int = 20,
    batch_size: int = 32,
    seed: int = 7,
    fresh_process: bool = True,
    **fit_kwargs: Any,
) -> AuditReport:
    """Trains the first `steps` steps again and again, and names where runs differ.

    Runs `build_model()` and one epoch of `fit` on the first `steps` batches with
    `SeedCallback(seed, every_n_batches=1)`: twice in this process
    (`keras.backend.clear_session()` before each build) and, with `fresh_process`,
    once in a new Python process with another `PYTHONHASHSEED`, which imports
    `build_model` by its qualified name (or its module's file) and gets the data
    through a temporary `.npz` file. The first run is the reference of both
    comparisons. See the module docstring for what this can and cannot find.

    Args:
        build_model: A function of no arguments returning a compiled `keras.Model`.
            For the fresh process it must be defined at module level in an
            importable module or a script file (a script run as `__main__` is
            imported again: keep its training under `if __name__ == "__main__":`).
        x: The training input: arrays (or lists/dicts of them), or a `tf.data`
            dataset, `PyDataset`, generator or torch `DataLoader` of batches.
        y: The targets for array inputs, or None.
        steps: Training steps to compare.
        batch_size: Rows per step for array inputs.
        seed: The `SeedCallback` seed of every run.
        fresh_process: Also compare with a fresh process (skipped with a
            `ReproWarning` when build_model cannot be imported there).
        **fit_kwargs: More `fit` arguments (`shuffle`, `callbacks`,
            `sample_weight`, `class_weight`...). `epochs`, `initial_epoch`,
            `batch_size` and `steps_per_epoch` are set by the audit. `shuffle`
            applies to arrays; the batches of other inputs are replayed in the
            order they were read. For the fresh process they must pickle.

    Returns:
        An `AuditReport`; `print(report)` for a readable summary.

    Raises:
        ValueError: On bad arguments, or if build_model returns an uncompiled model.
        ReproError: If the fresh-process run fails or times out.

    Example:

    >>> report = kr.audit(build_model, x, y, steps=20)   # doctest: +SKIP
    >>> print(report)                                    # doctest: +SKIP
    audit (20 steps, seed 7, backend tensorflow)
    REPRODUCIBLE: the first 20 training steps are bit-identical (in-process, fresh process)
    ...
    """
    if os.environ.get(CHILD_ENVIRONMENT_VARIABLE):
        raise ReproError(
            "audit() was called while the audit's fresh process imported build_model's module: put the "
            "module's top-level code under `if __name__ == \"__main__\":`. Received: a nested audit() call"
        )
    if not callable(build_model):
        raise TypeError(f"`build_model` must be a function returning a compiled keras.Model. Received: build_model={build_model!r}")
    validate_options(batch_size, seed, steps=steps)
    steps, batch_size, seed = int(steps), int(batch_size), int(seed)
    kwargs, callbacks = _split_fit_kwargs(fit_kwargs, "audit")
    feed = _prepare_feed(x, y, steps, batch_size, kwargs.pop("sample_weight", None))
    fit_arguments = child.pickled((kwargs, callbacks), "fit arguments") if fresh_process else (None, "")
    first, model = _run_once(build_model, feed, seed, kwargs, callbacks)
    hazards = find_hazards(model, x)
    del model
    second, _ = _run_once(build_model, feed, seed, kwargs, callbacks)
    checks = [Check(IN_PROCESS, "two builds in this process", _named(compare_runs(first, second).first_divergence, IN_PROCESS))]
    if fresh_process:
        check = _fresh_process_check(build_model, feed, seed, fit_arguments, first)
        if check.skipped:
            warn(f"audit: the fresh-process comparison was skipped: {check.skipped}.", ReproWarning)
        checks.append(check)
    else:
        checks.append(Check(FRESH_PROCESS, "", skipped="not requested: fresh_process=False"))
    divergence = next((c.divergence for c in checks if c.divergence is not None), None)
    report = AuditReport(divergence is None, divergence, hazards, len(first.batches), tuple(checks), seed, _backend.name())
    logger.info("%s", report)
    return report


def validate_checkpoint(checkpoint: str | os.PathLike) -> str:
    """Returns the checkpoint's path if it is an existing `.keras` file, else raises."""
    path = os.fspath(checkpoint)
    if not path.endswith(".keras"):
        raise ValueError(f"`checkpoint` must be a `.keras` file saved by model.save(). Received: checkpoint={path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist; pass the .keras file saved at the end of the "
                                f"epoch before the one that diverged. Received: checkpoint={path!r}")
    return path


def bisect(
    checkpoint: str | os.PathLike,
    x: Any,
    y: Any = None,
    *,
    epoch: int,
    seed: int = 7,
    batch_size: int = 32,
    **fit_kwargs: Any,
) -> BisectReport:
    """Replays one epoch twice from a checkpoint and names the first batch where the replays differ.

    For a run whose epoch `epoch` diverged while epoch `epoch - 1` matched: loads
    the `.keras` checkpoint saved at the end of epoch `epoch - 1` (or before
    training, for epoch 0) twice with `keras.models.load_model`, each time after
    `keras.backend.clear_session()` and reseeding every global RNG from (seed,
    epoch), and replays the epoch with `fit(initial_epoch=epoch, epochs=epoch + 1)`
    and `SeedCallback(seed, every_n_batches=1)`.

    A divergence names nondeterminism within this process (a step, a layer, a
    kernel), by batch and variable. Identical replays mean the runs' divergence
    came from elsewhere: another environment (compare the fingerprint files with
    `keras-repro diff`), another process state (`keras-repro audit`), or state that
    the checkpoint does not hold (the original run's RNG and data-order state
    before the checkpoint; `DeterministicModel` and `SeedCallback` derive both
    from (seed, epoch), so with them the replay is the original epoch).

    Args:
        checkpoint: The `.keras` file. Custom layers must be registered
            (`keras.saving.register_keras_serializable`) or imported first.
        x: The training input, as given to the original `fit`.
        y: The targets, or None.
        epoch: The 0-based epoch to replay (as Keras numbers it in callbacks).
        seed: The `SeedCallback` seed (the original run's, to replay its epoch).
        batch_size: Rows per batch for array inputs.
        **fit_kwargs: More `fit` arguments, as in the original run (`shuffle`,
            `validation_split`...).

    Returns:
        A `BisectReport`.

    Example:

    >>> report = kr.bisect("epoch_2.keras", x, y, epoch=3)   # doctest: +SKIP
    >>> print(report.divergence)                             # doctest: +SKIP
    replay: epoch 3, batch 17: non-trainable weights differ, first at 'noisy/drift' (values differ)
    """
    path = validate_checkpoint(checkpoint)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"`epoch` must be an int >= 0 (the epoch to replay, 0-based). Received: epoch={epoch!r}")
    epoch = int(epoch)
    validate_options(batch_size, seed)
    seed = int(seed)
    kwargs, callbacks = _split_fit_kwargs(fit_kwargs, "bisect")
    logs: list[FingerprintLog] = []
    hazards: list[str] = []
    for replay in range(2):
        keras.backend.clear_session()
        seed_everything(derive_seed(seed, "bisect", epoch))
        model = keras.models.load_model(path)
        if replay == 0:
            hazards = find_hazards(model, x)
        callback = SeedCallback(seed, every_n_batches=1, log_key=None)
        model.fit(x, y, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch,
                  callbacks=[callback, *callbacks], **kwargs)
        logs.append(callback.log)
        del model
    divergence = _named(compare_runs(*logs).first_divergence, REPLAY)
    report = BisectReport(divergence is None, divergence, epoch, path, len(logs[0].batches), hazards, seed)
    logger.info("%s", report)
    return report


# Scripts (the command line) ------------------------------------------------------------


def load_script(path: str | os.PathLike, required: Sequence[str]) -> Any:
    """Imports a training script by path and checks it defines the functions `required`.

    Args:
        path: The `.py` file.
        required: Names of functions it must define, e.g. ("build_model", "data").

    Returns:
        The module.

    Raises:
        ScriptError: If the file is missing, cannot be imported, or lacks a function.
    """
    path = os.fspath(path)
    wanted = " and ".join(f"{name}()" for name in required)
    if not os.path.isfile(path):
        raise ScriptError(f"script '{path}' does not exist; pass a Python file that defines {wanted}. Received: script={path!r}")
    try:
        module = child.import_path(path)
    except Exception as error:  # noqa: BLE001 - any import failure is a bad script
        raise ScriptError(f"cannot import script '{path}': {type(error).__name__}: {error}") from error
    missing = [name for name in required if not callable(getattr(module, name, None))]
    if missing:
        raise ScriptError(
            f"script '{path}' must define {wanted}; it has no {' or '.join(f'{m}()' for m in missing)}. "
            f"Received: script={path!r}"
        )
    return module


def script_data(module: Any) -> tuple[Any, Any]:
    """(x, y) from a script's `data()`: a pair, or a dataset / array alone (y None)."""
    try:
        data = module.data()
    except Exception as error:  # noqa: BLE001 - a failing data() is bad input for the CLI
        raise ScriptError(f"data() of script '{module.__file__}' raised {type(error).__name__}: {error}") from error
    if data is None:
        raise ScriptError(f"data() of script '{module.__file__}' must return (x, y). Received: None")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    return data, None


def script_fit_kwargs(module: Any) -> dict[str, Any]:
    """A script's optional `FIT_KWARGS` dict (more `fit` arguments, e.g. shuffle)."""
    value = getattr(module, "FIT_KWARGS", None) or {}
    if not isinstance(value, Mapping):
        raise ScriptError(f"FIT_KWARGS of script '{module.__file__}' must be a dict. Received: {type(value).__name__}")
    return dict(value)
