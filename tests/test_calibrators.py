"""The calibrators beyond temperature: optima against independent objectives and the peers,
exact derivatives, every input kind and array library, Dask, saving, and errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit, log_softmax

from conftest import asarray, assert_close, is_type_of, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError, _kernels, softmax
from logitkit.calibration import (
    BetaCalibrator,
    CalibrationWarning,
    Calibrator,
    DirichletScaler,
    HistogramCalibrator,
    IdentityCalibrator,
    IsotonicCalibrator,
    MatrixScaler,
    StackedCalibrator,
    StructuredScaler,
    TemperatureScaler,
    VectorScaler,
)
from logitkit.calibration import _scaling as scaling
from logitkit.calibration._base import FitData
from logitkit.calibration._binary import isotonic_fit

ALL = [IdentityCalibrator, TemperatureScaler, VectorScaler, MatrixScaler, DirichletScaler,
       StructuredScaler, BetaCalibrator, IsotonicCalibrator, HistogramCalibrator,
       StackedCalibrator]
#: the calibrators that take row weights (the mixture's weights come from cross-validation)
WEIGHTED = [c for c in ALL if c is not StackedCalibrator]
PARAMETRIC = [TemperatureScaler, VectorScaler, MatrixScaler, DirichletScaler,
              StructuredScaler, BetaCalibrator]


def make(n=1500, k=4, seed=0, scale=3.0, bias=True):
    """Logits of a model ``scale`` times too confident (with class biases), and labels drawn
    from the true probabilities."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    p = softmax(true, axis=1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    z = scale * true + (rng.normal(size=k) if bias else 0.0)
    return z, y


def make_binary(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n) * 2
    y = (rng.random(n) < expit(s)).astype(np.int64)
    return 2.5 * s + 0.7, y


def nll_of(logits, y):
    lp = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
    return -lp[np.arange(len(y)), y].mean()


