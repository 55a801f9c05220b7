"""Reliability diagrams as matplotlib Figures (Agg canvas, no pyplot state, styling in an
``rc_context``)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from .._namespace import (
    Described,
    LogitkitTypeError,
    LogitkitValueError,
    check_choice,
    check_int,
    check_number,
    expected,
)
from ._binning import BINNINGS, check_n_bins, resolve_bins
from ._engine import Spec
from ._measure import Binning, host_sums, n_rows, resolve
from ._metrics import MIN_COUNT
from ._smooth import smooth_reliability
from ._stats import CalibrationStats

__all__ = ["figure_from_stats", "reliability_diagram"]

ACC = "#3b6ea8"      # accuracy bars and markers
GAP = "#c44e52"      # the gap to the mean confidence
SMOOTH = "#d1495b"   # the smoothed curve
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "hatch.linewidth": 0.6,
}


def wilson(hits: np.ndarray, count: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of each bin's accuracy (NaN for empty bins): honest for bins of
    one or two predictions, where the normal approximation collapses to a point."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hits / count
        den = 1 + z * z / count
        centre = (p + z * z / (2 * count)) / den
        half = z * np.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / den
    return centre - half, centre + half


def _stats(probs: Any, y: Any, n_bins: int, binning: str, from_logits: bool,
           min_count: int) -> dict[str, Any]:
    """``CalibrationStats.compute()`` of the data, with equal-mass edges computed first."""
    fields = Binning(n_bins, binning).fields(n_rows(probs))
    spec = resolve(probs, y, Spec(from_logits=from_logits, **fields))
    edges = np.concatenate([[0.0], np.asarray(spec.inner, dtype=np.float64), [1.0]])
    stats = CalibrationStats(edges=edges, min_count=min_count)
    out = stats.update(probs, y, from_logits=from_logits).compute()
    out["binning"] = binning
    return out


def _classwise(probs: Any, y: Any, n_bins: int, from_logits: bool, worst: int
               ) -> dict[str, Any]:
    """Per-class bins of the ``worst`` classes by class-wise ECE contribution."""
    from ._binning import uniform_edges

    inner = uniform_edges(n_bins)[1:-1]
    spec = Spec(from_logits=from_logits, brier=False, top=False, cw_bins=n_bins, cw_inner=inner)
    cw = host_sums(probs, y, spec).total().cw
    assert cw is not None
    count, s_p, s_y = cw[0, 0], cw[0, 1], cw[0, 2]
    n = float(count[0].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(s_y - s_p) / np.where(count > 0, count, 1)
    per_class = (count * gap).sum(axis=1) / n
    order = np.argsort(-per_class, kind="stable")[:worst]
    return {"classes": order, "ece": per_class[order], "count": count[order],
            "conf": s_p[order], "hits": s_y[order], "edges": uniform_edges(n_bins)}


def _x_scale(ax: Any, edges: np.ndarray, count: np.ndarray) -> Any:
    """When some non-empty bin would be narrower than 1.5 % of the axis (equal-mass bins
    crowding near 1), space the confidence axis by the share of predictions below each value:
    every bin keeps its own edges, a bin's width is its share of the predictions, and none is
    squeezed away.  Returns ``(forward, inverse)`` of the warp, or ``None``."""
    widths = np.diff(edges)
    if not np.any((count > 0) & (widths < 0.015)):
        ax.set_xlim(0, 1)
        return None
    share = np.concatenate([[0.0], np.cumsum(count) / count.sum()])
    # a strictly increasing warp: repeated edges keep the share reached at the last of them,
    # and every bin gets at least a sliver so that the inverse exists
    e, idx = np.unique(edges[::-1], return_index=True)
    c = share[::-1][idx]
    c = np.maximum.accumulate(c + np.arange(c.size) * 1e-6)
    c = (c - c[0]) / (c[-1] - c[0])

    def forward(x: np.ndarray) -> np.ndarray:
        return np.interp(x, e, c)

    def inverse(u: np.ndarray) -> np.ndarray:
        return np.interp(u, c, e)

    ax.set_xscale("function", functions=(forward, inverse))
    ax.set_xlim(0, 1)
    shown = [0]
    for j in range(1, e.size):
        if c[j] - c[shown[-1]] >= 0.14:
            shown.append(j)
    ax.set_xticks(e[shown], [_tick(v) for v in e[shown]], rotation=25, ha="right")
    return forward, inverse
def _tick(v: float) -> str:
    """An edge's label: close to 1, the distance to 1 (``1−3e-05``), which is what varies."""
    if 0.99 < v < 1.0:
        return f"1−{1 - v:.1g}"
    return f"{v:.3g}"


