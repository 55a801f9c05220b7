"""The calibration package's public names that the command line builds on: a calibrator from its
method name, the method list, the accuracy flag, equal-mass bin edges of a first pass."""

from __future__ import annotations

import numpy as np
import pytest

from logitkit import LogitkitValueError
from logitkit.calibration import (
    ACCURACY_FLAG,
    METHODS,
    CalibrationStats,
    Calibrator,
    bin_edges,
    ece,
    make_calibrator,
    select,
)


def test_make_calibrator_makes_each_method_as_select_does():
    z = np.random.default_rng(0).normal(size=(60, 3)) * 2
    y = np.random.default_rng(1).integers(0, 3, 60)
    sel = select(z, y, methods=list(METHODS), cv=2, random_state=0)
    assert [r["method"] for r in sel.table_] == list(METHODS)
    for name in METHODS:
        cal = make_calibrator(name)
        assert isinstance(cal, Calibrator) and not hasattr(cal, "n_classes_")  # unfitted
        fold = sel.fold_calibrators_[name][0]
        if name == "stacked":  # select's is assembled from the fold's usable single methods
            assert type(cal) is type(fold) and repr(cal) == "StackedCalibrator()"
            assert fold.methods == fold.methods_ and set(fold.methods_) < set(METHODS)
        else:
            assert repr(cal) == repr(fold)  # configured as select does
    assert METHODS[:2] == ("none", "temperature")
    assert repr(make_calibrator("structured-vector", from_probs=True)) == \
        "StructuredScaler(form='vector', from_probs=True)"
    with pytest.raises(LogitkitValueError, match=r"^Expected `method` to be one of 'none'"):
        make_calibrator("platt")


def test_accuracy_flag_is_what_select_flags():
    assert ACCURACY_FLAG == 0.01
    z = np.random.default_rng(2).normal(size=(80, 4))
    y = np.random.default_rng(3).integers(0, 4, 80)
    for row in select(z, y, cv=2, random_state=0).table_:
        if row["error"] is None:
            assert row["flagged"] == (abs(row["accuracy_change"]) > ACCURACY_FLAG)


def test_bin_edges_are_the_inverted_cdf_quantiles_the_engine_merges_exactly():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(3), size=500)
    y = rng.integers(0, 3, 500)
    conf = p.max(axis=1)
    e = bin_edges(conf, 10)
    inner = np.quantile(conf, np.arange(1, 10) / 10, method="inverted_cdf")
    np.testing.assert_array_equal(e, np.concatenate([[0.0], inner, [1.0]]))
    assert bin_edges(conf).size == 8 + 1  # "auto": ceil(500 ** (1/3)) = 8
    np.testing.assert_array_equal(bin_edges(conf, 4, binning="uniform"), [0, 0.25, 0.5, 0.75, 1])
    half = CalibrationStats(edges=e).update(p[:250], y[:250])
    whole = half.merge(CalibrationStats(edges=e).update(p[250:], y[250:])).compute()
    assert whole["ece"] == pytest.approx(
        float(ece(p, y, n_bins=10, binning="quantile")), rel=1e-12)
    with pytest.raises(LogitkitValueError, match=r"^Expected `confidences` to be a 1-D array"):
        bin_edges(p, 10)
    with pytest.raises(LogitkitValueError, match=r"^Expected `binning` to be one of"):
        bin_edges(conf, 10, binning="equal")
