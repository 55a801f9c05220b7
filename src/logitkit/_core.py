"""softmax, log_softmax, logsumexp and entropy: exact on every edge case, on any array library.

Every function here reduces over one or more axes.  The arguments are validated once; NumPy and
CPU torch input then goes to a fused kernel when one applies (:mod:`._kernels`), and the rows the
kernel leaves (a NaN, a ``+inf``, nothing finite) come back here.  Everything else is computed on
``(N, K)`` rows (:mod:`._layout`), so the math below only ever reduces over ``-1``.

The computation order is the one of DESIGN §2: softcap ``c·tanh(x/c)`` → shift by the (constant)
row max ``m`` → divide by the temperature → mask → exponentiate → normalise.  Shifting *before*
dividing keeps ``x/T`` from overflowing when T is small or ``x`` huge (``[3e38, 2.9e38] / 0.5`` in
float32 would be ``[inf, inf]``, a wrong tie), and keeps the near-ties of large logits exact
(``(1.0000002 − 1)/1e-10``, not ``1.0000002e10 − 1e10`` rounded to a multiple of 1024).  Above
T = 1 the shift is taken on halves, ``(x/2 − m/2)/(T/2)``, so that a row spanning more than the
float range (``[3e38, −3e38]``) still gives its finite quotient.  A temperature that is not a
normal number of the working dtype (``1e-46`` in float32) is applied as an exact power of two and
a mantissa.

Rows that the shifted formula cannot handle (a NaN, a +inf, nothing unmasked) are computed apart
and selected with ``where``; their inputs to the ordinary path are replaced by zeros first, so no
NaN or inf reaches any derivative (the "double where" rule: sanitise the input of an op, not only
its output).  Whether such rows exist is asked only of arrays whose values can be read, and the
special values (±inf, NaN) enter as Python floats folded into ``where``: an eager JAX call on
finite input creates no infinite or NaN array, so ``jax.debug_infs``/``debug_nans`` stay quiet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, overload

import array_api_compat
import numpy as np

from . import _kernels
from ._layout import Axis, Layout, from_rows, layout, param_rows, reduced, to_rows
from ._namespace import (
    Array,
    ArrayT,
    LogitkitTypeError,
    as_array,
    astype,
    broadcast_shapes,
    check_bool,
    check_mask,
    check_number,
    check_positive_scalar_or_array,
    compute_dtypes,
    expected,
    is_concrete,
    is_numpy,
    is_torch,
    ldexp,
    namespace,
    stop_gradient,
    to_numpy,
)

__all__ = ["entropy", "log_softmax", "logsumexp", "softmax"]

Temperature = float | Array


# --------------------------------------------------------------------------------------------
# validation: once, before any kernel
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """A validated normalisation problem."""

    x: Array  # as given (a numeric array of xp)
    lay: Layout
    acc: Any  # accumulation dtype
    out_dtype: Any
    temperature: Temperature  # a float, or the array as given (the reduced or keepdims shape)
    mask: Array | None  # boolean, broadcast to x's shape
    softcap: float | None
    sink: float | Array | None


def check_softcap(softcap: object) -> float | None:
    """``softcap`` as a positive finite float, or None."""
    if softcap is None:
        return None
    return check_number(softcap, "softcap", low=0.0, low_open=True, high=math.inf, high_open=True)


def _validate(x: Any, *, axis: Axis, temperature: Any, where: Any, softcap: Any, sink: Any,
              dtype: Any) -> tuple[_Problem, Any]:
    xp = namespace(x, where, temperature, sink)
    x = as_array(x, "x", xp)
    acc, out_dtype = compute_dtypes(x, dtype, xp)
    lay = layout(tuple(x.shape), axis)
    cap = check_softcap(softcap)
    temp = check_positive_scalar_or_array(temperature, "temperature", xp, allow_zero=True,
                                          allow_inf=True)
    mask = None if where is None else check_mask(where, tuple(x.shape), xp)
    if sink is not None:
        if isinstance(sink, (bool, np.bool_, str)):
            raise LogitkitTypeError(expected("sink", "a real number or array", sink))
        sink = float(sink) if isinstance(sink, (int, float, np.floating, np.integer)) else (
            as_array(sink, "sink", xp))
    return _Problem(x, lay, acc, out_dtype, temp, mask, cap, sink), xp


def _row_inputs(pb: _Problem, xp: Any) -> tuple[Array, Array | None, Temperature, Array | None]:
    """The problem as rows: ``(N, K)`` logits and mask, the temperature and the sink column."""
    lay = pb.lay
    x = to_rows(astype(pb.x, pb.acc, xp), lay, xp)
    mask = None if pb.mask is None else to_rows(pb.mask, lay, xp)
    t = pb.temperature
    if not isinstance(t, float):
        t = param_rows(astype(t, pb.acc, xp), lay, "temperature", xp)
    sink = pb.sink
    if isinstance(sink, float):
        sink = xp.full((lay.n, 1), sink, dtype=pb.acc, device=array_api_compat.device(x))
    elif sink is not None:
        sink = param_rows(astype(sink, pb.acc, xp), lay, "sink", xp)
    return x, mask, t, sink


# --------------------------------------------------------------------------------------------
# the shift and the temperature
# --------------------------------------------------------------------------------------------


def _may(flags: Array, xp: Any) -> bool:
    """Whether any of ``flags`` may be set: read when the values can be, else assumed (jit)."""
    if not is_concrete(flags):
        return True
    return bool(xp.any(flags))


@dataclass
class _Shifted:
    """Logits as rows shifted by their max and divided by the temperature."""

    q: Array  # (N, K) (softcap(x) − m)/T; masked entries −inf; ±inf and NaN entries kept
    m: Array  # (N, 1) the row max m of softcap(x) in x's units, a constant; 0 where not finite
    top: Array | None  # (N, 1) the index of a max entry (None for K = 0)
    nan: Array  # (N, 1) an unmasked NaN in the row
    pos: Array  # (N, 1) an unmasked +inf (and no NaN)
    neg: Array  # (N, 1) nothing finite unmasked (all −inf, every entry masked, or K = 0)
    special: bool  # whether any row may be one of those three (False when known that none is)


def _shift(x: Array, mask: Array | None, softcap: float | None, t: Temperature, xp: Any, *,
           top: Array | None = None, ordinary: bool = False) -> _Shifted:
    """``(softcap(x) − m)/T`` for ``(N, K)`` rows in the working dtype, with the row flags.

    The max ``m`` is located by its index ``top`` (given: from an earlier call on the same rows,
    which skips the search), and with a softcap its entry is set to exactly 0: XLA contracts
    ``c·tanh(x/c) − m`` into a fused multiply-add, which is not 0 there (and far from it once
    divided by a tiny T).  ``ordinary``: the caller knows that no row holds a NaN, a +inf or
    nothing finite (an earlier call found none), so no row is looked at for them.
    """
    n, k = x.shape
    if mask is not None:
        x = xp.where(mask, x, 0.0)  # nothing from a masked entry reaches a value or a gradient
    if softcap is not None:
        x = softcap * xp.tanh(x / softcap)
    is_nan = None
    if not ordinary:
        is_nan = xp.isnan(x) if mask is None else xp.isnan(x) & mask
    live = x if mask is None else xp.where(mask, x, -math.inf)
    has_nan = k > 0 and is_nan is not None and _may(is_nan, xp)
    if k == 0:
        m = xp.zeros((n, 1), dtype=x.dtype, device=array_api_compat.device(x))
    else:
        candidates = xp.where(is_nan, -math.inf, live) if has_nan else live
        if top is None:
            top = xp.argmax(candidates, axis=-1, keepdims=True)
        m = stop_gradient(xp.take_along_axis(candidates, top, axis=-1), xp)
    if has_nan and is_nan is not None:
        nan = xp.any(is_nan, axis=-1, keepdims=True)
    else:
        nan = xp.zeros((n, 1), dtype=xp.bool, device=array_api_compat.device(x))
    finite_m = xp.isfinite(m)
    if k == 0:
        finite_m = xp.zeros((n, 1), dtype=xp.bool, device=array_api_compat.device(x))
    odd = ~finite_m
    special = n > 0 and not ordinary and (has_nan or _may(odd, xp))
    pos = (m == math.inf) & ~nan
    neg = (odd & ~(m == math.inf)) & ~nan
    if special:
        m = xp.where(finite_m, m, 0.0)
        # A row decided by its +inf entries: zero its finite ones, so that dividing them by a
        # tiny T cannot overflow into new +infs.
        x = xp.where(finite_m | ~xp.isfinite(x), x, 0.0)
    q = _divide_by_temperature(x, m, t, xp)
    if softcap is not None and top is not None:
        at_top = xp.arange(k, device=array_api_compat.device(q)) == top
        q = xp.where(at_top, q - stop_gradient(q, xp), q)  # 0, with q's derivative
    if mask is not None:
        q = xp.where(mask, q, -math.inf)
    return _Shifted(q, m, top, nan, pos, neg, special)


def _divide_by_temperature(x: Array, m: Array, t: Temperature, xp: Any) -> Array:
    """``(x − m)/T`` with the limits T = 0 (0 at the row max, −inf below) and T = ∞ (0 on every
    finite entry); ±inf and NaN entries keep their meaning."""
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(t, float):
            if t == 1.0:
                return x - m
            if t == 0.0:
                return _zero_temperature(x - m, xp)
            if t == math.inf:
                return _infinite_temperature(x, x - m, xp)
            if t > 1.0:
                return divide(x * 0.5 - m * 0.5, t * 0.5, xp)
            return divide(x - m, t, xp)
        # Per row: each limit and the halved shift only where some row needs it (an eager
        # JAX array that holds an inf trips jax.debug_infs even in a branch `where` drops).
        is_zero = t == 0.0
        is_inf = t == math.inf
        zeros, infs = _may(is_zero, xp), _may(is_inf, xp)
        t_safe = xp.where(is_zero | is_inf, 1.0, t) if zeros or infs else t
        wide = t_safe > 1.0
        d = x - m
        q = d / t_safe
        if _may(wide, xp):
            q = xp.where(wide, (x * 0.5 - m * 0.5) / xp.where(wide, t_safe * 0.5, 1.0), q)
        if zeros:
            q = xp.where(is_zero, _zero_temperature(d, xp), q)
        if infs:
            q = xp.where(is_inf, _infinite_temperature(x, d, xp), q)
        return q


def divide(a: Array, t: float, xp: Any) -> Array:
    """``a / t`` for a positive finite Python float ``t``, rounded once (overflow gives ±inf).

    When ``t`` or ``1/t`` is not a normal number of ``a``'s dtype (``t = 1e-46`` in float32 is 0
    there), ``a`` is scaled exactly by the power of two of ``1/t``, then divided by its mantissa.
    """
    info = xp.finfo(a.dtype)
    low, high = float(info.smallest_normal), float(info.max)
    with np.errstate(over="ignore", under="ignore"):
        if low <= t <= high and low <= 1.0 / t <= high:
            return a / t
        mantissa, exponent = math.frexp(t)  # t = mantissa · 2**exponent, 0.5 <= mantissa < 1
        a = ldexp(a, -exponent, xp)
        return a / mantissa


def _zero_temperature(d: Array, xp: Any) -> Array:
    # The row max (d == 0) wins with a constant 0 (the limit's derivative is 0); below it −inf.
    return xp.where(d < 0, -math.inf, xp.where(d == 0, 0.0, d))


def _infinite_temperature(x: Array, d: Array, xp: Any) -> Array:
    # Every finite entry 0, through the graph (torch refuses to backpropagate through an output
    # that does not require grad), with derivative 0; ±inf and NaN entries keep d.
    finite = xp.isfinite(x)
    return xp.where(finite, xp.where(xp.isfinite(d), d, 0.0) * 0.0, d)


def _sink_shift(m: Array, t: Temperature, xp: Any) -> Array:
    """``m/T``: the sink is a logit on the scale of x/T (not divided by T) and takes this shift."""
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(t, float):
            if t == 1.0:
                return m
            if t == 0.0:
                return _zero_shift(m, xp)
            if t == math.inf:
                return m * 0.0
            return divide(m, t, xp)
        is_zero = t == 0.0
        is_inf = t == math.inf
        shift = m / xp.where(is_zero | is_inf, 1.0, t)
        if _may(is_zero, xp):
            shift = xp.where(is_zero, _zero_shift(m, xp), shift)
        return xp.where(is_inf, 0.0, shift)


def _zero_shift(m: Array, xp: Any) -> Array:
    """``lim m/T`` as T → 0⁺: ±inf by the sign of the row max, 0 when it is 0."""
    return xp.where(m > 0, math.inf, xp.where(m < 0, -math.inf, m * 0.0))


def merge_lse(a: Array, b: Array, xp: Any) -> Array:
    """``log(eᵃ + eᵇ)`` of two finite running log-sum-exps: the online merge of blocks
    (Milakov & Gimelshein 2018).  :func:`logitkit.attention.merge_logsumexp` is the public form, with
    the edge cases block statistics never have."""
    hi = xp.maximum(a, b)
    return hi + xp.log1p(xp.exp(xp.minimum(a, b) - hi))


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


@dataclass
class _Normalised:
    d: Array  # z − max, 0 in special rows
    e: Array  # exp(d)
    log_s: Array  # log(sum exp(d)) with the dominant term split off (log1p form), (N, 1)
    m: Array  # row max (constant for autodiff) when computed here, else 0; (N, 1)
    nan: Array  # row has NaN
    pos: Array  # row has +inf (and no NaN)
    neg: Array  # row has nothing but -inf (and no NaN)
    posinf: Any  # entries equal to +inf (None: no special row)
    n_posinf: Any  # their count per row, as the working dtype (None: no special row)
    special: bool


def _normalise(z: Array, nan: Array, xp: Any, *, shifted: _Shifted | None = None) -> _Normalised:
    """The exponentials and ``log Σ e^{z − max}`` of rows ``z``.

    ``shifted``: ``z`` is its ``q`` (max 0 in every ordinary row), so its flags are reused and no
    max is taken again.
    """
    n, k = z.shape
    dev = array_api_compat.device(z)
    if shifted is not None:
        pos, neg, special, top = shifted.pos, shifted.neg, shifted.special, shifted.top
        m = xp.zeros((n, 1), dtype=z.dtype, device=dev)
        z_nonan = xp.where(xp.isnan(z), -math.inf, z) if special else z
    else:
        z_nonan = xp.where(xp.isnan(z), -math.inf, z) if _may(nan, xp) else z
        top = None
        if k == 0:
            m = xp.zeros((n, 1), dtype=z.dtype, device=dev)
            odd = xp.ones((n, 1), dtype=xp.bool, device=dev)
        else:
            top = xp.argmax(z_nonan, axis=-1, keepdims=True)
            m = stop_gradient(xp.take_along_axis(z_nonan, top, axis=-1), xp)
            odd = ~xp.isfinite(m)
        pos = (m == math.inf) & ~nan
        neg = odd & ~(m == math.inf) & ~nan
        special = n > 0 and (_may(nan, xp) or _may(odd, xp))
        if special:
            m = xp.where(odd, 0.0, m)
    rows_special = nan | pos | neg
    zs = xp.where(rows_special, 0.0, z_nonan) if special else z_nonan
    # z − max rounds to −inf when the row spans more than the float range ([3e38, −3e38] in
    # float32); that is the right value, so NumPy (and array_api_strict, built on it) must not warn.
    with np.errstate(over="ignore"):
        d = zs if shifted is not None else zs - m
    e = xp.exp(d)
    # Blanchard–Higham–Higham: log(sum e) = log1p(sum of the terms but one at the max, whose
    # e^0 = 1 is left out exactly; a tie contributes its own 1).  The straight-through term keeps
    # the left-out term's derivative (value 0).
    if k == 0:
        rest = xp.zeros((n, 1), dtype=z.dtype, device=dev)
    else:
        is_top = xp.arange(k, device=dev) == top
        rest = xp.sum(xp.where(is_top, e - stop_gradient(e, xp), e), axis=-1, keepdims=True)
    if special:
        rest = xp.where(rows_special, 0.0, rest)
    log_s = xp.log1p(rest)
    posinf = n_posinf = None
    if special:
        posinf = z == math.inf
        n_posinf = xp.sum(astype(posinf, z.dtype, xp), axis=-1, keepdims=True)
    return _Normalised(d, e, log_s, m, nan, pos, neg, posinf, n_posinf, special)


def _softmax_rows(n: _Normalised, xp: Any) -> Array:
    p = n.e / xp.exp(n.log_s)
    if not n.special:
        return p
    n_safe = xp.where(n.n_posinf > 0, n.n_posinf, 1.0)
    p = xp.where(n.pos, xp.where(n.posinf, 1.0 / n_safe, 0.0), p)
    p = xp.where(n.neg, 0.0, p)
    return xp.where(n.nan, math.nan, p)


def _log_softmax_rows(n: _Normalised, xp: Any) -> Array:
    out = n.d - n.log_s
    if not n.special:
        return out
    n_safe = xp.where(n.n_posinf > 0, n.n_posinf, 1.0)
    out = xp.where(n.pos, xp.where(n.posinf, -xp.log(n_safe), -math.inf), out)
    out = xp.where(n.neg, -math.inf, out)
    return xp.where(n.nan, math.nan, out)


def _lse_rows(shift: Array, n: _Normalised, xp: Any) -> Array:
    """``shift + log Σ e^d`` with the special rows' limits."""
    out = shift + n.log_s
    if not n.special:
        return out
    out = xp.where(n.pos, math.inf, out)
    out = xp.where(n.neg, -math.inf, out)
    return xp.where(n.nan, math.nan, out)


