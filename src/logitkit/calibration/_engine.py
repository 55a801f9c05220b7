"""The measurement engine: one pass over probabilities or logits, per-bin sufficient statistics.

Every calibration figure is a function of a few sums over rows (:mod:`._formulas` turns them into
numbers).  The engine computes those sums in **one pass** over the ``(N, K)`` predictions, a
chunk of rows at a time, in two stages:

1. **The row pass** (:func:`row_pass`, the NumPy reference of the native pass below).  For a chunk ``x`` of
   ``n`` rows (float32 or float64, C-contiguous, probabilities or logits) and labels ``y``
   (``intp``), it returns, per row, float64 unless said otherwise:

   ========== =============================================================================
   ``conf``   the largest probability (from logits ``1 / Σ_k exp(β(z_k − max z))``)
   ``pred``   the arg-max (``intp``; ties to the first class)
   ``p_y``    the label's probability
   ``logp_y`` its logarithm (from logits ``β(z_y − max z) − log Σ exp(...)``: exact where
              ``log(softmax)`` would underflow)
   ``sumsq``  ``Σ_k p_k²`` (for the Brier score ``sumsq − 2 p_y + 1``), only when asked
   ========== =============================================================================

   and, when asked, the chunk's probabilities (for class-wise sums).  From logits the softmax
   is fused: ``exp(β(z − max z))`` lives in one chunk-sized buffer and nothing of size
   ``N × K`` is formed.  Probabilities are validated in the same pass (no NaN, in [0, 1], rows
   summing to 1 within :func:`row_sum_tolerance`); the arithmetic stays in the input's
   precision (float32 stays float32; float16/bfloat16 are widened one chunk at a time).

2. **Accumulation** (:func:`accumulate_rows`, O(n) per chunk): bin indices of the per-row
   confidences, and per-bin sums by ``bincount`` in float64.

The sums are held per **group** of rows when asked (``Spec.groups``): row ``i`` belongs to
group ``i`` while ``i < G`` and to a fixed hash of ``i`` modulo ``G`` after, so the groups do not
depend on how the rows are chunked or partitioned.  Resampling the groups is how
:func:`~logitkit.calibration.bootstrap` gets an interval without reading the ``K`` columns again.

NumPy arrays and CPU torch tensors (float32/float64, no autograd) take this chunked NumPy path;
other arrays (torch on an accelerator, JAX, array-api-strict) take :func:`xp_rows`, the same
quantities as whole-array operations of their own namespace.  Dask arrays are mapped over their
row blocks through :func:`._blocks.row_sums` (the engine never names Dask).

**The native pass** (:func:`native_sums`, ``csrc/calib.cpp`` through
:func:`logitkit._kernels.calibration_sums`) does both stages in one read of each row for NumPy
blocks: float32 and float64 rows in place (other dtypes and layouts widened a slab of rows at a
time), the softmax fused at inverse temperature β, probabilities validated and labels checked as
their rows are read, the top-label and class-wise bins found (by arithmetic for uniform edges, a
binary search otherwise) and summed per group in float64.  Rows of K ≤ 32 run one per SIMD
lane, everything after the read on all lanes at once; ``Spec.nll`` off skips the logarithm of
``p_y`` (the NumPy pass then leaves ``Sums.nll`` at 0 too).  Its tasks are cut by shape only and merged in order, so the sums never depend on the
threads.  What it does not take (per-row probabilities kept, equal-mass edges not yet resolved)
and what it does not accept (an invalid probability, a label out of range: it stops and the
NumPy pass then raises its error) goes to the NumPy pass, which stays the reference; rows of
logits holding a NaN, a +inf or nothing finite are handed back and computed by
:func:`_careful_logit_rows`.

Speed (``benchmarks/bench_metrics.py --repeat 3``, multiples of a ``np.copyto`` of the input,
2 cores at load 11): each metric on 1e6 × 100 float32 probabilities 1.6–2.2× (plain NumPy
0.8–18×); all five from logits in one call 3.6× (NumPy 44×).  On 1e7 × 10 (load 5–6) each
metric 1.5–1.9× (NumPy 5.4–37×, torchmetrics 10–44×), all five from logits 3.8× (NumPy 211×):
the short rows' labels and row sums checked a register at a time, float columns gathered two at
a time on AVX-512, the uniform edges looked up by permutes and a power-of-two G's groups found in
vector lanes take 0.49–0.60 of each metric's time and 0.82 of all five's (one thread, CPU time,
interleaved A/B against the previous pass, the same sums bit for bit).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat
import numpy as np

from .._core import log_softmax
from .._kernels import CalibrationPass, calibration_sums, python_threads
from .._namespace import (
    Array,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    expected,
    is_concrete,
    is_numpy,
    to_numpy,
)
from ._binning import acc_dtype, bin_index, check_label_range, check_labels, uniform_edges

__all__ = ["Rows", "Spec", "Sums", "accumulate_rows", "row_pass", "row_sum_tolerance"]

#: Elements per chunk of the row pass: big enough that NumPy's per-call overhead is small,
#: small enough that the chunk and its temporaries stay in the cache between the reductions.
CHUNK_ELEMENTS = 1 << 18
MIN_CHUNK_ROWS = 256
#: Inputs of this many elements and more are split into contiguous shares of chunks, one per
#: thread (NumPy releases the GIL in its loops); the shares' sums are added in order.
PARALLEL_ELEMENTS = 1 << 21
THREADS = python_threads(4)
#: Rows whose per-row results are binned together.
FLUSH_ROWS = 1 << 14


def in_order(fn: Callable[[Any], Any], items: Iterable[Any], pool: Executor | None) -> Iterator[Any]:
    """``fn`` of each item, on ``pool``'s threads when given, the results in the items' order:
    callers add them in that order, so their sums do not depend on the threads."""
    return pool.map(fn, items) if pool is not None else map(fn, items)


def row_sum_tolerance(dtype: Any) -> float:
    """How far from 1 a row of probabilities of ``dtype`` may sum: ``1e-3``, or ``4u`` for
    float16/bfloat16 (unit roundoff ``u``: a softmax computed at that precision rounds the
    exponentials, their sum and each quotient, then the row sum adds one more rounding)."""
    try:
        u = float(np.finfo(dtype).eps) / 2
    except (TypeError, ValueError):  # bfloat16 without NumPy support
        u = 2.0 ** -9
    return max(1e-3, 4 * u)


# --------------------------------------------------------------------------------------------
# what to compute
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What one pass accumulates (everything else in the row pass is skipped).

    Attributes:
        from_logits: the rows are logits (softmax fused into the pass) rather than probabilities.
        beta: inverse temperature applied to logits.
        n_bins: top-label bins ``B`` (0: no binned sums).
        inner: their inner edges ``(B − 1,)`` (float64), or ``None`` for equal-mass edges of
            the data (resolved by :func:`._measure.resolve` before a NumPy pass).
        moments: also ``Σ conf²`` and ``Σ conf·correct`` per top-label bin.
        cw_bins: class-wise bins (0: none).
        cw_inner: their inner edges, ``(B − 1,)`` or per class ``(B − 1, K)``, or ``None`` for
            equal-mass edges of each class's column.
        keep_rows: also keep every row's confidence, correctness and group (``Sums.rows``: the
            smooth ECE works on them).
        keep_probs: also keep every row's probabilities and label (class-wise smooth ECE).
        brier: compute the Brier terms (``Σ_k p_k²``).
        nll: compute ``Σ −log p_y`` (``Sums.nll`` stays 0 without it: a metric that does not
            read it skips a logarithm per row).
        top: compute the top label (confidence, arg-max, hits); the NLL and the Brier score do
            without it.
        groups: number of row groups ``G`` (1: plain sums).
    """

    from_logits: bool = False
    beta: float = 1.0
    n_bins: int = 0
    inner: Any = None
    moments: bool = False
    cw_bins: int = 0
    cw_inner: Any = None
    keep_rows: bool = False
    keep_probs: bool = False
    brier: bool = True
    nll: bool = True
    top: bool = True
    groups: int = 1

    @property
    def needs_probs(self) -> bool:
        return self.cw_bins > 0 or self.keep_probs


