"""Why two runs most likely differ: the hint that goes with a divergence.

One place for the explanations that `SeedCallback`, `kr.testing`, `audit` and the
command line give, most likely cause first: a reference recorded with another seed
or backend explains everything after it, so it is named before anything else.
"""

from __future__ import annotations

from collections.abc import Mapping

from keras_repro.compare import Divergence
from keras_repro.environment import differences

IGNORED_ENVIRONMENT = ("env.PYTHONHASHSEED", "hash_randomization", "env.KERAS_BACKEND")
"""Recorded environment entries that differ between runs without changing results (the
guarantee holds under any PYTHONHASHSEED; the backend is compared as `backend`). Entries
that only files of older versions hold (log levels, `KERAS_HOME`, any `TF_*`) are not
compared at all (`environment.differences`)."""

MAX_LISTED = 3
"""Environment differences named in one hint."""


def environment_changes(reference: Mapping[str, str], current: Mapping[str, str]) -> dict[str, tuple]:
    """{key: (reference value, current value)} of the recorded entries that can change results."""
    return {key: change for key, change in differences(reference, current).items() if key not in IGNORED_ENVIRONMENT}


def run_cause(
    reference_seed: int | None,
    seed: int | None,
    reference_environment: Mapping[str, str],
    environment: Mapping[str, str],
) -> str | None:
    """The likely cause that lies outside training: another seed, backend or environment.

    Example:

    >>> run_cause(8, 7, {"backend": "jax"}, {"backend": "jax"})
    'the reference was recorded with seed 8; this run uses seed 7'
    """
    if reference_seed is not None and seed is not None and reference_seed != seed:
        return f"the reference was recorded with seed {reference_seed}; this run uses seed {seed}"
    if not reference_environment or not environment:
        return None
    changes = environment_changes(reference_environment, environment)
    if "backend" in changes:
        before, after = changes["backend"]
        return f"the reference was recorded with the {before} backend; this run uses {after}"
    if changes:
        listed = "; ".join(f"{key}: {a if a is not None else '(unset)'} -> {b if b is not None else '(unset)'}"
                           for key, (a, b) in list(changes.items())[:MAX_LISTED])
        more = f" (and {len(changes) - MAX_LISTED} more)" if len(changes) > MAX_LISTED else ""
        return f"the reference was recorded in another environment: {listed}{more}"
    return None


FRESH_PROCESS, REPLAY = "fresh process", "replay"
"""Comparisons of `audit` and `bisect` whose divergences have a cause of their own."""


def training_cause(
    divergence: Divergence, deterministic_model: bool = True, resumed_at: int | None = None, comparison: str = ""
) -> str:
    """The likely cause inside training, from where the runs first differ.

    Args:
        divergence: The first divergence.
        deterministic_model: Whether the run's model is a `DeterministicModel` (its
            initial weights and data order come from its seed).
        resumed_at: The epoch a resumed or continued fit started at, if it did not
            start at epoch 0.
        comparison: For `audit` and `bisect`: "in-process" (two builds), "fresh process"
            (this process against a new one) or "replay" (two loads of one checkpoint); ""
            otherwise.
    """
    if divergence.stage == "missing":
        return "one run has an epoch or batch the other lacks: fit both the same number of steps (did a callback stop one early?)"
    if divergence.stage == "initial" and comparison == REPLAY:
        return "the checkpoint loads to different states: a layer or optimizer draws random numbers when it is loaded"
    if divergence.part == "data":
        return ("the data order differs: pass arrays to a kr.DeterministicModel (which orders them by seed and "
                "epoch), or seed the input pipeline")
    if divergence.stage == "initial" and divergence.part in ("trainable", "non_trainable"):
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
    if divergence.stage == "initial" and divergence.part == "optimizer":
        return ("the optimizer's settings or state differ before the first step (learning rate, iteration count): "
                "compile it the same way, and resume with the initial_epoch of the checkpoint")
    if (not deterministic_model and resumed_at and divergence.epoch == resumed_at
            and divergence.stage in ("epoch", "batch")):
        return ("the first epoch of a resumed or continued fit differs: the model is not a DeterministicModel, so "
                "Keras orders its data, and a resumed fit(shuffle=True) may visit the rows in another order than the "
                "straight run (it does on TensorFlow). Use kr.DeterministicModel, or shuffle=False")
    if comparison == FRESH_PROCESS:
        return ("identical within this process but not in a fresh one: something depends on process state, such as "
                "string hashing (PYTHONHASHSEED; start training with `keras-repro run -- python ...`), import order, "
                "environment variables or thread counts")
    if divergence.part == "rng":
        return ("layer RNG state differs: keep SeedCallback's reset_layer_rng=True, and give random layers no "
                "state of their own outside a SeedGenerator")
    return ("a training step is nondeterministic: look for randomness no seed controls (fresh entropy such as "
            "np.random.default_rng(), time, os.urandom) in layers, losses and callbacks, and for nondeterministic "
            "kernels (kr.enable_determinism())")


def likely_cause(
    divergence: Divergence,
    *,
    reference_seed: int | None = None,
    seed: int | None = None,
    reference_environment: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
    deterministic_model: bool = True,
    resumed_at: int | None = None,
    comparison: str = "",
) -> str:
    """The most likely cause of a divergence: the run's setup first, then training.

    Example:

    >>> likely_cause(divergence, reference_seed=8, seed=7)     # doctest: +SKIP
    'the reference was recorded with seed 8; this run uses seed 7'
    """
    return run_cause(reference_seed, seed, reference_environment or {}, environment or {}) or training_cause(
        divergence, deterministic_model, resumed_at, comparison
    )
