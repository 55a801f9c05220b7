"""Fused native CPU kernels (C++17, nanobind) for NumPy and CPU torch input, chosen automatically.

The entry points, :func:`normalise` and :func:`cross_entropy`, take a problem the caller has
already validated (:mod:`._problem`) and return ``None`` when no kernel applies (a backend other
than NumPy or a CPU torch tensor, an unsupported dtype, layout or option, the extension missing,
or the fast path turned off); otherwise the result and the rows the kernel left to the caller,
which computes them on its generic array-API path.  This package computes only: it imports
nothing of the library above :mod:`logitkit._namespace`, and never calls back into it.

The kernels are compiled ahead of time when logitkit is installed (``_native``, built from
``csrc/`` by scikit-build-core), once per SIMD target, and the widest target the CPU runs is
chosen when the extension is first imported: the first call of each kernel costs nothing more
than the next.  They release the GIL and run on a small pool of threads of their own, which is
re-created in the child of a ``fork`` and left alone for small inputs (``csrc/pool.cpp``).

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
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._buffers import buffer_cache_limit, release_buffers, set_buffer_cache
from ._buffers import empty as _empty  # kernel outputs: on huge pages, recycled when large
from ._problem import (
    CalibrationPass,
    CalibrationSums,
    CrossEntropyResult,
    CrossEntropyRows,
    Normalise,
    NormaliseResult,
)

__all__ = [
    "CalibrationPass",
    "CalibrationSums",
    "CrossEntropyResult",
    "CrossEntropyRows",
    "Normalise",
    "NormaliseResult",
    "affine_diag_sums",
    "beta_features",
    "beta_sums",
    "buffer_cache_limit",
    "calibration_sums",
    "cross_entropy",
    "fast_path",
    "fast_path_enabled",
    "native",
    "nll_sums",
    "normalise",
    "num_threads",
    "release_buffers",
    "set_buffer_cache",
    "set_fast_path",
    "set_num_threads",
    "simd_target",
]

_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "logitkit_fast_path", default=None)
_process_default: list[bool] = [True]
_native_module: list[Any] = []


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
    """Turn the kernels on or off for the whole process (they are on by default).

    Examples:
        >>> from logitkit import config
        >>> config.set_kernels(False)
        >>> config.kernels_enabled()
        False
        >>> config.set_kernels(True)
    """
    _process_default[0] = bool(enabled)


def num_threads() -> int:
    """Threads a kernel may use, the calling thread included (``LOGITKIT_NUM_THREADS``, read when
    the extension is imported, else the CPUs this process may run on); 1 without the kernels.

    Examples:
        >>> from logitkit import config
        >>> config.num_threads() >= 1
        True
    """
    mod = native()
    return 1 if mod is None else int(mod.num_threads())


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity mask; all online CPUs off Linux): the
    Python twin of ``csrc/pool.cpp``'s rule, so that the kernels' pool, the calibrators' Python
    thread pools and the CLI's idle-core test count the same CPUs (``os.cpu_count()`` counts
    the machine's, which oversubscribes a container pinned to a few of them).

    Examples:
        >>> from logitkit import config
        >>> 1 <= config.cpus_available() <= (os.cpu_count() or 1)
        True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def python_threads(cap: int) -> int:
    """Threads for a pool of Python threads (NumPy releases the GIL in its loops): at most
    ``cap``, at most ``LOGITKIT_NUM_THREADS`` when it is set (the kernels' setting, read the
    same way: a positive integer, anything else ignored), else the CPUs available."""
    env = os.environ.get("LOGITKIT_NUM_THREADS", "").strip()
    n = cpus_available()
    if env.isdigit() and int(env) > 0:
        n = int(env)
    return max(1, min(cap, n))


def set_num_threads(n: int) -> None:
    """Let the kernels use at most ``n`` threads (0: as many as CPUs this process may run on).

    Examples:
        >>> from logitkit import config
        >>> before = config.num_threads()
        >>> config.set_num_threads(1)
        >>> config.num_threads()
        1
        >>> config.set_num_threads(before)
    """
    from .._namespace import check_int

    n = check_int(n, "n", low=0, what="a non-negative int")
    mod = native()
    if mod is not None:
        mod.set_num_threads(n)


def simd_target() -> str | None:
    """The instruction set the kernels run with (``"avx512"``, ``"avx2"`` or ``"baseline"``),
    None without the kernels.  ``LOGITKIT_SIMD`` (read when the kernels are first used) asks
    for a narrower one."""
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

SOFTMAX, LOG_SOFTMAX, LSE = 0, 1, 2  # the native kernels' modes
_MODES = {"softmax": SOFTMAX, "log_softmax": LOG_SOFTMAX, "logsumexp": LSE}


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
    if mask is None or (plan.inner > 1 and cap > 0):
        return None
    mode = _MODES[problem.op]
    if mode == LSE:
        special = _run(plan, mask, cap, inv_t, mode, None)
        values = plan.lse.astype(x.dtype).reshape(plan.reduced_shape)  # type: ignore[attr-defined]
    else:
        out = _empty(plan.x.shape, plan.x.dtype, like=plan.x)
        special = _run(plan, mask, cap, inv_t, mode, out)
        values = out.reshape(plan.shape)
    return NormaliseResult(values, special.reshape(plan.reduced_shape), torch_input)


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


def _run(plan: _Plan, mask: tuple[np.ndarray, bool], cap: Any, inv_t: Any, mode: int,
         out: np.ndarray | None) -> np.ndarray:
    """Run the rows or the strided kernel; returns the flagged rows, fills ``out`` (None for
    logsumexp) and ``plan.lse``.

    Besides NaN, +inf and rows with nothing finite, the kernels flag the rows whose shift
    ``x − max`` overflows at T > 1 (``[3e38, −3e38]`` in float32): the quotient
    ``(x − max)/T`` is finite there and the generic path computes it.
    """
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


def _cross_entropy_rows(pb: CrossEntropyRows) -> CrossEntropyResult | None:
    """The native kernel (``csrc/ce.cpp``) on a validated problem, or ``None`` when it does not
    apply.  Besides NaN, +inf, nothing finite and labels outside ``[0, K)``, it flags rows whose
    z-loss terms or shifted logits would overflow, and rows a ``-inf`` logit makes infinite
    under an option; it decides before it writes a row, so ``out=x`` keeps the flagged rows'
    logits."""
    torch_input = type(pb.x) is not np.ndarray
    x = _float_array(_torch_view(pb.x) if torch_input else pb.x)
    if x is None or x.ndim != 2 or not x.flags.c_contiguous:
        return None
    n, k = x.shape
    dt = x.dtype
    inv_t = _inverse(pb.temperature, dt)
    if n == 0 or k == 0 or inv_t is None:
        return None
    args: dict[str, Any] = {"labels": None, "probs": None, "mask": None, "weight": None}
    if pb.probs is not None:
        probs = _array(pb.probs)
        if probs is None or probs.shape != x.shape or probs.dtype != dt:
            return None
        args["probs"] = np.ascontiguousarray(probs)
    else:
        lab = _array(pb.labels)
        if lab is None or lab.shape != (n,) or lab.dtype.kind not in "iu":
            return None
        args["labels"] = np.ascontiguousarray(lab, dtype=np.int64)
    counted = np.ones(n, dtype=np.bool_)
    if pb.counted is not None:
        c = _array(pb.counted)
        if c is None or c.shape != (n,):
            return None
        counted = np.ascontiguousarray(c, dtype=np.bool_)
    if pb.where is not None:
        mask = _array(pb.where)
        if mask is None or mask.ndim != 2 or mask.shape[1] != k or mask.shape[0] not in (1, n):
            return None
        args["mask"] = np.ascontiguousarray(mask, dtype=np.bool_)
    if pb.weight is not None:
        w = _array(pb.weight)
        if w is None or w.shape != (k,):
            return None
        args["weight"] = np.ascontiguousarray(w, dtype=dt)

    g: Any = None
    if pb.grad_scale is not None:
        scales = (np.full(1, float(pb.grad_scale)) if isinstance(pb.grad_scale, (int, float))
                  else _array(pb.grad_scale))
        if scales is None or scales.size not in (1, n):
            return None
        scales = scales.reshape(-1)
        if scales.dtype != dt:  # the kernel reads float64 or x's dtype as they are
            scales = scales.astype(np.float64)
        scales = np.ascontiguousarray(scales)
        if pb.out is None:
            g = _empty(x.shape, dt, like=x)
        else:
            g = _array(pb.out)
            if g is None or g.shape != x.shape or g.dtype != dt or not g.flags.c_contiguous:
                return None
            if not g.flags.writeable:
                return None
            same = g.__array_interface__["data"][0] == x.__array_interface__["data"][0]
            if not same and np.shares_memory(g, x):
                # Partial overlap: the row-by-row order would corrupt the logits.  The same array
                # is fine: each row's logits are read before its gradient row is written.
                return None
    else:
        scales = np.ones(1)

    loss = np.zeros(n, dtype=np.float64)
    flagged = np.zeros(n, dtype=np.bool_)
    native().cross_entropy(
        x=x, out=g, counted=counted, scales=scales, label_smoothing=float(pb.label_smoothing),
        z_loss=float(pb.z_loss), logit_l2=float(pb.logit_l2),
        softcap=0.0 if pb.softcap is None else float(dt.type(pb.softcap)), inv_t=float(inv_t),
        loss=loss, lse=None, coef=None, special=flagged, **args)
    return CrossEntropyResult(loss, g, flagged, torch_input)


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


# --------------------------------------------------------------------------------------------
# the temperature fit's sums
# --------------------------------------------------------------------------------------------


def nll_sums(z: Any, y: Any, beta: float,
             w: Any = None) -> tuple[float, float, float, float] | None:
    """``(Σw, Σw·nll, Σw·dnll/dβ, Σw·d²nll/dβ²)`` of the temperature fit over the rows of ``z``
    (N, K) with labels ``y`` in ``[0, K)`` (validated by the caller), in float64 and one read of
    each row (``csrc/nll.cpp``); ``None`` when the kernel does not apply (not a float32/float64
    NumPy array, the fast path off)."""
    if not fast_path_enabled():
        return None
    x = _float_array(z)
    if x is None or x.ndim != 2 or x.shape[1] == 0:
        return None
    labels = np.ascontiguousarray(y, dtype=np.int64)
    weight = None if w is None else np.ascontiguousarray(w, dtype=np.float64)
    sums = native().nll_sums(np.ascontiguousarray(x), labels, weight, float(beta))
    return float(sums[0]), float(sums[1]), float(sums[2]), float(sums[3])



def beta_sums(feat: np.ndarray, w: Any, theta: np.ndarray) -> np.ndarray | None:
    """Beta calibration's ten per-class sums ``(10, C)`` over the rows of ``feat`` ``(N, 2C)``
    float64 (``[log p | −log(1 − p)]`` of the ``C`` classes) with coefficients ``theta``
    ``(3, C)`` (``csrc/beta.cpp``: the classes are the SIMD lanes, one read of each row);
    ``None`` when the kernel does not apply (the fast path off, another dtype or layout)."""
    if not fast_path_enabled() or type(feat) is not np.ndarray or feat.dtype != np.float64 \
            or feat.ndim != 2 or feat.shape[1] % 2:
        return None
    kernel = getattr(native(), "beta_sums", None)
    if kernel is None:  # pragma: no cover - an extension built before the kernel
        return None
    c = feat.shape[1] // 2
    sums = np.empty((10, c))
    weight = None if w is None else np.ascontiguousarray(w, dtype=np.float64)
    kernel(np.ascontiguousarray(feat), weight,
           np.ascontiguousarray(theta, dtype=np.float64).reshape(3, c), sums)
    return sums


def beta_features(x: Any, floor: float) -> np.ndarray | None:
    """``[max(log p, floor) | −max(log(1 − p), floor)]`` ``(N, 2K)`` float64 of the rows of
    logits ``x`` ``(N, K)``, ``p = softmax(x)`` (``csrc/beta.cpp``: one read of each row);
    ``None`` when the kernel does not apply (the fast path off, not float32/float64 rows)."""
    if not fast_path_enabled():
        return None
    z = _float_array(x)
    kernel = getattr(native(), "beta_features", None)
    if z is None or z.ndim != 2 or kernel is None:
        return None
    out = np.empty((z.shape[0], 2 * z.shape[1]))
    kernel(np.ascontiguousarray(z), out, float(floor))
    return out


def affine_diag_sums(x: Any, y: Any, w: Any, a: np.ndarray,
                     b: np.ndarray) -> np.ndarray | None:
    """``(1 + 2K,)``: ``Σw·loss``, ``Σw(p − t)⊙x`` and ``Σw(p − t)`` of the cross-entropy of
    ``a ⊙ x + b`` over the rows of ``x`` ``(N, K)`` with labels ``y`` in ``[0, K)``
    (validated by the caller), in float64 (``csrc/affine.cpp``: one read of each row);
    ``None`` when the kernel does not apply."""
    if not fast_path_enabled():
        return None
    z = _float_array(x)
    kernel = getattr(native(), "affine_diag_sums", None)
    if z is None or z.ndim != 2 or z.shape[1] == 0 or kernel is None:
        return None
    sums = np.empty(1 + 2 * z.shape[1])
    weight = None if w is None else np.ascontiguousarray(w, dtype=np.float64)
    kernel(np.ascontiguousarray(z), np.ascontiguousarray(y, dtype=np.int64), weight,
           np.ascontiguousarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64),
           sums)
    return sums


# --------------------------------------------------------------------------------------------
# the calibration engine's pass
# --------------------------------------------------------------------------------------------

#: The rows of one call are cut into tasks of about this many bytes of input (at most
#: MAX_TASKS), whatever the threads: each task sums into a scratch of its own, and the
#: scratches are added in task order, so the sums never depend on the threads.
TASK_BYTES = 1 << 21
MAX_TASKS = 64
#: The tasks' scratch sums stay within this share of the input (and 4 MiB for small inputs).
SCRATCH_SHARE = 1 / 32
#: Rows converted to the working dtype at a time, in elements (other dtypes and layouts).
SLAB_ELEMENTS = 1 << 20
#: The kernel's sum of a row of probabilities (float lanes over blocks of 256 entries, double
#: across them; a row of K <= 32 in one lane: within 31u) is within 5e-6 of the exact sum, the
#: engine's reference judges the exact sum: rows this close to the tolerance are left to it.
ROW_SUM_MARGIN = 1e-5


def calibration_tasks(n: int, k: int, itemsize: int, acc_len: int) -> int:
    """The number of equal row ranges a pass over ``n × k`` entries of ``itemsize`` bytes is
    cut into (a function of the shape only), with ``acc_len`` float64 sums per task."""
    work = n * k * itemsize
    t = min(MAX_TASKS, max(1, work // TASK_BYTES))
    budget = max(1 << 22, int(work * SCRATCH_SHARE))
    return int(max(1, min(t, budget // (8 * acc_len), n)))


def calibration_sums(problem: CalibrationPass) -> CalibrationSums | None:
    """The calibration engine's pass (``csrc/calib.cpp``) on a validated problem, or ``None``
    when the fast path is off or the extension missing."""
    if not fast_path_enabled():
        return None
    pb = problem
    x = pb.x
    n, k = x.shape
    g = int(pb.groups)
    fields = 5 if pb.moments else 3
    n_bins = 0 if pb.edges is None else int(pb.edges.shape[0]) - 1
    cw_bins = 0 if pb.cw_edges is None else int(pb.cw_edges.shape[0]) - 1
    acc_len = g * (4 + fields * n_bins + 5 * k * cw_bins)
    out = CalibrationSums(
        totals=np.zeros((g, 4)),
        bins=np.zeros((g, fields, n_bins)) if n_bins else None,
        cw=np.zeros((g, 5, k, cw_bins)) if cw_bins else None,
        conf=np.empty(n) if pb.keep_rows else None,
        hit=np.empty(n) if pb.keep_rows else None,
        flagged=np.zeros(n, dtype=np.bool_),
        n_flagged=0,
        invalid=False,
    )
    if n == 0:
        return out
    labels = np.asarray(pb.labels)  # int32 and int64 read as they are
    if not (labels.dtype in (np.int32, np.int64) and labels.flags.c_contiguous):
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    edges = None if pb.edges is None else np.ascontiguousarray(pb.edges, dtype=np.float64)
    cw_edges = None if pb.cw_edges is None else np.ascontiguousarray(pb.cw_edges,
                                                                      dtype=np.float64)
    work = np.dtype(pb.work)
    direct = x.dtype == work and x.flags.c_contiguous
    step = n if direct else max(1, SLAB_ELEMENTS // k)
    mod = native()
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = x if direct else np.ascontiguousarray(x[start:stop], dtype=work)
        tasks = calibration_tasks(stop - start, k, work.itemsize, acc_len)
        flagged, invalid = mod.calibration_sums(
            rows, labels[start:stop], offset=int(pb.offset) + start, groups=g,
            from_logits=bool(pb.from_logits), beta=float(pb.beta),
            tol=max(0.0, float(pb.tolerance) - ROW_SUM_MARGIN), top=bool(pb.top),
            brier=bool(pb.brier), nll=bool(pb.nll), moments=bool(pb.moments), edges=edges,
            uniform=bool(pb.uniform), cw_edges=cw_edges, cw_uniform=bool(pb.cw_uniform),
            tot=out.totals, bins=out.bins, cw=out.cw,
            conf=None if out.conf is None else out.conf[start:stop],
            hit=None if out.hit is None else out.hit[start:stop],
            flagged=out.flagged[start:stop], scratch=np.empty(tasks * acc_len), tasks=tasks)
        out.n_flagged += int(flagged)
        if invalid:
            out.invalid = True
            break
    return out
