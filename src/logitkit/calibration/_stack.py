"""Mixture weights of calibrated models: the weights that maximise held-out likelihood."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._namespace import LogitkitValueError, check_int, expected

__all__ = ["MIN_WEIGHT", "stack_weights"]

#: A mixture component whose weight is below this is left out when the mixture is assembled
#: (its share of any row's probability is at most 0.1%).
MIN_WEIGHT = 1e-3


def stack_weights(logp: Any, *, prior: Any = 1.0, max_iter: int = 100) -> np.ndarray:
    r"""The mixture weights ``w`` on the simplex that maximise

    .. math::
        \sum_n \log \sum_m w_m\, e^{\ell_{mn}} + \sum_m a_m \log w_m

    where ``ℓ[m, n]`` is component ``m``'s held-out log-probability of row ``n``'s label:
    the log-likelihood of a mixture of the components' predictive distributions, with a
    Dirichlet prior of ``a_m`` pseudo-rows per component (its posterior mode).  The prior keeps
    every weight positive, so the problem is strictly concave with one interior optimum; it is
    found by Newton's method on the simplex (the equality-constrained Newton step, damped to
    stay inside, with a backtracking line search), to the precision of float64.  It is the
    fixed point of the EM update ``w_m ← (Σ_n r_mn + a_m) / (N + Σ a)``, reached in a handful
    of steps instead of hundreds.

    Args:
        logp: ``(M, N)`` log-probabilities of the labels (``-inf`` allowed where a component
            gives a label probability 0; every row needs one finite entry).
        prior: ``a``: pseudo-rows per component, a positive number or ``(M,)`` positive
            numbers.
        max_iter: the most Newton steps.

    Returns:
        ``(M,)`` weights, positive, summing to 1.

    Raises:
        LogitkitValueError: a row with no finite entry, a NaN, or a prior that is not
            positive and finite.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration._stack import stack_weights
        >>> good, bad = np.log(np.full(100, 0.9)), np.log(np.full(100, 0.1))
        >>> stack_weights(np.stack([good, bad]), prior=1.0).round(3)
        array([0.99, 0.01])
    """
    lp = np.asarray(logp, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] < 1 or lp.shape[1] < 1:
        raise LogitkitValueError(expected("logp", "a non-empty (M, N) array",
                                          f"shape {lp.shape}"))
    m = lp.shape[0]
    try:
        a = np.broadcast_to(np.asarray(prior, dtype=np.float64), (m,)).copy()
    except (TypeError, ValueError):
        a = None
    if a is None or not (np.all(np.isfinite(a)) and np.all(a > 0)):
        raise LogitkitValueError(expected("prior", f"a positive number or {m} of them", prior))
    max_iter = check_int(max_iter, "max_iter")
    if np.isnan(lp).any():
        raise LogitkitValueError(expected("logp", "no NaN", "NaN"))
    top = lp.max(axis=0)
    if not np.all(np.isfinite(top)):
        raise LogitkitValueError(expected(
            "logp", "a finite entry in every row (some component giving the label a "
            "positive probability)", "a row of -inf"))
    like = np.exp(lp - top)  # ≤ 1, the largest entry of each row exactly 1
    w = np.full(m, 1.0 / m)
    if m == 1:
        return w

    def value(w: np.ndarray) -> float:
        return float(np.log(w @ like).sum() + a @ np.log(w))

    f = value(w)
    for _ in range(max_iter):
        s = w @ like
        r = like / s  # (M, N)
        g = r.sum(axis=1) + a / w
        h = -(r @ r.T) - np.diag(a / (w * w))  # negative definite
        # max g·d + ½ dᵀHd subject to Σ d = 0
        kkt = np.zeros((m + 1, m + 1))
        kkt[:m, :m], kkt[:m, m], kkt[m, :m] = h, 1.0, 1.0
        try:
            d = np.linalg.solve(kkt, np.r_[-g, 0.0])[:m]
        except np.linalg.LinAlgError:  # pragma: no cover - H is negative definite
            break
        d -= d.mean()  # Σ d = 0 exactly
        rise = float(g @ d)  # the first-order rise; ≥ 0 at a Newton step of a concave problem
        if not rise > 1e-15 * max(1.0, abs(f)):
            break
        falling = d < 0
        step = min(1.0, 0.99 * float(np.min(-w[falling] / d[falling]))) if falling.any() else 1.0
        while step > 1e-12:
            trial = w + step * d
            if np.all(trial > 0):
                f_trial = value(trial)
                if f_trial >= f + 1e-4 * step * rise:
                    break
            step *= 0.5
        else:
            break
        w, f = trial / trial.sum(), f_trial
    if not math.isfinite(f):  # pragma: no cover - every row has a finite entry
        raise LogitkitValueError(expected("logp", "a finite likelihood", "an infinite one"))
    return w
