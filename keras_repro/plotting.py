"""Plots of fingerprint comparisons and runs (needs matplotlib: the `[notebooks]` extra).

* `plot_heatmap`: which variable was identical, within tolerance or diverged, epoch by epoch.
* `plot_drift`: how far two runs drifted apart, epoch by epoch (relative difference).
* `plot_metrics`: a metric (loss, accuracy...) per epoch for several runs.

Every function draws on `ax` (or on a new figure) and returns the matplotlib Axes.
matplotlib is imported only when a function is called, so importing this module
never needs it.

Example:

>>> from keras_repro.plotting import plot_heatmap       # doctest: +SKIP
>>> comparison = load_fingerprints("a.h5").compare(load_fingerprints("b.h5"))  # doctest: +SKIP
>>> ax = plot_heatmap(comparison)                        # doctest: +SKIP
>>> ax.figure.savefig("heatmap.png")                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from keras_repro._optional import require_pyplot
from keras_repro.fingerprinting.compare import (
    DIVERGED,
    IDENTICAL,
    WITHIN_TOLERANCE,
    Comparison,
    VariableComparison,
)
from keras_repro.fingerprinting.digests import PARTS
from keras_repro.store.log import FingerprintLog

logger = logging.getLogger(__name__)

STATUSES = (IDENTICAL, WITHIN_TOLERANCE, DIVERGED)
"""Heatmap statuses, in the order of their codes (0, 1, 2) in the image data."""

STATUS_LABELS = {IDENTICAL: "identical", WITHIN_TOLERANCE: "within tolerance", DIVERGED: "diverged"}

STATUS_COLORS = {IDENTICAL: "#1a9850", WITHIN_TOLERANCE: "#fdae61", DIVERGED: "#d73027"}
"""Green, amber, red (distinct in lightness too, so they survive grey-scale printing)."""

MISSING_COLOR = "#f0f0f0"
"""Cells of variables that a column does not have."""

START = "start"
"""The label of the column of the initial state (before the first step)."""

_Column = tuple[str, Any]  # ("initial", epoch) or ("epoch", epoch)
_Row = tuple[str, str, int]  # (part, variable, occurrence)
_LAYER_PARTS = ("rng", "trainable", "non_trainable")
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "x", "D", "v")


# Shared helpers ------------------------------------------------------------------------


def _check_part(part: str | None) -> None:
    """Raises ValueError for an unknown part name."""
    if part is not None and part not in PARTS:
        raise ValueError(f"`part` must be None or one of {PARTS}. Received: part={part!r}")


def _selected(comparison: Comparison, part: str | None) -> list[VariableComparison]:
    """The initial- and epoch-stage details of `comparison`, of one part if given."""
    if not isinstance(comparison, Comparison):
        raise TypeError(
            "Expected a keras_repro Comparison, e.g. `log.compare(other)`. "
            f"Received: {type(comparison).__name__}"
        )
    _check_part(part)
    return [
        d for d in comparison.details
        if d.stage in ("initial", "epoch") and (part is None or d.part == part)
    ]


def _grid(details: Sequence[VariableComparison]) -> tuple[list[_Column], list[_Row], dict[tuple[_Column, _Row], VariableComparison]]:
    """Columns (the initial state first, then epochs), rows (variables in order of first
    appearance) and the detail of every (column, row) cell."""
    columns: list[_Column] = []
    rows: list[_Row] = []
    cells: dict[tuple[_Column, _Row], VariableComparison] = {}
    seen: dict[tuple[_Column, str, str], int] = {}
    for detail in details:
        column = (detail.stage, detail.epoch)
        occurrence = seen.get((column, detail.part, detail.variable), 0) + 1
        seen[(column, detail.part, detail.variable)] = occurrence
        row = (detail.part, detail.variable, occurrence)
        if column not in columns:
            columns.append(column)
        if row not in rows:
            rows.append(row)
        cells[(column, row)] = detail
    columns.sort(key=lambda c: (c[0] != "initial", c[1] if c[1] is not None else -1))
    return columns, rows, cells


def _column_label(column: _Column) -> str:
    """ "start" for the initial state, else the epoch number."""
    return START if column[0] == "initial" else str(column[1])


def model_prefix(rows: Sequence[_Row]) -> str | None:
    """The model name every layer variable path starts with ("sequential/dense/kernel"
    -> "sequential"), or None when they do not share one."""
    firsts = {variable.split("/", 1)[0] for part, variable, _ in rows if part in _LAYER_PARTS and "/" in variable}
    layered = [variable for part, variable, _ in rows if part in _LAYER_PARTS]
    if len(firsts) != 1 or any("/" not in variable for variable in layered):
        return None
    return firsts.pop()


def short_name(variable: str, prefix: str | None) -> str:
    """`variable` without the model name `prefix`: "sequential/dense/kernel" ->
    "dense/kernel", "adam/sequential_dense_kernel_momentum" -> "adam/dense_kernel_momentum"."""
    if not prefix:
        return variable
    if variable.startswith(prefix + "/"):
        return variable[len(prefix) + 1 :]
    head, _, tail = variable.partition("/")
    if tail.startswith(prefix + "_"):
        return f"{head}/{tail[len(prefix) + 1 :]}"
    return variable


def _row_label(row: _Row, with_part: bool, prefix: str | None = None) -> str:
    """ "part: variable" (or just the variable), with "#n" for a repeated path."""
    part, variable, occurrence = row
    name = short_name(variable, prefix)
    name = name if occurrence == 1 else f"{name}#{occurrence}"
    return f"{part}: {name}" if with_part else name


def _verdict_title(comparison: Comparison, prefix: str | None = None, part: str | None = None) -> str:
    """A short summary of the comparison for plot titles, wrapped to two lines at most."""
    suffix = f" [{part}]" if part else ""
    if comparison.identical:
        return f"identical ({len(comparison.epochs_compared)} epochs compared){suffix}"
    if comparison.within_tolerance:
        return f"within tolerance (rtol={comparison.rtol:g}, atol={comparison.atol:g}){suffix}"
    found = comparison.first_divergence
    if found is None or found.stage == "missing" or found.variable is None:
        return f"diverged{suffix}" + (f"\n{found}" if found is not None else "")
    where = "initial state" if found.stage == "initial" else found.where()
    scope = " (in all parts)" if part and found.part != part else ""
    return f"diverged{suffix}\nfirst{scope} at {where}: {found.part} '{short_name(found.variable, prefix)}'"


def _new_axes(plt: Any, width: float, height: float) -> Any:
    """A new figure with one Axes, laid out so labels and legends are not clipped."""
    _, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return ax


def _empty(ax: Any, message: str) -> Any:
    """Writes `message` in the middle of an otherwise empty Axes."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


