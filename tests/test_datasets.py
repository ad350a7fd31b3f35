"""Tests for the bundled data and for packaging it."""

from __future__ import annotations

import shutil
import sys
import zipfile

import numpy as np
import pytest

from keras_repro.datasets import load_digits
from tests.conftest import REPO, run_child


@pytest.mark.unit
def test_digits_are_the_real_dataset():
    """1,797 8x8 images with pixels 0..16 and all ten classes, roughly balanced."""
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    counts = np.bincount(labels)
    assert len(counts) == 10 and counts.min() > 170


@pytest.mark.unit
def test_digits_match_scikit_learn():
    """The shipped copy equals scikit-learn's bundled digits (the test extra installs it)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="pip install '.[test]' installs scikit-learn")
    reference = sklearn_datasets.load_digits()
    images, labels = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


@pytest.mark.slow
def test_wheel_contains_the_data(tmp_path):
    """A plain (non-editable) build ships the data file and the console script. It builds a
    copy of the checkout: setuptools writes its build/ folder beside the sources."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*_cache"))
    run_child([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, source])
    (wheel,) = tmp_path.glob("keras_repro-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "keras-repro = keras_repro.cli:main" in archive.read(entry_points).decode()
    assert "keras_repro/data/digits.npz" in names
