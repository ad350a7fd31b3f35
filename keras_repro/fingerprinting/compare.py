"""Comparing fingerprints: is a run identical to its reference, and if not, where did
it first part ways? Exact by default; with `rtol`/`atol`, variables whose digests
differ but whose float summaries agree are "within tolerance"."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from keras_repro.fingerprinting import noise
from keras_repro.fingerprinting.digests import PARTS, Fingerprint, VariableDigest, added_later, part_differs

IDENTICAL, WITHIN_TOLERANCE, DIVERGED = "identical", "within_tolerance", "diverged"


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first place where two runs differ.

    Attributes:
        epoch: The 0-based epoch (as Keras numbers it in callbacks). For
            `stage == "initial"`, the epoch that was about to start.
        stage: "initial" (state before the first step of a fit), "batch" (state
            after `batch` of `epoch`), "epoch" (state at the end of `epoch`) or
            "missing" (one run has the epoch, the other not).
        part: The part that differs: "data", "rng", "trainable", "non_trainable",
            "optimizer" (see `PART_LABELS`), or None for a missing epoch.
        variable: The path of the first differing variable in the reference run,
            or None.
        other_variable: Its path in the other run, when that differs.
        reference_digest: The variable's digest in the reference, or None.
        other_digest: The variable's digest in the other run, or None.
        reason: A short explanation ("values differ", "shape (3,) vs (4,)"...).
        batch: For `stage == "batch"`, the 0-based batch of `epoch`.
        replica: For a difference between the copies devices hold of one variable
            (`replica_divergence`), the replica whose copy differs from replica 0's.
        process: For a difference between the copies the processes of a multi-process
            run hold (`keras_repro.fit.processes.process_divergence`), the process whose copy
            differs from process 0's.
    """

    epoch: int | None
    stage: str
    part: str | None
    variable: str | None
    other_variable: str | None = None
    reference_digest: str | None = None
    other_digest: str | None = None
    reason: str = ""
    batch: int | None = None
    replica: int | None = None
    process: int | None = None

    def where(self) -> str:
        """ "epoch 2", "epoch 2, batch 17", "epoch 2, replica 1", "epoch 2, process 1" or the
        initial state of a fit."""
        if self.stage == "initial":
            text = f"initial state (before the first step of epoch {self.epoch})"
        elif self.stage == "batch":
            text = f"epoch {self.epoch}, batch {self.batch}"
        else:
            text = f"epoch {self.epoch}"
        if self.process is not None:
            text = f"{text}, process {self.process}"
        return text if self.replica is None else f"{text}, replica {self.replica}"

    def __str__(self) -> str:
        if self.stage == "missing":
            return f"{self.where()}: {self.reason}"
        text = f"{self.where()}: {part_differs(self.part, self.variable)}, first at '{self.variable}'"
        if self.other_variable and self.other_variable != self.variable:
            text += f" (named '{self.other_variable}' in the other run)"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclasses.dataclass(frozen=True)
