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

import logging
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from keras_repro import _backend
from keras_repro.callbacks import SeedCallback
from keras_repro.errors import ReproWarning, warn
from keras_repro.fingerprinting.compare import compare_runs
from keras_repro.fingerprinting.diagnosis import FRESH_PROCESS, REPLAY
from keras_repro.fit.context import DEFAULT_SEED, callback_seed
from keras_repro.seeding import seed_everything, seed_for
from keras_repro.store.log import FingerprintLog
from keras_repro.tools import child, nesting
from keras_repro.tools.audit.hazards import find_hazards
from keras_repro.tools.audit.layers import locate_layer, locate_layer_from_checkpoint
from keras_repro.tools.audit.reports import (
    IN_PROCESS,
    AuditReport,
    BisectReport,
    Check,
    named,
)
from keras_repro.tools.audit.steps import (
    Feed,
    prepare_feed,
    run_once,
    split_fit_kwargs,
    validate_options,
)

logger = logging.getLogger(__name__)


def _fresh_process_check(build_model: Callable[[], Any], feed: Feed, seed: int | None, fit_arguments: tuple[bytes | None, str],
                         reference: FingerprintLog) -> Check:
    """Compares `reference` with a fresh process's run, or says why it cannot."""
    hash_seed = child.other_hash_seed()
    description = f"this process against a fresh one with PYTHONHASHSEED={hash_seed}"
    target, reason = child.locate(build_model)
    fit_blob, fit_reason = fit_arguments
    if target is None or fit_blob is None:
        return Check(FRESH_PROCESS, description, skipped=reason or fit_reason)
    payload = {"target": target, "kind": feed.kind, "batch_size": feed.batch_size, "seed": seed, "fit": fit_blob}
    other = child.run("keras_repro.tools.audit.runs:_child_task", payload, feed.parts, "the audit", hash_seed)
    return Check(FRESH_PROCESS, description, named(compare_runs(reference, other).first_divergence, FRESH_PROCESS))


def _child_task(payload: Mapping[str, Any], parts: Any) -> FingerprintLog:
    """The fresh process of an audit: imports build_model, trains the same steps."""
    build_model = child.load_target(payload["target"])
    feed = Feed(payload["kind"], parts, payload["batch_size"])
    fit_kwargs, callbacks = pickle.loads(payload["fit"])  # after sys.path is set: it may hold the user's classes
    log, _ = run_once(build_model, feed, payload["seed"], fit_kwargs, callbacks)
    return log


# Public API -----------------------------------------------------------------------


