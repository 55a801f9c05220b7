"""Fused native CPU kernels for NumPy input (C++17, nanobind), chosen automatically when they apply.

Each ``*_fast`` entry point returns ``None`` when the fast path does not apply to its arguments (a
backend other than NumPy or a CPU torch tensor, an unsupported dtype or option, the extension missing, or
the fast path turned off), and the caller then takes the generic array-API path, which computes
the same values (within the accuracy bounds of DESIGN §7) and raises the errors for bad input.

The kernels are compiled ahead of time when logitkit is installed (``_native``, built from
``csrc/`` by scikit-build-core), once per SIMD target, and the widest target the CPU runs is
chosen when the extension is first imported: the first call of each kernel costs nothing more
than the next.  They release the GIL and run on a small pool of threads of their own, which is
re-created in the child of a ``fork`` and left alone for small inputs (see ``csrc/pool.cpp``).

Turning the fast path off, for comparison or debugging (the public faces of these switches are
in :mod:`logitkit.config`):

* ``LOGITKIT_DISABLE_KERNELS=1`` in the environment (read on every call),
* ``set_fast_path(False)`` for the whole process,
* ``with fast_path(False): ...`` for a block (a context variable: it applies to the current
  thread or task only, and overrides the two above).

Large outputs (4 MiB and more) are recycled once every array viewing them is freed, so that a
loop of calls does not pay the OS's page faults on each one (:mod:`._buffers`, which says how
this is bounded); ``LOGITKIT_BUFFER_CACHE=0`` or ``set_buffer_cache(0)`` turns that off and
:func:`release_buffers` gives the pooled memory back now.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._buffers import buffer_cache_limit, release_buffers, set_buffer_cache
from ._buffers import empty as _empty  # kernel outputs: on huge pages, recycled when large

__all__ = [
    "buffer_cache_limit",
    "cross_entropy_with_grad_fast",
    "fast_path",
    "fast_path_enabled",
    "log_softmax_fast",
    "logsumexp_fast",
    "native",
    "num_threads",
    "release_buffers",
    "set_buffer_cache",
    "set_fast_path",
    "set_num_threads",
    "simd_target",
    "softmax_fast",
]

_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "logitkit_fast_path", default=None)
_process_default: list[bool] = [True]
_native_module: list[Any] = []

SOFTMAX, LOG_SOFTMAX, LSE = 0, 1, 2


def native() -> Any:
    """The compiled extension (``logitkit._kernels._native``), or None where it is missing (a
    checkout that was never installed); imported on first use, not at ``import logitkit``."""
    if not _native_module:
        try:
            from . import _native as mod  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - every install builds it
            mod = None
        _native_module.append(mod)
    return _native_module[0]


def set_fast_path(enabled: bool) -> None:
    """Turn the kernels on or off for the whole process (they are on by default)."""
    _process_default[0] = bool(enabled)


def num_threads() -> int:
    """Threads a kernel may use, the calling thread included (``LOGITKIT_NUM_THREADS``, read when
    the extension is imported, else the CPUs this process may run on); 1 without the kernels."""
    mod = native()
    return 1 if mod is None else int(mod.num_threads())


def set_num_threads(n: int) -> None:
    """Let the kernels use at most ``n`` threads (0: as many as CPUs this process may run on)."""
    from .._namespace import check_int

    n = check_int(n, "n", low=0, what="a non-negative int")
    mod = native()
    if mod is not None:
        mod.set_num_threads(n)


def simd_target() -> str | None:
    """The instruction set the kernels run with (``"avx512"``, ``"avx2"`` or ``"baseline"``),
    None without the kernels.  ``LOGITKIT_SIMD`` asks for a narrower one."""
    mod = native()
    return None if mod is None else str(mod.target())


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Within the block, use (``True``) or bypass (``False``) the fast path, in this context only.

    Examples:
        >>> import numpy as np
        >>> import logitkit
        >>> from logitkit._kernels import fast_path
        >>> x = np.array([[1.0, 2.0, 3.0]])
        >>> with fast_path(False):
        ...     generic = logitkit.softmax(x)
        >>> bool(np.allclose(logitkit.softmax(x), generic, rtol=1e-14))
        True
    """
    token = _override.set(bool(enabled))
    try:
        yield
    finally:
        _override.reset(token)


