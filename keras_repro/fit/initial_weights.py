"""Initial weights drawn from a seed: re-drawing layers that were built before their model
(the functional and Sequential forms), and which layers keep the weights they hold.

A layer is re-drawn the first way that works:

1. rebuilt from its config (`from_config` + `build_from_config`) after seeding every RNG from
   (seed, position), its fresh weights copied in;
2. when its config does not rebuild it (a custom `__init__` without the config's arguments, no
   `from_config`, other weights once rebuilt): its sublayers each re-drawn the same way, and its
   own variables re-drawn by their initializers, found as the layer's `<variable>_initializer`
   attribute (as Keras' layers keep them), seeded from (seed, position, variable position);
3. a variable with no initializer to re-run (an initializer passed inline to `add_weight`, a
   quantized kernel) keeps the value drawn when the layer was built. That is said in a warning
   naming the layer and in the run's notes (`FingerprintLog.notes["initial_weights"]`); the
   initial fingerprint holds the weights as they are.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_repro.errors import ReproWarning, warn
from keras_repro.seeding import seed_everything, seed_for


def redraw_layer(layer: Any, seed: int, index: int, quiet: bool = False) -> str | None:
    """Re-draws one layer's weights from the seed and its position (see the module docstring).

    Initializers given an explicit seed keep it. `quiet`: no warning (weights about to be loaded).

    Returns:
        None when every weight was re-drawn from the seed, else a note saying which were not
        and how they were drawn (also given as a `ReproWarning`).
    """
    kept: list[str] = []
    _redraw(layer, seed, (index,), kept)
    if not kept:
        return None
    note = (
        f"'{layer.name}' ({type(layer).__name__}): {', '.join(kept)} kept as drawn when the layer was "
        "built (not rebuilt from its config, and no initializer to re-run)"
    )
    if not quiet:
        warn(
            f"DeterministicModel could not re-draw every weight of layer {note}, so those depend on the "
            "random state when the layer was built, not on the model's seed. Build the layer after "
            "kr.seed_everything(seed), give it a get_config() that rebuilds it, or create it in a "
            "DeterministicModel subclass after super().__init__(seed=...).",
            ReproWarning,
        )
    return note


def _redraw(layer: Any, seed: int, path: tuple[int, ...], kept: list[str]) -> None:
    """Re-draws `layer` from its config, else its sublayers and own variables; appends what it
    could not re-draw to `kept`."""
    if _redraw_from_config(layer, seed, path):
        return
    sublayers = [sub for sub in layer._flatten_layers(include_self=False, recursive=False) if sub.weights]
    for position, sublayer in enumerate(sublayers):
        _redraw(sublayer, seed, path + (position,), kept)
    for position, variable in enumerate(_own_weights(layer)):
        initializer = _initializer_of(layer, variable)
        if initializer is None:
            kept.append(f"{variable.path}")
            continue
        value = _reseeded(initializer, seed_for(seed, "init-variable", *path, position))(
            tuple(variable.shape), dtype=variable.dtype
        )
        variable.assign(value)


def _redraw_from_config(layer: Any, seed: int, path: tuple[int, ...]) -> bool:
    """Rebuilds the layer from its config after seeding from (seed, path) and copies the fresh
    weights in; False when the config does not rebuild it with the same weights."""
    try:
        build_config = layer.get_build_config()
        seed_everything(seed_for(seed, "init", *path))
        twin = layer.__class__.from_config(layer.get_config())
        if build_config:
            twin.build_from_config(build_config)
    except Exception:  # noqa: BLE001 - any layer may fail: then it is re-drawn part by part
        return False
    signature = [(tuple(w.shape), w.dtype) for w in layer.weights]
    if [(tuple(w.shape), w.dtype) for w in twin.weights] != signature:
        return False
    for target, source in zip(layer.weights, twin.weights):
        target.assign(source)
    return True


def _own_weights(layer: Any) -> list:
    """The weights a layer holds itself, not through a sublayer."""
    inner = {id(w) for sub in layer._flatten_layers(include_self=False, recursive=False) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def _initializer_of(layer: Any, variable: Any) -> Any:
    """The initializer a layer keeps for a float variable (`kernel` -> `kernel_initializer`),
    or None."""
    initializer = getattr(layer, f"{variable.name}_initializer", None)
    floating = "float" in str(variable.dtype)
    return initializer if floating and isinstance(initializer, keras.initializers.Initializer) else None


def _reseeded(initializer: Any, seed: int) -> Any:
    """The initializer with `seed` when it is random and was not given a seed, else itself."""
    config = initializer.get_config()
    if "seed" not in config or config["seed"] is not None:
        return initializer
    return type(initializer).from_config({**config, "seed": seed})


def reinitialize_weights(model: keras.Model, seed: int) -> int:
    """Re-draws every top-level layer's weights from its initializers, seeded from (seed,
    layer position), as a `DeterministicModel` does when it is created; returns how many
    layers were re-drawn.

    Example:

    >>> reinitialize_weights(model, seed=7)   # doctest: +SKIP
    3
    """
    count = 0
    for index, layer in enumerate(model.layers):
        if layer.weights:
            redraw_layer(layer, seed, index)
            count += 1
    return count


def keep_names(keep_weights: Any) -> bool | tuple[str, ...] | None:
    """`keep_weights` as None, True (every layer) or a tuple of layer names."""
    if keep_weights is None or keep_weights is True:
        return keep_weights
    if keep_weights is False:
        return ()
    if isinstance(keep_weights, (str, keras.layers.Layer)):
        keep_weights = [keep_weights]
    try:
        items = list(keep_weights)
    except TypeError:
        items = None
    if items is None or not all(isinstance(item, (str, keras.layers.Layer)) for item in items):
        raise ValueError(
            "`keep_weights` must be None (re-draw every layer from the seed), True (keep every "
            "layer's weights) or a list of layers or layer names whose weights to keep. "
            f"Received: keep_weights={keep_weights!r}"
        )
    return tuple(item if isinstance(item, str) else item.name for item in items)
