"""linear_cross_entropy: equal to the dense cross-entropy of ``hidden @ weight.T + bias``.

The reference is PyTorch's ``F.cross_entropy`` on the full logits (float64), with the z-loss
``c·lse²`` and the softcap ``c·tanh(z/c)`` written out by hand; gradients by torch autograd.
"""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import torch_cross_entropy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit._linear_cross_entropy import (
    _torch_linear_cross_entropy,
    _validate,
    linear_cross_entropy,
    linear_cross_entropy_with_grad,
)

N, H, V = 29, 6, 41
TOL = {"rtol": 1e-10, "atol": 1e-10}
IGNORE = -100

OPTIONS = [
    {},
    {"ignore_index": IGNORE},
    {"label_smoothing": 0.1},
    {"z_loss": 0.05},
    {"softcap": 3.0},
    {"ignore_index": IGNORE, "label_smoothing": 0.2, "z_loss": 0.01, "softcap": 2.5},
    {"ignore_index": 7, "label_smoothing": 1.0},
]
# None: automatic (one block here); a pair: tokens and vocabulary entries per block.
CHUNKS = [None, (8, 16)]


def dense_reference(h, w, b, y, **opts):
    """The loss of the materialised logits ``h @ w.T + b``, by PyTorch."""
    z = h @ w.T
    if b is not None:
        z = z + b
    return torch_cross_entropy(z, y, **opts)


def make_inputs(seed, *, bias=True, ignore_index=None, n=N, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g, dtype=dtype)
    w = torch.randn(V, H, generator=g, dtype=dtype)
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None
    y = torch.randint(0, V, (n,), generator=g)
    if ignore_index is not None:
        y[::3] = ignore_index
    return h, w, b, y


def reference_and_grads(h, w, b, y, grad_out, **opts):
    leaves = [t.detach().clone().requires_grad_(True) for t in (h, w) + ((b,) if b is not None
                                                                         else ())]
    ref = dense_reference(*leaves[:2], leaves[2] if b is not None else None, y, **opts)
    grads = torch.autograd.grad(ref, leaves, grad_out)
    return ref.detach(), grads


def check_against_dense(opts, reduction, chunk, bias=True):
    seed = zlib.crc32(repr((opts, reduction, chunk)).encode())
    h, w, b, y = make_inputs(seed, bias=bias, ignore_index=opts.get("ignore_index"))
    shape = (N,) if reduction == "none" else ()
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = reference_and_grads(h, w, b, y, grad_out, reduction=reduction, **opts)

    # torch autograd, the strategy the public function does not take for this reduction
    for strategy in ("recompute",) if reduction != "none" else ("forward",):
        leaves = [t.clone().requires_grad_(True) for t in (h, w) + ((b,) if bias else ())]
        lb = leaves[2] if bias else None
        inp, xp = _validate(leaves[0], leaves[1], y, lb, chunk_size=chunk, reduction=reduction,
                            ignore_index=opts.get("ignore_index"),
                            label_smoothing=opts.get("label_smoothing", 0.0),
                            z_loss=opts.get("z_loss", 0.0), softcap=opts.get("softcap"))
        out = _torch_linear_cross_entropy(leaves[0], leaves[1], y, lb, inp, xp, strategy)
        torch.testing.assert_close(out.detach(), ref, **TOL)
        grads = torch.autograd.grad(out, leaves, grad_out)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, **TOL)

    # the public torch entry point
    leaves = [t.clone().requires_grad_(True) for t in (h, w) + ((b,) if bias else ())]
    out = linear_cross_entropy(leaves[0], leaves[1], y, bias=leaves[2] if bias else None,
                               chunk_size=chunk, reduction=reduction, **opts)
    torch.testing.assert_close(out.detach(), ref, **TOL)
    for got, want in zip(torch.autograd.grad(out, leaves, grad_out), ref_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)

    # NumPy: value, and value with gradients
    hn, wn, yn = h.numpy(), w.numpy(), y.numpy()
    bn = b.numpy() if bias else None
    value = linear_cross_entropy(hn, wn, yn, bias=bn, chunk_size=chunk, reduction=reduction,
                                 **opts)
    assert isinstance(value, np.ndarray | np.generic)
    np.testing.assert_allclose(value, ref.numpy(), **TOL)
    loss, dh, dw, db = linear_cross_entropy_with_grad(
        hn, wn, yn, bias=bn, chunk_size=chunk, reduction=reduction,
        grad_output=grad_out.numpy(), **opts)
    np.testing.assert_allclose(loss, ref.numpy(), **TOL)
    got = (dh, dw) + ((db,) if bias else ())
    for g, want in zip(got, ref_grads, strict=True):
        assert isinstance(g, np.ndarray)
        np.testing.assert_allclose(g, want.numpy(), **TOL)
    assert (db is None) == (not bias)