# Heatmap -------------------------------------------------------------------------------


def plot_heatmap(comparison: Comparison, ax: Any = None, part: str | None = None) -> Any:
    """Draws which variable was identical, within tolerance or diverged, at every epoch.

    One row per variable, one column per epoch (the initial state first, labelled
    "start"); each cell is green (identical), amber (within tolerance) or red
    (diverged), light grey where a column lacks the variable. The image data holds
    the status codes 0, 1, 2 (see `STATUSES`), masked where a column lacks the
    variable. When every layer variable starts with the same model name, it is left
    out of the row labels (and named in the axis label).

    Args:
        comparison: A `Comparison`, e.g. `log.compare(other, rtol=1e-3)`.
        ax: The matplotlib Axes to draw on, or None for a new figure sized to the grid.
        part: Show one part only ("data", "rng", "trainable", "non_trainable",
            "optimizer"), or None for all (row labels then start with the part).

    Returns:
        The matplotlib Axes.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If `part` is not a fingerprint part.

    Example:

    >>> ax = plot_heatmap(log.compare(other), part="trainable")  # doctest: +SKIP
    """
    plt = require_pyplot("plot_heatmap()")
    import numpy as np
    from matplotlib.colors import BoundaryNorm, ListedColormap

    columns, rows, cells = _grid(_selected(comparison, part))
    prefix = model_prefix(rows)
    labels = [_row_label(row, part is None, prefix) for row in rows]
    if ax is None:
        longest = max((len(label) for label in labels), default=10)
        ax = _new_axes(plt, 3.2 + 0.065 * longest + 0.5 * max(len(columns), 1), 1.9 + 0.24 * max(len(rows), 2))
    ax.set_title(_verdict_title(comparison, prefix, part), fontsize="medium")
    if not rows:
        return _empty(ax, "no fingerprints to compare" + (f" in part {part!r}" if part else ""))

    codes = np.full((len(rows), len(columns)), np.nan)
    for (column, row), detail in cells.items():
        if detail.status in STATUSES:
            codes[rows.index(row), columns.index(column)] = STATUSES.index(detail.status)
    cmap = ListedColormap([STATUS_COLORS[s] for s in STATUSES]).with_extremes(bad=MISSING_COLOR)
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
    ax.imshow(np.ma.masked_invalid(codes), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    _label_grid(ax, columns, rows, labels)
    ax.set_ylabel(f"variable (of '{prefix}')" if prefix else "variable")
    _status_legend(ax, missing=bool(np.isnan(codes).any()))
    return ax


def _label_grid(ax: Any, columns: list[_Column], rows: list[_Row], labels: list[str]) -> None:
    """Tick labels, white cell borders and a dark line between parts."""
    ax.set_xticks(range(len(columns)), [_column_label(c) for c in columns])
    ax.set_yticks(range(len(rows)), labels, fontsize="small" if len(rows) <= 30 else "x-small")
    ax.set_xlabel("epoch")
    ax.set_xticks([x - 0.5 for x in range(1, len(columns))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(rows))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="both", length=0)
    for index in range(1, len(rows)):
        if rows[index][0] != rows[index - 1][0]:
            ax.axhline(index - 0.5, color="0.15", linewidth=1.5)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _status_legend(ax: Any, missing: bool) -> None:
    """A legend of the three statuses (and "not in this epoch"), right of the grid."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=STATUS_COLORS[s], label=STATUS_LABELS[s]) for s in STATUSES]
    if missing:
        handles.append(Patch(facecolor=MISSING_COLOR, edgecolor="0.7", label="not in this epoch"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              fontsize="small", title="status", title_fontsize="small", alignment="left")


# Drift ---------------------------------------------------------------------------------


def plot_drift(comparison: Comparison, ax: Any = None, per_variable: bool = False, part: str | None = None) -> Any:
    """Draws how far two runs drifted apart: the relative difference per epoch.

    The relative difference of a variable is the largest relative difference of its
    float summaries (sum, L2 norm, min, max), as in `VariableComparison`. The y axis
    is logarithmic; epochs where every variable is identical (difference 0) are
    marked at the bottom, differences that cannot be measured (a changed shape, a
    NaN count, a data-order record) at the top. With a tolerance, `rtol` is drawn
    as a dashed line.

    Args:
        comparison: A `Comparison`, e.g. `log.compare(other)`.
        ax: The matplotlib Axes to draw on, or None for a new figure.
        per_variable: False: one line, the largest difference over the variables.
            True: one line per variable that differs at some epoch (variables
            identical throughout have nothing to draw on a log scale).
        part: Only this part ("trainable", "optimizer"...), or None for all.

    Returns:
        The matplotlib Axes.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If `part` is not a fingerprint part.

    Example:

    >>> ax = plot_drift(log.compare(other), per_variable=True)  # doctest: +SKIP
    """
    plt = require_pyplot("plot_drift()")
    columns, rows, cells = _grid(_selected(comparison, part))
    prefix = model_prefix(rows)
    if ax is None:
        ax = _new_axes(plt, 10.0 if per_variable else 6.5, 4.2)
    ax.set_title(_verdict_title(comparison, prefix, part), fontsize="medium")
    if not rows:
        return _empty(ax, "no fingerprints to compare" + (f" in part {part!r}" if part else ""))

    positions = list(range(len(columns)))
    worst = [max((cells[(c, r)].relative_difference for r in rows if (c, r) in cells), default=0.0) for c in columns]
    if per_variable:
        drawn = 0
        for row in rows:
            values = [cells[(c, row)].relative_difference if (c, row) in cells else 0.0 for c in columns]
            if any(_drawable(v) for v in values):
                ax.plot(positions, [v if _drawable(v) else math.nan for v in values], marker="o",
                        markersize=3, linewidth=1.2, color=f"C{drawn % 10}",
                        linestyle=_LINESTYLES[(drawn // 10) % len(_LINESTYLES)],
                        label=_row_label(row, part is None, prefix))
                drawn += 1
    elif any(_drawable(v) for v in worst):
        ax.plot(positions, [v if _drawable(v) else math.nan for v in worst], marker="o",
                color=STATUS_COLORS[DIVERGED], label="largest over variables")
    _mark_extremes(ax, positions, worst)
    if comparison.rtol > 0:
        ax.axhline(comparison.rtol, color="0.3", linestyle="--", linewidth=1, label=f"rtol = {comparison.rtol:g}")
    _finish_drift_axes(ax, columns, per_variable)
    return ax


def _drawable(value: float) -> bool:
    """Whether a relative difference can be drawn on a log axis."""
    return value > 0 and math.isfinite(value)


def _mark_extremes(ax: Any, positions: list[int], worst: list[float]) -> None:
    """Markers at the bottom for identical epochs and at the top for unmeasurable ones."""
    transform = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    same = [x for x, v in zip(positions, worst) if v == 0]
    unmeasurable = [x for x, v in zip(positions, worst) if math.isinf(v)]
    if same:
        ax.scatter(same, [0.04] * len(same), transform=transform, marker="s", s=40, clip_on=False,
                   color=STATUS_COLORS[IDENTICAL], label="identical (difference 0)", zorder=3)
    if unmeasurable:
        ax.scatter(unmeasurable, [0.96] * len(unmeasurable), transform=transform, marker="^", s=40,
                   clip_on=False, color="black", label="not measurable (e.g. shape, data order)", zorder=3)


def _finish_drift_axes(ax: Any, columns: list[_Column], per_variable: bool) -> None:
    """Log scale, labels and a legend that stays readable with many lines."""
    ax.set_yscale("log")
    ys = [y for line in ax.lines for y in line.get_ydata() if _drawable(float(y))]
    if ys:
        low, high = min(ys), max(ys)
        ax.set_ylim(low / 10, high * 10)
    else:
        ax.set_ylim(1e-8, 1.0)
        ax.text(0.5, 0.5, "no measurable difference", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks(range(len(columns)), [_column_label(c) for c in columns])
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative difference of the summaries")
    ax.grid(True, which="major", axis="y", color="0.9")
    handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    if per_variable and len(handles) > 4:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", frameon=False)
    else:
        ax.legend(loc="best", fontsize="small")


# Metrics -------------------------------------------------------------------------------

def plot_metrics(
    *logs: FingerprintLog, metric: str = "loss", ax: Any = None, labels: Sequence[str] | None = None
) -> Any:
    """Draws a metric per epoch for several runs, one line each.

    Each run gets its own line style and marker, so runs that are identical (and
    whose lines lie on top of each other) stay visible.

    Args:
        *logs: `FingerprintLog`s, e.g. `load_fingerprints("a.h5")` or `callback.log`.
        metric: A key of the epoch logs: "loss", "accuracy", "val_loss"...
        ax: The matplotlib Axes to draw on, or None for a new figure.
        labels: One legend label per log; by default "run 1: a.h5", "run 2"...

    Returns:
        The matplotlib Axes.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If no log is given, `labels` has the wrong length, or no log has `metric`.

    Example:

    >>> ax = plot_metrics(load_fingerprints("a.h5"), load_fingerprints("b.h5"), metric="val_loss")  # doctest: +SKIP
    """
    plt = require_pyplot("plot_metrics()")
    from matplotlib.ticker import MaxNLocator

    labels = _metric_labels(logs, labels)
    available = sorted({name for log in logs for fp in log.epochs for name in fp.metrics})
    if metric not in available:
        raise ValueError(
            f"No run has the metric {metric!r}. Pass one of: {', '.join(available) or '(none recorded)'}"
        )
    if ax is None:
        ax = _new_axes(plt, 6.5, 4.0)
    for index, (log, label) in enumerate(zip(logs, labels)):
        points = [(fp.epoch, fp.metrics[metric]) for fp in log.epochs if metric in fp.metrics]
        if not points:
            logger.warning("plot_metrics: %s has no %r; it is not drawn", label, metric)
            continue
        ax.plot(*zip(*points), label=label, linestyle=_LINESTYLES[index % len(_LINESTYLES)],
                marker=_MARKERS[index % len(_MARKERS)], markersize=5, markerfacecolor="none")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch", fontsize="medium")
    ax.grid(True, color="0.9")
    ax.legend(fontsize="small")
    return ax


def _metric_labels(logs: Sequence[FingerprintLog], labels: Sequence[str] | None) -> list[str]:
    """Validated legend labels: the given ones, or "run N" plus the file name."""
    if not logs:
        raise ValueError("plot_metrics() needs at least one FingerprintLog, e.g. load_fingerprints('run.h5')")
    for log in logs:
        if not isinstance(log, FingerprintLog):
            raise TypeError(
                "plot_metrics() takes FingerprintLogs (load_fingerprints(path) or callback.log). "
                f"Received: {type(log).__name__}"
            )
    if labels is None:
        return [f"run {i + 1}" + (f": {os.path.basename(log.path)}" if log.path else "") for i, log in enumerate(logs)]
    labels = [str(label) for label in labels]
    if len(labels) != len(logs):
        raise ValueError(f"Pass one label per log: {len(logs)} logs, {len(labels)} labels")
    return labels
