"""Reliability diagrams as matplotlib Figures (Agg canvas, no pyplot state)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._namespace import check_choice, check_int, to_numpy
from ._binning import BINNINGS, edges_of
from ._engine import confidences
from ._stats import CalibrationStats

__all__ = ["figure_from_stats", "reliability_diagram"]


def _stats(probs: Any, y: Any, n_bins: int, binning: str) -> dict[str, Any]:
    if binning == "uniform":
        return CalibrationStats(n_bins).update(probs, y).compute()
    conf = confidences(np.asarray(to_numpy(probs)), None, from_logits=False)
    edges = np.unique(edges_of(conf, n_bins, "quantile"))
    return CalibrationStats(edges=edges).update(probs, y).compute()


def _panel(fig: Any, spec: Any, s: dict[str, Any], title: str) -> None:
    inner = spec.subgridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(inner[0])
    hist = fig.add_subplot(inner[1], sharex=ax)
    edges, count = s["bin_edges"], s["bin_count"]
    left, width = edges[:-1], np.diff(edges)
    has = count > 0
    acc = np.where(has, s["bin_accuracy"], 0.0)
    conf = np.where(has, s["bin_confidence"], 0.0)
    ax.bar(left[has], acc[has], width=width[has], align="edge", color="#4c72b0",
           edgecolor="white", label="accuracy")
    ax.bar(left[has], (conf - acc)[has], bottom=acc[has], width=width[has], align="edge",
           color="#dd8452", alpha=0.5, edgecolor="#c44e52", label="gap")
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}\nECE = {100 * s['ece']:.2f}%   MCE = {100 * s['mce']:.2f}%   "
                 f"n = {s['count']}", fontsize=10)
    ax.tick_params(labelbottom=False)
    hist.bar(left, count, width=width, align="edge", color="0.55", edgecolor="white")
    hist.set_yscale("log")
    hist.set_ylim(0.8, max(float(count.max()), 1.0) * 2)
    hist.set_xlabel("confidence")
    hist.set_ylabel("count")


def reliability_diagram(
    probs: Any,
    y: Any,
    /,
    *,
    calibrated: Any = None,
    n_bins: int = 15,
    binning: str = "uniform",
    titles: tuple[str, str] = ("before", "after"),
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Any:
    r"""A reliability diagram: per-bin accuracy against confidence, gaps, and bin counts.

    For each confidence bin the bar height is the accuracy, the shaded bar the gap to the mean
    confidence, and the lower panel the number of predictions; the title gives

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{N}\,\bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    Args:
        probs: ``(N, K)`` probabilities (or ``(N,)`` binary), any supported array library.
        y: ``(N,)`` integer labels.
        calibrated: optional probabilities for the same ``y`` after calibration: the two
            diagrams are drawn side by side (``titles`` names them).
        n_bins: number of bins.
        binning: ``"uniform"`` (right-closed, as :func:`~logitkit.calibration.ece`) or
            ``"quantile"`` (equal-mass edges of ``probs``' confidences, duplicates merged).
        titles: panel titles (the first alone without ``calibrated``).
        figsize: figure size in inches; default 5 x 5 per panel.
        dpi: resolution of the figure.

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas (``fig.savefig(...)`` works without a
        display and without touching pyplot's global state).

    Note:
        Requires matplotlib (``pip install logitkit[plot]``).  Empty bins are not drawn.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import reliability_diagram
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
        >>> fig = reliability_diagram(p, np.array([0, 1, 1, 1]), n_bins=5)
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['accuracy', 'count']
    """
    n_bins = check_int(n_bins, "n_bins")
    check_choice(binning, "binning", BINNINGS)
    panels = [probs] if calibrated is None else [probs, calibrated]
    stats = [_stats(p, y, n_bins, binning) for p in panels]
    return figure_from_stats(stats, titles[: len(panels)], figsize=figsize, dpi=dpi)


def figure_from_stats(
    stats: list[dict[str, Any]], titles: Any, *, figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Any:
    """The diagram of :meth:`CalibrationStats.compute` results, one panel each (no raw data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = figsize if figsize is not None else (5.0 * len(stats), 5.0)
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    # A fixed layout: constrained layout would double the time it takes to save the figure.
    grid = fig.add_gridspec(1, len(stats), left=0.09 / len(stats) ** 0.5, right=0.98,
                            bottom=0.1, top=0.88, wspace=0.22)
    for i, (s, title) in enumerate(zip(stats, titles, strict=True)):
        _panel(fig, grid[0, i], s, title)
    return fig