def _rows(op: str, x: Array, mask: Array | None, softcap: float | None, t: Temperature,
          sink: Array | None, xp: Any) -> Array:
    """The generic path on ``(N, K)`` rows: ``(N, K)`` for softmax, log_softmax and the entropy
    terms' inputs, ``(N, 1)`` for logsumexp and entropy."""
    sh = _shift(x, mask, softcap, t, xp)
    if sink is None:
        n = _normalise(sh.q, sh.nan, xp, shifted=sh)
    else:
        col = xp.where(xp.isinf(sink), sink, sink - _sink_shift(sh.m, t, xp))
        n = _normalise(xp.concat([sh.q, col], axis=-1), sh.nan | xp.isnan(sink), xp)
    if op == "softmax":
        p = _softmax_rows(n, xp)
        return p if sink is None else p[:, :-1]
    if op == "log_softmax":
        out = _log_softmax_rows(n, xp)
        return out if sink is None else out[:, :-1]
    if op == "logsumexp":
        return _lse_rows(sh.m, n, xp)
    # entropy: −Σ p log p with 0·log 0 = 0 in value and gradient
    p = _softmax_rows(n, xp)
    logp = _log_softmax_rows(n, xp)
    positive = p > 0
    terms = xp.where(positive, -p * xp.where(positive, logp, 0.0), 0.0)
    h = xp.sum(terms, axis=-1, keepdims=True)
    return xp.where(n.nan, math.nan, h) if n.special else h


