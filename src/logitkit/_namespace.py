"""Array-namespace dispatch, dtype policy, argument validation and the library's exceptions.

Every public function calls :func:`namespace` once at the top and passes ``xp`` down; nothing below
this layer asks which library an array came from, except :func:`stop_gradient`, which has to.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, TypeVar

import array_api_compat
import numpy as np
from numpy.lib import NumpyVersion

__all__ = [
    "LogitkitError",
    "LogitkitTypeError",
    "LogitkitValueError",
]

Array = Any
#: The array type a public function returns: the type it was given (NumPy in, NumPy out; a torch
#: tensor in, a tensor out).  Bound to ``Any`` so that the bodies may use the array's attributes.
ArrayT = TypeVar("ArrayT", bound=Any)


class LogitkitError(Exception):
    """Base class of every error logitkit raises on purpose."""


class LogitkitValueError(LogitkitError, ValueError):
    """An argument has the right type but an unacceptable value or shape."""


class LogitkitTypeError(LogitkitError, TypeError):
    """An argument has the wrong type (for example a non-boolean mask or a string array)."""


class Described(str):
    """A description of the value received (``"shape (2, 3)"``), printed as is, not quoted."""


def expected(arg: str, what: str, got: object) -> str:
    """The one error wording: ``Expected `arg` to be what, but got got``."""
    return f"Expected `{arg}` to be {what}, but got {_short(got)}"


def _short(value: object) -> str:
    if isinstance(value, Described):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        shape = tuple(value.shape)
        if math.prod(int(s) for s in shape if s is not None) <= 6 and is_concrete(value):
            try:
                return f"{np.asarray(to_numpy(value)).tolist()!r} (dtype {value.dtype})"
            except Exception:  # pragma: no cover - exotic arrays
                pass
        return f"an array of shape {shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------
# namespace dispatch
# --------------------------------------------------------------------------------------------


def is_array(x: object) -> bool:
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, bool, complex))


#: NumPy ≥ 2.1 has every function the library calls in its own namespace (``astype`` and
#: ``cumulative_sum`` came in 2.1): plain NumPy input then never imports array-api-compat's NumPy
#: wrapper, whose import (it pulls ``numpy.testing`` and ``f2py``) cost 170–350 ms on the first
#: call of a process.  Older NumPy keeps the wrapper.
_NATIVE_NUMPY = NumpyVersion(np.__version__) >= "2.1.0"


def namespace(*arrays: object) -> Any:
    """The array namespace shared by ``arrays`` (``None`` and Python scalars are ignored).

    Array-likes that are not arrays (lists, tuples) count as NumPy.  Plain NumPy input gets the
    ``numpy`` module itself (see ``_NATIVE_NUMPY``).
    """
    present = [a for a in arrays if a is not None and is_array(a)]
    if _NATIVE_NUMPY and all(type(a) is np.ndarray for a in present):
        return np
    if not present:
        return array_api_compat.array_namespace(np.empty(0))
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        raise LogitkitTypeError(
            expected("the arrays", "from one array library", Described(", ".join(kinds)))
        ) from exc


def as_array(x: Any, arg: str, xp: Any, *, numeric: bool = True) -> Array:
    """``x`` as an array of ``xp``; array-likes become NumPy arrays.  Rejects non-numeric input."""
    if not is_array(x):
        if isinstance(x, (str, bytes)) or x is None:
            raise LogitkitTypeError(expected(arg, "a numeric array", x))
        try:
            arr = np.asarray(x)
        except Exception:
            raise LogitkitTypeError(expected(arg, "a numeric array", x)) from None
        if arr.dtype.kind not in "biuf":
            raise LogitkitTypeError(
                expected(arg, "a numeric array", Described(f"an array of dtype {arr.dtype}"))
            )
        x = arr if is_numpy(xp) else xp.asarray(arr)
    if numeric and not is_numeric_dtype(x.dtype, xp):
        raise LogitkitTypeError(
            expected(arg, "a real numeric array", Described(f"an array of dtype {x.dtype}"))
        )
    return x


def is_numeric_dtype(dtype: Any, xp: Any) -> bool:
    try:
        return bool(xp.isdtype(dtype, ("bool", "integral", "real floating")))
    except Exception:
        return False


def is_dask(*arrays: object) -> bool:
    """True when any of ``arrays`` is a Dask array (checked without importing Dask)."""
    return any(a is not None and array_api_compat.is_dask_array(a) for a in arrays)


def is_lazy(x: object) -> bool:
    """True for arrays whose values cannot be read without computing (JAX tracers, Dask)."""
    is_lazy_array = getattr(array_api_compat, "is_lazy_array", None)
    if is_lazy_array is not None:
        try:
            return bool(is_lazy_array(x))
        except Exception:  # pragma: no cover
            return False
    return False  # pragma: no cover


def is_concrete(x: object) -> bool:
    """True when ``x``'s values can be read now: not a JAX tracer, not a Dask graph.

    ``array_api_compat.is_lazy_array`` counts every JAX array as lazy, but a JAX array outside
    ``jit`` holds its values, and validation (a negative temperature) must see them.
    """
    if not is_lazy(x):
        # A torch "meta" tensor has a shape and a dtype but no values.
        return not (array_api_compat.is_torch_array(x) and x.device.type == "meta")
    if array_api_compat.is_jax_array(x):
        import jax

        return not isinstance(x, jax.core.Tracer)
    return False


def is_torch(xp: Any) -> bool:
    return bool(array_api_compat.is_torch_namespace(xp))


def is_jax(xp: Any) -> bool:
    return bool(array_api_compat.is_jax_namespace(xp))


def is_numpy(xp: Any) -> bool:
    return bool(array_api_compat.is_numpy_namespace(xp))


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy (or view) of any supported array, detached from autograd."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def stop_gradient(x: Array, xp: Any) -> Array:
    """``x`` treated as a constant by autodiff (the only backend-specific helper of the math)."""
    if is_torch(xp):
        return x.detach()
    if is_jax(xp):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def ldexp(x: Array, e: int, xp: Any) -> Array:
    """``x · 2**e`` rounded once, for any int ``e`` (``2**e`` itself may overflow the dtype).

    NumPy's ``ldexp``; JAX's behind a ``custom_vjp`` (its derivative through ``frexp`` is wrong,
    and a chain of constant factors is folded by XLA into one that overflows), so forward-mode
    autodiff does not go through it; elsewhere powers of two the dtype holds, one at a time.
    """
    if is_numpy(xp):
        with np.errstate(over="ignore", under="ignore"):
            return xp.ldexp(x, e)
    if is_jax(xp):
        return _jax_ldexp()(x, e)
    info = xp.finfo(x.dtype)
    low = math.frexp(float(info.smallest_normal))[1] - 1
    high = math.frexp(float(info.max))[1] - 1
    while e:
        step = max(low, min(high, e))
        x = x * 2.0**step
        e -= step
    return x


_JAX_LDEXP: list[Any] = []


def _jax_ldexp() -> Any:
    if not _JAX_LDEXP:
        import functools

        import jax
        import jax.numpy as jnp

        @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
        def scaled(x: Any, e: int) -> Any:
            return jnp.ldexp(x, e)

        def fwd(x: Any, e: int) -> tuple[Any, None]:
            return jnp.ldexp(x, e), None

        def bwd(e: int, _: None, g: Any) -> tuple[Any]:
            return (scaled(g, e),)

        scaled.defvjp(fwd, bwd)
        _JAX_LDEXP.append(scaled)
    return _JAX_LDEXP[0]


# --------------------------------------------------------------------------------------------
# dtype policy
# --------------------------------------------------------------------------------------------


def default_float(xp: Any, x: Array | None = None) -> Any:
    """The namespace's default real floating dtype (float64 for NumPy, float32 for torch)."""
    try:
        info = xp.__array_namespace_info__()
        device = array_api_compat.device(x) if x is not None else None
        return info.default_dtypes(device=device)["real floating"]
    except Exception:  # pragma: no cover - old namespaces
        return xp.float64 if is_numpy(xp) else xp.float32


