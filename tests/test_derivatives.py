"""Closed-form derivatives against torch autograd, JAX and finite differences, on every backend.

References are computed once per test in float64 (torch.autograd.functional and jax transforms
applied to the peers' own softmax), then compared with logitkit's closed forms on all backends.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import asarray, assert_close, maybe_jit, to_numpy
from logitkit import (
    cross_entropy_hessian,
    cross_entropy_hvp,
    softmax,
    softmax_jacobian,
    softmax_jvp,
    softmax_vjp,
)

RNG = np.random.default_rng(7)
X = RNG.normal(size=(4, 6)) * 2.0
V = RNG.normal(size=(4, 6))
T_ROW = np.array([0.5, 1.0, 2.0, 7.0])
W = np.ones((4, 6), bool)
W[0, [1, 4]] = False
W[2, 0] = False


def _torch_softmax(t, w):
    """The peer's idiom, on rows that have at least one unmasked entry."""
    import torch

    def f(z):
        z = z / torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1)
        return torch.softmax(z.masked_fill(~torch.as_tensor(w), -torch.inf), -1)
    return f


@functools.cache
def _refs(option):
    t = T_ROW if option in ("temperature", "both") else np.ones(4)
    w = W if option in ("where", "both") else np.ones((4, 6), bool)
    return w, (_torch_refs(t, w), _jax_refs(t, w))


def _torch_refs(t, w):
    import torch

    f = _torch_softmax(t, w)
    x = torch.from_numpy(X)
    v = torch.from_numpy(V)
    _, jvp = torch.autograd.functional.jvp(f, x, v)
    _, vjp = torch.autograd.functional.vjp(f, x, v)
    jac = torch.autograd.functional.jacobian(f, x)  # (4, 6, 4, 6)
    jac = torch.stack([jac[i, :, i, :] for i in range(4)])
    return jvp.numpy(), vjp.numpy(), jac.numpy()


def _jax_refs(t, w):
    import jax
    import jax.numpy as jnp

    def f(z):
        return jax.nn.softmax(z / jnp.asarray(t).reshape(-1, 1), where=jnp.asarray(w))

    x = jnp.asarray(X)
    v = jnp.asarray(V)
    _, jvp = jax.jvp(f, (x,), (v,))
    _, pull = jax.vjp(f, x)
    (vjp,) = pull(v)
    jac = jax.jacfwd(f)(x)
    jac = jnp.stack([jac[i, :, i, :] for i in range(4)])
    return np.asarray(jvp), np.asarray(vjp), np.asarray(jac)


@pytest.mark.parametrize("option", ["plain", "temperature", "where", "both"])
def test_jvp_vjp_jacobian_match_torch_and_jax_autodiff(xp, option):
    w, refs_both = _refs(option)
    kw = {}
    if option in ("temperature", "both"):
        kw["temperature"] = asarray(xp, T_ROW)
    if option in ("where", "both"):
        kw["where"] = asarray(xp, W)

    def ours(a, v):
        return (softmax_jvp(a, v, **kw), softmax_vjp(a, v, **kw), softmax_jacobian(a, **kw))

    jvp, vjp, jac = (to_numpy(r) for r in maybe_jit(ours, xp)(asarray(xp, X), asarray(xp, V)))
    for refs in refs_both:
        assert_close(jvp, refs[0], rtol=1e-12, atol=1e-15)
        assert_close(vjp, refs[1], rtol=1e-12, atol=1e-15)
        assert_close(jac, refs[2], rtol=1e-12, atol=1e-15)
    # masked entries: rows and columns of the Jacobian are exactly 0
    assert (jac[~w] == 0).all()
    assert (np.swapaxes(jac, -1, -2)[~w] == 0).all()
    assert (jvp[~w] == 0).all()


