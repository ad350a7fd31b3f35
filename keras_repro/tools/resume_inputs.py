"""The inputs of `assert_resumable`: arrays, or a pipeline factory called once per run.

A `tf.data` pipeline, a `PyDataset`, a generator or a Grain dataset can change as it is
iterated, and keras_repro counts the passes a process makes over each input object
(`keras_repro.fit.input_resume`): a straight run and a resumed run sharing one object would
see each other's passes. So `assert_resumable` takes such an input as a *pipeline factory*, a
callable with no arguments that returns a new pipeline, and calls it once per run, right after
the run builds or loads its model (where a training script builds its pipeline: a `tf.data`
shuffle's seed pairs with TensorFlow's global seed when it is built, which creating a
`DeterministicModel` sets). `validation_data` may be a factory too. Arrays are passed as they
are, as before.

Where the check resumes: `ResumePoint`, an epoch, or a mid-epoch point `(epoch, batch)` whose
run is interrupted and restarted with `BackupAndRestore(save_freq=1)`
(`keras_repro.tools.resume_midepoch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from keras_repro.tools import child

FACTORY_ARGUMENTS = ("x", "validation_data")
"""The arguments of `assert_resumable` that may be pipeline factories."""


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: at the beginning of `epoch` (0-based; 1 <= epoch < epochs), or,
    with `batch`, inside `epoch` after its batch `batch` (both 0-based; 0 <= epoch < epochs).

    Example:

    >>> resume_point(2, epochs=4)
    ResumePoint(epoch=2, batch=None)
    >>> resume_point((1, 7), epochs=3).mid_epoch
    True
    """

    epoch: int
    batch: int | None = None

    @property
    def mid_epoch(self) -> bool:
        """Whether the run is interrupted inside an epoch (`at=(epoch, batch)`)."""
        return self.batch is not None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resume_point(at: Any, epochs: int, batches: int | None = None) -> ResumePoint:
    """`at` of `assert_resumable`, checked: an epoch with 1 <= at < epochs, or a mid-epoch
    point `(epoch, batch)`, zero-based, with 0 <= epoch < epochs and 0 <= batch < batches - 1
    when the batches of an epoch (`batches`) are known.

    Raises:
        ValueError: Naming `at`, what it must be and what was received.

    Example:

    >>> resume_point(1, epochs=3).epoch
    1
    >>> resume_point((0, 2), epochs=3, batches=4)
    ResumePoint(epoch=0, batch=2)
    """
    if isinstance(at, (tuple, list)):
        if len(at) != 2 or not all(_is_int(value) for value in at):
            raise ValueError(
                "`at` must be an epoch (an int) or a mid-epoch point (epoch, batch) of two ints, both "
                f"zero-based. Received: at={at!r}"
            )
        epoch, batch = int(at[0]), int(at[1])
        if not 0 <= epoch < epochs:
            raise ValueError(f"The epoch of `at=(epoch, batch)` must be an int with 0 <= epoch < epochs ({epochs}) "
                             f"(zero-based). Received: at={tuple(at)!r}")
        if batch < 0 or (batches is not None and batch >= batches):
            bound = f" < batches per epoch ({batches})" if batches is not None else ""
            raise ValueError(f"The batch of `at=(epoch, batch)` must be an int with 0 <= batch{bound} "
                             f"(zero-based). Received: at={tuple(at)!r}")
        if batches is not None and batch == batches - 1:
            raise ValueError(
                f"`at=(epoch, batch)` must stop inside the epoch: batch {batch} is the last of the epoch's "
                f"{batches} batches (Keras ends a fit resumed there with an empty epoch); pass "
                f"at={epoch + 1} to resume at the next epoch's start. Received: at={tuple(at)!r}"
            )
        return ResumePoint(epoch, batch)
    if not _is_int(at) or not 1 <= at < epochs:
        raise ValueError(f"`at` must be an int with 1 <= at < epochs ({epochs}), or a pair (epoch, batch). "
                         f"Received: at={at!r}")
    return ResumePoint(int(at))


def batches_per_epoch(x: Any, fit_kwargs: dict) -> int | None:
    """The batches of an epoch of arrays `x` with `fit_kwargs` (batch_size, default 32), or None
    when not known before fitting (a factory, validation_split, steps_per_epoch)."""
    import math

    import keras

    if is_factory(x) or x is None or fit_kwargs.get("validation_split") or fit_kwargs.get("steps_per_epoch"):
        return None
    leaves = keras.tree.flatten(x)
    rows = getattr(leaves[0], "shape", (None,))[0] if leaves else None
    if not _is_int(rows):
        return None
    return math.ceil(rows / (fit_kwargs.get("batch_size") or 32))


def is_factory(value: Any) -> bool:
    """Whether `value` is a pipeline factory (a callable that is not a model or a layer)."""
    return callable(value) and not hasattr(value, "fit") and not hasattr(value, "build")


