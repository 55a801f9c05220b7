"""softmax, log_softmax, logsumexp and entropy: exact on every edge case, on any array library.

Every function here reduces over one or more axes.  Internally the reduced axes are moved to the end
and flattened into one axis of length K ("rows"), so the math below only ever reduces over ``-1``.

The computation order is the one of DESIGN §2: softcap ``c·tanh(x/c)`` → divide by the temperature →
mask → shift by the (constant) row max → exponentiate → normalise.  Rows that the shifted formula
cannot handle (a NaN, a +inf, nothing unmasked) are computed apart and selected with ``where``; their
inputs to the ordinary path are replaced by zeros first, so no NaN or inf reaches any derivative
(the "double where" rule: sanitise the input of an op, not only its output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from . import _kernels
from ._namespace import (
    Array,
    LogitkitTypeError,
    as_array,
    astype,
    broadcast_shapes,
    check_mask,
    check_number,
    check_positive_scalar_or_array,
    compute_dtypes,
    expected,
    namespace,
    normalize_axis,
    stop_gradient,
)

__all__ = ["entropy", "log_softmax", "logsumexp", "softmax"]

Axis = int | Sequence[int]


# --------------------------------------------------------------------------------------------
# layout: reduced axes last, flattened
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    shape: tuple[int, ...]  # original shape
    axes: tuple[int, ...]  # reduced axes (sorted, non-negative)
    perm: tuple[int, ...] | None  # permutation that moves them last (None: already last)
    batch_shape: tuple[int, ...]
    k: int

    @property
    def reduced_keepdims(self) -> tuple[int, ...]:
        return tuple(1 if i in self.axes else n for i, n in enumerate(self.shape))


def _layout(shape: tuple[int, ...], axis: Axis) -> _Layout:
    axes = normalize_axis(axis, len(shape))
    ndim = len(shape)
    batch_axes = tuple(a for a in range(ndim) if a not in axes)
    perm = batch_axes + axes
    batch_shape = tuple(shape[a] for a in batch_axes)
    k = math.prod(shape[a] for a in axes)
    return _Layout(shape, axes, None if perm == tuple(range(ndim)) else perm, batch_shape, k)


def _to_rows(x: Array, lay: _Layout, xp: Any) -> Array:
    if lay.perm is not None:
        x = xp.permute_dims(x, lay.perm)
    if len(lay.axes) != 1:
        x = xp.reshape(x, (*lay.batch_shape, lay.k))
    return x


def _from_rows(y: Array, lay: _Layout, xp: Any) -> Array:
    if len(lay.axes) != 1:
        y = xp.reshape(y, (*lay.batch_shape, *(lay.shape[a] for a in lay.axes)))
    if lay.perm is not None:
        inverse = [0] * len(lay.perm)
        for i, p in enumerate(lay.perm):
            inverse[p] = i
        y = xp.permute_dims(y, tuple(inverse))
    return y


def _reduced(y: Array, lay: _Layout, keepdims: bool, xp: Any) -> Array:
    """A per-row result of shape ``batch_shape + (1,)`` reshaped to the reduced shape."""
    if keepdims:
        return xp.reshape(y, lay.reduced_keepdims)
    return xp.reshape(y, lay.batch_shape)


def _param_rows(value: Array, lay: _Layout, arg: str, xp: Any) -> Array:
    """A per-row parameter (temperature, sink) given for the reduced shape, as ``batch + (1,)``."""
    shape = tuple(value.shape)
    # Accept either the reduced shape (axes removed) or the keepdims shape.
    if len(shape) == len(lay.shape):
        broadcast_shapes(arg, shape, lay.reduced_keepdims)
        value = xp.broadcast_to(value, lay.reduced_keepdims)
        value = _to_rows(value, _Layout(lay.reduced_keepdims, lay.axes, lay.perm,
                                        lay.batch_shape, 1), xp)
        return value
    broadcast_shapes(arg, shape, lay.batch_shape)
    value = xp.broadcast_to(value, lay.batch_shape)
    return xp.reshape(value, (*lay.batch_shape, 1))


def _const(value: float, like: Array, xp: Any) -> Array:
    return xp.asarray(value, dtype=like.dtype, device=array_api_compat.device(like))


# --------------------------------------------------------------------------------------------
# preparation: validation, softcap, temperature, mask, sink
# --------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Logits as rows, ready to normalise."""

    z: Array  # (*batch, K[+1]) working dtype; excluded entries are -inf
    nan: Array  # (*batch, 1) bool: an unmasked NaN (or a NaN parameter) in the row
    lay: _Layout
    out_dtype: Any
    has_sink: bool


