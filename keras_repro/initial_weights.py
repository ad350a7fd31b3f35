"""Initial weights drawn from a seed: re-drawing layers that were built before their model
(the functional and Sequential forms), and which layers keep the weights they hold."""

from __future__ import annotations

from typing import Any

import keras

from keras_repro.errors import ReproError
from keras_repro.seeding import seed_everything, seed_for


def redraw_layer(layer: Any, seed: int, index: int) -> None:
    """Re-draws one layer's weights from its own initializers, seeded from (seed, index).

    The layer is rebuilt from its config (`from_config` + `build_from_config`) after
    seeding, and the fresh weights are copied into it, so its initial weights no longer
    depend on what was drawn before it was built. Initializers given an explicit seed
    keep it.

    Raises:
        ReproError: If the layer cannot be rebuilt from its config, or rebuilt it has
            other weights.
    """
    try:
        build_config = layer.get_build_config()
        seed_everything(seed_for(seed, "init", index))
        twin = layer.__class__.from_config(layer.get_config())
        if build_config:
            twin.build_from_config(build_config)
    except Exception as error:  # noqa: BLE001 - any layer may fail; say which, and what to do
        raise ReproError(
            f"DeterministicModel cannot re-initialize layer '{layer.name}' "
            f"({type(layer).__name__}) from its config: {error}. Give the layer a "
            "get_config() that rebuilds it, keep its weights (keep_weights=['"
            f"{layer.name}']), or subclass DeterministicModel and create the layer in __init__ "
            "after super().__init__(seed=...)."
        ) from error
    if [tuple(w.shape) for w in twin.weights] != [tuple(w.shape) for w in layer.weights]:
        raise ReproError(
            f"DeterministicModel cannot re-initialize layer '{layer.name}': rebuilt from its "
            f"config it has other weights. Keep its weights (keep_weights=['{layer.name}']), or "
            "create it in a DeterministicModel subclass instead."
        )
    for target, source in zip(layer.weights, twin.weights):
        target.assign(source)


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