def test_jvp_and_jacobian_match_finite_differences(xp):
    h = 1e-6

    def fd_and_ours(a, v, steps):
        p = softmax(a + steps, temperature=1.3)  # (2K + 2, ...) perturbed copies
        return p, softmax_jvp(a, v, temperature=1.3), softmax_jacobian(a, temperature=1.3)

    # rows 0/1: x ± h·v; rows 2 + 2j / 3 + 2j: x ± h·e_j
    steps = [h * V, -h * V]
    for j in range(6):
        e = np.zeros_like(X)
        e[:, j] = h
        steps += [e, -e]
    steps = np.stack(steps)
    p, jvp, jac = (to_numpy(r) for r in maybe_jit(fd_and_ours, xp)(
        asarray(xp, X), asarray(xp, V), asarray(xp, steps)))
    assert_close(jvp, (p[0] - p[1]) / (2 * h), rtol=1e-7, atol=1e-9)
    for j in range(6):
        assert_close(jac[:, :, j], (p[2 + 2 * j] - p[3 + 2 * j]) / (2 * h), rtol=1e-7,
                     atol=1e-9)


def run(xp, f, *arrays):
    """``f(*arrays)`` on backend ``xp`` (one compilation under ``jax.jit`` on JAX)."""
    out = maybe_jit(f, xp)(*(asarray(xp, a) for a in arrays))
    return tuple(to_numpy(o) for o in out) if isinstance(out, tuple) else to_numpy(out)


X3 = RNG.normal(size=(2, 3, 4))
V3 = RNG.normal(size=(2, 3, 4))


def _layouts(x3, v3, x_flat, v_flat, x_moved, v6):
    return (softmax_jacobian(x3, axis=0), softmax_jacobian(x_moved),
            softmax_jvp(x3, v3, axis=(1, 2)), softmax_jvp(x_flat, v_flat),
            softmax_jvp(x_flat[:, :6], v6))


def test_axis_tuple_leading_axis_and_broadcast_v(xp):
    v6 = RNG.normal(size=6)
    jac0, jac_moved, jvp_tuple, jvp_flat, jvp_b = run(
        xp, _layouts, X3, V3, X3.reshape(2, 12), V3.reshape(2, 12), np.moveaxis(X3, 0, -1), v6)
    # a leading axis: the other axes first, in order, then (K, K)
    assert jac0.shape == (3, 4, 2, 2)
    assert_close(jac0, jac_moved, rtol=1e-14)
    # a tuple axis is one flattened axis
    assert_close(jvp_tuple, jvp_flat.reshape(2, 3, 4), rtol=1e-14, atol=1e-16)
    # v broadcasts against x
    ref = to_numpy(softmax_jvp(X3.reshape(2, 12)[:, :6], np.broadcast_to(v6, (2, 6)).copy()))
    assert_close(jvp_b, ref, rtol=1e-14, atol=1e-16)


def _limits_and_masks(x, v, w):
    return (softmax_jvp(x, v, temperature=0.0), softmax_jvp(x, v, temperature=np.inf),
            softmax_jacobian(x, temperature=0.0), softmax_jacobian(x, temperature=np.inf),
            softmax_jacobian(x[:2, :3], where=w), cross_entropy_hvp(x[:2, :3], v[:2, :3], where=w))


def test_temperature_limits_and_fully_masked_rows_give_zero_derivative(xp):
    w = np.ones((2, 3), bool)
    w[1] = False
    jvp0, jvp_inf, jac0, jac_inf, jac_masked, hvp_masked = run(xp, _limits_and_masks, X, V, w)
    for zero in (jvp0, jvp_inf, jac0, jac_inf):
        assert (zero == 0).all()
    assert (jac_masked[1] == 0).all() and np.abs(jac_masked[0]).max() > 0
    assert (hvp_masked[1] == 0).all()


def _four(x, v):
    return softmax_jvp(x, v), softmax_vjp(x, v), softmax_jacobian(x), cross_entropy_hvp(x, v)


