"""SoftmaxRegression: the multinomial GLM, its three solvers and the scikit-learn contract.

Every objective and gradient here is recomputed independently (SciPy's ``log_softmax`` or torch
autograd), never read back from the estimator.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import textwrap
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from scipy.special import log_softmax as scipy_log_softmax
from sklearn.base import clone
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import logitkit.models
from conftest import asarray, assert_close, is_type_of, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit.models import LogitkitConvergenceWarning, NotFittedError, SoftmaxRegression
from logitkit.models._solvers import Objective as _Objective

SOLVERS = ["lbfgs", "newton", "gd"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run BLAS, OpenMP and logitkit's kernels on one thread while these tests run.

    The fits here are small (at most 1257 × 65): extra threads only add synchronisation, which on
    a shared, oversubscribed machine costs more than the arithmetic.  Restored afterwards.
    """
    from threadpoolctl import threadpool_limits

    from logitkit import config

    previous = config.num_threads()
    config.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        config.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------


def objective(coef, intercept, X, y_idx, alpha, sample_weight=None):
    """Mean weighted NLL + (alpha/2)·‖W‖², with SciPy's log_softmax."""
    w = np.ones(len(y_idx)) if sample_weight is None else np.asarray(sample_weight, float)
    logp = scipy_log_softmax(X @ coef.T + intercept, axis=1)
    nll = -np.sum(w * logp[np.arange(len(y_idx)), y_idx]) / w.sum()
    return nll + 0.5 * alpha * np.sum(coef * coef)


def gradient(coef, intercept, X, y_idx, alpha, sample_weight=None):
    """(∂f/∂W, ∂f/∂b) by torch autograd."""
    import torch

    w = torch.ones(len(y_idx), dtype=torch.float64) if sample_weight is None else \
        torch.as_tensor(np.asarray(sample_weight, float))
    W = torch.tensor(coef, requires_grad=True)
    b = torch.tensor(intercept, requires_grad=True)
    logp = torch.log_softmax(torch.as_tensor(X) @ W.T + b, dim=1)
    nll = -(w * logp[torch.arange(len(y_idx)), torch.as_tensor(y_idx)]).sum() / w.sum()
    (nll + 0.5 * alpha * (W * W).sum()).backward()
    return W.grad.numpy(), b.grad.numpy()


