"""Smooth ECE: equal to relplot's smECE (automatic bandwidth) on many inputs, its fixed
bandwidth, class-wise mode, backends, and the smoothed reliability curve."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import asarray, assert_close, is_type_of
from logitkit import LogitkitValueError, softmax
from logitkit.calibration import smooth_ece, smooth_reliability


def _case(i):
    """Fourteen different inputs: sizes, classes, over- and under-confidence, ties, rounding
    that puts mass on exact values, and confidences of exactly 1."""
    rng = np.random.default_rng(100 + i)
    n = [150, 1000, 5000, 20000][i % 4]
    k = [2, 5, 10][i % 3]
    z = rng.normal(size=(n, k)) * rng.uniform(0.5, 5)
    p = softmax(z)
    q = softmax(z / rng.uniform(0.3, 3))  # the truth: a different temperature
    y = (np.cumsum(q, axis=1) > rng.random((n, 1))).argmax(axis=1)
    if i == 5:
        p = np.round(p, 2)
        p /= p.sum(axis=1, keepdims=True)
    if i == 6:
        p[: n // 3] = np.eye(k)[y[: n // 3]]  # one third exactly 1 on the label
    return p, y


@pytest.mark.parametrize("i", range(14))
def test_equals_relplot_smece(i):
    import relplot

    p, y = _case(i)
    f, correct = relplot.multiclass_logits_to_confidences(p, y, probs=True)
    want, width = relplot.smECE(f, correct, return_width=True)
    assert_close(smooth_ece(p, y), want, rtol=0, atol=1e-10)
    # and at relplot's bandwidth, fixed
    assert_close(smooth_ece(p, y, bandwidth=width), want, rtol=0, atol=1e-10)


def test_fixed_bandwidth_matches_relplot_at_several_bandwidths():
    import relplot

    p, y = _case(1)
    f, correct = relplot.multiclass_logits_to_confidences(p, y, probs=True)
    for sigma in (0.003, 0.02, 0.1, 0.4):
        assert_close(smooth_ece(p, y, bandwidth=sigma), relplot.smECE_sigma(f, correct, sigma),
                     rtol=0, atol=1e-10)


def test_classwise_is_the_mean_of_each_class_against_the_rest():
    import relplot

    p, y = _case(2)
    per_class = [relplot.smECE(p[:, c], (y == c).astype(float)) for c in range(p.shape[1])]
    assert_close(smooth_ece(p, y, mode="classwise"), np.mean(per_class), rtol=0, atol=1e-10)


def test_from_logits_backends_and_binary_columns(xp):
    z = np.random.default_rng(3).normal(size=(800, 3)) * 3
    y = np.random.default_rng(4).integers(0, 3, 800)
    want = float(smooth_ece(softmax(z), y))
    got = smooth_ece(asarray(xp, z), asarray(xp, y), from_logits=True)
    assert is_type_of(got, xp)
    assert_close(got, want, rtol=1e-9)
    f = softmax(z)[:, 0]
    assert_close(smooth_ece(f, (y == 0).astype(int)),
                 smooth_ece(np.stack([1 - f, f], 1), (y == 0).astype(int)), rtol=0)


def test_perfectly_calibrated_data_have_a_small_smooth_ece():
    rng = np.random.default_rng(5)
    f = rng.uniform(size=200_000)
    y = (rng.uniform(size=200_000) < f).astype(int)
    assert float(smooth_ece(f, y)) < 0.01


def test_smooth_reliability_curve_and_band():
    rng = np.random.default_rng(6)
    f = rng.uniform(0.5, 1.0, 20_000)
    y = np.where(rng.uniform(size=20_000) < f ** 2, 0, 1)
    p = np.stack([f, 1 - f], 1)
    curve = smooth_reliability(p, y, random_state=0)
    assert curve.bandwidth > 0 and curve.smooth_ece == pytest.approx(float(smooth_ece(p, y)))
    inside = (curve.t > 0.55) & (curve.t < 0.95)
    # the band covers the population's curve at the same bandwidth (a sample 20 times larger)
    big_f = rng.uniform(0.5, 1.0, 400_000)
    big_y = np.where(rng.uniform(size=400_000) < big_f ** 2, 0, 1)
    truth = smooth_reliability(np.stack([big_f, 1 - big_f], 1), big_y,
                               bandwidth=curve.bandwidth, n_resamples=0).accuracy
    assert np.mean((curve.low[inside] <= truth[inside])
                   & (truth[inside] <= curve.high[inside])) > 0.9
    assert np.all(curve.accuracy[inside] < curve.t[inside])  # over-confident everywhere
    narrow = smooth_reliability(p, y, bandwidth=0.01, n_resamples=0)
    assert np.all(np.isnan(narrow.accuracy[narrow.t < 0.45]))  # no data there: no curve
    assert np.all(np.isfinite(narrow.accuracy[inside]))
    middle = (narrow.t > 0.6) & (narrow.t < 0.9)
    assert narrow.density[middle].mean() == pytest.approx(2.0, rel=0.05)  # U(0.5, 1)


def test_bad_options_are_clear_errors():
    p, y = _case(0)
    with pytest.raises(LogitkitValueError, match="`bandwidth`"):
        smooth_ece(p, y, bandwidth=0.0)
    with pytest.raises(LogitkitValueError, match="`mode`"):
        smooth_ece(p, y, mode="marginal")
    with pytest.raises(LogitkitValueError, match="rows sum to 1"):
        smooth_ece(p * 0.5, y)


def test_the_smooth_reliability_curve_is_relplots():
    """The curve is the kernel average of ``correct`` near t, as relplot's diagram draws it:
    it was ``t − R(t)/D(t)``, half a unit off relplot's (and below 0) where the confidences
    thin out."""
    import relplot.config
    import relplot.diagrams

    rng = np.random.default_rng(0)
    f = rng.uniform(0.5, 1.0, 2000)
    y = np.where(rng.uniform(size=2000) < f ** 2, 0, 1)
    probs = np.stack([f, 1 - f], 1)
    curve = smooth_reliability(probs, y, n_resamples=0, points=relplot.config.plot_mesh_pts)
    ref = relplot.diagrams.prepare_rel_diagram(
        probs.max(1), (probs.argmax(1) == y).astype(float), plot_confidence_band=False,
        report_CE_std=False)
    shown = np.isfinite(curve.accuracy)
    assert curve.bandwidth == pytest.approx(ref["sigma"], rel=1e-12)
    np.testing.assert_allclose(curve.accuracy[shown], ref["mu"][shown], atol=1e-4)
    assert np.nanmin(curve.accuracy) >= 0.0


def test_smooth_reliability_checks_its_counts():
    from logitkit import LogitkitTypeError

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 200)
    y = rng.integers(0, 3, 200)
    with pytest.raises(LogitkitValueError, match="n_resamples"):
        smooth_reliability(p, y, n_resamples=-1)
    with pytest.raises((LogitkitTypeError, LogitkitValueError), match="n_resamples"):
        smooth_reliability(p, y, n_resamples=1.5)
    with pytest.raises((LogitkitTypeError, LogitkitValueError), match="points"):
        smooth_reliability(p, y, points=2.5)