def _validate_softcap(softcap: object) -> float | None:
    if softcap is None:
        return None
    return check_number(softcap, "softcap", low=0.0, low_open=True, high=math.inf, high_open=True)


def _prepare(
    x: Any,
    *,
    axis: Axis,
    temperature: Any,
    where: Any,
    softcap: Any,
    sink: Any,
    dtype: Any,
) -> tuple[_Rows, Any]:
    xp = namespace(x, where, temperature, sink)
    x = as_array(x, "x", xp)
    acc, out_dtype = compute_dtypes(x, dtype, xp)
    lay = _layout(tuple(x.shape), axis)
    cap = _validate_softcap(softcap)
    temp = check_positive_scalar_or_array(temperature, "temperature", xp, allow_zero=True,
                                          allow_inf=True)
    mask = None if where is None else check_mask(where, tuple(x.shape), xp)

    x = astype(x, acc, xp)
    rows = _to_rows(x, lay, xp)
    mrows = None if mask is None else _to_rows(mask, lay, xp)
    if mrows is not None:
        # Sanitise masked entries first: nothing from them reaches a value or a gradient.
        rows = xp.where(mrows, rows, _const(0.0, rows, xp))
    if cap is not None:
        rows = cap * xp.tanh(rows / cap)

    nan = xp.isnan(rows)
    if mrows is not None:
        nan = nan & mrows
    nan_row = xp.any(nan, axis=-1, keepdims=True)

    has_sink = sink is not None
    rows, shift = _apply_temperature(rows, temp, mrows, lay, xp, sink_shift=has_sink)
    if mrows is not None:
        rows = xp.where(mrows, rows, _const(-math.inf, rows, xp))

    if has_sink:
        s = as_array(sink, "sink", xp) if not isinstance(sink, (int, float)) else sink
        if isinstance(s, (int, float)):
            if isinstance(s, bool):
                raise LogitkitTypeError(expected("sink", "a real number or array", sink))
            col = xp.full((*lay.batch_shape, 1), float(s), dtype=acc,
                          device=array_api_compat.device(rows))
        else:
            col = _param_rows(astype(s, acc, xp), lay, "sink", xp)
            col = xp.broadcast_to(col, (*lay.batch_shape, 1))
        nan_row = nan_row | xp.isnan(col)
        if shift is not None:
            # The sink is a logit on the scale of x/T (not divided by T): give it the same shift.
            col = xp.where(xp.isinf(col), col, col - shift)
        rows = xp.concat([rows, col], axis=-1)
    return _Rows(rows, nan_row, lay, out_dtype, has_sink), xp


