"""Gradients through every option (temperature scalar and per row, where, softcap, sink, axis
tuples, logsumexp's b) against the same computation written with the peer's own primitives,
by torch autograd and by ``jax.grad`` under ``jax.jit``; also with respect to the temperature,
the sink and ``b`` themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import asarray, assert_close, grad, to_numpy
from logitkit import entropy, log_softmax, logsumexp, softmax

RNG = np.random.default_rng(11)
X = RNG.normal(size=(3, 4, 5)) * 2.0
C = RNG.normal(size=(3, 4, 5))
T = RNG.uniform(0.3, 3.0, size=(3, 4))
S = RNG.normal(size=(3, 4))
B = RNG.normal(size=(3, 4, 5))
W = RNG.uniform(size=(3, 4, 5)) < 0.7
W[0, 0] = False  # one fully masked row
CAP = 2.5


def _ours(name):
    """Scalar losses built on logitkit, with the arrays they differentiate as arguments."""
    def loss(x, c, t, s, b, w):
        if name == "softmax_options":
            y = softmax(x, temperature=t, where=w, softcap=CAP, sink=s)
        elif name == "log_softmax_options":
            y = log_softmax(x, temperature=t, where=w, softcap=CAP, sink=s)
            y = _finite(y, x)
        elif name == "tuple_axis":
            y = log_softmax(x, axis=(0, 2), temperature=2.0)
        elif name == "logsumexp_b":
            out = logsumexp(x, b=b * b + 0.1, where=w)
            return (_finite(out, out) * c[..., 0]).sum()
        else:  # entropy
            return (entropy(x, temperature=t, where=w) * c[..., 0]).sum()
        return (y * c).sum()
    return loss


def _finite(y, like):
    import array_api_compat

    xp = array_api_compat.array_namespace(like)
    return xp.where(xp.isfinite(y), y, xp.zeros_like(y))


def _peer(name, mod):
    """The same losses written with the peer's own softmax (torch or jax.numpy)."""
    if mod == "torch":
        import torch

        sm, lsm = torch.softmax, torch.log_softmax
        cat, tanh, where = torch.cat, torch.tanh, torch.where

        def lse(z, dim):
            return torch.logsumexp(z, dim)
    else:
        import jax
        import jax.numpy as jnp

        def sm(z, dim):
            return jax.nn.softmax(z, axis=dim)

        def lsm(z, dim):
            return jax.nn.log_softmax(z, axis=dim)

        def cat(zs, dim):
            return jnp.concatenate(zs, axis=dim)

        def lse(z, dim):
            return jax.scipy.special.logsumexp(z, axis=dim)

        tanh, where = jnp.tanh, jnp.where

    def logits(x, t, s, w):
        z = CAP * tanh(x / CAP) / t[..., None]
        z = where(w, z, -math.inf)
        return cat([z, s[..., None]], -1)

    def loss(x, c, t, s, b, w):
        if name == "softmax_options":
            y = sm(logits(x, t, s, w), -1)[..., :-1]
        elif name == "log_softmax_options":
            y = lsm(logits(x, t, s, w), -1)[..., :-1]
            y = where(w, y, 0.0)
        elif name == "tuple_axis":
            z = x / 2.0
            m = z.reshape(3, 4, 5).transpose(1, 0, 2).reshape(4, 15) if mod != "torch" else \
                z.permute(1, 0, 2).reshape(4, 15)
            y = lsm(m, -1).reshape(4, 3, 5)
            y = y.transpose(1, 0, 2) if mod != "torch" else y.permute(1, 0, 2)
        elif name == "logsumexp_b":
            live = w.any(-1)[..., None]  # the peer needs its own double where on empty rows
            z = where(w, x, -math.inf) + _log(b * b + 0.1, mod)
            out = lse(where(live, z, 0.0), -1)
            out = where(w.any(-1), out, 0.0)
            return (out * c[..., 0]).sum()
        else:
            live = w.any(-1)[..., None]
            z = where(live, where(w, x / t[..., None], -math.inf), 0.0)
            p = sm(z, -1)
            logp = where(w, lsm(z, -1), 0.0)
            h = -(p * logp).sum(-1)
            h = where(w.any(-1), h, 0.0)
            return (h * c[..., 0]).sum()
        return (y * c).sum()
    return loss