@dataclass
class Sums:
    """Sums over rows, each with a leading group axis ``G`` (float64 NumPy arrays).

    ``n``, ``hits`` (top-1 correct), ``nll`` (``Σ −log p_y``), ``brier`` (``Σ_i Σ_k (p_ik −
    [y_i = k])²``): shape ``(G,)``.  ``bins``: ``(G, F, B)`` with ``F`` = count, Σ conf,
    Σ correct (and Σ conf², Σ conf·correct with ``Spec.moments``).  ``cw``: ``(G, 5, K, B)``
    per class and bin: count, Σ p, Σ hit, Σ p², Σ p·hit.  ``rows``: with ``Spec.keep_rows``
    (``keep_probs``), every row's ``conf``, ``hit``, ``group`` (and ``probs``, ``labels``) in
    row order: adding the ``Sums`` of consecutive blocks concatenates them.
    """

    n: np.ndarray
    hits: np.ndarray
    nll: np.ndarray
    brier: np.ndarray
    bins: np.ndarray | None = None
    cw: np.ndarray | None = None
    rows: dict[str, np.ndarray] | None = None
    n_classes: int = 0

    @classmethod
    def zeros(cls, spec: Spec, k: int) -> Sums:
        g = spec.groups
        f = 5 if spec.moments else 3
        return cls(
            n=np.zeros(g), hits=np.zeros(g), nll=np.zeros(g), brier=np.zeros(g),
            bins=None if not spec.n_bins else np.zeros((g, f, spec.n_bins)),
            cw=None if not spec.cw_bins else np.zeros((g, 5, k, spec.cw_bins)),
            rows={} if spec.keep_rows or spec.keep_probs else None,
            n_classes=k,
        )

    def __add__(self, other: Sums) -> Sums:
        if self.n_classes and other.n_classes and self.n_classes != other.n_classes:
            raise LogitkitValueError(expected(
                "probs", f"{self.n_classes} classes in every block", f"{other.n_classes}"))

        def add(a: Any, b: Any) -> Any:
            return None if a is None else a + b

        rows = None
        if self.rows is not None and other.rows is not None:
            # concatenated in order; a block without rows (an empty one) has no keys
            rows = {key: np.concatenate([part[key] for part in (self.rows, other.rows)
                                         if key in part])
                    for key in {**self.rows, **other.rows}}
        return Sums(n=self.n + other.n, hits=self.hits + other.hits, nll=self.nll + other.nll,
                    brier=self.brier + other.brier, bins=add(self.bins, other.bins),
                    cw=add(self.cw, other.cw), rows=rows,
                    n_classes=self.n_classes or other.n_classes)

    def total(self) -> Sums:
        """The sums over all groups (a leading axis of 1)."""
        def tot(a: Any) -> Any:
            return None if a is None else a.sum(axis=0, keepdims=True)

        return Sums(n=tot(self.n), hits=tot(self.hits), nll=tot(self.nll),
                    brier=tot(self.brier), bins=tot(self.bins), cw=tot(self.cw),
                    rows=self.rows, n_classes=self.n_classes)

    def weighted(self, counts: np.ndarray) -> Sums:
        """Resampled sums: ``counts`` ``(R, G)`` times each group's sums (a leading axis R), by
        one matrix product over all the fields."""
        c = np.asarray(counts, dtype=np.float64)
        names = [f for f in ("n", "hits", "nll", "brier", "bins", "cw")
                 if getattr(self, f) is not None]
        arrays = [getattr(self, f) for f in names]
        flat = np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)
        mixed = c @ flat
        out: dict[str, Any] = {}
        start = 0
        for name, a in zip(names, arrays, strict=True):
            width = int(np.prod(a.shape[1:], dtype=np.int64))
            out[name] = mixed[:, start:start + width].reshape(c.shape[0], *a.shape[1:])
            start += width
        return Sums(**out, n_classes=self.n_classes)


