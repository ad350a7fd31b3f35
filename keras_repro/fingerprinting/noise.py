"""The verdict on two runs: "identical", rounding "noise", or "different".

Two runs that are not bit-identical are judged "noise" only when the evidence a numerics
engineer asks for is all there (docs/fingerprints.md, "Noise or a real difference"):

1. The same start: the same seed (the callbacks' and the model's), the same recorded
   configuration (model structure, optimizer and its hyperparameters, loss, batch size...),
   and a bit-identical initial state (initial weights and optimizer state).
2. The same data: every data record (content, order, the checksums of the batches fed and
   validated on) and the layer RNG state are bit-identical at every epoch compared; so is
   every counter (integer variables) and every optimizer scalar (iterations, learning rate):
   rounding changes no counter.
3. A small first difference: at the first epoch that differs, every variable's *relative
   drift* is at most `FIRST_ULPS` epsilons of its dtype (2**10 * 1.19e-7 = 1.2e-4 for float32).
4. Gradual growth: from epoch to epoch the largest drift grows by at most `MAX_GROWTH`
   (the chaotic amplification of rounding is steady; a real change shows as a jump).
   Equal NaN and Inf counts throughout.

The relative drift of a variable is computed from the float summaries every fingerprint
stores (`STAT_NAMES`: sum, L2 norm, min, max over the n elements):

    drift = max(|l2_a - l2_b|, |sum_a - sum_b| / sqrt(n), |min_a - min_b|, |max_a - max_b|)
            / max(l2_a, l2_b)

Each term is at most ||a - b||_2 (triangle and Cauchy-Schwarz inequalities), so `drift` is a
lower bound of the true relative distance ||a - b|| / ||a||: it never calls a large
difference small by construction, only a difference that cancels in all four summaries.

Anything else is "different", with the first reason found. Where the environments differ,
the explanation of "noise" names the recorded difference that most likely explains it
(devices first, then library versions, thread settings, the processor, the determinism
switches); where none differs, a nondeterministic kernel or reduction order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_repro.fingerprinting import configuration
from keras_repro.fingerprinting.digests import Fingerprint, VariableDigest
from keras_repro.fingerprinting.environment import differences

IDENTICAL, NOISE, DIFFERENT = "identical", "noise", "different"
"""The three verdicts."""

FIRST_ULPS = 2.0**10
"""The largest relative drift, in epsilons of the variable's dtype, at the first epoch that
differs. Calibrated on the bundled digits: one weight nudged by one ulp after the first batch
drifts 5e-9 (0.05 eps) after the epoch; a learning rate 10% higher, 9e-2 (7.6e5 eps);
another data order, 1.2e-1."""

MAX_GROWTH = 2.0**10
"""The largest growth of the largest drift from one epoch to the next (on the digits, rounding
noise grows about 2x per epoch)."""

ENVIRONMENT_RANK = (
    ("devices", "the devices"), ("backend", "the backend"), ("backend_version", "the backend's version"),
    ("keras", "the Keras version"), ("numpy", "the NumPy version"), ("env.XLA_FLAGS", "XLA_FLAGS"),
    ("env.OMP_NUM_THREADS", "OpenMP threads"), ("env.TF_NUM_INTRAOP_THREADS", "TensorFlow intra-op threads"),
    ("env.MKL_NUM_THREADS", "MKL threads"), ("env.OPENBLAS_NUM_THREADS", "OpenBLAS threads"),
    ("cpu_count", "the CPU count"), ("processor", "the processor"), ("machine", "the machine"),
    ("platform", "the platform"), ("deterministic_kernels", "the deterministic kernels"),
)
"""Environment entries in the order they explain rounding noise: another device or library
version changes kernels and their reduction order; a thread count splits reductions
differently; another processor has other vector instructions (FMA)."""

IGNORED = ("env.PYTHONHASHSEED", "hash_randomization", "env.KERAS_BACKEND", "keras_repro", "python", "h5py")
"""Recorded entries that do not change floating-point results."""


def drift(reference: VariableDigest, other: VariableDigest) -> float | None:
    """The relative drift of one float variable (see the module docstring): a lower bound of
    ||a - b|| / ||a|| from the stored summaries; None where summaries are missing.

    Example:

    >>> a = VariableDigest("w", "trainable", "float32", (4,), "x", (2.0, 1.0, 0.5, 0.5, 0, 0))
    >>> b = VariableDigest("w", "trainable", "float32", (4,), "y", (2.0, 1.0, 0.5, 0.5000001, 0, 0))
    >>> round(drift(a, b), 9)
    1e-07
    """
    if reference.digest == other.digest:
        return 0.0
    if reference.stats is None or other.stats is None or reference.shape != other.shape:
        return None
    n = max(1, int(np.prod(reference.shape)))
    (s1, l1, lo1, hi1), (s2, l2, lo2, hi2) = reference.stats[:4], other.stats[:4]
    scale = max(abs(l1), abs(l2))
    gap = max(abs(l1 - l2), abs(s1 - s2) / math.sqrt(n), abs(lo1 - lo2), abs(hi1 - hi2))
    if scale == 0 or not math.isfinite(gap):
        return math.inf
    return gap / scale


def epsilon(dtype: str) -> float | None:
    """The machine epsilon of a float dtype name, None for other dtypes."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        return 2.0**-7 if dtype == "bfloat16" else None
    return float(np.finfo(kind).eps) if kind.kind == "f" else None


