"""The cross-entropy against ``torch.nn.functional.cross_entropy``: values and autograd gradients
for every shared option, and the torch adapter's memory contract (O(N) saved for backward)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from logitkit import softmax_jacobian
from logitkit.losses import cross_entropy, cross_entropy_with_grad

torch.set_num_threads(1)

N, K = 7, 5
RNG = np.random.default_rng(7)
X = RNG.normal(size=(N, K)) * 2
LABELS = RNG.integers(0, K, N)
LABELS[[1, 4]] = -100  # rows that `ignore_index` drops
SAFE_LABELS = np.where(LABELS < 0, 0, LABELS)
PROBS = RNG.dirichlet(np.ones(K), N)
PROBS[2] = np.eye(K)[3]  # a one-hot row: 0·log 0 terms
WEIGHT = RNG.uniform(0.3, 2.0, K)

INTEGER_CASES = list(itertools.product(["none", "sum", "mean"], [0.0, 0.25], [False, True],
                                       [None, -100]))
PROBABILITY_CASES = list(itertools.product(["none", "sum", "mean"], [0.0, 0.25], [False, True]))


@pytest.fixture(autouse=True)
def _generic_numpy_path(monkeypatch):
    import logitkit._kernels as kernels

    monkeypatch.setattr(kernels, "cross_entropy", lambda problem: None)


def _torch_reference(target, reduction, eps, weighted, ignore_index, target_grad=False):
    x = torch.tensor(X, requires_grad=True)
    t = torch.tensor(target, requires_grad=target_grad) if target.dtype.kind == "f" else (
        torch.tensor(target))
    kw = dict(reduction=reduction, label_smoothing=eps,
              weight=torch.tensor(WEIGHT) if weighted else None)
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    loss = F.cross_entropy(x, t, **kw)
    inputs = (x, t) if target_grad else (x,)
    grads = torch.autograd.grad(loss.sum(), inputs)
    return loss.detach().numpy(), [g.numpy() for g in grads]


def _ours(target, reduction, eps, weighted, ignore_index, *, target_grad=False,
          weight_grad=False):
    x = torch.tensor(X, requires_grad=True)
    t = torch.tensor(target, requires_grad=target_grad) if target.dtype.kind == "f" else (
        torch.tensor(target))
    w = None
    if weighted:
        w = torch.tensor(WEIGHT, requires_grad=weight_grad)
    loss = cross_entropy(x, t, reduction=reduction, label_smoothing=eps, weight=w,
                         ignore_index=ignore_index)
    inputs = (x, t) if target_grad else (x,)
    grads = torch.autograd.grad(loss.sum(), inputs)
    return loss.detach().numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize(("reduction", "eps", "weighted", "ignore_index"), INTEGER_CASES)
def test_integer_targets_match_torch(reduction, eps, weighted, ignore_index):
    labels = LABELS if ignore_index is not None else SAFE_LABELS
    ref_loss, (ref_g,) = _torch_reference(labels, reduction, eps, weighted, ignore_index)
    # the torch adapter (analytic backward)
    loss, (g,) = _ours(labels, reduction, eps, weighted, ignore_index)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-15)
    # the generic path differentiated by torch itself (taken when the weight needs a gradient)
    if weighted:
        loss2, (g2,) = _ours(labels, reduction, eps, weighted, ignore_index, weight_grad=True)
        np.testing.assert_allclose(loss2, ref_loss, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(g2, ref_g, rtol=1e-12, atol=1e-15)
    # the NumPy fused pass
    np_loss, np_g = cross_entropy_with_grad(X, labels, reduction=reduction, label_smoothing=eps,
                                            weight=WEIGHT if weighted else None,
                                            ignore_index=ignore_index)
    np.testing.assert_allclose(np_loss, ref_loss, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np_g, ref_g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("reduction", "eps", "weighted"), PROBABILITY_CASES)
def test_probability_targets_match_torch(reduction, eps, weighted):
    ref_loss, (ref_g, ref_gt) = _torch_reference(PROBS, reduction, eps, weighted, None,
                                                 target_grad=True)
    loss, (g, gt) = _ours(PROBS, reduction, eps, weighted, None, target_grad=True)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gt, ref_gt, rtol=1e-12, atol=1e-15)
    np_loss, np_g = cross_entropy_with_grad(X, PROBS, reduction=reduction, label_smoothing=eps,
                                            weight=WEIGHT if weighted else None)
    np.testing.assert_allclose(np_loss, ref_loss, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np_g, ref_g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("target_kind", ["int", "prob"])
def test_spatial_layout_matches_torch(target_kind):
    x = torch.tensor(RNG.normal(size=(2, K, 3, 4)), requires_grad=True)
    if target_kind == "int":
        t = torch.tensor(RNG.integers(0, K, (2, 3, 4)))
        t[0, 1, 2] = -1
        kw = dict(ignore_index=-1)
    else:
        t = torch.softmax(torch.tensor(RNG.normal(size=(2, K, 3, 4))), dim=1)
        kw = {}
    w = torch.tensor(WEIGHT)
    ref = F.cross_entropy(x, t, weight=w, label_smoothing=0.1, **kw)
    (ref_g,) = torch.autograd.grad(ref, x)
    ours = cross_entropy(x, t, axis=1, weight=w, label_smoothing=0.1, **kw)
    (g,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-15)


def test_float32_and_bfloat16_follow_torch():
    x32 = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    t = torch.tensor(SAFE_LABELS)
    ref = F.cross_entropy(x32, t, label_smoothing=0.1)
    (ref_g,) = torch.autograd.grad(ref, x32)
    ours = cross_entropy(x32, t, label_smoothing=0.1)
    (g,) = torch.autograd.grad(ours, x32)
    assert ours.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(g, ref_g, rtol=2e-5, atol=1e-7)
    xb = torch.tensor(X, dtype=torch.bfloat16, requires_grad=True)
    ours_b = cross_entropy(xb, t)
    (gb,) = torch.autograd.grad(ours_b, xb)
    assert ours_b.dtype == torch.bfloat16 and gb.dtype == torch.bfloat16
    exact = F.cross_entropy(xb.detach().double(), t)
    torch.testing.assert_close(ours_b.double(), exact, rtol=1e-2, atol=0)


def test_adapter_gradients_pass_gradcheck_with_every_option():
    x = torch.tensor(X, requires_grad=True)
    t = torch.tensor(LABELS)
    mask = torch.tensor(RNG.random((N, K)) < 0.8)
    mask[3] = False  # a fully masked row
    t = torch.where(mask[torch.arange(N), t.clamp(min=0)] | (t < 0), t, torch.tensor(-100))

    def f(v):
        return cross_entropy(v, t, ignore_index=-100, weight=torch.tensor(WEIGHT),
                             label_smoothing=0.2, z_loss=0.05, logit_l2=0.1, temperature=1.3,
                             softcap=4.0, where=mask)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_generic_path_differentiates_weight_and_temperature():
    x = torch.tensor(X, requires_grad=True)
    t = torch.tensor(SAFE_LABELS)
    w = torch.tensor(WEIGHT, requires_grad=True)
    temp = torch.tensor(RNG.uniform(0.5, 2.0, N), requires_grad=True)

    def f(v, weight, temperature):
        return cross_entropy(v, t, weight=weight, temperature=temperature, label_smoothing=0.1,
                             z_loss=0.01)

    assert torch.autograd.gradcheck(f, (x, w, temp))


def test_hessian_is_the_softmax_jacobian():
    x = torch.tensor(X[0])
    for target in (torch.tensor(2), torch.tensor(PROBS[0])):
        h = torch.autograd.functional.hessian(lambda v, t=target: cross_entropy(v, t), x)
        torch.testing.assert_close(h, softmax_jacobian(x), rtol=1e-12, atol=1e-14)
    h = torch.autograd.functional.hessian(
        lambda v: cross_entropy(v, torch.tensor(1), temperature=2.0), x)
    torch.testing.assert_close(h, softmax_jacobian(x, temperature=2.0) / 2.0, rtol=1e-12,
                               atol=1e-14)


def _saved_during(fn):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("options", [
    {},
    dict(label_smoothing=0.1, z_loss=1e-4, logit_l2=1e-3, temperature=1.5, softcap=30.0),
    dict(weight="w", ignore_index=-100, reduction="none"),
])
def test_adapter_saves_only_row_statistics(options):
    n, k = 256, 300
    x = torch.randn(n, k, requires_grad=True)
    t = torch.randint(0, k, (n,))
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.rand(k)
    loss, saved = _saved_during(lambda: cross_entropy(x, t, **options))
    logits_storage = x.untyped_storage().data_ptr()
    others = [s for s in saved if s.untyped_storage().data_ptr() != logits_storage]
    assert len(others) < len(saved)  # the logits themselves are kept (they are the input)
    assert all(s.numel() <= n for s in others), [tuple(s.shape) for s in others]
    assert sum(s.numel() for s in others) <= 4 * n + 1
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert g.shape == x.shape
    # the detector sees torch's own N×K log-softmax
    _, ref_saved = _saved_during(lambda: F.cross_entropy(x, t))
    assert any(s.numel() == n * k and s.untyped_storage().data_ptr() != logits_storage
               for s in ref_saved)


def test_adapter_with_probability_targets_keeps_only_inputs():
    n, k = 64, 40
    x = torch.randn(n, k, requires_grad=True)
    q = torch.softmax(torch.randn(n, k), dim=-1)
    _, saved = _saved_during(lambda: cross_entropy(x, q, label_smoothing=0.1))
    inputs = {x.untyped_storage().data_ptr(), q.untyped_storage().data_ptr()}
    others = [s for s in saved if s.untyped_storage().data_ptr() not in inputs]
    assert all(s.numel() <= n for s in others)


def test_no_grad_and_plain_tensors_skip_the_adapter():
    x = torch.tensor(X)
    out = cross_entropy(x, torch.tensor(SAFE_LABELS))
    assert out.grad_fn is None
    with torch.no_grad():
        out = cross_entropy(x.clone().requires_grad_(True), torch.tensor(SAFE_LABELS))
    assert out.grad_fn is None
    np.testing.assert_allclose(out.numpy(), F.cross_entropy(x, torch.tensor(SAFE_LABELS)))


def test_adapter_is_used_only_when_it_gives_every_gradient():
    x = torch.tensor(X, requires_grad=True)
    t = torch.tensor(SAFE_LABELS)
    assert "CrossEntropyFunction" in type(cross_entropy(x, t).grad_fn).__name__
    w = torch.tensor(WEIGHT, requires_grad=True)
    generic = cross_entropy(x, t, weight=w)
    assert "CrossEntropyFunction" not in type(generic.grad_fn).__name__
    (gw,) = torch.autograd.grad(generic, w)
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0


@pytest.mark.parametrize("options", [
    dict(label_smoothing=0.3, weight="zeros", where="mask"),
    dict(label_smoothing=0.2, z_loss=0.01, logit_l2=0.05, temperature=0.7, softcap=2.0,
         where="mask", ignore_index=-100, reduction="none"),
    dict(label_smoothing=0.1, weight="zeros", temperature=1.9, reduction="sum"),
])
def test_adapter_equals_the_generic_numpy_path(options):
    x = X.copy()
    col = (SAFE_LABELS[0] + 1) % K
    x[0, col] = -np.inf  # an unmasked class with probability 0, and weight 0 below
    w = WEIGHT.copy()
    w[col] = 0.0
    mask = np.ones((N, K), dtype=bool)
    mask[2, [0, 4]] = False
    mask[5] = False
    labels = np.where(mask[np.arange(N), SAFE_LABELS], SAFE_LABELS, 2)
    labels[3] = -100 if "ignore_index" in options else labels[3]
    np_opts = dict(options)
    if np_opts.get("weight") == "zeros":
        np_opts["weight"] = w
    if np_opts.get("where") == "mask":
        np_opts["where"] = mask
    t_opts = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in np_opts.items()}
    ref_loss, ref_g = cross_entropy_with_grad(x, labels, **np_opts)
    xt = torch.tensor(x, requires_grad=True)
    loss = cross_entropy(xt, torch.tensor(labels), **t_opts)
    fn = loss.grad_fn if loss.ndim == 0 else loss.grad_fn.next_functions[0][0]  # past the view
    assert "CrossEntropyFunction" in type(fn).__name__
    (g,) = torch.autograd.grad(loss.sum(), xt)
    np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g.numpy(), ref_g, rtol=1e-12, atol=1e-15)
    if options.get("weight") == "zeros":  # 0·(−inf) = 0: the weight-0 class adds nothing
        assert np.isfinite(ref_loss).all()
    else:  # smoothing puts mass on a class of probability 0: −log 0
        assert np.isinf(ref_loss).any()


def test_adapter_forward_is_exact_for_ties_and_confident_rows():
    x = torch.tensor([[3.0, 3.0, 3.0], [40.0, 0.0, -3.0], [1.0, 5.0, 5.0]], dtype=torch.float64,
                     requires_grad=True)
    out = cross_entropy(x, torch.tensor([0, 0, 2]), reduction="none")
    expected = [np.log(3.0), np.log1p(np.exp(-40.0) + np.exp(-43.0)),
                np.log1p(1.0 + np.exp(-4.0))]
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=4e-16)


@pytest.mark.parametrize("options", [{}, dict(label_smoothing=0.1, temperature=2.0, where="mask"),
                                     dict(softcap=3.0, logit_l2=0.1, reduction="none")])
def test_adapter_never_writes_into_the_inputs(options):
    mask = torch.tensor(RNG.random((N, K)) < 0.9)
    mask[:, 0] = True
    options = {k: (mask if v == "mask" else v) for k, v in options.items()}
    for target in (torch.tensor(PROBS), torch.tensor(SAFE_LABELS * 0)):
        x = torch.tensor(X, requires_grad=True)
        x_before, t_before = x.detach().clone(), target.clone()
        if target.is_floating_point():
            target.requires_grad_(True)
            target_rows = torch.where(mask, target, 0.0) if "where" in options else target
            target_rows = (target_rows / target_rows.sum(-1, keepdim=True)).detach()
            target_rows.requires_grad_(True)
            t_before = target_rows.detach().clone()
            target = target_rows
        loss = cross_entropy(x, target, **options)
        loss.sum().backward()
        assert torch.equal(x.detach(), x_before)
        assert torch.equal(target.detach(), t_before)
