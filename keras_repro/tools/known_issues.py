"""Known determinism bugs and behaviour changes of the stack keras_repro runs on: one dated
table, each entry with its upstream issue, the package and versions affected, a check of
the installed stack, and the fix. `kr.preflight` and `keras-repro preflight` report it.

To add an entry: append a `KnownIssue` to `KNOWN_ISSUES` with a public issue URL, a version
range in PEP 440 form (`packaging.specifiers`), the ISO date the issue was reported or the
change released, and a `check` returning the status ("warn" or "fail") and why, or None where
the stack is not affected under the conditions in force (device, flags). tests/test_known_issues.py
keeps the entries well-formed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Callable, Mapping
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

OK, WARN, FAIL = "ok", "warn", "fail"
"""The statuses of a check."""


@dataclasses.dataclass(frozen=True)
class Stack:
    """What the checks read of the installed stack.

    Attributes:
        versions: {distribution: version} of the packages the table names (None: not installed).
        device: "cpu", "gpu" or "tpu": the kind of device the Keras backend computes on.
        backend: The Keras backend.
        env: The environment variables.
    """

    versions: Mapping[str, str | None]
    device: str = "cpu"
    backend: str = ""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class KnownIssue:
    """One known determinism bug or behaviour change.

    Attributes:
        id: The upstream issue ("jax-ml/jax#27796").
        title: What goes wrong, in a line.
        url: The upstream issue's URL.
        package: The distribution affected ("jaxlib").
        affected: The affected versions, a PEP 440 specifier set (">=0.5.0,<0.8.0").
        date: When it was reported or released, ISO 8601 ("2025-04-07").
        kind: "bug" or "change" (a behaviour change: results differ across versions).
        backend: The Keras backend it concerns; with another backend in use it is reported "ok".
        check: Stack -> (status, why) where the installed version is affected: "fail", "warn",
            or "ok" when the conditions it needs (a GPU, a flag) are not met.
        fix: What to do.
    """

    id: str
    title: str
    url: str
    package: str
    affected: str
    date: str
    kind: str
    backend: str
    check: Callable[[Stack], tuple[str, str]]
    fix: str

    def applies(self, version: str | None) -> bool:
        """Whether `version` of `package` is in the affected range."""
        if version is None:
            return False
        try:
            return Version(version) in SpecifierSet(self.affected)
        except InvalidVersion:
            return False


def _xla_deterministic(stack: Stack) -> bool:
    from keras_repro._backend.flags import has_xla_determinism_flag

    return has_xla_determinism_flag(stack.env.get("XLA_FLAGS"))


def _jax_scatter(stack: Stack) -> tuple[str, str]:
    if stack.device != "gpu":
        return OK, "XLA's deterministic scatter is used on GPUs only"
    if not _xla_deterministic(stack):
        return WARN, "XLA_FLAGS has no determinism flag now; with it (the deterministic setting) `.at[].set` is corrupted"
    return FAIL, "a GPU with XLA's determinism flag: `.at[idx].set(...)` can write wrong values (index 0)"


def _threefry(stack: Stack) -> tuple[str, str]:
    if stack.env.get("JAX_THREEFRY_PARTITIONABLE", "").lower() in ("0", "false"):
        return OK, "JAX_THREEFRY_PARTITIONABLE=0 keeps the old random bits"
    return WARN, "random bits from a key differ from jax < 0.5.0: references recorded there do not verify here"


def _tf_stateless_xla(stack: Stack) -> tuple[str, str]:
    if stack.device == "gpu" or "--tf_xla_auto_jit" in stack.env.get("TF_XLA_FLAGS", ""):
        return WARN, ("XLA compiles the train step here (Keras' jit_compile='auto' on a GPU): stateless random ops "
                      "(dropout, initializers) give other values than without XLA, on CPU or with jit_compile=False")
    return OK, "no XLA by default on CPU (jit_compile='auto'); with jit_compile=True random values change"


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        id="jax-ml/jax#27796",
        title="XLA's deterministic scatter corrupts `.at[].set` on GPU (xla_gpu_deterministic_ops)",
        url="https://github.com/jax-ml/jax/issues/27796",
        package="jaxlib",
        affected="<0.8.0",
        date="2025-04-07",
        kind="bug",
        backend="jax",
        check=_jax_scatter,
        fix=("upgrade jaxlib (fixed in XLA on 2025-09-08, openxla/xla#31063; 0.8.0 is the first release certain to "
             "hold it), or check `.at[].set` results on this GPU"),
    ),
    KnownIssue(
        id="jax-ml/jax#18480",
        title="JAX's default PRNG became partitionable Threefry (jax_threefry_partitionable=True)",
        url="https://github.com/jax-ml/jax/discussions/18480",
        package="jax",
        affected=">=0.5.0",
        date="2025-01-17",
        kind="change",
        backend="jax",
        check=_threefry,
        fix=("record references on jax >= 0.5.0, or set JAX_THREEFRY_PARTITIONABLE=0 to verify references "
             "recorded with jax < 0.5.0"),
    ),
    KnownIssue(
        id="tensorflow/tensorflow#117644",
        title="stateless random ops give other values under XLA (jit_compile=True) than without",
        url="https://github.com/tensorflow/tensorflow/issues/117644",
        package="tensorflow",
        affected=">=2.21.0",
        date="2026-05-05",
        kind="bug",
        backend="tensorflow",
        check=_tf_stateless_xla,
        fix=("record and verify with the same jit_compile setting and device kind (pass jit_compile= to compile "
             "explicitly); TensorFlow documents it as expected (tensorflow/tensorflow#121252)"),
    ),
)
"""The table, oldest first within each package."""


def installed_version(package: str) -> str | None:
    """The installed version of a distribution, or None (tests monkeypatch this)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def current_stack(env: Mapping[str, str] | None = None) -> Stack:
    """The installed stack: versions of the packages the table names, the device kind and backend."""
    from keras_repro import _backend

    accelerators = " ".join(_backend.accelerators()).lower()
    device = "tpu" if "tpu" in accelerators else "gpu" if accelerators else "cpu"
    packages = sorted({issue.package for issue in KNOWN_ISSUES} | {"keras", "torch"})
    return Stack({name: installed_version(name) for name in packages}, device, _backend.name(),
                 dict(os.environ if env is None else env))


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check's result: `status` "ok", "warn" or "fail", what it found, and the fix."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"[{self.status}] {self.name}: {self.detail}"
        return text + (f". Fix: {self.fix}" if self.fix and self.status != OK else "")


