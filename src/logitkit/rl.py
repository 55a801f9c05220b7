"""Softmax (Boltzmann) policies for reinforcement learning, from action values or logits.

A Boltzmann policy turns action values ``q`` into ``π(a) ∝ exp(q_a / T)``.  Everything here works
from the values with the core's exact softmax, so masked (illegal) actions have probability
exactly 0, contribute nothing to entropies and divergences, get a zero gradient and are never
sampled.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from ._core import entropy, log_softmax, logsumexp, softmax
from ._namespace import (
    Array,
    Described,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    broadcast_shapes,
    check_mask,
    check_number,
    compute_dtypes,
    expected,
    is_concrete,
    namespace,
    to_numpy,
)
from .sampling import gumbel_max

__all__ = ["BoltzmannPolicy", "policy_gradient_score", "soft_value"]


def _values(q: Any, arg: str, xp: Any) -> Array:
    q = as_array(q, arg, xp)
    if q.ndim < 1:
        raise LogitkitValueError(
            expected(arg, "an array of shape (..., A)", Described(f"shape {tuple(q.shape)}"))
        )
    return q


def _mask(mask: Any, q: Array, xp: Any) -> Array | None:
    return None if mask is None else check_mask(mask, tuple(q.shape), xp)


def _action_one_hot(actions: Any, q: Array, xp: Any) -> Array:
    """``actions == arange(A)`` as a boolean ``q``-shaped array, after checking the actions."""
    a = as_array(actions, "actions", xp)
    if not xp.isdtype(a.dtype, "integral"):
        raise LogitkitTypeError(
            expected("actions", "an integer array", Described(f"dtype {a.dtype}")))
    n = q.shape[-1]
    broadcast_shapes("actions", tuple(a.shape), tuple(q.shape[:-1]))
    if is_concrete(a):
        values = to_numpy(a)
        if values.size and (values.min() < 0 or values.max() >= n):
            bad = values[(values < 0) | (values >= n)].ravel()[0].item()
            raise LogitkitValueError(expected("actions", f"action indices in [0, {n})", bad))
    classes = xp.arange(n, dtype=a.dtype, device=array_api_compat.device(q))
    return xp.expand_dims(a, axis=-1) == classes


def _select(values: Array, hot: Array, xp: Any) -> Array:
    """``values[..., a]`` through a one-hot (a ``where``, so ``-inf`` elsewhere does not leak)."""
    return xp.sum(xp.where(hot, values, 0.0), axis=-1)


class BoltzmannPolicy:
    r"""The softmax policy ``π(a | q) ∝ exp(q_a / T)`` over the last axis of action values.

    .. math::
        \pi(a) = \frac{e^{q_a / T}}{\sum_{b \in \mathcal{A}} e^{q_b / T}}

    where :math:`\mathcal{A}` is the set of allowed actions (``mask``).

    Args:
        temperature: ``T ≥ 0``; ``0`` is the greedy limit (uniform over the arg-max actions),
            ``inf`` the uniform policy over the allowed actions.

    Note:
        Every method takes ``q`` of shape ``(..., A)`` and an optional boolean ``mask``
        broadcastable to it (``True`` = the action is allowed).  Masked actions have probability
        exactly 0, ``log_prob = -inf``, no entropy contribution, a zero gradient, and are never
        sampled.  A state with every action masked has all-zero probabilities and entropy 0.

    Examples:
        >>> import numpy as np
        >>> from logitkit.rl import BoltzmannPolicy
        >>> pi = BoltzmannPolicy(temperature=0.5)
        >>> q = np.array([1.0, 2.0, 0.0])
        >>> pi.probs(q).round(4)
        array([0.1173, 0.8668, 0.0159])
        >>> pi.probs(q, mask=np.array([True, False, True])).round(4)
        array([0.8808, 0.    , 0.1192])
        >>> int(pi.sample(q, mask=np.array([False, False, True]), rng=0))
        2

    References:
        Sutton & Barto, "Reinforcement learning: an introduction", 2nd ed., §2.8 and §13.1 (2018).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_number(temperature, "temperature", low=0.0, high=math.inf)

    def __repr__(self) -> str:
        return f"BoltzmannPolicy(temperature={self.temperature!r})"

    def probs(self, q: Any, mask: Any = None) -> Any:
        r"""Action probabilities ``π(· | q)``, shape ``(..., A)``.

        Args:
            q: action values ``(..., A)``.
            mask: allowed actions, boolean, broadcastable to ``q``.

        Returns:
            Probabilities of ``q``'s array type, summing to 1 over allowed actions.
        """
        xp = namespace(q, mask)
        q = _values(q, "q", xp)
        return softmax(q, temperature=self.temperature, where=_mask(mask, q, xp))

    def log_prob(self, q: Any, actions: Any, mask: Any = None) -> Any:
        r"""``log π(a | q)`` of the given actions, shape ``(...)``.

        Args:
            q: action values ``(..., A)``.
            actions: integer actions broadcastable to ``q.shape[:-1]``.
            mask: allowed actions.

        Returns:
            Log-probabilities (``-inf`` for a masked action).
        """
        xp = namespace(q, actions, mask)
        q = _values(q, "q", xp)
        hot = _action_one_hot(actions, q, xp)
        logp = log_softmax(q, temperature=self.temperature, where=_mask(mask, q, xp))
        return _select(logp, hot, xp)

    def entropy(self, q: Any, mask: Any = None) -> Any:
        r"""Entropy ``H(π) = −Σ_a π(a) log π(a)`` in nats, shape ``(...)``.

        Args:
            q: action values ``(..., A)``.
            mask: allowed actions (masked ones contribute 0).

        Returns:
            Entropies of ``q``'s array type.
        """
        xp = namespace(q, mask)
        q = _values(q, "q", xp)
        return entropy(q, temperature=self.temperature, where=_mask(mask, q, xp))

    def kl(self, q1: Any, q2: Any, mask: Any = None) -> Any:
        r"""``KL(π₁ ‖ π₂) = Σ_a π₁(a) (log π₁(a) − log π₂(a))``, shape ``(...)``.

        Args:
            q1: action values of the first policy (the one the expectation is under).
            q2: action values of the second policy, same shape.
            mask: allowed actions, shared by both policies.

        Returns:
            Divergences (``inf`` where ``π₂`` gives 0 to an action ``π₁`` may take).
        """
        xp = namespace(q1, q2, mask)
        q1 = _values(q1, "q1", xp)
        q2 = _values(q2, "q2", xp)
        if tuple(q1.shape) != tuple(q2.shape):
            raise LogitkitValueError(expected("q2", f"of shape {tuple(q1.shape)} like `q1`",
                                              Described(f"shape {tuple(q2.shape)}")))
        m = _mask(mask, q1, xp)
        p1 = softmax(q1, temperature=self.temperature, where=m)
        lp1 = log_softmax(q1, temperature=self.temperature, where=m)
        lp2 = log_softmax(q2, temperature=self.temperature, where=m)
        live = p1 > 0
        zero = 0.0
        diff = xp.where(live, lp1, zero) - xp.where(live, lp2, zero)
        return xp.sum(xp.where(live, p1 * diff, zero), axis=-1)

    def sample(self, q: Any, mask: Any = None, *, rng: Any = None) -> Any:
        r"""One action per state drawn from ``π(· | q)``, shape ``(...)``.

        Args:
            q: action values ``(..., A)``.
            mask: allowed actions (masked actions are never drawn).
            rng: the random source, as in :mod:`logitkit.sampling` (NumPy ``Generator`` or seed,
                ``torch.Generator``, JAX key).

        Returns:
            Integer actions of ``q``'s array type.
        """
        xp = namespace(q, mask)
        q = _values(q, "q", xp)
        logp = log_softmax(q, temperature=self.temperature, where=_mask(mask, q, xp))
        return gumbel_max(logp, rng=rng)


