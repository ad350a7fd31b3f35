"""Why two runs differ: the cause named with a divergence, from what actually differs.

`SeedCallback` (the `FingerprintMismatch` message), `keras-repro diff`, `kr.testing` and
`audit` name one cause. Where the runs part (epoch, part, variable) says *where*; the cause
comes from comparing what both runs recorded, in this order, earlier evidence first since
it explains what follows (`rank_causes`):

1. Configuration: the callback's seed; the fit's configuration recorded in the reference
   (`keras_repro.fingerprinting.configuration`: the model's seed, the input, batch size, shuffle, validation
   split, steps per epoch, model class and structure naming the layer, optimizer and its
   hyperparameters, loss...); then the backend and environment (not for a difference in the
   data part, which the environment does not change).
2. Data: the fingerprint's data part (the content of the array inputs, their order, the
   validation split, then the batches the fit fed and validated on: `keras_repro.fit.fed_data`);
   for an input keras_repro does not order (a dataset, a generator, a plain `keras.Model`'s
   input) in a resumed or continued fit whose batches were not checksummed, a pipeline that
   restarted.
3. An optimizer hyperparameter changed during training: the learning rate differs where
   the runs part (a callback or schedule changed it: `ReduceLROnPlateau`'s state is not
   restored on resume).
4. Layer RNG state (the fingerprint's rng part).
5. The state before the first step: initial weights, optimizer state.
6. The training step itself, named only when the seed, configuration, environment, data
   and layer RNG state were all compared and agree; otherwise "not determined", with what
   was ruled out and what could not be compared.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_repro.fingerprinting import configuration
from keras_repro.fingerprinting.compare import Divergence, comparable_records
from keras_repro.fingerprinting.digests import CONTENT_PREFIX, FED_PREFIX, VALIDATED_PREFIX, Fingerprint, VariableDigest
from keras_repro.fingerprinting.evidence import Evidence, environment_changes, evidence

MAX_LISTED = 3
"""Differences (of the configuration, of the environment) named in one cause."""

FRESH_PROCESS, REPLAY = "fresh process", "replay"
"""Comparisons of `audit` and `bisect` whose divergences have a cause of their own."""

RANKS = ("configuration", "data", "hyperparameter", "rng", "initial state", "step")
"""The kinds of cause, in the order they are ranked (see the module docstring)."""

NONDETERMINISTIC_STEP = (
    "look for randomness no seed controls (fresh entropy such as np.random.default_rng(), time, "
    "os.urandom) in layers, losses and callbacks, and for nondeterministic kernels (kr.enable_determinism())"
)


@dataclasses.dataclass(frozen=True)
class Cause:
    """One explanation of a divergence: its `kind` (one of `RANKS`) and its `text`, with what to do."""

    kind: str
    text: str


def likely_cause(divergence: Divergence, reference: Any = None, run: Any = None, *, deterministic_model: bool = True) -> str:
    """The cause of a divergence, from what the two recorded runs show (`rank_causes`).

    Args:
        divergence: Where the runs first differ.
        reference: The reference run (a `FingerprintLog`), or None when not at hand.
        run: The other run (a `FingerprintLog`), or None.
        deterministic_model: Whether the run's model is a `DeterministicModel`.

    Example:

    >>> likely_cause(divergence, kr.load_fingerprints("a.h5"), kr.load_fingerprints("b.h5"))  # doctest: +SKIP
    "the configuration differs from the reference's: batch size: 16 in the reference, 32 in this run"
    """
    return rank_causes(divergence, evidence(divergence, reference, run, deterministic_model))[0].text


def rank_causes(divergence: Divergence, found: Evidence) -> list[Cause]:
    """Every cause the evidence supports, most likely first, in `RANKS` order; the last one
    is always about the training step: nondeterministic, or "not determined".

    Example:

    >>> rank_causes(divergence, Evidence(reference_seed=8, seed=7))[0].text  # doctest: +SKIP
    'the reference was recorded with seed 8; this run uses seed 7'
    """
    special = _stage_cause(divergence)
    if special is not None:
        return [Cause("step", special)]
    return [*_configuration_causes(divergence, found), *_data_causes(divergence, found),
            *_hyperparameter_causes(divergence, found), *_rng_causes(divergence),
            *_initial_causes(divergence, found.deterministic_model), _step_cause(divergence, found)]


def _initial_causes(divergence: Divergence, deterministic_model: bool) -> list[Cause]:
    """The state before the first step, where it differs."""
    text = _initial_text(divergence, deterministic_model, "") if divergence.stage == "initial" else None
    return [Cause("initial state", text)] if text else []


# 1. Configuration ---------------------------------------------------------------------------

def _configuration_causes(divergence: Divergence, found: Evidence) -> list[Cause]:
    """The seed, the recorded configuration, then the backend and environment."""
    causes = []
    if found.reference_seed is not None and found.seed is not None and found.reference_seed != found.seed:
        causes.append(Cause("configuration", f"the reference was recorded with seed {found.reference_seed}; "
                                             f"this run uses seed {found.seed}"))
    if found.reference_config is not None and found.config is not None:
        changes = configuration.differences(found.reference_config, found.config,
                                            learning_rate=found.resumed_at is None)
        if changes and changes[0][0] == "model.seed":
            before, after = found.reference_config.get("model.seed"), found.config.get("model.seed")
            causes.append(Cause("configuration", (
                f"the reference's model was created with seed {before} (kr.DeterministicModel(..., seed={before})); "
                f"this run's with seed {after}" if "none" not in (before, after) else changes[0][1])))
            changes = changes[1:]
        if changes:
            listed = "; ".join(text for _, text in changes[:MAX_LISTED])
            more = f" (and {len(changes) - MAX_LISTED} more)" if len(changes) > MAX_LISTED else ""
            causes.append(Cause("configuration", f"the configuration differs from the reference's: {listed}{more}"))
    if divergence.part != "data" and found.reference_environment and found.environment:
        changes = environment_changes(found.reference_environment, found.environment)
        if "backend" in changes:
            before, after = changes["backend"]
            causes.append(Cause("configuration", f"the reference was recorded with the {before} backend; this run uses {after}"))
        elif changes:
            listed = "; ".join(f"{key}: {'(unset)' if a is None else a} -> {'(unset)' if b is None else b}"
                               for key, (a, b) in list(changes.items())[:MAX_LISTED])
            more = f" (and {len(changes) - MAX_LISTED} more)" if len(changes) > MAX_LISTED else ""
            causes.append(Cause("configuration", f"the reference was recorded in another environment: {listed}{more}"))
    return causes


# 2. Data ------------------------------------------------------------------------------------

def _data_causes(divergence: Divergence, found: Evidence) -> list[Cause]:
    """The data part where it differs; an input keras_repro does not order, in a resumed fit."""
    if divergence.part == "data":
        return [Cause("data", _data_part_text(divergence, found))]
    resumed = found.resumed_at
    ordered_by = found.ordered_by
    if _fed_in_both(found):  # the batches fed were compared, and agree
        return []
    if (resumed is None or ordered_by in (None, configuration.ORDERED_BY_KERAS_REPRO)
            or divergence.stage not in ("epoch", "batch") or (divergence.epoch or 0) < resumed):
        return []
    if ordered_by == configuration.ORDERED_BY_KERAS:
        return [Cause("data", (
            f"one run resumed or continued at epoch {resumed}, and the input is ordered by Keras (the model is not "
            "a DeterministicModel): a resumed fit(shuffle=True) may visit the rows in another order than the "
            "straight run (it does on TensorFlow), and an input pipeline starts again from its first element. "
            "Use kr.DeterministicModel, or shuffle=False"))]
    kind = (found.config or {}).get("input", "input")
    return [Cause("data", (
        f"the input pipeline may have restarted: one run resumed or continued at epoch {resumed}, and its input "
        f"(a {kind}) is neither ordered nor fingerprinted by keras_repro, so it starts again from its first "
        "element (or its first shuffle) where the straight run went on (a .repeat()ed dataset with "
        "steps_per_epoch, a reshuffling shuffle). Skip what the earlier epochs consumed (dataset.skip(...)), "
        "or pass arrays to a kr.DeterministicModel, which orders them by (seed, epoch)"))]


def _fed_in_both(found: Evidence) -> bool:
    """Whether both fingerprints compared hold the checksums of the batches fed."""
    return found.expected is not None and found.current is not None and all(
        any(r.path.startswith(FED_PREFIX) for r in fp.part("data")) for fp in (found.expected, found.current))


def fed_text(divergence: Divergence, found: Evidence) -> str:
    """The input fed (or validated on) other batches than the reference's: where, which leaf,
    and what can make an input do that."""
    variable = divergence.variable or ""
    validated = variable.startswith(VALIDATED_PREFIX)
    leaf = variable.split("/", 1)[-1]
    if validated:
        return (f"the validation data differ at {divergence.where()} ({leaf}): the validation input gave other batches "
                "than the reference's. Check the data it reads and how it is split, or record a new reference")
    hint = "" if divergence.stage == "batch" else "; SeedCallback(every_n_batches=1) names the first batch"
    text = f"the input pipeline fed different data at {divergence.where()} ({leaf}{hint})"
    kind = (found.config or {}).get("input", "input")
    resumed = found.resumed_at
    if found.ordered_by == configuration.ORDERED_BY_KERAS_REPRO:
        return (f"{text}, though the arrays and their order agree with the reference's: the batches were made from "
                "them differently (class_weight, or another Keras or keras_repro version: see the environment)")
    if found.ordered_by == configuration.ORDERED_BY_KERAS:
        return (f"{text}: Keras orders the input of a model that is not a DeterministicModel, and a fit(shuffle=True) "
                "visits the rows in an order no seed fixes on every backend (nor in a resumed fit). Use "
                "kr.DeterministicModel, or shuffle=False")
    if resumed is not None and (divergence.epoch or 0) >= resumed:
        return (f"{text}: one run resumed or continued at epoch {resumed}, and its input (a {kind}) starts again from "
                "its first element (or its first shuffle) where the straight run went on. Skip what the earlier "
                "epochs consumed (dataset.skip(...)), or pass arrays to a kr.DeterministicModel, which orders them "
                "by (seed, epoch)")
    return (f"{text}: the input (a {kind}) gave other batches. Seed its shuffle and its random augmentation "
            "(kr.seed_everything(seed) before building the pipeline), read the same files in a fixed order "
            "(sorted file lists), or record a new reference if the data changed")


def _data_part_text(divergence: Divergence, found: Evidence) -> str:
    """What differs in the data part, and why it can."""
    variable = divergence.variable or ""
    if variable.startswith((FED_PREFIX, VALIDATED_PREFIX)):
        return fed_text(divergence, found)
    if variable.startswith(CONTENT_PREFIX):
        name = variable[len(CONTENT_PREFIX):]
        before, after = _record(found.expected, variable), _record(found.current, variable)
        if before is not None and after is not None and (before.shape, before.dtype) != (after.shape, after.dtype):
            how = f"is {before.dtype} {before.shape} in the reference, {after.dtype} {after.shape} in this run"
        else:
            sums = (f"; sum {configuration.float_text(before.stats[0])} in the reference, "
                    f"{configuration.float_text(after.stats[0])} in this run"
                    if before is not None and after is not None and before.stats and after.stats else "")
            how = f"holds other values than in the reference (same dtype and shape{sums})"
        return f"the training data differ: {name} {how}. Train on the same data, or record a new reference"
    if divergence.reference_digest is None and divergence.other_digest is None:  # a record only one run has
        return (f"the data records differ ({divergence.reason}): one run passes arrays to a kr.DeterministicModel, "
                "or holds out a validation split, and the other not")
    if variable == "validation_split":
        return ("the validation split differs: other rows are held out for validation (validation_split, "
                "validation_split_mode, the model's seed or the number of rows differ)")
    if found.ordered_by == configuration.ORDERED_BY_KERAS_REPRO:
        settings = ("the data order differs: it follows from the model's seed, shuffle, batch size, validation split "
                    "and number of rows")
        if found.reference_config is None:
            return (f"{settings}, and one of them differs (the reference was recorded by an earlier keras_repro, which "
                    "did not record them)")
        if configuration.differences(found.reference_config, found.config or {}):
            return f"{settings}, and the configuration differs (above)"
        return (f"{settings}, which agree with the reference's: not determined (was the reference recorded by another "
                f"keras_repro? {found.reference_environment.get('keras_repro', 'unknown')} -> "
                f"{found.environment.get('keras_repro', 'unknown')})")
    return ("the data order differs: pass arrays to a kr.DeterministicModel (which orders them by seed and "
            "epoch), or seed the input pipeline")


def _record(fingerprint: Fingerprint | None, path: str) -> VariableDigest | None:
    """The record of `path` in a fingerprint, or None."""
    return None if fingerprint is None else next((r for r in fingerprint.records if r.path == path), None)


# 3. Hyperparameters, 4. RNG, 5. the initial state --------------------------------------------

def _learning_rates(fingerprint: Fingerprint | None) -> list[VariableDigest]:
    """The optimizer's learning-rate variables in a fingerprint."""
    if fingerprint is None:
        return []
    return [r for r in fingerprint.part("optimizer") if r.path.rsplit("/", 1)[-1] == "learning_rate"]


