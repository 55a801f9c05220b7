"""reliability_diagram: a matplotlib Figure without pyplot state, saved and read back."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from logitkit import LogitkitValueError, softmax
from logitkit.calibration import TemperatureScaler, ece, reliability_diagram


def _problem():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(600, 4))
    cdf = np.cumsum(softmax(true), axis=1)
    y = np.minimum((rng.uniform(size=(600, 1)) > cdf).sum(axis=1), 3)
    return 3 * true, y


def test_single_panel_figure_and_png_size(tmp_path):
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    z, y = _problem()
    p = softmax(z)
    fig = reliability_diagram(p, y, n_bins=10, figsize=(4, 3), dpi=50)
    assert isinstance(fig, Figure)
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "count"]
    assert f"ECE = {100 * float(ece(p, y, n_bins=10)):.2f}%" in fig.axes[0].get_title()
    # one accuracy bar and one gap bar per non-empty bin, counts for every bin
    assert len(fig.axes[1].patches) == 10
    path = tmp_path / "diagram.png"
    fig.savefig(path)
    assert imread(path).shape[:2] == (150, 200)
    assert "matplotlib.pyplot" not in sys.modules or not _pyplot_has_figures()


def _pyplot_has_figures():
    import matplotlib.pyplot as plt

    return bool(plt.get_fignums())


def test_before_after_side_by_side_and_quantile_bins():
    z, y = _problem()
    ts = TemperatureScaler().fit(z, y)
    fig = reliability_diagram(softmax(z), y, calibrated=ts.predict_proba(z), binning="quantile",
                              n_bins=8, titles=("raw", "scaled"))
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title().startswith("raw") and fig.axes[2].get_title().startswith(
        "scaled")
    assert fig.get_size_inches().tolist() == [10.0, 5.0]
    counts = [patch.get_height() for patch in fig.axes[1].patches]
    assert sum(counts) == 600 and max(counts) - min(counts) <= 1  # equal-mass bins


def test_diagram_validates_its_inputs():
    z, y = _problem()
    with pytest.raises(LogitkitValueError, match="binning"):
        reliability_diagram(softmax(z), y, binning="adaptive")
    with pytest.raises(LogitkitValueError, match=r"in \[0, 1\]"):
        reliability_diagram(z, y)