def blobs(n=120, d=4, k=3, seed=0, spread=1.5):
    """Overlapping Gaussian classes (never separable, so every alpha has a finite optimum)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = rng.normal(size=(k, d))
    X = centers[y] + spread * rng.normal(size=(n, d))
    return X, y


@functools.cache
def split(loader):
    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


@functools.cache
def sklearn_fit(loader, C):
    Xtr, _, ytr, _ = split(loader)
    return LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(Xtr, ytr)


# --------------------------------------------------------------------------------------------
# scikit-learn: the contract and the model
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Estimator SoftmaxRegression does not inherit:UserWarning")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_check_estimator_passes():
    # Duck-typed on purpose (no BaseEstimator base, so scikit-learn stays optional); the one
    # warning about that is the only thing ignored here.
    check_estimator(SoftmaxRegression())


@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
@pytest.mark.parametrize("loader", [load_iris, load_wine, load_digits],
                         ids=["iris", "wine", "digits"])
def test_matches_sklearn_logistic_regression(loader, solver):
    Xtr, Xte, ytr, yte = split(loader)
    C = 1.0
    alpha = 1.0 / (C * len(ytr))
    sk = sklearn_fit(loader, C)
    ours = SoftmaxRegression(alpha=alpha, solver=solver, tol=1e-8, max_iter=10_000).fit(Xtr, ytr)
    f_sk = objective(sk.coef_, sk.intercept_, Xtr, ytr, alpha)
    f_ours = objective(ours.coef_, ours.intercept_, Xtr, ytr, alpha)
    assert abs(f_ours - f_sk) <= 1e-6 * abs(f_sk)
    assert f_ours <= f_sk * (1 + 1e-9)
    assert abs(ours.score(Xte, yte) - sk.score(Xte, yte)) <= 0.005
    assert_close(ours.objective_, f_ours, rtol=1e-12)
    assert_close(ours.predict_proba(Xte), sk.predict_proba(Xte), atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_weight_matches_sklearn_with_alpha_from_weight_sum(solver):
    # scikit-learn scales its penalty by Σ s_i: alpha = 1 / (C · Σ s_i).
    X, y = blobs(n=90, seed=1)
    sw = np.random.default_rng(2).uniform(0.2, 3.0, size=len(y))
    C = 0.5
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y, sample_weight=sw)
    ours = SoftmaxRegression(alpha=1 / (C * sw.sum()), solver=solver, tol=1e-9,
                             max_iter=None if solver != "gd" else 500_000
                             ).fit(X, y, sample_weight=sw)
    assert_close(ours.coef_, sk.coef_, atol=1e-6)
    assert_close(ours.intercept_, sk.intercept_ - sk.intercept_.mean(), atol=1e-6)


def test_binary_is_softmax_with_two_rows_and_matches_binomial_sklearn_at_twice_alpha():
    X, y = blobs(n=80, k=2, seed=3)
    C = 2.0
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = SoftmaxRegression(alpha=2 / (C * len(y)), tol=1e-10, max_iter=1000).fit(X, y)
    assert ours.coef_.shape == (2, X.shape[1]) and ours.intercept_.shape == (2,)
    assert_close(ours.coef_[1], -ours.coef_[0], atol=1e-12)
    assert_close(ours.coef_[1] - ours.coef_[0], sk.coef_[0], atol=1e-6)
    assert_close(ours.intercept_[1] - ours.intercept_[0], sk.intercept_[0], atol=1e-6)
    dec = ours.decision_function(X)
    assert dec.shape == (len(y),)
    assert_close(dec, sk.decision_function(X), atol=1e-6)
    assert_close(ours.predict_proba(X), sk.predict_proba(X), atol=1e-7)


def test_no_intercept_matches_sklearn():
    X, y = blobs(seed=4)
    sk = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = SoftmaxRegression(alpha=1 / len(y), fit_intercept=False, solver="newton",
                             tol=1e-10).fit(X, y)
    assert_close(ours.intercept_, np.zeros(3), atol=0)
    assert_close(ours.coef_, sk.coef_, atol=1e-7)


@pytest.mark.parametrize("solver", ["lbfgs", "newton"])  # gd at alpha=0: the property test
def test_unpenalised_fit_matches_sklearn_without_penalty(solver):
    X, y = blobs(n=150, seed=5, spread=2.0)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = SoftmaxRegression(alpha=0.0, solver=solver, tol=1e-9).fit(X, y)
    # Without a penalty only the logit differences are identified: both are centred.
    assert_close(ours.coef_.sum(axis=0), np.zeros(X.shape[1]), atol=1e-12)
    assert_close(ours.coef_, sk.coef_ - sk.coef_.mean(axis=0), atol=1e-5)
    assert_close(ours.predict_proba(X), sk.predict_proba(X), atol=1e-7)


def test_sklearn_tools_work_without_the_base_class():
    X, y = blobs(n=90, seed=6)
    est = SoftmaxRegression(alpha=0.01, solver="newton")
    cloned = clone(est)
    assert cloned is not est and cloned.get_params() == est.get_params()
    scores = cross_val_score(make_pipeline(StandardScaler(), est), X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.5)
    assert repr(est) == "SoftmaxRegression(alpha=0.01, solver='newton')"
    assert repr(SoftmaxRegression()) == "SoftmaxRegression()"
    assert est.set_params(tol=1e-6, max_iter=7) is est and est.tol == 1e-6 and est.max_iter == 7
    with pytest.raises(LogitkitValueError, match="Invalid parameter 'C'"):
        est.set_params(C=1.0)


# --------------------------------------------------------------------------------------------
# the solvers
# --------------------------------------------------------------------------------------------


def test_gd_reaches_the_lbfgs_optimum_on_iris():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    alpha = 1 / len(y)
    lbfgs = SoftmaxRegression(alpha=alpha, tol=1e-10, max_iter=10_000).fit(X, y)
    gd = SoftmaxRegression(alpha=alpha, solver="gd", tol=1e-7).fit(X, y)
    assert gd.learning_rate_ is not None and lbfgs.learning_rate_ is None
    assert np.max(np.abs(gd.predict_proba(X) - lbfgs.predict_proba(X))) <= 1e-4
    assert_close(gd.objective_, lbfgs.objective_, rtol=1e-9)


def numpy_gradient(coef, intercept, X, y_idx, alpha, sample_weight, fit_intercept):
    """The flattened gradient (W, and b when it is fitted), from SciPy's softmax: (p − y)."""
    p = np.exp(scipy_log_softmax(X @ coef.T + intercept, axis=1))
    p[np.arange(len(y_idx)), y_idx] -= 1.0
    G = p * (sample_weight / sample_weight.sum())[:, None]
    gw = G.T @ X + alpha * coef
    return np.concatenate([gw.ravel(), G.sum(axis=0)]) if fit_intercept else gw.ravel()


