"""Sampling from logits: temperature, top-k, top-p, min-p, and the Gumbel family.

The filters follow Hugging Face ``transformers``' logits warpers, in their order: temperature →
top-k → top-p (nucleus) → min-p.  :func:`filter_logits` returns the filtered logits, so
``softmax(filter_logits(z, ...))`` is exactly the distribution :func:`sample` draws from.

Randomness always comes from an explicit source (``rng``): for NumPy (and other array-API
libraries) a ``numpy.random.Generator`` or an int seed; for PyTorch a ``torch.Generator`` (or an int
seed; ``None`` uses PyTorch's global generator); for JAX a PRNG key (``jax.random.key`` or
``PRNGKey``) or an int seed.  JAX has no global state, so ``rng`` is required there, and the same
key gives the same draw: split it between calls.  NumPy's ``None`` draws fresh OS entropy.

Gumbel noise is ``g = −log E`` with ``E`` standard exponential (``E = −log U``), clamped to the
positive finite floats, so a uniform draw of exactly 0 or 1 gives a large finite ``g`` rather than
``±inf`` (and no NaN in ``gumbel_softmax`` or its gradient).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import array_api_compat
import numpy as np

from ._core import softmax
from ._namespace import (
    Array,
    ArrayT,
    Described,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_int,
    check_number,
    compute_dtypes,
    expected,
    is_jax,
    is_numpy,
    is_torch,
    namespace,
    stop_gradient,
)

__all__ = ["filter_logits", "gumbel_max", "gumbel_softmax", "gumbel_top_k", "sample"]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_filters(
    temperature: object, top_k: object, top_p: object, min_p: object
) -> tuple[float, int | None, float | None, float | None]:
    t = check_number(temperature, "temperature", low=0.0, high=math.inf, high_open=True)
    k = None if top_k is None else check_int(top_k, "top_k")
    p = None if top_p is None else check_number(top_p, "top_p", low=0.0, low_open=True, high=1.0)
    mp = None if min_p is None else check_number(min_p, "min_p", low=0.0, high=1.0)
    return t, k, p, mp


def _logits(logits: Any, xp: Any) -> Array:
    z = as_array(logits, "logits", xp)
    if z.ndim < 1:
        raise LogitkitValueError(expected("logits", "an array of shape (..., K)",
                                          Described(f"shape {tuple(z.shape)}")))
    acc, _ = compute_dtypes(z, None, xp)
    return astype(z, acc, xp)


# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------


def _seed(rng: object) -> int | None:
    """``rng`` as an int seed, or None when it is not one (a bool is not a seed)."""
    return int(rng) if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) else None


def _numpy_generator(rng: object, arg: str) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if (seed := _seed(rng)) is not None:
        return np.random.default_rng(seed)
    raise LogitkitTypeError(expected(arg, "a numpy.random.Generator, an int seed or None", rng))


def _exponential(shape: tuple[int, ...], rng: object, like: Array, xp: Any, arg: str) -> Array:
    """Standard exponential draws of ``like``'s dtype and device, from the backend's generator."""
    dtype = like.dtype
    dev = array_api_compat.device(like)
    if is_torch(xp):
        import torch

        if (seed := _seed(rng)) is not None:
            rng = torch.Generator(device=dev).manual_seed(seed)
        if rng is not None and not isinstance(rng, torch.Generator):
            raise LogitkitTypeError(expected(arg, "a torch.Generator, an int seed or None", rng))
        return torch.empty(shape, dtype=dtype, device=dev).exponential_(generator=rng)
    if is_jax(xp):
        import jax

        if (seed := _seed(rng)) is not None:
            rng = jax.random.key(seed)
        if not isinstance(rng, jax.Array):
            raise LogitkitTypeError(
                expected(arg, "a JAX PRNG key (jax.random.key) or an int seed", rng))
        return jax.random.exponential(rng, shape, dtype=dtype)
    draws = _numpy_generator(rng, arg).standard_exponential(shape)
    if is_numpy(xp):
        return draws.astype(dtype, copy=False)
    return xp.asarray(draws, dtype=dtype, device=dev)


def _gumbel(shape: tuple[int, ...], rng: object, like: Array, xp: Any, arg: str) -> Array:
    """Standard Gumbel noise ``−log E``, finite even when ``E`` is 0 or inf."""
    e = _exponential(shape, rng, like, xp, arg)
    tiny = float(xp.finfo(e.dtype).smallest_normal)
    big = float(xp.finfo(e.dtype).max)
    e = xp.where(e < tiny, tiny, xp.where(e > big, big, e))
    e = xp.where(xp.isnan(e), 1.0, e)
    return -xp.log(e)


def _one_hot(index: Array, k: int, like: Array, xp: Any) -> Array:
    classes = xp.arange(k, device=array_api_compat.device(like))
    return xp.expand_dims(index, axis=-1) == classes


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------


def _top_k(z: Array, k: int, xp: Any) -> Array:
    n = z.shape[-1]
    if k >= n:
        return z
    kth = xp.sort(z, axis=-1)[..., n - k : n - k + 1]  # the k-th largest
    return xp.where(z < kth, -math.inf, z)


def _top_p(z: Array, p: float, xp: Any) -> Array:
    if p >= 1.0:
        return z
    probs = softmax(z, axis=-1)
    ordered = xp.flip(xp.sort(probs, axis=-1), axis=-1)  # (NumPy's sort has no `descending`)
    cum = xp.cumulative_sum(ordered, axis=-1)
    before = xp.concat([xp.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)
    # Keep a token while the mass of the tokens ranked before it is below p (the first always);
    # every token as probable as the last kept one is kept too (ties are not split by index).
    threshold = xp.min(xp.where(before < p, ordered, math.inf), axis=-1,
                       keepdims=True)
    return xp.where(probs >= threshold, z, -math.inf)


def _min_p(z: Array, min_p: float, xp: Any) -> Array:
    if min_p <= 0.0:
        return z
    top = xp.max(z, axis=-1, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    # p_i < min_p · p_max  ⇔  z_i − z_max < log(min_p), without forming the probabilities.
    return xp.where(z - top < math.log(min_p), -math.inf, z)


def _filter(z: Array, t: float, k: int | None, p: float | None, mp: float | None,
            xp: Any) -> Array:
    if t == 0.0:
        hot = _one_hot(xp.argmax(z, axis=-1), z.shape[-1], z, xp)
        return xp.where(hot, xp.zeros_like(z), -math.inf)
    if t != 1.0:
        z = z / t
    if k is not None:
        z = _top_k(z, k, xp)
    if p is not None:
        z = _top_p(z, p, xp)
    if mp is not None:
        z = _min_p(z, mp, xp)
    return z


def filter_logits(
    logits: ArrayT,
    /,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> ArrayT:
    r"""The logits :func:`sample` draws from: scaled by ``1/temperature``, filtered to ``-inf``.

    In Hugging Face's order, over the last axis (``K`` tokens):

    .. math::
        z = x / T;\quad
        \text{top-}k:\ z_i \ge z_{(k)};\quad
        \text{top-}p:\ \textstyle\sum_{j:\, p_j > p_i} p_j < p \text{ (up to ties)};\quad
        \text{min-}p:\ p_i \ge p_{\min} \max_j p_j

    where :math:`z_{(k)}` is the k-th largest logit and :math:`p = \operatorname{softmax}(z)` after
    the previous filters.

    Args:
        logits: ``(..., K)`` unnormalised log-probabilities (``-inf`` = never sample).
        temperature: a finite ``T ≥ 0``; ``0`` keeps only the arg-max (first index on ties), with
            logit 0 there.
        top_k: keep the ``k ≥ 1`` largest logits, and every logit tied with the k-th.
        top_p: in ``(0, 1]``; keep the most probable tokens until their mass reaches ``p``
            (always at least one).  Tokens as probable as the last one kept are all kept;
            ``p = 1`` keeps everything.
        min_p: in ``[0, 1]``; drop tokens less probable than ``min_p`` times the most probable
            one (``1`` keeps only the most probable, with its ties; ``0`` keeps everything).

    Returns:
        ``(..., K)`` filtered logits of the input's array type (float; removed tokens ``-inf``).

    Note:
        The top-p rule equals Hugging Face's ``TopPLogitsWarper`` (remove a token when the mass of
        it and every less probable token is at most ``1 − p``) except on exact ties at the
        boundary, which Hugging Face breaks by sort order and this function keeps.  Min-p compares
        logits (``z_i − z_max < log min_p``), which equals the probability test exactly.

    Examples:
        >>> import numpy as np
        >>> from logitkit.sampling import filter_logits
        >>> z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
        >>> np.exp(filter_logits(z, top_p=0.7)).round(2)
        array([0.5, 0.3, 0. , 0. ])
        >>> np.isfinite(filter_logits(np.array([1.0, 2.0, 2.0, 0.0]), top_k=2))
        array([False,  True,  True, False])
        >>> np.isfinite(filter_logits(z, min_p=0.5))
        array([ True,  True, False, False])

    References:
        Holtzman et al., "The curious case of neural text degeneration" (top-p), ICLR 2020.
        Nguyen et al., "Min-p sampling", arXiv:2407.01082 (2024).
    """
    xp = namespace(logits)
    z = _logits(logits, xp)
    t, k, p, mp = _check_filters(temperature, top_k, top_p, min_p)
    return _filter(z, t, k, p, mp, xp)


def sample(
    logits: Any,
    /,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    num_samples: int = 1,
    rng: Any = None,
) -> Any:
    r"""Draw token indices from ``softmax(filter_logits(logits, ...))``, with replacement.

    .. math::
        i = \arg\max_j \bigl(\tilde z_j + g_j\bigr),\qquad g_j \sim \operatorname{Gumbel}(0, 1),
        \quad \tilde z = \operatorname{filter\_logits}(z)

    Args:
        logits: ``(..., K)`` logits.
        temperature: ``T ≥ 0``; ``0`` is greedy decoding (the arg-max, first index on ties, no
            randomness used).
        top_k: see :func:`filter_logits`.
        top_p: see :func:`filter_logits`.
        min_p: see :func:`filter_logits`.
        num_samples: independent draws per row.
        rng: the random source (see the module docstring): a ``numpy.random.Generator`` or int
            seed for NumPy, a ``torch.Generator`` (or seed, or ``None`` for the global one) for
            PyTorch, a PRNG key or seed for JAX.

    Returns:
        Integer indices of shape ``(..., num_samples)`` (like ``torch.multinomial``), of the
        input's array type.

    Note:
        Tokens with logit ``-inf`` (or filtered out) are never drawn.  A row whose logits are all
        ``-inf`` has no distribution; it returns index 0.

    Examples:
        >>> import numpy as np
        >>> from logitkit.sampling import sample
        >>> z = np.array([[0.0, 1.0, -np.inf], [5.0, 0.0, 0.0]])
        >>> sample(z, temperature=0.0, num_samples=3)
        array([[1, 1, 1],
               [0, 0, 0]])
        >>> s = sample(z, top_k=1, num_samples=4, rng=0)
        >>> s.tolist()
        [[1, 1, 1, 1], [0, 0, 0, 0]]
    """
    xp = namespace(logits)
    z = _logits(logits, xp)
    t, k, p, mp = _check_filters(temperature, top_k, top_p, min_p)
    n = check_int(num_samples, "num_samples")
    if t == 0.0:
        best = xp.expand_dims(xp.argmax(z, axis=-1), axis=-1)
        return xp.tile(best, (*([1] * (best.ndim - 1)), n))
    z = _filter(z, t, k, p, mp, xp)
    g = _gumbel((*z.shape[:-1], n, z.shape[-1]), rng, z, xp, "rng")
    return xp.argmax(xp.expand_dims(z, axis=-2) + g, axis=-1)


def gumbel_max(logits: Any, /, *, rng: Any = None) -> Any:
    r"""One sample per row from ``softmax(logits)`` by the Gumbel-max trick.

    .. math::
        i = \arg\max_j (z_j + g_j),\qquad g_j = -\log E_j,\ E_j \sim \operatorname{Exp}(1)

    Args:
        logits: ``(..., K)`` logits (``-inf`` entries are never drawn).
        rng: the random source (see the module docstring).

    Returns:
        Integer indices of shape ``(...)``, of the input's array type.

    Note:
        The noise is clamped so it is always finite (a draw of exactly 0 or 1 cannot produce
        ``±inf``).  A row of all ``-inf`` returns index 0.

    Examples:
        >>> import numpy as np
        >>> from logitkit.sampling import gumbel_max
        >>> int(gumbel_max(np.array([-np.inf, 0.0, -np.inf]), rng=1))
        1

    References:
        Gumbel (1954); Maddison, Tarlow & Minka, "A* sampling", NeurIPS 2014.
    """
    xp = namespace(logits)
    z = _logits(logits, xp)
    return xp.argmax(z + _gumbel(tuple(z.shape), rng, z, xp, "rng"), axis=-1)


def gumbel_top_k(logits: Any, k: int, /, *, rng: Any = None) -> Any:
    r"""``k`` distinct indices per row, sampled without replacement (Gumbel-top-k).

    .. math::
        (i_1, \dots, i_k) = \operatorname{top-}k_j\,(z_j + g_j)

    The first index is distributed as ``softmax(z)``, the second as ``softmax(z)`` restricted to
    the others, and so on (Plackett–Luce / sequential sampling without replacement).

    Args:
        logits: ``(..., K)`` logits.
        k: how many indices per row, ``1 ≤ k ≤ K``.
        rng: the random source (see the module docstring).

    Returns:
        Integer indices ``(..., k)`` in the order drawn, of the input's array type.

    Note:
        With fewer than ``k`` finite logits in a row, the ``-inf`` entries fill the remaining
        slots (in index order).

    Examples:
        >>> import numpy as np
        >>> from logitkit.sampling import gumbel_top_k
        >>> sorted(gumbel_top_k(np.array([0.0, -np.inf, 1.0, 2.0]), 3, rng=0).tolist())
        [0, 2, 3]

    References:
        Kool, van Hoof & Welling, "Stochastic beams and where to find them", ICML 2019.
    """
    xp = namespace(logits)
    z = _logits(logits, xp)
    n = z.shape[-1]
    kk = check_int(k, "k", high=n)
    perturbed = z + _gumbel(tuple(z.shape), rng, z, xp, "rng")
    # Descending, ties in index order: a stable ascending sort of the negated values.
    return xp.argsort(-perturbed, axis=-1, stable=True)[..., :kk]


def gumbel_softmax(
    logits: ArrayT,
    /,
    *,
    tau: float,
    hard: bool = False,
    axis: int = -1,
    generator: Any = None,
) -> ArrayT:
    r"""A differentiable sample from the Concrete (Gumbel-softmax) distribution.

    .. math::
        y = \operatorname{softmax}\bigl((z + g)/\tau\bigr),\qquad
        y_{\text{hard}} = \operatorname{onehot}(\arg\max y) - \operatorname{sg}(y) + y

    Args:
        logits: ``(..., K, ...)`` logits.
        tau: temperature ``τ > 0`` (finite).
        hard: return a one-hot sample whose gradient is that of the soft sample
            (straight-through estimator), as ``torch.nn.functional.gumbel_softmax``.
        axis: the category axis.
        generator: the random source (see the module docstring; PyTorch's name for it).

    Returns:
        An array like ``logits`` (float), summing to one over ``axis``.

    Note:
        Same definition and noise as PyTorch's ``gumbel_softmax`` (``g = −log E``, ``E``
        exponential): with a ``torch.Generator`` seeded like PyTorch's global generator the
        results agree.  The exponential draw is clamped away from 0 and inf, so the result and its
        gradient are never NaN, including when a uniform draw is exactly 0 or 1.

    Examples:
        >>> import numpy as np
        >>> from logitkit.sampling import gumbel_softmax
        >>> y = gumbel_softmax(np.array([1.0, 2.0, 3.0]), tau=0.5, generator=0)
        >>> float(y.sum().round(12))
        1.0
        >>> gumbel_softmax(np.array([0.0, -np.inf]), tau=1.0, hard=True, generator=0)
        array([1., 0.])

    References:
        Jang, Gu & Poole, "Categorical reparameterization with Gumbel-softmax", ICLR 2017.
        Maddison, Mnih & Teh, "The Concrete distribution", ICLR 2017.
    """
    xp = namespace(logits)
    z = _logits(logits, xp)
    t = check_number(tau, "tau", low=0.0, low_open=True, high=math.inf, high_open=True)
    if not isinstance(hard, bool):
        raise LogitkitTypeError(expected("hard", "a bool", hard))
    axis = check_int(axis, "axis", low=-z.ndim, high=z.ndim - 1)
    y = softmax(z + _gumbel(tuple(z.shape), generator, z, xp, "generator"), axis=axis,
                temperature=t)
    if not hard:
        return y
    moved = xp.moveaxis(y, axis, -1)
    hot = astype(_one_hot(xp.argmax(moved, axis=-1), moved.shape[-1], moved, xp), y.dtype, xp)
    hot = xp.moveaxis(hot, -1, axis)
    return hot - stop_gradient(y, xp) + y
