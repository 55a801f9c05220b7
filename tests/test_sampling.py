"""Sampling: the filters against Hugging Face's rules, and empirical frequencies against the exact
filtered distribution.

The statistical tests are deterministic (fixed seeds).  Each frequency must lie within 5 binomial
standard errors of its exact probability, ``5·sqrt(p(1−p)/N)``, and a token of probability 0 must
never be drawn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import logitkit.sampling as sampling
from conftest import asarray, assert_close, is_type_of, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit._namespace import namespace
from logitkit.sampling import filter_logits, gumbel_max, gumbel_softmax, gumbel_top_k, sample

K = 10
CONFIGS = [
    {},
    {"temperature": 0.5},
    {"temperature": 2.0},
    {"top_k": 3},
    {"top_p": 0.6},
    {"min_p": 0.2},
    {"temperature": 0.7, "top_k": 5, "top_p": 0.8},
    {"top_k": 4, "min_p": 0.3},
    {"top_p": 0.9, "min_p": 0.1},
    {"temperature": 1.5, "top_k": 6, "top_p": 0.7, "min_p": 0.05},
]


def _logits(seed=0, rows=3):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=1.5, size=(rows, K))


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(z - m)
    return e / e.sum(axis=-1, keepdims=True)


def _hf_reference(z, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Hugging Face's warpers, one row at a time, written from their definitions."""
    out = []
    for row in np.atleast_2d(z):
        row = row / temperature
        if top_k is not None:
            kth = np.sort(row)[-min(top_k, row.size)]
            row = np.where(row < kth, -np.inf, row)
        if top_p is not None:
            order = np.argsort(row, kind="stable")  # ascending, as TopPLogitsWarper
            cum = np.cumsum(_softmax(row[order]))
            remove_sorted = cum <= 1 - top_p
            remove_sorted[-1] = False  # min_tokens_to_keep = 1
            remove = np.empty_like(remove_sorted)
            remove[order] = remove_sorted
            row = np.where(remove, -np.inf, row)
        if min_p is not None:
            probs = _softmax(row)
            remove = probs < min_p * probs.max()
            remove[np.argmax(row)] = False
            row = np.where(remove, -np.inf, row)
        out.append(row)
    return np.asarray(out)


def assert_frequencies(samples, probs, sigmas=5.0):
    """Each row of ``samples`` (R, N) against the exact distribution ``probs`` (R, K)."""
    samples = to_numpy(samples)
    probs = np.asarray(probs)
    n = samples.shape[-1]
    for row_samples, p in zip(samples.reshape(-1, n), probs.reshape(-1, probs.shape[-1]),
                              strict=True):
        counts = np.bincount(row_samples, minlength=p.size)
        assert counts.size == p.size, "an index out of range was drawn"
        assert counts[p == 0].sum() == 0, f"drew a token of probability 0: {counts}, {p}"
        se = np.sqrt(p * (1 - p) / n)
        freq = counts / n
        bad = np.abs(freq - p) > sigmas * se + 1e-12
        assert not bad.any(), f"frequencies {freq[bad]} vs probabilities {p[bad]} (N={n})"


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_filter_logits_follows_hugging_face(config):
    z = _logits(seed=1, rows=20)
    got = filter_logits(z, **config)
    want = _hf_reference(z, **config)
    assert_close(got, want, rtol=1e-14)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_sample_frequencies_match_the_filtered_distribution(config):
    z = _logits(seed=2)
    exact = _softmax(_hf_reference(z, **config))
    assert_close(_softmax(filter_logits(z, **config)), exact, rtol=1e-12, atol=1e-15)
    draws = sample(z, num_samples=40_000, rng=np.random.default_rng(3), **config)
    assert draws.shape == (3, 40_000)
    assert_frequencies(draws, exact)


@pytest.mark.parametrize("config", [{"temperature": 0.7, "top_k": 5, "top_p": 0.8},
                                    {"top_p": 0.9, "min_p": 0.1}], ids=str)
def test_sample_frequencies_on_every_backend(xp, config):
    import jax

    z = _logits(seed=4)
    rng = {"torch": torch.Generator().manual_seed(5), "jax.numpy": jax.random.key(5)}.get(
        xp.__name__, 5)

    def run(logits, key):
        return (sample(logits, num_samples=20_000, rng=key, **config),
                filter_logits(logits, **config))

    if xp.__name__ == "jax.numpy":
        run = jax.jit(run)
    draws, filtered = run(asarray(xp, z), rng)
    assert is_type_of(draws, xp) and is_type_of(filtered, xp)
    exact = _softmax(_hf_reference(z, **config))
    assert_close(_softmax(to_numpy(filtered)), exact, rtol=1e-12, atol=1e-15)
    assert_frequencies(draws, exact)