def _gd_path(X, y, alpha, sample_weight, steps, fit_intercept=True):
    """Objective and gradient after each single gd step (warm-started fits with max_iter=1)."""
    est = SoftmaxRegression(alpha=alpha, solver="gd", max_iter=1, tol=0.0, warm_start=True,
                            fit_intercept=fit_intercept)
    classes = np.unique(y)
    y_idx = np.searchsorted(classes, y)
    d = X.shape[1]
    coef, intercept = np.zeros((len(classes), d)), np.zeros(len(classes))
    path = [(objective(coef, intercept, X, y_idx, alpha, sample_weight),
             numpy_gradient(coef, intercept, X, y_idx, alpha, sample_weight, fit_intercept))]
    for _ in range(steps):
        with pytest.warns(ConvergenceWarning, match="max_iter=1"):
            est.fit(X, y, sample_weight=sample_weight)
        assert est.n_iter_ == 1
        path.append((objective(est.coef_, est.intercept_, X, y_idx, alpha, sample_weight),
                     numpy_gradient(est.coef_, est.intercept_, X, y_idx, alpha, sample_weight,
                                    fit_intercept)))
    return est, path


def _assert_sufficient_decrease(path, step):
    # Descent lemma for an L-smooth f and η = 1/L: f(θ − η∇f) ≤ f(θ) − (η/2)‖∇f(θ)‖².
    for (f0, g), (f1, _) in itertools.pairwise(path):
        decrease = 0.5 * step * float(g @ g)
        assert f1 <= f0 - decrease + 1e-13 * abs(f0), (f0, f1, decrease)
        if decrease > 1e-12 * abs(f0):
            assert f1 < f0


def test_gd_decreases_the_objective_at_every_step_by_the_descent_lemma():
    X, y = load_iris(return_X_y=True)  # unscaled: the bound, not luck, must hold
    est, path = _gd_path(X, y, alpha=0.01, sample_weight=np.ones(len(y)), steps=25)
    _assert_sufficient_decrease(path, est.learning_rate_)


@settings(max_examples=20)
@given(n=st.integers(5, 40), d=st.integers(1, 5), k=st.integers(2, 4),
       seed=st.integers(0, 2**16), alpha=st.sampled_from([0.0, 1e-3, 0.3]),
       scale=st.sampled_from([0.1, 1.0, 30.0]), intercept=st.booleans())
def test_gd_monotone_decrease_property(n, d, k, seed, alpha, scale, intercept):
    rng = np.random.default_rng(seed)
    X = scale * rng.normal(size=(n, d))
    y = np.arange(n) % k
    sw = rng.uniform(0.0, 2.0, size=n)
    sw[0] = 1.0
    est, path = _gd_path(X, y, alpha=alpha, sample_weight=sw, steps=4, fit_intercept=intercept)
    _assert_sufficient_decrease(path, est.learning_rate_)


