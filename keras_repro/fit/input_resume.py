"""Resumed and continued fits of inputs other than arrays: epoch k sees the batches epoch k of
the straight run saw.

Keras makes one pass over its input per epoch, and some inputs change from pass to pass:

* a `tf.data` pipeline with a seeded shuffle that reshuffles each iteration
  (`Dataset.shuffle(n, seed=s)`, as `image_dataset_from_directory` builds it): iteration i's
  order is a function of (seed, i), i counted per shuffle in the process. Creating an iterator
  of the shuffle advances it without reading an element (measured on TF 2.21), so a fit that
  starts at epoch k creates the iterators this process has not made: cheap and exact. Keras'
  own passes are counted as it makes them (`_backend`): on TensorFlow a second iterator at the
  end of an epoch of known length; on JAX and torch one pass before the first epoch of a fit
  whose model, loss or metrics are not built (the first fit after `compile`), whose batch
  Keras' symbolic build reads.
* a `PyDataset` whose `on_epoch_begin` / `on_epoch_end` change it (a reshuffle): the fit calls
  them for the epochs this process has not run, each after seeding every RNG as `SeedCallback`
  seeds that epoch, so a reshuffle with NumPy's or Python's global RNG draws what it drew (the
  last at `on_train_begin`, after Keras' build pass). Keras also calls them as a fit starts
  (resetting its epoch iterator, and on JAX and torch in its build pass): they are muted until
  `on_train_begin`, so epoch e of any fit follows e passes.

Passes are counted per input (per shuffle for `tf.data`) in this process, so a continued fit
(a second `fit` of the same model and input) replays nothing. What cannot be resumed exactly
warns when a fit starts at epoch k > 0, naming the form and why, and the reference records a
note (`input_resume`): a generator, a shuffle without any seed, a reshuffling validation
`PyDataset`, `steps_per_epoch` other than one pass, and on JAX and torch a `PyDataset` fed by
workers (Keras' enqueuer feeds each epoch batches fetched ahead in the previous one).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import keras

from keras_repro import _backend
from keras_repro.errors import ReproWarning, warn
from keras_repro.seeding import seed_everything, seed_for

logger = logging.getLogger(__name__)

_PASSES: dict[int, tuple[Any, int]] = {}
"""{id(input): (weak reference to it, passes this process made over it)}."""


def passes_made(source: Any) -> int:
    """Passes this process's fits made over `source` (a shuffle, a `PyDataset`, a generator)."""
    entry = _PASSES.get(id(source))
    return entry[1] if entry is not None and entry[0]() is source else 0


def _add_passes(source: Any, count: int) -> None:
    for key in [key for key, (reference, _) in _PASSES.items() if reference() is None]:
        del _PASSES[key]  # inputs gone
    try:
        reference: Callable[[], Any] = weakref.ref(source)
    except TypeError:  # an object without weak references: keep it alive instead
        def reference(source: Any = source) -> Any:
            return source
    _PASSES[id(source)] = (reference, passes_made(source) + count)


def _tf_nodes(dataset: Any) -> Iterator[Any]:
    """The datasets of a `tf.data` pipeline, from the outermost, not below a reshuffling one."""
    seen: set[int] = set()
    stack = [dataset]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if _reshuffles(node):
            continue
        try:
            stack.extend(node._inputs())
        except Exception:  # noqa: BLE001 - private API: stop walking
            return


def _is_tf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "_inputs")


def _reshuffles(node: Any) -> bool:
    return bool(getattr(node, "_reshuffle_each_iteration", False) is True)


def _seeded(node: Any) -> bool:
    seeds = [getattr(node, name, None) for name in ("_seed", "_seed2")]
    return any(seed is not None and int(seed) != 0 for seed in seeds)


def _has_epoch_hooks(dataset: Any) -> bool:
    base = keras.utils.PyDataset
    return any(getattr(type(dataset), hook) is not getattr(base, hook) for hook in ("on_epoch_begin", "on_epoch_end"))


