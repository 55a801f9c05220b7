"""bootstrap: coverage of the true ECE by simulation, agreement with scipy.stats.bootstrap,
every metric and option, the row groups, and the three interval methods."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import asarray, assert_close
from logitkit import LogitkitTypeError, LogitkitValueError, softmax
from logitkit.calibration import (
    BootstrapResult,
    accuracy,
    bootstrap,
    brier_score,
    ece,
    mce,
    nll,
    smooth_ece,
)


def _known_truth(rng, n):
    """Confidence ``f ~ U(0.5, 1)``, correct with probability ``f²``: the population ECE of any
    bins of [0.5, 1] is ``E[f − f²] = 1/6`` (the gap has one sign everywhere)."""
    f = rng.uniform(0.5, 1.0, n)
    y = np.where(rng.uniform(size=n) < f ** 2, 0, 1)
    return np.stack([f, 1 - f], axis=1), y


def test_percentile_intervals_cover_the_true_ece_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    covered = 0
    for r in range(400):
        p, y = _known_truth(rng, 500)
        res = bootstrap(ece, p, y, n_bins=10, random_state=r)
        covered += res.low <= 1 / 6 <= res.high
    assert 0.93 * 400 <= covered <= 0.97 * 400, covered


@pytest.mark.slow
@pytest.mark.parametrize("method", ["basic", "bca"])
@pytest.mark.parametrize("n", [500, 3000])
def test_other_methods_and_grouped_rows_cover_the_true_ece(method, n):
    # 1200 replicates, not 400: basic and BCa intervals cover ~94.4% at 500 rows (1200
    # replicates of another seed: 94.4% each, percentile 95.4%), and 400 replicates' Monte
    # Carlo error (±1.1 points) put this seed's count at 368 and 371 of 400, below the band
    # while the methods are within it
    reps = 1200
    rng = np.random.default_rng(7)
    covered = sum(
        (lambda res: res.low <= 1 / 6 <= res.high)(
            bootstrap(ece, *_known_truth(rng, n), n_bins=10, method=method, random_state=r))
        for r in range(reps))
    assert 0.93 * reps <= covered <= 0.97 * reps, covered


@pytest.mark.parametrize("method", ["percentile", "basic", "bca"])
def test_agrees_with_scipy_bootstrap_on_rows(method):
    from scipy.stats import bootstrap as scipy_bootstrap

    rng = np.random.default_rng(1)
    p, y = _known_truth(rng, 600)  # fewer rows than groups: the ordinary row bootstrap
    ours = bootstrap(ece, p, y, n_bins=8, method=method, n_resamples=4000, random_state=0)
    assert ours.n_groups == 600
    theirs = scipy_bootstrap((np.arange(600),), lambda i: float(ece(p[i], y[i], n_bins=8)),
                             vectorized=False, n_resamples=4000, method=
                             "BCa" if method == "bca" else method,
                             random_state=np.random.default_rng(1))
    # the same distribution up to Monte Carlo error (4000 resamples: ~2% on the spread)
    assert ours.standard_error == pytest.approx(theirs.standard_error, rel=0.08)
    for a, b in ((ours.low, theirs.confidence_interval.low),
                 (ours.high, theirs.confidence_interval.high)):
        assert a == pytest.approx(b, abs=0.25 * ours.standard_error)


def test_every_metric_and_option_gets_an_interval():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 6)) * 3
    y = rng.integers(0, 6, 3000)
    p = softmax(z)
    cases = [
        (ece, {}), (ece, {"norm": "l2", "debias": True}), (ece, {"mode": "classwise"}),
        (ece, {"binning": "quantile", "n_bins": 10}), (ece, {"n_bins": "auto"}),
        (mce, {"min_count": 20}), (brier_score, {}), (nll, {}), (accuracy, {}),
        (smooth_ece, {}), (smooth_ece, {"bandwidth": 0.05}),
    ]
    for metric, options in cases:
        res = bootstrap(metric, p, y, n_resamples=300, random_state=0, **options)
        assert isinstance(res, BootstrapResult)
        assert_close(res.estimate, metric(p, y, **options), rtol=1e-9,
                     err_msg=f"{metric.__name__} {options}")
        assert res.low < res.estimate < res.high, (metric.__name__, options)
        assert res.distribution.shape == (300,)
        assert res.standard_error > 0
    from_logits = bootstrap(nll, z, y, from_logits=True, random_state=0)
    assert_close(from_logits.estimate, nll(p, y), rtol=1e-9)
    estimate, low, high = from_logits
    assert low < estimate < high


def test_accuracy_interval_matches_the_binomial():
    rng = np.random.default_rng(3)
    n = 20_000
    hit = rng.uniform(size=n) < 0.8
    p = np.where(hit[:, None], [[0.9, 0.1]], [[0.1, 0.9]])
    res = bootstrap(accuracy, p, np.zeros(n, dtype=int), random_state=0, n_resamples=2000)
    se = np.sqrt(0.8 * 0.2 / n)
    assert res.standard_error == pytest.approx(se, rel=0.1)  # 1024 groups of ~20 rows
    assert res.high - res.low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_same_seed_same_interval_and_backends_agree(xp):
    rng = np.random.default_rng(4)
    p, y = _known_truth(rng, 2000)
    a = bootstrap(ece, p, y, random_state=5)
    b = bootstrap(ece, asarray(xp, p), asarray(xp, y), random_state=5)
    assert (a.low, a.high) == pytest.approx((b.low, b.high), rel=1e-9)


def test_any_callable_goes_through_scipy():
    rng = np.random.default_rng(5)
    p, y = _known_truth(rng, 300)

    def top_share(probs, labels):
        return float(np.mean(probs[:, 0] > 0.75))

    res = bootstrap(top_share, p, y, n_resamples=500, random_state=0)
    assert res.n_groups is None and res.low < res.estimate < res.high


def test_bad_options_are_clear_errors():
    p, y = _known_truth(np.random.default_rng(6), 50)
    with pytest.raises(LogitkitValueError, match="`level`"):
        bootstrap(ece, p, y, level=1.0)
    with pytest.raises(LogitkitValueError, match="`method`"):
        bootstrap(ece, p, y, method="studentized")
    with pytest.raises(LogitkitValueError, match="`n_resamples`"):
        bootstrap(ece, p, y, n_resamples=0)
    with pytest.raises(LogitkitTypeError, match="`metric`"):
        bootstrap("ece", p, y)


def test_seeded_resample_counts_are_drawn_once_for_the_same_rows(monkeypatch):
    # the command line measures every candidate calibrator on the same rows and seed: the
    # counts are drawn once and reused, bit for bit; another seed or size draws again
    from logitkit.calibration import _resample

    calls = []
    real = _resample.draw_counts
    monkeypatch.setattr(_resample, "draw_counts",
                        lambda *a: calls.append(a[1:]) or real(*a))
    monkeypatch.setattr(_resample, "_LAST_COUNTS", {})
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    p = softmax(rng.normal(size=(300, 3)) * 2, axis=1)
    q = softmax(rng.normal(size=(300, 3)), axis=1)
    first = bootstrap(ece, p, y, n_resamples=200, random_state=7)
    drawn = len(calls)
    assert drawn >= 1
    again = bootstrap(ece, p, y, n_resamples=200, random_state=7)
    other = bootstrap(ece, q, y, n_resamples=200, random_state=7)
    assert len(calls) == drawn
    assert (first.low, first.high) == (again.low, again.high)
    monkeypatch.setattr(_resample, "draw_counts", real)
    fresh = {}
    monkeypatch.setattr(_resample, "_LAST_COUNTS", fresh)
    assert bootstrap(ece, q, y, n_resamples=200, random_state=7).low == other.low
    bootstrap(ece, p, y, n_resamples=200, random_state=8)
    bootstrap(ece, p, y, n_resamples=200, random_state=np.random.default_rng(8))
    assert [key[0] for key in fresh] == [8]