def test_gd_step_is_one_over_an_upper_bound_of_the_hessian():
    import torch

    X, y = blobs(n=30, d=3, k=3, seed=7)
    sw = np.random.default_rng(8).uniform(0.1, 4.0, size=len(y))
    alpha = 0.05
    est = SoftmaxRegression(alpha=alpha, solver="gd", tol=1e-6).fit(X, y, sample_weight=sw)
    Xt, w = torch.as_tensor(X), torch.as_tensor(sw)

    def f(theta):
        W, b = theta[:9].reshape(3, 3), theta[9:]
        logp = torch.log_softmax(Xt @ W.T + b, dim=1)
        nll = -(w * logp[torch.arange(len(y)), torch.as_tensor(y)]).sum() / w.sum()
        return nll + 0.5 * alpha * (W * W).sum()

    top = 0.0
    for seed in range(5):  # the bound holds everywhere, not only at the optimum
        theta = torch.as_tensor(np.random.default_rng(seed).normal(scale=0.5, size=12))
        H = torch.autograd.functional.hessian(f, theta).numpy()
        top = max(top, float(np.linalg.eigvalsh(H)[-1]))
    assert top <= 1.0 / est.learning_rate_
    assert top >= 0.2 / est.learning_rate_  # and it is not uselessly loose


def test_explicit_learning_rate_is_used():
    X, y = blobs(seed=9)
    default = SoftmaxRegression(solver="gd", tol=1e-6).fit(X, y)
    half = SoftmaxRegression(solver="gd", tol=1e-6,
                             learning_rate=default.learning_rate_ / 2).fit(X, y)
    assert half.learning_rate_ == default.learning_rate_ / 2
    assert half.n_iter_ > 1.5 * default.n_iter_
    assert_close(half.coef_, default.coef_, atol=1e-5)


def test_objective_gradient_and_hvp_match_torch_autograd():
    import torch

    X, y = blobs(n=25, d=3, k=4, seed=10)
    sw = np.random.default_rng(11).uniform(0.5, 2.0, size=len(y))
    obj = _Objective(X, y, sw, 0.3, 4, True)
    rng = np.random.default_rng(12)
    theta, v = rng.normal(size=16), rng.normal(size=16)
    Xa, w = torch.as_tensor(obj.Xa), torch.as_tensor(sw / sw.sum())
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])

    def f(t):
        T = t.reshape(4, 4)
        logp = torch.log_softmax(Xa @ T.T, dim=1)
        return -(w * logp[torch.arange(len(y)), torch.as_tensor(y)]).sum() \
            + 0.15 * ((T * mask) ** 2).sum()

    t = torch.as_tensor(theta)
    value, grad = obj.loss_grad(theta)
    assert_close(value, float(f(t)), rtol=1e-13)
    assert_close(grad, torch.func.grad(f)(t).numpy(), rtol=1e-11, atol=1e-14)
    _, hv = torch.autograd.functional.hvp(f, t, torch.as_tensor(v))
    assert_close(obj.hvp(theta)(v), hv.numpy(), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("solver", SOLVERS)
def test_stops_when_the_largest_gradient_entry_is_below_tol(solver):
    X, y = blobs(seed=13)
    alpha, tol = 0.02, 1e-6
    est = SoftmaxRegression(alpha=alpha, solver=solver, tol=tol).fit(X, y)
    gw, gb = gradient(est.coef_, est.intercept_, X, y, alpha)
    # The returned coefficients are centred over classes, which moves the penalty's gradient by
    # alpha·mean(W) ≤ tol (the gradient sums over classes to K·alpha·mean(W)): at most 2·tol.
    assert max(np.abs(gw).max(), np.abs(gb).max()) <= 2 * tol
    loose = SoftmaxRegression(alpha=alpha, solver=solver, tol=1e-2).fit(X, y)
    assert loose.n_iter_ < est.n_iter_


def test_newton_converges_in_few_iterations():
    Xtr, _, ytr, _ = split(load_digits)
    est = SoftmaxRegression(alpha=1 / len(ytr), solver="newton", tol=1e-8).fit(Xtr, ytr)
    assert 1 <= est.n_iter_ <= 20


@pytest.mark.parametrize("solver", SOLVERS)
def test_max_iter_hit_warns_and_reports(solver):
    X, y = blobs(seed=14)
    with pytest.warns(ConvergenceWarning, match=f"solver='{solver}'.*max_iter=2"):
        est = SoftmaxRegression(solver=solver, max_iter=2, tol=1e-12).fit(X, y)
    assert est.n_iter_ == 2
    assert issubclass(logitkit.models.ConvergenceWarning, ConvergenceWarning)


def test_gd_default_max_iter_allows_more_than_the_newton_default():
    X, y = blobs(seed=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = SoftmaxRegression(solver="gd", tol=1e-7).fit(X, y)
    assert 100 < est.n_iter_ < 10_000


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_start_continues_from_the_previous_fit(solver):
    X, y = blobs(seed=16)
    cold = SoftmaxRegression(solver=solver, tol=1e-6).fit(X, y)
    warm = SoftmaxRegression(solver=solver, tol=1e-6, warm_start=True).fit(X, y)
    first = warm.n_iter_
    warm.fit(X, y)
    assert warm.n_iter_ <= 1 < first == cold.n_iter_
    assert_close(warm.coef_, cold.coef_, atol=1e-5)
    # A warm start from a model with other classes starts from zero instead.
    warm.fit(X, y + 10)
    assert warm.n_iter_ == cold.n_iter_


# --------------------------------------------------------------------------------------------
# labels and weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([-3, 7, 100]),
                                    np.array([-1.0, 3.0, 8.0])], ids=["str", "int", "float"])