def _log(a, mod):
    if mod == "torch":
        import torch

        return torch.log(a)
    import jax.numpy as jnp

    return jnp.log(a)


NAMES = ["softmax_options", "log_softmax_options", "tuple_axis", "logsumexp_b", "entropy"]


def _grads(f, xp, args):
    """Gradients of ``f`` with respect to x, t, s and b (jitted on JAX)."""
    if xp.__name__ == "torch":
        import torch

        leaves = [a.detach().clone().requires_grad_(True) for a in args[:5]]
        out = f(*leaves, args[5])
        gs = torch.autograd.grad(out, [leaves[i] for i in (0, 2, 3, 4)], allow_unused=True)
        return [np.zeros(args[i].shape) if g is None else g.numpy()
                for i, g in zip((0, 2, 3, 4), gs, strict=True)]
    import jax

    g = jax.jit(jax.grad(f, argnums=(0, 2, 3, 4)))(*args)
    return [np.asarray(a) for a in g]


@pytest.mark.parametrize("name", NAMES)
def test_option_gradients_match_the_peer_formula(ad_xp, name):
    xp = ad_xp
    args = [asarray(xp, a) for a in (X, C, T, S, B, W)]
    ours = _grads(_ours(name), xp, args)
    theirs = _grads(_peer(name, "torch" if xp.__name__ == "torch" else "jax"), xp, args)
    for label, g_ours, g_theirs in zip(("x", "temperature", "sink", "b"), ours, theirs,
                                       strict=True):
        assert np.isfinite(g_ours).all(), label
        assert_close(g_ours, g_theirs, rtol=1e-11, atol=1e-13, err_msg=label)
    if name != "tuple_axis":
        assert (ours[0][~W] == 0).all()  # masked entries: exactly zero gradient
        assert (ours[0][0, 0] == 0).all()  # fully masked row


@pytest.mark.parametrize("t", [0.0, math.inf])
def test_temperature_limits_have_zero_gradient(ad_xp, t):
    xp = ad_xp
    x = np.array([[1.0, 3.0, 3.0, -2.0], [0.5, -1.0, 2.0, 1.0]])
    c = RNG.normal(size=x.shape)
    ca = asarray(xp, c)
    g = to_numpy(grad(lambda a: xp.sum(softmax(a, temperature=t) * ca), asarray(xp, x), xp))
    assert (g == 0).all()
    g = to_numpy(grad(lambda a: xp.sum(entropy(a, temperature=t)), asarray(xp, x), xp))
    assert (g == 0).all()


def test_low_precision_gradients_are_finite_and_close():
    import torch

    for dtype in (torch.float16, torch.bfloat16):
        x = torch.from_numpy(X).to(dtype).requires_grad_(True)
        (g,) = torch.autograd.grad((softmax(x, temperature=0.7) * torch.from_numpy(C).to(dtype))
                                   .sum(), x)
        assert g.dtype == dtype
        x64 = x.detach().double().requires_grad_(True)
        (ref,) = torch.autograd.grad((torch.softmax(x64 / 0.7, -1) * torch.from_numpy(C)).sum(),
                                     x64)
        assert_close(g.double(), ref, rtol=0, atol=0.02)


def test_float32_huge_logits_with_small_temperature_have_finite_gradients(ad_xp):
    xp = ad_xp
    x = np.array([[1e38, -1e38, 0.0, 3e37]], dtype=np.float32)
    c = asarray(xp, np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    g = to_numpy(grad(lambda a: xp.sum(softmax(a, temperature=0.5) * c), asarray(xp, x), xp))
    assert np.isfinite(g).all()
    assert (g == 0).all()  # a saturated one-hot: the derivative underflows to exactly 0
