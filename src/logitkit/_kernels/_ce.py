"""The fused cross-entropy with its gradient: loss and ``∂loss/∂logits`` in one pass per row.

Per row (class axis last, ``z = softcap(x)/T``, masked classes excluded, ``W_c = w_c·y_c`` the
weighted smoothed target): pass 1 is the online ``(max, rest, n_top)`` of the softmax kernels;
pass 2 writes, once, ``g_c = s·([coef·p_c − W_c]/T·softcap'(x_c) + λx_c)`` with
``coef = Σ_c W_c + 2 c_z lse`` and ``s`` the reduction's scale, and accumulates the cross term
``Σ_c W_c (z_c − max)`` of the loss ``Σ_c W_c lse − Σ_c W_c z_c + c_z lse² + (λ/2)‖x‖²`` in float64.
Each gradient element is written after its logit was read, so the gradient may overwrite the
logits (``out=logits``).  Rows that do not count (ignored label, every class masked) get a zero
gradient and loss; rows with a NaN, a +inf or nothing finite, a label outside ``[0, K)`` or a
z-loss coefficient that overflows are flagged for the caller, which computes them on its generic
path (their gradient rows are untouched, except for the exponentials of an overflowing row).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange
from numba.extending import register_jitable

from ._exp import as_like, max_of, vexp
from ._rows import (
    _FAST,
    _OPTS,
    _POPTS,
    BLOCK_BYTES,
    CHUNK,
    MAX_BLOCK_ROWS,
    STORE_EXP,
    STORE_EXP_IN_PLACE,
    STORE_NOTHING,
    _chunk_stats,
    _softcap,
    block_logs,
    log1p_sum,
    sum_exp,
)


@numba.njit(**_OPTS)
def _row_stats(src: Any, mr: Any, has_mask: bool, inv_t: Any,
               scratch: Any) -> tuple[Any, float, float]:
    m = as_like(-np.inf, inv_t)
    rest = 0.0
    n_top = 0.0
    k = src.size
    for c0 in range(0, k, CHUNK):
        c1 = min(c0 + CHUNK, k)
        mc = mr[c0:c1] if has_mask else mr
        m, rest, n_top = _chunk_stats(src[c0:c1], mc, has_mask, inv_t, m, rest, n_top, False,
                                      scratch)
        if rest != rest:
            break
    return m, rest, n_top


@numba.njit(**_OPTS)
def _ce_plain_block(x: Any, out: Any, labels: Any, counted: Any, cz: float, inv_t: Any,
                    scales: Any, write: bool, in_place: bool, loss: Any, lse_out: Any,
                    coef_out: Any, special: Any, i0: int, i1: int) -> None:
    """Rows ``i0:i1`` of :func:`ce_rows` with integer labels and no option but ``z_loss`` and
    the temperature, a block of rows at a time as the softmax kernel's plain rows: (1) per row
    the max, the label's logit and the exponential sum, the exponentials stored in the gradient
    row, (2) the block's logs in one vectorised loop, (3) the loss and the gradient
    ``(coef·p − y)/T · scale`` written by rescaling the stored exponentials.  Each row's logits
    are read in (1) before its gradient row is written, so ``out`` may be the logits; with
    ``in_place`` (1) reads them through ``out`` (``STORE_EXP_IN_PLACE``)."""
    k = x.shape[1]
    store = STORE_EXP_IN_PLACE if in_place else (STORE_EXP if write else STORE_NOTHING)
    nb = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // (k * x.itemsize)))
    ms = np.empty(nb, dtype=x.dtype)
    dts = np.empty(nb, dtype=x.dtype)
    rest = np.empty(nb)
    top = np.empty(nb)
    logs = np.zeros(nb)
    zero = as_like(0.0, inv_t)
    for r0 in range(i0, i1, nb):
        r1 = min(r0 + nb, i1)
        for i in range(r0, r1):
            j = i - r0
            ms[j] = zero
            dts[j] = zero
            rest[j] = 0.0
            top[j] = 1.0
            if not counted[i]:
                continue
            xr = x[i]
            m = max_of(xr)
            ms[j] = m
            t = labels[min(i, labels.size - 1)]
            if not 0 <= t < k:  # never index out of range: the generic path raises for it
                rest[j] = math.nan
            elif -np.inf < m < np.inf:
                dts[j] = (xr[t] - m) * inv_t
                rest[j], top[j] = sum_exp(xr, m, inv_t, out[min(i, out.shape[0] - 1)], store)
            else:
                rest[j] = math.nan  # +inf, NaN or nothing finite: the generic path's
        block_logs(rest, top, logs, r1 - r0, inv_t)
        for i in range(r0, r1):
            j = i - r0
            orow = out[min(i, out.shape[0] - 1)]
            if not counted[i]:
                if write:
                    for c in range(k):
                        orow[c] = zero
                loss[i] = 0.0
                lse_out[i] = 0.0
                coef_out[i] = 0.0
                continue
            if rest[j] != rest[j]:
                special[i] = True
                continue
            log_s = logs[j]
            # In float64: a float32 m/T overflows for [3e38, 2.9e38] at T = 0.5.  The z-loss terms
            # only when asked for (0·lse² is NaN once |lse| > 1.34e154), and a coefficient that
            # overflows leaves the row to the caller (inf·0 in the gradient).
            lse = np.float64(ms[j]) * np.float64(inv_t) + log_s
            coef = 1.0 + 2.0 * cz * lse if cz > 0.0 else 1.0
            if not abs(coef) < np.inf:
                special[i] = True
                continue
            lse_out[i] = lse
            coef_out[i] = coef
            d_t = dts[j]
            loss[i] = log_s - float(d_t) + (cz * lse * lse if cz > 0.0 else 0.0)
            if not write:
                continue
            g_scale = inv_t * scales[min(i, scales.size - 1)]
            inv_s = 1.0 / (rest[j] + top[j])
            cs = as_like(inv_s * coef * float(g_scale), inv_t)
            for c in range(k):
                orow[c] = orow[c] * cs
            orow[labels[min(i, labels.size - 1)]] -= g_scale  # (coef·p_t − 1)/T · scale


@numba.njit(**_OPTS)
def _ce_block(x: Any, out: Any, labels: Any, probs: Any, is_prob: bool, mask: Any,
              has_mask: bool, weight: Any, has_weight: bool, counted: Any, eps: float, cz: float,
              lam: float, cap: Any, inv_t: Any, scales: Any, write: bool,
              loss: Any, lse_out: Any, coef_out: Any, special: Any, i0: int, i1: int) -> None:
    """Rows ``i0:i1`` of :func:`ce_rows`."""
    k = x.shape[1]
    nm = mask.shape[0]
    plain = not (is_prob or has_mask or has_weight or eps > 0.0 or lam > 0.0 or cap > 0)
    # out = logits: each row's logits are read before its gradient is written, but reading and
    # writing one memory through two arrays keeps LLVM from vectorising (its runtime overlap
    # check fails), so both blocks read the row through one array there.
    in_place = write and out.ctypes.data == x.ctypes.data
    if plain:
        _ce_plain_block(x, out, labels, counted, cz, inv_t, scales, write, in_place, loss,
                        lse_out, coef_out, special, i0, i1)
        return
    # Every load in the row loop is unconditional and in bounds (a vectorisable loop cannot
    # branch on the options): absent options read rows that change nothing, the all-true mask,
    # unit weights and zero target probabilities.
    ybuf = np.empty(k if cap > 0 else 1, dtype=x.dtype)
    xbuf = np.empty(k if in_place else 1, dtype=x.dtype)
    all_live = np.ones(1 if has_mask else k, dtype=np.bool_)
    unit_w = np.ones(1 if has_weight else k, dtype=x.dtype)
    no_q = np.zeros(1 if is_prob else k, dtype=x.dtype)
    cap_inv = as_like(1.0 / cap if cap > 0 else 0.0, inv_t)
    ninf = as_like(-np.inf, inv_t)
    zero = as_like(0.0, inv_t)
    for i in range(i0, i1):
        xr = x[i]
        orow = out[min(i, out.shape[0] - 1)]
        if not counted[i]:
            if write:
                for c in range(k):
                    orow[c] = 0
            loss[i] = 0.0
            lse_out[i] = 0.0
            coef_out[i] = 0.0
            continue
        scale = scales[min(i, scales.size - 1)]
        mr = mask[min(i, nm - 1)] if has_mask else all_live
        wr = weight if has_weight else unit_w
        qr = probs[i] if is_prob else no_q
        if cap > 0:
            _softcap(xr, mr, has_mask, cap, ybuf)
            src = ybuf
        else:
            src = xr
        t = labels[min(i, labels.size - 1)]
        if not 0 <= t < k:  # never index out of range: the generic path raises for it
            special[i] = True
            continue
        m, rest, n_top = _row_stats(src, mr, has_mask, inv_t, ybuf)
        if not (-np.inf < m < np.inf) or rest != rest:
            special[i] = True
            continue
        log_s = log1p_sum(rest, n_top)
        lse = np.float64(m) * np.float64(inv_t) + log_s  # float64: see _ce_plain_block
        inv_s = as_like(1.0 / (rest + n_top), inv_t)
        wt = float(wr[t]) if not is_prob else 1.0

        # Σ_c W_c, before the pass that needs it for the gradient's coefficient.
        if has_mask:
            kv = 0.0
            for c in range(k):
                kv += mr[c]
        else:
            kv = float(k)
        share = eps / kv
        if is_prob:
            total = 0.0
            for c in range(k):
                total += float(wr[c]) * ((1.0 - eps) * float(qr[c]) + share * mr[c])
        else:
            sw = kv
            if has_weight and eps > 0.0:
                sw = 0.0
                for c in range(k):
                    sw += float(wr[c]) * mr[c]
            total = (1.0 - eps) * wt + share * sw if eps > 0.0 else wt
        coef = total + 2.0 * cz * lse if cz > 0.0 else total
        if not abs(coef) < np.inf:
            special[i] = True
            continue
        lse_out[i] = lse
        coef_out[i] = coef

        # The label's own term, −b_t·y_t, is left out of the row loop (no data-dependent branch
        # there); its logit is read now, before the loop may overwrite it (``out`` = logits).
        b_t = (1.0 - eps) * wt if not is_prob else 0.0
        live_t = mr[t]
        s_t = src[t]
        terms = (m, inv_t, inv_s, 1.0 - eps, share, as_like(coef, inv_t), lam, cap_inv, cap > 0,
                 scale, write)
        if in_place:  # the row loop reads a copy of the logits (see in_place above)
            for c in range(k):
                xbuf[c] = xr[c]
            cross, sq = _ce_row(xbuf, ybuf if cap > 0 else xbuf, mr, wr, qr, terms, orow)
        else:
            cross, sq = _ce_row(xr, src, mr, wr, qr, terms, orow)
        if b_t > 0.0:
            d_t = ((s_t if live_t else ninf) - m) * inv_t
            cross += b_t * float(d_t)
            if write and live_t:
                th = s_t * cap_inv if cap > 0 else zero
                orow[t] -= as_like(b_t, inv_t) * inv_t * (as_like(1.0, inv_t) - th * th) * scale
        ce = total * log_s - cross
        loss[i] = ce + (cz * lse * lse if cz > 0.0 else 0.0) + (0.5 * lam * sq if lam > 0.0 else 0.0)


@register_jitable(fastmath=_FAST)
def _ce_term(xv: Any, sv: Any, live: Any, wc: Any, qc: Any, m: Any, inv_t: Any, inv_s: Any,
             keep: float, share: float, coef: Any, lam: float, cap_inv: Any,
             capped: bool) -> tuple[float, float, Any]:
    """One class of a row: ``(w_c·d_c, x_c², ∂/∂x_c before the row's scale)`` for the target
    weight ``w_c = W_c·(keep·q_c + share)`` (the label's own weight is added by the caller).
    Options enter as values that change nothing when absent; the selects keep a ±inf logit
    from turning an absent option's ``0·x`` into NaN."""
    zero = as_like(0.0, inv_t)
    y = sv if live else as_like(-np.inf, inv_t)
    d = (y - m) * inv_t
    p = vexp(d) * inv_s
    wgt = float(wc) * (keep * float(qc) + share * live)
    dd = float(d) if wgt > 0.0 else 0.0  # 0·(−inf) = 0
    xs = xv if live else zero
    th = sv * cap_inv if capped else zero
    g = (coef * p - as_like(wgt, inv_t)) * inv_t * (as_like(1.0, inv_t) - th * th)
    g = g + as_like(lam, inv_t) * xs if lam > 0.0 else g
    return wgt * dd, float(xs) * float(xs), g


@numba.njit(**_OPTS)
def _ce_row(xs: Any, src: Any, mr: Any, wr: Any, qr: Any, terms: Any,
            orow: Any) -> tuple[float, float]:
    """``(Σ w_c·d_c, Σ x_c²)`` over a row (:func:`_ce_term`); with ``write`` its gradient into
    ``orow``, masked classes 0."""
    m, inv_t, inv_s, keep, share, coef, lam, cap_inv, capped, scale, write = terms
    zero = as_like(0.0, inv_t)
    cross = 0.0
    sq = 0.0
    if write:
        for c in range(xs.size):
            ct, st, g = _ce_term(xs[c], src[c], mr[c], wr[c], qr[c], m, inv_t, inv_s, keep,
                                 share, coef, lam, cap_inv, capped)
            cross += ct
            sq += st
            orow[c] = g * scale if mr[c] else zero
    else:
        for c in range(xs.size):
            ct, st, g = _ce_term(xs[c], src[c], mr[c], wr[c], qr[c], m, inv_t, inv_s, keep,
                                 share, coef, lam, cap_inv, capped)
            cross += ct
            sq += st
    return cross, sq


@numba.njit(**_POPTS)
def ce_rows(x: Any, out: Any, labels: Any, probs: Any, is_prob: bool, mask: Any, has_mask: bool,
            weight: Any, has_weight: bool, counted: Any, eps: float, cz: float, lam: float,
            cap: Any, inv_t: Any, scales: Any, write: bool, loss: Any,
            lse_out: Any, coef_out: Any, special: Any, threads: int) -> None:
    """Per-row loss, lse and gradient coefficient; with ``write`` the gradient into ``out``,
    scaled per row by ``scales`` (the reduction's factor times the upstream cotangent)."""
    n = x.shape[0]
    nblocks = min(n, 8 * threads)
    for b in prange(nblocks):
        _ce_block(x, out, labels, probs, is_prob, mask, has_mask, weight, has_weight, counted,
                  eps, cz, lam, cap, inv_t, scales, write, loss, lse_out, coef_out,
                  special, b * n // nblocks, (b + 1) * n // nblocks)


@numba.njit(**_OPTS)
def ce_rows_serial(x: Any, out: Any, labels: Any, probs: Any, is_prob: bool, mask: Any,
                   has_mask: bool, weight: Any, has_weight: bool, counted: Any, eps: float,
                   cz: float, lam: float, cap: Any, inv_t: Any, scales: Any, write: bool,
                   loss: Any, lse_out: Any, coef_out: Any, special: Any,
                   threads: int) -> None:
    """:func:`ce_rows` on the calling thread only: for small inputs, where waking the thread
    pool costs more than the work (``threads`` is ignored; same signature as :func:`ce_rows`)."""
    _ce_block(x, out, labels, probs, is_prob, mask, has_mask, weight, has_weight, counted, eps,
              cz, lam, cap, inv_t, scales, write, loss, lse_out, coef_out, special, 0,
              x.shape[0])