def _pairs(a: Fingerprint, b: Fingerprint) -> tuple[list[tuple[VariableDigest, VariableDigest]], list[str]]:
    """The records of both fingerprints matched by part and path, and the records only one has
    (records of a kind only one run keeps, e.g. the input's content, are left out)."""
    def keyed(records: Sequence[VariableDigest]) -> dict[tuple[str, str, int], VariableDigest]:
        seen: dict[tuple[str, str], int] = {}
        found = {}
        for record in records:  # a path repeated in a part (shared layers) is told apart by its rank
            rank = seen[(record.part, record.path)] = seen.get((record.part, record.path), 0) + 1
            found[(record.part, record.path, rank)] = record
        return found

    mine, theirs = keyed(a.records), keyed(b.records)
    one_sided = [path for (part, path, _) in set(mine) ^ set(theirs) if part not in ("data", "rng")]
    return [(mine[key], theirs[key]) for key in mine if key in theirs], sorted(one_sided)


def _epoch_state(a: Fingerprint, b: Fingerprint) -> tuple[str | None, float, int, str]:
    """(why the difference is real or None, the largest drift, variables that differ, the
    variable drifting most) of one pair of fingerprints."""
    pairs, one_sided = _pairs(a, b)
    if one_sided:
        return f"'{one_sided[0]}' is in one run only", math.inf, len(one_sided), one_sided[0]
    worst, worst_path, count = 0.0, "", 0
    for ref, oth in pairs:
        if ref.digest == oth.digest:
            continue
        count += 1
        eps = epsilon(ref.dtype)
        if ref.part in ("data", "rng"):
            kind = "the data records" if ref.part == "data" else "the layer RNG state"
            return f"{kind} differ ('{ref.path}'): rounding changes neither the data fed nor random draws", math.inf, count, ref.path
        if ref.dtype != oth.dtype or ref.shape != oth.shape:
            return f"'{ref.path}' is {ref.dtype} {ref.shape} in one run, {oth.dtype} {oth.shape} in the other", math.inf, count, ref.path
        if eps is None:
            return f"the counter '{ref.path}' ({ref.dtype}) differs: rounding changes no counter", math.inf, count, ref.path
        if ref.part == "optimizer" and ref.shape == ():
            return (f"the optimizer scalar '{ref.path}' differs: an optimizer hyperparameter or step count "
                    "changed, not rounding"), math.inf, count, ref.path
        if ref.stats is not None and oth.stats is not None and tuple(ref.stats[4:]) != tuple(oth.stats[4:]):
            return f"'{ref.path}' has other NaN or Inf counts", math.inf, count, ref.path
        value = drift(ref, oth)
        if value is None:
            return (f"'{ref.path}' differs and the file holds no float summaries to measure by how much "
                    "(recorded by an older keras_repro)"), math.inf, count, ref.path
        if value / eps > worst:
            worst, worst_path = value / eps, ref.path
    return None, worst, count, worst_path