class InputPasses:
    """One fit's inputs that change from pass to pass: their replay and their count.

    Args:
        x: The fit's training input (not arrays: keras_repro orders those itself).
        validation_data: The fit's validation input, or None.
        seed: The `SeedCallback`'s seed (what each epoch is seeded from).
        validation_freq: As `fit`.

    Example:

    >>> passes = InputPasses(dataset, None, seed=7)                          # doctest: +SKIP
    >>> notes = passes.prepare(model, first_epoch=2, steps_per_epoch=None)   # doctest: +SKIP
    >>> with passes.hooks_muted_until_train_begin():                         # doctest: +SKIP
    ...     model.fit(dataset, initial_epoch=2, callbacks=[passes.callback()])
    """

    def __init__(self, x: Any, validation_data: Any, seed: int, validation_freq: Any = 1) -> None:
        self.seed = seed
        self.validation_freq = validation_freq
        validation = _validation_input(validation_data)
        self.sources = {"training": _changing(x, self._replay_epoch), "validation": _changing(validation, None)}
        self.per_epoch = {"training": _backend.input_passes_per_epoch(x),
                          "validation": _backend.input_passes_per_epoch(validation) if validation is not None else 1}
        self._form = x
        self._muted: list[Any] = []
        self._deferred: list[tuple[Any, Any, int]] = []

    def prepare(self, model: Any, first_epoch: int, steps_per_epoch: int | None) -> dict[str, str]:
        """Before `fit`: replays the passes that epoch `first_epoch` of a straight run had and
        this process has not made; warns about what cannot be replayed. Returns notes to record."""
        problems = []
        if steps_per_epoch is not None and first_epoch > 0 and not _one_pass_per_epoch(self._form, steps_per_epoch):
            problems.append(
                f"with steps_per_epoch={steps_per_epoch}, Keras keeps one iterator of this "
                f"{_form_name(self._form)} across the epochs of a fit and a new fit starts a new one, so "
                "epoch k does not continue where epoch k-1 stopped (drop steps_per_epoch, so that an epoch "
                "is one pass, or train in one fit)"
            )
        straight_build = _backend.input_build_passes(model, first_fit=True)
        build = _backend.input_build_passes(model)
        for kind, sources in self.sources.items():
            per = self.per_epoch[kind]
            epochs = first_epoch if kind == "training" else self._validations_before(first_epoch)
            for name, source, replay in sources:
                # Keras' build pass iterates a tf.data pipeline; a PyDataset's hooks are muted then
                builds = kind == "training" and _is_tf_node(source)
                first = straight_build if builds else 0
                missing = first + per * epochs - passes_made(source) - (build if builds else 0)
                if missing > 0 and replay is None:
                    problems.append(f"the {kind} input is {name}")
                elif missing > 0:
                    logger.info("Replaying %d passes over the %s input (%s) for epoch %d", missing, kind, name, first_epoch)
                    done = passes_made(source)
                    for index in range(done, done + missing):
                        if index == done + missing - 1 and not builds:  # a PyDataset's last: at on_train_begin
                            self._deferred.append((replay, source, (index - first) // per))
                        else:
                            replay(source, (index - first) // per)
                    _add_passes(source, missing)
                if kind == "training" and straight_build and _enqueued(source):
                    problems.append(
                        f"the training input is {name}, fed by workers: on this backend Keras' first fit reads "
                        "a batch to build the model, and its workers then feed each epoch batches they fetched "
                        "ahead in the one before, which a new fit does not have (use workers=1)")
                elif missing < 0:
                    logger.info("The %s input (%s) had %d more passes in this process than a straight run "
                                "before epoch %d: its batches follow from those", kind, name, -missing, first_epoch)
                if builds:
                    _add_passes(source, build)
        self._mute()
        if not problems:
            return {}
        text = "; ".join(problems)
        if first_epoch > 0:
            warn(f"This fit starts at epoch {first_epoch} and cannot see the batches epoch {first_epoch} of a "
                 f"straight run saw: {text}.", ReproWarning)
        return {"input_resume": text}

    def count(self, kind: str, ended: bool = False) -> None:
        """A pass over the `kind` ("training" or "validation") inputs began, or (`ended`) one
        ended (Keras may start the next then: `_backend.input_passes_per_epoch`)."""
        count = self.per_epoch[kind] - 1 if ended else 1
        for _, source, _ in self.sources[kind]:
            _add_passes(source, count)

    def callback(self) -> keras.callbacks.Callback:
        """The callback that counts the fit's passes (and ends the muting at `on_train_begin`)."""
        return _PassCounter(self)

    @contextlib.contextmanager
    def hooks_muted_until_train_begin(self) -> Iterator[None]:
        """Around `fit`: the training `PyDataset`s' epoch hooks stay muted until the fit's
        `on_train_begin` (or its end). Keras calls `on_epoch_end` when a fit starts (resetting its
        epoch iterator), and on JAX and torch `on_epoch_begin` too (its symbolic build reads a
        batch): without those calls, epoch e of any fit sees the state after e passes."""
        try:
            yield
        finally:
            self.unmute()

    def unmute(self) -> None:
        """Gives the muted `PyDataset`s their hooks back, then makes a `PyDataset`'s last replayed
        pass: after Keras' build pass, which read batches (and with workers, fetched more ahead,
        which Keras feeds first) in the order the straight run's previous epoch had."""
        for dataset in self._muted:
            for hook in _HOOKS:
                dataset.__dict__.pop(hook, None)
        self._muted = []
        deferred, self._deferred = self._deferred, []
        for replay, source, epoch in deferred:
            replay(source, epoch)

    def _mute(self) -> None:
        for _, source, replay in self.sources["training"]:
            own = getattr(source, "__dict__", None)
            if replay is not None and isinstance(source, keras.utils.PyDataset) and own is not None \
                    and not any(hook in own for hook in _HOOKS):
                own.update(dict.fromkeys(_HOOKS, _nothing))
                self._muted.append(source)

    def _replay_epoch(self, dataset: Any, epoch: int) -> None:
        """A straight run's pass over a `PyDataset` for `epoch`: seeded as `SeedCallback` seeds
        the epoch's start, then its hooks (draws made while it fed the epoch are not replayed)."""
        seed_everything(seed_for(self.seed, "epoch", epoch))
        dataset.on_epoch_begin()
        dataset.on_epoch_end()

    def _validations_before(self, epoch: int) -> int:
        """Validation passes a straight run made before `epoch` (Keras' `_should_eval`)."""
        freq = self.validation_freq
        if isinstance(freq, int):
            return epoch // freq if freq > 0 else 0
        return sum(1 for e in range(epoch) if e + 1 in freq)


_HOOKS = ("on_epoch_begin", "on_epoch_end")


def _nothing() -> None:
    """A muted hook."""


def _enqueued(source: Any) -> bool:
    """Whether Keras feeds this `PyDataset` through worker threads or processes (an enqueuer)."""
    return isinstance(source, keras.utils.PyDataset) and (source.workers > 1 or source.use_multiprocessing)


def _is_tf_node(source: Any) -> bool:
    return type(source).__module__.startswith("tensorflow")


def _changing(data: Any, replay_epoch: Callable[[Any, int], None] | None) -> list[tuple[str, Any, Any]]:
    """(name, source, replay(source, epoch) or None) for each part of an input that changes from
    pass to pass (None: cannot be replayed; `replay_epoch` None: no `PyDataset` replay)."""
    if data is None:
        return []
    if _is_tf_dataset(data):
        found = []
        for node in _tf_nodes(data):
            if not _reshuffles(node):
                continue
            if _seeded(node):
                found.append(("a tf.data shuffle with a seed, reshuffled each iteration", node,
                              lambda node, epoch: iter(node)))
            else:
                found.append((("a tf.data shuffle without a seed (its order differs in every run: pass "
                               "seed=... to Dataset.shuffle)"), node, None))
        return found
    if isinstance(data, keras.utils.PyDataset):
        if not _has_epoch_hooks(data):
            return []
        name = f"the PyDataset '{type(data).__name__}', which changes in on_epoch_begin/on_epoch_end"
        return [(name if replay_epoch else name + " (only a training PyDataset is replayed)", data, replay_epoch)]
    if hasattr(data, "__next__"):
        return [((f"a generator ({type(data).__name__}): it cannot be rewound or advanced without "
                  "producing its batches (use a PyDataset or tf.data)"), data, None)]
    return []


def unreplayable(data: Any, training: bool = True) -> list[str]:
    """The parts of a fit's input that a fit starting at epoch k > 0 cannot replay, each named
    with why (as the fit's warning names them); [] for arrays, None or an input that resumes.

    Example:

    >>> unreplayable(iter(batches))                                   # doctest: +SKIP
    ['a generator (generator): it cannot be rewound or advanced without producing its batches ...']
    """
    data = data if training else _validation_input(data)
    return [name for name, _, replay in _changing(data, _nothing_replayed if training else None) if replay is None]


def _nothing_replayed(dataset: Any, epoch: int) -> None:
    """A stand-in replay (`unreplayable` asks what could be replayed, and replays nothing)."""


def _validation_input(validation_data: Any) -> Any:
    """The validation input when it is a dataset, `PyDataset` or generator (not arrays)."""
    if validation_data is None or isinstance(validation_data, (tuple, list, dict)):
        return None
    return validation_data


def _one_pass_per_epoch(data: Any, steps: int) -> bool:
    """Whether `steps` batches are exactly one pass over `data` (then Keras starts a new iterator
    every epoch: `EpochIterator`)."""
    try:
        if _is_tf_dataset(data):
            return int(data.cardinality()) == steps
        return len(data) == steps
    except Exception:  # noqa: BLE001 - unknown length
        return False


def _form_name(data: Any) -> str:
    return "tf.data dataset" if _is_tf_dataset(data) else type(data).__name__


class _PassCounter(keras.callbacks.Callback):
    """Counts the passes of one fit: one training pass per epoch, one per validation."""

    def __init__(self, passes: InputPasses) -> None:
        super().__init__()
        self._passes = passes

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._passes.unmute()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._passes.count("training")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._passes.count("training", ended=True)

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._passes.count("validation")

    def on_test_end(self, logs: dict | None = None) -> None:
        self._passes.count("validation", ended=True)
