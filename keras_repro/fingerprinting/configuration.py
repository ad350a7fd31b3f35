"""The configuration of a fit, recorded with its fingerprints, and how two configurations differ.

A reference keeps, besides the fingerprints, the settings that decide what training
computes, so that a mismatch is explained by what actually differs (`keras_repro.fingerprinting.diagnosis`)
rather than guessed from where it shows. It is a flat mapping {key: text}, stored as the
attributes of the file's `/config` group and collected once per fit, before its first step
(`FitContext.configuration`). Files written before keras_repro recorded it have none:
`FingerprintLog.config` is None there ("not recorded"), and nothing is compared.

Keys, in the order their differences are named:

    model.seed        the DeterministicModel's seed ("none" for another model)
    input             the training input: "arrays: x float32 (64, 6); y int32 (64,)",
                      "tf.data.Dataset", "generator", "PyDataset (Frames)", ... or "not known"
    input.ordered_by  who orders its rows: "keras_repro" (arrays passed to a DeterministicModel),
                      "the input" (a dataset or generator passed to one) or "Keras" (another model)
    batch_size        rows per batch    (array inputs of a DeterministicModel)
    shuffle           fit(shuffle=...)  (likewise)
    validation_split  the fraction held out and validation_split_mode, e.g. "0.25 (last)"
    steps             training steps per epoch, as Keras counts them ("unknown" when it does not)
    model.class       the model's class
    model.digest      SHA-256 of the model's structure: each layer's class, configuration and
                      weight shapes, in order (layer names left out: Keras numbers them per process)
    model.layers      the number of layers
    model.layer.NNNN  one layer as JSON: class, name, configuration items (as short text),
                      weight shapes and the SHA-256 of the whole layer entry
    optimizer         as JSON: class, configuration items and their SHA-256 (learning rate apart)
    learning_rate     the optimizer's learning rate when the fit starts, or its schedule
    loss, loss_weights, jit_compile   as compiled
    reset_layer_rng   SeedCallback's reset_layer_rng

A reference extended by a later fit keeps the configuration of the fit that started it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ORDERED_BY_KERAS_REPRO, ORDERED_BY_INPUT, ORDERED_BY_KERAS = "keras_repro", "the input", "Keras"

ORDER = (
    "model.seed", "input", "input.ordered_by", "batch_size", "shuffle", "validation_split", "steps",
    "model.class", "model.digest", "optimizer", "learning_rate", "loss", "loss_weights", "jit_compile",
    "reset_layer_rng",
)
"""Keys in the order their differences are named: what the user passes to `fit` first (the
data and how it is cut into batches), then the model, then how it is compiled."""

LABELS = {
    "model.seed": "the model's seed", "input": "input", "input.ordered_by": "input ordered by",
    "batch_size": "batch size", "validation_split": "validation split", "steps": "steps per epoch",
    "model.class": "model class", "learning_rate": "learning rate", "loss_weights": "loss weights",
    "reset_layer_rng": "SeedCallback reset_layer_rng",
}

MAX_TEXT = 120
"""Characters kept of one configuration value's text (the digests cover the whole value)."""


# Collecting --------------------------------------------------------------------------------

def array_input(
    arrays: Sequence[tuple[str, np.ndarray]], batch_size: int, shuffle: Any, validation_split: float,
    split_mode: str, validation_data_given: bool,
) -> dict[str, str]:
    """The settings of a DeterministicModel fit on arrays ((name, array) pairs: "x", "y"...).

    Example:

    >>> array_input([("x", np.zeros((4, 2), "float32"))], 32, True, 0.0, "last", False)["input"]
    'arrays: x float32 (4, 2)'
    """
    split = f"{validation_split:g} ({split_mode})" if validation_split and not validation_data_given else "0"
    described = "; ".join(f"{name} {array.dtype.name} {tuple(int(d) for d in array.shape)}" for name, array in arrays)
    return {"input": _short(f"arrays: {described}", 4 * MAX_TEXT), "input.ordered_by": ORDERED_BY_KERAS_REPRO,
            "batch_size": str(int(batch_size)), "shuffle": str(shuffle), "validation_split": split}


def other_input(x: Any) -> dict[str, str]:
    """The settings of a DeterministicModel fit on an input it does not order (a dataset,
    a generator): its kind, by duck typing (no framework is imported)."""
    bases = {cls.__name__ for cls in type(x).__mro__}
    if hasattr(x, "element_spec"):
        kind = "tf.data.Dataset"
    elif "PyDataset" in bases:
        kind = f"PyDataset ({type(x).__name__})"
    elif "DataLoader" in bases:
        kind = f"DataLoader ({type(x).__name__})"
    elif inspect.isgenerator(x) or (hasattr(x, "__next__") and hasattr(x, "__iter__")):
        kind = "generator"
    else:
        kind = type(x).__name__
    return {"input": kind, "input.ordered_by": ORDERED_BY_INPUT}