def test_string_and_non_contiguous_labels(labels):
    X, y = blobs(seed=17)
    ref = SoftmaxRegression(solver="newton", tol=1e-10).fit(X, y)
    est = SoftmaxRegression(solver="newton", tol=1e-10).fit(X, labels[y])
    assert np.array_equal(est.classes_, np.sort(labels))
    assert_close(est.coef_, ref.coef_, atol=1e-12)
    pred = est.predict(X)
    assert np.array_equal(pred, labels[ref.predict(X)])
    assert est.score(X, labels[y]) == ref.score(X, y)


def test_unsorted_labels_columns_follow_classes():
    X, y = blobs(seed=18)
    names = np.array(["zebra", "ant", "moose"])
    est = SoftmaxRegression(solver="newton").fit(X, names[y])
    assert list(est.classes_) == ["ant", "moose", "zebra"]
    proba = est.predict_proba(X)
    assert np.array_equal(est.classes_[proba.argmax(axis=1)], est.predict(X))


def test_integer_weights_equal_repeated_samples_and_zero_weights_equal_removal():
    X, y = blobs(n=40, seed=19)
    counts = np.random.default_rng(20).integers(0, 4, size=len(y))
    counts[:3] = 1
    weighted = SoftmaxRegression(alpha=0.01, solver="newton", tol=1e-11).fit(
        X, y, sample_weight=counts)
    repeated = SoftmaxRegression(alpha=0.01, solver="newton", tol=1e-11).fit(
        np.repeat(X, counts, axis=0), np.repeat(y, counts))
    assert_close(weighted.coef_, repeated.coef_, atol=1e-9)
    assert_close(weighted.intercept_, repeated.intercept_, atol=1e-9)
    scaled = SoftmaxRegression(alpha=0.01, solver="newton", tol=1e-11).fit(
        X, y, sample_weight=7.5 * counts)
    assert_close(scaled.coef_, weighted.coef_, atol=1e-9)


def test_score_uses_sample_weight():
    X, y = blobs(seed=21)
    est = SoftmaxRegression().fit(X, y)
    right = est.predict(X) == y
    sw = np.where(right, 3.0, 1.0)
    expected = (3.0 * right.sum()) / (3.0 * right.sum() + (~right).sum())
    assert est.score(X, y, sample_weight=sw) == pytest.approx(expected, rel=1e-14)