def test_all_minus_inf_but_one_always_gives_that_token():
    z = np.array([-np.inf, -np.inf, 3.0, -np.inf])
    for config in CONFIGS:
        assert np.isfinite(filter_logits(z, **config)).tolist() == [False, False, True, False]
        assert (sample(z, num_samples=500, rng=0, **config) == 2).all()
    assert (gumbel_max(np.broadcast_to(z, (500, 4)), rng=1) == 2).all()


def test_top_k_keeps_ties_at_the_kth_value():
    z = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
    kept = np.isfinite(filter_logits(z, top_k=2))
    assert kept.tolist() == [False, True, True, True, False]
    assert_frequencies(sample(z, top_k=2, num_samples=30_000, rng=6)[None],
                       [[0, 1 / 3, 1 / 3, 1 / 3, 0]])
    assert np.isfinite(filter_logits(z, top_k=1)).tolist() == [False, True, True, True, False]
    assert np.isfinite(filter_logits(z, top_k=50)).all()  # k ≥ K keeps everything


def test_top_p_one_keeps_everything_even_negligible_tokens():
    z = np.array([0.0, -800.0, 1.0, -np.inf])
    assert_close(filter_logits(z, top_p=1.0), z)
    assert np.isfinite(filter_logits(z, top_p=1 - 1e-9)).tolist() == [True, False, True, False]


def test_top_p_keeps_at_least_one_token_and_ties_at_the_boundary():
    z = _logits(seed=7, rows=5)
    kept = np.isfinite(filter_logits(z, top_p=1e-9))
    assert (kept.sum(axis=-1) == 1).all()
    assert (np.argmax(kept, axis=-1) == np.argmax(z, axis=-1)).all()
    # probabilities .535, .197, .197, .072: the mass reaches 0.6 with the first tie, both stay
    assert np.isfinite(filter_logits(np.array([2.0, 1.0, 1.0, 0.0]), top_p=0.6)).tolist() == [
        True, True, True, False]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    z = np.log(probs)
    for p, want in [(0.49, [1]), (0.51, [1, 3]), (0.79, [1, 3]), (0.81, [1, 2, 3]),
                    (0.96, [0, 1, 2, 3])]:
        assert np.flatnonzero(np.isfinite(filter_logits(z, top_p=p))).tolist() == want, p


def test_min_p_one_keeps_only_the_most_probable_with_ties():
    z = np.array([1.0, 3.0, 3.0, 2.0])
    assert np.isfinite(filter_logits(z, min_p=1.0)).tolist() == [False, True, True, False]
    assert_frequencies(sample(z, min_p=1.0, num_samples=20_000, rng=8)[None],
                       [[0, 0.5, 0.5, 0]])
    assert_close(filter_logits(z, min_p=0.0), z)


def test_min_p_is_relative_to_the_most_probable_token():
    z = np.log(np.array([0.4, 0.2, 0.19, 0.21]))
    assert np.isfinite(filter_logits(z, min_p=0.5)).tolist() == [True, True, False, True]


def test_temperature_zero_is_argmax_without_randomness():
    z = np.array([[0.0, 2.0, 2.0, 1.0], [5.0, -1.0, 0.0, 5.0]])
    draws = sample(z, temperature=0.0, num_samples=4, rng=np.random.default_rng(0))
    assert draws.tolist() == [[1] * 4, [0] * 4]
    assert np.isfinite(filter_logits(z, temperature=0.0)).tolist() == [
        [False, True, False, False], [True, False, False, False]]
    t = sample(torch.tensor(z), temperature=0.0)
    assert t.tolist() == [[1], [0]]


def test_temperature_scales_the_logits():
    z = _logits(seed=9)
    assert_close(filter_logits(z, temperature=0.25), z / 0.25)