def _panel(fig: Any, ax: Any, hist: Any, s: dict[str, Any], title: str, level: float,
           smooth: Any = None) -> None:
    edges, count = np.asarray(s["bin_edges"]), np.asarray(s["bin_count"], dtype=float)
    warp = _x_scale(ax, edges, count)  # the count panel shares the axis and its scale
    lo_e, hi_e = edges[:-1], edges[1:]
    mid = (lo_e + hi_e) / 2 if warp is None else warp[1]((warp[0](lo_e) + warp[0](hi_e)) / 2)
    width = hi_e - lo_e
    has = count > 0
    min_count = int(s.get("mce_min_count", 1))
    faint = has & (count < min_count)
    acc = np.where(has, s["bin_accuracy"], np.nan)
    conf = np.where(has, s["bin_confidence"], np.nan)
    low, high = wilson(acc * count, count, level)
    for sel, alpha in ((has & ~faint, 1.0), (faint, 0.3)):
        if not sel.any():
            continue
        # the accuracy: an opaque bar, under everything else
        ax.bar(lo_e[sel], acc[sel], width=width[sel], align="edge", color=ACC, alpha=0.85 * alpha,
               edgecolor="white", linewidth=0.6, zorder=2)
        # the gap: a hatched outline from the accuracy to the mean confidence, never filled,
        # so an under-confident bin's accuracy bar shows through it
        ax.bar(lo_e[sel], (conf - acc)[sel], bottom=acc[sel], width=width[sel], align="edge",
               facecolor="none", edgecolor=GAP, hatch="////", linewidth=0.9, alpha=alpha,
               zorder=3)
        # the accuracy again as a point with its interval: a bin of accuracy 0 is a dot at 0
        err = np.maximum([(acc - low)[sel], (high - acc)[sel]], 0.0)  # rounding at 0 and 1
        ax.errorbar(mid[sel], acc[sel], yerr=err, fmt="o",
                    ms=2.8, color="black", ecolor="0.2", elinewidth=0.8, capsize=1.5,
                    alpha=alpha, zorder=4)
    diag = np.array([0.0, 1.0]) if warp is None else warp[1](np.linspace(0, 1, 400))
    ax.plot(diag, diag, ls="--", color="0.35", lw=0.9, zorder=1)
    if smooth is not None:
        ok = np.isfinite(smooth.accuracy)
        t = smooth.t
        ax.fill_between(t[ok], smooth.low[ok], smooth.high[ok], color=SMOOTH, alpha=0.18, lw=0,
                        zorder=5)
        ax.plot(t[ok], smooth.accuracy[ok], color=SMOOTH, lw=1.6, zorder=6,
                label=f"smoothed (σ = {smooth.bandwidth:.3f})")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    handles = _legend(level, bool(faint.any()), min_count)
    if smooth is not None:
        handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0, 1.0, 0.2),
              mode="expand", ncol=3, frameon=False, borderaxespad=0.2, handlelength=1.6)
    mce = s["mce"]
    mce_text = "n/a" if not math.isfinite(mce) else f"{100 * mce:.2f}%"
    head = (f"ECE = {100 * s['ece']:.2f}%   MCE = {mce_text} (bins ≥ {min_count})   "
            f"n = {s['count']}")
    if smooth is not None:
        head += f"\nsmECE = {100 * smooth.smooth_ece:.2f}%"
    ax.set_title(f"{title}\n{head}" if title else head, pad=34 if len(handles) > 3 else 26)
    ax.tick_params(labelbottom=False)
    # counts: log bars whose floor sits below 1, so that a bin of one has a visible bar, and
    # every non-empty bin labelled with its count
    hist.bar(lo_e[has], count[has], width=width[has], align="edge", color="0.55",
             edgecolor="white", linewidth=0.5)
    hist.set_yscale("log")
    # decades as 10ⁿ in Unicode superscripts: matplotlib's default labels are the same in
    # mathtext, whose parser costs a tenth of a second to build in every process that draws
    hist.yaxis.set_major_formatter(_count_formatter())
    top = max(float(count.max()), 1.0)
    hist.set_ylim(0.3, top * 30)
    for xm, c, f in zip(mid[has], count[has], faint[has], strict=True):
        hist.annotate(f"{int(c)}", (xm, c), xytext=(0, 1.5), textcoords="offset points",
                      ha="center", va="bottom", fontsize=6.5, rotation=90 if len(edges) > 16 else 0,
                      color="0.45" if f else "0.1")
    hist.set_xlabel("confidence" + ("" if warp is None else
                                    " (axis spaced by the share of predictions)"))
    hist.set_ylabel("count")