def check_known_issues(stack: Stack | None = None) -> list[Finding]:
    """One `Finding` per entry of `KNOWN_ISSUES` for the installed (or given) stack.

    Example:

    >>> [f.status for f in check_known_issues(Stack({"jaxlib": "0.5.3", "jax": "0.4.30"}, "gpu", "jax",
    ...     env={"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}))]
    ['fail', 'ok', 'ok']
    """
    stack = current_stack() if stack is None else stack
    found = []
    for issue in KNOWN_ISSUES:
        version = stack.versions.get(issue.package)
        name = f"{issue.id} ({issue.date})"
        if version is None:
            found.append(Finding(name, OK, f"{issue.package} not installed"))
        elif not issue.applies(version):
            found.append(Finding(name, OK, f"{issue.package} {version} is outside {issue.affected}"))
        elif stack.backend and stack.backend != issue.backend:
            found.append(Finding(name, OK, f"{issue.package} {version} is affected ({issue.title}), but the Keras "
                                           f"backend in use is {stack.backend}: it matters with KERAS_BACKEND={issue.backend}",
                                 issue.fix))
        else:
            status, why = issue.check(stack)
            found.append(Finding(name, status, f"{issue.title}; {issue.package} {version} ({issue.affected}): {why}",
                                 issue.fix))
    return found


def describe(issue: KnownIssue) -> dict[str, Any]:
    """An entry as a plain dict (for docs and JSON)."""
    return {field.name: getattr(issue, field.name) for field in dataclasses.fields(issue) if field.name != "check"}
