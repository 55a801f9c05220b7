"""Validation of (probabilities, labels), bin edges, and per-bin sums: the functional core.

Every calibration metric here is a function of a few per-bin sums (count, Σ confidence,
Σ correct), so it can be computed on one array, accumulated over batches, or merged across
workers and give the same value.  This module computes those sums on any array library; the
formulas that turn sums into metrics live in :mod:`._formulas`.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .._namespace import (
    Array,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_choice,
    expected,
    is_concrete,
    is_jax,
    is_numpy,
    namespace,
    to_numpy,
)

MODES = ("top-label", "classwise")
BINNINGS = ("uniform", "quantile")
NORMS = ("l1", "l2", "max")


def acc_dtype(xp: Any) -> Any:
    """float64 where the backend has it (JAX only with x64 enabled), else float32."""
    if is_jax(xp):
        import jax

        return xp.float64 if jax.config.read("jax_enable_x64") else xp.float32
    return xp.float64


def check_n_bins(n_bins: object) -> int:
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, (int, np.integer)):
        raise LogitkitTypeError(expected("n_bins", "a positive int", n_bins))
    if int(n_bins) < 1:
        raise LogitkitValueError(expected("n_bins", "a positive int", n_bins))
    return int(n_bins)


def check_labels(labels: object, n: int, k: int, xp: Any, arg: str = "y") -> Array:
    """Integer class labels of shape ``(n,)`` with values in ``[0, k)``."""
    y = as_array(labels, arg, xp, numeric=False)
    if not (y.dtype == xp.bool or xp.isdtype(y.dtype, "integral")):
        raise LogitkitTypeError(
            expected(arg, "an array of integer class labels", f"dtype {y.dtype}"))
    if y.ndim != 1 or int(y.shape[0]) != n:
        raise LogitkitValueError(
            expected(arg, f"of shape ({n},) to match the predictions", f"shape {tuple(y.shape)}"))
    if y.dtype == xp.bool:
        y = astype(y, xp.int64 if hasattr(xp, "int64") else xp.int32, xp)
    if is_concrete(y) and n > 0:
        yn = to_numpy(y)
        lo, hi = int(yn.min()), int(yn.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise LogitkitValueError(expected(arg, f"class labels in [0, {k})", bad))
    return y


def check_probs(probs: object, y: object, xp: Any, *, arg: str = "probs") -> tuple[Array, Array]:
    """``(P, y)``: probabilities as ``(N, K)`` in the accumulation dtype, labels checked.

    A 1-D array, or a single column, is the probability of class 1 of a binary problem and is
    expanded to the two columns ``[1 - p, p]``.
    """
    p = as_array(probs, arg, xp)
    if p.ndim == 1:
        p = xp.reshape(p, (int(p.shape[0]), 1))
    if p.ndim != 2:
        raise LogitkitValueError(
            expected(arg, "of shape (N, K) or (N,)", f"shape {tuple(p.shape)}"))
    p = astype(p, acc_dtype(xp), xp)
    n = int(p.shape[0])
    if n == 0:
        raise LogitkitValueError(expected(arg, "non-empty (at least one row)", "0 rows"))
    if int(p.shape[1]) == 1:
        p = xp.concat([1.0 - p, p], axis=1)
    k = int(p.shape[1])
    if is_concrete(p):
        pn = to_numpy(p)
        if np.isnan(pn).any():
            raise LogitkitValueError(expected(arg, "probabilities without NaN", "NaN"))
        lo, hi = float(pn.min()), float(pn.max())
        if lo < 0.0 or hi > 1.0:
            bad = lo if lo < 0.0 else hi
            raise LogitkitValueError(expected(
                arg, "probabilities in [0, 1] (pass logits through softmax first)", bad))
        sums = pn.sum(axis=1)
        worst = int(np.argmax(np.abs(sums - 1.0)))
        if abs(sums[worst] - 1.0) > 1e-3:
            raise LogitkitValueError(expected(
                arg, "probabilities whose rows sum to 1", f"a row summing to {sums[worst]:.6g}"))
    return p, check_labels(y, n, k, xp)


def safe_log(p: Array, xp: Any) -> Array:
    """``log p`` with ``log 0 = -inf`` and no floating-point warning."""
    positive = p > 0
    one = xp.ones((), dtype=p.dtype)
    return xp.where(positive, xp.log(xp.where(positive, p, one)), -math.inf * one)


def top_label(p: Array, y: Array, xp: Any) -> tuple[Array, Array]:
    """``(confidence, correct)``: the largest probability and whether its class is the label."""
    conf = xp.max(p, axis=1)
    pred = xp.argmax(p, axis=1)
    correct = astype(pred == astype(y, pred.dtype, xp), p.dtype, xp)
    return conf, correct


def onehot(y: Array, k: int, like: Array, xp: Any) -> Array:
    classes = xp.arange(k, device=array_api_compat.device(like))
    return astype(xp.reshape(y, (-1, 1)) == astype(classes, y.dtype, xp), like.dtype, xp)


def uniform_edges(n_bins: int) -> np.ndarray:
    """``[0, 1/B, ..., 1]`` with each edge the correctly rounded ``b / B``."""
    return np.array([b / n_bins for b in range(n_bins + 1)], dtype=np.float64)


def quantile_edges(conf: Array, n_bins: int, xp: Any) -> Array:
    """Equal-mass inner edges: the inverted-CDF empirical quantiles at ``b / B``.

    ``conf`` is ``(N,)`` (one set of edges, shape ``(B - 1,)``) or ``(N, K)`` (one set per
    column, shape ``(B - 1, K)``).  Edge ``b`` is the ``ceil(b N / B)``-th smallest value, as
    ``numpy.quantile(..., method="inverted_cdf")``.
    """
    n = int(conf.shape[0])
    s = xp.sort(conf, axis=0)
    idx = [-(-b * n // n_bins) - 1 for b in range(1, n_bins)]
    if not idx:
        return xp.zeros((0, *conf.shape[1:]), dtype=conf.dtype, device=array_api_compat.device(conf))
    index = xp.asarray(idx, device=array_api_compat.device(conf))
    return xp.take(s, index, axis=0)


def bin_index(conf: Array, inner: Array, xp: Any) -> Array:
    """Right-closed bins ``(e_{b}, e_{b+1}]`` (the first bin also holds ``e_0``).

    ``inner`` holds the ``B - 1`` inner edges along axis 0 (broadcastable against ``conf``).  The
    bin of ``c`` is the number of inner edges strictly below it, so ``0`` lands in the first bin,
    ``1`` in the last, and a value equal to an edge in the bin that edge closes.
    """
    idx = xp.zeros(conf.shape, dtype=xp.int32, device=array_api_compat.device(conf))
    for j in range(int(inner.shape[0])):
        idx = idx + astype(conf > inner[j, ...], xp.int32, xp)
    return idx


def bin_sums(conf: Array, correct: Array, bins: Array, n_bins: int, xp: Any) -> Array:
    """Per-bin ``(count, Σ confidence, Σ correct)``, shape ``(3, *conf.shape[1:], B)``.

    ``conf``, ``correct`` and ``bins`` are ``(N,)`` (top-label) or ``(N, K)`` (one column per
    class).  NumPy uses ``bincount``; other backends one masked reduction per bin.
    """
    if is_numpy(xp):
        trailing = conf.shape[1:]
        ncol = math.prod(trailing)
        flat_bins = bins.reshape(conf.shape[0], ncol).astype(np.int64)
        key = (flat_bins + n_bins * np.arange(ncol, dtype=np.int64)).ravel()
        size = ncol * n_bins
        out = np.stack([
            np.bincount(key, minlength=size).astype(np.float64),
            np.bincount(key, weights=conf.reshape(-1), minlength=size),
            np.bincount(key, weights=correct.reshape(-1), minlength=size),
        ])
        return out.reshape(3, *trailing, n_bins)
    zero = xp.zeros((), dtype=conf.dtype, device=array_api_compat.device(conf))
    counts, confs, hits = [], [], []
    for b in range(n_bins):
        inside = bins == b
        counts.append(xp.sum(astype(inside, conf.dtype, xp), axis=0))
        confs.append(xp.sum(xp.where(inside, conf, zero), axis=0))
        hits.append(xp.sum(xp.where(inside, correct, zero), axis=0))
    return xp.stack([xp.stack(counts, axis=-1), xp.stack(confs, axis=-1),
                     xp.stack(hits, axis=-1)])


def binned(
    p: Array, y: Array, *, n_bins: int, binning: str, mode: str, xp: Any,
    edges: Array | None = None,
) -> tuple[Array, Array]:
    """``(sums, inner_edges)`` for validated ``(P, y)``; see :func:`bin_sums` for ``sums``.

    ``edges`` (a NumPy array of ``B + 1`` increasing edges from 0 to 1) overrides ``binning``.
    """
    check_choice(binning, "binning", BINNINGS)
    check_choice(mode, "mode", MODES)
    if mode == "top-label":
        conf, correct = top_label(p, y, xp)
    else:
        conf, correct = p, onehot(y, int(p.shape[1]), p, xp)
    dev = array_api_compat.device(p)
    if edges is not None:
        inner = xp.asarray(np.asarray(edges[1:-1], dtype=np.float64), dtype=p.dtype, device=dev)
        if conf.ndim == 2:
            inner = xp.reshape(inner, (-1, 1))
    elif binning == "uniform":
        inner = xp.asarray(uniform_edges(n_bins)[1:-1], dtype=p.dtype, device=dev)
        if conf.ndim == 2:
            inner = xp.reshape(inner, (-1, 1))
    else:
        inner = quantile_edges(conf, n_bins, xp)
    bins = bin_index(conf, inner, xp)
    return bin_sums(conf, correct, bins, n_bins, xp), inner


def prepare(probs: object, y: object) -> tuple[Any, Array, Array]:
    xp = namespace(probs, y)
    p, labels = check_probs(probs, y, xp)
    return xp, p, labels