def judge(reference: Any, other: Any, initial: tuple[Fingerprint, Fingerprint] | None,
          epochs: Sequence[tuple[Fingerprint, Fingerprint]], missing: bool = False,
          learning_rate: bool = True) -> tuple[str, str]:
    """(verdict, explanation) for two runs that are not bit-identical.

    Args:
        reference, other: The runs (`FingerprintLog`s; their `seed`, `config` and `environment`
            are read where present).
        initial: The two states before the first step that `compare_runs` compared, or None.
        epochs: The fingerprints at the end of each epoch both runs have, in epoch order.
        missing: Whether one run has epochs (or batches) the other lacks.
        learning_rate: Compare the recorded learning rate (False where one run resumed later).

    Example:

    >>> judge(a, b, (a.initial, b.initial), list(zip(a.epochs, b.epochs)))  # doctest: +SKIP
    ('noise', 'same seed, configuration, initial state, data and RNG state; first at epoch 0: ...')
    """
    reason = _start_difference(reference, other, learning_rate)
    if reason is None and missing:
        reason = "one run has epochs or batches the other lacks"
    if reason is not None:
        return DIFFERENT, reason
    if initial is not None and initial[0].digest != initial[1].digest:
        why, _, _, path = _epoch_state(*initial)
        return DIFFERENT, why or f"the initial state differs (first at '{path}'): other initial weights or optimizer state"
    first, previous, summary, last = None, 0.0, "", ""
    for a, b in epochs:
        if a.digest == b.digest:
            continue
        why, worst, count, path = _epoch_state(a, b)
        if why is not None:
            return DIFFERENT, f"at epoch {a.epoch}, {why}"
        if first is None:
            first = a.epoch
            if worst > FIRST_ULPS:
                return DIFFERENT, (f"the first difference, at epoch {a.epoch}, is a relative drift of {worst:.3g} "
                                   f"epsilons in '{path}': beyond the {FIRST_ULPS:.0f} that rounding makes in an "
                                   "epoch; a real change (code, data or a setting the fingerprint does not record)")
            summary = f"first at epoch {a.epoch}: {count} variables, at most {worst:.3g} epsilons ('{path}')"
        elif worst > max(previous, 1.0) * MAX_GROWTH:
            return DIFFERENT, (f"the drift jumps from {previous:.3g} to {worst:.3g} epsilons at epoch {a.epoch} "
                               f"('{path}'): faster than rounding noise grows; something changed there")
        else:
            last = f"; {worst:.3g} epsilons by epoch {a.epoch}"
        previous = max(previous, worst)
    if first is None:
        return DIFFERENT, "the runs differ where no float summary can measure it (batch checksums only)"
    return NOISE, f"{_agreed(reference, other)}; {summary}{last}; {explain_environment(reference, other)}"


def _agreed(reference: Any, other: Any) -> str:
    """What both runs were found to share, and what could not be compared."""
    known = [name for name, field in (("seed", "seed"), ("configuration", "config"))
             if getattr(reference, field, None) is not None and getattr(other, field, None) is not None]
    unknown = [name for name in ("seed", "configuration") if name not in known]
    text = "same " + ", ".join([*known, "initial state, data and RNG state"])
    return text + (f" ({' and '.join(unknown)} not recorded)" if unknown else "")


def judge_runs(reference: Any, other: Any, initial: tuple, resumed: bool, found: Sequence[Any],
               epochs: Sequence[tuple[Fingerprint, Fingerprint]]) -> tuple[str, str]:
    """`judge` as `compare_runs` calls it: `initial` is the pair of states it compared before the
    first epoch (either may be None), `found` the divergences it found. A run resumed later than
    the other is compared from its initial state (less data order and RNG state, which restart)."""
    pair = initial if initial[0] is not None and initial[1] is not None else None
    if resumed and pair is not None:
        at_start = next((d for d in found if d.stage == "initial"), None)
        if at_start is not None:
            return DIFFERENT, f"the resumed run's initial state differs from the other's: {at_start}"
        pair = None
    missing = any(d.stage == "missing" for d in found)
    return judge(reference, other, pair, epochs, missing, learning_rate=not resumed)


def _start_difference(reference: Any, other: Any, learning_rate: bool) -> str | None:
    """The seed or a recorded setting that differs, or None."""
    seeds = getattr(reference, "seed", None), getattr(other, "seed", None)
    if None not in seeds and seeds[0] != seeds[1]:
        return f"the seed differs ({seeds[0]} in the reference, {seeds[1]} in the other run)"
    before, after = getattr(reference, "config", None), getattr(other, "config", None)
    if before is not None and after is not None:
        changes = configuration.differences(before, after, learning_rate=learning_rate)
        if changes:
            return f"the configuration differs: {changes[0][1]}"
    return None


def explain_environment(reference: Any, other: Any) -> str:
    """The recorded environment difference that most likely explains rounding noise."""
    a: Mapping[str, str] = dict(getattr(reference, "environment", {}) or {})
    b: Mapping[str, str] = dict(getattr(other, "environment", {}) or {})
    changed = {k: v for k, v in differences(a, b).items() if k not in IGNORED}
    for key, label in ENVIRONMENT_RANK:
        if key in changed:
            before, after = changed[key]
            return f"likely from {label}: {before or '(unset)'} -> {after or '(unset)'}"
    for key, (before, after) in changed.items():
        return f"likely from {key}: {before or '(unset)'} -> {after or '(unset)'}"
    kernels = [env.get("deterministic_kernels", "") for env in (a, b)]
    off = next((k for k in kernels if k and not k.lower().startswith("on")), None)
    if off:
        return f"no recorded environment difference, but deterministic kernels were not in force ({off}): a nondeterministic kernel"
    return ("no recorded environment difference: a nondeterministic kernel or reduction order, or a change "
            "smaller than rounding (a weight nudged by an ulp)")
