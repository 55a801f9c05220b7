"""The analytic cross-entropy on rows: its value, and its gradient ``(p − y)/T`` + regularisers.

This is the one place the cross-entropy's math lives.  The NumPy path (``cross_entropy_with_grad``)
calls :func:`forward` and :func:`gradient` directly; the torch and JAX adapters call :func:`forward`
without autodiff, keep only its O(N) row statistics, and recompute ``p`` in backward.

Layout: the logits are an ``(N, K)`` array of rows in the accumulation dtype (the class axes moved
last and flattened, the batch flattened).  With ``W[i, c] = weight[c] · y[i, c]`` (``y`` the smoothed
target, zero on masked classes) and ``z = softcap(x) / T``:

    loss_i = Σ_c W_ic (lse_i − z_ic) + c_z · lse_i² + (λ/2) Σ_c x_ic²
    ∂loss_i/∂x_ij = [(Σ_c W_ic + 2 c_z lse_i) p_ij − W_ij] / T · softcap'(x_ij) + λ x_ij

The value uses the Blanchard–Higham–Higham split ``lse − z_t = −d_t + log1p(Σ_{j≠top} e^{d_j})`` with
``d = z − max z``, so a confident correct prediction has a loss accurate to a few ulp of itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._namespace import Array, astype, is_lazy, stop_gradient


def _const(value: float, like: Array, xp: Any) -> Array:
    return xp.asarray(value, dtype=like.dtype, device=array_api_compat.device(like))


@dataclass
class Problem:
    """A validated cross-entropy problem in row form (see the module docstring)."""

    x: Array  # (N, K) logits, accumulation dtype
    labels: Any  # None, or (N,) int64 class indices in [0, K) (ignored/bad rows hold 0)
    probs: Any  # None, or (N, K) probability targets, accumulation dtype
    mask: Array | None  # (N, K) bool, True = the class takes part
    weight: Array | None  # (K,) per-class weights, accumulation dtype
    keep: Array | None  # (N,) bool, False for rows whose label is `ignore_index`
    bad: Array | None  # (N,) bool, out-of-range labels that could not be checked eagerly
    temperature: float | Array  # a float, or an (N, 1) array
    softcap: float | None
    label_smoothing: float
    z_loss: float
    logit_l2: float
    reduction: str


@dataclass
class RowStats:
    """What backward needs from forward: O(N) per-row statistics."""

    loss: Array  # (N,) per-row loss (0 on rows that do not count)
    lse: Array  # (N, 1) log-sum-exp of z (finite placeholder 0 on special rows)
    coef: Array  # (N, 1) Σ_c W_ic + 2 c_z lse_i
    counted: Array  # (N,) bool: the row counts (not ignored, not fully masked)
    special: Array  # (N,) bool: a NaN, a +inf, or nothing finite among the unmasked logits
    denom: Array  # () the mean's denominator (Σ weight[target] or the number of counted rows)


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------


def _is_one(t: float | Array) -> bool:
    return isinstance(t, float) and t == 1.0


def scaled_logits(pb: Problem, xp: Any) -> Array:
    """``z = softcap(x) / T`` with masked entries at ``-inf`` (their inputs sanitised first)."""
    z = pb.x
    if pb.mask is not None:
        z = xp.where(pb.mask, z, _const(0.0, z, xp))
    if pb.softcap is not None:
        z = pb.softcap * xp.tanh(z / pb.softcap)
    if not _is_one(pb.temperature):
        z = z / pb.temperature
    if pb.mask is not None:
        z = xp.where(pb.mask, z, _const(-math.inf, z, xp))
    return z


def n_valid(pb: Problem, xp: Any) -> Array | int:
    """Number of unmasked classes per row, ``(N, 1)`` (or ``K`` without a mask)."""
    if pb.mask is None:
        return int(pb.x.shape[-1])
    return xp.sum(astype(pb.mask, pb.x.dtype, xp), axis=-1, keepdims=True)


def target_weights(pb: Problem, xp: Any) -> Array | None:
    """``W = weight · y`` as an (N, K) array, or ``None`` for plain integer targets."""
    x = pb.x
    eps = pb.label_smoothing
    if pb.probs is None and eps == 0.0:
        return None
    if pb.probs is not None:
        y = pb.probs if eps == 0.0 else (1.0 - eps) * pb.probs
    else:
        k = x.shape[-1]
        iota = xp.arange(k, device=array_api_compat.device(x))
        y = xp.where(iota == pb.labels[:, None], _const(1.0 - eps, x, xp), _const(0.0, x, xp))
    if eps > 0.0:
        kv = n_valid(pb, xp)
        kv_safe = kv if isinstance(kv, int) else xp.where(kv > 0, kv, _const(1.0, kv, xp))
        share = eps / kv_safe
        smooth = share if pb.mask is None else xp.where(pb.mask, share, _const(0.0, x, xp))
        y = y + smooth
    if pb.weight is not None:
        y = y * pb.weight
    return y


def label_weight(pb: Problem, xp: Any) -> Array | float:
    """``weight[target]`` per row, ``(N, 1)`` (1.0 without weights)."""
    if pb.weight is None:
        return 1.0
    return xp.take(pb.weight, pb.labels, axis=0)[:, None]


def counted_rows(pb: Problem, xp: Any) -> Array:
    n, k = pb.x.shape
    dev = array_api_compat.device(pb.x)
    if pb.mask is not None:
        counted = xp.any(pb.mask, axis=-1)
    else:
        counted = xp.full((n,), k > 0, dtype=xp.bool, device=dev)
    if pb.keep is not None:
        counted = counted & pb.keep
    return counted


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


def forward(pb: Problem, xp: Any, *, differentiable: bool) -> RowStats:
    """Per-row losses and the row statistics backward needs.

    ``differentiable=True`` keeps the expression safe for the backend's own autodiff (a
    straight-through term for the dominant exponential, sanitised inputs everywhere); the adapters
    pass ``False`` and never differentiate this function.
    """
    x = pb.x
    n, k = x.shape
    zero = _const(0.0, x, xp)
    counted = counted_rows(pb, xp)
    if k == 0:
        dev = array_api_compat.device(x)
        zeros = xp.zeros((n, 1), dtype=x.dtype, device=dev)
        return RowStats(zeros[:, 0], zeros, zeros, counted, counted, _denominator(pb, counted, xp))

    z = scaled_logits(pb, xp)
    m = stop_gradient(xp.max(z, axis=-1, keepdims=True), xp)
    nan = xp.isnan(m)
    pos = m == math.inf
    neg = m == -math.inf
    special = nan | pos | neg
    has_special = _any_special(special, xp)
    if has_special:
        m_safe = xp.where(special, zero, m)
        d = xp.where(special, zero, z - m_safe)
    else:
        m_safe = m
        d = z - m
    top = d == 0
    e = xp.exp(d)
    if differentiable:
        e = xp.where(top, e - stop_gradient(e, xp), e)
    else:
        e = xp.where(top, zero, e)
    n_top = xp.sum(astype(top, x.dtype, xp), axis=-1, keepdims=True)
    log_s = xp.log1p(xp.sum(e, axis=-1, keepdims=True) + (n_top - 1.0))
    del e, top
    lse = m_safe + log_s

    w = target_weights(pb, xp)
    if w is None:
        d_t = xp.take_along_axis(d, pb.labels[:, None], axis=-1)
        total_w = label_weight(pb, xp)
        if isinstance(total_w, float):
            total_w = xp.full((n, 1), total_w, dtype=x.dtype, device=array_api_compat.device(x))
        # 0·(−inf) = 0: a class of weight 0 contributes nothing, even at probability 0.
        cross = total_w * xp.where(total_w > 0, d_t, zero)
    else:
        total_w = xp.sum(w, axis=-1, keepdims=True)
        positive = w > 0
        cross = xp.sum(w * xp.where(positive, d, zero), axis=-1, keepdims=True)
    ce = total_w * log_s - cross
    del d

    if has_special:
        ce = xp.where(special, _special_ce(pb, z, w, total_w, pos, neg, nan, xp), ce)
    del z

    return finish(pb, xp, ce, lse, total_w, counted, flags=(pos, neg, nan))


def finish(
    pb: Problem, xp: Any, ce: Array, lse: Array, total_w: Array, counted: Array, *,
    flags: tuple[Array, Array, Array] | None = None, sum_sq: Array | None = None,
) -> RowStats:
    """Add the regularisers to the per-row cross-entropy ``ce`` and zero the rows that do not
    count.  ``flags`` are the (+inf, nothing finite, NaN) row flags (``None``: no special row);
    ``sum_sq`` is ``Σ x²`` over the unmasked logits when the caller has it."""
    x = pb.x
    zero = _const(0.0, ce, xp)
    loss = ce
    if flags is None:
        special = xp.zeros(counted.shape, dtype=xp.bool, device=array_api_compat.device(x))
    else:
        pos, neg, nan = flags
        special = (pos | neg | nan)[:, 0]
    if pb.z_loss > 0.0:
        z_term = lse * lse
        if flags is not None:
            true_lse = xp.where(pos, _const(math.inf, lse, xp), lse)
            true_lse = xp.where(neg, _const(-math.inf, lse, xp), true_lse)
            true_lse = xp.where(nan, _const(math.nan, lse, xp), true_lse)
            z_term = xp.where(special[:, None], true_lse * true_lse, z_term)
        loss = loss + pb.z_loss * z_term
    if pb.logit_l2 > 0.0:
        if sum_sq is None:
            xs = x if pb.mask is None else xp.where(pb.mask, x, _const(0.0, x, xp))
            sum_sq = xp.sum(xs * xs, axis=-1, keepdims=True)
        loss = loss + (0.5 * pb.logit_l2) * sum_sq
    if pb.bad is not None:
        loss = xp.where(pb.bad[:, None], _const(math.nan, loss, xp), loss)
    loss = xp.where(counted[:, None], loss, zero)
    coef = total_w + (2.0 * pb.z_loss) * lse if pb.z_loss > 0.0 else total_w
    return RowStats(loss[:, 0], lse, coef, counted, special, _denominator(pb, counted, xp))


def _any_special(special: Array, xp: Any) -> bool:
    """Whether special rows need their own formula; always True for lazy arrays (jit)."""
    if is_lazy(special):
        return True
    return bool(xp.any(special))


def _special_ce(
    pb: Problem, z: Array, w: Array | None, total_w: Array, pos: Array, neg: Array, nan: Array,
    xp: Any,
) -> Array:
    """Cross-entropy on rows with a +inf (``p = 1/k`` there), nothing finite, or a NaN."""
    zero = _const(0.0, total_w, xp)
    inf = _const(math.inf, total_w, xp)
    posinf = z == math.inf
    k_inf = xp.sum(astype(posinf, z.dtype, xp), axis=-1, keepdims=True)
    log_k = xp.log(xp.where(k_inf > 0, k_inf, _const(1.0, k_inf, xp)))
    if w is None:
        on_inf = xp.take_along_axis(posinf, pb.labels[:, None], axis=-1)
        wt = label_weight(pb, xp)
        off = xp.where(on_inf, zero, zero + wt)
    else:
        off = xp.sum(xp.where(posinf, zero, w), axis=-1, keepdims=True)
    pos_ce = xp.where(off > 0, inf, total_w * log_k)
    # Nothing finite and unmasked: p = 0 everywhere, −log 0 = inf wherever there is target mass.
    neg_ce = xp.where(total_w > 0, inf, zero)
    out = xp.where(pos, pos_ce, xp.where(neg, neg_ce, zero))
    return xp.where(nan, _const(math.nan, out, xp), out)


def _denominator(pb: Problem, counted: Array, xp: Any) -> Array:
    c = astype(counted, pb.x.dtype, xp)
    if pb.probs is None and pb.weight is not None:
        wt = xp.take(pb.weight, pb.labels, axis=0)
        return xp.sum(xp.where(counted, wt, _const(0.0, wt, xp)))
    return xp.sum(c)


def reduce(stats: RowStats, reduction: str, xp: Any) -> Array:
    """``"none"`` → the per-row losses, ``"sum"``, or ``"mean"`` over the counted rows (0 if none)."""
    if reduction == "none":
        return stats.loss
    total = xp.sum(stats.loss)
    if reduction == "sum":
        return total
    denom = stats.denom
    safe = xp.where(denom > 0, denom, _const(1.0, denom, xp))
    return xp.where(denom > 0, total / safe, _const(0.0, total, xp))


def row_scale(stats: RowStats, reduction: str, g: Array, xp: Any) -> Array:
    """``∂(reduced loss)/∂loss_i`` times the upstream cotangent ``g``, as ``(N, 1)``."""
    c = astype(stats.counted, stats.lse.dtype, xp)
    if reduction == "none":
        return (c * astype(g, c.dtype, xp))[:, None]
    g = astype(g, c.dtype, xp)
    if reduction == "sum":
        return (c * g)[:, None]
    denom = stats.denom
    safe = xp.where(denom > 0, denom, _const(1.0, denom, xp))
    return (c * (g / safe))[:, None]


# --------------------------------------------------------------------------------------------
# gradient
# --------------------------------------------------------------------------------------------


def probabilities(pb: Problem, stats: RowStats, xp: Any) -> Array:
    """``p = softmax(z)`` recomputed from the saved log-sum-exp (special rows by their limits)."""
    z = scaled_logits(pb, xp)
    zero = _const(0.0, z, xp)
    special = stats.special[:, None]
    p = xp.exp(xp.where(special, zero, z - stats.lse))
    if pb.mask is not None:
        p = xp.where(pb.mask, p, zero)
    if is_lazy(special) or bool(xp.any(special)):
        nan = xp.any(xp.isnan(z), axis=-1, keepdims=True)
        posinf = z == math.inf
        k_inf = xp.sum(astype(posinf, z.dtype, xp), axis=-1, keepdims=True)
        k_safe = xp.where(k_inf > 0, k_inf, _const(1.0, k_inf, xp))
        limit = xp.where(posinf, 1.0 / k_safe, zero)  # all zeros where nothing is finite
        limit = xp.where(nan, _const(math.nan, z, xp), limit)
        p = xp.where(special, limit, p)
    return p


def gradient(pb: Problem, stats: RowStats, scale: Array, xp: Any) -> Array:
    """``∂/∂x`` of ``Σ_i scale_i · loss_i``: ``scale · ([coef·p − W]/T · softcap' + λx)``."""
    x = pb.x
    zero = _const(0.0, x, xp)
    p = probabilities(pb, stats, xp)
    coef = stats.coef
    if pb.z_loss > 0.0:
        coef = xp.where(stats.special[:, None], coef - 2.0 * pb.z_loss * stats.lse, coef)
    gz = coef * p
    w = target_weights(pb, xp)
    if w is None:
        iota = xp.arange(x.shape[-1], device=array_api_compat.device(x))
        gz = xp.where(iota == pb.labels[:, None], gz - label_weight(pb, xp), gz)
    else:
        gz = gz - w
    if not _is_one(pb.temperature):
        gz = gz / pb.temperature
    if pb.softcap is not None:
        xs = x if pb.mask is None else xp.where(pb.mask, x, zero)
        t = xp.tanh(xs / pb.softcap)
        gz = gz * (1.0 - t * t)
    if pb.logit_l2 > 0.0:
        gz = gz + pb.logit_l2 * (x if pb.mask is None else xp.where(pb.mask, x, zero))
    g = gz * scale
    if pb.mask is not None:
        g = xp.where(pb.mask, g, zero)
    return xp.where(stats.counted[:, None], g, zero)


def target_gradient(pb: Problem, stats: RowStats, scale: Array, xp: Any) -> Array:
    """``∂/∂q`` of ``Σ_i scale_i · loss_i`` for probability targets: ``−(1−ε)·weight·log p``."""
    z = scaled_logits(pb, xp)
    zero = _const(0.0, z, xp)
    special = stats.special[:, None]
    logp = xp.where(special, zero, z - stats.lse)
    g = -(1.0 - pb.label_smoothing) * logp
    if pb.weight is not None:
        g = g * pb.weight
    g = g * scale
    if pb.mask is not None:
        g = xp.where(pb.mask, g, zero)
    return xp.where(stats.counted[:, None] & ~special, g, zero)
