"""KL divergence, distillation, and the contrastive losses: closed forms and PyTorch references."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from conftest import asarray, assert_close, is_type_of, maybe_jit
from logitkit import LogitkitValueError, entropy, softmax
from logitkit.losses import (
    clip_loss,
    cross_entropy,
    distillation_loss,
    info_nce,
    kl_divergence,
    ntxent,
)

torch.set_num_threads(1)
RNG = np.random.default_rng(3)
N, K = 5, 6
S = RNG.normal(size=(N, K)) * 2
T_LOGITS = RNG.normal(size=(N, K)) * 2


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _xlogy(a, b):
    return np.where(a > 0, a * np.log(np.where(a > 0, b, 1.0)), 0.0)


# --------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------


def test_kl_is_cross_entropy_minus_entropy(xp):
    q = RNG.dirichlet(np.ones(K), N)
    q[0] = np.eye(K)[2]  # zeros in the target: 0·log 0 = 0
    f = maybe_jit(lambda a, b: kl_divergence(a, b, reduction="none"), xp)
    kl = f(asarray(xp, q), asarray(xp, S))
    assert is_type_of(kl, xp)
    h_qp = -(q * _log_softmax(S)).sum(axis=1)
    h_q = -_xlogy(q, q).sum(axis=1)
    assert_close(kl, h_qp - h_q, rtol=1e-12, atol=1e-15)
    g = maybe_jit(lambda a, b: kl_divergence(a, b, log_target=True), xp)
    with np.errstate(divide="ignore"):
        log_q = np.log(q)
    assert_close(g(asarray(xp, log_q), asarray(xp, S)), (h_qp - h_q).mean(), rtol=1e-12)


@given(
    x=hnp.arrays(np.float64, (3, 4), elements=st.floats(-20, 20)),
    y=hnp.arrays(np.float64, (3, 4), elements=st.floats(-20, 20)),
)
def test_kl_invariants(x, y):
    q = softmax(y)
    kl = kl_divergence(q, x, reduction="none")
    assert (kl >= -1e-12).all()  # Gibbs' inequality
    np.testing.assert_allclose(kl, cross_entropy(x, q, reduction="none") - entropy(y),
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(kl_divergence(q, y, reduction="none"), 0.0, atol=1e-10)


def test_kl_is_zero_at_the_model_distribution():
    p = np.exp(_log_softmax(S))
    np.testing.assert_allclose(kl_divergence(p, S, reduction="none"), 0.0, atol=1e-14)


def test_kl_matches_torch_kl_div_batchmean():
    q = torch.softmax(torch.tensor(T_LOGITS), dim=-1)
    x = torch.tensor(S, requires_grad=True)
    ref = F.kl_div(F.log_softmax(x, dim=-1), q, reduction="batchmean")
    (ref_g,) = torch.autograd.grad(ref, x)
    ours = kl_divergence(q, x, reduction="mean")
    (g,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-15)
    qg = q.clone().requires_grad_(True)
    (ref_gq,) = torch.autograd.grad(F.kl_div(F.log_softmax(x, -1), qg, reduction="batchmean"), qg)
    (gq,) = torch.autograd.grad(kl_divergence(qg, x), qg)
    torch.testing.assert_close(gq, ref_gq, rtol=1e-12, atol=1e-15)
    ref_sum = F.kl_div(F.log_softmax(x, dim=-1), q, reduction="sum")
    torch.testing.assert_close(kl_divergence(q, x, reduction="sum"), ref_sum, rtol=1e-13, atol=0)


def test_kl_with_mask_and_temperature():
    where = np.ones((N, K), dtype=bool)
    where[1, :3] = False
    where[4] = False  # fully masked: 0, and out of the mean
    q = RNG.dirichlet(np.ones(K), N) * where
    q[4] = 1.0 / K
    q[:4] /= q[:4].sum(axis=1, keepdims=True)
    out = kl_divergence(q, S, where=where, temperature=2.0, reduction="none")
    z = np.where(where, S / 2.0, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = (_xlogy(q, q) - np.where(q > 0, q * np.where(where, logp, 0.0), 0.0)).sum(axis=1)
    expected[4] = 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
    mean = kl_divergence(q, S, where=where, temperature=2.0)
    assert mean == pytest.approx(expected[:4].mean(), rel=1e-12)


def test_kl_bad_input():
    with pytest.raises(LogitkitValueError, match="shape"):
        kl_divergence(np.full((2, 3), 1 / 3), np.zeros((2, 4)))
    with pytest.raises(LogitkitValueError, match="sum to 1"):
        kl_divergence(np.full((2, 3), 0.5), np.zeros((2, 3)))
    with pytest.raises(LogitkitValueError, match="reduction"):
        kl_divergence(np.full((2, 3), 1 / 3), np.zeros((2, 3)), reduction="batchmean")


# --------------------------------------------------------------------------------------------
# distillation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_forward_distillation_matches_hinton_with_t_squared(temperature):
    s = torch.tensor(S, requires_grad=True)
    t = torch.tensor(T_LOGITS, requires_grad=True)
    ref = temperature**2 * F.kl_div(F.log_softmax(s / temperature, dim=-1),
                                    F.softmax(t / temperature, dim=-1), reduction="batchmean")
    ours = distillation_loss(s, t, temperature=temperature)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-12, atol=1e-15)
    gs, gt = torch.autograd.grad(ours, (s, t), allow_unused=True)
    # closed form of the T² scaling: ∂/∂s = T (softmax(s/T) − softmax(t/T)) / N
    expected = temperature * (torch.softmax(s / temperature, -1) - torch.softmax(
        t / temperature, -1)) / N
    torch.testing.assert_close(gs, expected.detach(), rtol=1e-11, atol=1e-14)
    assert gt is None or torch.count_nonzero(gt) == 0  # the teacher is a constant


def test_reverse_and_jensen_shannon_closed_forms(xp):
    temp = 2.0
    ls, lt = _log_softmax(S / temp), _log_softmax(T_LOGITS / temp)
    ps, pt = np.exp(ls), np.exp(lt)
    reverse = temp**2 * (ps * (ls - lt)).sum(axis=1)
    m = 0.5 * (ps + pt)
    jsd = temp**2 * 0.5 * ((pt * (lt - np.log(m))).sum(axis=1) + (ps * (ls - np.log(m))).sum(1))
    for divergence, expected in (("reverse", reverse), ("jsd", jsd)):
        f = maybe_jit(lambda a, b, d=divergence: distillation_loss(
            a, b, temperature=temp, divergence=d, reduction="none"), xp)
        assert_close(f(asarray(xp, S), asarray(xp, T_LOGITS)), expected, rtol=1e-11, atol=1e-14)
    assert (jsd <= temp**2 * math.log(2)).all()


def test_jsd_and_reverse_gradients_are_finite_with_zero_probabilities():
    s = torch.tensor([[0.0, 1.0, -torch.inf]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[-torch.inf, 1.0, 0.0]], dtype=torch.float64)
    jsd = distillation_loss(s, t, divergence="jsd")
    (g,) = torch.autograd.grad(jsd, s)
    assert torch.isfinite(g).all() and g[0, 2] == 0
    assert 0 < jsd.item() < math.log(2)
    # the student puts mass where the teacher has none: the reverse KL is infinite
    assert distillation_loss(s, t, divergence="reverse").item() == math.inf
    # both zero on the same class: finite, and so is the gradient
    t_same = torch.tensor([[0.5, 1.0, -torch.inf]], dtype=torch.float64)
    rev = distillation_loss(s, t_same, divergence="reverse")
    (g,) = torch.autograd.grad(rev, s)
    assert math.isfinite(rev.item()) and torch.isfinite(g).all() and g[0, 2] == 0


def test_labels_alpha_and_ignore_index():
    labels = RNG.integers(0, K, N)
    labels[2] = -100
    alpha, temp = 0.7, 3.0
    ours = distillation_loss(S, T_LOGITS, temperature=temp, labels=labels, alpha=alpha,
                             ignore_index=-100, reduction="none")
    soft = temp**2 * kl_divergence(np.exp(_log_softmax(T_LOGITS / temp)), S, temperature=temp,
                                   reduction="none")
    hard = cross_entropy(S, labels, ignore_index=-100, reduction="none")
    expected = alpha * soft + (1 - alpha) * hard
    expected[2] = 0.0
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    mean = distillation_loss(S, T_LOGITS, temperature=temp, labels=labels, alpha=alpha,
                             ignore_index=-100)
    assert mean == pytest.approx(expected[[0, 1, 3, 4]].mean(), rel=1e-12)
    total = distillation_loss(S, T_LOGITS, temperature=temp, labels=labels, alpha=alpha,
                              ignore_index=-100, reduction="sum")
    assert total == pytest.approx(expected.sum(), rel=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(ignore_index=-100), "ignore_index"),
    (dict(divergence="kl"), "divergence"),
    (dict(alpha=1.5, labels=np.zeros(N, dtype=int)), "alpha"),
    (dict(temperature=0.0), "temperature"),
    (dict(reduction="batchmean"), "reduction"),
])
def test_distillation_bad_input(kwargs, match):
    with pytest.raises(LogitkitValueError, match=match):
        distillation_loss(S, T_LOGITS, **kwargs)
    with pytest.raises(LogitkitValueError, match="teacher_logits"):
        distillation_loss(S, T_LOGITS[:, :3])


# --------------------------------------------------------------------------------------------
# contrastive
# --------------------------------------------------------------------------------------------


def test_info_nce_is_cross_entropy_over_cosine_similarities():
    q = torch.tensor(RNG.normal(size=(4, 3)), requires_grad=True)
    k = torch.tensor(RNG.normal(size=(6, 3)), requires_grad=True)
    positive = torch.tensor([5, 0, 2, 2])
    for kw, pos in ((dict(), torch.arange(4)), (dict(positive=positive), positive)):
        ref = F.cross_entropy(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T / 0.1, pos)
        ours = info_nce(q, k, **kw)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
        for a, b in zip(torch.autograd.grad(ours, (q, k)), torch.autograd.grad(ref, (q, k)),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)
    raw = info_nce(q, k, normalize=False, temperature=2.0, reduction="none")
    torch.testing.assert_close(raw, F.cross_entropy(q @ k.T / 2.0, torch.arange(4),
                                                    reduction="none"))


def test_info_nce_bad_input():
    with pytest.raises(LogitkitValueError, match="keys"):
        info_nce(np.ones((4, 3)), np.ones((3, 3)))
    with pytest.raises(LogitkitValueError, match="features"):
        info_nce(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(LogitkitValueError, match="temperature"):
        info_nce(np.ones((4, 3)), np.ones((4, 3)), temperature=-1.0)


def _clip_reference(img, txt, logit_scale):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    scale = logit_scale.clamp(max=math.log(100)).exp()
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), 5.0])
def test_clip_loss_matches_the_clip_formula(log_scale):
    img = torch.tensor(RNG.normal(size=(5, 4)), requires_grad=True)
    txt = torch.tensor(RNG.normal(size=(5, 4)), requires_grad=True)
    ls = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    ours = clip_loss(img, txt, logit_scale=ls)
    ref = _clip_reference(img, txt, ls)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(ours, (img, txt, ls)),
                    torch.autograd.grad(ref, (img, txt, ls)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)
    if log_scale > math.log(100):  # clamped: no gradient to the scale
        (g,) = torch.autograd.grad(clip_loss(img, txt, logit_scale=ls), ls)
        assert g.item() == 0.0
    assert float(clip_loss(img.detach().numpy(), txt.detach().numpy(),
                           logit_scale=log_scale)) == pytest.approx(ref.item(), rel=1e-12)


def _ntxent_loop(e, labels, temp):
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = u @ u.T / temp
    losses = []
    for a in range(len(e)):
        negs = [s[a, n] for n in range(len(e)) if labels[n] != labels[a]]
        for p in range(len(e)):
            if p != a and labels[p] == labels[a]:
                losses.append(-s[a, p] + np.log(np.exp(s[a, p]) + np.sum(np.exp(negs))))
    return np.mean(losses) if losses else 0.0


def test_ntxent_closed_form_and_edge_cases(xp):
    e = RNG.normal(size=(7, 3))
    labels = np.array([0, 0, 1, 1, 1, 2, 3])  # groups of 2 and 3, and singletons
    f = maybe_jit(lambda a, b: ntxent(a, b, temperature=0.3), xp)
    assert_close(f(asarray(xp, e), asarray(xp, labels)), _ntxent_loop(e, labels, 0.3),
                 rtol=1e-12)
    no_pairs = f(asarray(xp, e[:3]), asarray(xp, np.array([0, 1, 2])))
    assert_close(no_pairs, 0.0)
    one_group = f(asarray(xp, e[:3]), asarray(xp, np.array([4, 4, 4])))  # no negatives
    assert_close(one_group, 0.0)


def test_ntxent_gradient_is_finite_without_negatives():
    e = torch.tensor(RNG.normal(size=(3, 2)), requires_grad=True)
    (g,) = torch.autograd.grad(ntxent(e, torch.tensor([1, 1, 1])), e)
    assert torch.isfinite(g).all()
    with pytest.raises(LogitkitValueError, match="labels"):
        ntxent(np.ones((3, 2)), np.ones(3))
