"""The cross-entropy as a ``jax.custom_vjp`` with the analytic gradient.

The residuals are the primal inputs plus O(N) row statistics; ``p`` is recomputed in the
backward pass.  Reverse mode (``jax.grad``, ``jax.vjp``, ``jax.jacrev``, also nested) is
supported; forward mode (``jax.jvp``, ``jax.jacfwd``) is not, as for any ``custom_vjp``.

Class weights are an input like the logits: their cotangent is JAX's own derivative of the
forward pass with respect to them alone (the logits held constant), so that the weighted mean's
denominator is differentiated too, and the logits' gradient stays the analytic one (JAX's chain
rule through an overflowing z-loss would form inf·0 = NaN where the gradient is 0).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import jax

from .. import _ce_rows as ce
from .._ce_rows import Problem, RowStats


def _problem(static: tuple, x: Any, labels: Any, probs: Any, mask: Any, keep: Any,
             bad: Any, weight: Any) -> Problem:
    temperature, softcap, eps, z_loss, logit_l2, reduction, acc = static
    return Problem(
        x=x.astype(acc), labels=labels, probs=None if probs is None else probs.astype(acc),
        mask=mask, weight=None if weight is None else weight.astype(acc), keep=keep, bad=bad,
        temperature=temperature, softcap=softcap, label_smoothing=eps, z_loss=z_loss,
        logit_l2=logit_l2, reduction=reduction,
    )


def _xp() -> Any:
    import array_api_compat
    import jax.numpy as jnp

    return array_api_compat.array_namespace(jnp.zeros(0))


def _loss(pb: Problem, xp: Any) -> Any:
    stats = ce.forward(pb, xp)
    return ce.reduce(stats.loss, pb.reduction, stats.denom, xp)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce(static: tuple, x: Any, labels: Any, probs: Any, mask: Any, keep: Any, bad: Any,
        weight: Any) -> Any:
    return _loss(_problem(static, x, labels, probs, mask, keep, bad, weight), _xp())


def _ce_fwd(static: tuple, x: Any, labels: Any, probs: Any, mask: Any, keep: Any,
            bad: Any, weight: Any) -> Any:
    xp = _xp()
    pb = _problem(static, x, labels, probs, mask, keep, bad, weight)
    # Reverse-over-reverse differentiates this forward and the backward below as ordinary JAX
    # code: the residual log s carries its own derivative (the max is a constant).
    stats = ce.forward(pb, xp)
    loss = ce.reduce(stats.loss, pb.reduction, stats.denom, xp)
    residuals = (x, labels, probs, mask, keep, bad, weight, stats.top, stats.log_s,
                 stats.total_w, stats.counted, stats.special, stats.denom)
    return loss, residuals


def _ce_bwd(static: tuple, residuals: tuple, g: Any) -> tuple:
    xp = _xp()
    x, labels, probs, mask, keep, bad, weight, top, log_s, total_w, counted, special, denom = (
        residuals)
    pb = _problem(static, x, labels, probs, mask, keep, bad, weight)
    stats = RowStats(None, top, log_s, total_w, counted, special, denom)
    scale = ce.row_scale(counted, pb.reduction, denom, g, xp)
    gx = ce.gradient(pb, stats, scale, xp).astype(x.dtype)
    gprobs = gweight = None
    if probs is not None:
        gprobs = ce.target_gradient(pb, stats, scale, xp).astype(probs.dtype)
    if weight is not None:
        held = replace(pb, x=jax.lax.stop_gradient(pb.x))
        w_acc: Any = pb.weight
        _, pullback = jax.vjp(lambda w: _loss(replace(held, weight=w), xp), w_acc)
        (gweight,) = pullback(g.astype(w_acc.dtype))
        gweight = gweight.astype(weight.dtype)
    return gx, None, gprobs, None, None, None, gweight


_ce.defvjp(_ce_fwd, _ce_bwd)


def cross_entropy(pb: Problem, acc: Any) -> Any:
    """Apply the ``custom_vjp`` to a validated problem (temperature a float)."""
    static = (pb.temperature, pb.softcap, pb.label_smoothing, pb.z_loss, pb.logit_l2,
              pb.reduction, acc)
    return _ce(static, pb.x, pb.labels, pb.probs, pb.mask, pb.keep, pb.bad, pb.weight)


def applies(pb: Problem) -> bool:
    """The adapter covers problems with a scalar temperature."""
    return isinstance(pb.temperature, float)