def soft_value(q: Any, /, *, alpha: float, where: Any = None) -> Any:
    r"""The soft (entropy-regularised) state value ``V = α · log Σ_a exp(q_a / α)``.

    .. math::
        V(q) = \alpha \log \sum_a e^{q_a/\alpha} = \max_\pi \ \mathbb{E}_\pi[q] + \alpha H(\pi),
        \qquad \nabla_q V = \operatorname{softmax}(q / \alpha)

    Args:
        q: action values ``(..., A)``.
        alpha: the entropy weight ``α ≥ 0`` (finite); ``0`` is the hard value ``max_a q_a``.
        where: allowed actions, boolean, broadcastable to ``q``.

    Returns:
        Values of shape ``(...)`` and ``q``'s array type; ``-inf`` where no action is allowed.

    Examples:
        >>> import numpy as np
        >>> from logitkit.rl import soft_value
        >>> q = np.array([1.0, 2.0, 3.0])
        >>> round(float(soft_value(q, alpha=1.0)), 4)
        3.4076
        >>> float(soft_value(q, alpha=0.0))
        3.0

    References:
        Haarnoja et al., "Reinforcement learning with deep energy-based policies", ICML 2017.
    """
    xp = namespace(q, where)
    q = _values(q, "q", xp)
    a = check_number(alpha, "alpha", low=0.0, high=math.inf, high_open=True)
    acc, _ = compute_dtypes(q, None, xp)
    m = _mask(where, q, xp)
    if a == 0.0:
        z = astype(q, acc, xp)
        if m is not None:
            z = xp.where(m, z, -math.inf)
        return xp.max(z, axis=-1)
    return a * logsumexp(astype(q, acc, xp) / a, axis=-1, where=m)


def policy_gradient_score(
    logits: Any, actions: Any, /, *, temperature: float = 1.0, where: Any = None
) -> Any:
    r"""The score function ``∇_z log π(a | z)`` of a softmax policy, without autodiff.

    .. math::
        \nabla_z \log \pi(a) = \frac{\operatorname{onehot}(a) - \pi}{T},\qquad
        \pi = \operatorname{softmax}(z / T)

    Args:
        logits: ``(..., A)`` policy logits (or action values).
        actions: integer actions broadcastable to ``logits.shape[:-1]``.
        temperature: ``T > 0`` (finite).
        where: allowed actions; masked entries get 0.

    Returns:
        ``(..., A)`` scores of the logits' array type (each row sums to 0).

    Note:
        This is the REINFORCE direction: ``E_a[score · R]`` is the policy gradient.  A masked
        action has probability 0, so its score is undefined; this function returns ``−π/T``
        there (the derivative of the normaliser alone).

    Examples:
        >>> import numpy as np
        >>> from logitkit.rl import policy_gradient_score
        >>> policy_gradient_score(np.zeros(4), np.array(1))
        array([-0.25,  0.75, -0.25, -0.25])

    References:
        Williams, "Simple statistical gradient-following algorithms", Machine Learning 8 (1992).
    """
    xp = namespace(logits, actions, where)
    z = _values(logits, "logits", xp)
    t = check_number(temperature, "temperature", low=0.0, low_open=True, high=math.inf,
                     high_open=True)
    acc, out = compute_dtypes(z, None, xp)
    hot = _action_one_hot(actions, z, xp)
    p = softmax(astype(z, acc, xp), temperature=t, where=_mask(where, z, xp))
    score = (astype(hot, acc, xp) - p) / t
    if where is not None:
        score = xp.where(_mask(where, z, xp), score, 0.0)
    return astype(score, out, xp)

