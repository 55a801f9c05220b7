"""The cross-entropy as a ``torch.autograd.Function`` with the analytic gradient.

Forward saves the inputs it was given plus O(N) row statistics (the shift and ``log s`` of each
row, which rows count, which rows are special) and the mean's denominator; nothing N×K.  Both
passes are :mod:`logitkit._ce_rows`: on CPU tensors its fused kernel (whose forward keeps only
the per-row losses; backward then runs the kernel again for the gradient), elsewhere its generic
rows in blocks, so the temporaries of either pass are bounded by a block and the peak over
forward and backward is the logits plus the gradient.  ``create_graph=True`` recomputes the
statistics differentiably and differentiates the generic formulas.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .. import _ce_rows as ce
from .._ce_rows import Problem, RowStats


class CrossEntropyFunction(torch.autograd.Function):
    """``loss = reduce(cross_entropy_rows(x, probs; spec))`` for ``x`` of shape ``(N, K)``."""

    @staticmethod
    def forward(ctx: Any, x: Any, probs: Any, spec: Problem, acc: Any, xp: Any) -> Any:
        pb = replace(spec, x=x.to(acc), probs=None if probs is None else probs.to(acc))
        stats = ce.fast_forward(pb, xp)
        loss = ce.reduce(stats.loss, spec.reduction, stats.denom, xp)
        ctx.spec = replace(spec, x=None, probs=None)
        ctx.acc = acc
        ctx.xp = xp
        ctx.save_for_backward(x, probs, stats.top, stats.log_s, stats.total_w, stats.counted,
                              stats.special, stats.denom)
        return loss

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        x, probs, top, log_s, total_w, counted, special, denom = ctx.saved_tensors
        xp, acc = ctx.xp, ctx.acc
        pb = replace(ctx.spec, x=x.to(acc), probs=None if probs is None else probs.to(acc))
        if torch.is_grad_enabled():
            # create_graph=True: recompute the statistics differentiably for higher derivatives.
            stats = ce.forward(pb, xp)
        else:
            stats = RowStats(None, top, log_s, total_w, counted, special, denom)
        scale = ce.row_scale(stats.counted, pb.reduction, stats.denom, g.to(acc), xp)
        gx = gprobs = None
        if ctx.needs_input_grad[0]:
            if stats.log_s is None and not torch.is_grad_enabled():
                _, gx = ce.loss_and_gradient(pb, scale, xp, counted=stats.counted,
                                             denom=stats.denom)
            else:
                gx = ce.gradient(pb, stats, scale, xp)
            gx = gx.to(x.dtype)
        if probs is not None and ctx.needs_input_grad[1]:
            gprobs = ce.target_gradient(pb, stats, scale, xp).to(probs.dtype)
        return gx, gprobs, None, None, None


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
