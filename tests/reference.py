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