def is_low_precision(dtype: Any, xp: Any) -> bool:
    """float16 or bfloat16 (of any library; not every namespace has float16)."""
    # Not every namespace has float16 (array_api_strict does not): look it up, do not assume it.
    f16 = getattr(xp, "float16", None)
    if f16 is not None and dtype == f16:
        return True
    bf16 = getattr(xp, "bfloat16", None)
    if bf16 is None and is_jax(xp):
        import jax.numpy as jnp

        bf16 = jnp.bfloat16
    return bf16 is not None and dtype == bf16


def compute_dtypes(x: Array, dtype: Any, xp: Any) -> tuple[Any, Any]:
    """(accumulation dtype, output dtype) for input ``x`` and the user's ``dtype``.

    float16/bfloat16 accumulate in float32 and return the input dtype; integer and boolean input is
    promoted to the namespace's default floating dtype; an explicit ``dtype`` sets both.
    """
    if dtype is None and type(x) is np.ndarray and x.dtype.type in (np.float32, np.float64):
        return x.dtype, x.dtype  # the common case, without the namespace's dtype queries
    if dtype is not None:
        dtype = _resolve_dtype(dtype, xp)
        acc = xp.float32 if is_low_precision(dtype, xp) else dtype
        return acc, dtype
    in_dtype = x.dtype
    if not xp.isdtype(in_dtype, "real floating"):
        out = default_float(xp, x)
        return out, out
    if is_low_precision(in_dtype, xp):
        return xp.float32, in_dtype
    return in_dtype, in_dtype


