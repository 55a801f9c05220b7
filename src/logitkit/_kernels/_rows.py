"""numba kernels for softmax, log_softmax and logsumexp (float32 and float64, C-contiguous).

Plain rows (no mask, no softcap: the common case) run in blocks of rows small enough to stay in
cache (``BLOCK_BYTES`` of input, or one longer row; :func:`_plain_block`): each row's max is one
read from memory, its exponential sum a second read from cache that also writes the output (the
exponentials for softmax, the shifted logits for log_softmax) while the arithmetic keeps the core
busy; the block's logs are then taken in one vectorised loop (:func:`~._exp.vlog`) and the
outputs rescaled or shifted in place.  float32
terms are summed in float32 over blocks of ``SUM_BLOCK`` and in float64 across them; float64 rows
keep Blanchard–Higham–Higham's ``(rest, n_top)``: the ``n_top`` entries equal to the max
contribute exactly 1 each and are counted, the others summed, and ``log(sum) = log1p(rest +
n_top − 1)`` stays accurate when one term dominates.

Masked and soft-capped rows (:func:`_rows_block`) are walked in chunks of ``CHUNK`` elements that
stay in L1 between the chunk's max and its exponential sum, with an online ``(max, sum)`` that is
rescaled when a later chunk raises the max (Milakov & Gimelshein 2018), then a write pass.

Rows the fast formula cannot handle (an unmasked NaN, a +inf, nothing but −inf) are only *flagged*
here; the dispatcher recomputes those few rows with the generic path, which defines their values.

Parallelism: blocks of rows over the threads; when there are fewer rows than threads, each row is
split into parts whose ``(max, rest, n_top)`` are merged (:func:`rows_split`).  A reduction along a
middle axis runs on the ``(outer, K, inner)`` view, vectorised along the contiguous inner axis
(:func:`strided`), without moving any data.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ._exp import as_like, max_of, max_of_masked, vexp, vlog, vtanh

CHUNK = 2048

# Hot loops may reassociate their sums (that is what vectorises them); never assume "no NaN":
# NaN is how a special row announces itself.
_FAST = {"reassoc", "contract", "nsz"}

_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "fastmath": _FAST, "error_model": "numpy"}
_POPTS: dict[str, Any] = {**_OPTS, "parallel": True}

SOFTMAX, LOG_SOFTMAX, LSE = 0, 1, 2


@numba.njit(**_OPTS)
def _softcap(xc: Any, mc: Any, has_mask: bool, cap: Any, yc: Any) -> None:
    """``yc = cap·tanh(x/cap)`` with masked entries sanitised to 0 first (as the generic path)."""
    zero = as_like(0.0, cap)
    if has_mask:  # two loops, not a branch in one: each vectorises
        for k in range(xc.size):
            yc[k] = cap * vtanh((xc[k] if mc[k] else zero) / cap)
    else:
        for k in range(xc.size):
            yc[k] = cap * vtanh(xc[k] / cap)


@numba.njit(**_OPTS)
def _chunk_stats(src: Any, mc: Any, has_mask: bool, inv_t: Any, m: Any, rest: float,
                 n_top: float, store: bool, oc: Any) -> tuple[Any, float, float]:
    """Fold one chunk into the online ``(m, rest, n_top)``; rest becomes NaN if the row is special.

    With ``store`` the chunk's exponentials (relative to the running max after this chunk) are
    also written to ``oc``, so that softmax's second pass only rescales them.
    """
    ninf = as_like(-np.inf, inv_t)
    if has_mask:
        cm = max_of_masked(src, mc)
        n_nan = 0
        for k in range(src.size):
            n_nan += mc[k] & (src[k] != src[k])  # only unmasked NaN counts
        if cm != cm or n_nan:
            return cm, math.nan, n_top
    else:
        cm = max_of(src)
        if cm != cm:
            return cm, math.nan, n_top
    if cm > m:
        if rest != 0.0 or n_top != 0.0:
            f = math.exp((float(m) - float(cm)) * float(inv_t))
            rest = (rest + n_top) * f
            n_top = 0.0
        m = cm
    if m == -np.inf:
        if store:
            for k in range(src.size):
                oc[k] = 0
        return m, rest, n_top  # nothing but −inf so far (or masked)
    if m == np.inf:
        return m, math.nan, n_top
    acc = 0.0
    cnt = 0.0
    if has_mask and store:
        for k in range(src.size):
            v = src[k] if mc[k] else ninf
            d = (v - m) * inv_t
            e = vexp(d)
            oc[k] = e
            acc += float(e) * (d != 0)
            cnt += d == 0
    elif has_mask:
        for k in range(src.size):
            v = src[k] if mc[k] else ninf
            d = (v - m) * inv_t
            e = vexp(d)
            acc += float(e) * (d != 0)  # arithmetic, not a branch: the loop vectorises
            cnt += d == 0
    elif store:
        for k in range(src.size):
            d = (src[k] - m) * inv_t
            e = vexp(d)
            oc[k] = e
            acc += float(e) * (d != 0)
            cnt += d == 0
    else:
        for k in range(src.size):
            d = (src[k] - m) * inv_t
            e = vexp(d)
            acc += float(e) * (d != 0)
            cnt += d == 0
    return m, rest + acc, n_top + cnt


@numba.njit(**_OPTS)
def _write_chunk(src: Any, mc: Any, has_mask: bool, inv_t: Any, m: Any, scale: Any, mode: int,
                 oc: Any) -> None:
    """softmax: ``oc = exp((src − m)/T) · scale``; log_softmax: ``oc = (src − m)/T − scale``."""
    ninf = as_like(-np.inf, inv_t)
    if mode == SOFTMAX:
        if has_mask:
            for k in range(src.size):
                v = src[k] if mc[k] else ninf
                oc[k] = vexp((v - m) * inv_t) * scale
        else:
            for k in range(src.size):
                oc[k] = vexp((src[k] - m) * inv_t) * scale
    else:
        if has_mask:
            for k in range(src.size):
                v = src[k] if mc[k] else ninf
                oc[k] = (v - m) * inv_t - scale
        else:
            for k in range(src.size):
                oc[k] = (src[k] - m) * inv_t - scale


@numba.njit(**_OPTS)
def _segment(xr: Any, mr: Any, has_mask: bool, cap: Any, inv_t: Any, mode: int, orow: Any,
             buf: Any, k0: int, k1: int, store: bool, chunk_m: Any) -> tuple[Any, float, float]:
    """``(m, rest, n_top)`` of ``xr[k0:k1]``; with a softcap the capped values go to ``orow``
    (or to the scratch ``buf`` for logsumexp) and the write pass reads them from there.  With
    ``store`` (softmax without softcap) the exponentials go to ``orow`` and ``chunk_m`` records
    the max each chunk's were taken against."""
    m = as_like(-np.inf, inv_t)
    rest = 0.0
    n_top = 0.0
    for c0 in range(k0, k1, CHUNK):
        c1 = min(c0 + CHUNK, k1)
        mc = mr[c0:c1] if has_mask else mr
        if cap > 0:
            yc = buf[: c1 - c0] if mode == LSE else orow[c0:c1]
            _softcap(xr[c0:c1], mc, has_mask, cap, yc)
            m, rest, n_top = _chunk_stats(yc, mc, has_mask, inv_t, m, rest, n_top, False, yc)
        else:
            m, rest, n_top = _chunk_stats(xr[c0:c1], mc, has_mask, inv_t, m, rest, n_top, store,
                                          orow[c0:c1] if store else orow)
            if store:
                chunk_m[(c0 - k0) // CHUNK] = float(m)
        if rest != rest:
            break
    return m, rest, n_top


@numba.njit(**_OPTS)
def _rescale_segment(orow: Any, chunk_m: Any, m: Any, inv_t: Any, inv_s: float, k: int) -> None:
    """softmax's second pass after a stored first pass: each chunk times ``e^{(m_c − m)/T}/s``."""
    for c0 in range(0, k, CHUNK):
        c1 = min(c0 + CHUNK, k)
        f = as_like(math.exp((chunk_m[c0 // CHUNK] - float(m)) * float(inv_t)) * inv_s, inv_t)
        oc = orow[c0:c1]
        for j in range(oc.size):
            oc[j] = oc[j] * f


@numba.njit(cache=True, nogil=True, fastmath=False)
def log1p_sum(rest: float, n_top: float) -> float:
    """``log(rest + n_top)`` as ``log1p(rest + (n_top − 1))``: compiled without reassociation,
    which would round the tiny ``rest`` of a dominant row away.  ``fastmath=False`` is explicit:
    numba lets callees inherit the caller's fast-math flags unless they set their own."""
    return math.log1p(rest + (n_top - 1.0))


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _finish(m: Any, rest: float, n_top: float, inv_t: Any, mode: int) -> tuple[bool, float, Any]:
    """(special, lse, scale for the write pass)."""
    special = not (-np.inf < m < np.inf) or rest != rest
    log_s = log1p_sum(rest, n_top) if not special else 0.0
    lse = float(m) * float(inv_t) + log_s
    if mode == SOFTMAX:
        scale = 1.0 / (rest + n_top) if not special else 0.0
    else:
        scale = log_s
    return special, lse, scale


@numba.njit(**_OPTS)
def _write_segment(xr: Any, mr: Any, has_mask: bool, cap: Any, inv_t: Any, m: Any, scale: Any,
                   mode: int, orow: Any, k0: int, k1: int) -> None:
    for c0 in range(k0, k1, CHUNK):
        c1 = min(c0 + CHUNK, k1)
        mc = mr[c0:c1] if has_mask else mr
        src = orow[c0:c1] if cap > 0 else xr[c0:c1]
        _write_chunk(src, mc, has_mask, inv_t, m, scale, mode, orow[c0:c1])


# --------------------------------------------------------------------------------------------
# plain rows (no mask, no softcap): the common case, in blocks of rows
# --------------------------------------------------------------------------------------------

#: Bytes of input per block of plain rows: the block's rows and their outputs stay in L1
#: between the statistics and the write pass.
BLOCK_BYTES = 8192
MAX_BLOCK_ROWS = 64
#: float32 exponentials are summed in float32 over blocks of this many, then in float64.
SUM_BLOCK = 128


#: What :func:`sum_exp` writes to the output row as it goes.  ``STORE_EXP_IN_PLACE``: the
#: exponentials over the logits themselves (``orow`` is read, ``xr`` ignored).  A loop that
#: reads one array and writes another that is the same memory is not vectorised: LLVM's
#: runtime overlap check fails and the scalar loop runs, 4x slower.
STORE_NOTHING, STORE_EXP, STORE_SHIFTED, STORE_EXP_IN_PLACE = 0, 1, 2, 3


def sum_exp(xr, m, inv_t, orow, store):
    """``(rest, n_top)`` of one plain row whose max ``m`` is finite, writing to ``orow`` the
    exponentials ``e^{(x − m)/T}`` (``store == STORE_EXP``; ``STORE_EXP_IN_PLACE`` when ``orow``
    holds the logits), the shifted logits ``(x − m)/T`` (``STORE_SHIFTED``) or nothing.
    Writing while the exponentials keep the core busy hides the cost of the writes to memory,
    which a separate write pass would pay in full.  NaN ``rest`` when the row holds a NaN."""
    raise NotImplementedError  # pragma: no cover - only called from compiled code


@overload(sum_exp, jit_options={"fastmath": _FAST, "error_model": "numpy"}, inline="always")
def _sum_exp(xr, m, inv_t, orow, store):
    if m == types.float32:
        # float32: the terms are summed in float32 over blocks of SUM_BLOCK (LLVM vectorises
        # the block 64 wide: two terms per partial sum, then a 6-level tree, ≤ 7u), the block
        # sums in float64; ties are included and ``rest = s − 1`` is exact (``s ≥ 1``).  The
        # §7 bounds are absolute for the logs and 16u for the top probability, so neither the
        # dominant-row split of the float64 version nor a float64 sum of every term is needed,
        # and the loop costs ~35% less than with either.
        def impl32(xr, m, inv_t, orow, store):
            s = 0.0
            for b0 in range(0, xr.size, SUM_BLOCK):
                xc = xr[b0:b0 + SUM_BLOCK]  # slices: LLVM vectorises these loops, not ranges
                a = np.float32(0.0)
                if store == STORE_EXP:
                    oc = orow[b0:b0 + SUM_BLOCK]
                    for k in range(xc.size):
                        e = vexp((xc[k] - m) * inv_t)
                        oc[k] = e
                        a += e
                elif store == STORE_SHIFTED:
                    oc = orow[b0:b0 + SUM_BLOCK]
                    for k in range(xc.size):
                        d = (xc[k] - m) * inv_t
                        oc[k] = d
                        a += vexp(d)
                elif store == STORE_EXP_IN_PLACE:
                    oc = orow[b0:b0 + SUM_BLOCK]
                    for k in range(oc.size):
                        e = vexp((oc[k] - m) * inv_t)
                        oc[k] = e
                        a += e
                else:
                    for k in range(xc.size):
                        a += vexp((xc[k] - m) * inv_t)
                s += float(a)
            return s - 1.0, 1.0
        return impl32
    if m == types.float64:
        # float64: Blanchard–Higham–Higham's split, so that ``log1p(rest)`` keeps the tiny terms
        # of a dominant row (float64 has no wider type to sum in).
        def impl64(xr, m, inv_t, orow, store):
            # Summed in blocks of SUM_BLOCK, blocks in groups of SUM_BLOCK, then the groups: one
            # running sum over a long row of near-ties (every term ≈ 1) drifts by ~K·u/25, 7×
            # the §7 bound at K = 10⁵.
            acc = 0.0
            group = 0.0
            in_group = 0
            cnt = 0.0
            for b0 in range(0, xr.size, SUM_BLOCK):
                xc = xr[b0:b0 + SUM_BLOCK]  # slices: LLVM vectorises these loops, not ranges
                a = 0.0
                if store == STORE_EXP:
                    oc = orow[b0:b0 + SUM_BLOCK]
                    for k in range(xc.size):
                        d = (xc[k] - m) * inv_t
                        e = vexp(d)
                        oc[k] = e
                        a += e * (d != 0)
                        cnt += d == 0
                elif store == STORE_SHIFTED:
                    oc = orow[b0:b0 + SUM_BLOCK]
                    for k in range(xc.size):
                        d = (xc[k] - m) * inv_t
                        oc[k] = d
                        a += vexp(d) * (d != 0)
                        cnt += d == 0
                elif store == STORE_EXP_IN_PLACE:
                    oc = orow[b0:b0 + SUM_BLOCK]
                    for k in range(oc.size):
                        d = (oc[k] - m) * inv_t
                        e = vexp(d)
                        oc[k] = e
                        a += e * (d != 0)
                        cnt += d == 0
                else:
                    for k in range(xc.size):
                        d = (xc[k] - m) * inv_t
                        a += vexp(d) * (d != 0)
                        cnt += d == 0
                group += a
                in_group += 1
                if in_group == SUM_BLOCK:
                    acc += group
                    group = 0.0
                    in_group = 0
            return acc + group, cnt
        return impl64
    return None


def block_logs(rest, top, logs, n, like):
    """``logs[:n] = log(rest + top)`` for a block of rows (entries with a NaN rest get 0)."""
    raise NotImplementedError  # pragma: no cover


@overload(block_logs, jit_options={"fastmath": {"contract"}}, inline="always")
def _block_logs(rest, top, logs, n, like):
    if like == types.float32:
        # One vectorised loop over the block instead of a libm call per row (a 128-wide float32
        # row costs about as much as the call).  rest + top = s ≥ 1 exactly (see sum_exp).
        def impl32(rest, top, logs, n, like):
            for r in range(n):
                v = rest[r] + top[r]
                logs[r] = vlog(v if v == v else 1.0)
        return impl32
    if like == types.float64:
        def impl64(rest, top, logs, n, like):
            for r in range(n):
                logs[r] = log1p_sum(rest[r], top[r]) if rest[r] == rest[r] else 0.0
        return impl64
    return None


@numba.njit(**_OPTS)
def _plain_block(x: Any, inv_t: Any, mode: int, out: Any, lse: Any, special: Any, i0: int,
                 i1: int) -> None:
    """Rows ``i0:i1`` without mask or softcap, a block of rows at a time: (1) each row's max
    (one read from memory) and exponential sum (from cache), storing the exponentials
    (softmax) or the shifted logits (log_softmax) to the output, (2) the block's logs in one
    vectorised loop, (3) the output rescaled or shifted in place, from cache."""
    k = x.shape[1]
    nb = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // (k * x.itemsize)))
    ms = np.empty(nb, dtype=x.dtype)
    rest = np.empty(nb)
    top = np.empty(nb)
    logs = np.zeros(nb)
    store = STORE_EXP if mode == SOFTMAX else (STORE_SHIFTED if mode == LOG_SOFTMAX
                                               else STORE_NOTHING)
    for r0 in range(i0, i1, nb):
        r1 = min(r0 + nb, i1)
        for i in range(r0, r1):
            xr = x[i]
            m = max_of(xr)
            ms[i - r0] = m
            if -np.inf < m < np.inf:
                rest[i - r0], top[i - r0] = sum_exp(xr, m, inv_t, out[i] if mode != LSE else out[0],
                                                    store)
            else:
                rest[i - r0] = math.nan  # +inf, NaN or nothing finite: the generic path's
                top[i - r0] = 0.0
        if mode != SOFTMAX:
            block_logs(rest, top, logs, r1 - r0, inv_t)
        for i in range(r0, r1):
            j = i - r0
            if rest[j] != rest[j]:
                special[i] = True  # the caller's flags start False
                continue
            if mode != SOFTMAX:  # softmax's lse is never read
                lse[i] = float(ms[j]) * float(inv_t) + logs[j]
            if mode == LSE:
                continue
            orow = out[i]
            if mode == SOFTMAX:
                sc = as_like(1.0 / (rest[j] + top[j]), inv_t)
                for c in range(k):
                    orow[c] = orow[c] * sc
            else:
                lc = as_like(logs[j], inv_t)
                for c in range(k):
                    orow[c] = orow[c] - lc


@numba.njit(**_OPTS)
def _rows_block(x: Any, mask: Any, has_mask: bool, cap: Any, inv_t: Any, mode: int, out: Any,
                lse: Any, special: Any, i0: int, i1: int) -> None:
    """Rows ``i0:i1`` of :func:`rows` with a mask or a softcap: chunks of the row in L1 with
    the online ``(max, rest, n_top)``, then the write pass (softmax without softcap rescales the
    exponentials it stored)."""
    k = x.shape[1]
    nm = mask.shape[0]
    buf = np.empty(CHUNK if (mode == LSE and cap > 0) else 1, dtype=x.dtype)
    store = mode == SOFTMAX and not cap > 0
    chunk_m = np.empty((k + CHUNK - 1) // CHUNK if store else 1)
    for i in range(i0, i1):
        xr = x[i]
        mr = mask[min(i, nm - 1)]
        orow = out[min(i, out.shape[0] - 1)]
        m, rest, n_top = _segment(xr, mr, has_mask, cap, inv_t, mode, orow, buf, 0, k, store,
                                  chunk_m)
        sp, value, scale = _finish(m, rest, n_top, inv_t, mode)
        lse[i] = value
        special[i] = sp
        if sp or mode == LSE:
            continue
        if store:
            _rescale_segment(orow, chunk_m, m, inv_t, scale, k)
        else:
            _write_segment(xr, mr, has_mask, cap, inv_t, m, as_like(scale, inv_t), mode,
                           orow, 0, k)


@numba.njit(**_OPTS)
def _rows_range(x: Any, mask: Any, has_mask: bool, cap: Any, inv_t: Any, mode: int, out: Any,
                lse: Any, special: Any, i0: int, i1: int) -> None:
    """Rows ``i0:i1``: :func:`_plain_block` without mask or softcap, else :func:`_rows_block`."""
    if not has_mask and not cap > 0:
        _plain_block(x, inv_t, mode, out, lse, special, i0, i1)
    else:
        _rows_block(x, mask, has_mask, cap, inv_t, mode, out, lse, special, i0, i1)


@numba.njit(**_POPTS)
def rows(x: Any, mask: Any, has_mask: bool, cap: Any, inv_t: Any, mode: int, out: Any,
         lse: Any, special: Any, threads: int) -> None:
    """softmax / log_softmax into ``out`` (or only ``lse``), rows in blocks over the threads.

    ``special`` must start all False: flagged rows are set True.  ``lse`` is filled for
    log_softmax and logsumexp (plain softmax rows leave it untouched: nothing reads it).
    """
    n, k = x.shape
    if n == 0 or k == 0:
        return
    nblocks = min(n, 8 * threads)
    for b in prange(nblocks):
        _rows_range(x, mask, has_mask, cap, inv_t, mode, out, lse, special, b * n // nblocks,
                    (b + 1) * n // nblocks)


@numba.njit(**_OPTS)
def rows_serial(x: Any, mask: Any, has_mask: bool, cap: Any, inv_t: Any, mode: int, out: Any,
                lse: Any, special: Any, threads: int) -> None:
    """:func:`rows` on the calling thread only: for small inputs, where waking the thread pool
    costs more than the work (``threads`` is ignored; same signature as :func:`rows`)."""
    n, k = x.shape
    if n == 0 or k == 0:
        return
    _rows_range(x, mask, has_mask, cap, inv_t, mode, out, lse, special, 0, n)


@numba.njit(**_POPTS)
def rows_split(x: Any, mask: Any, has_mask: bool, cap: Any, inv_t: Any, mode: int, out: Any,
               lse: Any, special: Any, parts: int) -> None:
    """As :func:`rows`, for few long rows: each row split in ``parts`` merged (max, sum) partials."""
    n, k = x.shape
    nm = mask.shape[0]
    if n == 0 or k == 0:
        return
    tasks = n * parts
    st_m = np.empty(tasks, dtype=np.float64)
    st_rest = np.empty(tasks, dtype=np.float64)
    st_top = np.empty(tasks, dtype=np.float64)
    for t in prange(tasks):
        i = t // parts
        j = t % parts
        k0 = j * k // parts
        k1 = (j + 1) * k // parts
        buf = np.empty(CHUNK if (mode == LSE and cap > 0) else 1, dtype=x.dtype)
        xr = x[i]
        mr = mask[min(i, nm - 1)]
        orow = out[min(i, out.shape[0] - 1)]
        if k1 > k0:
            m, rest, n_top = _segment(xr, mr, has_mask, cap, inv_t, mode, orow, buf, k0, k1,
                                      False, buf)
            st_m[t] = float(m)
            st_rest[t] = rest
            st_top[t] = n_top
        else:
            st_m[t] = -np.inf
            st_rest[t] = 0.0
            st_top[t] = 0.0
    row_m = np.empty(n, dtype=x.dtype)
    row_scale = np.empty(n, dtype=x.dtype)
    for i in range(n):
        big = -np.inf
        bad = False
        for j in range(parts):
            v = st_m[i * parts + j]
            bad = bad or v != v or st_rest[i * parts + j] != st_rest[i * parts + j]
            big = v if v > big else big
        rest = 0.0
        n_top = 0.0
        for j in range(parts):
            t = i * parts + j
            if st_m[t] == big:
                rest += st_rest[t]
                n_top += st_top[t]
            elif st_m[t] > -np.inf:
                rest += (st_rest[t] + st_top[t]) * math.exp((st_m[t] - big) * float(inv_t))
        if bad:
            rest = math.nan
        m = as_like(big, inv_t)
        sp, value, scale = _finish(m, rest, n_top, inv_t, mode)
        lse[i] = value
        special[i] = sp
        row_m[i] = m
        row_scale[i] = as_like(scale, inv_t)
    if mode == LSE:
        return
    for t in prange(tasks):
        i = t // parts
        j = t % parts
        if special[i]:
            continue
        k0 = j * k // parts
        k1 = (j + 1) * k // parts
        _write_segment(x[i], mask[min(i, nm - 1)], has_mask, cap, inv_t, row_m[i], row_scale[i],
                       mode, out[i], k0, k1)


@numba.njit(**_OPTS)
def _strided_task(x: Any, mask: Any, has_mask: bool, inv_t: Any, mode: int, out: Any, lse: Any,
                  special: Any, o: int, j0: int, j1: int) -> None:
    """One ``(K, j1 − j0)`` tile of :func:`strided` at outer index ``o``."""
    k = x.shape[1]
    w = j1 - j0
    ninf = as_like(-np.inf, inv_t)
    m = np.full(w, ninf, dtype=x.dtype)
    nan = np.zeros(w, dtype=np.bool_)
    for kk in range(k):
        for j in range(w):
            v = x[o, kk, j0 + j]
            live = mask[o, kk, j0 + j] if has_mask else True
            v = v if live else ninf
            nan[j] = nan[j] | (v != v)
            m[j] = v if v > m[j] else m[j]
    rest = np.zeros(w)
    n_top = np.zeros(w)
    for kk in range(k):
        for j in range(w):
            v = x[o, kk, j0 + j]
            live = mask[o, kk, j0 + j] if has_mask else True
            v = v if live else ninf
            d = (v - m[j]) * inv_t
            e = vexp(d)
            rest[j] += float(e) * (d != 0)
            n_top[j] += d == 0
    scale = np.empty(w, dtype=x.dtype)
    for j in range(w):
        bad = nan[j] or not (-np.inf < m[j] < np.inf) or rest[j] != rest[j]
        r = math.nan if bad else rest[j]
        sp, value, sc = _finish(m[j], r, n_top[j], inv_t, mode)
        special[o, j0 + j] = sp
        lse[o, j0 + j] = value
        scale[j] = as_like(sc, inv_t)
    if mode == LSE:
        return
    for kk in range(k):
        for j in range(w):
            if special[o, j0 + j]:
                continue
            v = x[o, kk, j0 + j]
            live = mask[o, kk, j0 + j] if has_mask else True
            v = v if live else ninf
            d = (v - m[j]) * inv_t
            if mode == SOFTMAX:
                out[o, kk, j0 + j] = vexp(d) * scale[j]
            else:
                out[o, kk, j0 + j] = d - scale[j]


_TILE = 64


@numba.njit(**_POPTS)
def strided(x: Any, mask: Any, has_mask: bool, inv_t: Any, mode: int, out: Any, lse: Any,
            special: Any) -> None:
    """Reduction over the middle axis of ``x`` of shape ``(outer, K, inner)``, inner > 1.

    Tiles of ``(K, TILE)`` are processed column-wise (max, then sum, then write), vectorised
    along the contiguous inner axis.  ``lse`` and ``special`` have shape ``(outer, inner)``.
    """
    n_outer, k, n_inner = x.shape
    n_tiles = (n_inner + _TILE - 1) // _TILE
    if k == 0:
        return
    for task in prange(n_outer * n_tiles):
        o = task // n_tiles
        j0 = (task % n_tiles) * _TILE
        _strided_task(x, mask, has_mask, inv_t, mode, out, lse, special, o, j0,
                      min(j0 + _TILE, n_inner))


@numba.njit(**_OPTS)
def strided_serial(x: Any, mask: Any, has_mask: bool, inv_t: Any, mode: int, out: Any, lse: Any,
                   special: Any) -> None:
    """:func:`strided` on the calling thread only (small inputs)."""
    n_outer, k, n_inner = x.shape
    if k == 0:
        return
    for o in range(n_outer):
        for j0 in range(0, n_inner, _TILE):
            _strided_task(x, mask, has_mask, inv_t, mode, out, lse, special, o, j0,
                          min(j0 + _TILE, n_inner))
