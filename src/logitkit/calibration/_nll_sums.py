"""Per-chunk sums of the temperature-scaling NLL and its first two derivatives in β = 1/T.

For logits ``z`` (rows ``i``), labels ``y``, weights ``w``, any per-row shift ``c_i``,
``d = z − c`` and ``p = softmax(β d)``:

    nll_i  = log Σ_k exp(β d_ik) − β d_iy
    grad_i = E_p[d_i] − d_iy                 (d nll_i / dβ)
    hess_i = Var_p[d_i] ≥ 0                  (d² nll_i / dβ²)

Every Newton step needs only ``(Σ w, Σ w·nll, Σ w·grad, Σ w·hess)`` over all rows, so the fit is
one pass over the data per step, and chunks (or Dask blocks, or workers) are summed.

NumPy float32/float64 chunks go to the native kernel (``_kernels.nll_sums``), which shifts by the
row maximum and sums in one read of each row, without N×K temporaries.  Other arrays (and the
kernels switched off) take the NumPy path below.  There the shift is the label's own logit
(``d_iy = 0``), which needs no row maximum: the sum then
holds the term 1 and cannot underflow, and it overflows only when ``β (max z − z_y) > 709``.
Rows where that happens, and chunks with ``-inf`` entries, take the careful path, shifted by the
row maximum.  Entries equal to ``-inf`` are excluded classes (probability 0); a NaN or ``+inf``
makes the sums NaN, and a label whose logit is ``-inf`` makes them ``inf`` — the caller reports
both.  All arithmetic is float64.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import _kernels
from ._base import expand_rows
from ._engine import in_order

# -1e300 stands for -inf inside the sums: exp(β·(-1e300)) is 0 for every admissible β, and
# 0·(-1e300) is 0 where 0·(-inf) would be NaN.
_FLOOR = -1e300

Sums = tuple[float, float, float, float]
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]

_CHUNKS_PER_TASK = 8


def _moments(d: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row sums ``Σ e``, ``Σ e d``, ``Σ e d²`` with ``e = exp(β d)`` (``d`` is overwritten
    by nothing; one float64 temporary)."""
    ones = np.ones(d.shape[1])
    e = np.multiply(d, beta)
    np.exp(e, out=e)
    s0 = e @ ones  # row sums by BLAS: faster than a reduction over short rows
    ed = np.multiply(e, d, out=e)
    s1 = ed @ ones
    s2 = np.einsum("ij,ij->i", ed, d)
    return s0, s1, s2


def _rows_careful(z: np.ndarray, y: np.ndarray, beta: float) -> Rows:
    """Per-row ``(nll, grad, hess)`` shifted by the row maximum, ``-inf`` entries floored."""
    m = z.max(axis=1, keepdims=True).astype(np.float64)
    d = np.subtract(z, m, dtype=np.float64)
    d_y = d[np.arange(z.shape[0]), y]  # before the floor: a -inf label logit gives inf
    np.maximum(d, _FLOOR, out=d)
    s0, s1, s2 = _moments(d, beta)
    e1 = s1 / s0
    with np.errstate(divide="ignore"):
        nll = np.log(s0) - beta * d_y
    return nll, e1 - d_y, np.maximum(s2 / s0 - e1 * e1, 0.0)


def _rows_fast(z: np.ndarray, y: np.ndarray, beta: float) -> Rows:
    """Per-row ``(nll, grad, hess)`` shifted by the label's logit; rows that overflow (or hold
    a NaN or +inf) are recomputed by :func:`_rows_careful`."""
    rows = np.arange(z.shape[0])
    c = z[rows, y].astype(np.float64)[:, None]
    d = np.subtract(z, c, dtype=np.float64)  # one pass: convert and shift (exact for float32)
    s0, s1, s2 = _moments(d, beta)
    e1 = s1 / s0
    nll = np.log(s0)
    grad = e1
    hess = np.maximum(s2 / s0 - e1 * e1, 0.0)
    bad = ~np.isfinite(s2)  # s2 overflows first; NaN from NaN or +inf input
    if bad.any():
        idx = np.flatnonzero(bad)
        nll[idx], grad[idx], hess[idx] = _rows_careful(z[idx], y[idx], beta)
    return nll, grad, hess


def _nll_derivatives(
    logits_chunk: Any,
    labels_chunk: Any,
    beta: float,
    sample_weight_chunk: Any = None,
) -> Sums:
    """``(Σ w, Σ w·nll, Σ w·dnll/dβ, Σ w·d²nll/dβ²)`` for one chunk of rows, in float64.

    A pure NumPy function of its arguments (any float dtype in, float64 sums out), so it can be
    mapped over the blocks of a Dask array and the four sums added.
    """
    z = np.asarray(logits_chunk)
    if z.shape[0] == 0:
        return 0.0, 0.0, 0.0, 0.0
    fast = _kernels.nll_sums(z, labels_chunk, beta, sample_weight_chunk)
    if fast is not None:  # the native kernel: one read of each row, no N×K temporaries
        return fast
    y = np.asarray(labels_chunk, dtype=np.intp)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        careful = z.dtype.kind == "f" and np.isneginf(z.min())
        nll, grad, hess = (_rows_careful if careful else _rows_fast)(z, y, beta)
        if sample_weight_chunk is None:
            return float(z.shape[0]), float(nll.sum()), float(grad.sum()), float(hess.sum())
        w = np.asarray(sample_weight_chunk, dtype=np.float64)
        return float(w.sum()), float(w @ nll), float(w @ grad), float(w @ hess)


def nll_sums(
    z: np.ndarray,
    y: np.ndarray,
    beta: float,
    w: np.ndarray | None,
    *,
    chunk_rows: int,
    from_probs: bool,
    floor: float,
    pool: ThreadPoolExecutor | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Sums:
    """The four sums over all rows of ``z`` (N, K), one chunk of rows at a time.

    Chunks keep the float64 temporaries in cache and the memory bounded; with a thread pool
    they run in parallel (NumPy releases the GIL inside its loops).  The chunk sums are added in
    chunk order, so the result does not depend on the number of threads.
    """

    def one(start: int) -> Sums:
        stop = start + chunk_rows
        chunk = z[start:stop]
        if from_probs:  # their logs, a zero read as floor (the one rule, probability_logs)
            chunk = expand_rows(chunk, True, floor)
        return _nll_derivatives(chunk, y[start:stop], beta, None if w is None else w[start:stop])

    def block(first: int) -> list[Sums]:
        # Several chunks per task: thread hand-offs cost more than a chunk's Python overhead.
        stop = min(first + _CHUNKS_PER_TASK * chunk_rows, z.shape[0])
        return [one(start) for start in range(first, stop, chunk_rows)]

    n = z.shape[0]
    firsts = range(0, n, _CHUNKS_PER_TASK * chunk_rows)
    blocks = in_order(block, firsts, pool)
    totals = [0.0, 0.0, 0.0, 0.0]
    for first, parts in zip(firsts, blocks, strict=True):
        for part in parts:  # summed in chunk order: the result does not depend on threads
            for i in range(4):
                totals[i] += part[i]
        if progress is not None:
            progress(min(first + _CHUNKS_PER_TASK * chunk_rows, n) - first)
    return totals[0], totals[1], totals[2], totals[3]