def _apply_temperature(
    rows: Array, temp: float | Array, mask: Array | None, lay: _Layout, xp: Any, *,
    sink_shift: bool,
) -> tuple[Array, Array | None]:
    """``(rows − m)/T`` and, if asked, the shift ``m/T`` it took off (``None`` when T = 1).

    ``m`` is the row max over unmasked non-NaN entries (a constant for differentiation, 0 when it
    is not finite).  Shifting *before* dividing keeps ``x/T`` from overflowing when T is small or
    ``x`` huge (``[2e9, 3e9] / 1e-30`` in float32 would be ``[inf, inf]``, a wrong tie); the
    softmax is shift-invariant, so only the sink, which is not divided by T, needs the shift too.
    Limits: T = 0 gives 0 on the row max and −inf elsewhere (a one-hot, ties split); T = ∞ gives
    0 on every finite entry (uniform).  ±inf and NaN entries pass through unchanged.
    """
    if isinstance(temp, float) and temp == 1.0:
        return rows, None
    neg_inf = _const(-math.inf, rows, xp)
    zero = _const(0.0, rows, xp)
    live = rows if mask is None else xp.where(mask, rows, neg_inf)
    m = xp.max(xp.where(xp.isnan(live), neg_inf, live), axis=-1, keepdims=True)
    m = stop_gradient(m, xp)
    finite_m = xp.isfinite(m)
    m_safe = xp.where(finite_m, m, zero)
    # A row with a +inf is decided by its +inf entries: zero its finite ones so that dividing
    # them by a tiny T cannot overflow into new +infs.
    d = xp.where(finite_m | ~xp.isfinite(rows), rows - m_safe, zero)
    fmax = float(xp.finfo(rows.dtype).max)
    if isinstance(temp, float):
        if temp == 0.0:
            return _zero_temperature(d, xp), _zero_temperature_shift(m, sink_shift, xp)
        if temp == math.inf:
            return _infinite_temperature(d, xp), (zero if sink_shift else None)
        t = _const(temp, rows, xp)
        shift = _divide(m_safe, t, fmax, xp) if sink_shift else None
        return _divide(d, t, fmax, xp), shift
    t = _param_rows(astype(temp, rows.dtype, xp), lay, "temperature", xp)
    is_zero = t == 0
    is_inf = t == math.inf
    t_safe = xp.where(is_zero | is_inf, _const(1.0, t, xp), t)
    out = _divide(d, t_safe, fmax, xp)
    out = xp.where(is_zero, _zero_temperature(d, xp), out)
    out = xp.where(is_inf, _infinite_temperature(d, xp), out)
    if not sink_shift:
        return out, None
    shift = _divide(m_safe, t_safe, fmax, xp)
    shift = xp.where(is_zero, _zero_temperature_shift(m, True, xp), shift)
    return out, xp.where(is_inf, _const(0.0, shift, xp), shift)


def _divide(a: Array, t: Array, fmax: float, xp: Any) -> Array:
    """``a / t`` for ``t > 0``, giving ±inf where the quotient overflows without computing it
    (NumPy would warn), so that results that round to ±inf do so silently and exactly."""
    lim = _const(fmax, a, xp) * xp.minimum(t, _const(1.0, t, xp))
    q = xp.minimum(xp.maximum(a, -lim), lim) / t
    q = xp.where(a < -lim, _const(-math.inf, a, xp), q)
    return xp.where(a > lim, _const(math.inf, a, xp), q)


def _zero_temperature(d: Array, xp: Any) -> Array:
    # The row max (d == 0) wins; constants on both sides, so the limit's derivative is 0.
    win = xp.where(d == 0, _const(0.0, d, xp), d)
    return xp.where(d < 0, _const(-math.inf, d, xp), win)


def _zero_temperature_shift(m: Array, wanted: bool, xp: Any) -> Array | None:
    """``lim m/T`` as T → 0⁺: ±inf by the sign of the row max, 0 when it is 0."""
    if not wanted:
        return None
    inf = _const(math.inf, m, xp)
    return xp.where(m > 0, inf, xp.where(m < 0, -inf, _const(0.0, m, xp)))


def _infinite_temperature(d: Array, xp: Any) -> Array:
    finite = xp.isfinite(d)
    # 0·d, not a constant 0: the limit's derivative is 0, but the result must stay connected to
    # the graph (torch refuses to backpropagate through an output that does not require grad).
    zero_on_graph = xp.where(finite, d, _const(0.0, d, xp)) * 0.0
    return xp.where(finite, zero_on_graph, stop_gradient(d, xp))


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


@dataclass
class _Normalised:
    d: Array  # z - max (finite garbage in special rows)
    e: Array  # exp(d)
    log_s: Array  # log(sum exp(d)) with the dominant term split off (log1p form), (*batch, 1)
    m: Array  # row max (constant for autodiff), (*batch, 1)
    nan: Array  # row has NaN
    pos: Array  # row has +inf (and no NaN)
    neg: Array  # row has nothing but -inf (and no NaN)
    posinf: Array  # entries equal to +inf
    n_posinf: Array  # their count per row, as the working dtype


