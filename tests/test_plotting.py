"""Tests for keras_repro.plotting, on comparisons of hand-made fingerprints."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from keras_repro.fingerprinting.compare import Comparison  # noqa: E402
from keras_repro.fingerprinting.digests import VariableDigest, make_fingerprint  # noqa: E402
from keras_repro.plotting import (  # noqa: E402
    STATUS_COLORS,
    model_prefix,
    plot_drift,
    plot_heatmap,
    plot_metrics,
    short_name,
)
from keras_repro.store.log import FingerprintLog  # noqa: E402

pytestmark = pytest.mark.unit

KERNEL, BIAS, ITERATION = "net/dense/kernel", "net/dense/bias", "adam/iteration"


@pytest.fixture(autouse=True)
def close_figures():
    """Every test starts and ends without open figures."""
    plt.close("all")
    yield
    plt.close("all")


def _fingerprint(epoch, kernel=1.0, bias=1.0, loss=1.0):
    """A fingerprint with a kernel, a bias and an iteration counter; values scale the summaries."""
    records = [
        VariableDigest(KERNEL, "trainable", "float32", (2,), _digest(kernel), _stats(kernel)),
        VariableDigest(BIAS, "trainable", "float32", (2,), _digest(bias), _stats(bias)),
        VariableDigest(ITERATION, "optimizer", "int64", (), _digest(epoch + 1.0), _stats(epoch + 1.0)),
    ]
    return make_fingerprint(records, epoch, {"loss": loss / (epoch + 1), "accuracy": 0.5})


def _digest(value):
    return f"{int(round(value * 1e9)):064d}"


def _stats(value):
    return (10.0 * value, 5.0 * value, -1.0 * value, 2.0 * value, 0.0, 0.0)


def _runs():
    """A reference and a run whose bias diverges at epoch 1 and whose kernel drifts
    slightly (within rtol=1e-3) at epoch 2."""
    reference = FingerprintLog(_fingerprint(0), (_fingerprint(0), _fingerprint(1), _fingerprint(2)), path="/x/a.h5")
    other = FingerprintLog(
        _fingerprint(0),
        (_fingerprint(0), _fingerprint(1, bias=1.5, loss=1.2), _fingerprint(2, kernel=1.0001, bias=1.5, loss=1.2)),
        path="/x/b.h5",
    )
    return reference, other


def test_heatmap_grid_and_colours():
    """3 variables x (start + 3 epochs); the diverged cell is red, identical ones green."""
    reference, other = _runs()
    ax = plot_heatmap(reference.compare(other, rtol=1e-3))
    image = ax.images[0]
    codes = image.get_array()
    assert codes.shape == (3, 4)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["start", "0", "1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "trainable: dense/kernel", "trainable: dense/bias", "optimizer: adam/iteration"
    ]
    assert codes[1, 2] == 2 and codes[0, 3] == 1 and codes[0, 0] == 0  # diverged, within tolerance, identical
    colours = image.to_rgba(codes)
    green, red = matplotlib.colors.to_rgba(STATUS_COLORS["identical"]), matplotlib.colors.to_rgba(STATUS_COLORS["diverged"])
    assert np.allclose(colours[1, 2], red) and np.allclose(colours[0, 0], green)
    assert not np.allclose(colours[1, 2], colours[0, 0])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["identical", "within tolerance", "diverged"]
    assert "diverged" in ax.get_title() and "dense/bias" in ax.get_title()


def test_heatmap_one_part_and_given_axes():
    """part= keeps one part's rows; drawing on a given Axes returns that Axes."""
    reference, other = _runs()
    _, given = plt.subplots()
    ax = plot_heatmap(reference.compare(other), ax=given, part="optimizer")
    assert ax is given
    assert ax.images[0].get_array().shape == (1, 4)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["adam/iteration"]


