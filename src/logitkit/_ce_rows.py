"""The cross-entropy on rows: its value, its gradient ``(p − y)/T`` + regularisers, its reduction.

This is the one place the cross-entropy's rules live.  ``cross_entropy`` and
``cross_entropy_with_grad`` call it on NumPy and every other backend, the torch and JAX adapters
call it in their forward and backward passes, and ``linear_cross_entropy`` and the vocab-parallel
loss build on its block functions.  The fused kernel computes the same rows when it applies; the
rows it flags come back here.

Layout: the logits are ``(N, K)`` rows (the class axes moved last and flattened, the batch
flattened; :mod:`._layout`).  With ``W_ic = weight_c · y_ic`` (``y`` the smoothed target, zero on
masked classes), ``m_i`` the row max of ``softcap(x_i)`` (a constant) and
``q_i = (softcap(x_i) − m_i)/T`` (the core's shift-before-divide, :func:`._core._shift`)::

    loss_i = Σ_c W_ic (log s_i − q_ic) + c_z lse_i² + (λ/2) Σ_c x_ic²,
             s_i = Σ_c e^{q_ic},  lse_i = m_i/T + log s_i
    ∂loss_i/∂x_ij = [(Σ_c W_ic + 2 c_z lse_i) p_ij − W_ij] / T · softcap'(x_ij) + λ x_ij,
             p_ij = e^{q_ij − log s_i}

``log s`` is taken in the Blanchard–Higham–Higham ``log1p`` form, so a confident correct
prediction has a loss accurate to a few ulp of itself.  The row statistics kept for backward are
where the max is (``m`` is read again there) and ``log s``, never ``lse`` itself: ``m/T``
overflows float32 for ``[3e38, 2.9e38]`` at T = 0.5 while ``q`` and ``log s`` do not, and ``p``
recomputed as ``e^q / s`` keeps the digits that ``e^{z − lse}`` loses at large logits
(1e4 + N(0, 1) in float32: 8e-9 instead of 6e-5).

NumPy and torch rows are computed in blocks of about a million entries, so the temporaries of the
generic path are bounded by a block, whatever N; the gradient is written block by block into the
one ``(N, K)`` array this module allocates (or the caller's ``out``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat
import numpy as np

from . import _kernels
from ._core import Temperature, _may, _normalise, _shift, _sink_shift, divide
from ._namespace import Array, astype, is_numpy, is_torch, to_numpy

__all__ = [
    "Problem",
    "RowStats",
    "counted_rows",
    "denominator",
    "forward",
    "gradient",
    "loss_and_gradient",
    "reduce",
    "row_scale",
    "target_gradient",
]

#: Entries per block of rows on NumPy and torch (8 MiB of float64 per temporary).
BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Problem:
    """A validated cross-entropy problem in row form."""

    x: Array  # (N, K) logits
    labels: Any  # None, or (N,) int64 class indices in [0, K) (ignored and bad rows hold 0)
    probs: Any  # None, or (N, K) probability targets
    mask: Array | None  # (N, K) bool, True = the class takes part
    weight: Array | None  # (K,) per-class weights
    keep: Array | None  # (N,) bool, False for rows whose label is `ignore_index`
    bad: Array | None  # (N,) bool, out-of-range labels that could not be checked eagerly
    temperature: Temperature  # a positive finite float, or an (N, 1) array
    softcap: float | None
    label_smoothing: float
    z_loss: float
    logit_l2: float
    reduction: str


@dataclass
class RowStats:
    """What backward needs from forward: O(N) per-row statistics.

    ``top`` and ``log_s`` are ``None`` when the kernel computed the forward pass (its backward
    computes them again, or the kernel does the whole gradient).  The shift itself is not kept:
    it is the softcapped logit at ``top``, read again in backward.
    """

    loss: Any  # (N,) per-row loss (0 on rows that do not count), or None
    top: Any  # (N, 1) the index of the row max of softcap(x), the shift, or None
    log_s: Any  # (N, 1) log Σ exp(q) (0 on special rows), or None
    total_w: Any  # (N, 1) Σ_c W_ic, or None
    counted: Array  # (N,) bool: the row counts (not ignored, not fully masked)
    special: Array | None  # (N,) bool: a NaN, a +inf, or nothing finite (None: no such row)
    denom: Array  # () the mean's denominator


def cast(pb: Problem, acc: Any, xp: Any) -> Problem:
    """The problem with its logits and probability targets in the accumulation dtype."""
    probs = None if pb.probs is None else astype(pb.probs, acc, xp)
    return replace(pb, x=astype(pb.x, acc, xp), probs=probs)


# --------------------------------------------------------------------------------------------
# rows that count, and the reduction: the one rule of every loss
# --------------------------------------------------------------------------------------------


def counted_rows(pb: Problem, xp: Any) -> Array:
    """Rows that count: not ignored and not fully masked, ``(N,)``."""
    n, k = pb.x.shape
    if pb.mask is not None:
        counted = xp.any(pb.mask, axis=-1)
    else:
        counted = xp.full((n,), k > 0, dtype=xp.bool, device=array_api_compat.device(pb.x))
    if pb.keep is not None:
        counted = counted & pb.keep
    return counted


def denominator(pb: Problem, counted: Array, xp: Any) -> Array:
    """The mean's denominator: ``Σ weight[target]`` over the counted rows for weighted integer
    targets (PyTorch's weighted mean), else the number of counted rows."""
    if pb.probs is None and pb.weight is not None:
        wt = xp.take(pb.weight, pb.labels, axis=0)
        return xp.sum(xp.where(counted, wt, 0.0))
    return xp.sum(astype(counted, pb.x.dtype, xp))


def reduce(loss: Array, reduction: str, denom: Array | float, xp: Any) -> Array:
    """``"none"`` → the per-row losses; ``"sum"``; ``"mean"`` → the sum over ``denom``.

    A mean over nothing (``denom == 0``: every row ignored, or zero total weight) is 0, not NaN
    as in PyTorch: the loss of an empty batch adds nothing, and its gradient is 0.
    """
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    return total if reduction == "sum" else _over(total, denom, xp)


def row_scale(counted: Array, reduction: str, denom: Array | float, g: Any, xp: Any) -> Array:
    """``∂(reduced loss)/∂loss_i`` times the upstream cotangent ``g``, as ``(N, 1)``; 0 in rows
    that do not count, and everywhere when a mean has nothing to divide by."""
    if reduction == "mean":
        g = _over(g, denom, xp)
    return (astype(counted, g.dtype, xp) * g)[:, None]


def _over(value: Any, denom: Array | float, xp: Any) -> Any:
    """``value / denom``, and 0 where ``denom`` is 0 (a mean over nothing)."""
    if isinstance(denom, (int, float)):
        if denom > 0:
            return value / denom
        # exactly 0, also when ``value`` is infinite (a row whose z-loss overflows)
        if isinstance(value, (int, float, np.generic)):  # Python and NumPy scalars keep their type
            return type(value)(0.0)
        return xp.zeros_like(value)
    if (isinstance(value, np.ndarray) and value.ndim and isinstance(denom, (np.ndarray, np.generic))
            and not np.ndim(denom)):
        # A NumPy denominator decides here, not by a `where` over every row (the same values).
        return value / denom if bool(np.greater(denom, 0)) else np.zeros_like(value)
    return xp.where(denom > 0, value / xp.where(denom > 0, denom, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# the target and its weights
# --------------------------------------------------------------------------------------------


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
        iota = xp.arange(x.shape[-1], device=array_api_compat.device(x))
        y = xp.where(iota == pb.labels[:, None], 1.0 - eps, xp.zeros_like(x))
    if eps > 0.0:
        kv = n_valid(pb, xp)
        share = eps / (kv if isinstance(kv, int) else xp.where(kv > 0, kv, 1.0))
        y = y + (share if pb.mask is None else xp.where(pb.mask, share, 0.0))
    if pb.weight is not None:
        y = y * pb.weight
    return y


def label_weight(pb: Problem, xp: Any) -> Array | float:
    """``weight[target]`` per row, ``(N, 1)`` (1.0 without weights)."""
    if pb.weight is None:
        return 1.0
    return xp.take(pb.weight, pb.labels, axis=0)[:, None]


# --------------------------------------------------------------------------------------------
# blocks of rows
# --------------------------------------------------------------------------------------------


def _blocks(pb: Problem, xp: Any) -> list[tuple[int, int]]:
    """Row ranges of about :data:`BLOCK_ELEMENTS` entries (NumPy and torch), else one range."""
    n, k = pb.x.shape
    if not (is_numpy(xp) or is_torch(xp)) or n * k <= BLOCK_ELEMENTS:
        return [(0, n)]
    rows = max(1, BLOCK_ELEMENTS // max(k, 1))
    return [(r0, min(r0 + rows, n)) for r0 in range(0, n, rows)]


def _slice(a: Any, r0: int, r1: int) -> Any:
    return a if a is None or isinstance(a, float) else a[r0:r1, ...]


def _part(pb: Problem, r0: int, r1: int) -> Problem:
    """Rows ``r0:r1`` of the problem."""
    if (r0, r1) == (0, int(pb.x.shape[0])):
        return pb
    return replace(pb, x=pb.x[r0:r1, :], labels=_slice(pb.labels, r0, r1),
                   probs=_slice(pb.probs, r0, r1), mask=_slice(pb.mask, r0, r1),
                   keep=_slice(pb.keep, r0, r1), bad=_slice(pb.bad, r0, r1),
                   temperature=_slice(pb.temperature, r0, r1))


def _concat(parts: list[Any], xp: Any) -> Any:
    if parts[0] is None:
        return None
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


def forward(pb: Problem, xp: Any, *, counted: Array | None = None,
            denom: Array | None = None) -> RowStats:
    """Per-row losses and the row statistics backward needs, on the generic path.

    The expression is safe for the backend's own autodiff (a straight-through term for the
    dominant exponential, sanitised inputs everywhere): torch and JAX differentiate it where no
    adapter applies, and for higher derivatives.
    """
    if counted is None:
        counted = counted_rows(pb, xp)
    if denom is None:
        denom = denominator(pb, counted, xp)
    parts = [_forward_block(_part(pb, r0, r1), counted[r0:r1], xp)
             for r0, r1 in _blocks(pb, xp)]
    loss, top, log_s, total_w, specials = (list(p) for p in zip(*parts, strict=True))
    special = None
    if any(s is not None for s in specials):
        special = _concat([xp.zeros_like(c) if s is None else s
                           for s, c in zip(specials, (counted[r0:r1] for r0, r1 in
                                                      _blocks(pb, xp)), strict=True)], xp)
    return RowStats(_concat(loss, xp), _concat(top, xp), _concat(log_s, xp),
                    _concat(total_w, xp), counted, special, denom)


def _forward_block(pb: Problem, counted: Array, xp: Any) -> tuple[Any, ...]:
    x = pb.x
    n, k = x.shape
    sh = _shift(x, pb.mask, pb.softcap, pb.temperature, xp)
    nz = _normalise(sh.q, sh.nan, xp, shifted=sh)
    d, log_s = nz.d, nz.log_s
    w = target_weights(pb, xp)
    if w is None:
        total_w = label_weight(pb, xp)
        if isinstance(total_w, float):
            total_w = xp.full((n, 1), total_w, dtype=x.dtype, device=array_api_compat.device(x))
        d_t = xp.take_along_axis(d, pb.labels[:, None], axis=-1) if k else xp.zeros_like(total_w)
        # 0·(−inf) = 0: a class of weight 0 contributes nothing, even at probability 0.
        cross = total_w * xp.where(total_w > 0, d_t, 0.0)
    else:
        total_w = xp.sum(w, axis=-1, keepdims=True)
        cross = xp.sum(w * xp.where(w > 0, d, 0.0), axis=-1, keepdims=True)
    over = cross == -math.inf
    if _may(over, xp):
        cross = xp.where(over, _cross_beyond_range(pb, sh.m, w, total_w, xp), cross)
    loss = total_w * log_s - cross
    special = None
    if nz.special:
        rows = sh.nan | sh.pos | sh.neg
        loss = xp.where(rows, _special_ce(pb, nz, w, total_w, xp), loss)
        special = rows[:, 0]
    if pb.z_loss > 0.0:
        root = _lse_times(sh.m, log_s, pb.temperature, math.sqrt(pb.z_loss), xp)  # √c · lse
        if nz.special:
            root = xp.where(sh.pos, math.inf, xp.where(sh.neg, -math.inf, root))
            root = xp.where(sh.nan, math.nan, root)
        loss = loss + root * root
    if pb.logit_l2 > 0.0:
        xs = x if pb.mask is None else xp.where(pb.mask, x, 0.0)
        loss = loss + (0.5 * pb.logit_l2) * xp.sum(xs * xs, axis=-1, keepdims=True)
    if pb.bad is not None:
        loss = xp.where(pb.bad[:, None], math.nan, loss)
    loss = xp.where(counted[:, None], loss, 0.0)
    return loss[:, 0], sh.top, log_s, total_w, special


def _cross_beyond_range(pb: Problem, m: Array, w: Array | None, total_w: Array, xp: Any) -> Array:
    """``Σ_c W_c·(x_c − m)/T`` for rows where a term ``(x_c − m)/T`` overflowed the working dtype
    while the weighted sum need not (float32 ``[−3e38, 1e-38, 1e-38]`` at T = 0.5 with label
    smoothing 1: each term is −6e38, the sum with weights 1/3 is −2e38).  The differences are
    halved (``x/2 − m/2`` cannot overflow), weighted and summed, divided by T, then doubled: the
    result overflows only where the exact sum does.  A −inf logit or a masked class with target
    weight keeps the sum −inf (the loss is then infinite), as in ``q``."""
    x = pb.x
    if pb.softcap is not None:
        x = pb.softcap * xp.tanh(x / pb.softcap)
    with np.errstate(over="ignore", invalid="ignore"):
        half = x * 0.5 - m * 0.5
        if pb.mask is not None:
            half = xp.where(pb.mask, half, -math.inf)
        if w is None:
            s = total_w * xp.take_along_axis(half, pb.labels[:, None], axis=-1)
        else:
            s = xp.sum(xp.where(w > 0, w * half, 0.0), axis=-1, keepdims=True)
        return _sink_shift(s, pb.temperature, xp) * 2.0


def _lse_times(m: Array, log_s: Array, t: Temperature, s: float, xp: Any) -> Array:
    """``s · lse = s·m/T + s·log s``, in an order that overflows only where the product does:
    ``lse`` itself may not fit the working dtype (``m/T = 6e38`` for ``[3e38, 0]`` at T = 0.5
    in float32) while the z-loss's ``2c·lse`` and ``√c·lse`` do."""
    with np.errstate(over="ignore"):
        head = _sink_shift(m * s, t, xp) if s <= 1.0 else _sink_shift(m, t, xp) * s
        return head + s * log_s


def _special_ce(pb: Problem, nz: Any, w: Array | None, total_w: Array, xp: Any) -> Array:
    """Cross-entropy on rows with a +inf (``p = 1/k`` there), nothing finite, or a NaN."""
    posinf, k_inf = nz.posinf, nz.n_posinf
    log_k = xp.log(xp.where(k_inf > 0, k_inf, 1.0))
    if w is None:
        on_inf = xp.take_along_axis(posinf, pb.labels[:, None], axis=-1)
        off = xp.where(on_inf, 0.0, total_w)
    else:
        off = xp.sum(xp.where(posinf, 0.0, w), axis=-1, keepdims=True)
    pos_ce = xp.where(off > 0, math.inf, total_w * log_k)
    # Nothing finite and unmasked: p = 0 everywhere, −log 0 = inf wherever there is target mass.
    neg_ce = xp.where(total_w > 0, math.inf, xp.zeros_like(total_w))
    out = xp.where(nz.pos, pos_ce, xp.where(nz.neg, neg_ce, 0.0))
    return xp.where(nz.nan, math.nan, out)


# --------------------------------------------------------------------------------------------
# gradient
# --------------------------------------------------------------------------------------------


def gradient(pb: Problem, stats: RowStats, scale: Array, xp: Any, *, out: Any = None) -> Array:
    """``∂/∂x`` of ``Σ_i scale_i · loss_i``: ``scale · ([coef·p − W]/T · softcap' + λx)``.

    ``stats`` comes from :func:`forward` (its ``m`` and ``log_s`` are computed here if the
    kernel made the forward pass).  ``out`` is an ``(N, K)`` array that receives the gradient
    (NumPy and torch, outside autodiff).
    """
    if stats.log_s is None:
        stats = forward(pb, xp, counted=stats.counted, denom=stats.denom)
    blocks = _blocks(pb, xp)
    if len(blocks) == 1 and out is None:
        return _gradient_block(pb, stats, scale, xp)
    if out is None:
        out = xp.empty(tuple(pb.x.shape), dtype=pb.x.dtype, device=array_api_compat.device(pb.x))
    for r0, r1 in blocks:
        part = RowStats(None, _slice(stats.top, r0, r1), stats.log_s[r0:r1],
                        stats.total_w[r0:r1], stats.counted[r0:r1],
                        _slice(stats.special, r0, r1), stats.denom)
        out[r0:r1, ...] = _gradient_block(_part(pb, r0, r1), part, scale[r0:r1], xp)
    return out


def _saved_shift(pb: Problem, stats: RowStats, xp: Any) -> tuple[Any, Any]:
    """The core's shifted rows recomputed at the max found by the forward pass (the special rows'
    inputs zeroed first), and those rows (``None`` when there is none)."""
    x = pb.x
    special: Any = stats.special
    if special is None or not _may(special, xp):
        special = None
    else:
        x = xp.where(special[:, None], 0.0, x)
    sh = _shift(x, pb.mask, pb.softcap, pb.temperature, xp, top=stats.top,
                ordinary=stats.special is None)
    return sh, special


def _probabilities(pb: Problem, stats: RowStats, xp: Any) -> tuple[Array, Array]:
    """``p = softmax(q)`` from the saved max and ``log s`` (special rows by their limits), and
    the shift ``m``."""
    sh, special = _saved_shift(pb, stats, xp)
    # e^q / s rather than e^{q − log s}: the rounding of log s (≈ 11.5 at K = 10⁵) would be
    # magnified by exp into every probability.
    p = xp.exp(sh.q) / xp.exp(stats.log_s)
    if special is None:
        return p, sh.m
    rows = special[:, None]
    x = pb.x
    if pb.softcap is not None:  # the softcap maps +inf to c: no row is decided by +inf
        posinf = xp.zeros_like(x, dtype=xp.bool)
    else:
        posinf = x == math.inf
        if pb.mask is not None:
            posinf = posinf & pb.mask
    k_inf = xp.sum(astype(posinf, p.dtype, xp), axis=-1, keepdims=True)
    limit = xp.where(posinf, 1.0 / xp.where(k_inf > 0, k_inf, 1.0), 0.0)
    live = x if pb.mask is None else xp.where(pb.mask, x, 0.0)
    nan = xp.any(xp.isnan(live), axis=-1, keepdims=True)
    limit = xp.where(nan, math.nan, limit)  # all zeros where nothing is finite
    return xp.where(rows, limit, p), sh.m


def _gradient_block(pb: Problem, stats: RowStats, scale: Array, xp: Any) -> Array:
    x = pb.x
    p, m = _probabilities(pb, stats, xp)
    coef = stats.total_w
    if pb.z_loss > 0.0:
        twice = _lse_times(m, stats.log_s, pb.temperature, 2.0 * pb.z_loss, xp)
        if stats.special is not None:
            twice = xp.where(stats.special[:, None], 0.0, twice)
        coef = coef + twice
        if _may(~xp.isfinite(coef), xp):
            # An overflowing coefficient times p = 0 is 0, not inf·0 = NaN.
            gz = xp.where(p > 0, coef, 0.0) * p
        else:
            gz = coef * p
    else:
        gz = coef * p
    w = target_weights(pb, xp)
    if w is None:
        iota = xp.arange(x.shape[-1], device=array_api_compat.device(x))
        gz = xp.where(iota == pb.labels[:, None], gz - label_weight(pb, xp), gz)
    else:
        gz = gz - w
    t = pb.temperature
    if not (isinstance(t, float) and t == 1.0):
        with np.errstate(over="ignore"):
            gz = divide(gz, t, xp) if isinstance(t, float) else gz / t
    xs = x if pb.mask is None else xp.where(pb.mask, x, 0.0)
    if pb.softcap is not None:
        th = xp.tanh(xs / pb.softcap)
        gz = gz * (1.0 - th * th)
    if pb.logit_l2 > 0.0:
        gz = gz + pb.logit_l2 * xs
    if _may(~xp.isfinite(gz), xp):
        # A row that does not contribute (scale 0: a mean over zero total weight, a zero
        # cotangent) has gradient 0, also where its own gradient overflows: not 0·inf = NaN.
        gz = xp.where(scale == 0, 0.0, gz)
    g = gz * scale
    if pb.mask is not None:
        g = xp.where(pb.mask, g, 0.0)
    if _may(~stats.counted, xp):  # ignored rows: exactly 0, whatever an infinite logit gives
        g = xp.where(stats.counted[:, None], g, 0.0)
    if pb.bad is not None:
        g = xp.where(pb.bad[:, None], math.nan, g)
    return g


def target_gradient(pb: Problem, stats: RowStats, scale: Array, xp: Any) -> Array:
    """``∂/∂q`` of ``Σ_i scale_i · loss_i`` for probability targets: ``−(1−ε)·weight·log p``."""
    if stats.log_s is None:
        stats = forward(pb, xp, counted=stats.counted, denom=stats.denom)
    sh, special = _saved_shift(pb, stats, xp)
    g = -(1.0 - pb.label_smoothing) * (sh.q - stats.log_s)
    if pb.weight is not None:
        g = g * pb.weight
    g = g * scale
    if pb.mask is not None:
        g = xp.where(pb.mask, g, 0.0)
    keep = stats.counted[:, None]
    if special is not None:
        keep = keep & ~special[:, None]
    return xp.where(keep, g, 0.0)



# --------------------------------------------------------------------------------------------
# the kernel first, the flagged rows here
# --------------------------------------------------------------------------------------------


def _kernel_problem(pb: Problem, counted: Array, scale: Any, out: Any) -> Any:
    t = pb.temperature
    if not isinstance(t, float) or pb.bad is not None:
        return None
    grad_scale = None
    if scale is not None:
        grad_scale = scale[:, 0] if hasattr(scale, "shape") else float(scale)
    return _kernels.CrossEntropyRows(
        x=pb.x, labels=pb.labels, probs=pb.probs, where=pb.mask, weight=pb.weight,
        counted=counted, label_smoothing=pb.label_smoothing, z_loss=pb.z_loss,
        logit_l2=pb.logit_l2, temperature=t, softcap=pb.softcap, grad_scale=grad_scale, out=out)


def fast_forward(pb: Problem, xp: Any) -> RowStats:
    """:func:`forward` by the kernel where it applies (NumPy, CPU torch), its flagged rows on the
    generic path; ``m`` and ``log_s`` are then ``None``."""
    counted = counted_rows(pb, xp)
    denom = denominator(pb, counted, xp)
    if not (is_numpy(xp) or is_torch(xp)):
        return forward(pb, xp, counted=counted, denom=denom)
    kp = _kernel_problem(pb, counted, None, None)
    res = None if kp is None else _kernels.cross_entropy(kp)
    if res is None:
        return forward(pb, xp, counted=counted, denom=denom)
    loss = res.loss
    special = None
    if res.flagged.any():
        idx = np.flatnonzero(res.flagged)
        sub = _take(pb, idx)
        stats = forward(sub, _numpy(), counted=to_numpy(counted)[idx], denom=0.0)
        loss[idx] = to_numpy(stats.loss)
        special = res.flagged
    with np.errstate(over="ignore"):  # a float64 loss beyond float32's range is inf there
        loss_x = res.as_input(loss.astype(to_numpy(pb.x).dtype))
    special_x = None if special is None else res.as_input(special)
    return RowStats(loss_x, None, None, None, counted, special_x, denom)


def loss_and_gradient(pb: Problem, scale: Array, xp: Any, *, counted: Array,
                      denom: Array | None = None, out: Any = None) -> tuple[Array, Array]:
    """Per-row losses and the gradient of ``Σ scale_i·loss_i``: by the kernel where it applies,
    its flagged rows here; on the generic path otherwise.  ``out`` (``(N, K)``, NumPy or torch)
    receives the gradient and may be ``pb.x`` itself."""
    kp = None
    if is_numpy(xp) or is_torch(xp):
        kp = _kernel_problem(pb, counted, scale, out)
    res = None if kp is None else _kernels.cross_entropy(kp)
    if res is None:
        stats = forward(pb, xp, counted=counted, denom=denom)
        return stats.loss, gradient(pb, stats, scale, xp, out=out)
    loss, g = res.loss, res.grad
    assert g is not None
    if res.flagged.any():
        idx = np.flatnonzero(res.flagged)
        sub = _take(pb, idx)
        npx = _numpy()
        stats = forward(sub, npx, counted=to_numpy(counted)[idx], denom=0.0)
        loss[idx] = to_numpy(stats.loss)
        g[idx] = to_numpy(gradient(sub, stats, to_numpy(scale)[idx], npx))
    dtype = g.dtype
    with np.errstate(over="ignore"):  # a float64 loss beyond float32's range is inf there
        loss_x = res.as_input(loss.astype(dtype))
    if out is not None:
        return loss_x, out
    return loss_x, res.as_input(g)


def _numpy() -> Any:
    return array_api_compat.array_namespace(np.empty(0))


def _take(pb: Problem, idx: np.ndarray) -> Problem:
    """Rows ``idx`` of a NumPy or torch problem, as NumPy arrays (copies)."""
    def rows(a: Any) -> Any:
        if a is None or isinstance(a, float):
            return a
        return np.array(to_numpy(a)[idx])

    t = pb.temperature
    return replace(pb, x=rows(pb.x), labels=rows(pb.labels), probs=rows(pb.probs),
                   mask=rows(pb.mask), weight=None if pb.weight is None else to_numpy(pb.weight),
                   keep=rows(pb.keep), bad=None, temperature=t if isinstance(t, float) else rows(t))



# --------------------------------------------------------------------------------------------
# blocks of columns: a vocabulary split into chunks (linear_cross_entropy) or over ranks
# (vocab_parallel_cross_entropy).  Integer targets, smoothing over the whole vocabulary, z-loss.
# --------------------------------------------------------------------------------------------


def column_loss(lse: Array, z_target: Array, z_sum: Any, *, vocab: int,
                label_smoothing: float, z_loss: float) -> Array:
    """The loss of rows whose ``lse``, target logit and logit sum were gathered over blocks of
    columns: ``lse − (1−ε) z_y − (ε/V) Σ_c z_c + c_z lse²`` (the rules above with ``W`` the
    smoothed one-hot; ``z_sum`` is only read when ``ε > 0``)."""
    eps = label_smoothing
    loss = lse - (1.0 - eps) * z_target
    if eps:
        loss = loss - (eps / vocab) * z_sum
    if z_loss:
        loss = loss + z_loss * (lse * lse)
    return loss


def column_gradient_(g: Array, lse: Array, scale: Any, rows: Array, cols: Array, *,
                     vocab: int, label_smoothing: float, z_loss: float,
                     tanh: Array | None = None) -> None:
    """Turn ``g = exp(z − lse)`` (a block of columns of ``(n, 1)`` rows ``lse``, ``scale``) into
    the gradient of ``Σ scale_i·loss_i`` with respect to the logits before the softcap, in place
    (NumPy arrays or torch tensors the caller owns): ``scale·[(1 + 2c_z lse)·p − W]`` with the
    target columns ``cols`` of rows ``rows`` in this block, times ``1 − tanh²`` for a softcap
    (``tanh`` is overwritten)."""
    eps = label_smoothing
    coef = scale if not z_loss else scale * (1.0 + (2.0 * z_loss) * lse)
    g *= coef
    if eps:
        g -= (eps / vocab) * scale
    if int(rows.shape[0]):
        g[rows, cols] -= (1.0 - eps) * scale[rows, 0]
    if tanh is not None:
        tanh *= tanh
        tanh -= 1.0
        g *= tanh
        g *= -1.0