def _normalise(z: Array, nan: Array, xp: Any) -> _Normalised:
    neg_inf = _const(-math.inf, z, xp)
    zero = _const(0.0, z, xp)
    z_nonan = xp.where(xp.isnan(z), neg_inf, z)
    m = stop_gradient(xp.max(z_nonan, axis=-1, keepdims=True), xp)
    pos = (m == math.inf) & ~nan
    neg = (m == -math.inf) & ~nan
    special = nan | pos | neg
    m_safe = xp.where(special, zero, m)
    zs = xp.where(special, zero, z_nonan)
    # z − max rounds to −inf when the row spans more than the float range ([3e38, −3e38] in
    # float32); that is the right value, so NumPy (and array_api_strict, built on it) must not warn.
    with np.errstate(over="ignore"):
        d = zs - m_safe
    e = xp.exp(d)
    top = d == 0
    # Blanchard–Higham–Higham: log(sum e) = log1p(sum of the non-dominant terms).  Each tie at
    # the top contributes exactly 1; the straight-through term keeps their derivative (value 0).
    e_rest = xp.where(top, e - stop_gradient(e, xp), e)
    n_top = xp.sum(astype(top, z.dtype, xp), axis=-1, keepdims=True)
    rest = xp.sum(e_rest, axis=-1, keepdims=True) + (n_top - 1)
    log_s = xp.log1p(rest)
    posinf = z == math.inf
    n_posinf = xp.sum(astype(posinf, z.dtype, xp), axis=-1, keepdims=True)
    return _Normalised(d, e, log_s, m, nan, pos, neg, posinf, n_posinf)


def _softmax_rows(n: _Normalised, xp: Any) -> Array:
    p = n.e / xp.exp(n.log_s)
    zero = _const(0.0, p, xp)
    n_safe = xp.where(n.n_posinf > 0, n.n_posinf, _const(1.0, p, xp))
    p = xp.where(n.pos, xp.where(n.posinf, 1.0 / n_safe, zero), p)
    p = xp.where(n.neg, zero, p)
    return xp.where(n.nan, _const(math.nan, p, xp), p)


def _log_softmax_rows(n: _Normalised, xp: Any) -> Array:
    out = n.d - n.log_s
    neg_inf = _const(-math.inf, out, xp)
    n_safe = xp.where(n.n_posinf > 0, n.n_posinf, _const(1.0, out, xp))
    out = xp.where(n.pos, xp.where(n.posinf, -xp.log(n_safe), neg_inf), out)
    out = xp.where(n.neg, neg_inf, out)
    return xp.where(n.nan, _const(math.nan, out, xp), out)


def _lse_rows(n: _Normalised, xp: Any) -> Array:
    m_safe = xp.where(n.pos | n.neg | n.nan, _const(0.0, n.m, xp), n.m)
    out = m_safe + n.log_s
    out = xp.where(n.pos, _const(math.inf, out, xp), out)
    out = xp.where(n.neg, _const(-math.inf, out, xp), out)
    return xp.where(n.nan, _const(math.nan, out, xp), out)