def _count_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    def label(v: float, _pos: Any) -> str:
        e = round(math.log10(v)) if v > 0 else 0
        if v > 0 and math.isclose(v, 10.0**e):
            return "10" + str(e).translate(_SUPERSCRIPT)
        return f"{v:g}"

    return FuncFormatter(label)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _legend(level: float, faint: bool, min_count: int) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=ACC, alpha=0.85, label="accuracy"),
        Line2D([], [], color="black", marker="o", ms=3, lw=0.8,
               label=f"accuracy, {round(100 * level)}% interval"),
        Patch(facecolor="none", edgecolor=GAP, hatch="////", label="gap to mean confidence"),
        Line2D([], [], color="0.35", ls="--", lw=0.9, label="perfect calibration"),
    ]
    if faint:
        handles.append(Patch(facecolor=ACC, alpha=0.25, label=f"bin of < {min_count}"))
    return handles


def _class_panel(ax: Any, c: dict[str, Any], min_count: int) -> None:
    import matplotlib as mpl

    colors = mpl.colormaps["tab10"]
    for j, cls in enumerate(c["classes"]):
        count = c["count"][j]
        has = count > 0
        full = count >= min_count
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = c["conf"][j] / count
            acc = c["hits"][j] / count
        color = colors(j % 10)
        size = 6 + 60 * np.sqrt(count / max(count.max(), 1))
        # bins of at least min_count joined by a line; smaller ones as faint points only
        ax.plot(conf[full], acc[full], "-", color=color, lw=1.1,
                label=f"class {int(cls)}: class-wise ECE {100 * c['ece'][j]:.2f}%")
        ax.scatter(conf[full], acc[full], s=size[full], color=color, zorder=3)
        ax.scatter(conf[has & ~full], acc[has & ~full], s=size[has & ~full], color=color,
                   alpha=0.25, zorder=2)
    ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=0.9)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted probability of the class in the bin")
    ax.set_ylabel("share of the bin that is the class")
    ax.set_title(f"the {len(c['classes'])} classes of largest class-wise ECE\n"
                 f"(area ∝ bin count; faint: bins of < {min_count})")
    ax.legend(loc="upper left", frameon=False)


