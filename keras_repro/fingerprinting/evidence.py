"""What two recorded runs show where they part: the `Evidence` a cause is named from
(`keras_repro.fingerprinting.diagnosis`): their seeds, configurations, environments, and the two
fingerprints the divergence compared."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from keras_repro.fingerprinting import configuration
from keras_repro.fingerprinting.compare import Divergence
from keras_repro.fingerprinting.digests import Fingerprint
from keras_repro.fingerprinting.environment import differences

IGNORED_ENVIRONMENT = ("env.PYTHONHASHSEED", "hash_randomization", "env.KERAS_BACKEND")
"""Recorded environment entries that differ between runs without changing results (the
guarantee holds under any PYTHONHASHSEED; the backend is compared as `backend`). Entries
that only files of older versions hold (log levels, `KERAS_HOME`, any `TF_*`) are not
compared at all (`environment.differences`)."""


def environment_changes(reference: Mapping[str, str], current: Mapping[str, str]) -> dict[str, tuple]:
    """{key: (reference value, current value)} of the recorded entries that can change results."""
    return {key: change for key, change in differences(reference, current).items() if key not in IGNORED_ENVIRONMENT}


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What both runs recorded, for explaining where they part.

    Attributes:
        reference_seed, seed: The callbacks' seeds (None: unknown).
        reference_config, config: The fits' configurations (`keras_repro.fingerprinting.configuration`);
            None: not recorded (files of earlier keras_repro versions).
        reference_environment, environment: The environment manifests.
        expected, current: The two fingerprints where the runs part, where known.
        reference_start, start: The epoch each run's recording started at (k for a fit
            resumed or continued at epoch k).
        deterministic_model: Whether this run's model is a `DeterministicModel` (where no
            configuration says who orders its input).
    """

    reference_seed: int | None = None
    seed: int | None = None
    reference_config: Mapping[str, str] | None = None
    config: Mapping[str, str] | None = None
    reference_environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    expected: Fingerprint | None = None
    current: Fingerprint | None = None
    reference_start: int | None = None
    start: int | None = None
    deterministic_model: bool = True

    @property
    def resumed_at(self) -> int | None:
        """The epoch one run resumed (or continued) at where the other ran straight on, or None."""
        starts = (self.reference_start or 0, self.start or 0)
        return max(starts) if starts[0] != starts[1] else None

    @property
    def ordered_by(self) -> str | None:
        """Who ordered this run's input (`configuration.ORDERED_BY_*`), None when unknown."""
        if self.config is not None:
            return self.config.get("input.ordered_by")
        return None if self.deterministic_model else configuration.ORDERED_BY_KERAS


def evidence(divergence: Divergence, reference: Any, run: Any, deterministic_model: bool = True) -> Evidence:
    """The `Evidence` of two recorded runs (`FingerprintLog`s) at `divergence`."""
    if reference is None or run is None:
        return Evidence(deterministic_model=deterministic_model)
    expected, current = _states(divergence, reference, run)
    return Evidence(
        reference.seed, run.seed, reference.config, run.config, dict(reference.environment), dict(run.environment),
        expected, current, reference.first_epoch, run.first_epoch, deterministic_model,
    )


def _states(divergence: Divergence, reference: Any, run: Any) -> tuple[Fingerprint | None, Fingerprint | None]:
    """The reference's and the run's fingerprints that `divergence` compared."""
    if divergence.stage == "initial":
        first, mine = reference.first_epoch or 0, run.first_epoch or 0
        if first == mine:
            return reference.initial, run.initial
        return (reference.epoch(mine - 1), run.initial) if mine > first else (reference.initial, run.epoch(first - 1))
    if divergence.stage == "batch":
        def batch(log: Any) -> Fingerprint | None:
            return next((fp for fp in log.batches if (fp.epoch, fp.batch) == (divergence.epoch, divergence.batch)), None)

        return batch(reference), batch(run)
    if divergence.stage == "epoch":
        return reference.epoch(divergence.epoch), run.epoch(divergence.epoch)
    return None, None