def test_same_seed_same_draws_on_every_rng_kind():
    import jax

    z = _logits(seed=10)
    assert (sample(z, num_samples=50, rng=3) == sample(z, num_samples=50, rng=3)).all()
    assert not (sample(z, num_samples=50, rng=3) == sample(z, num_samples=50, rng=4)).all()
    tz = torch.tensor(z)
    a = sample(tz, num_samples=50, rng=torch.Generator().manual_seed(1))
    b = sample(tz, num_samples=50, rng=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(sample(tz, num_samples=50, rng=1), a)
    jz = jax.numpy.asarray(z)
    assert (sample(jz, num_samples=50, rng=jax.random.key(2)) == sample(
        jz, num_samples=50, rng=2)).all()


# --------------------------------------------------------------------------------------------
# Gumbel family
# --------------------------------------------------------------------------------------------


def test_gumbel_max_frequencies_match_softmax(xp):
    import jax

    z = np.array([1.0, -0.5, 0.3, -np.inf, 2.0])
    rows = np.broadcast_to(z, (30_000, 5))
    rng = {"torch": torch.Generator().manual_seed(11), "jax.numpy": jax.random.key(11)}.get(
        xp.__name__, 11)
    draws = gumbel_max(asarray(xp, rows), rng=rng)
    assert is_type_of(draws, xp)
    assert_frequencies(to_numpy(draws)[None], _softmax(z)[None])


def test_gumbel_top_k_samples_without_replacement():
    z = np.array([0.5, -1.0, 1.0, 0.0])
    p = _softmax(z)
    n = 40_000
    draws = gumbel_top_k(np.broadcast_to(z, (n, 4)), 2, rng=12)
    assert draws.shape == (n, 2)
    assert (draws[:, 0] != draws[:, 1]).all()
    pairs = draws[:, 0] * 4 + draws[:, 1]
    exact = np.array([p[i] * p[j] / (1 - p[i]) if i != j else 0.0
                      for i in range(4) for j in range(4)])
    assert_frequencies(pairs[None], exact[None])
    full = gumbel_top_k(z, 4, rng=13)
    assert sorted(full.tolist()) == [0, 1, 2, 3]


def test_gumbel_top_k_torch_and_jax():
    import jax

    z = _logits(seed=14)
    t = gumbel_top_k(torch.tensor(z), 3, rng=torch.Generator().manual_seed(0))
    j = gumbel_top_k(jax.numpy.asarray(z), 3, rng=jax.random.key(0))
    for out in (t, j):
        a = to_numpy(out)
        assert a.shape == (3, 3)
        assert all(len(set(r)) == 3 for r in a.tolist())


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dim", [-1, 0])
def test_gumbel_softmax_matches_torch_with_the_same_seed(hard, dim):
    z = torch.tensor(_logits(seed=15), requires_grad=True)
    w = torch.tensor(np.random.default_rng(16).normal(size=z.shape))
    torch.manual_seed(17)
    want = F.gumbel_softmax(z, tau=0.7, hard=hard, dim=dim)
    (gw,) = torch.autograd.grad((want * w).sum(), z)
    got = gumbel_softmax(z, tau=0.7, hard=hard, axis=dim,
                         generator=torch.Generator().manual_seed(17))
    (gg,) = torch.autograd.grad((got * w).sum(), z)
    assert_close(got, want.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert_close(gg, gw.numpy(), rtol=1e-10, atol=1e-14)


def test_hard_gumbel_softmax_is_one_hot_with_the_soft_gradient():
    z = torch.tensor(_logits(seed=18), requires_grad=True)
    w = torch.tensor(np.random.default_rng(19).normal(size=z.shape))
    hard = gumbel_softmax(z, tau=0.5, hard=True, generator=20)
    soft = gumbel_softmax(z, tau=0.5, generator=20)
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))
    (gh,) = torch.autograd.grad((hard * w).sum(), z)
    (gs,) = torch.autograd.grad((soft * w).sum(), z)
    assert_close(gh, gs.numpy(), rtol=1e-12)


def test_hard_gumbel_softmax_frequencies_match_softmax():
    z = np.array([0.2, 1.0, -0.7])
    y = gumbel_softmax(np.broadcast_to(z, (30_000, 3)), tau=0.3, hard=True, generator=21)
    assert_frequencies(np.argmax(y, axis=-1)[None], _softmax(z)[None])


def test_gumbel_softmax_on_every_backend(xp):
    import jax

    z = _logits(seed=22)
    gen = {"torch": torch.Generator().manual_seed(1), "jax.numpy": jax.random.key(1)}.get(
        xp.__name__, 1)
    y = gumbel_softmax(asarray(xp, z), tau=2.0, hard=False, generator=gen)
    assert is_type_of(y, xp)
    assert_close(np.sum(to_numpy(y), axis=-1), np.ones(3), rtol=1e-14)


