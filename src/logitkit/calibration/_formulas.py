"""Calibration figures as functions of the engine's sums (any namespace, any leading axes).

Each function takes per-bin sums with optional leading axes (the bootstrap evaluates a thousand
resampled copies at once: a leading axis ``R``) and returns the figure with the same leading
axes.  Top-label sums have shape ``(..., B)``; class-wise sums ``(..., K, B)``.
"""

from __future__ import annotations

import math
from typing import Any

from .._namespace import Array

__all__ = ["brier_parts", "calibration_error"]


def calibration_error(
    count: Array, s_conf: Array, s_hit: Array, n: Array, *, norm: str, debias: bool,
    classwise: bool, min_count: int, xp: Any,
) -> Array:
    """The binned calibration error from per-bin sums.

    Per column (the top-label column, or each class), l1 is ``Σ_b (n_b/N)|acc_b − conf_b|``, l2
    the square root of ``Σ_b (n_b/N)(acc_b − conf_b)²`` (minus the Kumar et al. bias term with
    ``debias``), max the largest gap over bins holding at least ``min_count`` predictions (NaN
    when none does).  Class-wise columns are combined as the mean (l1), the root of the mean
    square (l2) and the max (max), as in Kumar et al. (2019).  ``n`` has the leading axes only.
    """
    zero = xp.zeros((), dtype=count.dtype)
    one = xp.ones((), dtype=count.dtype)
    nonempty = count > 0
    safe = xp.where(nonempty, count, one)
    gap = xp.where(nonempty, (s_hit - s_conf) / safe, zero)
    if norm == "max":
        used = count >= max(min_count, 1)
        absgap = xp.where(used, xp.abs(gap), -one)
        axes = (-2, -1) if classwise else (-1,)
        worst = xp.max(absgap, axis=axes)
        return xp.where(worst >= 0, worst, math.nan * one)
    nn = xp.reshape(n, (*n.shape, 1, 1) if classwise else (*n.shape, 1))
    weight = count / nn
    if norm == "l1":
        per_col = xp.sum(weight * xp.abs(gap), axis=-1)
        return xp.mean(per_col, axis=-1) if classwise else per_col
    sq = weight * gap * gap
    if debias:
        # Kumar, Liang & Ma (2019): subtract the variance of each bin's mean label,
        # ybar (1 - ybar) / (n_b - 1); bins with fewer than two points contribute nothing.
        ybar = xp.where(nonempty, s_hit / safe, zero)
        two = count >= 2
        denom = xp.where(two, count - 1, one)
        sq = xp.where(two, sq - weight * ybar * (1 - ybar) / denom, zero)
    per_col = xp.maximum(xp.sum(sq, axis=-1), zero)
    return xp.sqrt(xp.mean(per_col, axis=-1) if classwise else per_col)


def brier_parts(
    count: Array, s_p: Array, s_y: Array, s_pp: Array, s_py: Array, n: Array, *,
    classwise: bool, xp: Any,
) -> dict[str, Array]:
    r"""The calibration–refinement decomposition of the Brier score from per-bin moments.

    Within bin ``b`` of a column (``n_b`` predictions, means ``p̄_b`` and ``ȳ_b``),
    ``Σ (p − y)² = n_b (p̄_b − ȳ_b)² + n_b ȳ_b (1 − ȳ_b) + [Σ (p − p̄_b)² − 2 Σ (p − p̄_b)(y − ȳ_b)]``.
    Summed over bins (and classes) and divided by ``N``: ``calibration`` + ``refinement`` +
    ``within_bin`` = ``brier``; ``refinement`` = ``uncertainty`` − ``resolution``.
    """
    zero = xp.zeros((), dtype=count.dtype)
    one = xp.ones((), dtype=count.dtype)
    nonempty = count > 0
    safe = xp.where(nonempty, count, one)
    pbar = xp.where(nonempty, s_p / safe, zero)
    ybar = xp.where(nonempty, s_y / safe, zero)
    axes = (-2, -1) if classwise else (-1,)

    def total(a: Array) -> Array:
        return xp.sum(a, axis=axes) / n

    calibration = total(count * (pbar - ybar) ** 2)
    refinement = total(count * ybar * (1 - ybar))
    within = total((s_pp - count * pbar * pbar) - 2 * (s_py - count * pbar * ybar))
    brier = total(s_pp - 2 * s_py + s_y)
    nn = xp.reshape(n, (*n.shape, 1) if classwise else n.shape)
    rate = xp.sum(s_y, axis=-1) / nn  # per column: the share of rows of the class
    uncertainty = rate * (1 - rate)
    if classwise:
        uncertainty = xp.sum(uncertainty, axis=-1)
    resolution = uncertainty - refinement
    return {"brier": brier, "calibration": calibration, "refinement": refinement,
            "within_bin": within, "resolution": resolution, "uncertainty": uncertainty}