def _drop_sink(y: Array, rows: _Rows) -> Array:
    return y[..., :-1] if rows.has_sink else y


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def softmax(
    x: Any,
    /,
    *,
    axis: Axis = -1,
    temperature: Any = 1.0,
    where: Any = None,
    softcap: float | None = None,
    sink: Any = None,
    dtype: Any = None,
) -> Any:
    r"""Softmax of ``x`` over ``axis``: probabilities that are non-negative and sum to one.

    .. math::
        \operatorname{softmax}(x)_i = \frac{e^{(z_i - m)}}{\sum_j e^{(z_j - m)}},\qquad
        z = \frac{c \tanh(x / c)}{T},\quad m = \max_j z_j

    Args:
        x: logits, any shape ``(..., K, ...)``; NumPy, PyTorch, JAX or any array-API array
            (lists become NumPy).  Integer and boolean input is promoted to the default float.
        axis: the axis (or tuple of axes) that is normalised; tuple axes are treated as one
            flattened axis.
        temperature: a non-negative scalar, or an array broadcastable to the reduced shape
            (``x``'s shape without ``axis``, or with ``axis`` kept as size 1).  ``0`` is the limit
            T → 0⁺ (one-hot on the arg-max, ties split equally); ``inf`` is the limit T → ∞ (uniform
            over the unmasked finite entries).
        where: boolean mask broadcastable to ``x``; ``False`` entries are excluded (probability 0,
            gradient exactly 0, a NaN or inf there is ignored).
        softcap: a positive ``c`` applies ``c·tanh(x/c)`` before the temperature (Gemma 2).
        sink: an extra logit (scalar, or per row like ``temperature``) that joins the
            normalisation and is not returned; ``sink=0.0`` is "softmax off by one".
        dtype: accumulation and output dtype.  float16/bfloat16 input accumulates in float32
            and is returned in its own dtype unless ``dtype`` says otherwise.

    Returns:
        An array of ``x``'s type, shape and device.

    Note:
        Rows with every entry masked or ``-inf`` give all zeros; rows with ``k ≥ 1`` entries equal
        to ``+inf`` give ``1/k`` on those entries; an unmasked NaN makes the whole row NaN; an empty
        axis gives an empty result.  The max is a constant for differentiation, and the
        derivative is finite wherever the value is.

    Examples:
        >>> import numpy as np
        >>> from logitkit import softmax
        >>> softmax(np.array([1.0, 2.0, 3.0])).round(4)
        array([0.09  , 0.2447, 0.6652])
        >>> softmax(np.array([1.0, 1e4, np.inf, np.inf]))
        array([0. , 0. , 0.5, 0.5])
        >>> softmax(np.array([0.0, 5.0]), where=np.array([False, False]))
        array([0., 0.])
        >>> softmax(np.array([1.0, 3.0, 3.0]), temperature=0.0)
        array([0. , 0.5, 0.5])

    References:
        Blanchard, Higham & Higham, "Accurately computing the log-sum-exp and softmax
        functions", IMA J. Numer. Anal. 41 (2021).
    """
    fast = _kernels.softmax_fast(x, axis=axis, temperature=temperature, where=where,
                                 softcap=softcap, sink=sink, dtype=dtype)
    if fast is not None:  # fused CPU kernel (NumPy, CPU torch); same values
        return fast
    rows, xp = _prepare(x, axis=axis, temperature=temperature, where=where, softcap=softcap,
                        sink=sink, dtype=dtype)
    if rows.lay.k == 0 and not rows.has_sink:
        return astype(_from_rows(rows.z, rows.lay, xp), rows.out_dtype, xp)
    p = _drop_sink(_softmax_rows(_normalise(rows.z, rows.nan, xp), xp), rows)
    return astype(_from_rows(p, rows.lay, xp), rows.out_dtype, xp)


def log_softmax(
    x: Any,
    /,
    *,
    axis: Axis = -1,
    temperature: Any = 1.0,
    where: Any = None,
    softcap: float | None = None,
    sink: Any = None,
    dtype: Any = None,
) -> Any:
    r"""Log of the softmax of ``x`` over ``axis``, computed without forming the softmax.

    .. math::
        \log\operatorname{softmax}(x)_i = (z_i - m) - \log\Bigl(1 + \sum_{j \ne j^*} e^{z_j - m}\Bigr)

    Args:
        x: logits ``(..., K, ...)`` (see :func:`softmax`).
        axis: the normalised axis or tuple of axes.
        temperature: as in :func:`softmax` (scalar or per row; ``0`` and ``inf`` are limits).
        where: boolean mask; excluded entries give ``-inf`` and a zero gradient.
        softcap: ``c·tanh(x/c)`` before the temperature.
        sink: extra logit in the normalisation, not returned.
        dtype: accumulation and output dtype (float16/bfloat16 accumulate in float32).

    Returns:
        An array of ``x``'s type and shape.

    Note:
        Fully masked (or all ``-inf``) rows give ``-inf`` everywhere; ``k`` entries at ``+inf`` give
        ``-log k`` there and ``-inf`` elsewhere; an unmasked NaN makes the row NaN.

    Examples:
        >>> import numpy as np
        >>> from logitkit import log_softmax
        >>> log_softmax(np.array([1000.0, 0.0]))
        array([ 0.e+00, -1.e+03])
        >>> log_softmax(np.array([2.0, np.inf, np.inf]))
        array([       -inf, -0.69314718, -0.69314718])

    References:
        Blanchard, Higham & Higham (2021), IMA J. Numer. Anal. 41.
    """
    fast = _kernels.log_softmax_fast(x, axis=axis, temperature=temperature, where=where,
                                     softcap=softcap, sink=sink, dtype=dtype)
    if fast is not None:  # fused CPU kernel (NumPy, CPU torch); same values
        return fast
    rows, xp = _prepare(x, axis=axis, temperature=temperature, where=where, softcap=softcap,
                        sink=sink, dtype=dtype)
    if rows.lay.k == 0 and not rows.has_sink:
        return astype(_from_rows(rows.z, rows.lay, xp), rows.out_dtype, xp)
    out = _drop_sink(_log_softmax_rows(_normalise(rows.z, rows.nan, xp), xp), rows)
    return astype(_from_rows(out, rows.lay, xp), rows.out_dtype, xp)


