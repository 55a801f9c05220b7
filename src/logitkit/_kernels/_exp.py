"""Vectorisable ``exp``, ``log`` and ``tanh`` for the kernels (numba), each within a few ulps.

libm's functions are a call per element, which stops LLVM from vectorising the kernels' loops;
these are written with plain arithmetic instead.  ``vlog`` (float64, for the row sums) and
``vtanh`` (the softcap) say their method where they are defined; ``vexp``, the one the kernels
lean on most, is the classic Cody–Waite scheme:

* ``n = round(d / ln 2)`` by the "magic number" trick (adding ``1.5·2^p`` rounds to an integer
  without a float→int conversion, whose result is undefined for NaN),
* ``r = d − n·ln 2`` with ``ln 2`` split in a short high part (``n·C1`` is exact) and a low part,
  so ``|r| ≤ ln 2 / 2`` up to a rounding of the low product,
* ``exp(r)`` by its Taylor polynomial (degree 7 in float32, 13 in float64: the first omitted term
  is below 0.1 u on ``|r| ≤ 0.3466``), evaluated by Horner's rule,
* ``2^n`` built from its exponent bits, in two factors ``2^(n//2)·2^(n − n//2)`` so that results in
  the subnormal range are rounded once and correctly instead of being flushed to zero.

Only ``d ≤ 0`` is needed (every kernel subtracts the row max first); arguments below the underflow
threshold are clamped and give 0, NaN propagates.  ``exp(0)`` is exactly 1 (``n = 0``, ``r = 0``).
The accuracy is proved in the tests against mpmath over the whole range used.

The functions are compiled with contraction only (FMA allowed, no reassociation: reassociating
``(t + magic) − magic`` or ``d − n·C1 − n·C2`` would destroy the rounding tricks).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload, register_jitable


def _bitcast(src: Any, dst: Any) -> Any:
    @intrinsic
    def cast(typingctx: Any, value: Any) -> Any:
        # Integers of any width are converted to the source width first (numba widens int32
        # arithmetic to int64).
        if value != src and not (isinstance(src, types.Integer)
                                 and isinstance(value, types.Integer)):
            return None
        sig = dst(value)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            v = context.cast(builder, args[0], signature.args[0], src)
            return builder.bitcast(v, context.get_value_type(dst))

        return sig, codegen

    return cast


f32_bits = _bitcast(types.float32, types.int32)
bits_f32 = _bitcast(types.int32, types.float32)
f64_bits = _bitcast(types.float64, types.int64)
bits_f64 = _bitcast(types.int64, types.float64)

_CONTRACT = {"contract"}

# float32: underflow below ≈ −103.97 (half the smallest subnormal); −110 gives exactly 0.
_LO32 = np.float32(-110.0)
_LOG2E32 = np.float32(1.4426950408889634)
_MAGIC32 = np.float32(12582912.0)  # 1.5 · 2^23
_MAGIC32_BITS = np.int32(0x4B400000)
_C1_32 = np.float32(0.693359375)  # 355/512: n·C1 exact for |n| < 2^15
_C2_32 = np.float32(-2.12194440e-4)  # ln 2 − C1

# float64: underflow below ≈ −745.13; −750 gives exactly 0.
_LO64 = -750.0
_LOG2E64 = 1.4426950408889634
_MAGIC64 = 6755399441055744.0  # 1.5 · 2^52
_MAGIC64_BITS = np.int64(0x4338000000000000)
_C1_64 = 6.93145751953125e-1  # 22 significant bits: n·C1 exact for |n| < 2^31
_C2_64 = 1.42860682030941723212e-6  # ln 2 − C1


@register_jitable(fastmath=_CONTRACT)
def exp32(d: Any) -> Any:
    d = _LO32 if d < _LO32 else d  # NaN stays NaN (the comparison is false)
    t = d * _LOG2E32 + _MAGIC32
    n = t - _MAGIC32
    ni = f32_bits(t) - _MAGIC32_BITS
    r = d - n * _C1_32
    r = r - n * _C2_32
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    n1 = ni >> 1
    n2 = ni - n1
    return p * bits_f32((n1 + np.int32(127)) << 23) * bits_f32((n2 + np.int32(127)) << 23)


@register_jitable(fastmath=_CONTRACT)
def exp64(d: Any) -> Any:
    d = _LO64 if d < _LO64 else d
    t = d * _LOG2E64 + _MAGIC64
    n = t - _MAGIC64
    ni = f64_bits(t) - _MAGIC64_BITS
    r = d - n * _C1_64
    r = r - n * _C2_64
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    n1 = ni >> 1
    n2 = ni - n1
    return p * bits_f64((n1 + np.int64(1023)) << 52) * bits_f64((n2 + np.int64(1023)) << 52)


_LN2_HI = 6.93147180369123816490e-01  # ln 2 split as fdlibm: e·LN2_HI is exact for |e| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_MANT64 = np.int64(0x000FFFFFFFFFFFFF)
_ONE64_BITS = np.int64(0x3FF0000000000000)


@register_jitable(fastmath=_CONTRACT)
def vlog(s: Any) -> Any:
    """``log(s)`` for a positive normal float64 ``s``, vectorisable, within two ulps.

    ``s = 2^e·f`` with ``f`` in ``[√½, √2)`` from the exponent bits; ``log f = 2·atanh(z)`` with
    ``z = (f − 1)/(f + 1)``, ``|z| ≤ 0.1716``, by its series to ``z^21`` (the first omitted term
    is below 10⁻¹⁸ of the result).  The kernels take the log of row sums ``s ≥ 1`` with it, a
    block of rows at a time, where a libm call per row costs as much as the row itself.
    """
    b = f64_bits(s)
    e = (b >> 52) - 1023
    f = bits_f64((b & _MANT64) | _ONE64_BITS)
    big = f > _SQRT2
    f = f * 0.5 if big else f
    e = e + 1 if big else e
    z = (f - 1.0) / (f + 1.0)
    z2 = z * z
    p = 1.0 / 21.0
    p = p * z2 + 1.0 / 19.0
    p = p * z2 + 1.0 / 17.0
    p = p * z2 + 1.0 / 15.0
    p = p * z2 + 1.0 / 13.0
    p = p * z2 + 1.0 / 11.0
    p = p * z2 + 1.0 / 9.0
    p = p * z2 + 1.0 / 7.0
    p = p * z2 + 1.0 / 5.0
    p = p * z2 + 1.0 / 3.0
    fe = float(e)
    return fe * _LN2_HI + ((2.0 * z) * z2 * p + fe * _LN2_LO + 2.0 * z)


@numba.njit(cache=True, fastmath=_CONTRACT)
def log_array(s: Any, out: Any) -> None:
    """``out = vlog(s)`` elementwise (1-D float64): exposed for the accuracy tests."""
    for i in range(s.size):
        out[i] = vlog(s[i])


# tanh: for |z| < 0.625 the odd expansions of Cephes (S. L. Moshier), a degree-11 polynomial in
# float32 and z + z·z²·P(z²)/Q(z²) in float64; above, (1 − e)/(1 + e) with e = exp(−2|z|) ≤ 0.29,
# so that neither form cancels.  Both are computed and one selected: the loop stays vectorised.
_TANH_SMALL = 0.625
_TANH32 = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
           -3.33332819422e-1)
_TANH64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH64_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@register_jitable(fastmath=_CONTRACT)
def tanh32(z: Any) -> Any:
    a = abs(z)
    e = exp32(np.float32(-2.0) * a)
    big = (np.float32(1.0) - e) / (np.float32(1.0) + e)
    s = a * a
    c0, c1, c2, c3, c4 = _TANH32
    p = ((((np.float32(c0) * s + np.float32(c1)) * s + np.float32(c2)) * s + np.float32(c3)) * s
         + np.float32(c4)) * s * z + z
    p = p if z != np.float32(0.0) else z  # tanh(−0) = −0
    return p if a < np.float32(_TANH_SMALL) else (big if z >= np.float32(0.0) else -big)


@register_jitable(fastmath=_CONTRACT)
def tanh64(z: Any) -> Any:
    a = abs(z)
    e = exp64(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    s = a * a
    p0, p1, p2 = _TANH64_P
    q0, q1, q2 = _TANH64_Q
    num = (p0 * s + p1) * s + p2
    den = ((s + q0) * s + q1) * s + q2
    p = z + z * s * (num / den)
    p = p if z != 0.0 else z  # tanh(−0) = −0
    return p if a < _TANH_SMALL else (big if z >= 0.0 else -big)


def _per_dtype(impl32: Any, impl64: Any) -> Any:
    """Make a stub the numba entry point of a scalar function with one implementation per
    float precision (the stub itself only raises: it is called from compiled code)."""
    def register(stub: Any) -> Any:
        @overload(stub, jit_options={"fastmath": _CONTRACT})
        def _impl(v):  # numba compares this signature with the lambdas': no annotations
            if v == types.float32:
                return lambda v: impl32(v)
            if v == types.float64:
                return lambda v: impl64(v)
            return None

        return stub

    return register


@_per_dtype(tanh32, tanh64)
def vtanh(z):  # stubs carry no annotations: numba reads their signatures
    """``tanh(z)`` in ``z``'s precision (float32 or float64), vectorisable; NaN propagates."""
    raise NotImplementedError  # pragma: no cover - only called from compiled code