def _hyperparameter_causes(divergence: Divergence, found: Evidence) -> list[Cause]:
    """The learning rate, where it differs in the two states the divergence compared."""
    for before, after in zip(_learning_rates(found.expected), _learning_rates(found.current)):
        if before.digest == after.digest:
            continue
        values = ""
        if before.stats and after.stats:
            values = (f" ({configuration.float_text(before.stats[0])} in the reference, "
                      f"{configuration.float_text(after.stats[0])} in this run)")
        resumed, name = found.resumed_at, f"the learning rate '{before.path}'"
        if divergence.stage == "initial" and resumed is None:
            return [Cause("hyperparameter", f"{name} differs before the first step{values}: compile the optimizer "
                                            "with the same learning rate")]
        if divergence.stage == "initial":
            return [Cause("hyperparameter", (
                f"{name} this fit starts with differs from the reference's at the end of epoch {resumed - 1}{values}: a "
                "callback or schedule changed it after that epoch's fingerprint was taken (a callback listed after "
                "the SeedCallback, such as ReduceLROnPlateau, acts after it: list the SeedCallback last), or the "
                "checkpoint is of another epoch"))]
        if resumed is not None:
            why = (f"; one run resumed or continued at epoch {resumed}, and callbacks such as ReduceLROnPlateau keep "
                   "their state (wait, cooldown, best) outside the model and start afresh in a resumed fit, so they "
                   "change the rate at other epochs than in the straight run")
        else:
            why = " (a callback such as ReduceLROnPlateau or LearningRateScheduler in one run only, or reacting to other metrics)"
        return [Cause("hyperparameter", f"{name} differs at {divergence.where()}{values}: a callback or schedule "
                                        f"changed it during training{why}")]
    return []