def audit(
    build_model: Callable[[], Any],
    x: Any,
    y: Any = None,
    *,
    steps: int = 20,
    batch_size: int = 32,
    seed: int | None = None,
    fresh_process: bool = True,
    find_layer: bool = True,
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
        seed: The `SeedCallback` seed of every run: None (default) takes a
            `DeterministicModel`'s own seed, and 7 for another model.
        fresh_process: Also compare with a fresh process (skipped with a
            `ReproWarning` when build_model cannot be imported there).
        find_layer: When runs differ, trace both sides of the first comparison
            that differed layer by layer up to that step (`kr.trace_layers`, a
            fresh process again for the fresh-process comparison) and name the
            first layer, gradient or update that differs (`report.layer`).
            Array inputs only.
        **fit_kwargs: More `fit` arguments (`shuffle`, `callbacks`,
            `sample_weight`, `class_weight`...). `epochs`, `initial_epoch`,
            `batch_size` and `steps_per_epoch` are set by the audit. `shuffle`
            applies to arrays; the batches of other inputs are replayed in the
            order they were read. For the fresh process they must pickle.

    Returns:
        An `AuditReport`; `print(report)` for a readable summary.

    Raises:
        ValueError: On bad arguments, or if build_model returns an uncompiled model.
        MissingMainGuardError: If called inside a fresh process of keras_repro (a script
            that runs the audit at import, without `if __name__ == "__main__":`), there
            and again in its parent.
        ReproError: If the fresh-process run fails or times out.

    Example:

    >>> report = kr.audit(build_model, x, y, steps=20)   # doctest: +SKIP
    >>> print(report)                                    # doctest: +SKIP
    audit (20 steps, seed 7, backend tensorflow)
    REPRODUCIBLE: the first 20 training steps are bit-identical (in-process, fresh process)
    ...
    """
    nesting.refuse_nested("audit()")
    if not callable(build_model):
        raise TypeError(f"`build_model` must be a function returning a compiled keras.Model. Received: build_model={build_model!r}")
    validate_options(batch_size, seed, steps=steps)
    steps, batch_size = int(steps), int(batch_size)
    kwargs, callbacks = split_fit_kwargs(fit_kwargs, "audit")
    feed = prepare_feed(x, y, steps, batch_size, kwargs.pop("sample_weight", None))
    fit_arguments = child.pickled((kwargs, callbacks), "fit arguments") if fresh_process else (None, "")
    first, model = run_once(build_model, feed, seed, kwargs, callbacks)
    hazards = find_hazards(model, x)
    del model
    second, _ = run_once(build_model, feed, seed, kwargs, callbacks)
    checks = [Check(IN_PROCESS, "two builds in this process", named(compare_runs(first, second).first_divergence, IN_PROCESS))]
    if fresh_process:
        check = _fresh_process_check(build_model, feed, seed, fit_arguments, first)
        if check.skipped:
            warn(f"audit: the fresh-process comparison was skipped: {check.skipped}.", ReproWarning)
        checks.append(check)
    else:
        checks.append(Check(FRESH_PROCESS, "", skipped="not requested: fresh_process=False"))
    divergence = next((c.divergence for c in checks if c.divergence is not None), None)
    differing = next((c for c in checks if c.divergence is not None), None)
    layer = locate_layer(build_model, feed, seed, differing) if differing is not None and find_layer else None
    report = AuditReport(divergence is None, divergence, hazards, len(first.batches), tuple(checks), first.seed,
                         _backend.name(), layer)
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
    seed: int | None = None,
    batch_size: int = 32,
    **fit_kwargs: Any,
) -> BisectReport:
    """Replays one epoch twice from a checkpoint and names the first batch where the replays differ,
    then the first layer, gradient or update (two layer traces from the checkpoint up to that
    batch, array inputs: `report.layer`).

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
        seed: The `SeedCallback` seed (the original run's, to replay its epoch): None
            (default) takes a `DeterministicModel`'s own seed, and 7 for another model.
        batch_size: Rows per batch for array inputs.
        **fit_kwargs: More `fit` arguments, as in the original run (`shuffle`,
            `validation_split`...).

    Returns:
        A `BisectReport`.

    Raises:
        MissingMainGuardError: If called inside a fresh process of keras_repro (`audit`'s,
            `assert_resumable`'s): a script that runs it at import lacks
            `if __name__ == "__main__":`.

    Example:

    >>> report = kr.bisect("epoch_2.keras", x, y, epoch=3)   # doctest: +SKIP
    >>> print(report.divergence)                             # doctest: +SKIP
    replay: epoch 3, batch 17: non-trainable weights differ, first at 'noisy/drift' (values differ)
    """
    nesting.refuse_nested("bisect()")
    path = validate_checkpoint(checkpoint)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"`epoch` must be an int >= 0 (the epoch to replay, 0-based). Received: epoch={epoch!r}")
    epoch = int(epoch)
    validate_options(batch_size, seed)
    kwargs, callbacks = split_fit_kwargs(fit_kwargs, "bisect")
    logs: list[FingerprintLog] = []
    hazards: list[str] = []
    for replay in range(2):
        keras.backend.clear_session()
        seed_everything(seed_for(DEFAULT_SEED if seed is None else seed, "bisect", epoch))
        model = keras.models.load_model(path)
        if replay == 0:
            hazards = find_hazards(model, x)
        callback = SeedCallback(callback_seed(model, seed), every_n_batches=1, log_key=None)
        model.fit(x, y, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch,
                  callbacks=[callback, *callbacks], **kwargs)
        logs.append(callback.log)
        del model
    divergence = named(compare_runs(*logs).first_divergence, REPLAY)
    layer = locate_layer_from_checkpoint(
        path, x, y, kwargs.get("sample_weight"), batch_size, divergence,
        lambda: seed_everything(seed_for(DEFAULT_SEED if seed is None else seed, "bisect", epoch)))
    report = BisectReport(divergence is None, divergence, epoch, path, len(logs[0].batches), hazards, logs[0].seed, layer)
    logger.info("%s", report)
    return report
