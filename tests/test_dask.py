"""Calibration on Dask arrays, on a distributed LocalCluster: the same numbers as NumPy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from logitkit import LogitkitValueError, softmax
from logitkit.calibration import (
    CalibrationStats,
    TemperatureScaler,
    accuracy,
    bootstrap,
    brier_decomposition,
    brier_score,
    ece,
    mce,
    nll,
    smooth_ece,
)
from logitkit.calibration import _temperature as temperature_module

TOL = {"rtol": 1e-8, "atol": 1e-10}


def overconfident(n, k, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k))
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return scale * true, y


def chunked(*arrays, rows=700):
    return [da.from_array(a, chunks=(rows, *a.shape[1:])) for a in arrays]


def test_temperature_fit_equals_numpy(client):
    z, y = overconfident(4000, 6, 0)
    w = np.random.default_rng(1).uniform(0.1, 2.0, size=4000)
    dz, dy, dw = chunked(z, y, w)
    for weight, dweight in ((None, None), (w, dw)):
        ref = TemperatureScaler().fit(z, y, weight)
        got = TemperatureScaler().fit(dz, dy, dweight)
        np.testing.assert_allclose(got.temperature_, ref.temperature_, rtol=1e-8)
        assert got.converged_ and not got.at_bound_ and got.n_classes_ == 6
        np.testing.assert_allclose(got.nll_, ref.nll_, rtol=1e-6)
    assert abs(ref.temperature_ - 3.0) < 0.3  # the data really are overconfident


def test_each_newton_step_is_one_pass_over_the_blocks(monkeypatch):
    import dask

    z, y = overconfident(3000, 4, 2)
    dz, dy = chunked(z, y, rows=500)  # 6 blocks
    calls = []
    original = temperature_module.temperature_sums

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(temperature_module, "temperature_sums", counting)
    # The synchronous scheduler runs the tasks here, where the counter lives (the graph is
    # the one a cluster would run).
    with dask.config.set(scheduler="synchronous"):
        fitted = TemperatureScaler().fit(dz, dy)
    assert len(calls) == 6 * fitted.n_iter_
    assert fitted.n_iter_ >= 3


def test_binary_column_and_probabilities_equal_numpy(client):
    rng = np.random.default_rng(3)
    logit = 4.0 * rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-logit / 4.0))).astype(np.int64)
    (dl, dy) = chunked(logit, y, rows=600)
    ref = TemperatureScaler().fit(logit, y)
    got = TemperatureScaler().fit(dl, dy)
    np.testing.assert_allclose(got.temperature_, ref.temperature_, rtol=1e-8)
    z, yk = overconfident(2000, 3, 4)
    p = softmax(z, axis=1)
    (dp, dyk) = chunked(p, yk)
    ref = TemperatureScaler(from_probs=True).fit(p, yk)
    got = TemperatureScaler(from_probs=True).fit(dp, dyk)
    np.testing.assert_allclose(got.temperature_, ref.temperature_, rtol=1e-8)


def test_zero_probabilities_read_with_the_least_over_every_block(client):
    # the least positive probability is a map-reduce (Least) over the blocks: the floor of a
    # partitioned fit, and so its temperature and transform, equal NumPy's
    z, y = overconfident(2100, 4, 5)
    p = np.round(softmax(z, axis=1), 2)  # rounded: zeros, and a least of 0.01
    p /= p.sum(axis=1, keepdims=True)
    p[1500, :] = [0.0, 0.0, 0.0, 1.0]
    p[1500, 3] = 1.0 - 3e-5  # the least positive probability, in the third block only
    p[1500, 0] = 3e-5
    assert (p == 0).sum() > 100
    dp, dy = chunked(p, y)
    ref = TemperatureScaler(from_probs=True).fit(p, y)
    got = TemperatureScaler(from_probs=True).fit(dp, dy)
    assert got.zero_floor_ == ref.zero_floor_ == np.log(3e-5) - np.log(2.0)
    np.testing.assert_allclose(got.temperature_, ref.temperature_, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(got.transform(dp)), ref.transform(p), **TOL)


@pytest.mark.parametrize(
    "options",
    [{}, {"norm": "l2"}, {"norm": "max"}, {"norm": "l2", "debias": True},
     {"mode": "classwise"}, {"mode": "classwise", "norm": "l2", "debias": True},
     {"n_bins": 7, "norm": "l1"}],
    ids=str,
)
def test_ece_equals_numpy_and_stays_lazy(client, options):
    z, y = overconfident(3000, 5, 5)
    p = softmax(z, axis=1)
    dp, dy = chunked(p, y)
    got = ece(dp, dy, **options)
    assert isinstance(got, da.Array) and got.shape == ()
    np.testing.assert_allclose(got.compute(), ece(p, y, **options), **TOL)


def test_other_metrics_equal_numpy(client):
    z, y = overconfident(2500, 4, 6)
    p = softmax(z, axis=1)
    dp, dy, dz = chunked(p, y, z)
    for fn in (mce, brier_score, nll, accuracy):
        got = fn(dp, dy)
        assert isinstance(got, da.Array)
        np.testing.assert_allclose(got.compute(), fn(p, y), **TOL)
    np.testing.assert_allclose(nll(dz, dy, from_logits=True).compute(),
                               nll(z, y, from_logits=True), **TOL)
    binary = p[:, 1] / p[:, :2].sum(axis=1)
    yb = (y == 1).astype(np.int64)
    (db, dyb) = chunked(binary, yb)
    np.testing.assert_allclose(ece(db, dyb).compute(), ece(binary, yb), **TOL)
    np.testing.assert_allclose(brier_score(db, dyb).compute(), brier_score(binary, yb), **TOL)


def test_every_metric_from_logits_equals_numpy_and_stays_lazy(client):
    z, y = overconfident(2600, 5, 11)
    dz, dy = chunked(z.astype(np.float32), y, rows=500)
    z32 = z.astype(np.float32)
    for fn, options in ((ece, {}), (ece, {"mode": "classwise", "norm": "l2"}),
                        (ece, {"n_bins": "auto"}), (mce, {"min_count": 5}),
                        (brier_score, {}), (nll, {}), (accuracy, {}), (smooth_ece, {}),
                        (smooth_ece, {"mode": "classwise"})):
        got = fn(dz, dy, from_logits=True, **options)
        assert isinstance(got, da.Array) and got.shape == (), fn.__name__
        np.testing.assert_allclose(got.compute(), fn(z32, y, from_logits=True, **options),
                                   **TOL, err_msg=f"{fn.__name__} {options}")
    parts = brier_decomposition(dz, dy, from_logits=True)
    ref = brier_decomposition(z32, y, from_logits=True)
    for key, value in parts.items():
        assert isinstance(value, da.Array)
        np.testing.assert_allclose(value.compute(), ref[key], **TOL, err_msg=key)


def test_intervals_do_not_depend_on_the_partition(client):
    z, y = overconfident(3000, 4, 12)
    dz, dy = chunked(z, y, rows=450)
    ref = CalibrationStats().update(z, y, from_logits=True)
    got = CalibrationStats().update(dz, dy, from_logits=True)
    a, b = ref.intervals(random_state=1), got.intervals(random_state=1)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, err_msg=key)
    res = bootstrap(ece, dz, dy, from_logits=True, random_state=2)
    want = bootstrap(ece, z, y, from_logits=True, random_state=2)
    np.testing.assert_allclose([res.low, res.high], [want.low, want.high], rtol=1e-9)


def test_calibration_stats_update_equals_numpy_and_merges_with_it(client):
    z, y = overconfident(3000, 5, 7)
    p = softmax(z, axis=1)
    dp, dy = chunked(p, y)
    for mode in ("top-label", "classwise"):
        ref = CalibrationStats(n_bins=10, mode=mode).update(p, y).compute()
        stats = CalibrationStats(n_bins=10, mode=mode)
        assert stats.update(dp, dy) is stats
        got = stats.compute()
        assert got["count"] == 3000
        for key in ("ece", "rms_ce", "rms_ce_debiased", "mce", "brier", "nll", "accuracy"):
            np.testing.assert_allclose(got[key], ref[key], **TOL, err_msg=key)
        np.testing.assert_allclose(got["bin_count"], ref["bin_count"])
    half = CalibrationStats().update(p[:1000], y[:1000])
    half.update(dp[1000:], dy[1000:])
    np.testing.assert_allclose(half.compute()["ece"], CalibrationStats().update(p, y)
                               .compute()["ece"], **TOL)


def test_bad_dask_input_raises_clear_errors(client):
    z, y = overconfident(500, 3, 8)
    p = softmax(z, axis=1)
    dp, dy, dz = chunked(p, y, z, rows=200)
    with pytest.raises(LogitkitValueError, match="`binning`"):
        ece(dp, dy, binning="quantile")
    with pytest.raises(LogitkitValueError, match=r"class labels in \[0, 3\)"):
        TemperatureScaler().fit(dz, dy + 1)
    with pytest.raises(LogitkitValueError, match="`y`"):
        TemperatureScaler().fit(dz, dy[:-1])
    with pytest.raises(LogitkitValueError, match="`sample_weight`"):
        TemperatureScaler().fit(dz, dy, da.zeros(500, chunks=200))
    bad = da.where(da.arange(500, chunks=200)[:, None] == 3, np.nan, dz)
    with pytest.raises(LogitkitValueError, match="finite"):
        TemperatureScaler().fit(bad, dy)
    with pytest.raises(LogitkitValueError, match="probabilities"):
        ece(dp * 2.0, dy).compute()


def _moments(x, y, w=None, *, scale=1.0):
    return x.sum(axis=0) * scale, np.bincount(y, minlength=3), (0.0 if w is None else w.sum())


def test_row_sums_maps_over_aligned_row_blocks_and_adds():
    from logitkit.calibration import _blocks

    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(1000, 3)), rng.integers(0, 3, 1000), rng.random(1000)
    want = _blocks.row_sums(_moments, x, y, w, scale=2.0)
    # Dask logits in uneven row and column chunks, NumPy labels, Dask weights chunked otherwise.
    got = _blocks.row_sums(_moments, da.from_array(x, chunks=(170, 2)), y,
                           da.from_array(w, chunks=333), scale=2.0)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12)
    # Only the labels partitioned, no weights.
    got = _blocks.row_sums(_moments, x, da.from_array(y, chunks=100), None)
    np.testing.assert_allclose(got[0], x.sum(axis=0), rtol=1e-12)
    assert got[2] == 0.0