@pytest.mark.parametrize("draw", [0.0, math.inf])
def test_gumbel_softmax_has_no_nan_when_the_uniform_draw_is_0_or_1(monkeypatch, draw):
    # E = -log U: U = 1 gives E = 0 (noise +inf), U = 0 gives E = inf (noise -inf).
    def extreme(shape, rng, like, xp, arg):
        return xp.full(shape, draw, dtype=like.dtype)

    monkeypatch.setattr(sampling, "_exponential", extreme)
    z = torch.tensor(_logits(seed=23), requires_grad=True)
    for hard in (False, True):
        y = gumbel_softmax(z, tau=0.1, hard=hard, generator=0)
        (g,) = torch.autograd.grad((y * torch.arange(K)).sum(), z)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
        assert_close(y.sum(-1), np.ones(3), rtol=1e-12)
    like = np.zeros(4)
    assert np.isfinite(sampling._gumbel((4,), 0, like, namespace(like), "rng")).all()
    assert (gumbel_max(np.array([0.0, 1.0, -np.inf])) != 2).all()


def test_torch_sampling_does_not_need_a_generator():
    out = sample(torch.tensor(_logits(seed=24)), num_samples=5)
    assert out.shape == (3, 5) and out.dtype == torch.int64


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "arg"),
    [
        ({"temperature": -1.0}, LogitkitValueError, "temperature"),
        ({"temperature": math.inf}, LogitkitValueError, "temperature"),
        ({"top_k": 0}, LogitkitValueError, "top_k"),
        ({"top_k": 1.5}, LogitkitTypeError, "top_k"),
        ({"top_p": 0.0}, LogitkitValueError, "top_p"),
        ({"top_p": 1.5}, LogitkitValueError, "top_p"),
        ({"top_p": -0.1}, LogitkitValueError, "top_p"),
        ({"min_p": -0.1}, LogitkitValueError, "min_p"),
        ({"min_p": 1.1}, LogitkitValueError, "min_p"),
        ({"num_samples": 0}, LogitkitValueError, "num_samples"),
        ({"rng": "seed"}, LogitkitTypeError, "rng"),
    ],
)
def test_bad_sampling_arguments_raise_one_clear_error(kwargs, exc, arg):
    with pytest.raises(exc, match=f"Expected `{arg}`"):
        sample(_logits(), **kwargs)
    if arg not in ("num_samples", "rng"):
        with pytest.raises(exc, match=f"Expected `{arg}`"):
            filter_logits(_logits(), **kwargs)


@pytest.mark.parametrize("tau", [0.0, -1.0, math.inf, math.nan])
def test_gumbel_softmax_rejects_non_positive_tau(tau):
    with pytest.raises(LogitkitValueError, match="Expected `tau`"):
        gumbel_softmax(_logits(), tau=tau)


def test_other_bad_gumbel_arguments():
    with pytest.raises(LogitkitValueError, match="Expected `k`"):
        gumbel_top_k(_logits(), K + 1)
    with pytest.raises(LogitkitValueError, match="Expected `k`"):
        gumbel_top_k(_logits(), 0)
    with pytest.raises(LogitkitTypeError, match="Expected `generator`"):
        gumbel_softmax(torch.zeros(3), tau=1.0, generator=np.random.default_rng(0))
    with pytest.raises(LogitkitTypeError, match="Expected `rng`"):
        gumbel_max(np.zeros(3), rng=torch.Generator())
    with pytest.raises(LogitkitTypeError, match="Expected `hard`"):
        gumbel_softmax(np.zeros(3), tau=1.0, hard=1)
    with pytest.raises(LogitkitValueError, match="Expected `axis`"):
        gumbel_softmax(np.zeros(3), tau=1.0, axis=1)
    with pytest.raises(LogitkitValueError, match="Expected `logits`"):
        sample(np.float64(1.0))


def test_sample_under_jax_jit_with_a_traced_key():
    import jax

    z = _logits(seed=25)

    @jax.jit
    def draw(logits, key):
        return sample(logits, top_k=3, top_p=0.9, num_samples=20_000, rng=key)

    draws = draw(jax.numpy.asarray(z), jax.random.key(26))
    assert_frequencies(draws, _softmax(_hf_reference(z, top_k=3, top_p=0.9)))


def test_jax_requires_a_key():
    import jax.numpy as jnp

    with pytest.raises(LogitkitTypeError, match="Expected `rng` to be a JAX PRNG key"):
        sample(jnp.zeros(3))