# --------------------------------------------------------------------------------------------
# the kernels: tried after validation, their flagged rows computed here
# --------------------------------------------------------------------------------------------


def _kernel(pb: _Problem, xp: Any, op: str) -> Any:
    """The kernel's result in the input's array type (the flagged rows filled in), or None."""
    t = pb.temperature
    if (pb.sink is not None or not isinstance(t, float) or not 0.0 < t < math.inf
            or not (is_numpy(xp) or is_torch(xp)) or pb.acc != pb.x.dtype
            or pb.out_dtype != pb.x.dtype):
        return None
    res = _kernels.normalise(_kernels.Normalise(pb.x, pb.lay.axes, op, t, pb.softcap, pb.mask))
    if res is None:
        return None
    if res.flagged.any():
        _fill_flagged(res.values, res.flagged, pb, op)
    return res.as_input(res.values)


def _fill_flagged(values: np.ndarray, flagged: np.ndarray, pb: _Problem, op: str) -> None:
    """Compute the rows the kernel flagged on the generic path and write them into ``values``
    (a NumPy array the kernel handed over: the in-place writes stay on NumPy)."""
    lay = pb.lay
    idx = np.flatnonzero(flagged)
    rows = np.unravel_index(idx, lay.batch_shape) if lay.batch_shape else ()
    x = _gather(to_numpy(pb.x), lay, rows)
    mask = None if pb.mask is None else _gather(to_numpy(pb.mask), lay, rows)
    fixed = _rows(op, x, mask, pb.softcap, pb.temperature, None, namespace(x))
    if op == "logsumexp":
        values.reshape(-1)[idx] = fixed[:, 0]
        return
    view = values if lay.perm is None else np.transpose(values, lay.perm)
    if rows:
        view[rows] = fixed.reshape((len(idx), *(lay.shape[a] for a in lay.axes)))
    else:
        view[...] = fixed.reshape(view.shape)