def test_predict_log_proba_is_exact_where_proba_underflows():
    X, y = blobs(n=60, d=2, k=3, seed=22)
    est = SoftmaxRegression(alpha=1e-3).fit(X, y)
    far = 1e4 * est.coef_[:1]  # so far out that two probabilities round to 0
    logp = est.predict_log_proba(far)
    assert np.all(np.isfinite(logp))
    assert np.any(est.predict_proba(far) == 0.0)
    z = est.decision_function(far)
    # log1p-accurate near 0 (where SciPy returns exactly 0), hence the tiny atol.
    assert_close(logp, scipy_log_softmax(z, axis=1), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------
# array libraries
# --------------------------------------------------------------------------------------------


def test_other_array_libraries_give_the_same_model_and_their_own_arrays(xp):
    X, y = blobs(n=60, seed=23)
    ref = SoftmaxRegression(solver="newton").fit(X, y)
    est = SoftmaxRegression(solver="newton").fit(asarray(xp, X), asarray(xp, y))
    assert np.array_equal(est.coef_, ref.coef_) and np.array_equal(est.intercept_, ref.intercept_)
    assert isinstance(est.coef_, np.ndarray) and est.coef_.dtype == np.float64
    Xq = asarray(xp, X[:7])
    for method in ("predict_proba", "predict_log_proba", "decision_function", "predict"):
        out = getattr(est, method)(Xq)
        assert is_type_of(out, xp), method
        assert_close(to_numpy(out), getattr(ref, method)(X[:7]), rtol=1e-12, atol=1e-15)


def test_float32_input_predicts_in_float32(ad_xp):
    X, y = blobs(seed=24)
    est = SoftmaxRegression().fit(X, y)
    out = est.predict_proba(asarray(ad_xp, X, dtype=np.float32))
    assert out.dtype == ad_xp.float32
    assert_close(out, est.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_string_labels_predict_numpy_for_tensor_input():
    import torch

    X, y = blobs(seed=25)
    est = SoftmaxRegression().fit(torch.from_numpy(X), np.array(["a", "b", "c"])[y])
    pred = est.predict(torch.from_numpy(X))
    assert isinstance(pred, np.ndarray) and pred.dtype.kind == "U"


def test_predict_proba_under_jax_jit():
    import jax
    import jax.numpy as jnp

    X, y = blobs(seed=26)
    est = SoftmaxRegression().fit(X, y)
    out = jax.jit(est.predict_proba)(jnp.asarray(X))
    assert_close(out, est.predict_proba(X), rtol=1e-12)


def test_dataframe_feature_names():
    import pandas as pd

    X, y = blobs(seed=27)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    est = SoftmaxRegression().fit(df, y)
    assert list(est.feature_names_in_) == ["a", "b", "c", "d"]
    assert_close(est.predict_proba(df), SoftmaxRegression().fit(X, y).predict_proba(X), rtol=0)
    with pytest.raises(LogitkitValueError, match="feature names should match"):
        est.predict(df.rename(columns={"a": "z"}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        est.predict(X)
    est.fit(X, y)
    assert not hasattr(est, "feature_names_in_")
    with pytest.warns(UserWarning, match="fitted without feature names"):
        est.predict(df)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "err", "match"), [
    ({"alpha": -1.0}, LogitkitValueError, "Expected `alpha` to be in"),
    ({"alpha": np.inf}, LogitkitValueError, "Expected `alpha` to be finite"),
    ({"alpha": "big"}, LogitkitTypeError, "Expected `alpha` to be a real number"),
    ({"solver": "sgd"}, LogitkitValueError, "Expected `solver` to be one of 'lbfgs'"),
    ({"max_iter": 0}, LogitkitValueError, "Expected `max_iter` to be a positive int"),
    ({"max_iter": 2.5}, LogitkitTypeError, "Expected `max_iter` to be a positive int"),
    ({"tol": -1e-3}, LogitkitValueError, "Expected `tol` to be in"),
    ({"learning_rate": 0.0}, LogitkitValueError, "Expected `learning_rate` to be in"),
    ({"fit_intercept": "yes"}, LogitkitTypeError, "Expected `fit_intercept` to be a bool"),
    ({"warm_start": 1}, LogitkitTypeError, "Expected `warm_start` to be a bool"),
])
def test_bad_parameters_fail_in_fit(params, err, match):
    X, y = blobs(n=12)
    est = SoftmaxRegression(**params)  # stored as given
    with pytest.raises(err, match=match):
        est.fit(X, y)


def test_bad_data():
    X, y = blobs(n=12)
    est = SoftmaxRegression()
    with pytest.raises(LogitkitValueError, match=r"Expected `y` to be labels of at least 2 "
                                                 r"classes, but got 1 class: 0\.0"):
        est.fit(X, np.zeros(12))
    with pytest.raises(LogitkitValueError, match="Unknown label type: continuous"):
        est.fit(X, y + 0.5)
    with pytest.raises(LogitkitValueError, match="requires y to be passed"):
        est.fit(X, None)
    with pytest.raises(LogitkitValueError, match="Expected `y` to be of length 12"):
        est.fit(X, y[:-1])
    with pytest.raises(LogitkitValueError, match="Expected `X` to be finite"):
        est.fit(np.where(X > 1, np.nan, X), y)
    with pytest.raises(LogitkitValueError, match="Reshape your data"):
        est.fit(X[:, 0], y)
    with pytest.raises(LogitkitValueError, match="sample_weight` to be non-negative"):
        est.fit(X, y, sample_weight=-np.ones(12))
    with pytest.raises(LogitkitValueError, match=r"sample_weight` to be of shape \(12,\)"):
        est.fit(X, y, sample_weight=np.ones(5))
    with pytest.raises(LogitkitValueError, match="sample_weight` to be positive somewhere"):
        est.fit(X, y, sample_weight=np.zeros(12))
    with pytest.raises(LogitkitTypeError, match="sparse input is not supported"):
        import scipy.sparse

        est.fit(scipy.sparse.csr_matrix(X), y)
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        est.fit(X, y[:, None])
    with pytest.raises(LogitkitValueError, match="X has 3 features, but SoftmaxRegression is "
                                                 "expecting 4 features"):
        est.predict(X[:, :3])


def test_not_fitted_error_is_logitkit_and_sklearn():
    with pytest.raises(NotFittedError, match="not fitted yet") as info:
        SoftmaxRegression().predict(np.ones((2, 2)))
    assert isinstance(info.value, SklearnNotFittedError)
    assert isinstance(info.value, LogitkitValueError) and isinstance(info.value, AttributeError)


def _python(code):
    # A fresh interpreter; the kernels are left out (they are not what these tests are about).
    env = {**os.environ, "LOGITKIT_DISABLE_KERNELS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)


def test_without_sklearn_or_scipy():
    # The package must import and fit with neither installed (simulated by blocking imports).
    code = textwrap.dedent("""
        import sys, warnings
        import numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("sklearn", "scipy"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        from logitkit.models import (ConvergenceWarning, LogitkitConvergenceWarning,
                                     NotFittedError, SoftmaxRegression)
        assert ConvergenceWarning is LogitkitConvergenceWarning
        assert issubclass(ConvergenceWarning, UserWarning)
        X = np.random.default_rng(0).normal(size=(30, 2)); y = np.arange(30) % 3
        for solver in ("newton", "gd"):
            assert SoftmaxRegression(solver=solver).fit(X, y).score(X, y) > 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            SoftmaxRegression(solver="gd", max_iter=1, tol=0.0).fit(X, y)
        assert [type(w.message) for w in caught] == [LogitkitConvergenceWarning]
        try:
            SoftmaxRegression().fit(X, y)
        except ImportError as exc:
            assert "solver='lbfgs' needs SciPy" in str(exc)
        else:
            raise AssertionError("lbfgs ran without scipy")
        try:
            SoftmaxRegression().predict(X)
        except NotFittedError as exc:
            assert type(exc) is NotFittedError
        assert not any(m.split(".")[0] in ("sklearn", "scipy") for m in sys.modules)
        print("ok")
    """)
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_does_not_import_sklearn_or_scipy():
    code = ("import sys, logitkit.models; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', "
            "'torch', 'jax'}))")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_warning_when_converged():
    X, y = blobs(seed=28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for solver in SOLVERS:
            SoftmaxRegression(solver=solver).fit(X, y)


def test_convergence_warning_class_falls_back_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.exceptions", None)
    assert logitkit.models.ConvergenceWarning is LogitkitConvergenceWarning
    X, y = blobs(seed=29)
    with pytest.warns(LogitkitConvergenceWarning, match="max_iter=1"):
        SoftmaxRegression(solver="gd", max_iter=1, tol=0.0).fit(X, y)