def logsumexp(
    x: Any,
    /,
    *,
    axis: Axis = -1,
    b: Any = None,
    where: Any = None,
    keepdims: bool = False,
    return_sign: bool = False,
    dtype: Any = None,
) -> Any:
    r"""``log(sum(b * exp(x)))`` over ``axis``, without overflow or needless rounding.

    .. math::
        \operatorname{lse}(x) = m + \operatorname{log1p}\Bigl(\sum_{j \ne j^*} e^{x_j - m}\Bigr),
        \qquad m = \max_j x_j

    Args:
        x: ``(..., K, ...)`` values.
        axis: the reduced axis or tuple of axes.
        b: optional weights broadcastable to ``x`` (SciPy's ``b``); entries with ``b == 0`` are
            ignored, negative weights are allowed.
        where: boolean mask broadcastable to ``x``; ``False`` entries are ignored.
        keepdims: keep the reduced axes with size 1.
        return_sign: return ``(lse, sign)`` where ``sign`` is the sign of the weighted sum, and
            ``lse`` the log of its absolute value.  Without it a negative sum gives NaN.
        dtype: accumulation and output dtype (float16/bfloat16 accumulate in float32).

    Returns:
        The reduced array (or ``(lse, sign)``), of ``x``'s array type.

    Note:
        An empty or fully masked reduction gives ``-inf`` (sign 0); any ``+inf`` gives ``+inf``;
        an unmasked NaN gives NaN.  With ``b``, the log1p refinement is not used (the dominant
        term's weight is arbitrary), so the result is as accurate as ``log`` of the weighted sum.

    Examples:
        >>> import numpy as np
        >>> from logitkit import logsumexp
        >>> float(logsumexp(np.array([1000.0, 1000.0])))
        1000.6931471805599
        >>> float(logsumexp(np.array([0.0, -1e-20])) - np.log(2))
        0.0
        >>> lse, sign = logsumexp(np.array([0.0, 0.0]), b=np.array([1.0, -2.0]), return_sign=True)
        >>> float(lse), float(sign)
        (0.0, -1.0)
    """
    fast = _kernels.logsumexp_fast(x, axis=axis, b=b, where=where, keepdims=keepdims,
                                   return_sign=return_sign, dtype=dtype)
    if fast is not None:  # fused CPU kernel (NumPy, CPU torch); same values
        return fast
    if not isinstance(keepdims, bool):
        raise LogitkitTypeError(expected("keepdims", "a bool", keepdims))
    rows, xp = _prepare(x, axis=axis, temperature=1.0, where=where, softcap=None, sink=None,
                        dtype=dtype)
    lay = rows.lay
    z = rows.z
    if b is None:
        if lay.k == 0:
            out = xp.full((*lay.batch_shape, 1), -math.inf, dtype=z.dtype,
                          device=array_api_compat.device(z))
        else:
            out = _lse_rows(_normalise(z, rows.nan, xp), xp)
        sign = xp.where(out == -math.inf, _const(0.0, out, xp), _const(1.0, out, xp))
        sign = xp.where(xp.isnan(out), _const(math.nan, out, xp), sign)
    else:
        out, sign = _weighted_lse(z, rows.nan, b, x, lay, xp)
        if not return_sign:
            out = xp.where(sign < 0, _const(math.nan, out, xp), out)
    out = astype(_reduced(out, lay, keepdims, xp), rows.out_dtype, xp)
    if return_sign:
        return out, astype(_reduced(sign, lay, keepdims, xp), rows.out_dtype, xp)
    return out


