"""What `audit` and `bisect` report: the divergence with the comparison that found it,
each comparison made or skipped, and the readable summaries."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from keras_repro.fingerprinting.compare import Divergence
from keras_repro.fingerprinting.diagnosis import training_cause

IN_PROCESS = "in-process"
"""The name of the comparison of two builds in one process (see `diagnosis` for the others)."""


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
        layer: The first layer, gradient or update that differs between layer traces
            of the two sides (a `kr.TraceDivergence`), or None (identical, not traced,
            or the traces agree: the difference is in the compiled step).

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
    layer: Any = None

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
            if self.layer is not None:
                lines += ["", f"layer trace: {self.layer}"]
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
        layer: The first layer, gradient or update that differs between two layer
            traces from the checkpoint (a `kr.TraceDivergence`), or None.
    """

    identical: bool
    divergence: AuditDivergence | None
    epoch: int
    checkpoint: str
    steps: int
    hazards: list[str]
    seed: int | None = None
    layer: Any = None

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
            lines += [f"NOT REPRODUCIBLE: {self.divergence}", ""]
            if self.layer is not None:
                lines += [f"layer trace: {self.layer}", ""]
            lines += [f"hint: {training_cause(self.divergence, comparison=self.divergence.comparison)}"]
        return "\n".join(lines + [""] + _hazard_lines(self.hazards))


def _hazard_lines(hazards: Sequence[str]) -> list[str]:
    """The hazards section of a report."""
    if not hazards:
        return ["hazards: none found"]
    return ["hazards (known nondeterminism; the audit's reseeding may hide some of it):"] + [f"  - {h}" for h in hazards]


def named(divergence: Divergence | None, comparison: str) -> AuditDivergence | None:
    """`divergence` as an `AuditDivergence` naming the comparison."""
    if divergence is None:
        return None
    values = {field.name: getattr(divergence, field.name) for field in dataclasses.fields(Divergence)}
    return AuditDivergence(**values, comparison=comparison)
