"""Boltzmann policies, soft values and the policy-gradient score: identities, torch.distributions,
and autodiff."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import asarray, assert_close, grad, is_type_of, maybe_jit, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit.rl import BoltzmannPolicy, policy_gradient_score, soft_value

A = 6


def _q(seed=0, rows=4):
    return np.random.default_rng(seed).normal(scale=2.0, size=(rows, A))


def _mask(rows=4):
    m = np.ones((rows, A), dtype=bool)
    m[0, :3] = False
    m[1, -1] = False
    m[2, 1::2] = False
    return m


def _categorical(q, temperature, mask=None):
    z = torch.tensor(q) / temperature
    if mask is not None:
        z = z.masked_fill(~torch.tensor(mask), -math.inf)
    return torch.distributions.Categorical(logits=z)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_torch_categorical(temperature, masked):
    q, actions = _q(), np.array([3, 4, 5, 0])
    mask = _mask() if masked else None
    pi = BoltzmannPolicy(temperature)
    ref = _categorical(q, temperature, mask)
    assert_close(pi.probs(q, mask), ref.probs.numpy(), rtol=1e-13, atol=1e-300)
    assert_close(pi.log_prob(q, actions, mask), ref.log_prob(torch.tensor(actions)).numpy(),
                 rtol=1e-13)
    assert_close(pi.entropy(q, mask), ref.entropy().numpy(), rtol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_kl_matches_torch_and_cross_entropy_identity(masked):
    q1, q2 = _q(1), _q(2)
    mask = _mask() if masked else None
    pi = BoltzmannPolicy(0.7)
    kl = pi.kl(q1, q2, mask)
    ref = torch.distributions.kl_divergence(_categorical(q1, 0.7, mask), _categorical(q2, 0.7, mask))
    assert_close(kl, ref.numpy(), rtol=1e-12, atol=1e-15)
    # KL(π₁‖π₂) = H(π₁, π₂) − H(π₁)
    p1 = pi.probs(q1, mask)
    lp2 = np.log(np.where(p1 > 0, pi.probs(q2, mask), 1.0))
    cross = -(p1 * lp2).sum(-1)
    assert_close(kl, cross - pi.entropy(q1, mask), rtol=1e-11, atol=1e-14)
    assert (kl >= 0).all()
    assert_close(pi.kl(q1, q1, mask), np.zeros(4), atol=1e-15)


def test_kl_is_infinite_when_the_second_policy_excludes_an_action():
    pi = BoltzmannPolicy(1.0)
    q1 = np.array([0.0, 1.0])
    assert pi.kl(q1, np.array([0.0, -np.inf])) == np.inf
    assert pi.kl(np.array([0.0, -np.inf]), q1) == pytest.approx(math.log(1 + math.e))


@given(arrays(np.float64, (3, A), elements=st.floats(-30, 30)),
       st.floats(0.05, 20.0))
def test_probabilities_entropy_and_log_prob_agree(q, temperature):
    pi = BoltzmannPolicy(temperature)
    p = pi.probs(q)
    assert_close(p.sum(-1), np.ones(3), rtol=1e-13)
    all_actions = np.broadcast_to(np.arange(A), (3, A)).T
    lp = np.stack([pi.log_prob(q, a) for a in all_actions], axis=-1)
    assert_close(np.exp(lp), p, rtol=1e-12, atol=1e-300)
    h = -(p * np.where(p > 0, lp, 0.0)).sum(-1)
    assert_close(pi.entropy(q), h, rtol=1e-10, atol=1e-12)
    assert (pi.entropy(q) <= math.log(A) + 1e-12).all()


def test_masked_actions_have_zero_probability_and_no_entropy_contribution(xp):
    q, mask = _q(3), _mask()
    pi = BoltzmannPolicy(1.0)
    p = to_numpy(pi.probs(asarray(xp, q), asarray(xp, mask)))
    assert (p[~mask] == 0).all()
    h = to_numpy(pi.entropy(asarray(xp, q), asarray(xp, mask)))
    # the entropy of the policy over the allowed actions alone
    for row in range(4):
        allowed = q[row][mask[row]]
        e = np.exp(allowed - allowed.max())
        r = e / e.sum()
        assert h[row] == pytest.approx(-(r * np.log(r)).sum(), rel=1e-12)
    lp = to_numpy(pi.log_prob(asarray(xp, q), asarray(xp, np.array([0, 5, 1, 2])),
                              asarray(xp, mask)))
    assert np.isneginf(lp[[0, 1, 2]]).all() and np.isfinite(lp[3])


def test_masked_actions_get_zero_gradient(ad_xp):
    q, mask = _q(4), _mask()
    pi = BoltzmannPolicy(0.5)
    m = asarray(ad_xp, mask)

    def loss(x):
        return ad_xp.sum(pi.entropy(x, m)) + ad_xp.sum(
            pi.log_prob(x, asarray(ad_xp, np.array([4, 0, 0, 3])), m))

    g = to_numpy(grad(loss, asarray(ad_xp, q), ad_xp))
    assert np.isfinite(g).all()
    assert (g[~mask] == 0).all()


def test_masked_actions_are_never_sampled():
    q, mask = _q(5), _mask()
    pi = BoltzmannPolicy(2.0)
    n = 30_000
    actions = pi.sample(np.broadcast_to(q, (n, 4, A)), np.broadcast_to(mask, (n, 4, A)), rng=6)
    assert actions.shape == (n, 4)
    assert mask[np.broadcast_to(np.arange(4), (n, 4)), actions].all()
    probs = pi.probs(q, mask)
    for row in range(4):
        counts = np.bincount(actions[:, row], minlength=A)
        se = np.sqrt(probs[row] * (1 - probs[row]) / n)
        assert (np.abs(counts / n - probs[row]) <= 5 * se + 1e-12).all()


def test_sample_on_every_backend(xp):
    import jax

    q, mask = _q(7), _mask()
    rng = {"torch": torch.Generator().manual_seed(1), "jax.numpy": jax.random.key(1)}.get(
        xp.__name__, 1)
    a = BoltzmannPolicy(1.0).sample(asarray(xp, q), asarray(xp, mask), rng=rng)
    assert is_type_of(a, xp)
    a = to_numpy(a)
    assert a.shape == (4,) and mask[np.arange(4), a].all()


def test_zero_and_infinite_temperature_limits():
    q = np.array([[1.0, 3.0, 3.0, 0.0]])
    greedy, uniform = BoltzmannPolicy(0.0), BoltzmannPolicy(math.inf)
    assert_close(greedy.probs(q), np.array([[0, 0.5, 0.5, 0]]))
    assert_close(greedy.entropy(q), np.array([math.log(2)]), rtol=1e-14)
    assert set(greedy.sample(np.broadcast_to(q, (200, 4)), rng=0).tolist()) == {1, 2}
    assert_close(uniform.probs(q), np.full((1, 4), 0.25))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 7.0])
def test_soft_value_matches_torch_and_its_gradient_is_the_policy(ad_xp, alpha):
    q, mask = _q(8), _mask()
    want = alpha * torch.logsumexp(torch.tensor(q).masked_fill(~torch.tensor(mask), -math.inf)
                                   / alpha, dim=-1)
    m = asarray(ad_xp, mask)
    got = maybe_jit(lambda x: soft_value(x, alpha=alpha, where=m), ad_xp)(asarray(ad_xp, q))
    assert_close(got, want.numpy(), rtol=1e-13)
    g = grad(lambda x: ad_xp.sum(soft_value(x, alpha=alpha, where=m)), asarray(ad_xp, q), ad_xp)
    assert_close(g, BoltzmannPolicy(alpha).probs(q, mask), rtol=1e-12, atol=1e-300)


def test_soft_value_is_expected_value_plus_entropy_and_tends_to_max():
    q = _q(9)
    for alpha in (0.2, 1.0, 3.0):
        pi = BoltzmannPolicy(alpha)
        assert_close(soft_value(q, alpha=alpha), (pi.probs(q) * q).sum(-1) + alpha * pi.entropy(q),
                     rtol=1e-12)
    assert_close(soft_value(q, alpha=0.0), q.max(-1))
    assert_close(soft_value(q, alpha=1e-4), q.max(-1), rtol=1e-3)
    assert np.isneginf(soft_value(q, alpha=1.0, where=np.zeros(A, dtype=bool))).all()
    assert np.isneginf(soft_value(q, alpha=0.0, where=np.zeros(A, dtype=bool))).all()


@pytest.mark.parametrize("temperature", [1.0, 0.4])
@pytest.mark.parametrize("masked", [False, True])
def test_policy_gradient_score_is_the_gradient_of_log_pi(ad_xp, temperature, masked):
    q = _q(10)
    actions = np.array([3, 4, 4, 0])  # allowed under the mask
    mask = _mask() if masked else None
    pi = BoltzmannPolicy(temperature)
    m = None if mask is None else asarray(ad_xp, mask)
    a = asarray(ad_xp, actions)
    want = grad(lambda x: ad_xp.sum(pi.log_prob(x, a, m)), asarray(ad_xp, q), ad_xp)
    got = policy_gradient_score(asarray(ad_xp, q), a, temperature=temperature, where=m)
    assert is_type_of(got, ad_xp)
    assert_close(got, to_numpy(want), rtol=1e-12, atol=1e-15)
    assert_close(to_numpy(got).sum(-1), np.zeros(4), atol=1e-13)


def test_policy_gradient_score_is_onehot_minus_pi():
    q, actions = _q(11), np.array([0, 1, 2, 3])
    want = np.eye(A)[actions] - BoltzmannPolicy(1.0).probs(q)
    assert_close(policy_gradient_score(q, actions), want, rtol=1e-14, atol=1e-16)


def test_repr():
    assert repr(BoltzmannPolicy(0.5)) == "BoltzmannPolicy(temperature=0.5)"


def test_bad_arguments_raise_one_clear_error():
    pi = BoltzmannPolicy(1.0)
    q = _q()
    with pytest.raises(LogitkitValueError, match="Expected `temperature`"):
        BoltzmannPolicy(-1.0)
    with pytest.raises(LogitkitValueError, match="Expected `actions`"):
        pi.log_prob(q, np.array([0, 1, 2, A]))
    with pytest.raises(LogitkitValueError, match="Expected `actions`"):
        pi.log_prob(q, np.array([0, -1, 2, 3]))
    with pytest.raises(LogitkitTypeError, match="Expected `actions`"):
        pi.log_prob(q, np.array([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(LogitkitValueError, match="Expected `actions`"):
        pi.log_prob(q, np.array([0, 1]))
    with pytest.raises(LogitkitValueError, match="Expected `q2`"):
        pi.kl(q, q[:2])
    with pytest.raises(LogitkitTypeError, match="Expected `where`"):
        pi.probs(q, np.ones(A))
    with pytest.raises(LogitkitValueError, match="Expected `alpha`"):
        soft_value(q, alpha=-1.0)
    with pytest.raises(LogitkitValueError, match="Expected `temperature`"):
        policy_gradient_score(q, np.zeros(4, dtype=int), temperature=0.0)
    with pytest.raises(LogitkitValueError, match="Expected `q`"):
        pi.probs(np.float64(1.0))