@pytest.mark.parametrize("chunk", CHUNKS, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_matches_dense_in_value_and_gradients(opts, reduction, chunk):
    check_against_dense(opts, reduction, chunk)


@pytest.mark.parametrize("chunk", [5, (1, 30), (64, 1)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_extreme_blocks_and_no_bias_match_dense(reduction, chunk):
    # One token per block, one vocabulary entry per block, and tokens-only blocking.
    check_against_dense(OPTIONS[5], reduction, chunk, bias=False)


def test_with_grad_default_grad_output_is_gradient_of_the_sum():
    h, w, b, y = make_inputs(3)
    for reduction in ("none", "sum"):
        _, dh, dw, db = linear_cross_entropy_with_grad(h.numpy(), w.numpy(), y.numpy(),
                                                       bias=b.numpy(), reduction=reduction)
        _, ref_grads = reference_and_grads(h, w, b, y, torch.tensor(1.0, dtype=torch.float64),
                                           reduction="sum")
        for g, want in zip((dh, dw, db), ref_grads, strict=True):
            np.testing.assert_allclose(g, want.numpy(), **TOL)


def test_leading_dimensions_are_kept():
    h, w, b, y = make_inputs(4, n=12)
    h3, y3 = h.reshape(3, 4, H), y.reshape(3, 4)
    leaf = h3.clone().requires_grad_(True)
    out = linear_cross_entropy(leaf, w, y3, bias=b, reduction="none")
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.detach().reshape(-1),
                               dense_reference(h, w, b, y, reduction="none"), **TOL)
    out.sum().backward()
    assert leaf.grad.shape == (3, 4, H)
    _, dh, _, _ = linear_cross_entropy_with_grad(h3.numpy(), w.numpy(), y3.numpy())
    assert dh.shape == (3, 4, H)


def test_every_token_ignored_gives_zero_loss_and_zero_gradients():
    h, w, b, y = make_inputs(5)
    y = torch.full_like(y, IGNORE)
    for reduction in ("mean", "sum", "none"):
        leaves = [t.clone().requires_grad_(True) for t in (h, w, b)]
        out = linear_cross_entropy(*leaves[:2], y, bias=leaves[2], ignore_index=IGNORE,
                                   reduction=reduction)
        assert torch.count_nonzero(out) == 0
        for g in torch.autograd.grad(out.sum(), leaves):
            assert torch.count_nonzero(g) == 0
        loss, dh, dw, db = linear_cross_entropy_with_grad(
            h.numpy(), w.numpy(), y.numpy(), bias=b.numpy(), ignore_index=IGNORE,
            reduction=reduction)
        assert not np.any(loss) and not np.any(dh) and not np.any(dw) and not np.any(db)


def test_ignored_tokens_are_dropped_before_the_matrix_product():
    # A NaN hidden state of an ignored token would poison every block it took part in.
    h, w, b, y = make_inputs(6, ignore_index=IGNORE)
    ref = dense_reference(h, w, b, y, ignore_index=IGNORE, z_loss=0.1)
    h_nan = torch.where((y == IGNORE)[:, None], torch.nan, h).requires_grad_(True)
    out = linear_cross_entropy(h_nan, w, y, bias=b, ignore_index=IGNORE, z_loss=0.1,
                               chunk_size=(4, 9))
    torch.testing.assert_close(out.detach(), ref, **TOL)
    (g,) = torch.autograd.grad(out, h_nan)
    assert torch.all(g[y == IGNORE] == 0) and torch.all(torch.isfinite(g))


def test_float32_and_bfloat16_keep_their_dtype():
    h, w, b, y = make_inputs(7, dtype=torch.float32)
    ref = dense_reference(h.double(), w.double(), b.double(), y)
    out = linear_cross_entropy(h, w, y, bias=b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    hb, wb = h.bfloat16().requires_grad_(True), w.bfloat16().requires_grad_(True)
    out = linear_cross_entropy(hb, wb, y)
    assert out.dtype == torch.bfloat16
    out.backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    ref = dense_reference(hb.detach().double(), wb.detach().double(), None, y)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
    _, dh, dw, _ = linear_cross_entropy_with_grad(h.numpy(), w.numpy(), y.numpy())
    assert dh.dtype == np.float32 and dw.dtype == np.float32


def test_gradient_for_weight_only():
    h, w, b, y = make_inputs(8)
    wl = w.clone().requires_grad_(True)
    out = linear_cross_entropy(h, wl, y, bias=b)
    (g,) = torch.autograd.grad(out, wl)
    _, (_, want, _) = reference_and_grads(h, w, b, y, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(g, want, **TOL)


def test_without_autograd_no_graph_is_built():
    h, w, b, y = make_inputs(9)
    out = linear_cross_entropy(h, w, y, bias=b)
    assert out.grad_fn is None
    with torch.no_grad():
        out = linear_cross_entropy(h.requires_grad_(True), w, y, bias=b)
    assert out.grad_fn is None


def test_autograd_graph_keeps_no_tokens_by_vocabulary_tensor():
    n, v = 256, 300
    g = torch.Generator().manual_seed(10)
    h = torch.randn(n, H, generator=g, requires_grad=True)
    w = torch.randn(v, H, generator=g, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    for reduction in ("mean", "none"):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = linear_cross_entropy(h, w, y, reduction=reduction, chunk_size=32)
        out.sum().backward()
        assert sizes and max(sizes) <= max(n * H, v * H)
    dense_sizes = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: dense_sizes.append(t.numel()) or t, lambda t: t):
        F.cross_entropy(h @ w.T, y)
    assert max(dense_sizes) >= n * v  # the check can fail: dense keeps the logits


def test_numpy_peak_memory_is_a_block_not_the_logits():
    rng = np.random.default_rng(11)
    n, v, hid = 1024, 4096, 8
    h, w = rng.normal(size=(n, hid)), rng.normal(size=(v, hid)) / 4
    y = rng.integers(0, v, size=n)
    logits_bytes = n * v * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        loss, *_ = linear_cross_entropy_with_grad(h, w, y, chunk_size=(128, 1024),
                                                  label_smoothing=0.1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        dense = h @ w.T
        _, dense_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dense_peak >= logits_bytes  # tracemalloc sees NumPy's buffers
    assert peak < logits_bytes / 8
    lse = np.log(np.exp(dense).sum(1))
    want = np.mean(0.9 * (lse - dense[np.arange(n), y]) + 0.1 * (lse - dense.mean(1)))
    np.testing.assert_allclose(loss, want, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": np.zeros(5)}, LogitkitTypeError, "integer class indices"),
        ({"target": np.zeros(4, dtype=int)}, LogitkitValueError, "shape"),
        ({"target": np.array([0, 1, 2, 3, 10])}, LogitkitValueError, r"\[0, 10\), but got 10"),
        ({"target": np.array([0, 1, -1, 3, 4])}, LogitkitValueError, "but got -1"),
        ({"weight": np.ones((10, 2))}, LogitkitValueError, "shape"),
        ({"bias": np.ones(9)}, LogitkitValueError, "`bias`"),
        ({"chunk_size": 0}, LogitkitValueError, "`chunk_size`"),
        ({"chunk_size": (4, 0)}, LogitkitValueError, "`chunk_size`"),
        ({"chunk_size": 2.5}, LogitkitTypeError, "`chunk_size`"),
        ({"label_smoothing": 1.5}, LogitkitValueError, "`label_smoothing`"),
        ({"z_loss": -1.0}, LogitkitValueError, "`z_loss`"),
        ({"softcap": 0.0}, LogitkitValueError, "`softcap`"),
        ({"reduction": "avg"}, LogitkitValueError, "`reduction`"),
        ({"ignore_index": 1.0}, LogitkitTypeError, "`ignore_index`"),
        ({"grad_output": np.ones(3)}, LogitkitValueError, "`grad_output`"),
    ],
)
def test_bad_input_raises_one_clear_error(kwargs, error, match):
    args = {"hidden": np.ones((5, 3)), "weight": np.ones((10, 3)),
            "target": np.array([0, 1, 2, 3, 4])}
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k not in args}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        linear_cross_entropy_with_grad(args["hidden"], args["weight"], args["target"], **opts)


def test_ignored_targets_may_be_out_of_range_and_jax_is_refused():
    h, w = np.ones((3, 2)), np.ones((4, 2))
    out = linear_cross_entropy(h, w, np.array([0, -100, 3]), ignore_index=-100)
    np.testing.assert_allclose(out, np.log(4.0), rtol=1e-14)
    import jax.numpy as jnp

    with pytest.raises(LogitkitTypeError, match="NumPy array or a torch tensor"):
        linear_cross_entropy(jnp.ones((3, 2)), jnp.ones((4, 2)), jnp.array([0, 1, 2]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_equals_logitkit_cross_entropy_of_the_dense_logits(reduction):
    from logitkit.losses import cross_entropy

    rng = np.random.default_rng(12)
    h, w, b = rng.normal(size=(20, 5)), rng.normal(size=(30, 5)), rng.normal(size=30)
    y = rng.integers(0, 30, size=20)
    y[::3] = IGNORE
    opts = {"ignore_index": IGNORE, "label_smoothing": 0.2, "z_loss": 0.03, "softcap": 2.0,
            "reduction": reduction}
    got = linear_cross_entropy(h, w, y, bias=b, chunk_size=(4, 7), **opts)
    np.testing.assert_allclose(got, cross_entropy(h @ w.T + b, y, **opts), **TOL)