def _rng_causes(divergence: Divergence) -> list[Cause]:
    """The layer RNG state, where it is what differs."""
    if divergence.part != "rng":
        return []
    return [Cause("rng", "layer RNG state differs: keep SeedCallback's reset_layer_rng=True, and give random layers "
                         "no state of their own outside a SeedGenerator")]


def _initial_text(divergence: Divergence, deterministic_model: bool, comparison: str) -> str | None:
    """Why the state before the first step differs (weights, optimizer), or None."""
    if divergence.part in ("trainable", "non_trainable"):
        if comparison:  # audit: two builds
            return ("build_model() does not build the same state twice: seed before creating layers "
                    "(kr.seed_everything(seed) at its top) or build a kr.DeterministicModel, and look for "
                    "unseeded random draws after building")
        if not deterministic_model:
            return ("the initial weights differ: seed before building the model (kr.seed_everything(seed) before "
                    "creating its layers), or use kr.DeterministicModel")
        if divergence.epoch:
            return (f"the weights at the start of epoch {divergence.epoch} differ from the reference's at the end of "
                    f"epoch {divergence.epoch - 1}: resume from the checkpoint of that epoch, with initial_epoch="
                    f"{divergence.epoch}")
        return ("the initial weights differ: check that the model is built the same way, and that no layer's "
                "weights were set or loaded (keep_weights) in one run only")
    if divergence.part == "optimizer":
        return ("the optimizer's settings or state differ before the first step (learning rate, iteration count): "
                "compile it the same way, and resume with the initial_epoch of the checkpoint")
    return None