def _gather(a: np.ndarray, lay: Layout, rows: tuple[np.ndarray, ...]) -> np.ndarray:
    """The rows ``rows`` (batch indices) of ``a`` (``lay.shape``, broadcast views allowed) as
    ``(S, K)``."""
    a = np.broadcast_to(a, lay.shape)
    view = a if lay.perm is None else np.transpose(a, lay.perm)
    picked = view[rows] if rows else view[None]
    return np.ascontiguousarray(picked.reshape(picked.shape[0], lay.k))


def _normalised(pb: _Problem, xp: Any, op: str) -> Any:
    fast = _kernel(pb, xp, op)
    if fast is not None:
        return fast
    x, mask, t, sink = _row_inputs(pb, xp)
    out = _rows(op, x, mask, pb.softcap, t, sink, xp)
    return astype(from_rows(out, pb.lay, xp), pb.out_dtype, xp)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def softmax(
    x: ArrayT,
    /,
    *,
    axis: Axis = -1,
    temperature: Any = 1.0,
    where: Any = None,
    softcap: float | None = None,
    sink: Any = None,
    dtype: Any = None,
) -> ArrayT:
    r"""Softmax of ``x`` over ``axis``: probabilities that are non-negative and sum to one.

    .. math::
        \operatorname{softmax}(x)_i = \frac{e^{(z_i - m)}}{\sum_j e^{(z_j - m)}},\qquad
        z = \frac{c \tanh(x / c)}{T},\quad m = \max_j z_j

    Args:
        x: logits, any shape ``(..., K, ...)``; NumPy, PyTorch, JAX or any array-API array
            (lists become NumPy).  Integer and boolean input is promoted to the default float.
        axis: the axis (or tuple of axes) that is normalised; tuple axes are treated as one
            flattened axis.  ``-1`` by default, where SciPy normalises over every axis.
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
    pb, xp = _validate(x, axis=axis, temperature=temperature, where=where, softcap=softcap,
                       sink=sink, dtype=dtype)
    return _normalised(pb, xp, "softmax")


def log_softmax(
    x: ArrayT,
    /,
    *,
    axis: Axis = -1,
    temperature: Any = 1.0,
    where: Any = None,
    softcap: float | None = None,
    sink: Any = None,
    dtype: Any = None,
) -> ArrayT:
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
    pb, xp = _validate(x, axis=axis, temperature=temperature, where=where, softcap=softcap,
                       sink=sink, dtype=dtype)
    return _normalised(pb, xp, "log_softmax")


@overload
def logsumexp(x: ArrayT, /, *, axis: Axis = ..., b: Any = ..., where: Any = ...,
              keepdims: bool = ..., return_sign: Literal[False] = ...,
              dtype: Any = ...) -> ArrayT: ...
@overload
def logsumexp(x: ArrayT, /, *, axis: Axis = ..., b: Any = ..., where: Any = ...,
              keepdims: bool = ..., return_sign: Literal[True],
              dtype: Any = ...) -> tuple[ArrayT, ArrayT]: ...
@overload
def logsumexp(x: ArrayT, /, *, axis: Axis = ..., b: Any = ..., where: Any = ...,
              keepdims: bool = ..., return_sign: bool,
              dtype: Any = ...) -> ArrayT | tuple[ArrayT, ArrayT]: ...
def logsumexp(
    x: ArrayT,
    /,
    *,
    axis: Axis = -1,
    b: Any = None,
    where: Any = None,
    keepdims: bool = False,
    return_sign: bool = False,
    dtype: Any = None,
) -> ArrayT | tuple[ArrayT, ArrayT]:
    r"""``log(sum(b * exp(x)))`` over ``axis``, without overflow or needless rounding.

    .. math::
        \operatorname{lse}(x) = m + \operatorname{log1p}\Bigl(\sum_{j \ne j^*} e^{x_j - m}\Bigr),
        \qquad m = \max_j x_j

    Args:
        x: ``(..., K, ...)`` values.
        axis: the reduced axis or tuple of axes (``-1`` by default; SciPy's default reduces
            every axis).
        b: optional weights broadcastable to ``x`` (SciPy's ``b``, which broadcasts *with* ``x``
            there: here the result has ``x``'s reduced shape whatever ``b``); entries with
            ``b == 0`` are ignored, negative weights are allowed.
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
    keepdims = check_bool(keepdims, "keepdims")
    return_sign = check_bool(return_sign, "return_sign")
    pb, xp = _validate(x, axis=axis, temperature=1.0, where=where, softcap=None, sink=None,
                       dtype=dtype)
    lay = pb.lay
    out = _kernel(pb, xp, "logsumexp") if b is None else None
    if out is not None:
        out = astype(reduced(out, lay, keepdims, xp), pb.out_dtype, xp)
        sign = xp.where(out == -math.inf, 0.0, xp.where(xp.isnan(out), out, 1.0))
        return (out, sign) if return_sign else out
    rows, mask, _, _ = _row_inputs(pb, xp)
    if b is None:
        out = _rows("logsumexp", rows, mask, None, 1.0, None, xp)
        sign = xp.where(out == -math.inf, 0.0, xp.where(xp.isnan(out), out, 1.0))
    else:
        out, sign = _weighted_lse(rows, mask, b, lay, xp)
        if not return_sign:
            out = xp.where(sign < 0, math.nan, out)
    out = astype(reduced(out, lay, keepdims, xp), pb.out_dtype, xp)
    if return_sign:
        return out, astype(reduced(sign, lay, keepdims, xp), pb.out_dtype, xp)
    return out


def _weighted_lse(z: Array, mask: Array | None, b: Any, lay: Layout, xp: Any
                  ) -> tuple[Array, Array]:
    b = as_array(b, "b", xp)
    broadcast_shapes("b", tuple(b.shape), lay.shape)
    b = to_rows(xp.broadcast_to(astype(b, z.dtype, xp), lay.shape), lay, xp)
    if mask is not None:
        b = xp.where(mask, b, 0.0)
    # Entries with b == 0 are ignored, a NaN logit there included (as in SciPy).
    nan = xp.any(xp.isnan(b) | (xp.isnan(z) & (b != 0)), axis=-1, keepdims=True)
    z = xp.where(b == 0, -math.inf, z)
    n = _normalise(z, nan, xp)
    b_live = xp.where(n.pos | n.neg | n.nan, 0.0, b) if n.special else b
    s = xp.sum(b_live * n.e, axis=-1, keepdims=True)
    sign = xp.sign(s)
    abs_s = xp.abs(s)
    out = xp.where(abs_s == 0, -math.inf, n.m + xp.log(xp.where(abs_s == 0, 1.0, abs_s)))
    if not n.special:
        return out, sign
    # Rows with +inf: the sign of the weights on the +inf entries decides; they cancel to NaN.
    s_inf = xp.sum(xp.where(n.posinf, b, 0.0), axis=-1, keepdims=True)
    out = xp.where(n.pos, xp.where(s_inf == 0, math.nan, xp.full_like(out, math.inf)), out)
    sign = xp.where(n.pos, xp.sign(s_inf), sign)
    out = xp.where(n.neg, -math.inf, out)
    sign = xp.where(n.neg, 0.0, sign)
    out = xp.where(n.nan, math.nan, out)
    sign = xp.where(n.nan, math.nan, sign)
    return out, sign


def entropy(
    x: ArrayT,
    /,
    *,
    axis: Axis = -1,
    temperature: Any = 1.0,
    where: Any = None,
) -> ArrayT:
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
    pb, xp = _validate(x, axis=axis, temperature=temperature, where=where, softcap=None,
                       sink=None, dtype=None)
    rows, mask, t, _ = _row_inputs(pb, xp)
    h = _rows("entropy", rows, mask, None, t, None, xp)
    return astype(reduced(h, pb.lay, False, xp), pb.out_dtype, xp)