@_per_dtype(exp32, exp64)
def vexp(d):  # stubs carry no annotations: numba reads their signatures
    """``exp(d)`` for ``d ≤ 0`` in ``d``'s precision (float32 or float64), vectorisable."""
    raise NotImplementedError  # pragma: no cover - only called from compiled code


def _key(v):
    raise NotImplementedError  # pragma: no cover


@overload(_key)
def _key_impl(v):
    """A signed integer that orders like the float (NaN with the sign bit set sorts lowest)."""
    if v == types.float32:
        def k32(v):
            b = f32_bits(v)
            return np.int32(b if b >= 0 else b ^ np.int32(0x7FFFFFFF))
        return k32
    if v == types.float64:
        def k64(v):
            b = f64_bits(v)
            return b if b >= 0 else b ^ np.int64(0x7FFFFFFFFFFFFFFF)
        return k64
    return None


def _unkey(k, like):
    raise NotImplementedError  # pragma: no cover


@overload(_unkey)
def _unkey_impl(k, like):
    if like == types.float32:
        return lambda k, like: bits_f32(np.int32(k if k >= 0 else k ^ np.int32(0x7FFFFFFF)))
    if like == types.float64:
        return lambda k, like: bits_f64(k if k >= 0 else k ^ np.int64(0x7FFFFFFFFFFFFFFF))
    return None