def test_heatmap_identical_and_empty():
    """An identical comparison is all green; an empty one says so instead of failing."""
    reference, _ = _runs()
    ax = plot_heatmap(reference.compare(reference))
    assert (ax.images[0].get_array() == 0).all()
    assert ax.get_title().startswith("identical")
    empty = plot_heatmap(Comparison(True, None))
    assert not empty.images and "no fingerprints" in empty.texts[0].get_text()


def test_heatmap_rejects_unknown_part():
    reference, other = _runs()
    with pytest.raises(ValueError, match="part"):
        plot_heatmap(reference.compare(other), part="weights")


def test_drift_lines():
    """One line (the largest difference) by default; one per differing variable on request."""
    reference, other = _runs()
    comparison = reference.compare(other, rtol=1e-3)
    ax = plot_drift(comparison)
    data_lines = [line for line in ax.lines if not line.get_label().startswith("rtol")]
    assert len(data_lines) == 1
    assert ax.get_yscale() == "log"
    ydata = np.asarray(data_lines[0].get_ydata(), dtype=float)
    assert np.isnan(ydata[:2]).all() and ydata[2] == pytest.approx(0.5) and ydata[3] == pytest.approx(0.5)
    assert any(line.get_label().startswith("rtol") for line in ax.lines)  # the tolerance line
    identical_marks = ax.collections[0].get_offsets()
    assert list(np.asarray(identical_marks)[:, 0]) == [0, 1]  # start and epoch 0: identical

    per_variable = plot_drift(comparison, per_variable=True)
    labels = sorted(line.get_label() for line in per_variable.lines if not line.get_label().startswith("rtol"))
    assert labels == ["trainable: dense/bias", "trainable: dense/kernel"]  # the iteration never differs


def test_drift_identical_and_empty():
    reference, _ = _runs()
    ax = plot_drift(reference.compare(reference))
    assert not ax.lines and len(ax.collections[0].get_offsets()) == 4
    assert plot_drift(Comparison(True, None)).texts


def test_metrics_lines_and_labels():
    reference, other = _runs()
    ax = plot_metrics(reference, other)
    assert len(ax.lines) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run 1: a.h5", "run 2: b.h5"]
    assert list(ax.lines[1].get_ydata()) == pytest.approx([1.0, 0.6, 0.4])
    assert ax.lines[0].get_linestyle() != ax.lines[1].get_linestyle()  # overlapping runs stay visible
    ax = plot_metrics(reference, metric="accuracy", labels=["ref"])
    assert ax.get_ylabel() == "accuracy" and ax.lines[0].get_label() == "ref"


def test_metrics_errors():
    reference, other = _runs()
    with pytest.raises(ValueError, match="accuracy, loss"):
        plot_metrics(reference, metric="val_loss")
    with pytest.raises(ValueError, match="one label per log"):
        plot_metrics(reference, other, labels=["only one"])
    with pytest.raises(ValueError, match="at least one"):
        plot_metrics()
    with pytest.raises(TypeError, match="FingerprintLog"):
        plot_metrics(reference.compare(other))


@pytest.mark.parametrize("plot", [plot_heatmap, plot_drift, plot_metrics])
def test_clear_error_without_matplotlib(monkeypatch, plot):
    """Without matplotlib the error names the function and the extra to install."""
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    reference, other = _runs()
    argument = reference if plot is plot_metrics else reference.compare(other)
    with pytest.raises(ImportError, match=r"needs matplotlib.*keras-repro\[notebooks\]"):
        plot(argument)


def test_label_shortening():
    """The model name shared by every layer variable is left out of labels."""
    rows = [("trainable", "net/dense/kernel", 1), ("optimizer", "adam/net_dense_kernel_momentum", 1)]
    assert model_prefix(rows) == "net"
    assert short_name("net/dense/kernel", "net") == "dense/kernel"
    assert short_name("adam/net_dense_kernel_momentum", "net") == "adam/dense_kernel_momentum"
    assert model_prefix(rows + [("trainable", "other/dense/kernel", 1)]) is None
