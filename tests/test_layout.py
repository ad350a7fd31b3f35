"""The package's shape: small modules, no import cycle (imports inside functions count), and
backend names compared only in the backend package."""

from __future__ import annotations

import ast
import os
import re

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

PACKAGE = os.path.join(REPO, "keras_repro")
MAX_LINES = 450


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules a module imports, anywhere in it (functions included)."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` needs the submodule; a name, the package itself
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_no_module_is_longer_than_450_lines():
    long = {name: sum(1 for _ in open(path)) for name, path in _modules().items()}
    assert not {name: lines for name, lines in long.items() if lines > MAX_LINES}


def _graph() -> dict[str, set[str]]:
    """{module: modules it imports}; `keras_repro._backend` loads its backend modules by name."""
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    graph["keras_repro._backend"] |= {name for name in modules if name.startswith("keras_repro._backend.")}
    return graph


def test_no_import_cycle():
    """No two modules import each other, directly or around a loop."""
    graph = _graph()
    assert not _cycles({name: edges - {"keras_repro"} for name, edges in graph.items() if name != "keras_repro"})


def test_the_facade_is_imported_by_no_module():
    """`keras_repro/__init__.py` imports every public name; no module imports a name from it."""
    modules = _modules()
    users = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module == "keras_repro" and node.level == 0:
                users += [f"{name}: {alias.name}" for alias in node.names if f"keras_repro.{alias.name}" not in modules]
    assert not users


BACKEND_COMPARISON = re.compile(
    r"""(==|!=)\s*["'](tensorflow|jax|torch|numpy)["']|["'](tensorflow|jax|torch|numpy)["']\s*(==|!=)|backend\(\)\s*(==|!=|in\b)""")


@pytest.mark.parametrize("name", sorted(n for n in _modules() if not n.startswith("keras_repro._backend")))
def test_backend_names_are_compared_only_in_the_backend_package(name):
    source = open(_modules()[name]).read()
    assert not BACKEND_COMPARISON.search(source), BACKEND_COMPARISON.search(source).group(0)


def test_the_package_shows_its_architecture():
    """At most 16 modules directly in keras_repro/, and the rest in subpackages (at least three
    besides the backend's): fit, fingerprinting, store, tools."""
    top = [name for name in os.listdir(PACKAGE) if name.endswith(".py")]
    packages = [name for name in os.listdir(PACKAGE)
                if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")) and name != "_backend"]
    assert len(top) <= 16, sorted(top)
    assert len(packages) >= 3, packages


def test_the_pytest_plugin_imports_nothing_heavy():
    """The pytest11 plugin loads in every pytest session of an environment with keras_repro
    installed: at import it needs pytest and the standard library only (keras_repro, Keras and
    NumPy are imported inside the fixtures)."""
    import configparser
    import sys

    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    declared = config["options.entry_points"]["pytest11"].strip()
    assert declared == "keras_repro = keras_repro_pytest"
    tree = ast.parse(open(os.path.join(REPO, "keras_repro_pytest.py")).read())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top_level - {"__future__", "pytest"} <= set(sys.stdlib_module_names), top_level
