"""pytest plugin that runs Keras' own test files with keras_repro's classes substituted.

Loaded by `run.py` into a pytest process started in the folder the test files were extracted
to (`-p plugin`, with this folder on PYTHONPATH). What it does is set by the environment:

* `KERAS_SUITE_SIDE`: "plain" runs the files as Keras ships them; "substituted" gives every
  extracted test module a `__builtins__` whose `__import__` hands it, in place of `keras`,
  `keras.models`, `keras.src`, `keras.src.models`, `keras.src.models.model` and
  `keras.src.models.sequential`, read-only views of those modules in which `Model` is
  `kr.DeterministicModel` and `Sequential` is `kr.DeterministicSequential` (everything else,
  `Functional` included, is Keras' own object). The substitution happens where the test code
  reads the names, at every import it runs (module level or inside a test); Keras' own modules
  are not touched, since they read their `Model` global themselves. A model built without a
  seed gets `SEED` (a harness default in `DeterministicModel.__init__`, the one change made to
  keras_repro here); a model rebuilt from a saved config keeps the seed it saved.
* `KERAS_SUITE_REPORT`: a JSON file that receives {node id: outcome, ...} and the first line of
  each failure.
* `KERAS_SUITE_DESELECT`: a JSON file listing node ids not to run (the recorded plain failures).

It also stands in for the `conftest.py` of Keras' repository, which the sdist does not ship:
it registers Keras' markers and imports torch first, as that file does.
"""

from __future__ import annotations

import builtins
import importlib.abc
import json
import os
import sys
import types

import pytest

SEED = 1337
"""The seed given to a model a test builds without one."""

SIDE = os.environ.get("KERAS_SUITE_SIDE", "plain")
ROOT = os.path.realpath(os.environ.get("KERAS_SUITE_ROOT", os.getcwd()))
"""The folder the test files were extracted to: only modules loaded from it are substituted."""

SUBSTITUTED_MODULES = (
    "keras", "keras.models", "keras.src", "keras.src.models", "keras.src.models.model",
    "keras.src.models.sequential",
)
"""The modules whose `Model` / `Sequential` (or whose submodules' ones) a test module sees
substituted."""

_outcomes: dict[str, str] = {}
_messages: dict[str, str] = {}
_built: dict[str, int] = {}
"""{class name: how many models of it were built}: proof that the substitution took effect."""


class _View(types.ModuleType):
    """A read-only view of a module: its attributes, with Keras' `Model` and `Sequential`, and
    the views of substituted submodules, in place of Keras' own."""

    def __init__(self, module: types.ModuleType, replacements: dict) -> None:
        super().__init__(module.__name__, module.__doc__)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_replacements", replacements)

    def __getattr__(self, name: str):
        value = getattr(object.__getattribute__(self, "_module"), name)
        return _replace(value, object.__getattribute__(self, "_replacements"))

    def __dir__(self):
        return dir(object.__getattribute__(self, "_module"))

    def __repr__(self) -> str:
        return f"<substituted view of {object.__getattribute__(self, '_module')!r}>"


def _replace(value, replacements: dict):
    """`value`, or what a test module sees in its place."""
    try:
        return replacements.get(id(value), (None, value))[1]
    except TypeError:
        return value


def _replacements() -> dict:
    """{id(Keras object): (object, replacement)}: the classes and the views of the modules."""
    import keras

    import keras_repro as kr

    replacements = {
        id(keras.Model): (keras.Model, kr.DeterministicModel),
        id(keras.Sequential): (keras.Sequential, kr.DeterministicSequential),
    }
    for name in sorted(SUBSTITUTED_MODULES, key=lambda n: -n.count(".")):  # submodules' views first
        module = importlib.import_module(name)
        replacements[id(module)] = (module, _View(module, replacements))
    return replacements


def _substituted_builtins(replacements: dict) -> dict:
    """A copy of `builtins` whose `__import__` returns views in place of substituted modules."""
    real_import = builtins.__import__

    def __import__(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 - the builtin's signature
        return _replace(real_import(name, globals, locals, fromlist, level), replacements)

    namespace = dict(vars(builtins))
    namespace["__import__"] = __import__
    return namespace


class _Loader(importlib.abc.Loader):
    """Wraps the loader of an extracted test module: the module starts with the substituted
    `__builtins__`, so every import statement in it (at module level or in a function) goes
    through the substituted `__import__`; pytest's own loader then executes it."""

    def __init__(self, loader, namespace: dict) -> None:
        self._loader, self._namespace = loader, namespace

    def create_module(self, spec):
        module = self._loader.create_module(spec) or types.ModuleType(spec.name)
        module.__builtins__ = self._namespace
        return module

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds extracted test modules with the other finders and wraps their loader."""

    def __init__(self, namespace: dict) -> None:
        self._namespace = namespace

    def find_spec(self, fullname, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        origin = os.path.realpath(spec.origin or "")
        if spec.loader is None or not origin.startswith(ROOT + os.sep):
            return None  # not a test file: the next finders find it again as usual
        spec.loader = _Loader(spec.loader, self._namespace)
        return spec


def _default_seed() -> None:
    """Gives a model built without a seed the harness's SEED (not one rebuilt from a config or
    cloned by `clone_model`: those take the seed of the model they come from)."""
    import keras_repro as kr
    from keras_repro.fit import model_forms

    original = kr.DeterministicModel.__init__

    def __init__(self, *args, seed=None, **kwargs):
        if (seed is None and model_forms.restoring_arguments() is None
                and model_forms.model_being_cloned(kr.DeterministicModel) is None):
            seed = SEED
        _built[type(self).__name__] = _built.get(type(self).__name__, 0) + 1
        original(self, *args, seed=seed, **kwargs)

    kr.DeterministicModel.__init__ = __init__


def pytest_configure(config) -> None:
    try:  # as Keras' conftest.py: torch before tensorflow, or importing both can crash
        import torch  # noqa: F401
    except ImportError:
        pass
    config.addinivalue_line("markers", "requires_trainable_backend: mark test for trainable backend only")
    config.addinivalue_line("markers", "multi_device: mark test for running with multiple devices only")
    if SIDE == "substituted":
        _default_seed()
        sys.meta_path.insert(0, _Finder(_substituted_builtins(_replacements())))
    elif SIDE != "plain":
        raise pytest.UsageError(f"KERAS_SUITE_SIDE must be 'plain' or 'substituted'. Received: KERAS_SUITE_SIDE={SIDE!r}")


def pytest_collection_modifyitems(config, items) -> None:
    deselect_path = os.environ.get("KERAS_SUITE_DESELECT")
    deselect = set(json.load(open(deselect_path))) if deselect_path else set()
    kept, dropped = [], []
    multi_device = pytest.mark.skip(reason="Requires multiple devices")
    for item in items:
        (dropped if item.nodeid in deselect else kept).append(item)
        if "multi_device" in item.keywords:
            item.add_marker(multi_device)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_logreport(report) -> None:
    if report.failed:
        if _outcomes.get(report.nodeid) != "failed":
            _messages[report.nodeid] = _first_line(report)
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "passed"


def _first_line(report) -> str:
    """The exception line of a failure, short."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return " ".join(text.split())[:300]


def pytest_sessionfinish(session) -> None:
    path = os.environ.get("KERAS_SUITE_REPORT")
    if path:
        with open(path, "w") as file:
            json.dump({"side": SIDE, "outcomes": _outcomes, "messages": _messages, "built": _built}, file, indent=1, sort_keys=True)
