"""Exact references computed with mpmath at 50 significant digits."""

from __future__ import annotations

import mpmath
import numpy as np

mpmath.mp.dps = 50


def _rows(x: np.ndarray):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]), x.shape


def lse(x: np.ndarray) -> np.ndarray:
    """log-sum-exp over the last axis, exactly (then rounded to float64)."""
    rows, shape = _rows(x)
    out = [float(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in r))) for r in rows]
    return np.array(out).reshape(shape[:-1])


def log_softmax(x: np.ndarray) -> np.ndarray:
    rows, shape = _rows(x)
    out = []
    for r in rows:
        s = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in r))
        out.append([float(mpmath.mpf(v) - s) for v in r])
    return np.array(out).reshape(shape)


def softmax(x: np.ndarray) -> np.ndarray:
    rows, shape = _rows(x)
    out = []
    for r in rows:
        ex = [mpmath.exp(mpmath.mpf(v)) for v in r]
        s = mpmath.fsum(ex)
        out.append([float(e / s) for e in ex])
    return np.array(out).reshape(shape)


def entropy(x: np.ndarray) -> np.ndarray:
    rows, shape = _rows(x)
    out = []
    for r in rows:
        ex = [mpmath.exp(mpmath.mpf(v)) for v in r]
        s = mpmath.fsum(ex)
        out.append(float(-mpmath.fsum((e / s) * mpmath.log(e / s) for e in ex if e != 0)))
    return np.array(out).reshape(shape[:-1])


# --------------------------------------------------------------------------------------------
# The edge-case table of DESIGN §2, row by row: masks, ±inf and NaN handled by the table's rules,
# the finite remainder exactly with mpmath.
# --------------------------------------------------------------------------------------------


def _row_table(row: np.ndarray, keep: np.ndarray) -> dict:
    k = row.shape[0]
    live = keep & ~np.isneginf(row)  # -inf entries have probability 0 whatever else happens
    p = np.zeros(k)
    logp = np.full(k, -np.inf)
    if np.isnan(row[keep]).any():
        nan = np.full(k, np.nan)
        return {"softmax": nan, "log_softmax": nan, "logsumexp": np.nan, "entropy": np.nan}
    posinf = keep & np.isposinf(row)
    if posinf.any():
        n = int(posinf.sum())
        p[posinf] = 1.0 / n
        logp[posinf] = -np.log(n)
        return {"softmax": p, "log_softmax": logp, "logsumexp": np.inf, "entropy": np.log(n)}
    if not live.any():
        return {"softmax": p, "log_softmax": logp, "logsumexp": -np.inf, "entropy": 0.0}
    vals = row[live]
    s = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in vals))
    lp = [mpmath.mpf(float(v)) - s for v in vals]
    p[live] = [float(mpmath.exp(v)) for v in lp]
    logp[live] = [float(v) for v in lp]
    h = -mpmath.fsum(mpmath.exp(v) * v for v in lp)
    return {"softmax": p, "log_softmax": logp, "logsumexp": float(s), "entropy": float(h)}


def table(name: str, x: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """What DESIGN §2's table says ``name`` (softmax, log_softmax, logsumexp, entropy) gives for
    ``x`` over the last axis, with an optional boolean mask."""
    x = np.asarray(x, dtype=np.float64)
    keep = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    rows = x.reshape(-1, x.shape[-1])
    keeps = keep.reshape(-1, x.shape[-1])
    if name in ("logsumexp", "entropy"):
        empty = -np.inf if name == "logsumexp" else 0.0
        out = [(_row_table(r, m)[name] if r.size else empty) for r, m in zip(rows, keeps)]
        return np.array(out, dtype=np.float64).reshape(x.shape[:-1])
    if x.shape[-1] == 0:
        return np.zeros(x.shape)
    return np.stack([_row_table(r, m)[name] for r, m in zip(rows, keeps)]).reshape(x.shape)