class VariableComparison:
    """How one variable of one epoch compares.

    Attributes:
        epoch: The epoch (for the initial state, the epoch about to start).
        stage: "initial" or "epoch".
        part: The variable's part.
        variable: Its path in the reference.
        status: "identical", "within_tolerance" or "diverged".
        relative_difference: The largest relative difference of its float
            summaries (0.0 when identical; inf when it cannot be measured).
    """

    epoch: int | None
    stage: str
    part: str
    variable: str
    status: str
    relative_difference: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The result of comparing a run with a reference.

    Attributes:
        identical: True when every fingerprint both runs have is bit-identical and
            both have the same epochs.
        first_divergence: The first `Divergence` beyond the tolerance (any
            difference when comparing exactly), or None.
        epochs_compared: The epochs present in both runs.
        details: One `VariableComparison` per variable and compared fingerprint.
        rtol: The relative tolerance used (0 for exact).
        atol: The absolute tolerance used (0 for exact).
        judgement: (verdict, explanation) from `keras_repro.fingerprinting.noise.judge`, or
            None where no evidence was judged (then `verdict` is "identical" or "different").

    Example:

    >>> comparison = kr.load_fingerprints("a.h5").compare(kr.load_fingerprints("b.h5"))  # doctest: +SKIP
    >>> comparison.verdict, comparison.explanation  # doctest: +SKIP
    ('noise', 'same seed, configuration, initial state, data and RNG state; first at epoch 0: ...')
    """

    identical: bool
    first_divergence: Divergence | None
    epochs_compared: tuple[int, ...] = ()
    details: tuple[VariableComparison, ...] = ()
    rtol: float = 0.0
    atol: float = 0.0
    judgement: tuple[str, str] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def within_tolerance(self) -> bool:
        """True when nothing diverged beyond the tolerance (identical included)."""
        return self.first_divergence is None

    @property
    def status(self) -> str:
        """ "identical", "within_tolerance" or "diverged": the comparison at `rtol`/`atol`."""
        if self.identical:
            return IDENTICAL
        return WITHIN_TOLERANCE if self.within_tolerance else DIVERGED

    @property
    def verdict(self) -> str:
        """ "identical", "noise" (rounding) or "different" (a real change), from the evidence
        both runs recorded, whatever the tolerance (`keras_repro.fingerprinting.noise`)."""
        if self.identical:
            return noise.IDENTICAL
        return self.judgement[0] if self.judgement else noise.DIFFERENT

    @property
    def explanation(self) -> str:
        """Why `verdict`: the evidence, and for "noise" the likely source of the rounding."""
        if self.identical:
            return f"every fingerprint bit-identical, {len(self.epochs_compared)} epochs compared"
        if self.judgement:
            return self.judgement[1]
        return f"the runs differ at {self.first_divergence}" if self.first_divergence else "the runs differ"

    def __str__(self) -> str:
        if self.identical:
            return f"identical ({len(self.epochs_compared)} epochs compared)"
        if self.within_tolerance:
            return f"within tolerance (rtol={self.rtol}, atol={self.atol}; {len(self.epochs_compared)} epochs)"
        return f"differ at {self.first_divergence}"

    def to_dataframe(self) -> Any:
        """`details` as a pandas DataFrame (needs pandas)."""
        from keras_repro._optional import require_pandas

        return require_pandas("Comparison.to_dataframe()").DataFrame([dataclasses.asdict(d) for d in self.details])


def _record_difference(ref: VariableDigest, other: VariableDigest) -> str | None:
    """Why two records of the same position differ, or None if they are equal."""
    if ref.digest == other.digest:
        return None
    if ref.dtype != other.dtype:
        return f"dtype {ref.dtype} vs {other.dtype}"
    if ref.shape != other.shape:
        return f"shape {ref.shape} vs {other.shape}"
    return "values differ"


def classify(ref: VariableDigest, other: VariableDigest, rtol: float = 0.0, atol: float = 0.0) -> tuple[str, float]:
    """(status, largest relative difference of the summaries) for one variable.

    Summaries cannot prove two arrays close element by element; within tolerance
    means every summary (sum, L2 norm, min, max) agrees within `atol + rtol * |ref|`
    and the NaN and Inf counts are equal.
    """
    if ref.digest == other.digest:
        return IDENTICAL, 0.0
    if ref.stats is None or other.stats is None or ref.shape != other.shape or ref.dtype != other.dtype:
        return DIVERGED, math.inf
    if ref.stats[4:] != other.stats[4:]:
        return DIVERGED, math.inf
    worst, close = 0.0, True
    for a, b in zip(ref.stats[:4], other.stats[:4]):
        gap = abs(a - b)
        worst = max(worst, gap / abs(a) if a else (0.0 if gap == 0 else math.inf))
        close = close and gap <= atol + rtol * abs(a)
    return (WITHIN_TOLERANCE if close and (rtol or atol) else DIVERGED), worst


def compare_fingerprints(
    reference: Fingerprint,
    other: Fingerprint,
    epoch: int | None,
    stage: str = "epoch",
    ignore: Iterable[str] = (),
    rtol: float = 0.0,
    atol: float = 0.0,
    details: list[VariableComparison] | None = None,
) -> Divergence | None:
    """The first difference between two fingerprints beyond the tolerance, searched
    part by part in `PARTS` order (data order first, since it explains the rest).

    Args:
        reference: The expected fingerprint.
        other: The fingerprint to check.
        epoch: The epoch to report.
        stage: "epoch", "initial" or "batch" (then `other.batch` is reported).
        ignore: Parts to leave out of the comparison.
        rtol: Relative tolerance on the float summaries (0: exact).
        atol: Absolute tolerance on the float summaries (0: exact).
        details: If given, one `VariableComparison` per variable is appended.

    Returns:
        None if equal (or within tolerance), else the first `Divergence`.
    """
    ignore = set(ignore)
    if details is None and not ignore and reference.digest == other.digest:
        return None
    first: Divergence | None = None
    for part in PARTS:
        if part in ignore:
            continue
        ref_records, other_records = comparable_records(reference.part(part), other.part(part))
        for ref, oth in zip(ref_records, other_records):
            status, relative = classify(ref, oth, rtol, atol)
            if details is not None:
                details.append(VariableComparison(epoch, stage, part, ref.path, status, relative))
            if status == DIVERGED and first is None:
                first = Divergence(
                    epoch, stage, part, ref.path, oth.path, ref.digest, oth.digest,
                    _record_difference(ref, oth) or "", other.batch if stage == "batch" else None,
                )
                if details is None:
                    return first
        if len(ref_records) != len(other_records) and first is None:
            longer, name = (ref_records, "reference") if len(ref_records) > len(other_records) else (other_records, "other run")
            extra = longer[min(len(ref_records), len(other_records))]
            reason = (
                f"{len(ref_records)} variables in the reference, {len(other_records)} in the "
                f"other run; '{extra.path}' is only in the {name}"
            )
            first = Divergence(epoch, stage, part, extra.path, None, None, None, reason)
            if details is None:
                return first
    return first


def comparable_records(
    reference: tuple[VariableDigest, ...], other: tuple[VariableDigest, ...]
) -> tuple[tuple[VariableDigest, ...], tuple[VariableDigest, ...]]:
    """The records of one part to compare: those of a kind later versions added (input
    content, Keras' global SeedGenerator: `fingerprints.added_later`) only where both runs
    have that kind, since references recorded before lack them (and inputs keras_repro does
    not own have no content records)."""
    def kinds(records: tuple[VariableDigest, ...]) -> set[str]:
        return {kind for kind in map(added_later, records) if kind}

    one_sided = kinds(reference) ^ kinds(other)
    if not one_sided:
        return reference, other

    def kept(records: tuple[VariableDigest, ...]) -> tuple[VariableDigest, ...]:
        return tuple(r for r in records if added_later(r) not in one_sided)

    return kept(reference), kept(other)


def replica_divergence(
    fingerprints: Mapping[int, Fingerprint],
    epoch: int | None = None,
    stage: str = "epoch",
    ignore: Collection[str] = (),
    devices: Sequence[str] = (),
) -> Divergence | None:
    """The first replica, and its first variable in `PARTS` order, whose state differs
    from replica 0's, or None when every replica holds the same state.

    Args:
        fingerprints: {replica: fingerprint}, as `replica_fingerprints` returns.
        epoch, stage: Where the fingerprints were taken, for the `Divergence`.
        ignore: Paths of variables whose copies differ by design (`replica_local_paths`).
        devices: Device names of the replicas, in replica order, for the message.
    """
    if 0 not in fingerprints:
        return None
    base = fingerprints[0]

    def device(k: int) -> str:
        return f" ({devices[k]})" if k < len(devices) else ""

    for k in sorted(r for r in fingerprints if r != 0):
        other = fingerprints[k]
        if other.digest == base.digest:
            continue
        for mine, theirs in zip(base.records, other.records):
            if mine.digest == theirs.digest or mine.path in ignore:
                continue
            reason = f"its copy on replica {k}{device(k)} differs from replica 0's{device(0)}"
            return Divergence(epoch, stage, mine.part, mine.path, theirs.path, mine.digest, theirs.digest, reason, replica=k)
        if len(base.records) != len(other.records):
            return Divergence(epoch, stage, None, None, reason=f"replica {k} has {len(other.records)} variables, replica 0 {len(base.records)}", replica=k)
    return None


def _start(initial: Fingerprint | None, epochs: Sequence[Fingerprint]) -> int:
    """The epoch a run starts at: its initial state's label, else its first epoch."""
    if initial is not None and initial.epoch is not None:
        return initial.epoch
    return min((fp.epoch for fp in epochs), default=0)


def _digest_widths(fingerprint: Fingerprint) -> set[int]:
    """The lengths of a fingerprint's variable digests: which method made them."""
    return {len(record.digest) for record in fingerprint.records}


class Run(Protocol):
    """What `compare_runs` reads of a run (a `FingerprintLog`)."""

    initial: Fingerprint | None
    epochs: Sequence[Fingerprint]
    batches: Sequence[Fingerprint]


def compare_runs(reference: Run, other: Run, rtol: float = 0.0, atol: float = 0.0) -> Comparison:
    """The one definition of where two runs part ways.

    The states are compared in the order training produced them: the state before the
    first step, then for every epoch its batch fingerprints (in batch order) and its end.
    The first difference found is the first divergence; a batch or epoch that only one
    run has is a "missing" divergence at its place. A run resumed at epoch k (its initial
    state is labelled k) is compared from epoch k on: its initial state with the other
    run's state at the end of epoch k - 1 (less the data order and the layer RNG state,
    which are reset), then epochs k, k + 1, ...

    With `rtol`/`atol`, epochs whose float summaries agree within the tolerance are
    "within tolerance"; batch checksums, which have no summaries, then only locate the
    first batch of an epoch that diverged beyond it. Batches fingerprinted by different
    methods (checksums, SHA-256 in files of format version 2) are not compared.

    Args:
        reference: The reference run (a `FingerprintLog`).
        other: The run to check.
        rtol: Relative tolerance on each variable's float summaries (0: exact).
        atol: Absolute tolerance on the float summaries (0: exact).

    Returns:
        A `Comparison`.

    Raises:
        TypeError: If a run is not a `FingerprintLog` (a path, say: load it first).

    Example:

    >>> compare_runs(load_fingerprints("a.h5"), load_fingerprints("b.h5")).first_divergence  # doctest: +SKIP
    Divergence(epoch=1, stage='batch', part='trainable', variable='dense/kernel', ..., batch=17)
    """
    for name, run in (("reference", reference), ("other", other)):
        if not all(hasattr(run, field) for field in ("initial", "epochs", "batches")):
            raise TypeError(
                f"`{name}` must be a FingerprintLog (or another run with `initial`, `epochs` and `batches`); "
                f"to compare with a fingerprint file, load it first with `kr.load_fingerprints(path)`. "
                f"Received: {name}={run!r}"
            )
    if rtol < 0 or atol < 0:
        raise ValueError(f"Tolerances must be >= 0. Received: rtol={rtol}, atol={atol}")
    exact = not (rtol or atol)
    details: list[VariableComparison] = []
    found: list[Divergence] = []
    ref_by_epoch = {fp.epoch: fp for fp in reference.epochs}
    other_by_epoch = {fp.epoch: fp for fp in other.epochs}
    ref_start, other_start = _start(reference.initial, reference.epochs), _start(other.initial, other.epochs)
    start = max(ref_start, other_start)
    # The states before `start`: the initial states, or for a run resumed later than the
    # other, its initial state against the other's state at the end of the epoch before.
    if ref_start == other_start:
        pair, ignore = (reference.initial, other.initial), ()
    elif other_start > ref_start:
        pair, ignore = (ref_by_epoch.get(start - 1), other.initial), ("data", "rng")
    else:
        pair, ignore = (reference.initial, other_by_epoch.get(start - 1)), ("data", "rng")
    if pair[0] is not None and pair[1] is not None:
        found += _found(compare_fingerprints(*pair, start, "initial", ignore=ignore, rtol=rtol, atol=atol, details=details))
    ref_batches, other_batches = _by_epoch(reference.batches), _by_epoch(other.batches)
    identical = not found and all(d.status == IDENTICAL for d in details)
    for epoch in sorted(e for e in set(ref_by_epoch) | set(other_by_epoch) if e >= start):
        if epoch not in other_by_epoch or epoch not in ref_by_epoch:
            side = "the reference" if epoch in ref_by_epoch else "the other run"
            found.append(Divergence(epoch, "missing", None, None, reason=f"only {side} has epoch {epoch}"))
            identical = False
            continue
        batch = _batch_divergence(ref_batches.get(epoch, {}), other_batches.get(epoch, {}), epoch)
        before = len(details)
        at_end = compare_fingerprints(ref_by_epoch[epoch], other_by_epoch[epoch], epoch, rtol=rtol, atol=atol, details=details)
        identical = identical and at_end is None and batch is None and all(d.status == IDENTICAL for d in details[before:])
        if exact and batch is not None:
            found.append(batch)
        elif at_end is not None:
            found.append(batch if batch is not None and batch.stage == "batch" else at_end)
    common = tuple(e for e in sorted(set(ref_by_epoch) & set(other_by_epoch)) if e >= start)
    first = found[0] if found else None
    identical = identical and first is None
    judgement = None if identical else noise.judge_runs(
        reference, other, pair, bool(ignore), found, [(ref_by_epoch[e], other_by_epoch[e]) for e in common])
    return Comparison(identical, first, common, tuple(details), rtol, atol, judgement)


def _found(divergence: Divergence | None) -> list[Divergence]:
    return [] if divergence is None else [divergence]


def _by_epoch(batches: Sequence[Fingerprint]) -> dict[int, dict[int, Fingerprint]]:
    """{epoch: {batch: fingerprint}}."""
    grouped: dict[int, dict[int, Fingerprint]] = {}
    for fingerprint in batches:
        grouped.setdefault(fingerprint.epoch, {})[fingerprint.batch] = fingerprint
    return grouped


def _batch_divergence(mine: dict[int, Fingerprint], theirs: dict[int, Fingerprint], epoch: int) -> Divergence | None:
    """The first batch of an epoch that differs (exactly) or that only one run has, when
    both runs fingerprinted batches of it the same way."""
    if not mine or not theirs:
        return None
    for batch in sorted(set(mine) | set(theirs)):
        if batch not in mine or batch not in theirs:
            side = "the reference" if batch in mine else "the other run"
            return Divergence(epoch, "missing", None, None, reason=f"only {side} has batch {batch} of epoch {epoch}")
        if _digest_widths(mine[batch]) != _digest_widths(theirs[batch]):
            return None
        found = compare_fingerprints(mine[batch], theirs[batch], epoch, "batch")
        if found is not None:
            return found
    return None