def pipeline_form(value: Any) -> str | None:
    """What kind of pipeline `value` is ("a tf.data dataset", "a PyDataset (Name)", "a
    generator (gen)", "a Grain dataset (MapDataset)"), or None if it is none of those."""
    import keras

    module = type(value).__module__
    if module.startswith("tensorflow") and hasattr(value, "_inputs"):
        return "a tf.data dataset"
    if isinstance(value, keras.utils.PyDataset):
        return f"a PyDataset ({type(value).__name__})"
    if module.split(".")[0] == "grain":
        return f"a Grain dataset ({type(value).__name__})"
    if hasattr(value, "__next__"):
        return f"a generator ({type(value).__name__})"
    return None


@dataclasses.dataclass
class RunInputs:
    """The inputs of each run of `assert_resumable`: arrays as given, factories called anew.

    Args:
        x: Arrays (or lists/dicts of them), or a pipeline factory.
        y: The targets with arrays; None with a factory.
        factories: {"x" or "validation_data": factory} of the arguments given as factories.

    Example:

    >>> inputs = RunInputs.of(make_dataset, None, fit_kwargs)      # doctest: +SKIP
    >>> x, y, kwargs = inputs.make(fit_kwargs)                     # doctest: +SKIP
    """

    x: Any
    y: Any
    factories: dict[str, Callable[[], Any]]

    @classmethod
    def of(cls, x: Any, y: Any, fit_kwargs: dict, fresh_process: bool) -> RunInputs:
        """Checks `x`, `y` and `validation_data` (taken out of `fit_kwargs` when a factory)."""
        from keras_repro.model import _is_arrays

        factories: dict[str, Callable[[], Any]] = {}
        if is_factory(x):
            if y is not None:
                raise ValueError(
                    "`y` must be None when `x` is a pipeline factory: the pipeline it returns yields "
                    f"(x, y) batches. Received: y of type {type(y).__name__}"
                )
            factories["x"] = x
        elif not _is_arrays(x):
            form = pipeline_form(x) or f"a {type(x).__name__}"
            raise TypeError(
                "`x` must be arrays (or lists/dicts of them) or a pipeline factory: a function with no "
                "arguments that returns a new tf.data.Dataset, keras.utils.PyDataset, generator or Grain "
                "dataset, which assert_resumable calls once per run (a pipeline that both runs iterated "
                "would carry the straight run's passes into the resumed one). Pass e.g. "
                f"`lambda: make_dataset()`. Received: x={form}"
            )
        validation = fit_kwargs.get("validation_data")
        if is_factory(validation):
            factories["validation_data"] = fit_kwargs.pop("validation_data")
        elif validation is not None and pipeline_form(validation) is not None:
            raise TypeError(
                "`validation_data` must be arrays (a tuple) or a pipeline factory (a function with no "
                "arguments returning a new pipeline, called once per run). Pass e.g. "
                f"`validation_data=lambda: make_dataset()`. Received: validation_data={pipeline_form(validation)}"
            )
        if fresh_process:
            for name, factory in factories.items():
                target, why = child.locate(factory, f"`{name}`")
                if target is None:
                    raise ValueError(
                        f"assert_resumable calls `{name}` again in a fresh process, so it must be a function "
                        f"a fresh process can import: {why}; or pass fresh_process=False. "
                        f"Received: {name}={factory!r}"
                    )
        return cls(None if factories.get("x") else x, y, factories)

    @property
    def arrays(self) -> tuple[Any, Any]:
        """The arrays (x, y) to send to a fresh process ((None, None) with a factory)."""
        return self.x, self.y

    def targets(self) -> dict[str, child.Target]:
        """{argument: where a fresh process imports its factory} (`child.locate`)."""
        return {name: child.locate(factory, f"`{name}`")[0] for name, factory in self.factories.items()}

    def make(self, fit_kwargs: dict) -> tuple[Any, Any, dict]:
        """(x, y, fit keyword arguments) for one run: each factory called once, its result checked."""
        kwargs = dict(fit_kwargs)
        made = {}
        for name, factory in self.factories.items():
            value = factory()
            if pipeline_form(value) is None:
                raise TypeError(
                    f"The pipeline factory `{name}` must return a tf.data.Dataset, keras.utils.PyDataset, "
                    f"generator or Grain dataset (pass arrays as they are, not through a factory). "
                    f"Received: {name}() returned a {type(value).__name__}"
                )
            made[name] = value
        if "validation_data" in made:
            kwargs["validation_data"] = made["validation_data"]
        if "x" in made:
            return made["x"], None, kwargs
        return self.x, self.y, kwargs

    def form(self) -> str:
        """The training input's form, for messages: "arrays" or what the factory returns."""
        return "arrays" if "x" not in self.factories else "a pipeline factory"


def factories_from(targets: dict[str, child.Target]) -> dict[str, Callable[[], Any]]:
    """In the fresh process: the factories `RunInputs.targets` described, imported."""
    return {name: child.load_target(target) for name, target in targets.items()}


def unresumable(data: Any, validation_data: Any = None) -> list[str]:
    """What in a run's inputs a resumed fit cannot replay (`keras_repro.fit.input_resume`):
    "the training input is a generator (...)", ..."""
    from keras_repro.fit import input_resume

    found = [f"the training input is {name}" for name in input_resume.unreplayable(data, training=True)]
    found += [f"the validation input is {name}" for name in input_resume.unreplayable(validation_data, training=False)]
    return found
