"""Comparing fingerprints: is a run identical to its reference, and if not, where did
it first part ways?"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from keras_repro.fingerprints import PART_LABELS, PARTS, Fingerprint, VariableDigest


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first place where two runs differ.

    Attributes:
        epoch: The 0-based epoch (as Keras numbers it in callbacks). For
            `stage == "initial"`, the epoch that was about to start.
        stage: "initial" (state before the first step of a fit), "epoch" (state at
            the end of `epoch`) or "missing" (one run has the epoch, the other not).
        part: The part that differs: "data", "rng", "trainable", "non_trainable",
            "optimizer" (see `PART_LABELS`), or None for a missing epoch.
        variable: The path of the first differing variable in the reference run,
            or None.
        other_variable: Its path in the other run, when that differs.
        reference_digest: The variable's digest in the reference, or None.
        other_digest: The variable's digest in the other run, or None.
        reason: A short explanation ("bytes differ", "shape (3,) vs (4,)"...).
    """

    epoch: int | None
    stage: str
    part: str | None
    variable: str | None
    other_variable: str | None = None
    reference_digest: str | None = None
    other_digest: str | None = None
    reason: str = ""

    def where(self) -> str:
        """ "epoch 2", or "initial state before epoch 0" for the start of a fit."""
        if self.stage == "initial":
            return f"initial state (before the first step of epoch {self.epoch})"
        return f"epoch {self.epoch}"

    def __str__(self) -> str:
        if self.stage == "missing":
            return f"{self.where()}: {self.reason}"
        label = PART_LABELS.get(self.part or "", self.part)
        text = f"{self.where()}: {label} differ, first at '{self.variable}'"
        if self.other_variable and self.other_variable != self.variable:
            text += f" (named '{self.other_variable}' in the other run)"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The result of comparing a run with a reference.

    Attributes:
        identical: True when every fingerprint both runs have is bit-identical and
            both have the same epochs.
        first_divergence: The first `Divergence`, or None when identical.
        epochs_compared: The epochs present in both runs.
    """

    identical: bool
    first_divergence: Divergence | None
    epochs_compared: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.identical:
            return f"identical ({len(self.epochs_compared)} epochs compared)"
        return f"differ at {self.first_divergence}"


def _record_difference(ref: VariableDigest, other: VariableDigest) -> str | None:
    """Why two records of the same position differ, or None if they are equal."""
    if ref.digest == other.digest:
        return None
    if ref.dtype != other.dtype:
        return f"dtype {ref.dtype} vs {other.dtype}"
    if ref.shape != other.shape:
        return f"shape {ref.shape} vs {other.shape}"
    return "values differ"


def compare_fingerprints(
    reference: Fingerprint,
    other: Fingerprint,
    epoch: int | None,
    stage: str = "epoch",
    ignore: Iterable[str] = (),
) -> Divergence | None:
    """The first difference between two fingerprints, searched part by part in
    `PARTS` order (data order first, since it explains everything after it).

    Args:
        reference: The expected fingerprint.
        other: The fingerprint to check.
        epoch: The epoch to report.
        stage: "epoch" or "initial".
        ignore: Parts to leave out of the comparison.

    Returns:
        None if equal, else the first `Divergence`.
    """
    ignore = set(ignore)
    if not ignore and reference.digest == other.digest:
        return None
    for part in PARTS:
        if part in ignore:
            continue
        ref_records, other_records = reference.part(part), other.part(part)
        for ref, oth in zip(ref_records, other_records):
            reason = _record_difference(ref, oth)
            if reason is not None:
                return Divergence(epoch, stage, part, ref.path, oth.path, ref.digest, oth.digest, reason)
        if len(ref_records) != len(other_records):
            longer, name = (ref_records, "reference") if len(ref_records) > len(other_records) else (other_records, "other run")
            extra = longer[min(len(ref_records), len(other_records))]
            reason = (
                f"{len(ref_records)} variables in the reference, {len(other_records)} in the "
                f"other run; '{extra.path}' is only in the {name}"
            )
            return Divergence(epoch, stage, part, extra.path, None, None, None, reason)
    return None


def compare_runs(
    reference_initial: Fingerprint | None,
    reference_epochs: Sequence[Fingerprint],
    other_initial: Fingerprint | None,
    other_epochs: Sequence[Fingerprint],
) -> Comparison:
    """Compares two runs: their initial states, then every epoch in order."""
    if reference_initial is not None and other_initial is not None:
        if reference_initial.epoch == other_initial.epoch:
            found = compare_fingerprints(reference_initial, other_initial, reference_initial.epoch, "initial")
            if found is not None:
                return Comparison(False, found, ())
    ref_by_epoch = {fp.epoch: fp for fp in reference_epochs}
    other_by_epoch = {fp.epoch: fp for fp in other_epochs}
    common = tuple(sorted(set(ref_by_epoch) & set(other_by_epoch)))
    for epoch in sorted(set(ref_by_epoch) | set(other_by_epoch)):
        if epoch not in other_by_epoch or epoch not in ref_by_epoch:
            side = "the reference" if epoch in ref_by_epoch else "the other run"
            missing = Divergence(epoch, "missing", None, None, reason=f"only {side} has epoch {epoch}")
            return Comparison(False, missing, common)
        found = compare_fingerprints(ref_by_epoch[epoch], other_by_epoch[epoch], epoch)
        if found is not None:
            return Comparison(False, found, common)
    return Comparison(True, None, common)