def quiet(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return est.fit(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# optima against independently written objectives
# --------------------------------------------------------------------------------------------


@pytest.fixture
def probmetrics_calibrators(monkeypatch):
    """``probmetrics.calibrators``, importable without numba.

    probmetrics imports numba at module level for its 'saga' optimiser without declaring it as
    a dependency; logitkit has no numba anywhere.  The calibrators compared here use its default
    'bfgs' optimiser, which never calls a numba function, so an identity ``njit`` stands in for
    numba when it is absent (never when it is installed).
    """
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("numba") is None:
        stub = types.ModuleType("numba")

        def njit(*args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            return lambda fn: fn

        stub.njit = njit
        stub.prange = range
        monkeypatch.setitem(sys.modules, "numba", stub)
    import probmetrics.calibrators

    return probmetrics.calibrators


def _reference(z, y, unpack, penalty, x0):
    """Minimise the mean NLL of ``unpack(θ)(z)`` plus ``penalty(θ)`` with SciPy's BFGS on a
    numerically differentiated objective written here from the definitions."""
    def f(theta):
        return nll_of(unpack(theta)(z), y) + penalty(theta)

    res = minimize(f, x0, method="BFGS", options={"gtol": 1e-9, "maxiter": 5000})
    return res.x, res.fun


def test_vector_scaling_is_the_optimum():
    z, y = make(n=800, k=3, seed=1)
    vs = VectorScaler(alpha=0.0).fit(z, y)  # the classic, unpenalised method
    assert vs.converged_
    k = 3

    def unpack(t):
        return lambda x: x * t[:k] + t[k:]

    ref, f_ref = _reference(z, y, unpack, lambda t: 0.0, np.r_[np.ones(k), np.zeros(k)])
    ours = nll_of(vs.transform(z), y)
    assert ours <= f_ref + 1e-10
    assert_close(vs.coef_, ref[:k], rtol=1e-4)
    # biases are defined up to a constant without a penalty
    assert_close(vs.intercept_ - vs.intercept_.mean(), ref[k:] - ref[k:].mean(), atol=1e-4)


def test_vector_scaling_penalty_and_its_optimum():
    z, y = make(n=600, k=3, seed=2)
    vs = VectorScaler(alpha=0.05).fit(z, y)
    k = 3

    def unpack(t):
        return lambda x: x * t[:k] + t[k:]

    def pen(t):
        return 0.05 * (np.sum((t[:k] - 1) ** 2) + np.sum(t[k:] ** 2))

    ref, f_ref = _reference(z, y, unpack, pen, np.r_[np.ones(k), np.zeros(k)])
    assert_close(np.r_[vs.coef_, vs.intercept_], ref, atol=1e-5)
    assert vs.objective_ <= f_ref + 1e-10


def test_vector_scaling_auto_penalty_is_half_a_row():
    # alpha="auto" is 0.5/N: the same fit as that number, and near the identity on nearly
    # separable rows where the unpenalised fit sharpens the logits five-fold (wine's naive
    # Bayes logits: test NLL 4.7x netcal's, mean over 10 splits)
    z, y = make(n=400, k=3, seed=5)
    auto = VectorScaler().fit(z, y)
    fixed = VectorScaler(alpha=0.5 / 400).fit(z, y)
    assert_close(auto.coef_, fixed.coef_, rtol=1e-12)
    assert_close(auto.intercept_, fixed.intercept_, rtol=1e-12, atol=1e-15)
    zs = np.eye(3)[y] * 6.0 + np.random.default_rng(6).normal(size=(400, 3))
    free = VectorScaler(alpha=0.0).fit(zs, y)
    auto = VectorScaler().fit(zs, y)
    assert auto.converged_ and np.all(free.coef_ > 4.5) and np.all(auto.coef_ < 2.0)
    with pytest.raises(LogitkitValueError, match="alpha"):
        VectorScaler(alpha="none").fit(z, y)


def test_matrix_scaling_auto_penalty_is_half_a_row():
    # MatrixScaler shares VectorScaler's "auto" (0.5/N): the same fit as that number; on nearly
    # separable rows the unpenalised map runs off (the demo's folds took 22-68 Newton passes),
    # the default stays near the identity and converges in a few
    z, y = make(n=400, k=3, seed=5)
    auto = MatrixScaler().fit(z, y)
    fixed = MatrixScaler(alpha=0.5 / 400).fit(z, y)
    assert_close(auto.coef_, fixed.coef_, rtol=1e-9, atol=1e-12)
    assert_close(auto.intercept_, fixed.intercept_, rtol=1e-9, atol=1e-12)
    zs = np.eye(3)[y] * 6.0 + np.random.default_rng(6).normal(size=(400, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = MatrixScaler(alpha=0.0).fit(zs, y)
    auto = MatrixScaler().fit(zs, y)
    assert auto.converged_ and auto.n_iter_ < free.n_iter_
    assert np.abs(free.coef_ - np.eye(3)).max() > 2.5 and np.abs(auto.coef_ - np.eye(3)).max() < 0.75
    with pytest.raises(LogitkitValueError, match="alpha"):
        MatrixScaler(alpha="none").fit(z, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 13, 40])
def test_vector_scaling_kernel_sums_equal_numpy(target, dtype, k):
    # The native value and gradient of the diagonal map (csrc/affine.cpp; Newton's passes) and
    # the Hessian on every stride-th row against the NumPy path, with and without sample weights; rows that
    # are not a multiple of the kernel's blocks, classes not a multiple of the SIMD lanes.
    z, y = make(n=1037, k=k, seed=k)
    z = z.astype(dtype)
    w = np.random.default_rng(k).random(1037)
    theta = np.r_[np.linspace(0.3, 1.7, k), np.linspace(-1.0, 1.0, k)]
    spec = scaling.Features("logits", k)
    for weights in (None, w):
        for order, stride in ((2, 1), (2, 7)):
            kw = dict(theta=theta, form="diag", spec=spec, from_probs=False, floor=-np.inf, order=order,
                      stride=stride)
            fast = scaling.affine_sums(z, y, weights, **kw)
            with _kernels.fast_path(False):
                slow = scaling.affine_sums(z, y, weights, **kw)
            assert len(fast) == len(slow)
            for a, b in zip(fast, slow, strict=True):
                assert_close(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-9)


def test_vector_scaling_kernel_fit_equals_numpy_fit():
    # The whole fit on float32 logits, with the kernel and without: the same optimum.
    z, y = make(n=3000, k=12, seed=8)
    z = z.astype(np.float32)
    fast = VectorScaler(tol=1e-9).fit(z, y)
    with _kernels.fast_path(False):
        slow = VectorScaler(tol=1e-9).fit(z, y)
    assert fast.converged_ and slow.converged_
    assert_close(fast.coef_, slow.coef_, rtol=1e-7)
    assert_close(fast.intercept_, slow.intercept_, rtol=1e-7, atol=1e-8)
    assert abs(fast.objective_ - slow.objective_) < 1e-12


def test_vector_scaling_of_two_classes_is_platt_scaling():
    from sklearn.linear_model import LogisticRegression

    s, y = make_binary(seed=3)
    one = VectorScaler(alpha=0.0).fit(s, y)
    two = VectorScaler(alpha=0.0).fit(np.stack([-0.5 * s, 0.5 * s], axis=1), y)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(s[:, None], y)
    platt = expit(lr.coef_[0, 0] * s + lr.intercept_[0])
    assert_close(one.predict_proba(s)[:, 1], platt, rtol=1e-6)
    assert_close(two.predict_proba(np.stack([-0.5 * s, 0.5 * s], axis=1))[:, 1], platt,
                 rtol=1e-6)


def test_matrix_scaling_is_the_optimum():
    z, y = make(n=700, k=3, seed=4)
    ms = MatrixScaler(alpha=0.01).fit(z, y)
    k = 3

    def unpack(t):
        return lambda x: x @ t[:k * k].reshape(k, k).T + t[k * k:]

    def pen(t):
        return 0.01 * (np.sum((t[:k * k] - np.eye(k).ravel()) ** 2) + np.sum(t[k * k:] ** 2))

    ref, f_ref = _reference(z, y, unpack, pen, np.r_[np.eye(k).ravel(), np.zeros(k)])
    assert ms.converged_ and ms.objective_ <= f_ref + 1e-10
    assert_close(np.r_[ms.coef_.ravel(), ms.intercept_], ref, atol=1e-5)


@pytest.mark.parametrize("reg_diagonal", [0.0, 1.0, 4.0])
def test_dirichlet_scaling_with_odir_is_the_optimum(reg_diagonal):
    # reg_diagonal=0 is the paper's ODIR; otherwise the diagonal is pulled toward 1/T of
    # temperature scaling fitted on the same rows
    z, y = make(n=700, k=3, seed=5)
    ds = DirichletScaler(reg_lambda=0.3, reg_mu=0.2, reg_diagonal=reg_diagonal).fit(z, y)
    k = 3
    off = ~np.eye(k, dtype=bool)
    beta = 1.0 / TemperatureScaler().fit(z, y).temperature_

    def unpack(t):
        return lambda x: log_softmax(x, axis=1) @ t[:k * k].reshape(k, k).T + t[k * k:]

    def pen(t):
        w = t[:k * k].reshape(k, k)
        return (0.3 * k * (k - 1) / 700 * np.sum(w[off] ** 2)
                + reg_diagonal * k / 700 * np.sum((np.diag(w) - beta) ** 2)
                + 0.2 * k / 700 * np.sum(t[k * k:] ** 2))

    ref, f_ref = _reference(z, y, unpack, pen, np.r_[np.eye(k).ravel(), np.zeros(k)])
    assert ds.converged_ and ds.objective_ <= f_ref + 1e-10
    # The gauge (one constant added to a column of [W | b]: every class's logit moves alike)
    # is flat for the data term, curvature 2λ: numerical BFGS stops up to 3e-5 off along it,
    # by platform ("precision loss").  The reference is moved to the penalty's exact
    # minimum along it, written from the penalty: shift c_j = -(λ_o Σ_i≠j W_ij +
    # λ_d (W_jj - β)) / (λ_o (K - 1) + λ_d), and the intercepts' mean to 0.
    lam_o, lam_d = 0.3 * k * (k - 1) / 700, reg_diagonal * k / 700
    w = ref[:k * k].reshape(k, k).copy()
    for j in range(k):
        others = w[:, j].sum() - w[j, j]
        w[:, j] -= (lam_o * others + lam_d * (w[j, j] - beta)) / (lam_o * (k - 1) + lam_d)
    ref = np.r_[w.ravel(), ref[k * k:] - ref[k * k:].mean()]
    assert_close(np.r_[ds.coef_.ravel(), ds.intercept_], ref, atol=1e-5)


def test_dirichlet_diagonal_ridge_keeps_small_separable_ish_sets_near_temperature_scaling():
    # 40 rows, one misclassified: with the diagonal free (ODIR) the map sharpens far past
    # temperature scaling; the default ridge keeps it near 1/T
    rng = np.random.default_rng(3)
    k, n = 4, 40
    y = np.arange(n) % k
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 4.0
    z[0, (y[0] + 1) % k] += 9.0
    beta = 1.0 / TemperatureScaler().fit(z, y).temperature_
    odir = DirichletScaler(reg_diagonal=0.0).fit(z, y)
    ours = DirichletScaler().fit(z, y)
    assert np.abs(np.diag(ours.coef_) - beta).max() < 0.5 * np.abs(np.diag(odir.coef_) - beta).max()


@pytest.mark.parametrize("form", ["matrix", "vector"])
def test_structured_scaling_is_the_optimum_of_its_definition(form):
    z, y = make(n=600, k=3, seed=6)
    sms = StructuredScaler(form=form, reg_intercept=2.0, reg_diagonal=0.5,
                           reg_off_diagonal=3.0).fit(z, y)
    k, n = 3, 600
    t = TemperatureScaler().fit(z, y).temperature_
    assert sms.temperature_ == t and sms.mix_ == 1 / (n + 1)
    eps = 1 / (n + 1)
    x = np.log((1 - eps) * softmax(z / t, axis=1) + eps / k)
    off = ~np.eye(k, dtype=bool)

    if form == "vector":
        def unpack(th):
            return lambda _: x * th[:k] + th[k:]

        def pen(th):
            return k / n * (0.5 * np.sum((th[:k] - 1) ** 2) + 2.0 * np.sum(th[k:] ** 2))

        x0 = np.r_[np.ones(k), np.zeros(k)]
        got = np.r_[sms.coef_, sms.intercept_]
    else:
        def unpack(th):
            return lambda _: x @ th[:k * k].reshape(k, k).T + th[k * k:]

        def pen(th):
            a = th[:k * k].reshape(k, k)
            return (k / n * (0.5 * np.sum((np.diag(a) - 1) ** 2) + 2.0 * np.sum(th[k * k:] ** 2))
                    + 3.0 * k * (k - 1) / n * np.sum(a[off] ** 2))

        x0 = np.r_[np.eye(k).ravel(), np.zeros(k)]
        got = np.r_[sms.coef_.ravel(), sms.intercept_]
    ref, f_ref = _reference(z, y, unpack, pen, x0)
    assert sms.converged_ and sms.objective_ <= f_ref + 1e-10
    assert_close(got, ref, atol=1e-5)
    assert_close(sms.transform(z), unpack(got)(z), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_structured_scaling_matches_probmetrics(probmetrics_calibrators):
    import torch

    SMSCalibrator = probmetrics_calibrators.SMSCalibrator
    SVSCalibrator = probmetrics_calibrators.SVSCalibrator

    torch.set_num_threads(1)
    z, y = make(n=1200, k=4, seed=7)
    zt, yt = make(n=3000, k=4, seed=8)
    probs, probs_t = softmax(z, axis=1), softmax(zt, axis=1)
    for ours, theirs in ((StructuredScaler(), SMSCalibrator(print_init_info=False)),
                         (StructuredScaler(form="vector"), SVSCalibrator(print_init_info=False))):
        ours.fit(z, y)
        theirs.fit(probs, y)
        p_theirs = theirs.predict_proba(probs_t)
        nll_theirs = -np.log(p_theirs[np.arange(len(yt)), yt]).mean()
        nll_ours = nll_of(ours.transform(zt), yt)
        # the same model; probmetrics optimises in float32 with torchmin's default tolerance
        assert nll_ours <= nll_theirs + 2e-4
        assert abs(nll_ours - nll_theirs) < 2e-3


def test_beta_calibration_matches_betacal():
    from betacal import BetaCalibration

    s, y = make_binary(n=2000, seed=9)
    bc = BetaCalibrator(reg=0.0, tol=1e-8).fit(s, y)  # betacal's model has no ridge
    p = expit(s)
    ref = BetaCalibration(parameters="abm").fit(p, y)
    q_ref, q = ref.predict(p), bc.predict_proba(s)[:, 1]
    # the same model: betacal's L-BFGS stops near the optimum, Newton's at it
    assert_close(q, q_ref, rtol=1e-3)
    nll = -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))
    assert nll <= -np.mean(y * np.log(q_ref) + (1 - y) * np.log1p(-q_ref)) + 1e-12
    a, b, _ = bc.coef_[0]
    assert a >= 0 and b >= 0


def test_beta_refits_a_negative_coefficient_at_zero():
    # Labels that rise with p only through log(1 - p): a comes out negative unconstrained.
    rng = np.random.default_rng(10)
    s = rng.normal(size=3000) * 3
    p = expit(s)
    truth = expit(-0.5 * np.log(p) + 1.5 * -np.log1p(-p) - 1.0)
    y = (rng.random(3000) < truth).astype(int)
    bc = BetaCalibrator(reg=0.0, tol=1e-8).fit(s, y)
    a, b, _ = bc.coef_[0]
    assert a == 0.0 and b > 0 and bc.converged_
    from betacal import BetaCalibration

    ref = BetaCalibration(parameters="abm").fit(p, y)
    assert_close(bc.predict_proba(s)[:, 1], ref.predict(p), rtol=2e-3)


def _beta_objective(theta, lp, nl, t, reg):
    """Mean logistic loss of ``logit q = a log p − b log(1 − p) + c`` plus
    ``reg/N · ‖(a, b, c) − (1, 1, 0)‖²``, written out independently of the calibrator."""
    s = theta[0] * lp + theta[1] * nl + theta[2]
    d = theta - np.array([1.0, 1.0, 0.0])
    return np.mean(np.logaddexp(0.0, s) - t * s) + reg / len(t) * (d @ d)


def test_beta_ridge_is_the_stated_objective_per_class():
    # Every one-vs-rest class's coefficients minimise its own penalised objective (each class
    # has its own line search: a class that converges early is not moved by the others).
    z, y = make(n=600, k=5, seed=21, scale=4.0)
    bc = BetaCalibrator(tol=1e-9).fit(z, y)
    lp = np.maximum(log_softmax(z, axis=1), np.log(np.finfo(float).eps))
    nl = -np.maximum(np.log1p(-np.exp(lp)), np.log(np.finfo(float).eps))
    for c in range(5):
        t = (y == c).astype(float)
        ref = minimize(_beta_objective, np.zeros(3), args=(lp[:, c], nl[:, c], t, 0.5),
                       method="BFGS", options={"gtol": 1e-10})
        assert_close(bc.coef_[c], ref.x, rtol=1e-5, atol=1e-6)


def test_beta_ridge_keeps_a_separable_class_finite():
    # Regression: unpenalised, a one-vs-rest class that the logits separate drove the fit
    # towards infinity (b up to 265 on wine's naive Bayes logits, test NLL 3x the peers').
    # The ridge reg/N toward the identity map keeps it finite and converged.
    rng = np.random.default_rng(22)
    z = rng.normal(size=(200, 3)) * 2.0
    y = rng.integers(0, 3, size=200)
    top = z[:, :2].max(axis=1)
    gap = 2.0 + np.abs(rng.normal(size=200))
    z[:, 2] = np.where(y == 2, top + gap, top - gap)  # class 2 is separated by its logit
    bc = BetaCalibrator().fit(z, y)
    assert bc.converged_ and np.all(np.abs(bc.coef_) < 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = BetaCalibrator(reg=0.0, max_iter=100).fit(z, y)
    assert np.max(np.abs(free.coef_[2])) > 3 * np.max(np.abs(bc.coef_[2]))


def _beta_sums_reference(u, v, t, w, th):
    """Per class: ``Σw·loss``, gradient and Hessian of ``softplus(s) − t·s``,
    ``s = a u + b v + c``, written out with SciPy's ``expit`` and NumPy's ``logaddexp``."""
    s = u * th[:, 0] + v * th[:, 1] + th[:, 2]
    q = expit(s)
    f = w @ (np.logaddexp(0.0, s) - t * s)
    xs = (u, v, np.ones_like(u))
    g = np.stack([w @ ((q - t) * x) for x in xs], axis=1)
    r = q * (1.0 - q)
    h = np.array([[w @ (r * xi * xj) for xj in xs] for xi in xs]).transpose(2, 0, 1)
    return f, g, h


@pytest.mark.parametrize("k", [2, 3, 13, 40])
@pytest.mark.parametrize("fast", [True, False], ids=["kernel", "numpy"])
def test_beta_sums_equal_the_written_out_objective(target, k, fast):
    # beta_sums (csrc/beta.cpp, or its NumPy arithmetic) against the loss, gradient and
    # Hessian written out: every class, C not a multiple of the SIMD lanes, sample weights,
    # a fixed coefficient, a subset of classes, and rows given as logits or as features.
    from logitkit.calibration._binary import beta_features, beta_sums

    rng = np.random.default_rng(k)
    n = 1037  # several of the kernel's row blocks and a partial one
    z = rng.normal(size=(n, k)) * 4.0
    y = rng.integers(0, k, size=n)
    w = rng.random(n)
    n_cls = 1 if k == 2 else k
    theta = rng.normal(size=(n_cls, 3))
    free = np.ones((n_cls, 3))
    free[0, 1] = 0.0
    feat = beta_features(z, False, -np.inf, k)
    u, v = feat[:, :n_cls], feat[:, n_cls:]
    t = (y == 1)[:, None] * 1.0 if k == 2 else (y[:, None] == np.arange(k)) * 1.0
    subsets = [None] + ([np.array([0, 2])] if k > 2 else [])
    with _kernels.fast_path(fast):
        for classes in subsets:
            cls = np.arange(n_cls) if classes is None else classes
            fr = free[cls]
            want = _beta_sums_reference(u[:, cls], v[:, cls], t[:, cls], w, theta[cls] * fr)
            for x, features in ((z, False), (feat, True)):
                got = beta_sums(x, y, w, theta=theta[cls], free=fr, from_probs=False, floor=-np.inf, k=k,
                                features=features, classes=classes)
                for a, b in zip(got, (want[0], want[1] * fr,
                                      want[2] * fr[:, :, None] * fr[:, None, :]), strict=True):
                    assert_close(a, b, rtol=1e-11, atol=1e-9)
            unweighted = beta_sums(feat, y, None, theta=theta[cls], free=fr, from_probs=False, floor=-np.inf,
                                   k=k, features=True, classes=classes)
            ones = _beta_sums_reference(u[:, cls], v[:, cls], t[:, cls], np.ones(n),
                                        theta[cls] * fr)
            assert_close(unweighted[0], ones[0], rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 13, 40])
def test_beta_features_kernel_equals_numpy(target, dtype, k):
    # The native features (csrc/beta.cpp) against the NumPy path: rows with a dominant class
    # (p > 1/2: log(1 − p) by expm1), overconfident rows (both floors), excluded classes.
    from logitkit.calibration._binary import beta_features

    rng = np.random.default_rng(k)
    z = rng.normal(size=(300, k)) * 3.0
    z[:100, 0] += 8.0  # p_0 > 1/2
    z[100:150, 1] += 60.0  # log p of the others below log ε, 1 − p_1 below ε
    z[150:160, 2] = -np.inf
    z = z.astype(dtype)
    fast = beta_features(z, False, -np.inf, k)
    with _kernels.fast_path(False):
        slow = beta_features(z, False, -np.inf, k)
    assert fast.dtype == np.float64 and fast.shape == (300, 2 * k)
    # log p = z − logsumexp(z) carries a few ulps of the logsumexp, δ; −log(1 − p) amplifies
    # it by p/(1 − p) < e^{−log(1 − p)} (both paths round the logsumexp differently)
    delta = 8 * np.finfo(np.float64).eps * (1.0 + np.abs(z[np.isfinite(z)]).max())
    assert_close(fast[:, :k], slow[:, :k], rtol=1e-13, atol=delta)
    bound = 1e-13 * (1.0 + np.abs(slow[:, k:])) + delta * np.exp(slow[:, k:])
    assert np.all(np.abs(fast[:, k:] - slow[:, k:]) <= bound)


def test_beta_kernel_sums_do_not_depend_on_threads():
    # The kernel's row blocks are added in block order: one thread and many agree bit for bit.
    from logitkit.calibration._binary import beta_features, beta_sums

    native = _kernels.native()
    z, y = make(n=20_000, k=37, seed=4)
    feat = beta_features(z, False, -np.inf, 37)
    theta, free = np.tile([0.7, 1.2, -0.3], (37, 1)), np.ones((37, 3))
    before = native.min_parallel_ns()
    try:
        native.set_min_parallel_ns(1e30)
        serial = beta_sums(feat, y, None, theta=theta, free=free, from_probs=False, floor=-np.inf, k=37,
                           features=True)
        native.set_min_parallel_ns(0.0)
        parallel = beta_sums(feat, y, None, theta=theta, free=free, from_probs=False, floor=-np.inf, k=37,
                             features=True)
    finally:
        native.set_min_parallel_ns(before)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_beta_reg_is_checked():
    with pytest.raises(LogitkitValueError, match="reg"):
        BetaCalibrator(reg=-1.0).fit(*make_binary(n=100))


@pytest.mark.parametrize("threaded", [False, True])
def test_isotonic_matches_scikit_learn_and_never_gives_zero(threaded, monkeypatch):
    from sklearn.isotonic import IsotonicRegression

    from logitkit.calibration import _binary

    if threaded:  # the classes on THREADS threads, however small the fit
        monkeypatch.setattr(_binary, "ISOTONIC_THREADED", 0)
        monkeypatch.setattr(_binary, "THREADS", 2)

    s, y = make_binary(n=1000, seed=11)
    iso = IsotonicCalibrator().fit(s, y)
    p = expit(s)
    ref = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    test = np.linspace(-12, 12, 501)
    want = np.clip(ref.predict(expit(test)), iso.floor_, 1 - iso.floor_)
    assert_close(iso.predict_proba(test)[:, 1], want, rtol=1e-12, atol=1e-15)
    assert iso.predict_proba(test).min() >= iso.floor_ > 0
    # multiclass: per class as scikit-learn's one-vs-rest, then renormalised
    z, yk = make(n=900, k=3, seed=12)
    iso3 = IsotonicCalibrator().fit(z, yk)
    pk = softmax(z, axis=1)
    cols = np.stack([np.clip(IsotonicRegression(out_of_bounds="clip").fit(pk[:, c], yk == c)
                             .predict(pk[:, c]), iso3.floor_, 1 - iso3.floor_)
                     for c in range(3)], axis=1)
    assert_close(iso3.predict_proba(z), cols / cols.sum(axis=1, keepdims=True), rtol=1e-12)


def test_isotonic_pools_tied_probabilities_as_scikit_learn_does(monkeypatch):
    # equal p_k are one point of the regression (their labels averaged, weights summed)
    from sklearn.isotonic import IsotonicRegression

    from logitkit.calibration import _binary

    monkeypatch.setattr(_binary, "ISOTONIC_THREADED", 0)
    monkeypatch.setattr(_binary, "THREADS", 2)
    z, y = make(n=1200, k=4, seed=14)
    z = np.round(z, 1)  # many ties
    w = np.random.default_rng(15).random(1200) + 0.5
    iso = IsotonicCalibrator().fit(z, y, sample_weight=w)
    p = softmax(z, axis=1)
    for c in range(4):
        ref = IsotonicRegression(out_of_bounds="clip").fit(p[:, c], y == c, sample_weight=w)
        sl = slice(int(iso.knots_start_[c]), int(iso.knots_start_[c + 1]))
        assert_close(np.interp(p[:, c], iso.knots_x_[sl], iso.knots_y_[sl]),
                     ref.predict(p[:, c]), rtol=1e-10, atol=1e-12)  # sums' rounding


def test_isotonic_threads_in_concurrent_fits(monkeypatch):
    # The class pool lives for one fit: fits in concurrent Python threads give the one-thread
    # answer (the forked child: below)
    from concurrent.futures import ThreadPoolExecutor

    from logitkit.calibration import _binary

    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(20000, 60)) * 3, rng.integers(0, 60, 20000)
    monkeypatch.setattr(_binary, "THREADS", 1)
    want = IsotonicCalibrator().fit(z, y).knots_y_
    monkeypatch.setattr(_binary, "THREADS", 2)
    monkeypatch.setattr(_binary, "ISOTONIC_THREADED", 0)
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda _: IsotonicCalibrator().fit(z, y).knots_y_, range(3)))
    assert all(np.array_equal(g, want) for g in got)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_isotonic_fits_in_the_child_of_a_fork():
    same_fit_in_a_forked_child("""
        from logitkit.calibration import IsotonicCalibrator
        from logitkit.calibration import _binary
        _binary.THREADS, _binary.ISOTONIC_THREADED = 2, 0
        rng = np.random.default_rng(0)
        z, y = rng.normal(size=(20000, 60)) * 3, rng.integers(0, 60, 20000)
    """, "IsotonicCalibrator().fit(z, y).knots_y_")


