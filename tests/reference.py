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
        out = [(_row_table(r, m)[name] if r.size else empty) for r, m in zip(rows, keeps, strict=True)]
        return np.array(out, dtype=np.float64).reshape(x.shape[:-1])
    if x.shape[-1] == 0:
        return np.zeros(x.shape)
    return np.stack([_row_table(r, m)[name] for r, m in zip(rows, keeps, strict=True)]).reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Accuracy against DESIGN §7: adversarial rows and the error/bound ratios.
# --------------------------------------------------------------------------------------------

UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53}
SMALLEST_NORMAL = {"float32": float(np.finfo(np.float32).tiny),
                   "float64": float(np.finfo(np.float64).tiny)}


def accuracy_rows(dtype: str, *, seed: int = 0, big: bool = True) -> list[np.ndarray]:
    """Random and adversarial rows in ``dtype``: one dominant term, near-ties, wide spreads
    (±700 in float64, ±80 in float32), a large common offset, and (``big``) K = 5000."""
    rng = np.random.default_rng(seed)
    f32 = dtype == "float32"
    spread = 80.0 if f32 else 700.0
    tie = 1e-6 if f32 else 1e-13
    rows = []
    for k in (2, 3, 17, 100, 1000):
        rows.append(rng.normal(size=k) * 3.0)  # random
        rows.append(rng.uniform(-spread, spread, size=k))  # wide spread
        dom = rng.normal(size=k) - (20.0 if f32 else 40.0)
        dom[rng.integers(k)] = 0.0
        rows.append(dom)  # one dominant term: the rest sum to ~k·e^-20 (f32) or e^-40 (f64)
        rows.append(1.0 + tie * rng.normal(size=k))  # near-ties
        rows.append(rng.uniform(-spread, spread, size=k) + (1e3 if f32 else 1e5))  # offset
    rows.append(np.array([0.0, -spread]))  # the smallest term near the bottom of the range
    rows.append(np.array([spread, spread * (1 - 1e-7), -spread]))
    if big:
        rows.append(rng.normal(size=5000) * 2.0)
        rows.append(1.0 + tie * rng.normal(size=5000))
        rows.append(rng.uniform(-spread, spread, size=5000))
    return [r.astype(dtype) for r in rows]


def exact_row(row: np.ndarray) -> dict:
    """Exact (50-digit) log-sum-exp, log-softmax and softmax of one row, as float64."""
    vals = [mpmath.mpf(float(v)) for v in row]
    s = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in vals))
    logp = [v - s for v in vals]
    return {"logsumexp": float(s), "log_softmax": np.array([float(v) for v in logp]),
            "softmax": np.array([float(mpmath.exp(v)) for v in logp])}


def error_bound_ratios(row: np.ndarray, exact: dict, got: dict, dtype: str) -> dict:
    """The worst error/bound ratio of each function on one row (DESIGN §7):
    softmax relative error ≤ 16u(1 + d_i) where the exact p_i is normal;
    log_softmax absolute error ≤ 16u(1 + d_i + ln K); logsumexp ≤ 16u(max(1, |lse|) + ln K)."""
    u = UNIT_ROUNDOFF[dtype]
    x = row.astype(np.float64)
    d = np.abs(x - x.max())
    ln_k = np.log(x.size)
    p = exact["softmax"]
    normal = p >= SMALLEST_NORMAL[dtype]
    p_got = np.asarray(got["softmax"], dtype=np.float64)
    rel = np.abs(p_got[normal] - p[normal]) / p[normal]
    ratios = {"softmax": float(np.max(rel / (16 * u * (1 + d[normal]))))}
    logp_got = np.asarray(got["log_softmax"], dtype=np.float64)
    ratios["log_softmax"] = float(np.max(np.abs(logp_got - exact["log_softmax"])
                                         / (16 * u * (1 + d + ln_k))))
    lse = exact["logsumexp"]
    ratios["logsumexp"] = float(abs(float(got["logsumexp"]) - lse)
                                / (16 * u * (max(1.0, abs(lse)) + ln_k)))
    return ratios