def fast_path_enabled() -> bool:
    """Whether the kernels would be tried now (the switches above, and the extension built)."""
    forced = _override.get()
    if forced is False:
        return False
    if forced is None:
        if not _process_default[0]:
            return False
        if os.environ.get("LOGITKIT_DISABLE_KERNELS", "").strip().lower() in {"1", "true", "yes",
                                                                             "on"}:
            return False
    return native() is not None


# --------------------------------------------------------------------------------------------
# argument screening: anything unusual goes to the generic path (which validates it)
# --------------------------------------------------------------------------------------------


def _float_array(x: Any) -> np.ndarray | None:
    if type(x) is not np.ndarray or x.dtype not in (np.float32, np.float64) or x.ndim == 0:
        return None
    return x


def _scalar(value: Any) -> float | None:
    """A real Python/NumPy scalar (or 0-d array) as a float, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if type(value) is np.ndarray and value.ndim == 0 and value.dtype.kind == "f":
        return float(value)
    return None


def _inv_temperature(temperature: Any, dtype: np.dtype) -> Any:
    t = _scalar(temperature)
    if t is None or not (0.0 < t < math.inf):
        return None
    with np.errstate(over="ignore", divide="ignore"):  # a temperature that rounds to 0
        inv = dtype.type(1.0) / dtype.type(t)
    if not np.isfinite(inv) or inv == 0:
        return None
    return inv


def _softcap(softcap: Any, dtype: np.dtype) -> Any:
    if softcap is None:
        return dtype.type(0.0)
    c = _scalar(softcap)
    if c is None or not (0.0 < c < math.inf):
        return None
    return dtype.type(c)


def _axis(axis: Any, ndim: int) -> tuple[int, int] | None:
    """``(first, last)`` of the reduced axes when they are consecutive, else None."""
    if isinstance(axis, (bool, np.bool_)):
        return None
    axes = (axis,) if isinstance(axis, numbers.Integral) else axis
    if not isinstance(axes, (tuple, list)) or not axes:
        return None
    out = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            return None
        if not -ndim <= int(a) < ndim:
            return None
        out.append(int(a) % ndim)
    out.sort()
    if len(set(out)) != len(out) or out[-1] - out[0] != len(out) - 1:
        return None
    return out[0], out[-1]


class _Plan:
    """``x`` seen as ``(outer, K, inner)`` (a view of a C-contiguous array), and its mask."""

    def __init__(self, x: np.ndarray, first: int, last: int) -> None:
        self.shape = x.shape
        self.first, self.last = first, last
        self.outer = math.prod(x.shape[:first])
        self.k = math.prod(x.shape[first:last + 1])
        self.inner = math.prod(x.shape[last + 1:])
        self.x = np.ascontiguousarray(x).reshape(self.outer, self.k, self.inner)
        self.reduced_shape = x.shape[:first] + x.shape[last + 1:]
        self.keepdims_shape = tuple(1 if first <= a <= last else n for a, n in enumerate(x.shape))

    def mask(self, where: Any) -> tuple[np.ndarray, bool] | None:
        """``(mask, has_mask)``: rows ``(R, K)`` (R = 1 when shared by every row), or 3-D."""
        if where is None:
            return np.ones((1, 1), dtype=np.bool_), False
        if type(where) is not np.ndarray or where.dtype != np.bool_:
            return None
        try:
            wb = np.broadcast_to(where, self.shape)
        except ValueError:
            return None
        if self.inner == 1:
            batch_strides = wb.strides[: self.first]
            if all(s == 0 for s in batch_strides):
                row = wb[(0,) * self.first] if self.first else wb
                return np.ascontiguousarray(row).reshape(1, self.k), True
            return np.ascontiguousarray(wb).reshape(self.outer, self.k), True
        return np.ascontiguousarray(wb).reshape(self.outer, self.k, self.inner), True


# --------------------------------------------------------------------------------------------
# torch CPU tensors: zero-copy NumPy views
# --------------------------------------------------------------------------------------------


def _torch_view(x: Any) -> np.ndarray | None:
    """A NumPy view of a CPU, contiguous, float32/float64 torch tensor outside autograd."""
    mod = type(x).__module__
    if not mod.startswith("torch"):
        return None
    import torch

    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.is_sparse:
        return None
    if x.dtype not in (torch.float32, torch.float64) or not x.is_contiguous():
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return None
    if x.is_conj() or x.is_neg() or type(x) is not torch.Tensor:
        return None
    return x.detach().numpy()


def _torch_mask(where: Any) -> Any:
    if where is None:
        return None
    import torch

    if not isinstance(where, torch.Tensor) or where.device.type != "cpu":
        return False
    if where.dtype != torch.bool:
        return False
    return where.detach().resolve_conj().numpy()


def _with_torch(x: Any, where: Any, call: Any) -> Any:
    """Run ``call(x_numpy, where_numpy)`` for torch inputs and wrap the result back."""
    view = _torch_view(x)
    if view is None:
        return None
    mask = _torch_mask(where)
    if mask is False:
        return None
    result = call(view, mask)
    if result is None:
        return None
    import torch

    if isinstance(result, tuple):
        return tuple(torch.from_numpy(np.asarray(r)) for r in result)
    return torch.from_numpy(np.asarray(result))


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------------


def _normalise_fast(x: Any, mode: int, *, axis: Any, temperature: Any, where: Any, softcap: Any,
                    sink: Any, dtype: Any) -> np.ndarray | None:
    if not fast_path_enabled():
        return None
    if type(x) is not np.ndarray:
        return _with_torch(x, where, lambda v, w: _normalise_fast(
            v, mode, axis=axis, temperature=temperature, where=w, softcap=softcap, sink=sink,
            dtype=None if dtype is None else _torch_dtype_to_numpy(dtype)))
    xa = _float_array(x)
    if xa is None or sink is not None:
        return None
    if dtype is not None and np.dtype(dtype) != xa.dtype:
        return None
    ax = _axis(axis, xa.ndim)
    inv_t = _inv_temperature(temperature, xa.dtype)
    cap = _softcap(softcap, xa.dtype)
    if ax is None or inv_t is None or cap is None or xa.size == 0:
        return None
    plan = _Plan(xa, *ax)
    mask = plan.mask(where)
    if mask is None or (plan.inner > 1 and cap > 0):
        return None
    out = _empty(plan.x.shape, plan.x.dtype, like=plan.x)
    special = _run(plan, mask, cap, inv_t, mode, out)
    if special.any():
        _fix_special(plan, special, out, mode, where=where, temperature=temperature,
                     softcap=softcap)
    return out.reshape(plan.shape)


def _torch_dtype_to_numpy(dtype: Any) -> Any:
    try:
        return np.dtype(str(dtype).replace("torch.", ""))
    except TypeError:
        return object


def _run(plan: _Plan, mask: tuple[np.ndarray, bool], cap: Any, inv_t: Any, mode: int,
         out: np.ndarray | None) -> np.ndarray:
    """Run the rows or the strided kernel; returns the ``special`` flags, fills ``out`` (None
    for logsumexp) and ``plan.lse``."""
    m, has_mask = mask
    mod = native()
    if plan.inner == 1:
        lse = np.empty(plan.outer, dtype=np.float64)
        special = np.zeros(plan.outer, dtype=np.bool_)
        mod.rows(plan.x.reshape(plan.outer, plan.k),
                 None if out is None else out.reshape(plan.outer, plan.k), lse, special,
                 m if has_mask else None, float(cap), float(inv_t), mode)
    else:
        lse = np.empty((plan.outer, plan.inner), dtype=np.float64)
        special = np.zeros((plan.outer, plan.inner), dtype=np.bool_)
        mod.strided(plan.x, out, lse, special, m if has_mask else None, float(inv_t), mode)
    plan.lse = lse  # type: ignore[attr-defined]
    return special


def _special_index(plan: _Plan, special: np.ndarray) -> tuple[np.ndarray, ...]:
    if plan.inner == 1:
        return (np.flatnonzero(special),)
    oi, ji = np.nonzero(special)
    return oi, ji


def _gather(a: np.ndarray, plan: _Plan, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """The special rows of a ``(outer, K, inner)`` array as ``(S, K)``."""
    if plan.inner == 1:
        return a.reshape(a.shape[0], -1)[idx[0]]
    return a[idx[0], :, idx[1]]


def _special_rows(plan: _Plan, special: np.ndarray,
                  where: Any) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray | None]:
    """The flagged rows (NaN, +inf, nothing finite) for the generic path: their index, their
    logits as ``(S, K)`` and their mask (None without one)."""
    idx = _special_index(plan, special)
    xs = _gather(plan.x, plan, idx)
    ws = None
    if where is not None:
        wb = np.broadcast_to(where, plan.shape).reshape(plan.x.shape)
        ws = _gather(wb, plan, idx)
    return idx, xs, ws


def _fix_special(plan: _Plan, special: np.ndarray, out: np.ndarray, mode: int, *, where: Any,
                 temperature: Any, softcap: Any) -> None:
    """Recompute the flagged rows with the generic path."""
    from .. import _core

    idx, xs, ws = _special_rows(plan, special, where)
    fn = _core.softmax if mode == SOFTMAX else _core.log_softmax
    with fast_path(False):
        fixed = fn(xs, axis=-1, temperature=temperature, where=ws, softcap=softcap)
    if plan.inner == 1:
        out.reshape(out.shape[0], -1)[idx[0]] = fixed
    else:
        out[idx[0], :, idx[1]] = fixed


def softmax_fast(x: Any, /, **options: Any) -> Any:
    """:func:`logitkit.softmax` by the fused kernel, or ``None`` when it does not apply."""
    return _normalise_fast(x, SOFTMAX, **options)


def log_softmax_fast(x: Any, /, **options: Any) -> Any:
    """:func:`logitkit.log_softmax` by the fused kernel, or ``None`` when it does not apply."""
    return _normalise_fast(x, LOG_SOFTMAX, **options)


def logsumexp_fast(x: Any, /, *, axis: Any, b: Any, where: Any, keepdims: Any, return_sign: Any,
                   dtype: Any) -> Any:
    """:func:`logitkit.logsumexp` by the fused kernel, or ``None`` when it does not apply."""
    if not fast_path_enabled() or b is not None:
        return None
    if not isinstance(keepdims, bool) or not isinstance(return_sign, bool):
        return None
    if type(x) is not np.ndarray:
        return _with_torch(x, where, lambda v, w: logsumexp_fast(
            v, axis=axis, b=None, where=w, keepdims=keepdims, return_sign=return_sign,
            dtype=None if dtype is None else _torch_dtype_to_numpy(dtype)))
    xa = _float_array(x)
    if xa is None or (dtype is not None and np.dtype(dtype) != xa.dtype):
        return None
    ax = _axis(axis, xa.ndim)
    if ax is None or xa.size == 0:
        return None
    plan = _Plan(xa, *ax)
    mask = plan.mask(where)
    if mask is None:
        return None
    special = _run(plan, mask, 0.0, 1.0, LSE, None)
    lse = plan.lse  # type: ignore[attr-defined]
    if special.any():
        from .. import _core

        idx, xs, ws = _special_rows(plan, special, where)
        with fast_path(False):
            fixed = _core.logsumexp(xs, axis=-1, where=ws)
        lse[idx] = fixed
    out = lse.astype(xa.dtype).reshape(plan.keepdims_shape if keepdims else plan.reduced_shape)
    if not return_sign:
        return out
    sign = np.where(out == -np.inf, xa.dtype.type(0.0), xa.dtype.type(1.0))
    sign = np.where(np.isnan(out), xa.dtype.type(np.nan), sign).astype(xa.dtype)
    return out, sign.reshape(out.shape)


# --------------------------------------------------------------------------------------------
# cross-entropy with its gradient
# --------------------------------------------------------------------------------------------


def cross_entropy_with_grad_fast(logits: Any, target: Any, /, **options: Any) -> Any:
    """``(loss, dlogits)`` from the fused kernel, or ``None`` when the kernel does not apply.

    Called by :func:`logitkit.cross_entropy_with_grad` after it validated its arguments; takes the
    same keyword options plus ``out``.
    """
    if not fast_path_enabled():
        return None
    from . import _ce

    return _ce.cross_entropy_with_grad(logits, target, **options)


def torch_cross_entropy_forward(pb: Any) -> Any:
    """The torch adapter's forward statistics for CPU tensors by the kernel, or ``None``."""
    if not fast_path_enabled() or _torch_view(pb.x) is None:
        return None
    from . import _ce

    return _ce.torch_forward(pb)


def torch_cross_entropy_gradient(pb: Any, stats: Any, scale: Any) -> Any:
    """The torch adapter's ``∂loss/∂x`` for CPU tensors by the kernel (one fresh tensor), or
    ``None``."""
    if not fast_path_enabled() or _torch_view(pb.x) is None:
        return None
    from . import _ce

    return _ce.torch_gradient(pb, stats, scale)