# --------------------------------------------------------------------------------------------
# stage 1: the row pass (NumPy)
# --------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """Per-row results of :func:`row_pass` (see the module docstring for the contract)."""

    conf: np.ndarray | None
    pred: np.ndarray | None
    p_y: np.ndarray
    logp_y: np.ndarray
    sumsq: np.ndarray | None
    probs: np.ndarray | None = None

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        """The rows of consecutive chunks as one (without probabilities)."""
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> Any:
            first = getattr(parts[0], name)
            return None if first is None else np.concatenate([getattr(r, name) for r in parts])

        return Rows(cat("conf"), cat("pred"), cat("p_y"), cat("logp_y"), cat("sumsq"))


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """float32/float64 stay; narrower floats widen to float32; integers and bools to float64."""
    if dtype == np.float32 or dtype == np.float64:
        return dtype
    if dtype.kind == "f" or dtype.kind == "V" or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def row_pass(x: np.ndarray, y: np.ndarray, *, from_logits: bool, beta: float = 1.0,
             top: bool = True, sumsq: bool = True, probs: bool = False, arg: str = "probs"
             ) -> Rows:
    """The per-row statistics of one chunk (the engine's kernel contract, NumPy version).

    Args:
        x: ``(n, K)`` float32/float64 probabilities or logits (other dtypes are widened),
            C-contiguous.
        y: ``(n,)`` ``intp`` labels, already checked to lie in ``[0, K)``.
        from_logits: ``x`` holds logits; the softmax at inverse temperature ``beta`` is fused.
        beta: inverse temperature (logits only).
        top: compute ``conf`` and ``pred`` (the arg-max: the most expensive reduction in NumPy;
            the NLL and the Brier score do without it).
        sumsq: compute ``Σ_k p_k²``.
        probs: also return the chunk's probabilities (a chunk-sized buffer).
        arg: the argument's name in error messages.

    Returns:
        :class:`Rows` (``conf`` and ``pred`` are ``None`` without ``top``).  Invalid
        probabilities and NaN logits raise :class:`LogitkitValueError` here.
    """
    in_dtype = x.dtype
    work = _work_dtype(in_dtype)
    if x.dtype != work:
        x = x.astype(work)
    n, k = x.shape
    flat = x.reshape(-1)
    base = np.arange(0, n * k, k)
    at_y = flat[base + y]
    pred = x.argmax(axis=1) if top or (from_logits and probs) else None
    peak = flat[base + pred] if pred is not None else None
    if not from_logits:
        _check_probability_chunk(x, peak, in_dtype, arg)
        p_y = at_y.astype(np.float64)
        with np.errstate(divide="ignore"):
            logp_y = np.log(p_y)
        sq = np.einsum("ij,ij->i", x, x).astype(np.float64) if sumsq else None
        conf = peak.astype(np.float64) if peak is not None else None
        return Rows(conf, pred, p_y, logp_y, sq, x if probs else None)
    # Shift by the row maximum when it is at hand, else by the label's logit (the sum then
    # holds the term 1 and cannot underflow; rows where it overflows are redone carefully).
    shift = peak if peak is not None else at_y
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.subtract(x, shift[:, None])
        if beta != 1.0:
            e *= work.type(beta)
        np.exp(e, out=e)
        s = np.einsum("ij->i", e).astype(np.float64)
        sq = np.einsum("ij,ij->i", e, e).astype(np.float64) if sumsq else None
    bad = ~np.isfinite(s if sq is None else s + sq)
    if bad.any() or (peak is not None and not np.isfinite(peak).all()):
        return _careful_logit_rows(x, y, beta, sumsq, probs, arg)
    logp_y = beta * (at_y.astype(np.float64) - shift) - np.log(s)
    p_y = np.exp(logp_y)
    inv = 1.0 / s
    if sq is not None:
        sq *= inv * inv
    if probs:
        e *= inv.astype(work)[:, None]
    return Rows(inv if top else None, pred, p_y, logp_y, sq, e if probs else None)