def _weighted_lse(
    z: Array, nan: Array, b: Any, x: Any, lay: _Layout, xp: Any
) -> tuple[Array, Array]:
    b = as_array(b, "b", xp)
    broadcast_shapes("b", tuple(b.shape), lay.shape)
    b = _to_rows(xp.broadcast_to(astype(b, z.dtype, xp), lay.shape), lay, xp)
    if lay.k == 0:
        shape = (*lay.batch_shape, 1)
        dev = array_api_compat.device(z)
        return (xp.full(shape, -math.inf, dtype=z.dtype, device=dev),
                xp.zeros(shape, dtype=z.dtype, device=dev))
    zero = _const(0.0, z, xp)
    # Entries with b == 0 are ignored, a NaN logit there included (as in SciPy): recompute the
    # row's NaN flag from the live entries instead of using the one from the mask alone.
    nan = xp.any(xp.isnan(b) | (xp.isnan(z) & (b != 0)), axis=-1, keepdims=True)
    z = xp.where(b == 0, _const(-math.inf, z, xp), z)
    n = _normalise(z, nan, xp)
    b_safe = xp.where(n.pos | n.neg | n.nan, zero, b)
    s = xp.sum(b_safe * n.e, axis=-1, keepdims=True)
    sign = xp.sign(s)
    abs_s = xp.abs(s)
    abs_safe = xp.where(abs_s == 0, _const(1.0, s, xp), abs_s)
    m_safe = xp.where(n.pos | n.neg | n.nan, zero, n.m)
    out = xp.where(abs_s == 0, _const(-math.inf, s, xp), m_safe + xp.log(abs_safe))
    # Rows with +inf: the sign of the weights on the +inf entries decides; they cancel to NaN.
    s_inf = xp.sum(xp.where(n.posinf, b, zero), axis=-1, keepdims=True)
    inf_sign = xp.sign(s_inf)
    out = xp.where(n.pos, xp.where(s_inf == 0, _const(math.nan, s, xp),
                                   _const(math.inf, s, xp)), out)
    sign = xp.where(n.pos, inf_sign, sign)
    out = xp.where(n.neg, _const(-math.inf, s, xp), out)
    sign = xp.where(n.neg, zero, sign)
    out = xp.where(n.nan, _const(math.nan, s, xp), out)
    sign = xp.where(n.nan, _const(math.nan, s, xp), sign)
    return out, sign


def entropy(
    x: Any,
    /,
    *,
    axis: Axis = -1,
    temperature: Any = 1.0,
    where: Any = None,
) -> Any:
    r"""Shannon entropy (nats) of ``softmax(x)`` over ``axis``, computed from the logits.

    .. math::
        H(p) = -\sum_i p_i \log p_i,\qquad p = \operatorname{softmax}(x / T)

    Args:
        x: logits ``(..., K, ...)``.
        axis: the normalised axis or tuple of axes (reduced away in the result).
        temperature: as in :func:`softmax`.
        where: boolean mask broadcastable to ``x``; excluded entries contribute nothing.

    Returns:
        The reduced array of entropies, of ``x``'s array type.

    Note:
        Entries with probability 0 contribute 0 (``0·log 0 = 0``) in value and gradient; a fully
        masked row has entropy 0; ``k`` entries at ``+inf`` give ``log k``; NaN rows give NaN.

    Examples:
        >>> import numpy as np
        >>> from logitkit import entropy
        >>> float(entropy(np.zeros(4))) == float(np.log(4))
        True
        >>> float(entropy(np.array([0.0, -np.inf])))
        0.0
    """
    rows, xp = _prepare(x, axis=axis, temperature=temperature, where=where, softcap=None,
                        sink=None, dtype=None)
    lay = rows.lay
    if lay.k == 0:
        out = xp.zeros(lay.batch_shape, dtype=rows.z.dtype, device=array_api_compat.device(rows.z))
        return astype(out, rows.out_dtype, xp)
    n = _normalise(rows.z, rows.nan, xp)
    p = _softmax_rows(n, xp)
    logp = _log_softmax_rows(n, xp)
    positive = p > 0
    zero = _const(0.0, p, xp)
    terms = xp.where(positive, p * xp.where(positive, logp, zero), zero)
    h = -xp.sum(terms, axis=-1, keepdims=True)
    h = xp.where(n.nan, _const(math.nan, h, xp), h)
    return astype(_reduced(h, lay, False, xp), rows.out_dtype, xp)
