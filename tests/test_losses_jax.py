"""The cross-entropy family on JAX: optax's losses as references, the ``custom_vjp`` adapter's
gradients and its O(N) residuals, jit and vmap."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from logitkit import softmax_jacobian  # noqa: E402
from logitkit.losses import cross_entropy, kl_divergence, ntxent  # noqa: E402

N, K = 6, 5
RNG = np.random.default_rng(11)
X = jnp.asarray(RNG.normal(size=(N, K)) * 2)
LABELS = jnp.asarray(RNG.integers(0, K, N))
PROBS = jnp.asarray(RNG.dirichlet(np.ones(K), N))
MASK = jnp.asarray(np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1],
                             [0, 1, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 0, 1]], dtype=bool))


def close(a, b, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def assert_pair(ours, ref, x=X):
    """Per-row values and the gradient of their sum agree (one compilation for both)."""

    def both(v):
        return [(f(v), jax.grad(lambda u, f=f: jnp.sum(f(u)))(v)) for f in (ours, ref)]

    (lv, g), (rv, rg) = jax.jit(both)(x)
    close(lv, rv)
    close(g, rg)


@pytest.mark.parametrize("masked", [False, True])
def test_integer_labels_match_optax(masked):
    where = MASK if masked else None
    labels = jnp.where(MASK[jnp.arange(N), LABELS], LABELS, 2) if masked else LABELS
    assert_pair(lambda v: cross_entropy(v, labels, where=where, reduction="none"),
                lambda v: optax.softmax_cross_entropy_with_integer_labels(v, labels, where=where))


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_probability_targets_and_smoothing_match_optax(eps):
    onehot = jax.nn.one_hot(LABELS, K, dtype=X.dtype)

    def ours(v):
        return jnp.concatenate([
            cross_entropy(v, PROBS, label_smoothing=eps, reduction="none"),
            cross_entropy(v, onehot, label_smoothing=eps, reduction="none"),
            cross_entropy(v, LABELS, label_smoothing=eps, reduction="none")])

    def ref(v):
        return jnp.concatenate([
            optax.softmax_cross_entropy(v, optax.smooth_labels(PROBS, eps)),
            optax.softmax_cross_entropy(v, optax.smooth_labels(onehot, eps)),
            optax.softmax_cross_entropy(v, optax.smooth_labels(onehot, eps))])

    assert_pair(ours, ref)


def test_gradient_with_respect_to_probability_targets():
    def ours(q):
        return cross_entropy(X, q, reduction="sum")

    def ref(q):
        return jnp.sum(optax.softmax_cross_entropy(X, q))

    close(jax.jit(jax.grad(ours))(PROBS), jax.jit(jax.grad(ref))(PROBS))


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_divergence_matches_optax(log_target):
    target = jnp.log(PROBS) if log_target else PROBS

    def ours(v):
        return kl_divergence(target, v, log_target=log_target, reduction="none")

    def ref(v):
        fn = optax.losses.kl_divergence_with_log_targets if log_target else optax.kl_divergence
        return fn(jax.nn.log_softmax(v), target)

    assert_pair(ours, ref)


def test_ntxent_matches_optax():
    emb = jnp.asarray(RNG.normal(size=(8, 3)))
    labels = jnp.array([0, 0, 1, 1, 2, 2, 2, 3])
    temp = 0.2

    def both(e):
        ours = jax.value_and_grad(lambda v: ntxent(v, labels, temperature=temp))(e)
        ref = jax.value_and_grad(lambda v: optax.ntxent(v, labels, temp))(e)
        return ours, ref

    (v, g), (rv, rg) = jax.jit(both)(emb)
    close(v, rv, rtol=1e-10)
    close(g, rg, rtol=1e-9, atol=1e-12)


def test_adapter_gradient_with_every_option_is_the_closed_form():
    t = LABELS.at[1].set(-1)
    c, lam, temp, cap, eps = 0.05, 0.1, 1.5, 3.0, 0.2

    def ours(v):
        return cross_entropy(v, t, ignore_index=-1, where=MASK, z_loss=c, logit_l2=lam,
                             temperature=temp, softcap=cap, label_smoothing=eps, reduction="sum")

    g = jax.jit(jax.grad(ours))(X)
    x = np.asarray(X)
    m = np.asarray(MASK)
    th = np.tanh(x / cap)
    z = np.where(m, cap * th / temp, -np.inf)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(z - lse)
    tn = np.asarray(t)
    y = (1 - eps) * np.eye(K)[np.maximum(tn, 0)] + eps * m / m.sum(axis=1, keepdims=True)
    gz = p - y + 2 * c * lse * p
    expected = np.where(m, gz / temp * (1 - th**2) + lam * x, 0.0)
    expected[1] = 0.0
    close(g, expected, rtol=1e-11, atol=1e-14)


def test_custom_vjp_keeps_only_row_statistics():
    n, k = 64, 50
    x = jnp.asarray(RNG.normal(size=(n, k)))
    t = jnp.asarray(RNG.integers(0, k, n))

    def residual_sizes(f):
        vjp_fn = jax.jit(lambda v: jax.vjp(f, v)[1])(x)
        return [leaf.size for leaf in jax.tree_util.tree_leaves(vjp_fn) if hasattr(leaf, "size")]

    sizes = residual_sizes(lambda v: cross_entropy(v, t, label_smoothing=0.1, z_loss=1e-3))
    assert sum(s >= n * k for s in sizes) == 1  # the logits themselves
    assert all(s <= n for s in sizes if s < n * k), sizes
    assert len(sizes) <= 10, sizes
    # the detector sees the N×K residuals of a plain autodiff formulation
    generic = residual_sizes(lambda v: optax.softmax_cross_entropy_with_integer_labels(v, t))
    assert sum(s >= n * k for s in generic) >= 1


def test_hessian_by_reverse_over_reverse_is_the_softmax_jacobian():
    x = X[0]
    h = jax.jit(jax.jacrev(jax.jacrev(lambda v: cross_entropy(v, jnp.array(2)))))(x)
    close(h, softmax_jacobian(x), rtol=1e-11, atol=1e-13)


def test_vmap_and_jit():
    xs = jnp.stack([X, X * 0.5, X + 1.0])
    f = jax.jit(jax.vmap(jax.value_and_grad(lambda v: cross_entropy(v, LABELS))))
    out, g = f(xs)
    close(out, jnp.stack([jnp.mean(optax.softmax_cross_entropy_with_integer_labels(v, LABELS))
                          for v in xs]))
    close(g, jnp.stack([(jax.nn.softmax(v) - jax.nn.one_hot(LABELS, K)) / N for v in xs]))


def test_weight_and_temperature_arrays_are_differentiated():
    w = jnp.asarray(RNG.uniform(0.5, 2.0, K))
    temp = jnp.asarray(RNG.uniform(0.5, 2.0, N))

    def f(v, weight, temperature):
        return cross_entropy(v, LABELS, weight=weight, temperature=temperature)

    gx, gw, gt = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(X, w, temp)
    f = jax.jit(f)
    wt = w[LABELS]
    z = X / temp[:, None]
    expected_gx = wt[:, None] * (jax.nn.softmax(z) - jax.nn.one_hot(LABELS, K)) / temp[:, None]
    close(gx, expected_gx / jnp.sum(wt))
    h = 1e-6
    for i in range(2):
        e = jnp.zeros(N).at[i].set(h)
        fd = (f(X, w, temp + e) - f(X, w, temp - e)) / (2 * h)
        close(gt[i], fd, rtol=1e-6)
        ek = jnp.zeros(K).at[i].set(h)
        fdw = (f(X, w + ek, temp) - f(X, w - ek, temp)) / (2 * h)
        close(gw[i], fdw, rtol=1e-6, atol=1e-9)


def test_class_weight_cotangent_through_the_custom_vjp(monkeypatch):
    """With a scalar temperature the ``custom_vjp`` applies, class weights included: the logits
    get the closed form and the weights JAX's derivative of the forward pass in them alone,
    denominator of the weighted mean included (checked by central differences)."""
    from logitkit._autodiff import _jax as adapter

    applied = []
    inner = adapter.cross_entropy
    monkeypatch.setattr(adapter, "cross_entropy", lambda *a: applied.append(1) or inner(*a))
    w = jnp.asarray(RNG.uniform(0.5, 2.0, K))
    t = LABELS.at[2].set(-1)
    opts = {"ignore_index": -1, "label_smoothing": 0.1, "temperature": 1.5}

    def f(v, weight):
        return cross_entropy(v, t, weight=weight, **opts)

    gx, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(X, w)
    assert applied  # the adapter, not JAX's own chain rule through the generic path
    counted = np.asarray(t) >= 0
    tn = np.maximum(np.asarray(t), 0)
    wt = np.where(counted, np.asarray(w)[tn], 0.0)
    z = np.asarray(X) / 1.5
    p = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
    # PyTorch's weighted smoothing: W_ic = (1−ε)·w_y·[c = y] + ε·w_c/K on counted rows.
    wk = np.where(counted[:, None], 0.9 * wt[:, None] * np.eye(K)[tn] + 0.1 * np.asarray(w) / K,
                  0.0)
    close(gx, (wk.sum(axis=1, keepdims=True) * p - wk) / 1.5 / wt.sum(), rtol=1e-11, atol=1e-14)
    f = jax.jit(f)
    h = 1e-6
    for i in range(K):
        e = jnp.zeros(K).at[i].set(h)
        close(gw[i], (f(X, w + e) - f(X, w - e)) / (2 * h), rtol=1e-6, atol=1e-9)