def _check_probability_chunk(x: np.ndarray, peak: np.ndarray | None, in_dtype: Any, arg: str
                             ) -> None:
    """NaN, range and row-sum checks of a chunk of probabilities: its minimum and its row sums
    (and its row maxima when the arg-max was taken), reductions of the chunk while it is in
    the cache.  Without the maxima an entry above 1 is caught by the row sum (non-negative
    entries summing to 1 within the tolerance are at most 1 + tolerance)."""
    lo = x.min()
    if np.isnan(lo):
        raise LogitkitValueError(expected(arg, "probabilities without NaN", "NaN"))
    hi = peak.max() if peak is not None else 0.0
    if lo < 0 or hi > 1:
        raise LogitkitValueError(expected(
            arg, "probabilities in [0, 1] (pass logits through softmax first)",
            float(lo) if lo < 0 else float(hi)))
    tol = row_sum_tolerance(in_dtype)
    rowsum = np.einsum("ij->i", x).astype(np.float64)
    rowsum -= 1.0
    # The row sum is judged in float64: a sum in x's precision is within K·u·(1 + tol) of it
    # (any order of summation), so only the rows that close to the tolerance are summed again.
    slack = 2.0 * x.shape[1] * float(np.finfo(x.dtype).eps) / 2 * (1.0 + tol)
    doubt = np.abs(rowsum) > tol - slack
    if doubt.any():
        rowsum[doubt] = np.add.reduce(x[doubt], axis=1, dtype=np.float64) - 1.0
    worst = int(np.abs(rowsum).argmax())
    if abs(rowsum[worst]) > tol:
        raise LogitkitValueError(expected(
            arg, "probabilities whose rows sum to 1", f"a row summing to {rowsum[worst] + 1:.6g}"))


def _careful_logit_rows(x: np.ndarray, y: np.ndarray, beta: float, sumsq: bool, probs: bool,
                        arg: str) -> Rows:
    """Rows with a non-finite maximum: NaN is an error, a row of ``-inf`` has no probabilities,
    ``+inf`` entries share the mass (the library's softmax rules), all in float64."""
    if np.isnan(x).any():
        raise LogitkitValueError(expected(arg, "logits without NaN", "NaN"))
    if np.isneginf(x.max(axis=1)).any():
        raise LogitkitValueError(expected(
            arg, "logits with a finite or +inf entry in every row", "a row of -inf"))
    z = x.astype(np.float64)
    logp = log_softmax(z, axis=1, temperature=1.0 / beta)
    p = np.exp(logp)
    r = np.arange(z.shape[0])
    pred = p.argmax(axis=1)
    conf = p[r, pred]
    logp_y = logp[r, y]
    sq = np.einsum("ij,ij->i", p, p) if sumsq else None
    return Rows(conf, pred, p[r, y], logp_y, sq, p.astype(x.dtype) if probs else None)


# --------------------------------------------------------------------------------------------
# stage 2: accumulation
# --------------------------------------------------------------------------------------------

_HASH_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_HASH_MUL2 = np.uint64(0x94D049BB133111EB)
_HASH_ADD = np.uint64(0x9E3779B97F4A7C15)


def group_of(start: int, stop: int, groups: int) -> np.ndarray | None:
    """Groups of rows ``start .. stop - 1``: ``i`` while ``i < G``, then SplitMix64(i) mod G.

    Every row hashed on its own, so that a group is a random sample of the rows even when they
    come sorted (by confidence, say).  A rule for cache locality, 64 consecutive rows to 64
    consecutive groups from a hashed offset, was measured and rejected: on sorted rows (1e6, 2000
    bootstrap draws of a mean) its group bootstrap's standard error was 0.83-1.13 of the true one
    at G = 1024 over four offsets (this rule 0.99-1.02), 0.57-0.97 at G = 256 and 0.002 at G = 64
    (each block then fills every group once: the groups are near copies), for a gain of 3-5% of
    the native pass's time (all five figures from 1e7 x 10 logits, one thread)."""
    if groups <= 1:
        return None
    return groups_of(np.arange(start, stop, dtype=np.uint64), groups)


