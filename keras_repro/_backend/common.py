"""What every backend module shares: the interface's defaults (used as they are by Keras'
NumPy backend) and the helpers the backend modules build on."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)


def version() -> str:
    """The backend framework's version ("unknown" for Keras' NumPy backend)."""
    return np.__version__


def seed_backend(seed: int) -> None:
    """Seeds python, numpy, the backend framework and Keras' global SeedGenerator."""
    keras.utils.set_random_seed(seed)


def value_of(variable: Any) -> Any:
    """The backend tensor of a Keras variable (anything else as it is)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def to_numpy(value: Any, replica: int = 0) -> np.ndarray:
    """A host NumPy view (or copy) of a variable's current value. `replica` picks the copy
    of a variable that devices hold one each of (see `replica_devices`)."""
    return np.asarray(value_of(value))


def read_batch(variables: list, replica: int = 0) -> list[np.ndarray]:
    """Host arrays of several variables at once (`to_numpy` of each by default)."""
    return [to_numpy(variable, replica) for variable in variables]


def kept_values(variables: list) -> list:
    """The variables' values as they are now, unchanged by whatever later updates the variables
    (in place, or by donating their buffers to a compiled step), for `variable.assign` to put
    back: host copies here (TensorFlow and torch, which update a variable's memory in place,
    copy what their own `read_batch` reads)."""
    return [np.array(array, copy=True) for array in read_batch(variables)]


def data_to_numpy(value: Any) -> np.ndarray:
    """A host NumPy copy of input data of any kind (NumPy, TensorFlow, JAX or torch arrays),
    whatever the backend."""
    return np.array(keras.ops.convert_to_numpy(value))


def replica_devices(value: Any) -> tuple[str, ...]:
    """The devices that each hold their own copy of a variable, in replica order; empty when
    it has one copy (or copies that differ by design)."""
    return ()


def is_chief(model: Any = None) -> bool:
    """Whether this process writes shared files (False only for the non-chief processes
    of a multi-worker run)."""
    return True


def process_count() -> int:
    """The processes that train together (several in a multi-process JAX run), else 1."""
    return 1


def gather_from_processes(array: np.ndarray) -> np.ndarray:
    """Every process's `array`, stacked in process order: shape (process_count(), *shape).
    A collective in a multi-process run: every process calls it at the same point, with
    an array of the same shape and dtype."""
    return np.asarray(array)[None]


def distribution_scope(model: Any) -> contextlib.AbstractContextManager:
    """The scope a model's variables must be created in (a tf.distribute strategy's)."""
    return contextlib.nullcontext()


def seed_state_max() -> int:
    """The largest value a SeedGenerator state entry can hold on this backend."""
    return 2**32 - 1


def enable_op_determinism(threads: int | None, inter_op_threads: int | None) -> tuple[dict, dict]:
    """Turns on the backend's deterministic kernels and optional CPU thread limits.

    Returns:
        (applied, not_applied): what was set, and what could not be with the reason.
    """
    return {}, {"op_determinism": f"no determinism switch for the {keras.backend.backend()} backend"}


def determinism_state() -> dict[str, Any]:
    """The determinism switches currently in force, for the environment manifest."""
    return {}


def devices() -> list[str]:
    """Names of the devices the backend computes on."""
    return ["cpu"]


def accelerators() -> list[str]:
    """The accelerators (GPUs, TPUs) the backend computes on; empty on a CPU-only machine."""
    return []


def native_ordered_input(data: tuple, rows_for_epoch: Any, num_rows: int, batch_size: int) -> tuple[Any, Any] | None:
    """A native pipeline that visits `data` in the order `rows_for_epoch(epoch)` gives, as
    (dataset, set_epoch), or None to use the backend-neutral `PyDataset`."""
    return None


def input_hazards(data: Any) -> list[str]:
    """Known sources of nondeterminism in an input pipeline keras_repro cannot reorder (by the
    input's own type: a tf.data pipeline or a torch DataLoader, whatever the backend)."""
    hazards: list[str] = []
    module = type(data).__module__
    if module.startswith("tensorflow") and hasattr(data, "_inputs"):
        from keras_repro._backend import tf_data

        hazards += tf_data.hazards(data)
    elif module.startswith("torch.utils.data"):
        sampler = getattr(data, "sampler", None)
        if type(sampler).__name__ == "RandomSampler" and getattr(sampler, "generator", None) is None:
            hazards.append("torch DataLoader with shuffle=True and no generator (pass generator=torch.Generator().manual_seed(...))")
    return sorted(set(hazards))


def sync_model_state(model: Any) -> None:
    """Makes the model's variables current mid-epoch (the JAX trainer defers writing them)."""


def input_build_passes(model: Any, first_fit: bool = False) -> int:
    """Passes `fit` makes over its input before the first epoch (0 or 1): where Keras' trainer
    builds the model symbolically from a batch it takes from a new pass (on an iterator of
    its own, which it then resets: a `PyDataset` gets `on_epoch_begin`/`on_epoch_end`).
    With `first_fit`, the passes of the first fit after `compile` (what a straight run made)."""
    return 0


def input_passes_per_epoch(data: Any) -> int:
    """Passes Keras' epoch loop makes over `data` per epoch (or validation): it starts an
    iterator at each epoch's start, and when it knows the number of batches, another at the
    epoch's end (`EpochIterator`, Keras 3.15); on JAX and torch those are Python generators
    over the input, which start nothing until read: one pass."""
    return 1


def symbolic_build_passes(model: Any, first_fit: bool = False) -> int:
    """`input_build_passes` of the JAX and torch trainers: Keras' `_symbolic_build` takes a batch
    when the model, its compiled metrics or its compiled loss are not built (after `compile` they
    are not: the first fit after it always takes one)."""
    if first_fit:
        return 1
    unbuilt = not all(getattr(layer, "built", True) for layer in model._flatten_layers())
    for name in ("_compile_metrics", "_compile_loss"):
        compiled = getattr(model, name, None)
        unbuilt = unbuilt or (compiled is not None and not compiled.built)
    return int(unbuilt)


def async_batch_hooks_help() -> bool:
    """Whether letting Keras run batch-end hooks on a thread saves time (it does where steps
    are dispatched asynchronously: JAX)."""
    return False


def trains_under_tf_distribute() -> bool:
    """Whether Keras' trainer on this backend runs `fit` under a `tf.distribute` strategy
    (only TensorFlow's does)."""
    return False


def child_determinism_environment() -> dict[str, str]:
    """Environment variables that turn on, in a child process, the deterministic kernels
    this process has on."""
    return {}


def prepare_kernels_at_import() -> None:
    """Sets what must be in place before the backend starts (JAX's XLA flag, cuBLAS's
    workspace) for deterministic kernels, where it still can."""


def set_deterministic_kernels(on: bool) -> None:
    """Switches the backend's deterministic kernels on or off, where that works at run time."""


def kernels_in_effect() -> tuple[bool, str]:
    """(whether deterministic kernels are in effect, what turns them on or why they are not)."""
    return True, "Keras' NumPy backend has no nondeterministic kernels"


DETERMINISM_WORDS = ("deterministic", "determinism")
"""Words of the errors frameworks raise for an op without a deterministic implementation."""


def plain_text(error: BaseException) -> str:
    """An error's message without terminal colour codes (Keras adds them)."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


def determinism_failure(error: BaseException) -> str | None:
    """The op an error says has no deterministic implementation ("" when it does not say
    which), or None when the error is about something else."""
    text = plain_text(error)
    if not any(word in text.lower() for word in DETERMINISM_WORDS):
        return None
    return first_match(text, (r"implementation of (\w+)", r"HLO instruction %?([\w.\-]+)", r"(\w+) does not have a deterministic"))


def first_match(text: str, patterns: tuple[str, ...]) -> str:
    """The first group of the first pattern found in `text`, or ""."""
    import re

    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return ""


Deferred = tuple[Callable[[], Any], Callable[[list], np.ndarray]]
"""(start, finish) of batch checksums: `start()` checksums the variables' values now and
returns at once with a pending result (on the device where the backend can); `finish(pending)`
brings a list of them to the host together, uint32 of shape (len(pending), variables, 2)."""


def _stack(count: int) -> Callable[[list], np.ndarray]:
    """`finish` for results that are host arrays already."""
    return lambda pending: np.stack(pending) if pending else np.zeros((0, count, 2), np.uint32)


def host_checksums(variables: list, replica: int = 0, read: Callable[[Any, int], np.ndarray] = to_numpy) -> Deferred:
    """Batch checksums computed on the host, at `start`, from `read` (a backend's
    `to_numpy`: views where it can), all arrays in one `FlatLayout` pass."""
    from keras_repro.fingerprinting import checksums

    def words() -> list[np.ndarray]:
        return [checksums.words(read(v, replica)) for v in variables]

    layout = checksums.FlatLayout([w.size for w in words()])
    buffer = np.empty(layout.total, np.uint32)
    return (lambda: layout.mix(layout.positioned(words(), out=buffer))), _stack(len(variables))


def deferred_checksums(variables: list, replica: int = 0, model: Any = None) -> Deferred:
    """(start, finish) of the batch checksum lanes (`keras_repro.fingerprinting.checksums`) of `variables`
    (see `Deferred`). With `model`, the JAX form reads the trainer's state mid-epoch."""
    if not variables:
        return (lambda: None), (lambda pending: np.zeros((len(pending), 0, 2), np.uint32))
    return host_checksums(variables, replica)


def deferred_or_host(build: Callable[[], Deferred], variables: list, replica: int,
                     read: Callable[[Any, int], np.ndarray] = to_numpy) -> Deferred:
    """The device form `build()` makes, or the host one where it cannot run."""
    if not variables:
        return (lambda: None), (lambda pending: np.zeros((len(pending), 0, 2), np.uint32))
    try:
        start, finish = build()
        finish([start()])  # compile now, and find out whether it runs here
    except Exception as error:  # noqa: BLE001 - any failure means: use the host path
        logger.debug("batch checksums on the host: the device form failed (%s)", error)
        return host_checksums(variables, replica, read)
    return start, finish


# Layer traces: one eager training step whose layer calls are recorded -----------------------

def call_model(model: Any, x: Any) -> Any:
    """The model's forward pass in training mode, as Keras' trainers make it."""
    return model(x, training=True) if getattr(model, "_call_has_training_arg", True) else model(x)


def model_loss(model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> Any:
    """The compiled loss of one batch (with the layers' added losses), as `train_step` computes it."""
    compute = getattr(model, "_compute_loss", None) or model.compute_loss
    return compute(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)


def framework_rng_state() -> list[np.ndarray] | None:
    """The framework's own global RNG states where Keras layers draw from them (torch: a Dropout
    without a seed), as host arrays (the host's, then each accelerator's), for
    `set_framework_rng_state` to put back or a backup to store; None where Keras draws only from
    SeedGenerators."""
    return None


def set_framework_rng_state(states: list[np.ndarray]) -> None:
    """Puts back what `framework_rng_state` returned (an accelerator this process lacks is
    skipped; one the states lack is left as it is)."""


def traced_step(model: Any, x: Any, y: Any, sample_weight: Any, calls: list) -> tuple[Any, list]:
    """Trains one step of a compiled model as `fit` would run its `train_step` (compiled or
    eager: `traced_step_mode`), and returns (loss, gradients of `model.trainable_variables`).
    Wrapped layer calls append (path, inputs, outputs) to `calls` during the forward pass; after
    the step `calls` holds concrete arrays (see `keras_repro.trace`)."""
    raise ValueError(f"Layer traces need gradients, which the {keras.backend.backend()} backend does not "
                     "compute. Use TensorFlow, JAX or PyTorch. Received: backend="
                     f"{keras.backend.backend()}")


def traced_step_mode(model: Any) -> str:
    """How `traced_step` runs the model's step: "compiled" or "eager" (as `fit` would)."""
    return "eager"


class StepCache:
    """A compiled traced step per model, built by `build(model)` on first use and again whenever
    what it was built from changes: the model's compile (its loss and optimizer objects), its
    trainable variables or its `jit_compile`, the things after which Keras rebuilds its own train
    function. Python-side changes in between are not seen, as `fit` does not see them. Models are
    held weakly: a model's step goes with it."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build = build
        self._steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def _key(model: Any) -> tuple:
        return (getattr(model, "_compile_loss", None), model.optimizer, getattr(model, "jit_compile", None),
                *model.trainable_variables)

    def get(self, model: Any) -> Any:
        """The step for `model` as it is now."""
        key = self._key(model)
        found = self._steps.get(model)
        if found is None or len(found[0]) != len(key) or any(a is not b for a, b in zip(found[0], key)):
            found = self._steps[model] = (key, self._build(model))
        return found[1]


# Data checks: the checksum of every batch a fit feeds, taken inside its train step -----------

def with_lanes(logs: Any, key: str, lanes: Any) -> Any:
    """A step's logs with `lanes` added under `key` (logs that are no dict, or no lanes: unchanged,
    and the batch goes unchecked, which `keras_repro.fit.fed_data` reports)."""
    return {**logs, key: lanes} if isinstance(logs, dict) and lanes is not None else logs


def step_lanes(leaves: list) -> Any:
    """The checksum lanes (`keras_repro.fingerprinting.checksums`) of each array of a batch, uint32
    (len(leaves), 2), computed where the batch lives, inside the train step (here: on the host)."""
    from keras_repro.fingerprinting import checksums

    return np.array([checksums.lanes(np.asarray(leaf)) for leaf in leaves], np.uint32).reshape(-1, 2)


def lanes_to_host(pending: list) -> np.ndarray:
    """Lanes that `step_lanes` returned, brought to the host together: uint32 (n, leaves, 2)."""
    return np.stack([np.asarray(lanes) for lanes in pending]).astype(np.uint32, copy=False)


def wrap_step(step: Callable, key: str, lanes_of: Callable[[Any], Any]) -> Callable:
    """A train or test step `data -> logs` whose logs also hold, under `key`, `lanes_of(data)`."""
    def step_with_lanes(data: Any) -> Any:
        return with_lanes(step(data), key, lanes_of(data))

    return step_with_lanes


def build_with_lanes(model: Any, kind: str, key: str, take: Callable[[Any], None]) -> Callable:
    """Has Keras build the model's `kind` ("train" or "test") function anew around its step (a
    `wrap_step`), and returns it wrapped: `key` is taken out of the logs of every call and handed
    to `take` (None where the step added none), so no callback or History sees it."""
    getattr(model, f"make_{kind}_function")(force=True)
    keras_function = getattr(model, f"{kind}_function")

    def function(*args: Any) -> Any:
        logs = keras_function(*args)
        take(logs.pop(key, None) if isinstance(logs, dict) else None)
        return logs

    return function


def data_checks_gap(model: Any) -> str | None:
    """Why the model's train step cannot hand each batch's checksum over, or None."""
    return None