def reliability_diagram(
    probs: Any,
    y: Any,
    /,
    *,
    calibrated: Any = None,
    ax: Any = None,
    n_bins: int | str = 15,
    binning: str = "uniform",
    from_logits: bool = False,
    min_count: int = MIN_COUNT,
    level: float = 0.95,
    smooth: bool = False,
    classwise: int = 0,
    titles: tuple[str, ...] = ("before", "after"),
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
    random_state: Any = None,
) -> Any:
    r"""A reliability diagram: per-bin accuracy against confidence, with honest uncertainty.

    For each confidence bin: the accuracy as an opaque bar and as a point with its Wilson
    interval (so a bin of accuracy 0 is a dot at 0, not an empty space), the gap to the bin's
    mean confidence as a hatched outline that never hides the accuracy bar, whatever its sign;
    bins with fewer than ``min_count`` predictions drawn faint (they are left out of the MCE);
    below, the count of every bin, labelled, on a log axis whose floor makes a bin of one
    visible.  The title gives

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{N}\,\bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|,
        \quad \mathrm{MCE} = \max_{b:\,n_b\ge n_{\min}} \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    Args:
        probs: ``(N, K)`` probabilities (or ``(N,)`` binary), any supported array library;
            logits with ``from_logits``.
        y: ``(N,)`` integer labels.
        calibrated: optional predictions for the same ``y`` after calibration (same kind as
            ``probs``): the two diagrams side by side (``titles`` names them).
        ax: a matplotlib Axes to draw the (single) diagram into; the counts go into an inset
            along its bottom.  Not with ``calibrated`` or ``classwise``.
        n_bins: number of bins, or ``"auto"`` (:func:`~logitkit.calibration.auto_bins`).
        binning: ``"uniform"`` (right-closed, as :func:`~logitkit.calibration.ece`) or
            ``"quantile"`` (equal-mass edges of each panel's own confidences, as
            ``ece(..., binning="quantile")`` uses).  Bins are drawn at their own edges; when some are narrower than
            1.5 % of the axis (equal-mass bins crowding near 1) the confidence axis is spaced
            by the share of predictions below each value, so that a bin's width is its share
            of the predictions and none is squeezed away (the diagonal then bends).
        from_logits: ``probs`` (and ``calibrated``) hold logits.
        min_count: bins with fewer predictions are drawn faint and left out of the MCE.
        level: confidence level of the per-bin intervals and the smooth band.
        smooth: overlay relplot's smoothed reliability curve
            (:func:`~logitkit.calibration.smooth_reliability`) with its bootstrap band, and give
            the smooth ECE in the title.
        classwise: add a panel with the reliability curves of the ``classwise`` classes of
            largest class-wise ECE (0: none).
        titles: panel titles (the first alone without ``calibrated``).
        title: a title over the whole figure (for example the data's name and the method).
        figsize: figure size in inches; default 5 × 5 per panel (5.3 high with a ``title``).
        dpi: resolution of the figure.
        random_state: seed of the smooth band's bootstrap.

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas (``fig.savefig(...)`` works without a
        display and without touching pyplot's global state), or ``ax.figure`` when ``ax`` is
        given.

    Note:
        Requires matplotlib (``pip install logitkit[plot]``).  Styling is applied inside
        ``matplotlib.rc_context`` and never changes the global settings.  The per-bin
        intervals are Wilson score intervals of a binomial proportion, conditional on the bin's
        membership.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import reliability_diagram
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
        >>> fig = reliability_diagram(p, np.array([0, 1, 1, 1]), n_bins=5)
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['accuracy', 'count']
    """
    n_bins = resolve_bins(check_n_bins(n_bins), n_rows(probs))
    check_choice(binning, "binning", BINNINGS)
    min_count = check_int(min_count, "min_count")
    level = check_number(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
    classwise = check_int(classwise, "classwise", low=0)
    if not isinstance(smooth, bool):
        raise LogitkitTypeError(expected("smooth", "a bool", smooth))
    if ax is not None and (calibrated is not None or classwise):
        raise LogitkitTypeError(expected(
            "ax", "None when drawing `calibrated` or a `classwise` panel (they need their own "
            "axes)", ax))
    panels = [probs] if calibrated is None else [probs, calibrated]
    if titles is None:
        titles = ("before", "after")
    if isinstance(titles, str) or not isinstance(titles, (list, tuple)) \
            or len(titles) < len(panels):
        raise LogitkitValueError(expected("titles", f"a list of {len(panels)} titles (a "
                                          "list, not a string)", titles))
    if calibrated is not None:
        shapes = [tuple(getattr(a, "shape", np.shape(a))) for a in panels]
        if shapes[0] != shapes[1]:  # else y's check blamed y for calibrated's rows
            raise LogitkitValueError(expected(
                "calibrated", f"predictions of probs' shape {shapes[0]}",
                Described(f"shape {shapes[1]}")))
    stats = [_stats(p, y, n_bins, binning, from_logits, min_count) for p in panels]
    curves = [smooth_reliability(p, y, from_logits=from_logits, level=level,
                                 random_state=random_state) if smooth else None
              for p in panels]
    cw = _classwise(probs, y, n_bins, from_logits, classwise) if classwise else None
    return figure_from_stats(stats, titles[: len(panels)], figsize=figsize, dpi=dpi, ax=ax,
                             level=level, smooth=curves, classwise=cw, title=title)


def _checked_panels(stats: Any, titles: Any, smooth: Any) -> tuple[list[Any], list[str]]:
    """``figure_from_stats``'s panels: a non-empty list of top-label results (one row of bins
    each; a class-wise result has a row per class, which its panel cannot draw), and one title
    (and smooth curve, when given) per result."""
    if not isinstance(stats, (list, tuple)) or not stats:
        raise LogitkitValueError(expected("stats", "a non-empty list of "
                                          "CalibrationStats.compute() results", stats))
    for i, s in enumerate(stats):
        if not isinstance(s, dict) or "bin_count" not in s:
            raise LogitkitValueError(expected(f"stats[{i}]", "a CalibrationStats.compute() "
                                              "result", s))
        if np.ndim(s["bin_count"]) != 1:
            raise LogitkitValueError(expected(
                f"stats[{i}]", "a top-label result (one row of bins); draw a class-wise one "
                "with reliability_diagram(..., classwise=N)",
                Described(f"bins of shape {np.shape(s['bin_count'])} (class-wise)")))
    if titles is None:
        titles = [""] * len(stats)
    if isinstance(titles, str) or not isinstance(titles, (list, tuple)) \
            or len(titles) != len(stats):
        raise LogitkitValueError(expected("titles", f"a list of {len(stats)} titles, one per "
                                          "result", titles))
    if smooth is not None and len(smooth) != len(stats):
        raise LogitkitValueError(expected("smooth", f"{len(stats)} curves (or None), one per "
                                          "result", Described(f"{len(smooth)} of them")))
    return list(stats), list(titles)


def figure_from_stats(
    stats: list[dict[str, Any]], titles: Any, *, figsize: tuple[float, float] | None = None,
    dpi: int = 100, ax: Any = None, level: float = 0.95, smooth: list[Any] | None = None,
    classwise: dict[str, Any] | None = None, title: str | None = None,
) -> Any:
    """The diagram of :meth:`CalibrationStats.compute` results, one panel each (no raw data
    needed; ``smooth`` curves and a ``classwise`` panel when given)."""
    stats, titles = _checked_panels(stats, titles, smooth)
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    smooth = smooth if smooth is not None else [None] * len(stats)
    with mpl.rc_context(STYLE):  # type: ignore[arg-type]
        if ax is not None:
            fig = ax.figure
            hist = ax.inset_axes((0.0, -0.42, 1.0, 0.3), sharex=ax)
            _panel(fig, ax, hist, stats[0], titles[0] if titles else "", level, smooth[0])
            return fig
        ncol = len(stats) + (1 if classwise is not None else 0)
        size = figsize if figsize is not None else (5.0 * ncol, 5.0 + (0.3 if title else 0))
        fig = Figure(figsize=size, dpi=dpi)
        FigureCanvasAgg(fig)
        # A fixed layout (constrained layout would double the time it takes to save the
        # figure), with margins in inches: room for the labels, the headers and the legend.
        width_in, height_in = size
        head = 1.25 + (0.35 if title else 0.0) + (0.15 if any(c is not None for c in smooth)
                                                   else 0.0)
        grid = fig.add_gridspec(1, ncol, left=0.62 / width_in, right=1 - 0.15 / width_in,
                                bottom=0.62 / height_in, top=1 - head / height_in, wspace=0.3)
        for i, (s, name, curve) in enumerate(zip(stats, titles, smooth, strict=True)):
            inner = grid[0, i].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
            a = fig.add_subplot(inner[0])
            h = fig.add_subplot(inner[1], sharex=a)
            _panel(fig, a, h, s, name, level, curve)
        if classwise is not None:
            _class_panel(fig.add_subplot(grid[0, len(stats)]), classwise,
                         int(stats[0].get("mce_min_count", 1)))
        if title:
            fig.suptitle(title, fontsize=11)
        return fig
