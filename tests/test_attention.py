"""attention, merge_logsumexp and merge_attention against PyTorch's scaled_dot_product_attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import logitkit
from conftest import asarray, assert_close, grad, is_type_of, maybe_jit, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit.attention import attention, merge_attention, merge_logsumexp

B, H, S, SKV, D, DV = 2, 3, 7, 11, 5, 4
MASKS = ["none", "causal", "causal_square", "bool", "additive"]
BLOCKS = [None, 1, 3, 16]


def _inputs(seed=0, s=S, skv=SKV):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H, s, D))
    k = rng.normal(size=(B, H, skv, D))
    v = rng.normal(size=(B, H, skv, DV))
    w = rng.normal(size=(B, H, s, DV))  # cotangent
    return q, k, v, w


def _mask(kind, seed=1, s=S, skv=SKV):
    """(mask, is_causal, kv length) for a mask kind; the boolean mask has a fully masked row."""
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None, False, skv
    if kind == "causal":
        return None, True, skv
    if kind == "causal_square":
        return None, True, s
    if kind == "bool":
        m = rng.random((H, s, skv)) < 0.7
        m[:, 0, :] = True
        m[1, 2, :] = False  # one fully masked query row in head 1
        return m, False, skv
    if kind == "additive":
        m = rng.normal(size=(s, skv))
        m[rng.random((s, skv)) < 0.3] = -np.inf
        m[:, 0] = 0.5
        return m, False, skv
    raise AssertionError(kind)


def _sdpa(q, k, v, w, mask, is_causal, scale=None):
    """SDPA value and gradients (float64, CPU) as NumPy arrays."""
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tm = None if mask is None else torch.tensor(mask)
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=is_causal,
                                         scale=scale)
    gq, gk, gv = torch.autograd.grad((out * torch.tensor(w)).sum(), (tq, tk, tv))
    return [x.detach().numpy() for x in (out, gq, gk, gv)]


def _ours_torch(q, k, v, w, **kw):
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    if kw.get("mask") is not None:
        kw["mask"] = torch.tensor(kw["mask"])
    out = attention(tq, tk, tv, **kw)
    gq, gk, gv = torch.autograd.grad((out * torch.tensor(w)).sum(), (tq, tk, tv))
    return [x.detach().numpy() for x in (out, gq, gk, gv)]


def _ours_jax(q, k, v, w, **kw):
    """Value and gradients under ``jax.jit`` (one compilation instead of one per primitive)."""
    import jax
    import jax.numpy as jnp

    mask = kw.pop("mask", None)
    jm = None if mask is None else jnp.asarray(mask)

    def loss(q_, k_, v_, m_, w_):
        out = attention(q_, k_, v_, mask=m_, **kw)
        return jnp.sum(out * w_), out

    args = tuple(jnp.asarray(a) for a in (q, k, v))
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        *args, jm, jnp.asarray(w))
    return [np.asarray(x) for x in (out, *grads)]


@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("kind", MASKS)
def test_torch_values_and_gradients_match_sdpa(kind, block_size):
    mask, is_causal, skv = _mask(kind)
    q, k, v, w = _inputs(skv=skv)
    want = _sdpa(q, k, v, w, mask, is_causal)
    got = _ours_torch(q, k, v, w, mask=mask, is_causal=is_causal, block_size=block_size)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want, strict=True):
        assert_close(a, b, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("block_size", [None, 4])
@pytest.mark.parametrize("kind", MASKS)
def test_jax_values_and_gradients_match_sdpa(kind, block_size):
    mask, is_causal, skv = _mask(kind)
    q, k, v, w = _inputs(seed=2, skv=skv)
    want = _sdpa(q, k, v, w, mask, is_causal)
    got = _ours_jax(q, k, v, w, mask=mask, is_causal=is_causal, block_size=block_size)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want, strict=True):
        assert_close(a, b, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("kind", ["none", "causal", "bool", "additive"])
def test_every_backend_matches_sdpa(xp, kind):
    mask, is_causal, skv = _mask(kind)
    q, k, v, w = _inputs(seed=3, skv=skv)
    want = _sdpa(q, k, v, w, mask, is_causal)[0]
    args = [asarray(xp, a) for a in (q, k, v)]
    m = None if mask is None else asarray(xp, mask)

    def f(q_, k_, v_, m_):
        return attention(q_, k_, v_, mask=m_, is_causal=is_causal, block_size=5)

    out = maybe_jit(f, xp)(*args, m)
    assert is_type_of(out, xp)
    assert_close(out, want, rtol=0, atol=1e-10)


def test_custom_scale_matches_sdpa():
    q, k, v, w = _inputs(seed=4)
    want = _sdpa(q, k, v, w, None, True, scale=0.37)
    got = _ours_torch(q, k, v, w, is_causal=True, scale=0.37, block_size=2)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("block_size", [None, 4])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_fully_masked_row_gives_zeros_and_zero_gradient(ad_xp, kind, block_size):
    q, k, v, w = _inputs(seed=5)
    if kind == "bool":
        mask = np.ones((S, SKV), dtype=bool)
        mask[3] = False
    else:
        mask = np.zeros((S, SKV))
        mask[3] = -np.inf
    run = _ours_torch if ad_xp.__name__ == "torch" else _ours_jax
    out, gq, gk, gv = run(q, k, v, w, mask=mask, block_size=block_size)
    for a in (out, gq, gk, gv):
        assert np.isfinite(a).all()
    assert (out[..., 3, :] == 0).all()
    assert (gq[..., 3, :] == 0).all()
    # Elsewhere the result is SDPA's (PyTorch >= 2.5 also gives 0 on such rows; older gave NaN).
    want = _sdpa(q, k, v, w, mask, False)
    keep = np.arange(S) != 3
    assert_close(out[..., keep, :], want[0][..., keep, :], rtol=0, atol=1e-10)
    assert_close(gq[..., keep, :], want[1][..., keep, :], rtol=0, atol=1e-10)
    assert_close(gk, want[2], rtol=0, atol=1e-10)
    assert_close(gv, want[3], rtol=0, atol=1e-10)


@pytest.mark.parametrize("block_size", [None, 3])
def test_additive_mask_gradient_matches_sdpa(block_size):
    mask, _, _ = _mask("additive")
    q, k, v, w = _inputs(seed=16)
    grads = []
    for f in (F.scaled_dot_product_attention, attention):
        tm = torch.tensor(mask, requires_grad=True)
        args = [torch.tensor(a) for a in (q, k, v)]
        out = f(*args, attn_mask=tm) if f is not attention else f(*args, mask=tm,
                                                                   block_size=block_size)
        (g,) = torch.autograd.grad((out * torch.tensor(w)).sum(), tm)
        grads.append(g.numpy())
    assert np.isfinite(grads[1]).all()
    assert_close(grads[1], np.nan_to_num(grads[0]), rtol=0, atol=1e-10)


def test_tiling_bounds_the_memory_of_the_forward_pass():
    import tracemalloc

    rng = np.random.default_rng(17)
    q, k, v = (rng.normal(size=(1024, 16)) for _ in range(3))
    peaks = {}
    for block in (None, 64):
        tracemalloc.start()
        attention(q, k, v, is_causal=True, block_size=block)
        peaks[block] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    scores = 1024 * 1024 * 8
    assert peaks[None] >= scores  # the untiled pass holds the S × S scores
    assert peaks[64] < scores / 4  # the tiled one a few S × 64 tiles


def test_fully_masked_row_lse_is_minus_inf():
    q, k, v, _ = _inputs(seed=6)
    mask = np.ones((S, SKV), dtype=bool)
    mask[0] = False
    out, lse = attention(q, k, v, mask=mask, return_lse=True, block_size=4)
    assert np.isneginf(lse[..., 0]).all()
    assert np.isfinite(lse[..., 1:]).all()
    assert (out[..., 0, :] == 0).all()


def _reference_scores(q, k, mask, is_causal, softcap, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    if is_causal:
        tril = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        s = s.masked_fill(~tril, -math.inf)
    return s


@pytest.mark.parametrize("block_size", [None, 3])
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "additive"])
def test_softcap_is_applied_before_the_mask(kind, block_size):
    mask, is_causal, skv = _mask(kind)
    q, k, v, w = _inputs(seed=7, skv=skv)
    q, k = 4 * q, 4 * k  # scores large enough for the cap to matter
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tm = None if mask is None else torch.tensor(mask)
    s = _reference_scores(tq, tk, tm, is_causal, 2.5)
    p = torch.softmax(s, dim=-1)
    if kind == "bool":
        p = torch.nan_to_num(p)  # the reference's own NaN on the fully masked row
    ref = p @ tv
    want = torch.autograd.grad((ref * torch.tensor(w)).sum(), (tq, tk, tv))
    got = _ours_torch(q, k, v, w, mask=mask, is_causal=is_causal, softcap=2.5,
                      block_size=block_size)
    assert_close(got[0], ref.detach().numpy(), rtol=0, atol=1e-10)
    for a, b in zip(got[1:], want, strict=True):
        assert_close(a, b.numpy(), rtol=0, atol=1e-10)
    # and it differs from the uncapped result, so the cap did something
    assert not np.allclose(got[0], _ours_torch(q, k, v, w, mask=mask, is_causal=is_causal)[0])


@pytest.mark.parametrize("block_size", [None, 4])
@pytest.mark.parametrize("sink_shape", [(), (H,), (B, H)])
def test_sink_is_an_extra_key_with_zero_value(sink_shape, block_size):
    q, k, v, w = _inputs(seed=8)
    rng = np.random.default_rng(9)
    sink = rng.normal(size=sink_shape) + 1.0
    mask = np.ones((S, SKV), dtype=bool)
    mask[4] = False  # with a sink the fully masked row attends to the sink only: output 0
    tq, tk, tv, ts = (torch.tensor(a, requires_grad=True) for a in (q, k, v, sink))
    s = _reference_scores(tq, tk, torch.tensor(mask), False, None)
    col = ts.reshape((*sink_shape, 1, 1)).expand(B, H, S, 1)
    p = torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :-1]
    ref = p @ tv
    want = torch.autograd.grad((ref * torch.tensor(w)).sum(), (tq, tk, tv, ts))
    lse_ref = torch.logsumexp(torch.cat([s, col], dim=-1), dim=-1)

    gq, gk, gv, gs = (torch.tensor(a, requires_grad=True) for a in (q, k, v, sink))
    out, lse = attention(gq, gk, gv, mask=torch.tensor(mask), sink=gs, block_size=block_size,
                         return_lse=True)
    got = torch.autograd.grad((out * torch.tensor(w)).sum(), (gq, gk, gv, gs))
    assert_close(out, ref.detach().numpy(), rtol=0, atol=1e-10)
    assert_close(lse, lse_ref.detach().numpy(), rtol=0, atol=1e-10)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b.numpy(), rtol=0, atol=1e-10)
    assert (to_numpy(out)[..., 4, :] == 0).all()


def test_sink_gradient_under_jax():
    import jax
    import jax.numpy as jnp

    q, k, v, w = _inputs(seed=10)
    sink = np.linspace(-1.0, 1.0, H)

    def f(s):
        return jnp.sum(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), sink=s,
                                 block_size=3) * jnp.asarray(w))

    ts = torch.tensor(sink, requires_grad=True)
    tq, tk, tv = (torch.tensor(a) for a in (q, k, v))
    s = _reference_scores(tq, tk, None, False, None)
    col = ts.reshape(H, 1, 1).expand(B, H, S, 1)
    ref = torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :-1] @ tv
    (want,) = torch.autograd.grad((ref * torch.tensor(w)).sum(), (ts,))
    assert_close(jax.jit(jax.grad(f))(jnp.asarray(sink)), want.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["none", "causal", "bool", "additive"])
def test_lse_is_the_logsumexp_of_the_scores(kind):
    mask, is_causal, skv = _mask(kind)
    q, k, v, _ = _inputs(seed=11, skv=skv)
    tm = None if mask is None else torch.tensor(mask)
    s = _reference_scores(torch.tensor(q), torch.tensor(k), tm, is_causal, None)
    _, lse = attention(q, k, v, mask=mask, is_causal=is_causal, return_lse=True, block_size=4)
    assert_close(lse, torch.logsumexp(s, dim=-1).numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["none", "bool", "additive"])
def test_merging_split_kv_halves_equals_full_attention(xp, kind):
    mask, _, _ = _mask(kind)
    q, k, v, _ = _inputs(seed=12)
    cut = 5

    def f(q_, k_, v_, m_):
        full = attention(q_, k_, v_, mask=m_, return_lse=True)
        parts = [attention(q_, k_[..., sl, :], v_[..., sl, :],
                           mask=None if m_ is None else m_[..., sl], return_lse=True)
                 for sl in (slice(0, cut), slice(cut, SKV))]
        return (*merge_attention(parts[0][0], parts[0][1], parts[1][0], parts[1][1]), *full)

    out, lse, full, full_lse = maybe_jit(f, xp)(*(asarray(xp, a) for a in (q, k, v)),
                                                None if mask is None else asarray(xp, mask))
    assert is_type_of(out, xp) and is_type_of(lse, xp)
    assert_close(out, to_numpy(full), rtol=0, atol=1e-12)
    assert_close(lse, to_numpy(full_lse), rtol=0, atol=1e-12)


def test_merge_with_an_empty_part_and_two_empty_parts():
    q, k, v, _ = _inputs(seed=13)
    mask = np.ones((S, SKV), dtype=bool)
    mask[:, :5] = False  # first half empty for every row
    mask[2] = False  # row 2 empty everywhere
    full, full_lse = attention(q, k, v, mask=mask, return_lse=True)
    oa, la = attention(q, k[..., :5, :], v[..., :5, :], mask=mask[:, :5], return_lse=True)
    ob, lb = attention(q, k[..., 5:, :], v[..., 5:, :], mask=mask[:, 5:], return_lse=True)
    assert np.isneginf(la).all()
    out, lse = merge_attention(oa, la, ob, lb)
    assert np.isfinite(out).all()
    assert_close(out, full, rtol=0, atol=1e-12)
    assert_close(lse, full_lse, rtol=0, atol=1e-12)


def test_merge_attention_gradient_is_finite_on_empty_parts():
    ta = torch.tensor([-math.inf, 0.3], dtype=torch.float64, requires_grad=True)
    tb = torch.tensor([-math.inf, -math.inf], dtype=torch.float64, requires_grad=True)
    oa = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    ob = torch.full((2, 3), 2.0, dtype=torch.float64, requires_grad=True)
    out, lse = merge_attention(oa, ta, ob, tb)
    assert_close(out, np.array([[0.0] * 3, [1.0] * 3]), rtol=0, atol=1e-15)
    grads = torch.autograd.grad(out.sum() + lse[1], (oa, ta, ob, tb))
    for g in grads:
        assert torch.isfinite(g).all()


@given(st.floats(-50, 50), st.floats(-50, 50))
def test_merge_logsumexp_is_logaddexp(a, b):
    assert math.isclose(float(merge_logsumexp(np.float64(a), np.float64(b))), np.logaddexp(a, b),
                        rel_tol=1e-14, abs_tol=1e-14)


def test_merge_logsumexp_handles_minus_inf_with_zero_gradient(ad_xp):
    x = asarray(ad_xp, np.array([-np.inf, -np.inf]))

    def f(t):
        return merge_logsumexp(t[0], t[1]) * 0 + merge_logsumexp(t[0], asarray(ad_xp, 1.0))

    g = to_numpy(grad(f, x, ad_xp))
    assert_close(g, np.array([0.0, 0.0]))
    assert float(to_numpy(merge_logsumexp(x[0], x[1]))) == -np.inf


@given(st.integers(1, 13), st.booleans(), st.integers(0, 5))
def test_tiled_equals_untiled_for_any_block_size(block_size, is_causal, seed):
    q, k, v, _ = _inputs(seed=seed)
    mask, _, _ = _mask("additive", seed=seed)
    a = attention(q, k, v, mask=mask, is_causal=is_causal, block_size=block_size)
    b = attention(q, k, v, mask=mask, is_causal=is_causal)
    assert_close(a, b, rtol=0, atol=1e-13)


def test_attention_has_one_public_module():
    import logitkit._attention as mod

    assert logitkit.attention.attention is mod.attention
    assert logitkit.attention.merge_attention is mod.merge_attention
    assert logitkit.attention.merge_logsumexp is mod.merge_logsumexp
    q, k, v, _ = _inputs()
    assert_close(logitkit.attention.attention(q, k, v, block_size=2), mod.attention(q, k, v))


def test_low_precision_accumulates_in_float32():
    q, k, v, _ = _inputs(seed=14)
    out = attention(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16),
                    block_size=3)
    assert out.dtype == np.float16
    ref = attention(q.astype(np.float16).astype(np.float64), k.astype(np.float16).astype(np.float64),
                    v.astype(np.float16).astype(np.float64))
    assert_close(out, ref, rtol=0, atol=2e-3)
    t = attention(*(torch.tensor(a, dtype=torch.bfloat16) for a in (q, k, v)))
    assert t.dtype == torch.bfloat16


def test_batch_axes_broadcast():
    q, k, v, _ = _inputs(seed=15)
    out = attention(q, k[0, 0], v[0, 0])  # shared keys and values
    tk = torch.tensor(k[0, 0]).expand(B, H, SKV, D)
    tv = torch.tensor(v[0, 0]).expand(B, H, SKV, DV)
    assert_close(out, F.scaled_dot_product_attention(torch.tensor(q), tk, tv).numpy(),
                 rtol=0, atol=1e-12)


def test_empty_keys_give_zeros():
    q = np.ones((3, 2))
    out, lse = attention(q, np.ones((0, 2)), np.ones((0, 4)), return_lse=True)
    assert out.shape == (3, 4) and (out == 0).all() and np.isneginf(lse).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"block_size": 0}, LogitkitValueError, "block_size"),
        ({"block_size": 2.0}, LogitkitTypeError, "block_size"),
        ({"softcap": -1.0}, LogitkitValueError, "softcap"),
        ({"scale": math.nan}, LogitkitValueError, "scale"),
        ({"is_causal": 1}, LogitkitTypeError, "is_causal"),
        ({"mask": np.ones((S, SKV), dtype=np.int64)}, LogitkitTypeError, "mask"),
        ({"mask": np.ones((S + 1, SKV), dtype=bool)}, LogitkitValueError, "mask"),
        ({"sink": np.zeros(H + 1)}, LogitkitValueError, "sink"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, exc, match):
    q, k, v, _ = _inputs()
    with pytest.raises(exc, match=f"Expected `{match}`"):
        attention(q, k, v, **kwargs)


def test_bad_shapes_raise():
    q, k, v, _ = _inputs()
    with pytest.raises(LogitkitValueError, match="Expected `k`"):
        attention(q, k[..., :3], v)
    with pytest.raises(LogitkitValueError, match="Expected `v`"):
        attention(q, k, v[..., :3, :])
    with pytest.raises(LogitkitValueError, match="Expected `q`"):
        attention(q[0, 0, 0], k, v)
    with pytest.raises(LogitkitValueError, match="Expected `q, k, v`"):
        attention(q, k[:, :2], v[:, :2])
    out, lse = attention(q, k, v, return_lse=True)
    with pytest.raises(LogitkitValueError, match="Expected `lse_b`"):
        merge_attention(out, lse, out, lse[..., :3])
