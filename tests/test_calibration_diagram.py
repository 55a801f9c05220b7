"""reliability_diagram: a matplotlib Figure without pyplot state, saved and read back, and
drawn honestly (every bin's accuracy visible, counts labelled, intervals, faint small bins,
crowded equal-mass bins kept visible, the smooth curve, the class-wise panel, ``ax=``)."""

from __future__ import annotations

import io
import sys

import matplotlib as mpl
import numpy as np
import pytest

from logitkit import LogitkitTypeError, LogitkitValueError, softmax
from logitkit.calibration import (
    TemperatureScaler,
    ece,
    mce,
    reliability_diagram,
    smooth_ece,
)
from logitkit.calibration._diagram import ACC, GAP, wilson


def _problem():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(600, 4))
    cdf = np.cumsum(softmax(true), axis=1)
    y = np.minimum((rng.uniform(size=(600, 1)) > cdf).sum(axis=1), 3)
    return 3 * true, y


def _binary(n=400, seed=0):
    """Bins (0.5, 0.6] and (0.6, 0.7] under-confident, (0.7, 0.8] of accuracy 0."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.5, 1, n)
    acc = np.where(f <= 0.7, 0.97, np.where(f <= 0.8, 0.0, f))
    y = np.where(rng.uniform(size=n) < acc, 0, 1)
    return np.stack([f, 1 - f], 1), y


def _bars(ax, color):
    rgba = mpl.colors.to_rgba(color)
    return [p for p in ax.patches if p.get_facecolor()[:3] == pytest.approx(rgba[:3])]


def test_single_panel_figure_and_png_size(tmp_path):
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    z, y = _problem()
    p = softmax(z)
    fig = reliability_diagram(p, y, n_bins=10, figsize=(4, 3), dpi=50)
    assert isinstance(fig, Figure)
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "count"]
    assert f"ECE = {100 * float(ece(p, y, n_bins=10)):.2f}%" in fig.axes[0].get_title()
    assert f"MCE = {100 * float(mce(p, y, n_bins=10)):.2f}%" in fig.axes[0].get_title()
    counts = np.bincount(np.clip(np.ceil(p.max(1) * 10).astype(int) - 1, 0, 9), minlength=10)
    assert len(fig.axes[1].patches) == np.count_nonzero(counts)  # one count bar per bin
    path = tmp_path / "diagram.png"
    fig.savefig(path)
    assert imread(path).shape[:2] == (150, 200)
    assert "matplotlib.pyplot" not in sys.modules or not _pyplot_has_figures()


def _pyplot_has_figures():
    import matplotlib.pyplot as plt

    return bool(plt.get_fignums())


def test_styling_stays_inside_the_figure():
    before = dict(mpl.rcParams)
    reliability_diagram(*_binary(), smooth=True, random_state=0)
    after = dict(mpl.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


def test_before_after_side_by_side_and_quantile_bins():
    z, y = _problem()
    ts = TemperatureScaler().fit(z, y)
    fig = reliability_diagram(softmax(z), y, calibrated=ts.predict_proba(z), binning="quantile",
                              n_bins=8, titles=("raw", "scaled"))
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title().startswith("raw") and fig.axes[2].get_title().startswith(
        "scaled")
    assert fig.get_size_inches().tolist() == [10.0, 5.0]
    for hist in (fig.axes[1], fig.axes[3]):  # each panel its own equal-mass bins
        counts = [patch.get_height() for patch in hist.patches]
        assert sum(counts) == 600 and max(counts) - min(counts) <= 1


def test_accuracy_is_visible_whatever_the_gap_and_a_zero_bin_is_a_dot_at_zero():
    p, y = _binary()
    fig = reliability_diagram(p, y, n_bins=10, min_count=1)
    ax = fig.axes[0]
    acc_bars = _bars(ax, ACC)
    gaps = [q for q in ax.patches if q.get_edgecolor()[:3] == pytest.approx(
        mpl.colors.to_rgba(GAP)[:3]) and q.get_hatch()]
    assert len(acc_bars) == len(gaps) == 5
    # gaps are outlines, never filled, and drawn over the accuracy bars: under-confident bins
    # (accuracy above confidence) keep their bar visible through the hatch
    assert all(q.get_facecolor()[3] == 0 for q in gaps)
    assert min(q.get_zorder() for q in gaps) > max(q.get_zorder() for q in acc_bars)
    heights = sorted(round(q.get_height(), 2) for q in acc_bars)
    assert heights[0] == 0.0  # the bin of accuracy 0 has no bar ...
    points = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    xy = points[0].lines[0].get_xydata()
    assert np.any(np.isclose(xy[:, 1], 0.0))  # ... but a point at 0 with its interval
    # the point's interval is the Wilson interval
    lo, hi = wilson(np.array([0.0]), np.array([20.0]), 0.95)
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and 0.1 < hi[0] < 0.2


def test_a_bin_of_one_is_visible_and_labelled_and_small_bins_are_faint():
    f = np.array([0.62] + [0.72] * 3 + [0.95] * 50)  # a bin of one, a bin of three
    p = np.stack([f, 1 - f], 1)
    y = (np.arange(54) % 7 == 0).astype(int)
    fig = reliability_diagram(p, y, n_bins=20, min_count=5)
    ax, hist = fig.axes
    labels = [t.get_text() for t in hist.texts]
    counts = [int(q.get_height()) for q in hist.patches]
    assert labels == [str(c) for c in counts] and 1 in counts
    assert hist.get_ylim()[0] < 1.0  # a bar of height 1 rises above the floor of the log axis
    faint = [q for q in _bars(ax, ACC) if q.get_alpha() < 0.5]
    assert len(faint) == sum(1 for c in counts if c < 5) > 0
    assert "bins ≥ 5" in ax.get_title()


def test_count_axis_labels_decades_without_mathtext():
    # matplotlib's default log labels are mathtext ($\\mathdefault{10^{4}}$), whose parser
    # costs ~0.1 s to build in each process that draws; the same decades in Unicode cost nothing
    f = np.array([0.62] + [0.95] * 2000)
    p = np.stack([f, 1 - f], 1)
    fig = reliability_diagram(p, (np.arange(2001) % 7 == 0).astype(int), n_bins=10)
    fig.savefig(io.BytesIO(), format="png")
    hist = fig.axes[1]
    shown = [t.get_text() for t in hist.get_yticklabels()
             if t.get_text() and hist.get_ylim()[0] <= t.get_position()[1] <= hist.get_ylim()[1]]
    assert shown and all("$" not in s for s in shown)
    assert "10⁰" in shown and ("10³" in shown or "10⁴" in shown)


def test_crowded_quantile_bins_get_room():
    # an overconfident model: nine of ten equal-mass bins fall in [0.99, 1]
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2000, 5)) * 12
    p = softmax(z)
    y = rng.integers(0, 5, 2000)
    fig = reliability_diagram(p, y, binning="quantile", n_bins=10)
    ax = fig.axes[0]
    assert ax.get_xscale() == "function"
    # every non-empty bin is at least 3% of the axis wide
    to_axes = ax.transScale + ax.transLimits
    for q in _bars(ax, ACC):
        x0 = to_axes.transform((q.get_x(), 0))[0]
        x1 = to_axes.transform((q.get_x() + q.get_width(), 0))[0]
        assert x1 - x0 > 0.03
    uniform = reliability_diagram(p, y, n_bins=10).axes[0]
    assert uniform.get_xscale() == "linear"


def test_smooth_curve_and_band():
    p, y = _binary(2000)
    fig = reliability_diagram(p, y, smooth=True, random_state=0)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if "smoothed" in str(line.get_label())]
    assert len(lines) == 1
    assert f"smECE = {100 * float(smooth_ece(p, y)):.2f}%" in ax.get_title()
    assert any(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")
               for c in ax.collections)


def test_classwise_panel_shows_the_worst_classes():
    z, y = _problem()
    p = softmax(z)
    fig = reliability_diagram(p, y, classwise=2)
    assert len(fig.axes) == 3
    panel = fig.axes[2]
    names = [t.get_text() for t in panel.get_legend().get_texts()]
    per_class = []
    for k in range(4):  # the class-wise ECE of each column, written out
        col, hit = p[:, k], (y == k)
        bins = np.searchsorted(np.arange(1, 15) / 15, col, side="left")
        per_class.append(sum(abs(hit[bins == b].mean() - col[bins == b].mean()) * np.mean(
            bins == b) for b in range(15) if (bins == b).any()))
    worst = np.argsort(per_class)[::-1][:2]
    assert [n.split(":")[0] for n in names] == [f"class {k}" for k in worst]
    assert f"{100 * per_class[worst[0]]:.2f}%" in names[0]


def test_draws_into_a_given_axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.4, 0.8, 0.5))
    out = reliability_diagram(*_binary(), ax=ax, n_bins=10)
    assert out is fig
    assert ax.get_ylabel() == "accuracy"
    assert len(ax.child_axes) == 1 and ax.child_axes[0].get_ylabel() == "count"


def test_diagram_validates_its_inputs():
    z, y = _problem()
    with pytest.raises(LogitkitValueError, match="binning"):
        reliability_diagram(softmax(z), y, binning="adaptive")
    with pytest.raises(LogitkitValueError, match=r"in \[0, 1\]"):
        reliability_diagram(z, y)
    with pytest.raises(LogitkitTypeError, match="`ax`"):
        reliability_diagram(softmax(z), y, calibrated=softmax(z), ax=object())
    with pytest.raises(LogitkitTypeError, match="`smooth`"):
        reliability_diagram(softmax(z), y, smooth="yes")
    fig = reliability_diagram(z, y, from_logits=True)
    assert f"{100 * float(ece(softmax(z), y)):.2f}%" in fig.axes[0].get_title()
    auto = reliability_diagram(z, y, from_logits=True, n_bins="auto")  # 600 rows: 9 bins
    assert f"{100 * float(ece(softmax(z), y, n_bins=9)):.2f}%" in auto.axes[0].get_title()


def test_reliability_diagram_names_a_bad_titles_or_calibrated():
    from logitkit.calibration import reliability_diagram

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 200)
    y = rng.integers(0, 3, 200)
    with pytest.raises(LogitkitValueError, match=r"titles.*'my model'"):
        reliability_diagram(p, y, titles="my model")
    with pytest.raises(LogitkitValueError, match=r"calibrated.*\(200, 3\).*\(50, 3\)"):
        reliability_diagram(p, y, calibrated=p[:50])
    assert reliability_diagram(p, y, titles=None) is not None
