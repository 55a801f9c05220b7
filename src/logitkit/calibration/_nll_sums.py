"""Per-chunk sums of the temperature-scaling NLL and its first two derivatives in β = 1/T.

For logits ``z`` (rows ``i``), labels ``y`` and weights ``w``, with ``d = z − max z`` per row
and ``p = softmax(β d)``:

    nll_i  = log Σ_k exp(β d_ik) − β d_iy
    grad_i = E_p[d_i] − d_iy                 (d nll_i / dβ)
    hess_i = Var_p[d_i] ≥ 0                  (d² nll_i / dβ²)

Every Newton step needs only ``(Σ w, Σ w·nll, Σ w·grad, Σ w·hess)`` over all rows, so the fit is
one pass over the data per step, and chunks (or Dask blocks, or workers) are summed.  Entries
equal to ``-inf`` are excluded classes (probability 0); a NaN or ``+inf`` makes the sums NaN,
and a label whose logit is ``-inf`` makes them ``inf`` — the caller reports both.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# -1e300 stands for -inf inside the sums: exp(β·(-1e300)) is 0 for every admissible β, and
# 0·(-1e300) is 0 where 0·(-inf) would be NaN.
_FLOOR = -1e300

Sums = tuple[float, float, float, float]

_CHUNKS_PER_TASK = 8


def _row_stats(z: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(row max as a float64 column, whether any entry is -inf)``: independent of β."""
    with np.errstate(invalid="ignore"):
        m = z.max(axis=1, keepdims=True)  # in the input dtype: exact, and half the traffic
    return m.astype(np.float64), bool(z.dtype.kind == "f" and np.isneginf(z.min()))


def _nll_derivatives(
    logits_chunk: Any,
    labels_chunk: Any,
    beta: float,
    sample_weight_chunk: Any = None,
    row_stats: tuple[np.ndarray, bool] | None = None,
) -> Sums:
    """``(Σ w, Σ w·nll, Σ w·dnll/dβ, Σ w·d²nll/dβ²)`` for one chunk of rows, in float64.

    A pure NumPy function of its arguments (any float dtype in, float64 sums out), so it can be
    mapped over the blocks of a Dask array and the four sums added.  ``row_stats`` (from
    :func:`_row_stats`, which does not depend on β) may be passed to skip the row max.
    """
    z = np.asarray(logits_chunk)
    if z.shape[0] == 0:
        return 0.0, 0.0, 0.0, 0.0
    y = np.asarray(labels_chunk, dtype=np.intp)
    m, has_neginf = _row_stats(z) if row_stats is None else row_stats
    ones = np.ones(z.shape[1])
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.subtract(z, m, dtype=np.float64)  # one pass: convert and shift
        d_y = d[np.arange(z.shape[0]), y]  # before the floor: a -inf label logit gives inf
        if has_neginf:
            np.maximum(d, _FLOOR, out=d)
        e = np.multiply(d, beta)
        np.exp(e, out=e)
        s0 = e @ ones  # row sums by BLAS: faster than a reduction over short rows
        ed = np.multiply(e, d, out=e)
        s1 = ed @ ones
        s2 = np.einsum("ij,ij->i", ed, d)
        e1 = s1 / s0
        var = np.maximum(s2 / s0 - e1 * e1, 0.0)
        with np.errstate(divide="ignore"):
            nll = np.log(s0) - beta * d_y
        grad = e1 - d_y
    if sample_weight_chunk is None:
        return float(z.shape[0]), float(nll.sum()), float(grad.sum()), float(var.sum())
    w = np.asarray(sample_weight_chunk, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return float(w.sum()), float(w @ nll), float(w @ grad), float(w @ var)


def nll_sums(
    z: np.ndarray,
    y: np.ndarray,
    beta: float,
    w: np.ndarray | None,
    *,
    chunk_rows: int,
    from_probs: bool,
    pool: ThreadPoolExecutor | None = None,
    progress: Callable[[int], Any] | None = None,
    cache: dict[int, tuple[np.ndarray, bool]] | None = None,
) -> Sums:
    """The four sums over all rows of ``z`` (N, K), one chunk of rows at a time.

    Chunks keep the float64 temporaries in cache and the memory bounded; with a thread pool
    they run in parallel (NumPy releases the GIL inside its loops).  The chunk sums are added in
    chunk order, so the result does not depend on the number of threads.  ``cache`` keeps the
    row maxima between passes (O(N) memory, one pass fewer over the logits per iteration).
    """

    def one(start: int) -> Sums:
        stop = start + chunk_rows
        chunk = z[start:stop]
        if from_probs:
            with np.errstate(divide="ignore"):
                chunk = np.log(chunk.astype(np.float64))
        stats = None
        if cache is not None:
            stats = cache.get(start)
            if stats is None:
                stats = cache[start] = _row_stats(chunk)
        return _nll_derivatives(chunk, y[start:stop], beta, None if w is None else w[start:stop],
                                stats)

    def block(first: int) -> list[Sums]:
        # Several chunks per task: thread hand-offs cost more than a chunk's Python overhead.
        stop = min(first + _CHUNKS_PER_TASK * chunk_rows, z.shape[0])
        return [one(start) for start in range(first, stop, chunk_rows)]

    n = z.shape[0]
    firsts = range(0, n, _CHUNKS_PER_TASK * chunk_rows)
    blocks = pool.map(block, firsts) if pool is not None else map(block, firsts)
    totals = [0.0, 0.0, 0.0, 0.0]
    for first, parts in zip(firsts, blocks, strict=True):
        for part in parts:  # summed in chunk order: the result does not depend on threads
            for i in range(4):
                totals[i] += part[i]
        if progress is not None:
            progress(min(first + _CHUNKS_PER_TASK * chunk_rows, n) - first)
    return totals[0], totals[1], totals[2], totals[3]