def collect(model: Any, params: Mapping[str, Any] | None, settings: Mapping[str, str], reset_layer_rng: bool) -> dict[str, str]:
    """The configuration of a fit about to start its first step.

    Args:
        model: The built, compiled model.
        params: The fit's `Callback.params` (its `steps`).
        settings: What the fit's caller knows (`array_input`, `other_input`); empty for a
            model that is not a DeterministicModel.
        reset_layer_rng: SeedCallback's setting.
    """
    seed = getattr(model, "_repro_seed", None)
    config = {"model.seed": str(seed) if seed is not None else "none"}
    config.update(settings or {"input": "not known (the model is not a DeterministicModel)",
                               "input.ordered_by": ORDERED_BY_KERAS})
    steps = (params or {}).get("steps")
    config["steps"] = str(steps) if steps is not None else "unknown"
    config.update(model_structure(model))
    config.update(compile_settings(model))
    config["reset_layer_rng"] = str(bool(reset_layer_rng))
    return config


def model_structure(model: Any) -> dict[str, str]:
    """model.class, model.digest, model.layers and one model.layer.NNNN entry per layer."""
    import keras

    entries = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        container = isinstance(layer, keras.Model)  # its layers are listed one by one
        entries.append(_layer_entry(layer, container))
    structure = {"model.class": type(model).__name__, "model.layers": str(len(entries)),
                 "model.digest": _digest([entry["digest"] for entry in entries])}
    structure.update({f"model.layer.{index:04d}": json.dumps(entry) for index, entry in enumerate(entries)})
    return structure


def _layer_entry(layer: Any, container: bool) -> dict[str, Any]:
    """One layer: class, name, configuration items as text, weight shapes, digest."""
    config: dict[str, Any] = {}
    if not container:
        try:
            config = _normalized(layer.get_config())
        except Exception:  # noqa: BLE001 - a layer Keras accepts may not serialize; its class and weights remain
            config = {}
    weights = [] if container else ["x".join(str(int(d)) for d in w.shape) or "scalar" for w in layer.weights]
    digest = _digest({"class": type(layer).__name__, "config": config, "weights": weights})
    return {"class": type(layer).__name__, "name": getattr(layer, "name", ""),
            "config": {key: _text(value) for key, value in config.items()}, "weights": weights, "digest": digest}


def compile_settings(model: Any) -> dict[str, str]:
    """optimizer, learning_rate, loss, loss_weights and jit_compile, as compiled."""
    settings: dict[str, str] = {}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        try:
            config = dict(optimizer.get_config())
        except Exception:  # noqa: BLE001 - a custom optimizer without a config: its class remains
            config = {}
        inner = config.get("inner_optimizer")  # LossScaleOptimizer: the rate is the inner optimizer's
        if isinstance(inner, Mapping) and isinstance(inner.get("config"), Mapping):
            inner = config["inner_optimizer"] = {**inner, "config": dict(inner["config"])}
            rate = inner["config"].pop("learning_rate", None)
        else:
            rate = config.pop("learning_rate", None)
        config = _normalized(config)
        settings["optimizer"] = json.dumps({"class": type(optimizer).__name__,
                                            "config": {key: _text(value) for key, value in config.items()},
                                            "digest": _digest(config)})
        settings["learning_rate"] = _text(_normalized(rate))
    for name in ("loss", "loss_weights"):
        value = getattr(model, name, None)
        if value is not None:
            settings[name] = _text(_normalized(_serialized(value)))
    settings["jit_compile"] = str(getattr(model, "jit_compile", None))
    return settings


def _serialized(value: Any) -> Any:
    """A Keras object's serialized form (a loss object, a function), else the value."""
    if isinstance(value, (str, int, float, list, tuple, dict)) or value is None:
        return value
    try:
        import keras

        return keras.saving.serialize_keras_object(value)
    except Exception:  # noqa: BLE001 - not serializable: its type names it
        return type(value).__name__


def _normalized(value: Any, strip_names: bool = True) -> Any:
    """`value` as plain JSON data, without the names Keras numbers per process ("dense_3")
    but with those that are settings (a dtype policy's "float32")."""
    if isinstance(value, Mapping):
        if "class_name" in value and "config" in value:
            keep = "Policy" in str(value["class_name"])
            return {str(k): _normalized(v, not keep) if k == "config" else _normalized(v) for k, v in value.items()
                    if k not in ("registered_name", "build_config", "compile_config")}
        return {str(k): _normalized(v) for k, v in value.items() if not (strip_names and k == "name")}
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _repr(value)


def _repr(value: Any) -> str:
    """`repr(value)` without memory addresses ("<function f at 0x7f...>"), which differ between
    processes while the object does not."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _digest(value: Any) -> str:
    """SHA-256 of JSON data, keys sorted."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_repr).encode()).hexdigest()


def _text(value: Any) -> str:
    """A short readable text of normalized configuration data."""
    if isinstance(value, Mapping) and "class_name" in value:
        inner = value.get("config")
        if isinstance(inner, Mapping):
            items = _joined(f"{k}={_text(v)}" for k, v in inner.items() if v is not None)
            return _short(f"{value['class_name']}({items})")
        return _short(f"{value['class_name']}({inner})" if inner is not None else str(value["class_name"]))
    if isinstance(value, Mapping):
        return _short("{" + _joined(f"{k}: {_text(v)}" for k, v in value.items()) + "}")
    if isinstance(value, list):
        return _short("[" + _joined(_text(v) for v in value) + "]")
    if isinstance(value, float):
        return float_text(value)
    return _short(str(value))