# 6. The step ----------------------------------------------------------------------------------

def _step_cause(divergence: Divergence, found: Evidence) -> Cause:
    """A nondeterministic step when everything else was compared and agrees; else "not
    determined", saying what agrees and what could not be compared."""
    agree, unknown = _compared(divergence, found)
    if not unknown:
        return Cause("step", f"a training step is nondeterministic: {_listed(agree)} agree with the reference's; "
                             f"{NONDETERMINISTIC_STEP}")
    ruled_out = f"{_listed(agree)} agree with the reference's, but " if agree else ""
    return Cause("step", f"not determined: {ruled_out}{_listed(unknown)} could not be compared. Check "
                         f"{'those' if len(unknown) > 1 else 'that'} first, then {NONDETERMINISTIC_STEP}")


def _compared(divergence: Divergence, found: Evidence) -> tuple[list[str], list[str]]:
    """(what agrees with the reference, what could not be compared) among the causes above."""
    agree, unknown = [], []
    if found.reference_seed is not None and found.reference_seed == found.seed:
        agree.append("the seed")
    if found.reference_config is None or found.config is None:
        unknown.append("the configuration (the reference was recorded by an earlier keras_repro, which did not record it)")
    elif not configuration.differences(found.reference_config, found.config, learning_rate=found.resumed_at is None):
        agree.append("the configuration (model structure, optimizer, loss and fit settings)")
    if found.reference_environment and found.environment:
        if not environment_changes(found.reference_environment, found.environment):
            agree.append("the environment")
    else:
        unknown.append("the environment")
    ordered_by = found.ordered_by
    if divergence.part != "data" and _fed_in_both(found):
        agree.append("the data (content, order and every batch fed)" if ordered_by == configuration.ORDERED_BY_KERAS_REPRO
                     else "the data fed (the checksum of every batch)")
    elif ordered_by == configuration.ORDERED_BY_KERAS_REPRO and divergence.part != "data":
        if all(any(r.path.startswith(CONTENT_PREFIX) for r in fp.part("data"))
               for fp in (found.expected, found.current) if fp is not None):
            agree.append("the data (content and order)")
        else:
            agree.append("the data order")
            unknown.append("the input's content (the reference does not record it)")
    elif ordered_by is None:
        unknown.append("the input (its kind is not recorded)")
    elif ordered_by == configuration.ORDERED_BY_KERAS:
        unknown.append("the input's content and order (Keras orders the input of a model that is not a "
                       "DeterministicModel, and keras_repro does not fingerprint it)")
    else:
        kind = (found.config or {}).get("input", "input")
        unknown.append(f"the input's content and order (a {kind}, which keras_repro neither orders nor fingerprints)")
    if found.expected is not None and found.current is not None and divergence.part != "rng":
        expected, current = comparable_records(found.expected.part("rng"), found.current.part("rng"))
        if [r.digest for r in expected] == [r.digest for r in current]:
            agree.append("the layer RNG state")
    return agree, unknown