def max_of(a):
    """Max of a 1-D float array by integer keys: vectorises without fast-math flags.

    NaN does not poison the comparison (the keys are integers); a NaN with a clear sign bit
    sorts above +inf and comes out as NaN, one with the sign bit set sorts below −inf.  Either
    way the caller's sum becomes NaN and the row is flagged.  Empty input gives −inf.
    """
    raise NotImplementedError  # pragma: no cover


@overload(max_of, inline="always")
def _max_of(a):
    if not isinstance(a, types.Array) or a.dtype not in (types.float32, types.float64):
        return None
    dt = np.float32 if a.dtype == types.float32 else np.float64

    def impl(a):
        like = dt(0.0)
        m = _key(dt(-np.inf))
        for i in range(a.size):
            k = _key(a[i])
            m = k if k > m else m
        return _unkey(m, like)

    return impl


def as_like(value, like):
    """``value`` converted to the float type of ``like`` (typed constants in generic kernels)."""
    raise NotImplementedError  # pragma: no cover


@overload(as_like)
def _as_like(value, like):
    if like == types.float32:
        return lambda value, like: np.float32(value)
    if like == types.float64:
        return lambda value, like: np.float64(value)
    return None


@numba.njit(cache=True, fastmath=_CONTRACT, error_model="numpy")
def tanh_array(z: Any, out: Any) -> None:
    """``out = vtanh(z)`` elementwise: exposed for the accuracy tests."""
    for i in range(z.size):
        out[i] = vtanh(z[i])


@numba.njit(cache=True, fastmath=_CONTRACT)
def exp_array(d: Any, out: Any) -> None:
    """``out = vexp(d)`` elementwise (1-D): the kernels' exp, exposed for the accuracy tests."""
    for i in range(d.size):
        out[i] = vexp(d[i])


def max_of_masked(a, mask):
    """Max of ``a`` over the entries where ``mask`` is True (−inf if none), by integer keys."""
    raise NotImplementedError  # pragma: no cover


@overload(max_of_masked)
def _max_of_masked(a, mask):
    if not isinstance(a, types.Array) or a.dtype not in (types.float32, types.float64):
        return None
    dt = np.float32 if a.dtype == types.float32 else np.float64

    def impl(a, mask):
        like = dt(0.0)
        lowest = _key(dt(-np.inf))
        m = lowest
        for i in range(a.size):
            k = _key(a[i])
            k = k if mask[i] else lowest
            m = k if k > m else m
        return _unkey(m, like)

    return impl