def same_fit_in_a_forked_child(setup: str, fit: str) -> None:
    """In a fresh interpreter: ``setup`` (NumPy is ``np``) defines ``z``, ``y``; ``fit`` (an
    expression of them) is evaluated, then again in a child forked while another thread of
    the parent evaluates it: the child must get the parent's answer exactly."""
    import subprocess
    import sys
    import textwrap

    code = "import os, threading\nimport numpy as np\n" + textwrap.dedent(setup) + \
        textwrap.dedent(f"""
        want = {fit}
        busy = threading.Thread(target=lambda: {fit})
        busy.start()
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal({fit}, want)
            os._exit(0 if ok else 3)
        busy.join()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "0"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3)), min_size=1, max_size=300))
def test_pool_adjacent_violators_equals_scipy(rows):
    from scipy.optimize import isotonic_regression

    y, w = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
    assert_close(isotonic_fit(y, w), isotonic_regression(y, weights=w).x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("y", [
    np.r_[np.arange(3000.0), -1e9],  # one pooling per vectorised pass: the stack finishes it
    np.tile([1.0, 0.0], 2000) + np.arange(4000) * 1e-4,  # every pair violates
    (np.random.default_rng(3).random(20000) < np.linspace(0, 1, 20000)).astype(float),
    np.full(50, 2.0), np.arange(40.0), np.arange(40.0)[::-1],
], ids=["one-per-pass", "sawtooth", "labels", "flat", "increasing", "decreasing"])
def test_pool_adjacent_violators_on_hard_sequences(y):
    from scipy.optimize import isotonic_regression

    w = np.random.default_rng(4).random(y.size) + 0.5
    assert_close(isotonic_fit(y, w), isotonic_regression(y, weights=w).x, rtol=1e-12,
                 atol=1e-6)


def test_select_over_every_method_of_a_small_problem_never_imports_scipy_optimize():
    # The demo's select (every method, K = 10) paid 0.3-0.4 CPU s to import scipy.optimize for
    # isotonic regression alone; pool-adjacent-violators is in-house now, and Newton fits the
    # small maps.
    import subprocess
    import sys

    code = ("import sys, numpy as np, warnings; from logitkit.calibration import select\n"
            "rng = np.random.default_rng(0); z = rng.normal(size=(600, 10)) * 3\n"
            "y = (z + rng.gumbel(size=z.shape) * 3).argmax(1)\n"
            "warnings.simplefilter('ignore'); select(z, y, random_state=0)\n"
            "print('scipy.optimize' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_histogram_bins_values_and_floor():
    s, y = make_binary(n=2000, seed=13)
    hb = HistogramCalibrator(n_bins=8).fit(s, y)
    p = expit(s)
    b = np.clip(np.ceil(p * 8).astype(int) - 1, 0, 7)
    share = np.array([y[b == i].mean() if np.any(b == i) else y.mean() for i in range(8)])
    assert_close(hb.values_[0], share, rtol=1e-12)
    q = hb.predict_proba(s)[:, 1]
    assert_close(q, np.clip(share[b], hb.floor_, 1 - hb.floor_), rtol=1e-12)
    hq = HistogramCalibrator(n_bins=8, binning="quantile").fit(s, y)
    counts = np.bincount(np.clip(np.searchsorted(hq.edges_[0, 1:-1], p), 0, 7), minlength=8)
    assert counts.min() >= 240 and counts.max() <= 260  # equal mass
    # a class absent from the fit still gets a positive probability
    z, yk = make(n=600, k=3, seed=14)
    yk[yk == 2] = 0
    for est in (HistogramCalibrator(), IsotonicCalibrator()):
        est.fit(z, yk)
        prob = est.predict_proba(z)
        assert prob.min() > 0 and np.isfinite(np.log(prob)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_histogram_matches_probmetrics(probmetrics_calibrators):
    BinaryHistogramBinningCalibrator = probmetrics_calibrators.BinaryHistogramBinningCalibrator

    s, y = make_binary(n=2000, seed=15)
    p = expit(s)
    ours = HistogramCalibrator().fit(s, y).predict_proba(s)[:, 1]
    theirs = BinaryHistogramBinningCalibrator().fit(np.stack([1 - p, p], 1), y)
    q = theirs.predict_proba(np.stack([1 - p, p], 1))[:, 1]
    on_edge = np.isclose(p * 10, np.round(p * 10))  # their bins are left-closed
    assert_close(ours[~on_edge], q[~on_edge], rtol=1e-9)


# --------------------------------------------------------------------------------------------
# derivatives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["diag", "full"])
@pytest.mark.parametrize("kind", ["logits", "log_softmax", "tempered", "margin"])
def test_block_sums_have_exact_gradient_hessian_and_hvp(form, kind):
    k = 2 if kind == "margin" else 3
    z, y = make(n=300, k=k, seed=16)
    w = np.random.default_rng(16).uniform(0.2, 2.0, size=300)
    spec = scaling.Features(kind, k, beta=0.4, mix=0.01)
    dim = 2 * k if form == "diag" else k * (k + 1)
    theta = np.random.default_rng(17).normal(size=dim) * 0.3
    theta[:k] += 1.0 if form == "diag" else 0.0
    data = FitData(z, y, w, k, float(w.sum()), False, floor=-np.inf)
    obj = scaling.Objective(data, form, spec, scaling.Penalty(0.1, 0.2, 0.3))
    obj.stride = 1
    f, g, h = obj.value_grad_hess(theta)
    eps = 1e-6
    fd_g = np.array([(obj.value_grad(theta + eps * e)[0] - obj.value_grad(theta - eps * e)[0])
                     / (2 * eps) for e in np.eye(dim)])
    assert_close(g, fd_g, rtol=1e-6, atol=1e-8)
    fd_h = np.array([(obj.value_grad(theta + eps * e)[1] - obj.value_grad(theta - eps * e)[1])
                     / (2 * eps) for e in np.eye(dim)])
    assert_close(h, fd_h, rtol=1e-5, atol=1e-7)
    v = np.random.default_rng(18).normal(size=dim)
    assert_close(obj.hvp(theta, v), h @ v, rtol=1e-10, atol=1e-12)
    assert_close(f, obj.value_grad(theta)[0], rtol=1e-14)


# --------------------------------------------------------------------------------------------
# inputs, array libraries, Dask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_backends_give_the_same_fit_and_keep_the_array_type(cls, xp):
    z, y = make(n=300, k=3, seed=19)
    ref = quiet(cls(), z, y)
    za, ya = asarray(xp, z), asarray(xp, y)
    est = quiet(cls(), za, ya)
    out = est.predict_proba(za)
    assert is_type_of(out, xp) and is_type_of(est.transform(za), xp)
    assert_close(out, ref.predict_proba(z), rtol=1e-9, atol=1e-12)
    z32 = asarray(xp, z, dtype=np.float32)
    t32 = est.transform(z32)
    assert to_numpy(t32).dtype == np.float32
    assert_close(t32, ref.transform(z), rtol=1e-4, atol=1e-4)
    assert_close(est.predict(za), np.argmax(to_numpy(out), axis=1))


@pytest.mark.parametrize("cls", PARAMETRIC[1:5], ids=lambda c: c.__name__)
def test_affine_transform_is_differentiable_and_jittable(cls):
    import jax
    import jax.numpy as jnp
    import torch

    z, y = make(n=200, k=3, seed=20)
    est = quiet(cls(), z, y)
    zt = torch.tensor(z, requires_grad=True)
    est.predict_proba(zt)[:, 0].sum().backward()
    assert zt.grad is not None and torch.isfinite(zt.grad).all()
    jitted = jax.jit(est.predict_proba)(jnp.asarray(z))
    assert_close(jitted, est.predict_proba(z), rtol=1e-12)


FULL_MAPS = [MatrixScaler, DirichletScaler, StructuredScaler]


@pytest.mark.parametrize("cls, lbfgs", [(c, False) for c in WEIGHTED] + [(c, True) for c in FULL_MAPS],
                         ids=lambda v: v.__name__ if isinstance(v, type) else ("lbfgs" if v else ""))
def test_dask_fit_and_transform_equal_numpy(cls, lbfgs, monkeypatch):
    # lbfgs: above the Newton limit the full maps take whitened, class-block preconditioned
    # L-BFGS, whose feature moments and passes are map-reduces over the blocks too
    import dask
    import dask.array as da

    called = []
    if lbfgs:
        monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 2)
        inner = scaling.lbfgs
        monkeypatch.setattr(scaling, "lbfgs",
                            lambda *a, **kw: called.append(1) or inner(*a, **kw))
    z, y = make(n=900, k=3, seed=21)
    w = np.random.default_rng(21).uniform(0.5, 1.5, size=900)
    ref = quiet(cls(), z, y, w)
    dz, dy, dw = (da.from_array(a, chunks=(250, *a.shape[1:])) for a in (z, y, w))
    with dask.config.set(scheduler="threads"):
        est = quiet(cls(), dz, dy, dw)
        out = est.predict_proba(dz)
        assert isinstance(out, da.Array)  # lazy, array type in = out
        assert_close(out.compute(), ref.predict_proba(z), rtol=1e-6 if lbfgs else 1e-7,
                     atol=1e-9 if lbfgs else 1e-10)
    assert len(called) == (2 if lbfgs else 0)


@pytest.mark.parametrize("cls", FULL_MAPS, ids=lambda c: c.__name__)
def test_dask_fit_with_the_diagonal_preconditioner_equals_numpy(cls, monkeypatch):
    # above BLOCK_MAX_CLASSES the preconditioner's diagonals are a map-reduce over the blocks
    import dask
    import dask.array as da

    monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 2)
    monkeypatch.setattr(scaling, "BLOCK_MAX_CLASSES", 2)
    z, y = make(n=900, k=3, seed=22)
    w = np.random.default_rng(22).uniform(0.5, 1.5, size=900)
    ref = quiet(cls(), z, y, w)
    dz, dy, dw = (da.from_array(a, chunks=(250, *a.shape[1:])) for a in (z, y, w))
    with dask.config.set(scheduler="threads"):
        est = quiet(cls(), dz, dy, dw)
        assert_close(est.predict_proba(dz).compute(), ref.predict_proba(z), rtol=1e-6,
                     atol=1e-9)


def test_structured_vector_form_on_every_backend_and_dask(xp):
    # the SVS form fits diagonal maps of tempered features: its own path through Newton
    import dask
    import dask.array as da

    z, y = make(n=600, k=3, seed=23)
    ref = quiet(StructuredScaler(form="vector"), z, y)
    est = quiet(StructuredScaler(form="vector"), asarray(xp, z), asarray(xp, y))
    out = est.predict_proba(asarray(xp, z))
    assert is_type_of(out, xp)
    assert_close(out, ref.predict_proba(z), rtol=1e-9, atol=1e-12)
    if xp is np:
        dz, dy = (da.from_array(a, chunks=(200, *a.shape[1:])) for a in (z, y))
        with dask.config.set(scheduler="threads"):
            lazy = quiet(StructuredScaler(form="vector"), dz, dy).predict_proba(dz)
            assert isinstance(lazy, da.Array)
            assert_close(lazy.compute(), ref.predict_proba(z), rtol=1e-7, atol=1e-10)


def test_each_optimiser_step_is_one_map_reduce(monkeypatch):
    import dask
    import dask.array as da

    z, y = make(n=1000, k=3, seed=22)
    calls = []
    inner = scaling.affine_sums

    def counting(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(scaling, "affine_sums", counting)
    with dask.config.set(scheduler="synchronous"):
        vs = VectorScaler().fit(da.from_array(z, chunks=(250, 3)), da.from_array(y, chunks=250))
    assert len(calls) == 4 * vs.n_iter_  # 4 blocks per pass, one pass per evaluation


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_binary_as_one_column_or_two(cls):
    s, y = make_binary(n=600, seed=23)
    one = quiet(cls(), s, y)
    two = quiet(cls(), np.stack([np.zeros_like(s), s], axis=1), y)
    assert one.n_classes_ == two.n_classes_ == 2
    assert_close(one.predict_proba(s), two.predict_proba(np.stack([0 * s, s], 1)), rtol=1e-8,
                 atol=1e-12)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_probabilities_with_from_probs_equal_their_logits(cls):
    z, y = make(n=500, k=3, seed=24)
    p = softmax(z, axis=1)
    ref = quiet(cls(), log_softmax(z, axis=1), y)
    est = quiet(cls(from_probs=True), p, y)
    assert_close(est.predict_proba(p), ref.predict_proba(log_softmax(z, axis=1)), rtol=1e-7,
                 atol=1e-12)
    assert est.to_dict()["input"] == "probs"
    if cls is not IdentityCalibrator:
        with pytest.warns(CalibrationWarning, match="looks like probabilities"):
            quiet_fit = cls()
            quiet_fit.fit(p, y)


def _forest_like_probabilities(n=600, k=4, seed=26, label_zeros=0):
    # a random forest's votes: multiples of 1/5, most classes exactly 0 on a row
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    votes = np.zeros((n, k))
    for i in range(n):
        for _ in range(5):
            votes[i, y[i] if rng.random() < 0.8 else rng.integers(0, k)] += 1
    for i in range(label_zeros):  # every tree wrong: probability 0 on the label
        votes[i] = 0
        votes[i, (y[i] + 1) % k] = 5
    return votes / 5, y


def _floored(p, floor):
    # the rule, written out: a zero is exp(floor) and its row renormalised; positive
    # probabilities (even those below exp(floor)) keep their logs
    logs = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), floor)
    has_zero = (p == 0).any(axis=1, keepdims=True)
    return np.where(has_zero, logs - np.logaddexp.reduce(logs, axis=1, keepdims=True), logs)


@pytest.mark.parametrize("cls", PARAMETRIC, ids=lambda c: c.__name__)
@pytest.mark.parametrize("label_zeros", [0, 3])
def test_probabilities_of_exactly_zero_are_read_at_half_the_fits_least(cls, label_zeros):
    # A random forest's probabilities: a zero is log 0 = -inf, whose gradient 0 * -inf is NaN
    # (vector and matrix scaling stopped with 'overflow in the calibrated logits'), and a zero
    # on the label left no finite objective to any map.  Read as half the least positive
    # probability of the fit's rows (here 1/5: the floor log(1/10)), in the fit and in
    # transform alike, and kept (zero_floor_) for every later input.
    p, y = _forest_like_probabilities(label_zeros=label_zeros)
    assert (p == 0).mean() > 0.3
    est = quiet(cls(from_probs=True), p, y)
    assert est.zero_floor_ == math.log(0.2) - math.log(2.0)
    q = est.predict_proba(p)
    assert np.all(np.isfinite(q)) and est.converged_
    assert_close(q.sum(axis=1), np.ones(len(y)), rtol=1e-12)
    # the fitted map reads a zero as the floor, whatever else the input holds: rows of
    # another input whose least probability is far smaller read their zeros alike
    ref = cls.from_dict(est.to_dict())
    ref.from_probs = False
    other = np.vstack([p[:50], [[1e-9, 1.0 - 1e-9] + [0.0] * (p.shape[1] - 2)]])
    assert_close(est.transform(other), ref.transform(_floored(other, est.zero_floor_)),
                 rtol=1e-12, atol=1e-9)
    assert_close(est.transform(other)[:50], est.transform(p[:50]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [IdentityCalibrator, IsotonicCalibrator, HistogramCalibrator],
                         ids=lambda c: c.__name__)
def test_the_nonparametric_calibrators_read_zeros_by_the_same_floor(cls):
    # the one rule holds for the maps that have no parameters to converge: the fit's floor,
    # kept and applied to any later input's zeros
    p, y = _forest_like_probabilities(label_zeros=3)
    est = quiet(cls(from_probs=True), p, y)
    assert est.zero_floor_ == math.log(0.2) - math.log(2.0)
    ref = cls.from_dict(est.to_dict())
    ref.from_probs = False
    other = np.vstack([p[:50], [[1e-9, 1.0 - 1e-9] + [0.0] * (p.shape[1] - 2)]])
    assert_close(est.transform(other), ref.transform(_floored(other, est.zero_floor_)),
                 rtol=1e-12, atol=1e-9)
    assert np.all(np.isfinite(est.predict_proba(other)))


def test_zero_floor_is_saved_and_old_saves_keep_the_old_floor():
    p, y = _forest_like_probabilities(label_zeros=2)
    est = quiet(MatrixScaler(from_probs=True), p, y)
    data = est.to_dict()
    assert data["fitted"]["zero_floor_"] == est.zero_floor_
    again = MatrixScaler.from_dict(json.loads(json.dumps(data)))
    assert again.zero_floor_ == est.zero_floor_
    assert_close(again.transform(p), est.transform(p), rtol=0, atol=0)
    # written before the floor was fitted: a zero was read as log(tiny), and still is
    from logitkit.calibration._base import LOG_TINY

    del data["fitted"]["zero_floor_"]
    old = MatrixScaler.from_dict(data)
    assert old.zero_floor_ == LOG_TINY
    ref = MatrixScaler.from_dict(data)
    ref.from_probs = False
    assert_close(old.transform(p), ref.transform(_floored(p, LOG_TINY)), rtol=1e-12, atol=1e-9)


def test_a_random_forests_zeros_are_read_at_half_its_least_probability():
    # The motivating data: a random forest (50 trees on 15% of scikit-learn's digits; on
    # average 28% of its probabilities are exactly 0), calibrated on 600 held-out rows and
    # tested on the other 928 rows, one of which has a zero on its label.  Read as log(tiny) =
    # -708 (the rule before), that one zero and the fit's own zeros bent the maps: test NLL
    # 2.1-3.1 for temperature, vector, matrix and Dirichlet scaling.  At half the least
    # probability: 0.21-0.24.
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, train_size=0.15, random_state=0)
    forest = RandomForestClassifier(50, random_state=0).fit(x_tr, y_tr)
    p = forest.predict_proba(x_rest)
    p_cal, y_cal, p_test, y_test = p[:600], y_rest[:600], p[600:], y_rest[600:]
    assert (p_test[np.arange(len(y_test)), y_test] == 0).any()
    for cls in (TemperatureScaler, VectorScaler, MatrixScaler, DirichletScaler,
                StructuredScaler):
        est = quiet(cls(from_probs=True), p_cal, y_cal)
        nll = -est.score(p_test, y_test)
        assert nll < 0.3, (cls.__name__, nll)


def test_probability_logs_are_one_rule_for_fit_and_transform(xp):
    from logitkit.calibration import zero_floor
    from logitkit.calibration._base import (
        expand_rows,
        floor_of_least,
        input_logits,
        least_probability,
    )

    # half the least subnormal is 0 in float64: the floor is log(least) - log 2
    tiny = np.array([[0.0, 0.5, 0.5], [5e-324, 0.5, 0.5]])
    assert least_probability(tiny).value == 5e-324
    assert floor_of_least(5e-324) == math.log(5e-324) - math.log(2) == zero_floor(tiny)
    # (JAX flushes subnormals to zero: the backends are compared on normal numbers)
    p = np.array([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0], [1e-300, 0.5, 0.5]])
    col = np.array([0.0, 1.0, 0.3, 1e-300])
    for arr, least in ((p, 1e-300), (col, 1e-300)):
        assert least_probability(arr).value == least
        floor = floor_of_least(least)
        assert zero_floor(arr) == floor
        _, got = input_logits(asarray(xp, arr), True, floor)
        want = expand_rows(arr, True, floor)
        two = arr if arr.ndim == 2 else np.stack([1.0 - arr, arr], axis=1)
        assert np.all(np.isfinite(want))
        assert_close(want, _floored(two, floor), rtol=1e-15, atol=1e-290)
        assert_close(to_numpy(got), want, rtol=1e-6 if to_numpy(got).dtype == np.float32
                     else 1e-15)
    # P(class 1) read as [log1p(-p), log p]: exact for small p, and a row without a zero is
    # not renormalised (that would round log1p(-p) to 0)
    assert expand_rows(np.array([1e-300]), True, -800.0)[0, 0] == -1e-300
    # a zero's row renormalised: [0, 1/2, 1/2] with the floor log(1/4) is [1/5, 2/5, 2/5]
    assert_close(expand_rows(np.array([[0.0, 0.5, 0.5]]), True, math.log(0.25)),
                 np.log([[0.2, 0.4, 0.4]]), rtol=1e-15)
    # one column: 1 - p counts (p = 0.9 leaves 0.1 as the least)
    assert least_probability(np.array([0.9, 1.0])).value == pytest.approx(0.1, rel=1e-15)
    assert least_probability(np.zeros((3, 2))).value == math.inf


@pytest.mark.parametrize("cls", WEIGHTED, ids=lambda c: c.__name__)
def test_integer_weights_equal_repeated_rows(cls):
    z, y = make(n=300, k=3, seed=25)
    w = np.random.default_rng(25).integers(0, 3, 300)
    a = quiet(cls(), z, y, w)
    b = quiet(cls(), np.repeat(z, w, axis=0), np.repeat(y, w))
    test = make(n=50, k=3, seed=26)[0]
    tol = 1e-6 if cls not in (StructuredScaler,) else 1e-5
    assert_close(a.predict_proba(test), b.predict_proba(test), rtol=tol, atol=1e-9)


# --------------------------------------------------------------------------------------------
# contract, saving, errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_estimator_contract(cls):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    est = cls()
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    with pytest.raises(NotFittedError):
        est.transform(np.zeros((2, 3)))
    params = est.get_params()
    assert est.set_params(**params) is est
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    z, y = make(n=200, k=3, seed=27)
    assert quiet(est, z, y) is est
    check_is_fitted(est)
    assert est.__sklearn_tags__().estimator_type == "classifier"
    assert est.score(z, y) == pytest.approx(-nll_of(est.transform(z), y), rel=1e-12)
    assert_close(est.predict_log_proba(z), np.log(est.predict_proba(z)), rtol=1e-9)
    assert not hasattr(clone(est), "n_classes_")
    with pytest.raises(LogitkitValueError, match="3 classes"):
        est.transform(np.zeros((2, 4)))
    with pytest.raises(LogitkitValueError, match="Invalid parameter"):
        est.set_params(not_a_parameter=1)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_saved_calibrator_is_restored_exactly(cls):
    z, y = make(n=400, k=3, seed=28)
    est = quiet(cls(), z, y)
    text = json.dumps(est.to_dict())
    again = Calibrator.from_dict(json.loads(text))
    assert type(again) is cls and again.get_params() == est.get_params()
    assert np.array_equal(again.transform(z), est.transform(z))
    assert Calibrator.from_dict(est.to_json()).n_classes_ == 3
    data = est.to_dict()
    assert data["schema_version"] == 1 and data["method"] == cls.method
    assert data["n_classes"] == 3 and data["input"] == "logits"


def test_from_dict_refuses_what_it_cannot_restore():
    est = VectorScaler().fit(*make(n=200, k=3, seed=29))
    data = est.to_dict()
    with pytest.raises(LogitkitValueError, match="schema_version"):
        Calibrator.from_dict({**data, "schema_version": 99})
    with pytest.raises(LogitkitValueError, match="method"):
        Calibrator.from_dict({**data, "method": "magic"})
    with pytest.raises(LogitkitValueError, match="method"):
        MatrixScaler.from_dict(data)
    with pytest.raises(LogitkitTypeError, match="data"):
        Calibrator.from_dict([1, 2])


@pytest.mark.parametrize(("cls", "params", "match"), [
    (VectorScaler, {"alpha": -1.0}, "alpha"),
    (VectorScaler, {"max_iter": 0}, "max_iter"),
    (MatrixScaler, {"tol": 0.0}, "tol"),
    (DirichletScaler, {"reg_lambda": -1.0}, "reg_lambda"),
    (DirichletScaler, {"reg_mu": math.nan}, "reg_mu"),
    (DirichletScaler, {"reg_diagonal": -0.5}, "reg_diagonal"),
    (StructuredScaler, {"form": "diagonal"}, "form"),
    (StructuredScaler, {"reg_off_diagonal": -2.0}, "reg_off_diagonal"),
    (BetaCalibrator, {"max_iter": 1.5}, "max_iter"),
    (HistogramCalibrator, {"n_bins": 0}, "n_bins"),
    (HistogramCalibrator, {"binning": "equal"}, "binning"),
    (IsotonicCalibrator, {"from_probs": 1}, "from_probs"),
])
def test_bad_parameters_name_the_argument(cls, params, match):
    z, y = make(n=50, k=3, seed=30)
    with pytest.raises((LogitkitValueError, LogitkitTypeError), match=match):
        cls(**params).fit(z, y)


@pytest.mark.parametrize("cls", ALL[1:], ids=lambda c: c.__name__)
def test_bad_inputs_get_one_clear_error(cls):
    z, y = make(n=60, k=3, seed=31)
    with pytest.raises(LogitkitValueError, match=r"labels in \[0, 3\)"):
        cls().fit(z, y + 1)
    with pytest.raises(LogitkitValueError, match="shape"):
        cls().fit(z, y[:10])
    with pytest.raises(LogitkitValueError, match="non-empty"):
        cls().fit(z[:0], y[:0])
    with pytest.raises(LogitkitTypeError, match="integer class labels"):
        cls().fit(z, y.astype(float))
    bad = z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(LogitkitValueError, match="1 NaN"):
        cls().fit(bad, y)
    with pytest.raises(LogitkitValueError, match="sample_weight"):
        cls().fit(z, y, -np.ones(60))
    with pytest.raises(LogitkitValueError, match="probabilities in"):
        cls(from_probs=True).fit(z, y)


def test_minus_infinity_is_an_excluded_class_or_refused():
    z, y = make(n=200, k=3, seed=32)
    masked = z.copy()
    masked[np.arange(200), (y + 1) % 3] = -np.inf
    for cls in (VectorScaler, MatrixScaler, BetaCalibrator):
        with pytest.raises(LogitkitValueError, match="-inf"):
            cls().fit(masked, y)
    # Maps of the (log-)probabilities take an excluded class as probability 0.
    for cls in (TemperatureScaler, DirichletScaler, StructuredScaler, IsotonicCalibrator,
                HistogramCalibrator):
        est = quiet(cls(), masked, y)
        p = est.predict_proba(masked)
        assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)
        excluded = p[np.arange(200), (y + 1) % 3]
        if cls in (TemperatureScaler, DirichletScaler, StructuredScaler):
            assert excluded.max() < 0.05  # one-vs-rest bins pool them with other rows


def test_non_convergence_is_reported_as_both_warnings():
    from sklearn.exceptions import ConvergenceWarning

    z, y = make(n=400, k=3, seed=33)
    for est in (VectorScaler(max_iter=2), MatrixScaler(max_iter=2), BetaCalibrator(max_iter=1),
                StructuredScaler(max_iter=2), DirichletScaler(max_iter=2)):
        with pytest.warns(CalibrationWarning, match="did not converge") as record:
            est.fit(z, y)
        assert est.converged_ is False
        assert any(issubclass(r.category, ConvergenceWarning) for r in record)


def test_large_full_maps_take_lbfgs_to_newtons_optimum(monkeypatch):
    monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 2)
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)  # the optimum itself, not the noise rule
    z, y = make(n=6000, k=4, seed=35)
    called = []
    inner = scaling.lbfgs
    monkeypatch.setattr(scaling, "lbfgs", lambda *a, **kw: called.append(1) or inner(*a, **kw))
    # tol 1e-8: at 1e-6 (in whitened parameters for L-BFGS) the paths could still differ by
    # ~1e-8 of objective
    ms = MatrixScaler(alpha=1e-3, tol=1e-8).fit(z, y)
    assert ms.converged_ and called
    monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 16)
    ref = MatrixScaler(alpha=1e-3, tol=1e-8).fit(z, y)
    assert abs(ms.objective_ - ref.objective_) <= 1e-10
    assert_close(ms.predict_proba(z), ref.predict_proba(z), atol=1e-4)
    for cls in (DirichletScaler, StructuredScaler):  # log-probability features: whitened
        by_newton = quiet(cls(), z, y)
        monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 2)
        by_lbfgs = quiet(cls(), z, y)
        with pytest.warns(CalibrationWarning, match="did not converge"):
            stopped = cls(max_iter=3).fit(z, y)
        monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 16)
        assert by_lbfgs.converged_ and abs(by_lbfgs.objective_ - by_newton.objective_) <= 1e-8
        assert_close(by_lbfgs.predict_proba(z), by_newton.predict_proba(z), atol=1e-4)
        assert stopped.converged_ is False and stopped.n_iter_ == 3


def test_histogram_quantile_edges_are_the_metrics_rule_and_unit_weights_change_nothing():
    # One equal-mass rule: the calibrator's edges are the engine's inverted-CDF edges of each
    # class's probabilities, and weighting every row by 1 gives the same edges.
    from logitkit import softmax
    from logitkit.calibration import HistogramCalibrator
    from logitkit.calibration._binning import edges_of

    rng = np.random.default_rng(5)
    z = rng.normal(size=(997, 3)) * 2
    y = rng.integers(0, 3, 997)
    plain = HistogramCalibrator(n_bins=7, binning="quantile").fit(z, y)
    weighted = HistogramCalibrator(n_bins=7, binning="quantile").fit(z, y, sample_weight=np.ones(997))
    p = softmax(z)
    for c in range(3):
        # (the calibrator takes p as exp(log_softmax): the same values up to an ulp)
        np.testing.assert_allclose(plain.edges_[c], edges_of(p[:, c], 7, "quantile"), rtol=1e-12)
    np.testing.assert_array_equal(plain.edges_, weighted.edges_)


def test_single_threaded_blas_is_restored_when_threads_leave_out_of_order():
    # regression: each entry saved and restored its own snapshot of the process-wide BLAS
    # limit, so two threads fitting at once (A in, B in, A out, B out) left BLAS at one
    # thread for the rest of the process
    import threadpoolctl  # scikit-learn, a test dependency, installs it

    from logitkit.calibration._fitting import small_problem_threads

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        def blas_threads():
            return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas"]

        before = blas_threads()
        a, b = small_problem_threads(0), small_problem_threads(0)
        a.__enter__()
        b.__enter__()
        assert all(t == 1 for t in blas_threads())
        a.__exit__(None, None, None)
        assert all(t == 1 for t in blas_threads())  # B still fitting
        b.__exit__(None, None, None)
        assert blas_threads() == before and max(before) == 2


@pytest.mark.parametrize("cls", FULL_MAPS)
def test_lbfgs_noise_rule_stops_within_its_threshold_of_the_optimum(cls, monkeypatch):
    # The rule: stop once the last decrease and the predicted one are at most 1e-3 standard
    # errors of the mean loss.  It is reported (stopped_by_, converged), it saves passes, and
    # the objective it leaves is within a few thresholds of the exact optimum.
    monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 2)
    z, y = make(n=8000, k=6, seed=41)
    est = quiet(cls(), z, y)
    losses = -np.log(np.asarray(est.predict_proba(z))[np.arange(len(y)), y])
    eps = scaling.NOISE_FRACTION * losses.std() / math.sqrt(len(y))
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)
    exact = quiet(cls(tol=1e-10), z, y)
    assert est.converged_ and est.stopped_by_ == "noise"
    assert exact.converged_ and exact.stopped_by_ in ("gradient", "precision")
    assert est.n_iter_ < exact.n_iter_
    assert -1e-12 <= est.objective_ - exact.objective_ <= 2 * eps
    assert type(est).from_dict(est.to_dict()).stopped_by_ == "noise"


@pytest.mark.parametrize("cls, k, scale", [(StructuredScaler, 40, 30.0), (DirichletScaler, 40, 1.0)],
                         ids=["structured", "dirichlet"])
def test_lbfgs_noise_rule_stops_after_a_step_its_model_foretold(cls, k, scale, monkeypatch):
    # The last step lowered the objective by more than the threshold ε (at most 10 ε), but by
    # what the quadratic model foretold (within 1.25x), and the model says less than ε is
    # left: the rule stops there, a pass sooner than waiting for a step below ε, and the
    # objective is still within ε of the optimum (benchmarks/bench_stopping.py; the speed
    # benchmark's matrix, structured and Dirichlet fits 6/4/5 -> 5/3/4 passes).
    from logitkit.calibration import _fitting

    rng = np.random.default_rng(k * 7 + 6000)
    true = rng.normal(size=(6000, k)) * 1.5
    y = (softmax(true, axis=1).cumsum(axis=1) > rng.random((6000, 1))).argmax(axis=1)
    z = scale * (true @ (np.eye(k) + rng.normal(size=(k, k)) * 0.1).T) + rng.normal(size=k) * 0.5
    est = quiet(cls(), z, y)
    monkeypatch.setattr(_fitting, "FORETOLD", False)
    waited = quiet(cls(), z, y)
    assert est.stopped_by_ == waited.stopped_by_ == "noise"
    assert est.n_iter_ == waited.n_iter_ - 1
    losses = -np.log(np.asarray(est.predict_proba(z))[np.arange(len(y)), y])
    eps = scaling.NOISE_FRACTION * losses.std() / math.sqrt(len(y))
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)
    best = quiet(cls(tol=1e-9, max_iter=3000), z, y)
    assert 0.0 <= est.objective_ - best.objective_ <= eps
    assert est.objective_ - best.objective_ > waited.objective_ - best.objective_


@pytest.mark.parametrize("k", [40, 100])
def test_lbfgs_noise_rule_does_not_stop_on_a_plateau(k, monkeypatch):
    # Structured scaling on 60 rows of nearly constant logits: L-BFGS crosses plateaus whose
    # decreases are below the noise threshold and then grow 2.6x a pass.  The rule stopped
    # there, "converged", 0.22 (40 classes) and 0.65 (100 classes) above the best objective
    # a long run reaches.  A fit that says it converged must now be within the threshold.
    rng = np.random.default_rng(k * 7 + 60)
    true = rng.normal(size=(60, k)) * 1.5
    y = (softmax(true, axis=1).cumsum(axis=1) > rng.random((60, 1))).argmax(axis=1)
    z = 0.01 * (true @ (np.eye(k) + rng.normal(size=(k, k)) * 0.1).T) + rng.normal(size=k) * 0.5
    est = quiet(StructuredScaler(), z, y)
    if k == 100:  # still far after 500 passes (3,000 do not converge): it says so
        assert not est.converged_ and est.stopped_by_ == "max_iter"
        return
    losses = -np.log(np.asarray(est.predict_proba(z))[np.arange(60), y])
    eps = scaling.NOISE_FRACTION * losses.std() / math.sqrt(60)
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)
    best = quiet(StructuredScaler(tol=1e-9, max_iter=3000), z, y)
    assert est.converged_ and est.stopped_by_ == "noise"
    assert best.converged_ and best.stopped_by_ in ("gradient", "precision")
    assert 0.0 <= est.objective_ - best.objective_ <= 2 * eps


def test_subsamples_of_weighted_rows_pick_rows_that_weigh():
    # every 12th of 60,000 rows, weighted on every 10th: no picked row weighed anything
    from logitkit.calibration._base import fit_data

    z, y = make(n=60000, k=3, seed=55)
    w = (np.arange(60000) % 10 == 1).astype(float)
    data = fit_data(z, y, w, from_probs=False, allow_neg_inf=False)
    sub = data.thin(12)
    assert np.all(np.asarray(sub.w) > 0) and sub.total_weight == float(np.sum(sub.w))
    assert 5000 <= sub.n < 10000
    plain = fit_data(z, y, None, from_probs=False, allow_neg_inf=False).thin(12)
    assert plain.n == 5000 and np.shares_memory(plain.x, z)


@pytest.mark.parametrize("cls", FULL_MAPS)
def test_full_maps_fit_rows_weighted_on_a_stride(cls):
    # regression: the starts' evenly spaced subsamples held only rows of weight 0 (structured
    # scaling: a NaN temperature start; matrix scaling: NaN starting biases)
    z, y = make(n=60000, k=20, seed=56)
    w = (np.arange(60000) % 10 == 1).astype(float)
    est = quiet(cls(), z, y, w)
    ref = quiet(cls(), z[1::10], y[1::10])
    assert est.converged_
    assert_close(est.predict_proba(z[:50]), ref.predict_proba(z[:50]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
def test_prior_bias_is_the_prior_shift_correction(weighted):
    # b_c = log f_c - log p̄_c, centred: f the class frequencies of every row, p̄ the start's
    # mean probabilities (at b = 0) on the subsample; written here from the definition
    from logitkit.calibration._base import fit_data

    z, y = make(n=3000, k=20, seed=53)
    w = np.random.default_rng(53).uniform(0.2, 2.0, 3000) if weighted else None
    y[y == 7] = 8  # a class without rows counts half a row (one the model rarely gives:
    z[:, 7] -= 6.0  # the correction stays within log K, see the next test)
    data = fit_data(z, y, w, from_probs=False, allow_neg_inf=False)
    spec = scaling.Features("logits", 20)
    scale = np.full(20, 0.7)
    ww = np.ones(3000) if w is None else w
    freq = np.bincount(y, weights=ww, minlength=20) / ww.sum()
    freq[7] = 0.5 / ww.sum()
    mean_p = ww @ np.exp(log_softmax(0.7 * z, axis=1)) / ww.sum()
    want = np.log(freq) - np.log(mean_p)
    got = scaling._prior_bias(data, spec, scale)
    assert_close(got, want - want.mean(), rtol=1e-10, atol=1e-10)


def test_prior_bias_is_not_trusted_far_from_the_rows(monkeypatch):
    # logits x 300 at the identity: corrections of hundreds of nats (up to 411) sent L-BFGS
    # to max_iter where zero biases converged; beyond log K in some class the start keeps
    # zero biases
    from logitkit.calibration._base import fit_data

    z, y = make(n=40, k=17, seed=57)
    data = fit_data(300 * z, y, None, from_probs=False, allow_neg_inf=False)
    spec = scaling.Features("logits", 17)
    assert np.array_equal(scaling._prior_bias(data, spec, np.ones(17)), np.zeros(17))
    asked = []
    real = scaling._prior_bias
    monkeypatch.setattr(scaling, "_prior_bias", lambda *a: asked.append(a) or real(*a))
    # x 300 is not separable: the start is the temperature map (T about 1350, past
    # TemperatureScaler's own bound) with its prior biases
    quiet(MatrixScaler(), 300 * z, y)
    assert asked and asked[0][2][0] == pytest.approx(1 / 1351.6, rel=1e-3)


@pytest.mark.parametrize("cls", FULL_MAPS)
def test_full_maps_fitted_by_lbfgs_start_from_the_prior_biases(cls, monkeypatch):
    # the start: the temperature map (or the identity) with the prior-shift biases, whose
    # objective is below the zero biases'; the preconditioner leaves the biases' coupling out
    z, y = make(n=4000, k=20, seed=54)
    y = np.where(np.random.default_rng(54).random(4000) < 0.3, 3, y)  # a skewed prior
    starts = []
    real = scaling.minimise

    def spy(data, form, spec, penalty, theta, **kw):
        starts.append((data, spec, penalty, theta.copy()))
        return real(data, form, spec, penalty, theta, **kw)

    monkeypatch.setattr(scaling, "minimise", spy)
    quiet(cls(), z, y)
    data, spec, penalty, theta = starts[-1]
    k = 20
    a, b = theta[: k * k].reshape(k, k), theta[k * k:]
    assert np.count_nonzero(a - np.diag(np.diagonal(a))) == 0
    assert_close(b, scaling._prior_bias(data, spec, np.diagonal(a)), rtol=1e-12)
    obj = scaling.Objective(data, "full", spec, penalty)
    zero = np.concatenate([a.ravel(), np.zeros(k)])
    assert obj.value_grad(theta)[0] < obj.value_grad(zero)[0] - 1e-3


def test_lbfgs_moves_along_the_gauge_for_free(monkeypatch):
    # Adding one vector to every row of [A | b] changes no probability, only the ridge: a small
    # ridge makes that direction nearly flat, and L-BFGS crawled along it (a quarter of the
    # remaining objective after 40 passes).  Minimised in closed form after every step, the
    # exact optimum takes a few passes, and the moved point's objective is unchanged but for
    # the penalty.
    monkeypatch.setattr(scaling, "_NEWTON_MAX_CLASSES", 2)
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)
    z, y = make(n=6000, k=4, seed=35)
    ms = MatrixScaler(alpha=1e-3, tol=1e-9).fit(z, y)
    assert ms.converged_ and ms.n_iter_ <= 20
    data = FitData(z, y, None, 4, float(len(y)), False, floor=-np.inf)
    obj = scaling.Objective(data, "full", scaling.Features("logits", 4),
                            scaling.Penalty(1e-3, 1e-3, 1e-3))
    theta = np.random.default_rng(3).normal(size=20)
    moved = scaling._gauge(theta, obj.lam, obj.ref, 4)
    (f0, g0), (f1, g1) = obj.value_grad(theta), obj.value_grad(moved)
    pf0, pg0 = obj._penalty(theta)
    pf1, pg1 = obj._penalty(moved)
    assert pf1 < pf0 and f1 < f0
    assert_close(f1 - pf1, f0 - pf0, rtol=1e-13)  # the data term is the same
    assert_close(g1 - pg1, g0 - pg0, atol=1e-13)
    # and the penalty is least there along the gauge: its gradient has no gauge component
    assert_close(pg1.reshape(-1)[:16].reshape(4, 4).sum(axis=0), np.zeros(4), atol=1e-15)


def test_lbfgs_leaves_coarse_values_once_they_cannot_resolve_the_step():
    # a quadratic whose coarse values are rounded to float32: near the minimum the decreases
    # fall below their rounding, and the line search that fails there switches to the exact
    # values within a pass or two (it backtracked 18 passes towards a step of 1e-12 before)
    from logitkit.calibration import _fitting

    scales = np.logspace(0, 2, 20)

    def evaluate(t):
        return 3.0 + 0.5 * float(scales @ (t * t)), scales * t

    seen = []

    def coarse(t):
        f, g = evaluate(t)
        seen.append(float(np.float32(f)))
        return seen[-1], g.astype(np.float32).astype(np.float64)

    res = _fitting.lbfgs(evaluate, np.ones(20), max_iter=500, tol=1e-6, coarse=coarse)
    assert res.converged and res.stopped_by == "gradient"
    assert len(seen) - 1 - seen.index(min(seen)) <= 2  # coarse passes after the best one
    assert np.max(np.abs(res.theta)) <= 1e-6 / scales.min()


def test_coarse_float32_passes_agree_with_float64_to_the_stated_bound():
    # Objective.coarse_value_grad: float32 products, float64 sums; its docstring bounds the
    # value's error by (3K + 8)·u·S and a gradient entry's by
    # (c + K + 3 + (6K + 16)·S)·u·mean|x̃_k|, S = max Σ_k |x̃_ik||ã_jk|.
    rng = np.random.default_rng(7)
    k = 30
    z, y = make(n=20000, k=k, seed=43)
    z = z.astype(np.float32)
    w = rng.random(len(y)) + 0.5
    u = 2.0 ** -24
    for weights in (None, w):
        total = float(len(y)) if weights is None else float(w.sum())
        data = FitData(z, y, weights, k, total, False, floor=-np.inf)
        obj = scaling.Objective(data, "full", scaling.Features("logits", k),
                                scaling.Penalty(1e-4, 1e-4, 1e-4))
        for theta in (scaling._identity("full", k, 0.4),
                      scaling._identity("full", k, 0.3) + 0.02 * rng.normal(size=k * (k + 1))):
            f, g = obj.value_grad(theta)
            fc, gc = obj.coarse_value_grad(theta)
            xt = np.concatenate([z.astype(np.float64), np.ones((len(y), 1))], axis=1)
            at = np.concatenate([theta[:k * k].reshape(k, k), theta[k * k:, None]], axis=1)
            s = float((np.abs(xt) @ np.abs(at).T).max())
            assert abs(fc - f) <= (3 * k + 8) * u * s
            chunk = scaling.coarse_chunk(len(y), k)
            g_bound = (chunk + k + 3 + (6 * k + 16) * s) * u * np.abs(xt).mean(axis=0)
            bound = np.concatenate([np.tile(g_bound[:k], k), np.full(k, g_bound[k])])
            if weights is not None:
                bound *= w.max() * len(y) / total
            assert np.all(np.abs(gc - g) <= bound)
            # far inside the bounds in practice: the errors of independent rows cancel
            assert abs(fc - f) <= 1e-7 and np.max(np.abs(gc - g)) <= 1e-7


def _large_matrix_problem():
    # in memory and at least COARSE_MIN values: the float32 passes, in two chunks
    z, y = make(n=40000, k=30, seed=47)
    assert z.size >= scaling.COARSE_MIN and len(y) > scaling._CHUNK_ELEMENTS // 30
    return z.astype(np.float32), y


def test_a_large_diagonal_hessian_is_formed_in_float32_to_the_same_optimum(monkeypatch):
    # many classes: the diagonal map's exact Hessian (rows x (2K)² multiply-adds) is formed in
    # float32 on BLAS's threads; it only steers Newton, the answer is the float64 one's
    z, y = make(n=3000, k=30, seed=49)
    exact = VectorScaler(tol=1e-9).fit(z, y)
    grams = []
    hessian = scaling._hessian
    monkeypatch.setattr(scaling, "_hessian",
                        lambda *a, **kw: grams.append(a[4] if len(a) > 4 else kw.get("gram"))
                        or hessian(*a, **kw))
    monkeypatch.setattr(scaling, "_THREADED_HESSIAN", 0)
    monkeypatch.setattr(scaling, "_EXACT_HESSIAN", 0)  # large: float32 (see _gram_dtype)
    big = VectorScaler(tol=1e-9).fit(z, y)
    assert grams and all(g is np.float32 for g in grams)
    assert big.converged_ and exact.converged_
    assert big.objective_ == pytest.approx(exact.objective_, rel=1e-12)
    assert_close(big.coef_, exact.coef_, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls, params", [(VectorScaler, {}), (StructuredScaler, {"form": "vector"})])
def test_a_whole_diagonal_hessian_above_the_exact_size_is_float32(monkeypatch, cls, params):
    # every row's Hessian (stride 1) but more than _EXACT_HESSIAN multiply-adds (4,000 rows x
    # 200² here): its Gram products in float32, which only steer Newton, as a subsampled
    # one's; the steps and the optimum are the float64 Hessian's
    z, y = make(n=4000, k=100, seed=52)
    grams = []
    hessian = scaling._hessian
    monkeypatch.setattr(scaling, "_hessian",
                        lambda *a, **kw: grams.append(a[4] if len(a) > 4 else kw.get("gram"))
                        or hessian(*a, **kw))
    fast = cls(**params).fit(z, y)
    assert grams and all(g is np.float32 for g in grams)
    monkeypatch.setattr(scaling, "_gram_dtype", lambda rows, dim, stride: np.float64)
    grams.clear()
    exact = cls(**params).fit(z, y)
    assert grams and all(g is np.float64 for g in grams)
    assert fast.converged_ and exact.converged_ and fast.n_iter_ == exact.n_iter_
    assert fast.objective_ == pytest.approx(exact.objective_, rel=1e-12)
    assert_close(fast.coef_, exact.coef_, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("structured, diagonal, kind", [(True, False, "log_softmax"),
                                                       (False, False, "log_softmax"),
                                                       (True, True, "log_softmax"),
                                                       (True, False, "logits"),
                                                       (False, False, "logits")])
def test_preconditioner_blocks_are_the_curvature_plus_the_penalty_hessian(structured, diagonal,
                                                                          kind, monkeypatch):
    # the penalty's blocks 2 T diag(λ_c) T + 2 λ_b v vᵀ: by K³ rank-one updates for every
    # Penalty's λ (the same off the diagonal), by the K⁴ batched product otherwise; the data
    # term's blocks are exact for log-probability features, the arrow blocks for logits
    from logitkit.calibration._base import fit_data

    z, y = make(n=1500, k=12, seed=50)
    data = fit_data(z, y, None, from_probs=False, allow_neg_inf=False)
    spec = scaling.Features(kind, 12)
    pen = scaling.Penalty(diagonal=0.3, off_diagonal=0.05, intercept=0.02)
    lam, _ = pen.weights("full", 12)
    if not structured:
        lam = lam * np.random.default_rng(51).uniform(0.5, 1.5, lam.size)
    theta = scaling._identity("full", 12, 0.5)
    if diagonal:  # above BLOCK_MAX_CLASSES: the blocks' diagonals only
        monkeypatch.setattr(scaling, "BLOCK_MAX_CLASSES", 11)
    std = scaling.Standardised(data, spec)
    std.precondition(data, spec, theta, lam)
    sums = scaling._curvature_arrows if kind == "logits" else scaling._curvature_sums
    s0, s1 = sums(z, y, None, theta=theta, spec=spec, from_probs=False, floor=-np.inf,
                  mu=std.mu, whiten=std.whiten)
    t, k = std.whiten, 12
    v = np.r_[-(t @ std.mu), 1.0]
    want = scaling._arrow_blocks(s1 / s0) if kind == "logits" else s1 / s0
    for c in range(k):
        want[c, :k, :k] += 2.0 * t @ np.diag(lam[c * k:(c + 1) * k]) @ t
        want[c] += 2.0 * lam[k * k + c] * np.outer(v, v)
    scale = np.abs(want).max()
    if diagonal:
        assert std.chol.shape == (12, 13)
        want = np.einsum("cii->ci", want)
        assert_close(std.chol ** 2, want, rtol=1e-6, atol=1e-9 * scale)  # float64 against float32
        return
    got = np.matmul(std.chol, std.chol.transpose(0, 2, 1))
    assert_close(got, want, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("cls", [MatrixScaler, StructuredScaler, DirichletScaler])
def test_many_classes_precondition_with_the_blocks_diagonals(monkeypatch, cls):
    # regression: the preconditioner held K (K+1)² floats whatever K (8 GB at K = 1000: a fit
    # of ImageNet-sized logits was killed for memory); above BLOCK_MAX_CLASSES it keeps the
    # blocks' diagonals, (K, K+1), and reaches the same optimum
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)  # both to the gradient test
    z, y = make(n=3000, k=20, seed=48)
    block = cls(tol=1e-7).fit(z, y)
    shapes = []
    precondition = scaling.Standardised.precondition

    def spy(self, *args, **kwargs):
        precondition(self, *args, **kwargs)
        shapes.append((self.chol.shape, self.chol_inv.shape))

    monkeypatch.setattr(scaling.Standardised, "precondition", spy)
    monkeypatch.setattr(scaling, "BLOCK_MAX_CLASSES", 16)
    diagonal = cls(tol=1e-7).fit(z, y)
    assert shapes and all(s == ((20, 21), (20, 21)) for s in shapes)
    assert diagonal.converged_ and block.converged_
    assert diagonal.objective_ == pytest.approx(block.objective_, rel=1e-9, abs=1e-12)
    assert_close(diagonal.predict_proba(z), block.predict_proba(z), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("cls", [MatrixScaler, StructuredScaler])
def test_full_map_fits_do_not_depend_on_the_pass_threads(monkeypatch, cls):
    # The chunks of a float32 pass and the pieces of the preconditioner run on a thread pool;
    # their sums are added in order, so the fit is the same bit for bit on one thread.
    z, y = _large_matrix_problem()
    _same_bits_on_one_thread(monkeypatch, ["coarse_sums"], lambda: cls().fit(z, y))


@pytest.mark.parametrize("cls", [MatrixScaler, StructuredScaler, DirichletScaler])
def test_small_full_map_fits_take_float32_passes_on_the_pool_to_the_same_bits(monkeypatch,
                                                                              cls):
    # 3,000 x 30 (below the 2**20 values that once took float32 passes): the passes are float32
    # in at least four equal chunks on the pool (8,000 x 100: matrix scaling 0.34 -> 0.17 s),
    # the same fit bit for bit on one thread, and the objective float64's to well within the
    # noise rule's epsilon
    z, y = make(n=3000, k=30, seed=55)
    minimum = scaling.COARSE_MIN
    assert minimum <= z.size < 1 << 20
    calls, chunks = [], []
    coarse, chunk_of = scaling.coarse_sums, scaling.coarse_chunk
    monkeypatch.setattr(scaling, "coarse_sums",
                        lambda x, *a, **kw: calls.append(x.shape) or coarse(x, *a, **kw))
    monkeypatch.setattr(scaling, "coarse_chunk",
                        lambda n, k: chunks.append(-(-n // chunk_of(n, k))) or chunk_of(n, k))
    fast = cls().fit(z, y)
    assert calls and all(shape == (3000, 31) for shape in calls)
    assert chunks and min(chunks) >= 4  # the chunks the passes were cut into
    monkeypatch.setattr(scaling, "COARSE_MIN", 1 << 40)  # float64 passes throughout
    exact = cls().fit(z, y)
    assert fast.n_iter_ == exact.n_iter_
    assert fast.objective_ == pytest.approx(exact.objective_, abs=1e-7)
    monkeypatch.setattr(scaling, "COARSE_MIN", minimum)
    monkeypatch.setattr(scaling, "coarse_sums", coarse)
    monkeypatch.setattr(scaling, "coarse_chunk", chunk_of)
    _same_bits_on_one_thread(monkeypatch, ["coarse_sums"], lambda: cls().fit(z, y))


def test_coarse_chunks_are_equal_at_least_four_and_at_most_the_chunk_size():
    for n, k in [(16, 3), (100, 30), (3000, 30), (10485, 100), (10486, 100), (100000, 100),
                 (1_000_000, 1000)]:
        chunk = scaling.coarse_chunk(n, k)
        pieces = -(-n // chunk)
        assert chunk * k <= max(scaling._CHUNK_ELEMENTS, 16 * k)
        assert pieces >= min(4, -(-n // 16))
        assert chunk * pieces - n < pieces  # equal but for the last, short by < one a chunk


def _same_bits_on_one_thread(monkeypatch, spied, fit, pool_at=None):
    # fit() with THREADS = 2, then 1, recording the pool each of the `spied` functions of
    # _scaling is given (keyword `pool`, or positional `pool_at`): a pool on every call with two
    # threads, none with one, and the same fit bit for bit
    pools = []
    for name in spied:
        inner = getattr(scaling, name)

        def spy(*args, inner=inner, **kwargs):
            at = pool_at is not None and len(args) > pool_at
            pools.append(args[pool_at] if at else kwargs.get("pool"))
            return inner(*args, **kwargs)

        monkeypatch.setattr(scaling, name, spy)
    monkeypatch.setattr(scaling, "THREADS", 2)
    two = fit()
    assert pools and all(p is not None for p in pools)
    monkeypatch.setattr(scaling, "THREADS", 1)
    pools.clear()
    one = fit()
    assert pools and all(p is None for p in pools)
    assert np.array_equal(two.coef_, one.coef_)
    assert np.array_equal(two.intercept_, one.intercept_)
    assert two.n_iter_ == one.n_iter_ and two.objective_ == one.objective_


def test_full_map_fits_run_in_concurrent_python_threads(monkeypatch):
    # Each fit has a pool of its own: four at once (two per pool thread) give the serial
    # answers, bit for bit (with threadpoolctl 3.8, the one-BLAS-thread limit held only in the
    # main thread, and a product's rounding in a fit elsewhere differed: 6e-10)
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(scaling, "THREADS", 2)
    z, y = _large_matrix_problem()
    sets = [(z[i::2], y[i::2]) for i in range(2)] * 2
    alone = [MatrixScaler().fit(a, b).coef_ for a, b in sets[:2]]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: MatrixScaler().fit(*s).coef_, sets))
    for got, want in zip(together, alone * 2, strict=True):
        assert np.array_equal(got, want)


def test_single_threaded_blas_holds_in_every_python_thread():
    # regression: threadpoolctl 3.8 lets only one "controlling" thread set OpenBLAS's thread
    # count, the first to try, for as long as it has not left a `with` block; the limiter is
    # entered and restored outside one, so after the main thread's first fit the limit did
    # nothing in any other thread
    from concurrent.futures import ThreadPoolExecutor

    import threadpoolctl

    from logitkit.calibration._fitting import small_problem_threads

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    def inside():
        with small_problem_threads(0):
            return blas_threads()

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # one thread could not fail
        before = blas_threads()
        assert max(before) == 2
        assert all(t == 1 for t in inside())
        for _ in range(2):  # another thread after the main one, and the main one after it
            with ThreadPoolExecutor(1) as pool:
                assert all(t == 1 for t in pool.submit(inside).result())
                assert blas_threads() == before
            assert all(t == 1 for t in inside()) and blas_threads() == before


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_full_map_fits_in_the_child_of_a_fork():
    # The pool lives for one fit: a child forked after fits in the parent (and while another
    # thread of the parent fits) fits on a pool of its own and gets the parent's answer.
    same_fit_in_a_forked_child("""
        from logitkit.calibration import MatrixScaler
        from logitkit.calibration import _scaling as scaling
        scaling.THREADS = 2
        rng = np.random.default_rng(0)
        z = (rng.normal(size=(40000, 30)) * 4).astype(np.float32)
        y = rng.integers(0, 30, 40000)
    """, "MatrixScaler().fit(z, y).coef_")


def test_full_map_fit_ended_by_the_noise_rule_caches_no_float64_features(monkeypatch):
    # The float32 passes read their own copy of the features; the float64 one (a tenth of a
    # fit on 1e5 x 100) is made only for a float64 pass, and the noise rule ends this fit
    # before any.
    z, y = _large_matrix_problem()
    made = []
    cached = scaling._cached_features
    monkeypatch.setattr(scaling, "_cached_features",
                        lambda *a: made.append(1) or cached(*a))
    ms = MatrixScaler().fit(z, y)
    assert ms.stopped_by_ == "noise" and not made
    # a float64 pass still gets them: the gradient test of a tight fit
    monkeypatch.setattr(scaling, "NOISE_FRACTION", 0.0)
    ms = MatrixScaler(tol=1e-5).fit(z, y)
    assert ms.stopped_by_ != "noise" and len(made) == 1


def test_temperature_start_is_fitted_on_a_subsample(monkeypatch):
    # Only a starting point: START_ROWS evenly spaced rows are enough for one scalar.
    z, y = make(n=50000, k=5, seed=53)
    seen = []
    stage = scaling._temperature_stage
    monkeypatch.setattr(scaling, "_temperature_stage",
                        lambda data, *a: seen.append(data.n) or stage(data, *a))
    MatrixScaler().fit(z, y)
    assert seen and max(seen) <= scaling.START_ROWS


@pytest.mark.parametrize("cls", [MatrixScaler, StructuredScaler])
def test_small_full_map_fits_precondition_on_the_pool_to_the_same_bits(monkeypatch, cls):
    # below COARSE_MIN the passes are float64 on the calling thread, but the preconditioner's
    # tasks still go to the pool (they were most of a 1e4 x 100 structured fit on one thread);
    # their sums are added in order, so the fit is the same bit for bit on one thread
    z, y = make(n=3000, k=20, seed=48)
    assert z.size < scaling.COARSE_MIN
    _same_bits_on_one_thread(monkeypatch, ["_curvature_arrows", "_curvature_sums"],
                             lambda: cls().fit(z, y))


@pytest.mark.parametrize("cls, params, k", [(VectorScaler, {}, 30),
                                            (StructuredScaler, {"form": "vector"}, 30),
                                            (MatrixScaler, {}, 10)])
def test_newton_hessians_are_summed_in_pieces_on_the_pool_to_the_same_bits(monkeypatch, cls,
                                                                           params, k):
    # Newton's Hessian of more than a piece of rows (native diagonal path, NumPy diagonal
    # path, full map) is summed piece by piece on the fit's pool; the pieces are fixed, so one
    # thread gives the same bits
    z, y = make(n=5000, k=k, seed=53)
    _same_bits_on_one_thread(monkeypatch, ["_hessian_pieces"], lambda: cls(**params).fit(z, y),
                             pool_at=5)


def test_hessian_pieces_add_up_to_the_hessian():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(54)
    for form, k in (("diag", 6), ("full", 4)):
        n = 2 * scaling._HESSIAN_PIECE + 7
        x = rng.normal(size=(n, k))
        p = softmax(rng.normal(size=(n, k)), axis=1)
        w = rng.uniform(0.5, 2, n)
        want = scaling._hessian(p, x, w, form)
        with ThreadPoolExecutor(2) as pool:
            got = scaling._hessian_pieces(p, x, w, form, np.float64, pool)
        assert_close(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
        assert np.array_equal(got, scaling._hessian_pieces(p, x, w, form, np.float64, None))


def test_curvature_blocks_match_their_definition():
    # Σ w p_c(1 − p_c) ũũᵀ for every class, ũ = [T (x − μ), 1]: the float32 triangle product
    # (on a pool or not) against the float64 sums row by row.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    k, n = 7, 1300  # more rows than a piece: pieces are added
    z = rng.normal(size=(n, k)) * 2
    w = rng.random(n) + 0.5
    theta = scaling._identity("full", k, 0.7) + 0.05 * rng.normal(size=k * (k + 1))
    mu, whiten = rng.normal(size=k), np.eye(k) + 0.1 * rng.normal(size=(k, k))
    spec = scaling.Features("logits", k)
    a, b = scaling.unpack(theta, "full", k)
    p = softmax(z @ a.T + b, axis=1)
    u = np.concatenate([(z - mu) @ whiten.T, np.ones((n, 1))], axis=1)
    want = np.einsum("ic,ia,ib->cab", w[:, None] * p * (1 - p), u, u)
    for pool in (None, ThreadPoolExecutor(2)):
        s0, s1 = scaling._curvature_sums(z, None, w, theta=theta, spec=spec, from_probs=False, floor=-np.inf,
                                         mu=mu, whiten=whiten, pool=pool)
        assert s0 == pytest.approx(w.sum())
        assert_close(s1, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert np.array_equal(s1, s1.transpose(0, 2, 1))
        if pool is not None:
            pool.shutdown()


def _curvature_reference(k, n, seed):
    # rows, weights, a map and a whitening, and the blocks Σ w p_c(1 − p_c) ũũᵀ row by row
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2
    w = rng.random(n) + 0.5
    theta = scaling._identity("full", k, 0.7) + 0.05 * rng.normal(size=k * (k + 1))
    mu, whiten = rng.normal(size=k), np.eye(k) + 0.1 * rng.normal(size=(k, k))
    a, b = scaling.unpack(theta, "full", k)
    p = softmax(z @ a.T + b, axis=1)
    u = np.concatenate([(z - mu) @ whiten.T, np.ones((n, 1))], axis=1)
    blocks = np.einsum("ic,ia,ib->cab", w[:, None] * p * (1 - p), u, u)
    return z, w, theta, mu, whiten, blocks


def test_curvature_arrows_match_their_definition():
    # each class block's diagonal, its own feature's row and the constant's row: float32
    # products of float32 rows (on a pool or not, the same bits) against the float64 blocks
    from concurrent.futures import ThreadPoolExecutor

    k, n = 7, 4500  # more rows than a task: tasks are added
    z, w, theta, mu, whiten, blocks = _curvature_reference(k, n, 12)
    spec = scaling.Features("logits", k)
    idx = np.arange(k)
    want = np.stack([np.einsum("cii->ci", blocks), blocks[idx, idx], blocks[:, k]], axis=1)
    got = []
    for pool in (None, ThreadPoolExecutor(2)):
        s0, s1 = scaling._curvature_arrows(z, None, w, theta=theta, spec=spec, from_probs=False,
                                           floor=-np.inf, mu=mu, whiten=whiten, pool=pool)
        assert s0 == pytest.approx(w.sum())
        assert s1.shape == (k, 3, k + 1) and s1.dtype == np.float64
        assert_close(s1, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        got.append(s1)
        if pool is not None:
            pool.shutdown()
    assert np.array_equal(got[0], got[1])


def test_arrow_blocks_are_exact_on_the_own_feature_the_constant_and_the_diagonal():
    # rows and columns c and K and the diagonal as the exact block; positive semidefinite,
    # where the arrow alone (zero elsewhere) is not
    k = 9
    *_, blocks = _curvature_reference(k, 600, 13)
    idx = np.arange(k)
    parts = np.stack([np.einsum("cii->ci", blocks), blocks[idx, idx], blocks[:, k]], axis=1)
    got = scaling._arrow_blocks(parts)
    scale = np.abs(blocks).max()
    assert_close(got[idx, idx], blocks[idx, idx], rtol=1e-10, atol=1e-12 * scale)
    assert_close(got[idx, :, idx], blocks[idx, :, idx], rtol=1e-10, atol=1e-12 * scale)
    assert_close(got[:, k], blocks[:, k], rtol=1e-10, atol=1e-12 * scale)
    assert_close(np.einsum("cii->ci", got), np.einsum("cii->ci", blocks), rtol=1e-10,
                 atol=1e-12 * scale)
    assert_close(got, got.transpose(0, 2, 1), rtol=0, atol=1e-13 * scale)
    assert np.linalg.eigvalsh(got).min() >= -1e-12 * scale
    arrow = np.zeros_like(blocks)
    arrow[idx, idx], arrow[idx, :, idx] = blocks[idx, idx], blocks[idx, :, idx]
    arrow[:, k], arrow[:, :, k] = blocks[:, k], blocks[:, :, k]
    arrow[:, np.arange(k + 1), np.arange(k + 1)] = np.einsum("cii->ci", blocks)
    assert np.linalg.eigvalsh(arrow).min() < -1e-6 * scale  # why the Schur complement's diagonal
    # a class that no row weighs: zeros, not NaN
    parts[2] = 0.0
    assert np.array_equal(scaling._arrow_blocks(parts)[2], np.zeros((k + 1, k + 1)))


def test_a_folds_zero_floor_is_that_of_its_own_rows():
    # select's folds are fitted as their own data: a fold that does not hold the least
    # probability reads its zeros by the least of the rows it has
    from logitkit.calibration._base import fit_data, floor_of_least

    p, y = _forest_like_probabilities(n=200)
    p[7] = [1e-4, 1.0 - 1e-4, 0.0, 0.0]
    data = fit_data(p, y, None, from_probs=True, allow_neg_inf=False)
    assert data.floor == floor_of_least(1e-4)
    rows = np.ones(200, dtype=bool)
    rows[7] = False
    assert data.take(rows).floor == floor_of_least(0.2)
    assert data.take(~rows).floor == floor_of_least(1e-4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_least_probability_is_the_least_positive_value_whatever_the_layout(dtype):
    # least_probability reads the floats' bits (bits - 1 as unsigned: negative values, -0 and
    # NaN never win): it must equal the plain min over the positive values
    from logitkit.calibration._base import least_probability

    rng = np.random.default_rng(7)
    x = rng.random((300, 7)) * (rng.random((300, 7)) < 0.6)
    if dtype is np.int64:
        x = (x > 0.5).astype(np.int64) * 3
    else:
        x = x.astype(dtype)
        x[0, 0], x[1, 1], x[2, 2], x[3, 3] = -0.0, -0.25, np.nan, np.finfo(dtype).smallest_subnormal
    want = float(x[x > 0].min())
    for arr in (x, np.asfortranarray(x), x[::3], x[:, ::2]):
        assert least_probability(arr).value == float(arr[arr > 0].min())
    assert least_probability(x).value == want
    assert least_probability(np.zeros((4, 3), dtype=dtype)).value == math.inf
    if dtype is not np.int64:
        nan_only = np.full((2, 2), np.nan, dtype=dtype)
        assert least_probability(nan_only).value == math.inf
    # one column: 1 - p counts too, in float64
    col = x[:, :1]
    q = col.astype(np.float64)
    both = np.concatenate([q[q > 0], (1.0 - q)[(1.0 - q) > 0]])
    assert least_probability(col).value == float(both.min())


# --------------------------------------------------------------------------------------------
# half precision, masked Dask arrays, tracing, seeds: what a tester's inputs found
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TemperatureScaler, VectorScaler, BetaCalibrator])
def test_bfloat16_logits_are_fitted_as_their_float32_values(cls):
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    z, y = make(n=600, k=3)
    zt = torch.tensor(z, dtype=torch.bfloat16)
    want = quiet(cls(), zt.float().numpy(), y)
    for logits, labels in [(zt, torch.tensor(y)),
                           (jnp.asarray(z, dtype=jnp.bfloat16), jnp.asarray(y))]:
        got = quiet(cls(), logits, labels)
        for name in got._fitted_fields:
            np.testing.assert_array_equal(np.asarray(getattr(got, name)),
                                          np.asarray(getattr(want, name)))


@pytest.mark.parametrize("cls", [VectorScaler, MatrixScaler, DirichletScaler, StructuredScaler,
                                 StackedCalibrator])
def test_float16_logits_are_mapped_in_float32_and_rounded_at_the_end(cls):
    torch = pytest.importorskip("torch")
    da = pytest.importorskip("dask.array")
    z, y = make(n=800, k=3)
    cal = quiet(cls(), z, y)
    x16 = (10 * z).astype(np.float16)  # logits of a few hundred
    exact = np.asarray(cal.predict_proba(x16.astype(np.float64)))
    for x, back in [(x16, np.asarray), (torch.from_numpy(x16), lambda t: t.numpy()),
                    (da.from_array(x16, chunks=(300, 3)), lambda d: d.compute())]:
        p = back(cal.predict_proba(x))
        assert p.dtype == np.float16
        # float16's own rounding of a probability, not of logits of a few hundred (0.02-0.1)
        np.testing.assert_allclose(p.astype(np.float64), exact, atol=2e-3)
        logp = back(cal.predict_log_proba(x)).astype(np.float64)
        assert np.all(np.isfinite(logp) | (exact == 0))
    big = np.array([[60000.0, 59000.0, 0.0]], dtype=np.float16)
    if cls is not StackedCalibrator:
        assert np.asarray(cal.predict_proba(big)).argmax() == np.asarray(
            cal.predict_proba(big.astype(np.float64))).argmax()
        assert np.all(np.isfinite(np.asarray(cal.predict_proba(big), dtype=np.float64)))


@pytest.mark.parametrize("cls", [TemperatureScaler, VectorScaler, MatrixScaler])
def test_boolean_masked_dask_arrays_are_fitted(cls):
    da = pytest.importorskip("dask.array")
    z, y = make(n=600, k=3)
    zd, yd = da.from_array(z, chunks=(100, 3)), da.from_array(y, chunks=100)
    keep = yd >= 0  # every row, but Dask no longer knows how many
    assert math.isnan(zd[keep].shape[0])
    got, want = quiet(cls(), zd[keep], yd[keep]), quiet(cls(), z, y)
    np.testing.assert_allclose(np.asarray(got.predict_proba(z)),
                               np.asarray(want.predict_proba(z)), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("cls", [BetaCalibrator, IsotonicCalibrator, HistogramCalibrator])
def test_calibrators_mapped_in_numpy_refuse_jit_in_one_line(cls):
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    z, y = make(n=600, k=3)
    cal = quiet(cls(), z, y)
    with pytest.raises(LogitkitTypeError, match="cannot be traced"):
        jax.jit(cal.predict_proba)(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(cal.predict_proba(jnp.asarray(z))),
                               np.asarray(cal.predict_proba(z)), rtol=1e-6)


def test_bad_seeds_and_forms_name_the_argument():
    from logitkit.calibration import select

    z, y = make(n=300, k=3)
    with pytest.raises(LogitkitTypeError, match="random_state"):
        select(z, y, methods="temperature", random_state="seed")
    with pytest.raises(LogitkitValueError, match="random_state"):
        select(z, y, methods="temperature", random_state=-1)
    with pytest.raises(LogitkitTypeError, match="random_state"):
        StackedCalibrator(random_state=1.5).fit(z, y)
    with pytest.raises(LogitkitValueError, match="form"):
        StructuredScaler(form="diag").fit(z, y)


@pytest.mark.parametrize("cls", [VectorScaler, StructuredScaler, MatrixScaler])
def test_scores_of_a_few_thousand_are_calibrated_like_logits(cls):
    """The temperature stage's T is not cut at TemperatureScaler's 1e3: logits x 3000 and
    x 30000 are fitted as well as x 3 (vector scaling had started at the identity and run out
    of passes; structured scaling's first stage stopped at T = 1e3)."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=(500, 3)) * 2
    y = (softmax(t, axis=1).cumsum(axis=1) > rng.random((500, 1))).argmax(axis=1)
    base = -quiet(cls(), 3 * t, y).score(3 * t, y)
    for scale in (3e3, 3e4):
        cal = quiet(cls(), scale * t, y)
        assert cal.converged_, (scale, cal.n_iter_)
        assert -cal.score(scale * t, y) == pytest.approx(base, abs=1e-3), scale


@pytest.mark.parametrize("cls", [c for c in ALL if c._allow_neg_inf])
def test_an_excluded_class_stays_excluded_after_calibration(cls):
    """-inf marks a class excluded from a row (the command line says so too): every
    calibrator that accepts it gives that class probability exactly 0 (structured scaling's
    uniform mixture gave 0.10, histogram binning 0.099), and the other rows are unchanged."""
    torch = pytest.importorskip("torch")
    da = pytest.importorskip("dask.array")
    z, y = make(n=600, k=3)
    masked = z.copy()
    rows = np.flatnonzero(y != 2)[:60]
    masked[rows, 2] = -np.inf
    cal = quiet(cls(), masked, y)
    free = np.setdiff1d(np.arange(len(y)), rows)
    for x, back in [(masked, np.asarray), (torch.from_numpy(masked), lambda t: t.numpy()),
                    (da.from_array(masked, chunks=(200, 3)), lambda d: d.compute())]:
        p = back(cal.predict_proba(x))
        assert np.all(p[rows, 2] == 0.0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(p[free], np.asarray(cal.predict_proba(masked[free])),
                                   rtol=1e-12)
        assert np.all(np.isneginf(back(cal.transform(x))[rows, 2]))


def test_scikit_learn_scorers_and_searches_see_the_classes():
    from sklearn.model_selection import GridSearchCV, cross_val_score

    z, y = make(n=600, k=3)
    cal = quiet(VectorScaler(), z, y)
    np.testing.assert_array_equal(cal.classes_, [0, 1, 2])
    assert not hasattr(VectorScaler(), "classes_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        scores = cross_val_score(VectorScaler(), z, y, cv=3, scoring="neg_log_loss")
        assert np.all(np.isfinite(scores))
        grid = GridSearchCV(VectorScaler(), {"alpha": [10.0, 0.0]}, cv=3,
                            scoring="neg_log_loss").fit(z, y)
    means = grid.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(means))
    assert grid.best_params_["alpha"] == [10.0, 0.0][int(np.argmax(means))]


def test_score_checks_labels_and_weights_as_fit_does():
    z, y = make(n=300, k=3)
    cal = quiet(TemperatureScaler(), z, y)
    bad = y.copy()
    bad[0] = -1
    with pytest.raises(LogitkitValueError, match=r"class labels in \[0, 3\)"):
        cal.score(z, bad)
    with pytest.raises(LogitkitValueError, match=r"class labels in \[0, 3\)"):
        cal.score(z, np.where(np.arange(300) == 0, 3, y))
    with pytest.raises(LogitkitTypeError, match="integer class labels"):
        cal.score(z, y + 0.9)
    with pytest.raises(LogitkitValueError, match="sample_weight"):
        cal.score(z, y, -np.ones(300))
    with pytest.raises(LogitkitValueError, match=r"sample_weight.*of shape \(300,\)"):
        cal.score(z, y, np.ones(5))
    assert cal.score(z, y, np.full(300, 2.0)) == pytest.approx(cal.score(z, y), rel=1e-12)


def test_methods_as_an_iterator_and_logits_without_columns_are_refused():
    from logitkit.calibration import select

    z, y = make(n=300, k=3)
    with pytest.raises(LogitkitTypeError, match="not an iterator"):
        select(z, y, methods=(m for m in ["vector", "beta"]), random_state=0)
    with pytest.raises(LogitkitTypeError, match="not an iterator"):
        StackedCalibrator(methods=iter(["vector", "beta"])).fit(z, y)
    for cls in (TemperatureScaler, VectorScaler, IsotonicCalibrator):
        with pytest.raises(LogitkitValueError, match=r"K ≥ 1.*\(5, 0\)"):
            cls().fit(np.empty((5, 0)), np.zeros(5, dtype=np.int64))
    cal = quiet(TemperatureScaler(), z, y)
    with pytest.raises(LogitkitValueError, match=r"K ≥ 1"):
        cal.predict_proba(np.empty((5, 0)))


def test_check_estimator_starts_on_a_calibrator():
    """scikit-learn's checks refused to start on a calibrator (it has transform but did not
    say so in its tags).  Some checks then fail for what a calibrator is (labels must be
    class indices of the logits' columns, 1-D input is a binary logit); the contract's own
    checks pass."""
    from sklearn.utils import get_tags
    from sklearn.utils.estimator_checks import check_estimator

    tags = get_tags(TemperatureScaler())
    assert tags.transformer_tags is not None and tags.classifier_tags is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {r["check_name"]: r["status"]
                   for r in check_estimator(TemperatureScaler(), on_fail=None)}
    for name in ("check_get_params_invariance", "check_set_params",
                 "check_dont_overwrite_parameters",
                 "check_fit_idempotent", "check_estimators_unfitted"):
        assert results.get(name) == "passed", (name, results.get(name))


def test_zero_floor_refuses_what_is_not_probabilities():
    from logitkit.calibration import zero_floor

    for bad in (np.array([[-0.1, 1.1]]), np.array([[np.nan, 1.0]]), np.empty((0, 3))):
        with pytest.raises(LogitkitValueError, match="probabilities in"):
            zero_floor(bad)
    assert zero_floor(np.array([[0.0, 0.2, 0.8]])) == pytest.approx(math.log(0.1))
