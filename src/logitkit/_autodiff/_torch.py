"""The cross-entropy as a ``torch.autograd.Function`` with the analytic gradient.

Forward saves the inputs it was given plus O(N) row statistics (the log-sum-exp, the gradient's
coefficient, which rows count, which rows are special) and the mean's denominator; nothing N×K.
For integer targets it works in one N×K buffer, in place; probability targets take the generic row
math (a few N×K temporaries, none kept).  Backward recomputes ``p = exp(z − lse)`` into one fresh
N×K buffer and turns it into the gradient in place, so the peak over forward and backward is the
logits plus one N×K (the gradient itself).  Rows with a NaN, a +inf or nothing finite, and
``create_graph=True``, take the generic (differentiable) formulas instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .. import _kernels
from . import _ce_rows as rows
from ._ce_rows import Problem, RowStats


class CrossEntropyFunction(torch.autograd.Function):
    """``loss = reduce(cross_entropy_rows(x, probs; spec))`` for ``x`` of shape ``(N, K)``."""

    @staticmethod
    def forward(ctx: Any, x: Any, probs: Any, spec: Problem, acc: Any, xp: Any) -> Any:
        pb = replace(spec, x=x.to(acc), probs=None if probs is None else probs.to(acc))
        # CPU tensors: the fused kernel through zero-copy NumPy views (None if it does not apply).
        stats = _kernels.torch_cross_entropy_forward(pb)
        if stats is None:
            stats = _lean_forward(pb, xp) if pb.probs is None else None
        if stats is None:
            stats = rows.forward(pb, xp, differentiable=False)
        loss = rows.reduce(stats, spec.reduction, xp)
        ctx.spec = replace(spec, x=None, probs=None)
        ctx.acc = acc
        ctx.xp = xp
        ctx.save_for_backward(x, probs, stats.lse, stats.coef, stats.counted, stats.special,
                              stats.denom)
        return loss

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        x, probs, lse, coef, counted, special, denom = ctx.saved_tensors
        xp, acc = ctx.xp, ctx.acc
        pb = replace(ctx.spec, x=x.to(acc), probs=None if probs is None else probs.to(acc))
        if torch.is_grad_enabled():
            # create_graph=True: recompute the statistics differentiably for higher derivatives.
            stats = rows.forward(pb, xp, differentiable=True)
        else:
            stats = RowStats(None, lse, coef, counted, special, denom)
        scale = rows.row_scale(stats, pb.reduction, g, xp)
        gx = gprobs = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled() or bool(special.any()):
                gx = rows.gradient(pb, stats, scale, xp)
            else:
                gx = _kernels.torch_cross_entropy_gradient(pb, stats, scale)
                if gx is None:
                    gx = _lean_gradient(pb, stats, scale, xp)
            gx = gx.to(x.dtype)
        if probs is not None and ctx.needs_input_grad[1]:
            gprobs = rows.target_gradient(pb, stats, scale, xp).to(probs.dtype)
        return gx, gprobs, None, None, None


def _lean_forward(pb: Problem, xp: Any) -> RowStats | None:
    """The forward pass for integer targets in one N×K buffer, written in place; ``None``
    when a row has a NaN, a +inf or nothing finite (the generic path handles those)."""
    x = pb.x
    keep_out = None if pb.mask is None else ~pb.mask
    owned = keep_out is not None or pb.softcap is not None or not (
        isinstance(pb.temperature, float) and pb.temperature == 1.0)
    z = rows.scaled_logits(pb, xp) if owned else x
    m, top = z.max(dim=-1, keepdim=True)
    if not bool(torch.isfinite(m).all()):
        return None
    d = z.sub_(m) if owned else z - m
    del z
    eps = pb.label_smoothing
    wt = rows.label_weight(pb, xp)
    wt = torch.full_like(m, wt) if isinstance(wt, float) else wt
    d_t = d.gather(1, pb.labels[:, None])
    cross = (1.0 - eps) * wt * torch.where(wt > 0, d_t, 0.0)
    total_w = (1.0 - eps) * wt
    if eps > 0.0:
        kv = rows.n_valid(pb, xp)
        kv = kv if isinstance(kv, int) else torch.where(kv > 0, kv, 1.0)
        drop = keep_out
        if pb.weight is not None and bool((pb.weight == 0).any()):
            zero_w = (pb.weight == 0)[None, :]
            drop = zero_w if drop is None else drop | zero_w
        dm = d if drop is None else d.masked_fill(drop, 0.0)
        if pb.weight is not None:
            s_wd = (dm @ pb.weight)[:, None]
            s_w = (pb.weight.sum() if pb.mask is None
                   else (pb.mask.to(d.dtype) @ pb.weight)[:, None])
        else:
            s_wd = dm.sum(dim=-1, keepdim=True)
            s_w = kv
        del dm
        cross = cross + (eps / kv) * s_wd
        total_w = total_w + (eps / kv) * s_w
    # log1p of the sum without one arg-max term (exactly 1); tied maxima stay in as 1 each.
    e = d.exp_().scatter_(1, top, 0.0)
    log_s = torch.log1p(e.sum(dim=-1, keepdim=True))
    del e, d
    ce = total_w * log_s - cross
    sum_sq = None
    if pb.logit_l2 > 0.0:
        xs = x if keep_out is None else x.masked_fill(keep_out, 0.0)
        sum_sq = torch.linalg.vecdot(xs, xs)[:, None]
    counted = rows.counted_rows(pb, xp)
    return rows.finish(pb, xp, ce, m + log_s, total_w, counted, sum_sq=sum_sq)


def _lean_gradient(pb: Problem, stats: RowStats, scale: Any, xp: Any) -> Any:
    """The gradient written into one N×K buffer (rows without a NaN, +inf or all −inf).

    ``g = r·(coef·p − W)·softcap' + λ·scale·x`` with the row factor ``r = scale/T``, in as few
    passes over the buffer as the options allow.
    """
    x = pb.x
    keep_out = None if pb.mask is None else ~pb.mask
    temp = pb.temperature
    scaled = not (isinstance(temp, float) and temp == 1.0)
    owned = keep_out is not None or pb.softcap is not None or scaled
    z = rows.scaled_logits(pb, xp) if owned else x  # masked entries at −inf: p = 0 there
    g = z.sub_(stats.lse) if owned else torch.sub(z, stats.lse)
    del z
    g.exp_()
    r = scale / temp if scaled else scale
    g.mul_(stats.coef * r)
    eps = pb.label_smoothing
    w = rows.target_weights(pb, xp) if pb.probs is not None else None
    if w is not None:
        g.addcmul_(w, r, value=-1.0)  # never in place on w: it may be the caller's target
        del w
    else:
        wt = rows.label_weight(pb, xp)
        wt = torch.full_like(stats.lse, wt) if isinstance(wt, float) else wt
        g.scatter_add_(1, pb.labels[:, None], -(1.0 - eps) * wt * r)
        if eps > 0.0:
            kv: Any = rows.n_valid(pb, xp)
            if keep_out is not None:
                share = eps / torch.where(kv > 0, kv, torch.ones_like(kv)) * r
                share = torch.where(keep_out, 0.0, share if pb.weight is None
                                    else share * pb.weight)
                g.sub_(share)
                del share
            elif pb.weight is not None:
                g.addcmul_(r, pb.weight[None, :], value=-eps / kv)
            else:
                g.sub_(r * (eps / kv))
    if pb.softcap is not None:
        xs = x if keep_out is None else x.masked_fill(keep_out, 0.0)
        t = torch.tanh(xs / pb.softcap)
        del xs
        g.mul_(t.mul_(t).neg_().add_(1.0))
        del t
    if pb.logit_l2 > 0.0:
        xs = x if keep_out is None else x.masked_fill(keep_out, 0.0)
        g.addcmul_(xs, scale, value=pb.logit_l2)
        # Ignored rows have scale 0, but an infinite logit there would make 0·inf = NaN.
        g.masked_fill_(~stats.counted[:, None], 0.0)
    return g


def cross_entropy(pb: Problem, acc: Any, xp: Any) -> Any:
    """Apply :class:`CrossEntropyFunction` to a validated problem (rows in the input dtype)."""
    spec = replace(pb, x=None, probs=None)
    return CrossEntropyFunction.apply(pb.x, pb.probs, spec, acc, xp)


def applies(pb: Problem, weight: Any, temperature: Any, target: Any, logits: Any) -> bool:
    """Use the adapter when gradients flow to the logits or probability targets only."""
    if not torch.is_grad_enabled():
        return False
    wants = bool(getattr(logits, "requires_grad", False)) or (
        pb.probs is not None and bool(getattr(target, "requires_grad", False)))
    constants = not any(bool(getattr(a, "requires_grad", False)) for a in (weight, temperature))
    return wants and constants