def test_float32_input_gives_float32_derivatives(xp):
    x = asarray(xp, X.astype(np.float32))
    v = asarray(xp, V.astype(np.float32))
    outs = maybe_jit(_four, xp)(x, v)
    for out, ref in zip(outs, _four(X, V), strict=True):
        assert out.dtype == x.dtype
        assert_close(out, ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# cross-entropy Hessian
# ---------------------------------------------------------------------------------------------

Y = RNG.dirichlet(np.ones(6), size=4)


def _torch_ce_hessians(w):
    import torch

    out = []
    for i in range(4):
        wi = torch.as_tensor(w[i])
        yi = torch.from_numpy(np.where(w[i], Y[i], 0.0) / np.where(w[i], Y[i], 0.0).sum())

        def ce(z, wi=wi, yi=yi):
            logp = torch.log_softmax(z.masked_fill(~wi, -torch.inf), -1)
            return -(yi * torch.where(wi, logp, 0.0)).sum()

        out.append(torch.autograd.functional.hessian(ce, torch.from_numpy(X[i])).numpy())
    return np.stack(out)


def _jax_ce_hessians(w):
    import jax
    import jax.numpy as jnp

    def ce(z, yi, wi):
        return -jnp.sum(yi * jnp.where(wi, jax.nn.log_softmax(z, where=wi), 0.0))

    ys = np.where(w, Y, 0.0)
    ys = ys / ys.sum(-1, keepdims=True)
    h = jax.vmap(jax.hessian(ce), in_axes=(0, 0, 0))(jnp.asarray(X), jnp.asarray(ys),
                                                      jnp.asarray(w))
    return np.asarray(h)


@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_hessian_matches_torch_and_jax(xp, masked):
    w = W if masked else np.ones((4, 6), bool)
    kw = {"where": asarray(xp, W)} if masked else {}
    h = to_numpy(maybe_jit(lambda a: cross_entropy_hessian(a, **kw), xp)(asarray(xp, X)))
    assert_close(h, _torch_ce_hessians(w), rtol=1e-12, atol=1e-15)
    assert_close(h, _jax_ce_hessians(w), rtol=1e-12, atol=1e-15)


def _hessian_checks(x, v, w, ones):
    return (cross_entropy_hessian(x), softmax_jacobian(x),
            cross_entropy_hessian(x[:4, ...], where=w), cross_entropy_hvp(x[:4, ...], v, where=w),
            cross_entropy_hvp(x, ones))


def test_cross_entropy_hessian_symmetric_psd_with_null_vector_one(xp):
    x = np.concatenate([X, [[30.0, -30.0, 0.0, 1e-9, 0.0, 5.0]]])
    h, jac, h_masked, hv_masked, h_ones = run(xp, _hessian_checks, x, V, W, np.ones(6))
    assert_close(h, np.swapaxes(h, -1, -2), rtol=0, atol=0)
    eig = np.linalg.eigvalsh(h)
    assert (eig >= -1e-15).all()
    assert_close(h @ np.ones(6), np.zeros((5, 6)), atol=1e-15)
    # rank K - 1 on a row with no tiny probabilities: exactly one zero eigenvalue
    assert (eig[:4, 1:] > 1e-8).all()
    # the Hessian is the softmax Jacobian
    assert_close(h, jac, rtol=0)
    # H v without forming H, also under a mask; the shift direction is in the null space
    assert_close(hv_masked, np.einsum("nij,nj->ni", h_masked, np.where(W, V, 0.0)), rtol=1e-12,
                 atol=1e-15)
    assert_close(h_ones, np.zeros(x.shape), atol=1e-15)


def test_cross_entropy_hvp_matches_torch_hvp():
    import torch

    x = torch.from_numpy(X)
    y = torch.from_numpy(Y)

    def ce(z):
        return -(y * torch.log_softmax(z, -1)).sum()

    _, ref = torch.autograd.functional.hvp(ce, x, torch.from_numpy(V))
    assert_close(cross_entropy_hvp(x, torch.from_numpy(V)), ref, rtol=1e-12, atol=1e-15)
