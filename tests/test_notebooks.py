"""The notebooks in notebooks/: committed without outputs, and they run top to bottom."""

from __future__ import annotations

import glob
import os

import pytest

from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat", reason="needs the [notebooks] extra")

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
EXPECTED = {"quickstart.ipynb", "compare_runs.ipynb", "resume.ipynb"}
CELL_TIMEOUT = 300


def _ids(paths):
    return [os.path.basename(path) for path in paths]


@pytest.mark.unit
def test_expected_notebooks_exist():
    assert EXPECTED <= set(_ids(NOTEBOOKS))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
@pytest.mark.unit
def test_committed_without_outputs(path):
    """Outputs are stripped so diffs stay readable and nothing stale is committed."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{os.path.basename(path)} cell {index} has outputs; clear them"
            assert cell.execution_count is None, f"{os.path.basename(path)} cell {index} has an execution count"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path, monkeypatch):
    """Executes every cell in a fresh python3 kernel, in a temporary working directory."""
    nbclient = pytest.importorskip("nbclient", reason="needs the [notebooks] extra")
    pytest.importorskip("ipykernel", reason="needs the [notebooks] extra")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    assert os.listdir(tmp_path), "the notebook wrote its files elsewhere than its working directory"
