"""TemperatureScaler: the optimum (against scipy and scikit-learn), bounds, weights, inputs,
the estimator contract, and the per-chunk sums the fit is made of."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp as sp_logsumexp

from conftest import asarray, assert_close, is_type_of, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError, softmax
from logitkit.calibration import CalibrationWarning, TemperatureScaler
from logitkit.calibration import _nll_sums as nll_sums_module
from logitkit.calibration import _temperature as temperature_module
from logitkit.calibration._nll_sums import _nll_derivatives, nll_sums


def _overconfident(n=3000, k=6, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    cdf = np.cumsum(softmax(true), axis=1)
    y = (rng.uniform(size=(n, 1)) > cdf).sum(axis=1)
    return scale * true, np.minimum(y, k - 1)


def _nll(z, y, beta, w=None):
    z = np.asarray(z, dtype=np.float64)
    per = sp_logsumexp(beta * z, axis=1) - beta * z[np.arange(len(y)), y]
    return float(np.average(per, weights=w))


def test_optimum_matches_scipy_and_gradient_vanishes():
    z, y = _overconfident()
    ts = TemperatureScaler(alpha=0).fit(z, y)
    ref = minimize_scalar(lambda b: _nll(z, y, b), bounds=(0.01, 10), method="bounded",
                          options={"xatol": 1e-12})
    assert ts.converged_ and not ts.at_bound_
    assert ts.n_iter_ <= 12
    assert_close(ts.beta_, ref.x, rtol=1e-6)
    assert _nll(z, y, ts.beta_) <= _nll(z, y, ref.x) + 1e-14
    assert ts.temperature_ == pytest.approx(1 / ts.beta_)
    assert 2.5 < ts.temperature_ < 3.5
    _, _, g, h = _nll_derivatives(z, y, ts.beta_)
    assert abs(g / len(y)) < 1e-8 and h > 0


def test_nll_at_most_scikit_learn_temperature_scaling():
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    class Passthrough(ClassifierMixin, BaseEstimator):
        """A fitted 'classifier' whose decision function is its input: the logits."""

        def fit(self, x, y):
            self.classes_ = np.arange(int(np.max(y)) + 1)
            return self

        def decision_function(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.argmax(x, axis=1)

    z, y = _overconfident(n=2000, k=5, seed=1)
    z = z.astype(np.float32)
    sk = CalibratedClassifierCV(FrozenEstimator(Passthrough().fit(z, y)), method="temperature")
    sk.fit(z, y)
    beta_sk = float(sk.calibrated_classifiers_[0].calibrators[0].beta_)
    ours = TemperatureScaler(alpha=0).fit(z, y)
    assert _nll(z, y, ours.beta_) <= _nll(z, y, beta_sk) + 1e-15
    assert_close(ours.beta_, beta_sk, rtol=1e-3)


def test_random_labels_give_large_finite_temperature_with_warning():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2000, 4))
    y = rng.integers(0, 4, 2000)
    with pytest.warns(CalibrationWarning, match="upper bound"):
        ts = TemperatureScaler(alpha=0).fit(z, y)
    assert ts.at_bound_ and ts.converged_ and ts.temperature_ == 1e3
    # a bound that is not hit: same data, the optimum is positive but large
    z2 = z + 0.05 * np.eye(4)[y]
    ts2 = TemperatureScaler(bounds=(1e-3, 1e6), alpha=0).fit(z2, y)
    assert ts2.converged_ and not ts2.at_bound_ and 1 < ts2.temperature_ < 1e6


def test_separable_data_give_small_positive_temperature_with_warning():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 500)
    z = np.eye(3)[y] * 2.0 + rng.uniform(0, 0.1, size=(500, 3))
    with pytest.warns(CalibrationWarning, match="lower bound.*separable"):
        ts = TemperatureScaler(alpha=0).fit(z, y)
    assert ts.temperature_ == 1e-2 and ts.at_bound_ and math.isfinite(ts.beta_)
    with pytest.warns(CalibrationWarning):
        assert TemperatureScaler(bounds=(0.5, 2.0), alpha=0).fit(z, y).temperature_ == 0.5


def test_non_convergence_is_reported():
    z, y = _overconfident(n=500, seed=4)
    with pytest.warns(CalibrationWarning, match="did not converge"):
        ts = TemperatureScaler(max_iter=1).fit(z, y)
    assert ts.converged_ is False and ts.n_iter_ == 1


def test_integer_sample_weight_equals_repeated_rows():
    z, y = _overconfident(n=400, seed=5)
    w = np.random.default_rng(5).integers(0, 4, 400)
    weighted = TemperatureScaler().fit(z, y, sample_weight=w)
    repeated = TemperatureScaler().fit(np.repeat(z, w, axis=0), np.repeat(y, w))
    assert_close(weighted.temperature_, repeated.temperature_, rtol=1e-9)
    with pytest.raises(LogitkitValueError, match="sample_weight"):
        TemperatureScaler().fit(z, y, sample_weight=-w)
    with pytest.raises(LogitkitValueError, match="sample_weight"):
        TemperatureScaler().fit(z, y, sample_weight=w[:3])


def test_from_probs_takes_logs():
    z, y = _overconfident(n=800, seed=6)
    p = softmax(z)
    ts = TemperatureScaler(from_probs=True).fit(p, y)
    assert_close(ts.temperature_, TemperatureScaler().fit(z, y).temperature_, rtol=1e-8)
    assert_close(ts.predict_proba(p), softmax(z / ts.temperature_), rtol=1e-9, atol=1e-15)
    with pytest.warns(CalibrationWarning, match="looks like probabilities"):
        TemperatureScaler().fit(p, y)
    with pytest.raises(LogitkitValueError, match="from_probs"):
        TemperatureScaler(from_probs=True).fit(z, y)


def test_binary_single_column_is_logits_zero_z():
    rng = np.random.default_rng(7)
    s = rng.normal(size=600) * 4
    y = (rng.uniform(size=600) < 1 / (1 + np.exp(-s / 4))).astype(int)
    one = TemperatureScaler().fit(s, y)
    two = TemperatureScaler().fit(np.stack([-s / 2, s / 2], axis=1), y)
    assert_close(one.temperature_, two.temperature_, rtol=1e-9)
    assert 3 < one.temperature_ < 6
    assert one.predict_proba(s[:3]).shape == (3, 2)
    assert_close(one.transform(s[:3])[:, 1], s[:3] / one.temperature_, rtol=1e-15)
    pb = 1 / (1 + np.exp(-s))
    probs = TemperatureScaler(from_probs=True).fit(pb, y)
    assert_close(probs.temperature_, one.temperature_, rtol=1e-6)


def test_excluded_classes_and_invalid_logits():
    z, y = _overconfident(n=300, k=4, seed=8)
    wrong = (y + 1) % 4
    masked = z.copy()
    masked[np.arange(300), wrong] = -np.inf  # a class that is never the label may be -inf
    ts = TemperatureScaler(alpha=0).fit(masked, y)
    ref = minimize_scalar(lambda b: np.mean(
        sp_logsumexp(b * np.where(np.isinf(masked), -1e300, masked), axis=1)
        - b * masked[np.arange(300), y]), bounds=(0.01, 10), method="bounded",
        options={"xatol": 1e-12})
    assert_close(ts.beta_, ref.x, rtol=1e-6)
    bad = z.copy()
    bad[5, 1] = np.nan
    with pytest.raises(LogitkitValueError, match="1 NaN"):
        TemperatureScaler().fit(bad, y)
    bad[5, 1] = np.inf
    with pytest.raises(LogitkitValueError, match="1 \\+inf"):
        TemperatureScaler().fit(bad, y)
    bad = z.copy()
    bad[7, y[7]] = -np.inf
    with pytest.raises(LogitkitValueError, match="-inf on the label"):
        TemperatureScaler().fit(bad, y)
    with pytest.raises(LogitkitValueError, match=r"labels in \[0, 4\)"):
        TemperatureScaler().fit(z, y + 1)
    with pytest.raises(LogitkitValueError, match="non-empty"):
        TemperatureScaler().fit(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(LogitkitValueError, match="fitted"):
        TemperatureScaler().transform(z)


@pytest.mark.parametrize(("params", "match"), [
    ({"bounds": (0.0, 1.0)}, "bounds"), ({"bounds": (2.0, 1.0)}, "bounds"),
    ({"bounds": 3}, "bounds"), ({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol"),
    ({"from_probs": 1}, "from_probs"), ({"n_threads": 0}, "n_threads"),
    ({"alpha": -1.0}, "alpha"), ({"alpha": "ridge"}, "alpha"), ({"alpha": math.nan}, "alpha"),
])
def test_bad_parameters(params, match):
    z, y = _overconfident(n=50, seed=9)
    with pytest.raises((LogitkitValueError, LogitkitTypeError), match=match):
        TemperatureScaler(**params).fit(z, y)


def test_estimator_contract_and_sklearn_clone():
    from sklearn.base import clone

    ts = TemperatureScaler(tol=1e-8, n_threads=2)
    assert ts.get_params() == {"bounds": (1e-2, 1e3), "alpha": "auto", "max_iter": 100,
                               "tol": 1e-8,
                               "from_probs": False, "n_threads": 2}
    assert ts.set_params(max_iter=7) is ts and ts.max_iter == 7
    with pytest.raises(LogitkitValueError, match="params"):
        ts.set_params(temperature=2.0)
    assert repr(ts) == "TemperatureScaler(max_iter=7, tol=1e-08, n_threads=2)"
    twin = clone(ts)
    assert twin is not ts and twin.get_params() == ts.get_params()
    assert not hasattr(twin, "temperature_")
    z, y = _overconfident(n=300, seed=10)
    assert ts.fit(z, y) is ts
    assert_close(ts.fit_transform(z, y), z / ts.temperature_, rtol=1e-15)


def test_backends_give_the_same_temperature_and_keep_array_type(xp):
    z, y = _overconfident(n=400, seed=11)
    ref = TemperatureScaler().fit(z, y)
    za, ya = asarray(xp, z), asarray(xp, y)
    ts = TemperatureScaler().fit(za, ya)
    assert_close(ts.temperature_, ref.temperature_, rtol=1e-12)
    out = ts.predict_proba(za)
    assert is_type_of(out, xp) and is_type_of(ts.transform(za), xp)
    assert_close(out, softmax(z / ref.temperature_), rtol=1e-12, atol=1e-300)
    z32 = asarray(xp, z, dtype=np.float32)
    t32 = TemperatureScaler().fit(z32, ya)
    assert_close(t32.temperature_, ref.temperature_, rtol=1e-5)
    assert to_numpy(t32.transform(z32)).dtype == np.float32


def test_chunk_sums_are_mergeable_and_match_derivatives():
    z, y = _overconfident(n=257, k=5, seed=12)
    w = np.random.default_rng(12).uniform(size=257)
    whole = _nll_derivatives(z, y, 0.4, w)
    parts = [_nll_derivatives(z[i:i + 50], y[i:i + 50], 0.4, w[i:i + 50])
             for i in range(0, 257, 50)]
    assert_close(np.sum(parts, axis=0), whole, rtol=1e-12)
    assert_close(whole[1] / whole[0], _nll(z, y, 0.4, w), rtol=1e-13)
    eps = 1e-6
    fd = (_nll(z, y, 0.4 + eps, w) - _nll(z, y, 0.4 - eps, w)) / (2 * eps)
    assert_close(whole[2] / whole[0], fd, rtol=1e-7)
    g = [_nll_derivatives(z, y, b, w)[2] for b in (0.4 - eps, 0.4 + eps)]
    assert_close(whole[3], (g[1] - g[0]) / (2 * eps), rtol=1e-6)
    assert _nll_derivatives(z[:0], y[:0], 0.4) == (0.0, 0.0, 0.0, 0.0)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        threaded = nll_sums(z, y, 0.4, w, chunk_rows=16, from_probs=False,
                            floor=-np.inf, pool=pool)
    assert_close(threaded, whole, rtol=1e-12)


def test_temperature_sums_start_a_pool_only_for_two_tasks_or_more(monkeypatch):
    # A pool that can get one task (rows <= _CHUNKS_PER_TASK chunks) costs a thread's start
    # and its hand-offs on every Newton pass and saves nothing: the temperature that starts
    # the affine maps (5,000 rows at K = 100, one task) spent 3-4 ms of its 18 there.
    from concurrent.futures import ThreadPoolExecutor

    started = []

    class Counted(ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(temperature_module, "ThreadPoolExecutor", Counted)
    k = 100
    one_task = nll_sums_module._CHUNKS_PER_TASK * (temperature_module._CHUNK_ELEMENTS // k)
    for n, pools in ((one_task, 0), (one_task + 1, 1)):
        z, y = _overconfident(n=n, k=k, seed=3)
        started.clear()
        threaded = temperature_module.temperature_sums(z, y, None, beta=0.7, from_probs=False,
                                                       floor=-np.inf, n_threads=2)
        assert len(started) == pools
        alone = temperature_module.temperature_sums(z, y, None, beta=0.7, from_probs=False,
                                                    floor=-np.inf, n_threads=1)
        assert threaded == alone


def test_label_shift_and_max_shift_paths_agree():
    # The fast path shifts each row by its label's logit; rows that would overflow there
    # (beta * (max z - z_y) > 709), and chunks with -inf entries, are shifted by the row max.
    z, y = _overconfident(n=200, k=5, seed=15)
    z[:20] *= 200.0  # huge logit gaps: overflow under the label shift for beta ~ 1
    for beta in (0.01, 1.0, 50.0):
        fast = _nll_derivatives(z, y, beta)
        careful = [np.sum(a) for a in nll_sums_module._rows_careful(z, y, beta)]
        assert np.isfinite(fast).all()
        assert_close(fast[1:3], careful[:2], rtol=1e-11)
        # the variance loses a few digits to cancellation when the label is far from the
        # mode; it only scales the Newton step, never moves the optimum
        assert_close(fast[3], careful[2], rtol=1e-8)
        assert_close(fast[1] / fast[0], _nll(z, y, beta), rtol=1e-12)


def test_large_input_uses_warm_start_and_bounded_chunks(monkeypatch):
    monkeypatch.setattr(temperature_module, "_WARM_START_ROWS", (500, 2000))
    monkeypatch.setattr(temperature_module, "_CHUNK_ELEMENTS", 4096)
    chunks = []
    inner = nll_sums_module._nll_derivatives

    def recording(z, *args):
        chunks.append(z.shape[0])
        return inner(z, *args)

    monkeypatch.setattr(nll_sums_module, "_nll_derivatives", recording)
    z, y = _overconfident(n=20_000, k=4, seed=13)
    seen = []
    ts = TemperatureScaler(n_threads=2, alpha=0).fit(z.astype(np.float32), y, progress=seen.append)
    assert max(chunks) == 4096 // 4  # memory per step is bounded by the chunk
    assert sum(seen) == 20_000 * ts.n_iter_
    assert ts.n_iter_ <= 4  # started near the optimum by the subsample
    ref = minimize_scalar(lambda b: _nll(z.astype(np.float32), y, b), bounds=(0.01, 10),
                          method="bounded", options={"xatol": 1e-12})
    assert_close(ts.beta_, ref.x, rtol=1e-6)
    single = TemperatureScaler(n_threads=1, alpha=0).fit(z.astype(np.float32), y)
    assert single.temperature_ == ts.temperature_


def test_transform_does_not_warn_on_probabilities():
    z, y = _overconfident(n=100, seed=14)
    ts = TemperatureScaler().fit(z, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ts.predict_proba(softmax(z)).shape == z.shape


def test_separable_data_whose_gradient_underflows_report_the_bound():
    # margins of 50: the NLL and its derivative underflow to exactly 0 at T ~ 0.04, which the
    # fit took for an optimum; the NLL keeps falling toward T_min, where the bound is reported
    rng = np.random.default_rng(11)
    y = np.repeat(np.arange(3), 15)
    z = np.eye(3)[y] * 50.0 + rng.normal(size=(45, 3))
    with pytest.warns(CalibrationWarning, match="lower bound"):
        ts = TemperatureScaler(alpha=0).fit(z, y)
    assert ts.at_bound_ and ts.converged_ and ts.temperature_ == 1e-2


def _ridge_optimum(z, y, alpha):
    ref = minimize_scalar(lambda b: _nll(z, y, b) + alpha * (b - 1.0) ** 2, bounds=(1e-3, 100.0),
                          method="bounded", options={"xatol": 1e-12})
    return ref.x


def test_default_ridge_is_half_a_row_toward_t_one():
    # the penalised optimum of NLL + (0.5/N)(beta - 1)^2, against scipy; on 3000 rows it moves
    # beta by far less than the fit's statistical error, and alpha=0 is the plain optimum
    z, y = _overconfident()
    ts = TemperatureScaler().fit(z, y)
    assert ts.alpha_ == 0.5 / len(y) and ts.converged_ and not ts.at_bound_
    assert_close(ts.beta_, _ridge_optimum(z, y, 0.5 / len(y)), rtol=1e-6)
    plain = TemperatureScaler(alpha=0).fit(z, y)
    assert plain.alpha_ == 0.0 and ts.beta_ != plain.beta_
    assert abs(ts.beta_ - plain.beta_) < 1e-3 * plain.beta_
    # weights count as rows: N is the total weight
    w = np.full(len(y), 2.0)
    assert TemperatureScaler().fit(z, y, sample_weight=w).alpha_ == 0.25 / len(y)
    assert_close(TemperatureScaler(alpha=0.01).fit(z, y).beta_, _ridge_optimum(z, y, 0.01),
                 rtol=1e-6)


@pytest.mark.parametrize("margin", [2.0, 50.0])
def test_separable_data_get_a_finite_temperature_by_default(margin):
    # unpenalised, the NLL keeps falling as T -> 0 and the fit stops at T_min (the tests above);
    # with the default ridge the objective has a minimiser: no bound, no warning, and new rows
    # that the separable calibration rows did not foresee keep a finite, moderate loss
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    z = np.eye(3)[y] * margin + rng.uniform(0, 0.1, size=(60, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ts = TemperatureScaler().fit(z, y)
    assert ts.converged_ and not ts.at_bound_ and 0.01 < ts.temperature_ <= 1.0
    assert_close(ts.beta_, _ridge_optimum(z, y, 0.5 / 60), rtol=1e-6)
    wrong = np.array([[margin, 0.0, 0.0]])
    assert _nll(wrong, np.array([1]), ts.beta_) < 0.2 * _nll(wrong, np.array([1]), 100.0)