def _listed(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# Audit and bisect -------------------------------------------------------------------------------

def _stage_cause(divergence: Divergence, comparison: str = "") -> str | None:
    """Causes that follow from the stage (and the kind of comparison) alone."""
    if divergence.stage == "missing":
        return "one run has an epoch or batch the other lacks: fit both the same number of steps (did a callback stop one early?)"
    if divergence.stage == "initial" and comparison == REPLAY:
        return "the checkpoint loads to different states: a layer or optimizer draws random numbers when it is loaded"
    return None


def training_cause(
    divergence: Divergence, deterministic_model: bool = True, resumed_at: int | None = None, comparison: str = ""
) -> str:
    """The likely cause inside training, from where the runs first differ, for comparisons
    whose runs share their configuration, data and environment by construction (`audit`,
    `bisect`), so that the place is the evidence.

    Args:
        divergence: The first divergence.
        deterministic_model: Whether the run's model is a `DeterministicModel`.
        resumed_at: The epoch a resumed or continued fit started at, if it did not
            start at epoch 0.
        comparison: "in-process" (two builds), "fresh process" (this process against a new
            one) or "replay" (two loads of one checkpoint); "" otherwise.
    """
    special = _stage_cause(divergence, comparison)
    if special is not None:
        return special
    if divergence.part == "data" and (divergence.variable or "").startswith((FED_PREFIX, VALIDATED_PREFIX)):
        return fed_text(divergence, Evidence(deterministic_model=deterministic_model))
    if divergence.part == "data":
        return ("the data order differs: pass arrays to a kr.DeterministicModel (which orders them by seed and "
                "epoch), or seed the input pipeline")
    initial = _initial_text(divergence, deterministic_model, comparison) if divergence.stage == "initial" else None
    if initial is not None:
        return initial
    if not deterministic_model and resumed_at and divergence.epoch == resumed_at and divergence.stage in ("epoch", "batch"):
        return _data_causes(divergence, Evidence(reference_start=0, start=resumed_at, deterministic_model=False))[0].text
    if comparison == FRESH_PROCESS:
        return ("identical within this process but not in a fresh one: something depends on process state, such as "
                "string hashing (PYTHONHASHSEED; start training with `keras-repro run -- python ...`), import order, "
                "environment variables or thread counts")
    rng = _rng_causes(divergence)
    return rng[0].text if rng else f"a training step is nondeterministic: {NONDETERMINISTIC_STEP}"
