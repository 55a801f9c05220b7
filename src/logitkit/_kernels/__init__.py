"""Fused CPU kernels for NumPy input (numba), chosen automatically when they apply.

The entry points, :func:`normalise` and :func:`cross_entropy`, take a problem the caller has
already validated (:mod:`._problem`) and return ``None`` when no kernel applies (a backend other
than NumPy or a CPU torch tensor, an unsupported dtype, layout or option, numba missing, or the
fast path turned off); otherwise the result and the rows the kernel left to the caller, which
computes them on its generic array-API path.  This package computes only: it imports nothing of
the library above :mod:`logitkit._namespace`, and never calls back into it.

Turning the fast path off, for comparison or debugging:

* ``LOGITKIT_DISABLE_KERNELS=1`` in the environment (read on every call),
* ``logitkit._kernels.set_fast_path(False)`` for the whole process,
* ``with logitkit._kernels.fast_path(False): ...`` for a block (a context variable: it applies to
  the current thread or task only, and overrides the two above).

Large outputs (4 MiB and more) are recycled once every array viewing them is freed, so that a
loop of calls does not pay the OS's page faults on each one (:mod:`._buffers`, which says how
this is bounded); ``LOGITKIT_BUFFER_CACHE=0`` or ``set_buffer_cache(0)`` turns that off and
:func:`release_buffers` gives the pooled memory back now.

numba is imported, and the kernels compiled (or loaded from numba's on-disk cache), the first time
a kernel is needed, never at ``import logitkit``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._buffers import buffer_cache_limit, release_buffers, set_buffer_cache
from ._buffers import empty as _empty  # kernel outputs: on huge pages, recycled when large
from ._problem import CrossEntropyResult, CrossEntropyRows, Normalise, NormaliseResult

__all__ = [
    "CrossEntropyResult",
    "CrossEntropyRows",
    "Normalise",
    "NormaliseResult",
    "buffer_cache_limit",
    "cross_entropy",
    "fast_path",
    "fast_path_enabled",
    "normalise",
    "release_buffers",
    "set_buffer_cache",
    "set_fast_path",
]

_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "logitkit_fast_path", default=None)
_process_default: list[bool] = [True]
_numba_available: list[bool | None] = [None]

#: Rows shorter than this are never split across threads.
_SPLIT_MIN_K = 16384
#: Inputs with fewer elements than this run on the calling thread: waking numba's thread pool
#: costs more than the work (and far more when the machine is busy).
_PARALLEL_MIN_SIZE = 1 << 16


def set_fast_path(enabled: bool) -> None:
    """Turn the numba fast path on or off for the whole process (it is on by default)."""
    _process_default[0] = bool(enabled)


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
    """Whether the fast path would be tried now (the switches above, and numba installed)."""
    forced = _override.get()
    if forced is False:
        return False
    if forced is None:
        if not _process_default[0]:
            return False
        if os.environ.get("LOGITKIT_DISABLE_KERNELS", "").strip().lower() in {"1", "true", "yes",
                                                                             "on"}:
            return False
    if _numba_available[0] is None:
        _numba_available[0] = importlib.util.find_spec("numba") is not None
    return bool(_numba_available[0])


# --------------------------------------------------------------------------------------------
# layouts the kernels take
# --------------------------------------------------------------------------------------------


def _float_array(x: Any) -> np.ndarray | None:
    if type(x) is not np.ndarray or x.dtype not in (np.float32, np.float64) or x.ndim == 0:
        return None
    return x


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


def _ro(a: np.ndarray) -> np.ndarray:
    """A read-only view: every input reaches the kernels with the same numba type (one compiled
    specialisation per dtype, whether or not the caller's array is writeable)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _kernels() -> Any:
    from . import _rows

    return _rows


def _threads() -> int:
    import numba

    return int(numba.get_num_threads())


#: numba threading layers that take parallel launches from several Python threads at once.
_THREADSAFE_LAYERS = frozenset({"omp", "tbb"})
_layer_threadsafe: list[bool | None] = [None]
_launch_lock = threading.Lock()


def _launch(kernel: Any, *args: Any) -> Any:
    """Run a parallel kernel, one launch at a time unless numba's threading layer allows more.

    numba's ``workqueue`` layer (the one every install has: ``omp`` and ``tbb`` need their
    runtimes, and macOS has neither by default) aborts the whole process when two Python
    threads launch parallel kernels at once, as a Dask thread pool or a server's worker
    threads do.  Under it, and until the first launch has told which layer numba loaded,
    launches take a lock; each kernel already uses every core, so little is lost.
    """
    if _layer_threadsafe[0]:
        return kernel(*args)
    with _launch_lock:
        result = kernel(*args)
        if _layer_threadsafe[0] is None:
            import numba

            _layer_threadsafe[0] = numba.threading_layer() in _THREADSAFE_LAYERS
    return result


def _parallel(size: int, threads: int) -> bool:
    """Whether an input of ``size`` elements is worth numba's thread pool."""
    return threads > 1 and size >= _PARALLEL_MIN_SIZE


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




# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------------

_MODES = {"softmax": 0, "log_softmax": 1, "logsumexp": 2}


def normalise(problem: Normalise) -> NormaliseResult | None:
    """softmax, log_softmax or logsumexp by the fused kernel, or ``None`` when it does not apply.

    The rows flagged in the result hold a NaN, a ``+inf`` or nothing finite: the caller computes
    them (the kernel's values there are undefined).
    """
    if not fast_path_enabled():
        return None
    x, torch_input = _numpy_input(problem.x)
    if x is None:
        return None
    where = problem.where
    if torch_input and where is not None:
        where = _torch_mask(where)
        if where is False:
            return None
    ax = _consecutive(problem.axes)
    inv_t = _inverse(problem.temperature, x.dtype)
    if ax is None or inv_t is None or x.size == 0:
        return None
    cap = x.dtype.type(0.0) if problem.softcap is None else x.dtype.type(problem.softcap)
    plan = _Plan(x, *ax)
    mask = plan.mask(where)
    if mask is None:
        return None
    if plan.inner > 1 and (cap > 0 or plan.k > _STRIDED_MAX_K):
        plan, mask = _as_rows(plan, mask)
    mode = _MODES[problem.op]
    k = _kernels()
    if mode == 2:
        special = _run(k, plan, mask, cap, inv_t, mode, np.empty((0,) * 3, x.dtype))
        values = plan.lse.astype(x.dtype).reshape(plan.reduced_shape)  # type: ignore[attr-defined]
    else:
        out = _empty(plan.x.shape, plan.x.dtype, like=plan.x)
        special = _run(k, plan, mask, cap, inv_t, mode, out)
        values = _restore(out, plan)
    wide = _wide_rows(plan.x, problem.temperature, axis=1)
    if wide is not None:
        special |= wide.reshape(special.shape)
    return NormaliseResult(values, special.reshape(plan.reduced_shape), torch_input)


#: Rows along a strided axis longer than this are copied into contiguous rows first: the strided
#: kernel sums each row one term after another, and near-tie rows of K = 10⁵ ended 244× the
#: DESIGN §7 bound (the row kernels sum in lanes and blocks).  The softcap has no strided kernel.
_STRIDED_MAX_K = 256


def _as_rows(plan: _Plan, mask: tuple[np.ndarray, bool]) -> tuple[_Plan, tuple[np.ndarray, bool]]:
    """A strided ``(outer, K, inner)`` plan as ``(outer·inner, K)`` contiguous rows (a copy)."""
    rows = _Plan(np.ascontiguousarray(np.moveaxis(plan.x, 1, 2)).reshape(-1, plan.k), 1, 1)
    rows.shape, rows.reduced_shape = plan.shape, plan.reduced_shape
    rows.strided = (plan.outer, plan.inner)  # type: ignore[attr-defined]
    m, has_mask = mask
    if has_mask:
        m = np.ascontiguousarray(np.moveaxis(m, 1, 2)).reshape(-1, plan.k)
    return rows, (m, has_mask)


def _restore(out: np.ndarray, plan: _Plan) -> np.ndarray:
    """The kernel's output in the input's shape (moved back when :func:`_as_rows` made rows)."""
    strided = getattr(plan, "strided", None)
    if strided is None:
        return out.reshape(plan.shape)
    outer, inner = strided
    back = np.moveaxis(out.reshape(outer, inner, plan.k), 2, 1)
    return np.ascontiguousarray(back).reshape(plan.shape)


def _numpy_input(x: Any) -> tuple[np.ndarray | None, bool]:
    """``x`` as a float32/float64 NumPy array with at least one axis (a zero-copy view of a CPU
    torch tensor outside autograd), and whether it was a torch tensor; ``(None, False)`` when the
    kernels do not take it."""
    if type(x) is not np.ndarray:
        view = _torch_view(x)
        return (None, False) if view is None else (_float_array(view), True)
    return _float_array(x), False


def _consecutive(axes: tuple[int, ...]) -> tuple[int, int] | None:
    """``(first, last)`` of the reduced axes when they are consecutive (in any order), else None."""
    first, last = min(axes), max(axes)
    return (first, last) if last - first == len(axes) - 1 else None


def _inverse(temperature: float, dtype: np.dtype) -> Any:
    """``1/T`` in ``dtype``, or None when T or 1/T is not a normal number of it (the generic path
    scales those exactly)."""
    info = np.finfo(dtype)
    t = float(temperature)
    if not (float(info.smallest_normal) <= t <= float(info.max)):
        return None
    inv = 1.0 / t
    if not (float(info.smallest_normal) <= inv <= float(info.max)):
        return None
    return dtype.type(inv)


def _wide_rows(x: np.ndarray, temperature: float, axis: int) -> np.ndarray | None:
    """The rows (reduced over ``axis``) whose ``x − max`` overflows, or None when there is none.

    The kernels shift before they divide, and above T = 1 a row spanning more than the float
    range (``[3e38, −3e38]`` in float32) has a finite ``(x − max)/T`` that the shift overflows:
    such rows are flagged for the caller.  At T ≤ 1 the quotient overflows with the shift.  One
    pass over the whole input rules them out first (NaN is ignored: such rows are flagged anyway).
    """
    if temperature <= 1.0:
        return None
    fmax = float(np.finfo(x.dtype).max)
    with np.errstate(over="ignore", invalid="ignore"):
        if not float(np.fmax.reduce(x, axis=None)) - float(np.fmin.reduce(x, axis=None)) > fmax:
            return None
        span = np.fmax.reduce(x, axis=axis).astype(np.float64) - np.fmin.reduce(x, axis=axis)
    return np.asarray(span > fmax)


def _run(k: Any, plan: _Plan, mask: tuple[np.ndarray, bool], cap: Any, inv_t: Any, mode: int,
         out: np.ndarray) -> np.ndarray:
    """Run the right kernel; returns the ``special`` flags, fills ``out`` (and ``plan.lse``)."""
    m, has_mask = mask
    if plan.inner == 1:
        x2 = plan.x.reshape(plan.outer, plan.k)
        o2 = out.reshape(plan.outer, plan.k) if out.size else np.empty((1, 1), plan.x.dtype)
        lse = np.empty(plan.outer, dtype=np.float64)
        special = np.zeros(plan.outer, dtype=np.bool_)
        threads = _threads()
        if not _parallel(plan.x.size, threads):
            k.rows_serial(_ro(x2), _ro(m), has_mask, cap, inv_t, mode, o2, lse, special, 1)
        elif plan.outer < threads and plan.k >= _SPLIT_MIN_K:
            parts = -(-2 * threads // plan.outer)
            _launch(k.rows_split, _ro(x2), _ro(m), has_mask, cap, inv_t, mode, o2, lse, special,
                    parts)
        else:
            _launch(k.rows, _ro(x2), _ro(m), has_mask, cap, inv_t, mode, o2, lse, special,
                    threads)
    else:
        m3 = m if has_mask else np.ones((1, 1, 1), dtype=np.bool_)
        o3 = out if out.size else np.empty((1, 1, 1), plan.x.dtype)
        lse = np.empty((plan.outer, plan.inner), dtype=np.float64)
        special = np.zeros((plan.outer, plan.inner), dtype=np.bool_)
        args = (_ro(plan.x), _ro(m3), has_mask, inv_t, mode, o3, lse, special)
        if _parallel(plan.x.size, _threads()):
            _launch(k.strided, *args)
        else:
            k.strided_serial(*args)
    plan.lse = lse  # type: ignore[attr-defined]
    return special


# --------------------------------------------------------------------------------------------
# cross-entropy with its gradient
# --------------------------------------------------------------------------------------------


def cross_entropy(problem: CrossEntropyRows) -> CrossEntropyResult | None:
    """Per-row cross-entropy losses (and the gradient, if asked for) by the fused kernel, or
    ``None`` when it does not apply.

    Flagged rows (a NaN, a ``+inf`` or nothing finite among the unmasked logits, a label outside
    ``[0, K)``, a gradient coefficient that overflows) are left to the caller, their gradient
    rows untouched.
    """
    if not fast_path_enabled():
        return None
    return _cross_entropy_rows(problem)


def _ce_kernel(x: np.ndarray) -> Any:
    """:func:`ce_rows` (launched through :func:`.._launch`), or its serial twin for inputs too
    small for the thread pool."""
    from ._ce import ce_rows, ce_rows_serial

    if _parallel(x.size, _threads()):
        return functools.partial(_launch, ce_rows)
    return ce_rows_serial


def _cross_entropy_rows(pb: CrossEntropyRows) -> CrossEntropyResult | None:
    """:func:`ce_rows` on a validated problem, or ``None`` when the kernel does not apply."""
    torch_input = type(pb.x) is not np.ndarray
    x = _float_array(_torch_view(pb.x) if torch_input else pb.x)
    if x is None or x.ndim != 2 or not x.flags.c_contiguous:
        return None
    n, k = x.shape
    dt = x.dtype
    inv_t = _inverse(pb.temperature, dt)
    if n == 0 or k == 0 or inv_t is None:
        return None
    wide = _wide_rows(x, pb.temperature, axis=1)
    cap = dt.type(0.0) if pb.softcap is None else dt.type(pb.softcap)

    is_prob = pb.probs is not None
    if is_prob:
        probs = _array(pb.probs)
        if probs is None or probs.shape != x.shape or probs.dtype != dt:
            return None
        probs = np.ascontiguousarray(probs)
        labels = np.zeros(1, dtype=np.int64)
    else:
        lab = _array(pb.labels)
        if lab is None or lab.shape != (n,) or lab.dtype.kind not in "iu":
            return None
        labels = lab.astype(np.int64, copy=False)
        probs = np.zeros((1, 1), dtype=dt)
    counted: Any = np.ones(n, dtype=np.bool_)
    if pb.counted is not None:
        counted = _array(pb.counted)
        if counted is None or counted.shape != (n,):
            return None
        counted = counted.astype(np.bool_, copy=False)
        if not is_prob:  # rows that do not count may hold any label: never index with it
            labels = np.where(counted, labels, 0)
    has_mask = pb.where is not None
    mask: Any = np.ones((1, 1), dtype=np.bool_)
    if has_mask:
        mask = _array(pb.where)
        if mask is None or mask.ndim != 2 or mask.shape[1] != k or mask.shape[0] not in (1, n):
            return None
        mask = np.ascontiguousarray(mask, dtype=np.bool_)
    has_weight = pb.weight is not None
    w: Any = np.ones(1, dtype=dt)
    if has_weight:
        w = _array(pb.weight)
        if w is None or w.shape != (k,):
            return None
        w = np.ascontiguousarray(w, dtype=dt)

    write = pb.grad_scale is not None
    if write:
        scales = _array(pb.grad_scale) if not isinstance(pb.grad_scale, float) else np.full(
            1, pb.grad_scale)
        if scales is None or scales.size not in (1, n):
            return None
        scales = np.ascontiguousarray(scales.reshape(-1), dtype=dt)
        g: Any
        if pb.out is None:
            g = _empty(x.shape, dt, like=x)
        else:
            g = _array(pb.out)
            if g is None or g.shape != x.shape or g.dtype != dt or not g.flags.c_contiguous:
                return None
            same = g.__array_interface__["data"][0] == x.__array_interface__["data"][0]
            if not same and np.shares_memory(g, x):
                # Partial overlap: the row-by-row order would corrupt the logits.  The same array
                # is fine: each row's logits are read before its gradient row is written.
                return None
            if same and (wide is not None or (pb.z_loss > 0.0 and not _coefficient_bounded(x, pb))):
                # A flagged row is left to the caller after its exponentials were written (a
                # z-loss coefficient that overflows, a row too wide for the shift): in place,
                # its logits would be gone.
                return None
    else:
        scales = np.ones(1, dtype=dt)
        g = np.empty((1, 1), dtype=dt)

    loss = np.zeros(n, dtype=np.float64)
    special = np.zeros(n, dtype=np.bool_)
    stat = np.empty((2, n), dtype=np.float64)
    _ce_kernel(x)(_ro(x), g, _ro(labels), _ro(probs), is_prob, _ro(mask), has_mask, _ro(w),
                  has_weight, _ro(counted), float(pb.label_smoothing), float(pb.z_loss),
                  float(pb.logit_l2), cap, inv_t, _ro(scales), write, loss, stat[0], stat[1],
                  special, _threads())
    if wide is not None:
        special |= wide
    return CrossEntropyResult(loss, g if write else None, special, torch_input)


def _array(a: Any) -> np.ndarray | None:
    """A NumPy array (or a zero-copy view of a CPU torch tensor), else None."""
    if a is None:
        return None
    if type(a) is np.ndarray:
        return a
    if type(a).__module__.startswith("torch"):
        import torch

        if isinstance(a, torch.Tensor) and a.device.type == "cpu" and not a.is_sparse:
            return a.detach().resolve_conj().resolve_neg().numpy()
    return None


def _coefficient_bounded(x: np.ndarray, pb: CrossEntropyRows) -> bool:
    """Whether every row's z-loss coefficient ``Σ W + 2 c_z lse`` is finite, from a bound on
    ``|lse| ≤ max|x|/T + log K``."""
    # Rows with a NaN or an infinity are flagged before anything is written: bound the others.
    top = float(np.max(np.abs(np.where(np.isfinite(x), x, 0.0)), initial=0.0))
    bound = top / pb.temperature + math.log(x.shape[1]) + 1.0
    return bool(2.0 * pb.z_loss * bound < 1e300)