def float_text(value: float) -> str:
    """The shortest text of a float; a float32 value as float32 prints it (0.001, not
    0.0010000000474974513)."""
    single = np.float32(value)
    return str(single) if float(single) == value and np.isfinite(single) else repr(value)


def _joined(texts: Iterable[str]) -> str:
    """Texts joined by ", ", stopped once longer than `MAX_TEXT` (a long list is not written out)."""
    joined = ""
    for text in texts:
        joined = f"{joined}, {text}" if joined else text
        if len(joined) > MAX_TEXT:
            break
    return joined


def _short(text: str, limit: int = MAX_TEXT) -> str:
    """`text`, cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Comparing ---------------------------------------------------------------------------------

def differences(reference: Mapping[str, str], current: Mapping[str, str], learning_rate: bool = True) -> list[tuple[str, str]]:
    """(key, text) of every setting that differs, in `ORDER` (then any other key), the text
    saying how ("batch size: 16 in the reference, 32 in this run").

    Args:
        reference: The reference's configuration.
        current: This run's.
        learning_rate: Compare the learning rate at the fit's start (False for a fit that
            starts later than the reference: callbacks may have changed it since).

    Example:

    >>> differences({"batch_size": "16"}, {"batch_size": "32"})
    [('batch_size', 'batch size: 16 in the reference, 32 in this run')]
    """
    others = sorted((set(reference) | set(current)) - set(ORDER) - {"model.layers"})
    found = []
    for key in list(ORDER) + [k for k in others if not k.startswith("model.layer.")]:
        before, after = reference.get(key), current.get(key)
        if before == after or (key == "learning_rate" and not learning_rate):
            continue
        if key == "input.ordered_by" and reference.get("input") != current.get("input"):
            continue  # the input's own difference says it
        if key == "model.digest":
            found.append((key, f"model: {model_difference(reference, current)}"))
        elif key == "optimizer" and before and after:
            found.append((key, f"optimizer: {_entry_difference(json.loads(before), json.loads(after))}"))
        else:
            found.append((key, f"{LABELS.get(key, key)}: {_value(before)} in the reference, {_value(after)} in this run"))
    return found


def _value(text: str | None) -> str:
    """A recorded value, or "(not recorded)"."""
    return "(not recorded)" if text is None else text


def layers(config: Mapping[str, str]) -> list[dict[str, Any]]:
    """The model.layer.NNNN entries of a configuration, in order."""
    keys = sorted(key for key in config if key.startswith("model.layer."))
    return [json.loads(config[key]) for key in keys]


def model_difference(reference: Mapping[str, str], current: Mapping[str, str]) -> str:
    """Which layer of the model differs first, and how.

    Example:

    >>> dense = lambda units: json.dumps({"class": "Dense", "name": "dense", "config": {"units": units},
    ...                                    "weights": [], "digest": units})
    >>> model_difference({"model.layer.0000": dense("8")}, {"model.layer.0000": dense("16")})
    "layer 0 ('dense', Dense): units 8 in the reference, 16 in this run"
    """
    mine, theirs = layers(reference), layers(current)
    for index, (before, after) in enumerate(zip(mine, theirs)):
        if before.get("digest") != after.get("digest"):
            return f"layer {index} {_layer_name(before)}: {_entry_difference(before, after)}"
    if len(mine) != len(theirs):
        longer, whose = (mine, "the reference's") if len(mine) > len(theirs) else (theirs, "this run's")
        extra = longer[min(len(mine), len(theirs))]
        return (f"the reference's model has {len(mine)} layers, this run's {len(theirs)}; the first only in "
                f"{whose} is layer {min(len(mine), len(theirs))} {_layer_name(extra)}")
    return "its structure differs (the reference records no layer that differs)"


def _layer_name(entry: Mapping[str, Any]) -> str:
    """ "('dense_1', Dense)"."""
    return f"('{entry.get('name', '?')}', {entry.get('class', '?')})"


def _entry_difference(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """How two layer or optimizer entries differ: class, configuration items, weights."""
    if before.get("class") != after.get("class"):
        return f"{before.get('class')} in the reference, {after.get('class')} in this run"
    items = _item_differences(before.get("config", {}), after.get("config", {}))
    if before.get("weights", []) != after.get("weights", []):
        items.append(f"weights ({', '.join(before.get('weights', []))}) in the reference, "
                     f"({', '.join(after.get('weights', []))}) in this run")
    if not items:
        return "its configuration differs beyond the recorded summary"
    return f"{'; '.join(items[:3])}" + (f" (and {len(items) - 3} more)" if len(items) > 3 else "")


def _item_differences(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """ "units 8 in the reference, 16 in this run" for every item that differs."""
    keys: Iterable[str] = list(before) + [key for key in after if key not in before]
    return [f"{key} {_value(before.get(key))} in the reference, {_value(after.get(key))} in this run"
            for key in keys if before.get(key) != after.get(key)]