def _resolve_dtype(dtype: Any, xp: Any) -> Any:
    """A floating dtype of ``xp``, or its name (``"float32"``); anything else is a type error."""
    resolved = dtype
    if isinstance(dtype, str):
        resolved = getattr(xp, dtype, None) if dtype.isidentifier() else None
        if resolved is None and dtype == "bfloat16" and is_jax(xp):
            import jax.numpy as jnp

            resolved = jnp.bfloat16
    if resolved is None or not _is_float_dtype(resolved, xp):
        raise LogitkitTypeError(expected(
            "dtype", "a real floating dtype of the array's library (or its name)", dtype))
    return resolved


def _is_float_dtype(dtype: Any, xp: Any) -> bool:
    try:
        return bool(xp.isdtype(dtype, "real floating")) or is_low_precision(dtype, xp)
    except Exception:
        return False


def astype(x: Array, dtype: Any, xp: Any) -> Array:
    if x.dtype == dtype:
        return x
    return xp.astype(x, dtype)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def normalize_axis(axis: int | Sequence[int], ndim: int, arg: str = "axis") -> tuple[int, ...]:
    """``axis`` (int or sequence of ints) as a tuple of distinct non-negative axes, in the order
    given (a tuple of axes is flattened in that order, as ``transpose`` + ``reshape`` would)."""
    if isinstance(axis, (bool, np.bool_)):
        raise LogitkitTypeError(expected(arg, "an int or a tuple of ints", axis))
    if isinstance(axis, numbers.Integral):
        axes: tuple[Any, ...] = (int(axis),)
    elif isinstance(axis, Sequence) and not isinstance(axis, str):
        axes = tuple(axis)
        if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
            raise LogitkitTypeError(expected(arg, "an int or a tuple of ints", axis))
    else:
        raise LogitkitTypeError(expected(arg, "an int or a tuple of ints", axis))
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise LogitkitValueError(
                expected(arg, f"in [-{ndim}, {ndim}) for an array of {ndim} dimensions", axis)
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise LogitkitValueError(expected(arg, "a tuple of distinct axes", axis))
    return tuple(out)


def broadcast_shapes(arg: str, shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    """Raise unless an array of ``shape`` broadcasts to ``target`` (without changing ``target``)."""
    try:
        result = np.broadcast_shapes(tuple(shape), tuple(target))
    except ValueError:
        result = None
    if result != tuple(target):
        raise LogitkitValueError(
            expected(arg, f"broadcastable to shape {tuple(target)}",
                     Described(f"shape {tuple(shape)}"))
        )


def check_mask(where: Any, shape: tuple[int, ...], xp: Any) -> Array:
    """Validate a boolean mask broadcastable to ``shape`` and return it broadcast."""
    where = as_array(where, "where", xp, numeric=False)
    if where.dtype != xp.bool:
        raise LogitkitTypeError(expected("where", "a boolean array",
                                         Described(f"dtype {where.dtype}")))
    broadcast_shapes("where", tuple(where.shape), shape)
    return xp.broadcast_to(where, shape)


def check_positive_scalar_or_array(
    value: Any, arg: str, xp: Any, *, allow_zero: bool, allow_inf: bool
) -> Any:
    """Validate a scalar or array parameter: no NaN, positive (or non-negative), finite if asked."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        raise LogitkitTypeError(expected(arg, "a real number or array", value))
    if isinstance(value, numbers.Real):
        v = float(value)
        bad = math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (
            math.isinf(v) and not allow_inf
        )
        if bad:
            raise LogitkitValueError(expected(arg, _describe(allow_zero, allow_inf), value))
        return v
    arr = as_array(value, arg, xp)
    if not is_concrete(arr):
        return arr
    a = to_numpy(arr).astype(np.float64)
    bad_mask = np.isnan(a) | (a < 0)
    if not allow_zero:
        bad_mask |= a == 0
    if not allow_inf:
        bad_mask |= np.isinf(a)
    if bad_mask.any():
        raise LogitkitValueError(
            expected(arg, _describe(allow_zero, allow_inf), a[bad_mask].ravel()[0].item())
        )
    return arr


def _describe(allow_zero: bool, allow_inf: bool) -> str:
    base = "non-negative" if allow_zero else "positive"
    return base + ("" if allow_inf else " and finite")


def check_choice(value: object, arg: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise LogitkitValueError(expected(arg, f"one of {options}", value))
    return value


def check_number(
    value: object,
    arg: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real Python number within [low, high] (ends open when asked)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise LogitkitTypeError(expected(arg, "a real number", value))
    v = float(value)
    ok = not math.isnan(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        rng = f"in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise LogitkitValueError(expected(arg, rng, value))
    return v


def check_int(
    value: object,
    arg: str,
    *,
    low: int | None = 1,
    high: int | None = None,
    what: str | None = None,
) -> int:
    """``value`` as an int within ``[low, high]`` (``low=1``: a positive int).

    The library's one integer rule: a Python or NumPy integer (never a bool, a float or a
    string) is required, else a :class:`LogitkitTypeError`; an integer out of range is a
    :class:`LogitkitValueError`.  Both name ``arg`` and the expected form (``what``, or one
    derived from the bounds).

    Examples:
        >>> check_int(3, "n_bins")
        3
        >>> check_int(2.0, "n_bins")
        Traceback (most recent call last):
        ...
        logitkit._namespace.LogitkitTypeError: Expected `n_bins` to be a positive int, but got 2.0
    """
    if what is None:
        if low == 1 and high is None:
            what = "a positive int"
        elif low == 0 and high is None:
            what = "a non-negative int"
        elif low is None and high is None:
            what = "an int"
        else:
            what = f"an int in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise LogitkitTypeError(expected(arg, what, value))
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise LogitkitValueError(expected(arg, what, value))
    return v


def check_bool(value: object, arg: str) -> bool:
    """``value`` as a bool (a Python or NumPy bool, nothing else), else a :class:`LogitkitTypeError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise LogitkitTypeError(expected(arg, "a bool", value))
    return bool(value)


REDUCTIONS = ("none", "sum", "mean")


def check_reduction(reduction: object) -> str:
    """``reduction`` as one of ``"none"``, ``"sum"``, ``"mean"`` (the losses' one rule)."""
    return check_choice(reduction, "reduction", REDUCTIONS)
