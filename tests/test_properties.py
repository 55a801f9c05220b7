"""Invariants of DESIGN §7 as property-based tests (hypothesis; the bounded 'ci' profile by default,
``LOGITKIT_HYPOTHESIS_PROFILE=thorough`` for many more examples), on every backend.

Shapes are fixed per test so that JAX compiles once; NumPy also runs on varying shapes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import asarray, maybe_jit, to_numpy
from logitkit import (
    cross_entropy_hessian,
    entropy,
    log_softmax,
    logsumexp,
    softmax,
)

SHAPE = (5, 7)
K = SHAPE[-1]
LN_K = math.log(K)
U = 2.0**-53

# The xp fixture is stateless, so reusing it across examples is safe.  Each property runs on four
# backends, so each backend gets half the profile's examples (20 in 'ci', 1000 in 'thorough').
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow],
                      max_examples=max(10, settings.default.max_examples // 2))

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
logits = arrays(np.float64, SHAPE, elements=finite)
logits_with_neg_inf = arrays(np.float64, SHAPE, elements=finite | st.just(-math.inf))
masks = arrays(np.bool_, SHAPE)


def run(xp, f, *arrays_):
    return tuple(to_numpy(r) for r in maybe_jit(f, xp)(*(asarray(xp, a) for a in arrays_)))


def _all(a, w):
    return (softmax(a, where=w), log_softmax(a, where=w), logsumexp(a, where=w),
            entropy(a, where=w))


@fixture_ok
@given(x=logits_with_neg_inf, w=masks)
def test_outputs_are_probabilities_and_agree_with_each_other(xp, x, w):
    p, logp, lse, h = run(xp, _all, x, w)
    live = w & np.isfinite(x)
    rows = live.any(-1)
    assert ((p >= 0) & (p <= 1)).all()
    assert (p[~live] == 0).all() and (logp[~live] == -np.inf).all()
    np.testing.assert_allclose(p.sum(-1)[rows], 1.0, rtol=0, atol=4 * K * U)
    assert (p.sum(-1)[~rows] == 0).all() and (lse[~rows] == -np.inf).all()
    # log_softmax = log(softmax) wherever the probability is a normal number
    normal = p > np.finfo(np.float64).tiny
    np.testing.assert_allclose(logp[normal], np.log(p[normal]), rtol=1e-13, atol=1e-13)
    # max ≤ lse ≤ max + ln K over the live entries
    m = np.where(live, x, -np.inf).max(-1)
    assert (lse[rows] >= m[rows]).all()
    assert (lse[rows] <= m[rows] + LN_K * (1 + 1e-15) + 1e-12).all()
    # 0 ≤ H ≤ ln K (ln of the number of live entries)
    n_live = np.maximum(live.sum(-1), 1)
    assert (h >= -1e-13).all() and (h <= np.log(n_live) + 1e-12).all()


def _shifted(a, c):
    return softmax(a), softmax(a + c), log_softmax(a), log_softmax(a + c), logsumexp(a), \
        logsumexp(a + c)


@fixture_ok
@given(x=logits, c=arrays(np.float64, (SHAPE[0], 1), elements=st.floats(-500, 500)))
def test_shift_invariance(xp, x, c):
    p, p_c, logp, logp_c, lse, lse_c = run(xp, _shifted, x, c)
    # shifting rounds x + c: an error of u·(|x| + |c|) in each logit
    tol = 8 * U * (np.abs(x).max() + np.abs(c).max() + 1)
    np.testing.assert_allclose(p_c, p, rtol=2 * K * tol, atol=1e-300)
    np.testing.assert_allclose(logp_c, logp, rtol=0, atol=4 * tol + 1e-14 * np.abs(logp).max())
    np.testing.assert_allclose(lse_c - c[:, 0], lse, rtol=0, atol=8 * tol * K)


def _limits(a):
    return (softmax(a, temperature=0.0), softmax(a, temperature=1e-300),
            softmax(a, temperature=math.inf), softmax(a, temperature=1e300))


@fixture_ok
@given(x=logits_with_neg_inf)
def test_temperature_limits_match_tiny_and_huge_temperatures(xp, x):
    # exact ties split in both; distinct values need a gap that e^(-gap/T) resolves
    with np.errstate(invalid="ignore"):  # -inf - -inf
        gaps = np.diff(np.sort(x, axis=-1), axis=-1)
    assume(((gaps == 0) | (gaps > 1e-297) | np.isnan(gaps)).all())
    hard, tiny, flat, huge = run(xp, _limits, x)
    np.testing.assert_allclose(tiny, hard, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(huge, flat, rtol=1e-14, atol=1e-300)
    live = np.isfinite(x)
    n = np.maximum(live.sum(-1, keepdims=True), 1)
    np.testing.assert_allclose(flat, np.where(live, 1.0 / n, 0.0), rtol=1e-15)
    # the T = 0 limit: equal shares on the ties at the max, nothing elsewhere
    winners = x == np.max(x, axis=-1, keepdims=True)
    share = np.where(winners & live, 1.0 / np.maximum((winners & live).sum(-1, keepdims=True), 1),
                     0.0)
    np.testing.assert_allclose(hard, share, rtol=1e-15)


def _masked(a, w):
    return (softmax(a, where=w),)


def _hessian(a):
    return (cross_entropy_hessian(a),)


@fixture_ok
@given(x=logits, w=masks)
def test_where_equals_softmax_of_the_live_subset(xp, x, w):
    (p,) = run(xp, _masked, x, w)
    for i in range(SHAPE[0]):
        if w[i].any():
            sub = x[i][w[i]]
            e = np.exp(sub - sub.max())
            np.testing.assert_allclose(p[i][w[i]], e / e.sum(), rtol=1e-13, atol=1e-300)
        assert (p[i][~w[i]] == 0).all()


def _cross_entropy(a, y):
    return -(y * log_softmax(a)).sum()


@functools.cache
def _jax_cross_entropy_grad():
    import jax

    return jax.jit(jax.grad(_cross_entropy))


@fixture_ok
@given(x=logits, y=arrays(np.float64, SHAPE, elements=st.floats(0, 1)))
def test_cross_entropy_gradient_is_p_minus_y(ad_xp, x, y):
    xp = ad_xp
    assume((y.sum(-1) > 1e-3).all())
    y = y / y.sum(-1, keepdims=True)
    if xp.__name__ == "torch":
        xt = asarray(xp, x).requires_grad_(True)
        (g,) = xp.autograd.grad(_cross_entropy(xt, asarray(xp, y)), xt)
    else:
        g = _jax_cross_entropy_grad()(asarray(xp, x), asarray(xp, y))
    g = to_numpy(g)
    p = to_numpy(softmax(asarray(xp, x)))
    np.testing.assert_allclose(g, p - y, rtol=0, atol=1e-14)


@fixture_ok
@given(x=logits)
def test_hessian_symmetric_psd_with_null_vector_one(xp, x):
    (h,) = run(xp, _hessian, x)
    np.testing.assert_array_equal(h, np.swapaxes(h, -1, -2))
    eig = np.linalg.eigvalsh(h)
    assert (eig >= -4 * K * U).all()
    np.testing.assert_allclose(h @ np.ones(K), 0.0, atol=4 * K * U)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(x=arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 40)),
                elements=finite),
       t=st.floats(1e-3, 1e3))
def test_numpy_any_shape_sums_to_one_and_lse_bounds(x, t):
    p = softmax(x, temperature=t)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=4 * x.shape[-1] * U)
    lse = logsumexp(x)
    assert (lse >= x.max(-1)).all()
    assert (lse <= x.max(-1) + math.log(x.shape[-1]) * (1 + 1e-15) + 1e-12).all()
    h = entropy(x, temperature=t)
    assert (h >= -1e-13).all() and (h <= math.log(x.shape[-1]) + 1e-12).all()
