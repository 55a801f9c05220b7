"""Closed-form derivatives of the softmax and of the cross-entropy, from the logits.

The softmax Jacobian is ``J = diag(p) − p pᵀ`` (scaled by ``1/T`` under a temperature); it is
symmetric, so the Jacobian-vector and vector-Jacobian products share one formula,
``p ⊙ (v − ⟨p, v⟩)``, and neither forms ``J``.  The Hessian of the cross-entropy with respect to the
logits is the same matrix, whatever the target.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from ._core import softmax
from ._layout import Axis, from_rows, layout, param_rows, to_rows
from ._namespace import (
    Array,
    ArrayT,
    as_array,
    astype,
    broadcast_shapes,
    check_mask,
    check_positive_scalar_or_array,
    compute_dtypes,
    namespace,
)

__all__ = [
    "cross_entropy_hessian",
    "cross_entropy_hvp",
    "softmax_jacobian",
    "softmax_jvp",
    "softmax_vjp",
]


def _inverse_temperature(temperature: Any, lay: Any, dtype: Any, xp: Any) -> float | Array:
    """``1/T`` per row (0 at the limits T = 0 and T = ∞, where the softmax is locally constant)."""
    t = check_positive_scalar_or_array(temperature, "temperature", xp, allow_zero=True,
                                       allow_inf=True)
    if isinstance(t, float):
        return 0.0 if t in (0.0, math.inf) else 1.0 / t
    rows = param_rows(astype(t, dtype, xp), lay, "temperature", xp)
    limit = (rows == 0) | (rows == math.inf)
    return xp.where(limit, 0.0, 1.0 / xp.where(limit, 1.0, rows))


def _product(x: Any, v: Any, axis: Axis, temperature: Any, where: Any) -> Any:
    xp = namespace(x, v, where, temperature)
    x = as_array(x, "x", xp)
    v = as_array(v, "v", xp)
    acc, out_dtype = compute_dtypes(x, None, xp)
    broadcast_shapes("v", tuple(v.shape), tuple(x.shape))
    lay = layout(tuple(x.shape), axis)
    p = softmax(x, axis=axis, temperature=temperature, where=where, dtype=acc)
    v = xp.broadcast_to(astype(v, acc, xp), tuple(x.shape))
    if where is not None:
        mask = check_mask(where, tuple(x.shape), xp)
        v = xp.where(mask, v, 0.0)
    pr, vr = to_rows(p, lay, xp), to_rows(v, lay, xp)
    out = pr * (vr - xp.sum(pr * vr, axis=-1, keepdims=True))
    out = out * _inverse_temperature(temperature, lay, acc, xp)
    return astype(from_rows(out, lay, xp), out_dtype, xp)


def softmax_jvp(
    x: ArrayT, v: Any, /, *, axis: Axis = -1, temperature: Any = 1.0, where: Any = None
) -> ArrayT:
    r"""Jacobian-vector product of the softmax: ``J v`` without forming ``J``.

    .. math::
        J v = \tfrac{1}{T}\, p \odot (v - \langle p, v\rangle),\qquad p = \operatorname{softmax}(x/T)

    Args:
        x: logits ``(..., K, ...)``.
        v: tangent, broadcastable to ``x``.
        axis: the softmax axis (or tuple of axes).
        temperature: as in :func:`logitkit.softmax`; at ``0`` and ``inf`` the product is 0.
        where: boolean mask; masked entries of ``v`` are ignored and of the result are 0.

    Returns:
        ``J v``, shaped like ``x``.

    Examples:
        >>> import numpy as np
        >>> from logitkit import softmax_jvp
        >>> softmax_jvp(np.zeros(2), np.array([1.0, 0.0]))
        array([ 0.25, -0.25])
    """
    return _product(x, v, axis, temperature, where)


def softmax_vjp(
    x: ArrayT, g: Any, /, *, axis: Axis = -1, temperature: Any = 1.0, where: Any = None
) -> ArrayT:
    r"""Vector-Jacobian product of the softmax, ``Jᵀ g`` (equal to ``J g``: ``J`` is symmetric).

    .. math::
        J^\top g = \tfrac{1}{T}\, p \odot (g - \langle p, g\rangle)

    Args:
        x: logits ``(..., K, ...)``.
        g: cotangent (gradient of a loss with respect to the probabilities), broadcastable to ``x``.
        axis: the softmax axis (or tuple of axes).
        temperature: as in :func:`logitkit.softmax`.
        where: boolean mask; masked entries get a zero gradient.

    Returns:
        The gradient with respect to ``x``, shaped like ``x``.

    Examples:
        >>> import numpy as np
        >>> from logitkit import softmax_vjp
        >>> softmax_vjp(np.zeros(3), np.ones(3))  # the sum of a softmax is constant
        array([0., 0., 0.])
    """
    return _product(x, g, axis, temperature, where)


def softmax_jacobian(
    x: ArrayT, /, *, axis: int = -1, temperature: Any = 1.0, where: Any = None
) -> ArrayT:
    r"""The softmax Jacobian ``diag(p) − p pᵀ`` (over one axis), shape ``(..., K, K)``.

    .. math::
        J_{ij} = \frac{\partial p_i}{\partial x_j} = \tfrac{1}{T}\,(p_i \delta_{ij} - p_i p_j)

    Args:
        x: logits ``(..., K, ...)``.
        axis: the softmax axis (one int); the result puts the other axes first, in order, then
            ``(K, K)``.
        temperature: as in :func:`logitkit.softmax`.
        where: boolean mask; rows and columns of masked entries are 0.

    Returns:
        An array of shape ``batch + (K, K)``: symmetric, positive semi-definite, with the vector
        of ones in its null space.

    Examples:
        >>> import numpy as np
        >>> from logitkit import softmax_jacobian
        >>> softmax_jacobian(np.zeros(2))
        array([[ 0.25, -0.25],
               [-0.25,  0.25]])
    """
    xp = namespace(x, where, temperature)
    x = as_array(x, "x", xp)
    acc, out_dtype = compute_dtypes(x, None, xp)
    lay = layout(tuple(x.shape), axis)
    p = to_rows(softmax(x, axis=axis, temperature=temperature, where=where, dtype=acc), lay, xp)
    eye = xp.eye(lay.k, dtype=acc, device=array_api_compat.device(p))
    jac = p[..., :, None] * eye - p[..., :, None] * p[..., None, :]
    inv_t = _inverse_temperature(temperature, lay, acc, xp)
    if not isinstance(inv_t, float):
        inv_t = inv_t[..., None]
    return astype(xp.reshape(jac * inv_t, (*lay.batch_shape, lay.k, lay.k)), out_dtype, xp)


def cross_entropy_hessian(x: ArrayT, /, *, axis: int = -1, where: Any = None) -> ArrayT:
    r"""Hessian of the cross-entropy ``−Σ y log softmax(x)`` with respect to the logits ``x``.

    .. math::
        \nabla^2_x \operatorname{CE}(x, y) = \operatorname{diag}(p) - p p^\top

    It does not depend on the target ``y`` (which sums to one), equals
    :func:`softmax_jacobian`, and is positive semi-definite with null vector ``1``: the loss is
    convex in the logits and flat along the shift ``x + c·1``.

    Args:
        x: logits ``(..., K, ...)``.
        axis: the class axis (one int).
        where: boolean mask of the classes that take part.

    Returns:
        An array of shape ``batch + (K, K)``.

    Examples:
        >>> import numpy as np
        >>> from logitkit import cross_entropy_hessian
        >>> h = cross_entropy_hessian(np.array([0.5, -1.0, 2.0]))
        >>> bool(np.allclose(h @ np.ones(3), 0.0))
        True
    """
    return softmax_jacobian(x, axis=axis, where=where)


def cross_entropy_hvp(x: ArrayT, v: Any, /, *, axis: Axis = -1, where: Any = None) -> ArrayT:
    r"""Hessian-vector product of the cross-entropy in the logits, ``H v``, without forming ``H``.

    .. math::
        H v = p \odot (v - \langle p, v \rangle)

    Args:
        x: logits ``(..., K, ...)``.
        v: direction, broadcastable to ``x``.
        axis: the class axis (or tuple of axes).
        where: boolean mask of the classes that take part.

    Returns:
        ``H v``, shaped like ``x``.

    Examples:
        >>> import numpy as np
        >>> from logitkit import cross_entropy_hvp
        >>> cross_entropy_hvp(np.zeros(2), np.array([1.0, 1.0]))  # the shift direction
        array([0., 0.])
    """
    return _product(x, v, axis, 1.0, where)