def groups_of(i: np.ndarray, groups: int) -> np.ndarray:
    """The groups of the rows of stream indices ``i`` (:func:`group_of`'s rule)."""
    i = np.asarray(i, dtype=np.uint64)
    z = i + _HASH_ADD
    z = (z ^ (z >> np.uint64(30))) * _HASH_MUL1
    z = (z ^ (z >> np.uint64(27))) * _HASH_MUL2
    z = z ^ (z >> np.uint64(31))
    g = (z % np.uint64(groups)).astype(np.intp)
    head = i < np.uint64(groups)
    if head.any():
        g[head] = i[head].astype(np.intp)
    return g


def _bincount(key: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    return np.bincount(key, weights=weights, minlength=size).astype(np.float64, copy=False)


def top_bins(conf: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Right-closed bins of float64 ``conf`` (:func:`._binning.bin_index`'s rule).  Uniform
    inner edges ``b / B`` take ``ceil(B c) − 1``, corrected by one bin either way where the
    product rounded across a correctly rounded edge (cheaper than a binary search)."""
    nb = int(inner.shape[0]) + 1
    if is_uniform(inner):
        b = np.ceil(conf * nb).astype(np.intp)
        b -= 1
        np.clip(b, 0, nb - 1, out=b)
        edges = uniform_full(nb)
        b -= (conf <= edges[b]) & (b > 0)
        b += (conf > edges[b + 1]) & (b < nb - 1)
        return b
    return np.searchsorted(inner, conf, side="left")


def is_uniform(inner: np.ndarray) -> bool:
    """Whether 1-D inner edges are the uniform ``b / B`` (bins by arithmetic, not search)."""
    nb = int(inner.shape[0]) + 1
    return inner.ndim == 1 and nb > 1 and inner[0] == 1.0 / nb \
        and np.array_equal(inner, uniform_inner(nb))


@functools.lru_cache(maxsize=64)
def uniform_full(nb: int) -> np.ndarray:
    return uniform_edges(nb)


def uniform_inner(nb: int) -> np.ndarray:
    return uniform_full(nb)[1:-1]


def accumulate_rows(sums: Sums, rows: Rows, y: np.ndarray, spec: Spec,
                    offset: int | np.ndarray) -> None:
    """Add one chunk's rows to ``sums`` in place (``offset``: the stream index of its first
    row, or of each of its rows)."""
    n = rows.p_y.shape[0]
    k = sums.n_classes
    if isinstance(offset, np.ndarray):
        g = groups_of(offset, spec.groups) if spec.groups > 1 else None
    else:
        g = group_of(offset, offset + n, spec.groups)
    ng = spec.groups
    correct = (rows.pred == y).astype(np.float64) if spec.top and rows.pred is not None \
        else None
    nll = -rows.logp_y
    brier = rows.sumsq - 2.0 * rows.p_y + 1.0 if rows.sumsq is not None else None
    if g is None:
        sums.n[0] += n
        if correct is not None:
            sums.hits[0] += correct.sum()
        if spec.nll:
            sums.nll[0] += nll.sum()
        if brier is not None:
            sums.brier[0] += brier.sum()
    else:
        sums.n += _bincount(g, None, ng)
        if correct is not None:
            sums.hits += _bincount(g, correct, ng)
        if spec.nll:
            sums.nll += _bincount(g, nll, ng)
        if brier is not None:
            sums.brier += _bincount(g, brier, ng)
    if sums.bins is not None:
        assert rows.conf is not None and correct is not None
        nb = spec.n_bins
        key = top_bins(rows.conf, spec.inner)
        if g is not None:
            key += g * nb
        size = ng * nb
        parts = [_bincount(key, None, size), _bincount(key, rows.conf, size),
                 _bincount(key, correct, size)]
        if spec.moments:
            parts += [_bincount(key, rows.conf * rows.conf, size),
                      _bincount(key, rows.conf * correct, size)]
        sums.bins += np.stack(parts).reshape(len(parts), ng, nb).transpose(1, 0, 2)
    if sums.rows is not None:
        assert rows.conf is not None and correct is not None
        new = {"conf": rows.conf, "hit": correct,
               "group": g if g is not None else np.zeros(n, dtype=np.intp)}
        if spec.keep_probs:
            assert rows.probs is not None
            new.update(probs=rows.probs.astype(np.float64), labels=y)
        sums.rows = {key: np.concatenate([sums.rows[key], v]) if key in sums.rows else v.copy()
                     for key, v in new.items()}
    if sums.cw is not None:
        assert rows.probs is not None
        _accumulate_classwise(sums, rows.probs, y, rows.p_y, g, spec, k)


def _classwise_bins(p: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Right-closed bin of every entry of ``p`` ``(n, K)``: shared or per-class inner edges."""
    if inner.ndim == 1:
        return np.searchsorted(inner, p.astype(np.float64, copy=False), side="left")
    b = np.zeros(p.shape, dtype=np.intp)
    for j in range(inner.shape[0]):
        b += p > inner[j][None, :]
    return b


def _accumulate_classwise(sums: Sums, p: np.ndarray, y: np.ndarray, p_y: np.ndarray,
                          g: np.ndarray | None, spec: Spec, k: int) -> None:
    cls = np.arange(k, dtype=np.intp)[None, :]
    flat = p.astype(np.float64).ravel()
    ng = spec.groups
    if sums.cw is not None:
        nb = spec.cw_bins
        base = cls * nb if g is None else (g[:, None] * k + cls) * nb
        key = (base + _classwise_bins(p, spec.cw_inner)).ravel()
        p_y = p[np.arange(p.shape[0]), y].astype(np.float64)  # the entry binned above
        if spec.cw_inner.ndim == 1:
            by = np.searchsorted(spec.cw_inner, p_y, side="left")
        else:
            by = (p_y[:, None] > spec.cw_inner.T[y]).sum(axis=1)
        key_y = (y if g is None else g * k + y) * nb + by
        size = ng * k * nb
        parts = [_bincount(key, None, size), _bincount(key, flat, size),
                 _bincount(key_y, None, size), _bincount(key, flat * flat, size),
                 _bincount(key_y, p_y, size)]
        sums.cw += np.stack([q.reshape(ng, k, nb) for q in parts], axis=1)


# --------------------------------------------------------------------------------------------
# one pass over a NumPy block
# --------------------------------------------------------------------------------------------


def as_rows_2d(x: np.ndarray, from_logits: bool) -> np.ndarray:
    """``(N, K)``: a 1-D (or one-column) input is class 1 of a binary problem."""
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[1] == 1:
        col = x.astype(_work_dtype(x.dtype))
        if not from_logits:
            # checked here, where the value is the user's: in [1 − p, p] the range check saw
            # 1 − p first (1.5 was reported as -0.5)
            outside = ~((col >= 0) & (col <= 1))
            if outside.any():
                v = float(col[outside][0])
                raise LogitkitValueError(
                    expected("probs", "probabilities without NaN", "NaN") if v != v else
                    expected("probs", "probabilities in [0, 1] (one column: P(class 1))", v))
        other = np.zeros_like(col) if from_logits else 1.0 - col
        x = np.concatenate([other, col], axis=1)
    return x


def block_sums(x: Any, y: Any, *, spec: Spec, offset: int = 0, arg: str = "probs") -> Sums:
    """:class:`Sums` of one in-memory block of rows (NumPy arrays), chunk by chunk.

    A module-level function of its arguments, so that :func:`._blocks.row_sums` can map it over
    the row blocks of a partitioned array (``offset`` is then the block's first row).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim not in (1, 2):
        raise LogitkitValueError(expected(arg, "of shape (N, K) or (N,)", f"shape {x.shape}"))
    x = as_rows_2d(x, spec.from_logits)
    n, k = x.shape
    if n == 0:
        return Sums.zeros(spec, k)
    if y.dtype.kind not in "iub":
        raise LogitkitTypeError(expected("y", "an array of integer class labels",
                                         f"dtype {y.dtype}"))
    if y.shape != (n,):
        raise LogitkitValueError(expected(
            "y", f"of shape ({n},) to match the predictions", f"shape {y.shape}"))
    # The native pass checks every label as it reads its row (an input not taken, labels out
    # of range included, comes back None): the range is looked for only then, and says why.
    # It reads int32 and int64 labels as they are (an int64 copy of 1e7 labels is a fifth of
    # 1e7 x 10 float32 probabilities); narrower integers are widened to int32.
    fast = native_sums(x, y if y.dtype in (np.int32, np.int64) else
                       y.astype(np.int32 if y.dtype.itemsize < 4 else np.intp), spec, offset, arg)
    if fast is not None:
        return fast
    yi = y.astype(np.intp, copy=False)
    check_label_range(int(yi.min()), int(yi.max()), k)
    step = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // k)
    starts = list(range(0, n, step))
    workers = min(THREADS, len(starts) // 4) if n * k >= PARALLEL_ELEMENTS else 1

    def part(lo: int, hi: int) -> Sums:
        out = Sums.zeros(spec, k)
        pending: list[Rows] = []
        first = starts[lo] if lo < len(starts) else n
        for start in starts[lo:hi]:
            stop = min(n, start + step)
            rows = row_pass(np.ascontiguousarray(x[start:stop]), yi[start:stop],
                            from_logits=spec.from_logits, beta=spec.beta, top=spec.top,
                            sumsq=spec.brier, probs=spec.needs_probs, arg=arg)
            if spec.needs_probs:  # the chunk's probabilities are binned while in the cache
                accumulate_rows(out, rows, yi[start:stop], spec, offset + start)
                continue
            # Per-row results are binned a batch of chunks at a time: each bincount then pays
            # its setup (G·B bins) once per FLUSH_ROWS rows, not once per chunk.
            pending.append(rows)
            if stop - first >= FLUSH_ROWS or stop == min(n, starts[hi - 1] + step):
                accumulate_rows(out, Rows.concat(pending), yi[first:stop], spec, offset + first)
                pending, first = [], stop
        return out

    if workers <= 1:
        return part(0, len(starts))
    # Contiguous shares of the chunks, added in order: the result does not depend on timing.
    cuts = [len(starts) * i // workers for i in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(part, cuts[:-1], cuts[1:]))
    total = parts[0]
    for other in parts[1:]:
        total = total + other
    return total


def native_sums(x: np.ndarray, y: np.ndarray, spec: Spec, offset: int, arg: str) -> Sums | None:
    """:class:`Sums` of a block by the native pass (:func:`logitkit._kernels.calibration_sums`),
    or ``None`` where it does not apply (the kernels off, per-row probabilities asked for, or
    probabilities it did not accept): the NumPy pass then computes, or raises, as the reference.

    Rows of logits the kernel leaves aside (a NaN, a ``+inf``, nothing finite) are computed by
    :func:`_careful_logit_rows` and added at their own rows' groups; when that raises, ``None``
    again, so that the error is the reference pass's, found in its order.
    """
    n, k = x.shape
    if spec.keep_probs or ((spec.n_bins or spec.keep_rows) and not spec.top) \
            or (spec.n_bins and spec.inner is None) or (spec.cw_bins and spec.cw_inner is None):
        return None
    work = _work_dtype(x.dtype)
    cw_edges = None
    if spec.cw_bins:
        inner = np.asarray(spec.cw_inner, dtype=np.float64)
        cw_edges = (np.concatenate([[0.0], inner, [1.0]]) if inner.ndim == 1 else
                    np.concatenate([np.zeros((1, k)), inner, np.ones((1, k))]))
    res = calibration_sums(CalibrationPass(
        x=x, labels=y, work=work, from_logits=spec.from_logits, beta=spec.beta,
        tolerance=row_sum_tolerance(x.dtype), offset=offset, groups=spec.groups, top=spec.top,
        brier=spec.brier, nll=spec.nll, moments=spec.moments,
        edges=np.concatenate([[0.0], spec.inner, [1.0]]) if spec.n_bins else None,
        uniform=bool(spec.n_bins) and is_uniform(np.asarray(spec.inner)),
        cw_edges=cw_edges,
        cw_uniform=cw_edges is not None and is_uniform(np.asarray(spec.cw_inner)),
        keep_rows=spec.keep_rows))
    if res is None or res.invalid:
        return None
    t = res.totals
    sums = Sums(n=t[:, 0].copy(), hits=t[:, 1].copy(), nll=t[:, 2].copy(), brier=t[:, 3].copy(),
                bins=res.bins, cw=res.cw, n_classes=k)
    if spec.keep_rows:
        assert res.conf is not None and res.hit is not None
        g = group_of(offset, offset + n, spec.groups)
        sums.rows = {"conf": res.conf, "hit": res.hit,
                     "group": g if g is not None else np.zeros(n, dtype=np.intp)}
    if res.n_flagged:
        idx = np.flatnonzero(res.flagged)
        try:
            rows = _careful_logit_rows(x[idx].astype(work), y[idx].astype(np.intp), spec.beta,
                                       spec.brier, spec.needs_probs, arg)
        except LogitkitValueError:
            return None
        part = Sums.zeros(replace(spec, keep_rows=False), k)
        accumulate_rows(part, rows, y[idx].astype(np.intp), replace(spec, keep_rows=False),
                        offset + idx)
        for name in ("n", "hits", "nll", "brier", "bins", "cw"):
            if getattr(sums, name) is not None:
                getattr(sums, name)[...] += getattr(part, name)
        if sums.rows is not None:
            assert rows.conf is not None
            sums.rows["conf"][idx] = rows.conf
            sums.rows["hit"][idx] = rows.pred == y[idx]
    return sums


def confidences(x: Any, y: Any, *, from_logits: bool, beta: float = 1.0, arg: str = "probs"
                ) -> np.ndarray:
    """The top-label confidences of all rows (for equal-mass edges), one chunk at a time."""
    x = as_rows_2d(np.asarray(x), from_logits)
    n, k = x.shape
    if n:
        spec = Spec(from_logits=from_logits, beta=beta, brier=False, nll=False, keep_rows=True)
        fast = native_sums(x, np.zeros(n, dtype=np.intp), spec, 0, arg)
        if fast is not None:
            assert fast.rows is not None
            return fast.rows["conf"]
    out = np.empty(n, dtype=np.float64)
    step = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // k)
    zeros = np.zeros(min(step, n), dtype=np.intp)
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = row_pass(np.ascontiguousarray(x[start:stop]), zeros[: stop - start],
                                   from_logits=from_logits, beta=beta, sumsq=False,
                                   arg=arg).conf
    del y
    return out


# --------------------------------------------------------------------------------------------
# the generic path (any array namespace)
# --------------------------------------------------------------------------------------------


def fast_path(x: Any, xp: Any) -> bool:
    """True for inputs the chunked NumPy pass handles: NumPy arrays, and CPU torch tensors of
    float32/float64 outside autograd (read through a zero-copy NumPy view)."""
    if is_numpy(xp):
        return True
    if array_api_compat.is_torch_array(x):
        import torch

        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not (x.requires_grad and torch.is_grad_enabled()))
    return False


@dataclass
class XpRows:
    """Per-row statistics on the generic path, as arrays of the input's namespace (float64
    where it has it): the same quantities as :class:`Rows`, plus ``correct`` as a float."""

    conf: Array
    correct: Array
    p_y: Array
    logp_y: Array
    brier: Array
    probs: Array
    hot: Array
    labels: Array


def xp_rows(x: Any, y: Any, *, from_logits: bool, beta: float, xp: Any, arg: str = "probs"
            ) -> XpRows:
    """:class:`XpRows` of a whole array (validated where its values can be read)."""
    z = as_array(x, arg, xp)
    if z.ndim == 1:
        z = xp.reshape(z, (int(z.shape[0]), 1))
    if z.ndim != 2:
        raise LogitkitValueError(expected(arg, "of shape (N, K) or (N,)", f"shape {tuple(z.shape)}"))
    n = int(z.shape[0])
    if n == 0:
        raise LogitkitValueError(expected(arg, "non-empty (at least one row)", "0 rows"))
    dt = acc_dtype(xp)
    z = astype(z, dt, xp)
    if int(z.shape[1]) == 1:
        z = xp.concat([xp.zeros_like(z) if from_logits else 1.0 - z, z], axis=1)
    k = int(z.shape[1])
    labels = check_labels(y, n, k, xp)
    if from_logits:
        if is_concrete(z):
            zn = to_numpy(z)
            if np.isnan(zn).any():
                raise LogitkitValueError(expected(arg, "logits without NaN", "NaN"))
            if np.isneginf(zn.max(axis=1)).any():
                raise LogitkitValueError(expected(
                    arg, "logits with a finite or +inf entry in every row", "a row of -inf"))
        logp = log_softmax(z, axis=1, temperature=1.0 / beta)
        p = xp.exp(logp)
    else:
        if is_concrete(z):
            _check_probability_array(to_numpy(z), x, arg)
        p = z
        logp = None
    conf = xp.max(p, axis=1)
    pred = xp.argmax(p, axis=1)
    correct = astype(pred == astype(labels, pred.dtype, xp), dt, xp)
    hot = onehot(labels, k, p, xp)
    zero = xp.zeros((), dtype=dt)
    p_y = xp.sum(xp.where(hot > 0, p, zero), axis=1)
    if logp is not None:
        logp_y = xp.sum(xp.where(hot > 0, logp, zero), axis=1)
    else:
        logp_y = safe_log(p_y, xp)
    diff = p - hot
    return XpRows(conf, correct, p_y, logp_y, xp.sum(diff * diff, axis=1), p, hot, labels)


def _check_probability_array(pn: np.ndarray, original: Any, arg: str) -> None:
    if np.isnan(pn).any():
        raise LogitkitValueError(expected(arg, "probabilities without NaN", "NaN"))
    lo, hi = float(pn.min()), float(pn.max())
    if lo < 0.0 or hi > 1.0:
        raise LogitkitValueError(expected(
            arg, "probabilities in [0, 1] (pass logits through softmax first)",
            lo if lo < 0.0 else hi))
    sums = pn.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > row_sum_tolerance(_input_dtype(original)):
        raise LogitkitValueError(expected(
            arg, "probabilities whose rows sum to 1", f"a row summing to {sums[worst]:.6g}"))


def _input_dtype(x: Any) -> Any:
    dt = getattr(x, "dtype", None)
    name = str(dt).rsplit(".", 1)[-1] if dt is not None else "float64"
    if name == "bfloat16":
        return "bfloat16"
    try:
        return np.dtype(name)
    except TypeError:
        return np.float64


def safe_log(p: Array, xp: Any) -> Array:
    """``log p`` with ``log 0 = -inf`` and no floating-point warning."""
    positive = p > 0
    one = xp.ones((), dtype=p.dtype)
    return xp.where(positive, xp.log(xp.where(positive, p, one)), -math.inf * one)


def onehot(y: Array, k: int, like: Array, xp: Any) -> Array:
    classes = xp.arange(k, device=array_api_compat.device(like))
    return astype(xp.reshape(y, (-1, 1)) == astype(classes, y.dtype, xp), like.dtype, xp)


def xp_bin_sums(values: Array, weights: list[Array], inner: Array, n_bins: int, xp: Any
                ) -> Array:
    """Per-bin count and ``Σ w`` for each of ``weights``, shape ``(1 + len(weights),
    *values.shape[1:], B)``, by one masked reduction per bin (any namespace, ``jit``-compatible).
    """
    bins = bin_index(values, inner, xp)
    zero = xp.zeros((), dtype=values.dtype)
    per_bin = []
    for b in range(n_bins):
        inside = bins == b
        per_bin.append(xp.stack([xp.sum(astype(inside, values.dtype, xp), axis=0)]
                                + [xp.sum(xp.where(inside, w, zero), axis=0) for w in weights]))
    return xp.stack(per_bin, axis=-1)

