"""The peers' own tests, adapted to logitkit: SciPy's ``test_logsumexp.py``, JAX's ``nn_test.py``
(softmax), and optax's classification losses.

Each case takes the inputs and the expectations of the peer's suite and holds logitkit to them,
with the peer itself as the reference wherever the two libraries mean the same thing (the cases
where logitkit differs on purpose are in the README's "Differences from the peers").  The inputs
are the peers' ideas, not their code: rewritten here against logitkit's signatures (``axis`` is
explicit where SciPy's default reduces every axis).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special

from conftest import assert_close
from logitkit import log_softmax, logsumexp, softmax
from logitkit.losses import cross_entropy

inf, nan = math.inf, math.nan


# --------------------------------------------------------------------------------------------
# SciPy: special/tests/test_logsumexp.py
# --------------------------------------------------------------------------------------------

LSE_CASES = [
    np.arange(200.0),
    np.array([1000.0, 1000.0]),
    np.full(1000, 10000.0),
    np.array([1e10, -1e10]),
    np.array([-1e10, -inf]),
    np.array([[1e10, 1e-10], [-1e10, -inf]]),
    np.array([inf, inf]), np.array([-inf, -inf]), np.array([inf, -inf]),
    np.array([nan, 1.0]), np.array([inf, nan]), np.array([1.0, 2.0, -inf]),
]


@pytest.mark.parametrize("a", LSE_CASES, ids=lambda a: np.array2string(a.ravel()[:3]))
def test_scipy_logsumexp_values(a):
    with np.errstate(all="ignore"):
        assert_close(logsumexp(a, axis=tuple(range(a.ndim))), scipy.special.logsumexp(a),
                     rtol=1e-14)
        if a.ndim == 2:
            for axis in (0, 1, -1):
                assert_close(logsumexp(a, axis=axis), scipy.special.logsumexp(a, axis=axis),
                             rtol=1e-14)


def test_scipy_logsumexp_empty_is_minus_inf():
    assert float(logsumexp(np.array([]))) == -inf
    assert float(scipy.special.logsumexp(np.array([]))) == -inf


def test_scipy_logsumexp_b_weights_and_sign():
    a = np.arange(200.0)
    b = np.arange(200.0, 0, -1)
    assert_close(logsumexp(a, b=b), scipy.special.logsumexp(a, b=b), rtol=1e-14)
    a = np.array([1000.0, 1000.0])
    b = np.array([1.2, 1.2])
    assert_close(logsumexp(a, b=b), 1000.0 + math.log(2.4), rtol=1e-15)
    # b = 0 drops an entry, an infinite one included
    a = np.array([inf, -inf, 1.0, -inf])
    b = np.array([0.0, 1.0, 1.0, 0.0])
    assert_close(logsumexp(a, b=b), scipy.special.logsumexp(a, b=b), rtol=1e-15)
    # negative weights with return_sign
    for a, b in ((np.array([1.0, 2.0]), np.array([1.0, -1.0])),
                 (np.array([1.0, 2.0]), np.array([-1.0, 1.0])),
                 (np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, -2.0], [-3.0, 4.0]]))):
        got, sign = logsumexp(a, b=b, return_sign=True, axis=-1)
        want, want_sign = scipy.special.logsumexp(a, b=b, return_sign=True, axis=-1)
        assert_close(got, want, rtol=1e-14)
        assert_close(sign, want_sign)
    # a sum that cancels to zero
    got, sign = logsumexp(np.array([1.0, 1.0]), b=np.array([1.0, -1.0]), return_sign=True)
    assert float(got) == -inf and float(sign) == 0.0


def test_scipy_logsumexp_sign_shape_and_keepdims():
    a = np.ones((1, 2, 3, 4))
    b = np.ones_like(a)
    r, s = logsumexp(a, axis=2, b=b, return_sign=True)
    assert r.shape == s.shape == (1, 2, 4)
    r, s = logsumexp(a, axis=(1, 3), b=b, return_sign=True)
    assert r.shape == s.shape == (1, 3)
    for axis in (0, (1, 3), (0, 1, 2, 3)):
        assert_close(logsumexp(a, axis=axis, keepdims=True),
                     scipy.special.logsumexp(a, axis=axis, keepdims=True), rtol=1e-15)


@pytest.mark.parametrize("x", [np.array([1000.0, 0.0, 0.0, 0.0]), np.arange(4.0),
                               np.array([[1000.0, 1.0], [1.0, 1000.0]]),
                               np.array([-inf, 0.0, 1.0])])
def test_scipy_softmax_and_log_softmax(x):
    for axis in range(x.ndim):
        with np.errstate(all="ignore"):
            assert_close(softmax(x, axis=axis), scipy.special.softmax(x, axis=axis), rtol=1e-14)
            assert_close(log_softmax(x, axis=axis), scipy.special.log_softmax(x, axis=axis),
                         rtol=1e-14, atol=1e-300)


# --------------------------------------------------------------------------------------------
# JAX: tests/nn_test.py (softmax, log_softmax)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_jax_softmax_of_an_empty_array(name):
    import jax.numpy as jnp

    fn = {"softmax": softmax, "log_softmax": log_softmax}[name]
    x = jnp.array([], dtype=float)
    assert fn(x).shape == (0,)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_jax_softmax_with_an_empty_mask(name):
    import jax
    import jax.numpy as jnp

    fn = {"softmax": softmax, "log_softmax": log_softmax}[name]
    x = jnp.array([5.5, 1.3, -4.2, 0.9])
    m = jnp.zeros_like(x, dtype=bool)
    expected = np.full(4, 0.0 if name == "softmax" else -inf)
    assert_close(fn(x, where=m), expected)
    assert_close(getattr(jax.nn, name)(x, where=m), expected)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_jax_softmax_where_mask(name):
    import jax
    import jax.numpy as jnp

    fn = {"softmax": softmax, "log_softmax": log_softmax}[name]
    x = jnp.array([5.5, 1.3, -4.2, 0.9])
    m = jnp.array([True, False, True, True])
    out = np.asarray(fn(x, where=m))
    assert_close(out[np.asarray(m)], fn(x[m]), rtol=1e-15)
    assert_close(out[np.asarray(m)], np.asarray(getattr(jax.nn, name)(x, where=m))[np.asarray(m)],
                 rtol=1e-14)
    probs = out if name == "softmax" else np.exp(out)
    assert probs.sum() == pytest.approx(1.0, rel=1e-15)
    if name == "softmax":  # second-order gradients on the unmasked entries, as jax checks them
        from jax.test_util import check_grads

        # (check_grads also calls with NumPy arrays: convert, as the mask is a JAX array)
        check_grads(lambda a: jnp.take(softmax(jnp.asarray(a), where=m), jnp.array([0, 2, 3])),
                    (x,), order=2)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_jax_softmax_where_grad_ignores_a_huge_masked_entry(name):
    # jax#19490: a masked 10000 must not reach the gradient of the unmasked entries
    import jax
    import jax.numpy as jnp

    fn = {"softmax": softmax, "log_softmax": log_softmax}[name]
    x = jnp.array([36.0, 10000.0])
    mask = x < 1000
    g = jax.grad(lambda a: fn(a, where=mask)[0])(x)
    assert_close(g, np.zeros(2))


def test_jax_softmax_gradient_order_two():
    import jax.numpy as jnp
    from jax.test_util import check_grads

    check_grads(softmax, (jnp.array([5.5, 1.3, -4.2, 0.9]),), order=2, atol=5e-3)
    check_grads(log_softmax, (jnp.array([5.5, 1.3, -4.2, 0.9]),), order=2, atol=5e-3)


# --------------------------------------------------------------------------------------------
# optax: losses/_classification_test.py (softmax_cross_entropy and its integer-label form)
# --------------------------------------------------------------------------------------------


def _optax_case():
    logits = np.array([[1.0, 1.0, 0.0], [1.0, 2.0, 3.0], [0.5, -0.5, 2.0]])
    labels = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    return logits, labels


def test_optax_softmax_cross_entropy_with_probability_labels():
    import jax
    import jax.numpy as jnp
    import optax

    logits, labels = _optax_case()
    ref = optax.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert_close(cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-14)
    g_ref = jax.grad(lambda z: optax.softmax_cross_entropy(z, jnp.asarray(labels)).sum())(
        jnp.asarray(logits))
    g = jax.grad(lambda z: cross_entropy(z, jnp.asarray(labels), reduction="sum"))(
        jnp.asarray(logits))
    assert_close(g, g_ref, rtol=1e-13, atol=1e-15)


def test_optax_integer_labels_and_the_class_axis():
    import jax.numpy as jnp
    import optax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4))
    labels = rng.integers(0, 4, (2, 3))
    ref = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits),
                                                          jnp.asarray(labels))
    assert_close(cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-14)
    # another class axis, and a tuple of axes counted in the order given (as optax counts)
    for axis in (0, 1):
        lab = rng.integers(0, logits.shape[axis], np.delete(logits.shape, axis))
        ref = optax.softmax_cross_entropy_with_integer_labels(
            jnp.asarray(logits), jnp.asarray(lab), axis=axis)
        assert_close(cross_entropy(logits, lab, axis=axis, reduction="none"), ref, rtol=1e-14)
    lab = rng.integers(0, 12, 2)
    ref = optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(logits), jnp.asarray(lab), axis=(2, 1))
    assert_close(cross_entropy(logits, lab, axis=(2, 1), reduction="none"), ref, rtol=1e-14)


def test_optax_cross_entropy_where_mask():
    import jax.numpy as jnp
    import optax

    logits, labels = _optax_case()
    where = np.array([[True, True, False], [True, True, True], [True, False, True]])
    labels = np.where(where, labels, 0.0)
    labels /= labels.sum(1, keepdims=True)
    ref = optax.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                      where=jnp.asarray(where))
    assert_close(cross_entropy(logits, labels, where=where, reduction="none"), ref, rtol=1e-14)


def test_optax_safe_cross_entropy_with_minus_inf_logits():
    # optax.safe_softmax_cross_entropy: a −inf logit under a zero label costs nothing (0·−inf = 0)
    import jax.numpy as jnp
    import optax

    logits = np.array([[-inf, 1.0, 2.0], [0.0, -inf, -inf]])
    labels = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    ref = optax.safe_softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert_close(cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-14)
