"""The cross-entropy as a ``jax.custom_vjp`` with the analytic gradient.

The residuals are the primal inputs plus O(N) row statistics; ``p`` is recomputed in the
backward pass.  Reverse mode (``jax.grad``, ``jax.vjp``, ``jax.jacrev``, also nested) is
supported; forward mode (``jax.jvp``, ``jax.jacfwd``) is not, as for any ``custom_vjp``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

from .. import _ce_rows as ce
from .._ce_rows import Problem, RowStats


def _problem(static: tuple, x: Any, labels: Any, probs: Any, mask: Any, keep: Any,
             bad: Any) -> Problem:
    temperature, softcap, eps, z_loss, logit_l2, reduction, acc = static
    return Problem(
        x=x.astype(acc), labels=labels, probs=None if probs is None else probs.astype(acc),
        mask=mask, weight=None, keep=keep, bad=bad, temperature=temperature, softcap=softcap,
        label_smoothing=eps, z_loss=z_loss, logit_l2=logit_l2, reduction=reduction,
    )


def _xp() -> Any:
    import array_api_compat
    import jax.numpy as jnp

    return array_api_compat.array_namespace(jnp.zeros(0))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce(static: tuple, x: Any, labels: Any, probs: Any, mask: Any, keep: Any, bad: Any) -> Any:
    xp = _xp()
    pb = _problem(static, x, labels, probs, mask, keep, bad)
    stats = ce.forward(pb, xp)
    return ce.reduce(stats.loss, pb.reduction, stats.denom, xp)


def _ce_fwd(static: tuple, x: Any, labels: Any, probs: Any, mask: Any, keep: Any,
            bad: Any) -> Any:
    xp = _xp()
    pb = _problem(static, x, labels, probs, mask, keep, bad)
    # Reverse-over-reverse differentiates this forward and the backward below as ordinary JAX
    # code: the residual log s carries its own derivative (the shift m is a constant).
    stats = ce.forward(pb, xp)
    loss = ce.reduce(stats.loss, pb.reduction, stats.denom, xp)
    residuals = (x, labels, probs, mask, keep, bad, stats.m, stats.top, stats.log_s, stats.total_w,
                 stats.counted, stats.special, stats.denom)
    return loss, residuals


def _ce_bwd(static: tuple, residuals: tuple, g: Any) -> tuple:
    xp = _xp()
    x, labels, probs, mask, keep, bad, m, top, log_s, total_w, counted, special, denom = residuals
    pb = _problem(static, x, labels, probs, mask, keep, bad)
    stats = RowStats(None, m, top, log_s, total_w, counted, special, denom)
    scale = ce.row_scale(counted, pb.reduction, denom, g, xp)
    gx = ce.gradient(pb, stats, scale, xp).astype(x.dtype)
    gprobs = None
    if probs is not None:
        gprobs = ce.target_gradient(pb, stats, scale, xp).astype(probs.dtype)
    return gx, None, gprobs, None, None, None


_ce.defvjp(_ce_fwd, _ce_bwd)


def cross_entropy(pb: Problem, acc: Any) -> Any:
    """Apply the ``custom_vjp`` to a validated problem (weight None, temperature a float)."""
    static = (pb.temperature, pb.softcap, pb.label_smoothing, pb.z_loss, pb.logit_l2,
              pb.reduction, acc)
    return _ce(static, pb.x, pb.labels, pb.probs, pb.mask, pb.keep, pb.bad)


def applies(pb: Problem) -> bool:
    """The adapter covers problems without class weights and with a scalar temperature."""
    return pb.weight is None and isinstance(pb.temperature, float)

