"""Bins and labels: the bin-edge rules every calibration metric shares, and the label check.

One copy of each rule: the uniform edges (correctly rounded ``b / B``), the equal-mass
(quantile) edges, the automatic bin count, the right-closed bin of a value, and what a valid
array of class labels is.  The engine (:mod:`._engine`), the statistics, the diagrams and the
command line all take their bins from here.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .._namespace import (
    Array,
    Described,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_choice,
    check_int,
    expected,
    is_concrete,
    is_jax,
    to_numpy,
)

MODES = ("top-label", "classwise")
BINNINGS = ("uniform", "quantile")
NORMS = ("l1", "l2", "max")

#: ``n_bins="auto"``: ``ceil(N ** (1/3))`` clipped to this range.
AUTO_BINS = (5, 50)


def acc_dtype(xp: Any) -> Any:
    """float64 where the backend has it (JAX only with x64 enabled), else float32."""
    if is_jax(xp):
        import jax

        return xp.float64 if jax.config.read("jax_enable_x64") else xp.float32
    return xp.float64


def check_n_bins(n_bins: object) -> int | str:
    """``n_bins`` as a positive int, or ``"auto"`` (resolved by :func:`resolve_bins`)."""
    if isinstance(n_bins, str) and n_bins == "auto":
        return "auto"
    return check_int(n_bins, "n_bins", what="a positive int or 'auto'")


def resolve_bins(n_bins: int | str, n: int) -> int:
    """A checked ``n_bins`` for ``n`` predictions: ``"auto"`` is :func:`auto_bins` of ``n``."""
    return auto_bins(n) if n_bins == "auto" else int(n_bins)


def auto_bins(n: int) -> int:
    r"""The automatic bin count for ``n`` predictions: ``ceil(n ** (1/3))`` within [5, 50].

    A binned estimate of the reliability curve has a bias that shrinks like ``1/B`` and a
    variance that grows like ``B/N``; their sum is smallest for ``B ∝ N^{1/3}`` (the classical
    histogram-regression rate, used for calibration by Gupta & Ramdas 2021).  The floor keeps a
    small test set from collapsing into two or three bins, the ceiling keeps bins readable.

    Examples:
        >>> [auto_bins(n) for n in (100, 749, 10_000, 1_000_000)]
        [5, 10, 22, 50]
    """
    lo, hi = AUTO_BINS
    return int(min(hi, max(lo, math.ceil(round(n ** (1 / 3), 9)))))


def uniform_edges(n_bins: int) -> np.ndarray:
    """``[0, 1/B, ..., 1]`` with each edge the correctly rounded ``b / B``."""
    return np.array([b / n_bins for b in range(n_bins + 1)], dtype=np.float64)


def quantile_ranks(n: int, n_bins: int) -> list[int]:
    """0-based ranks of the ``B - 1`` inner equal-mass edges among ``n`` sorted values.

    Edge ``b`` is the ``ceil(b n / B)``-th smallest value: the inverted-CDF empirical quantile at
    ``b / B`` (``numpy.quantile(..., method="inverted_cdf")``).
    """
    return [-(-b * n // n_bins) - 1 for b in range(1, n_bins)]


def quantile_edges(values: Array, n_bins: int, xp: Any) -> Array:
    """Inner equal-mass edges of ``values`` (``(N,)``: shape ``(B - 1,)``; ``(N, K)``: one set
    per column, shape ``(B - 1, K)``), by :func:`quantile_ranks`."""
    n = int(values.shape[0])
    idx = quantile_ranks(n, n_bins)
    dev = array_api_compat.device(values)
    if not idx:
        return xp.zeros((0, *values.shape[1:]), dtype=values.dtype, device=dev)
    s = xp.sort(values, axis=0)
    return xp.take(s, xp.asarray(idx, device=dev), axis=0)


def edges_of(values: Any, n_bins: int, binning: str) -> np.ndarray:
    """The ``B + 1`` float64 edges from 0 to 1 of ``binning`` over 1-D NumPy ``values``
    (uniform edges ignore them); repeated quantile edges are kept (their bins are empty)."""
    check_choice(binning, "binning", BINNINGS)
    if binning == "uniform":
        return uniform_edges(n_bins)
    v = np.asarray(values)
    idx = quantile_ranks(int(v.shape[0]), n_bins)
    inner = np.partition(v, idx)[idx].astype(np.float64) if idx else np.empty(0)
    return np.concatenate([[0.0], inner, [1.0]])


def check_edges(edges: object) -> np.ndarray:
    """User-given bin edges: ``B + 1`` non-decreasing float64 values from 0 to 1."""
    e = np.asarray(to_numpy(edges), dtype=np.float64) if edges is not None else None
    if e is None or e.ndim != 1 or e.size < 2 or e[0] != 0.0 or e[-1] != 1.0 \
            or not np.all(np.diff(e) >= 0):  # NaN fails this too (it passed "< 0")
        raise LogitkitValueError(expected("edges", "non-decreasing bin edges from 0 to 1", edges))
    return e


def bin_index(values: Array, inner: Array, xp: Any) -> Array:
    """Right-closed bins ``(e_b, e_{b+1}]`` (the first bin also holds ``e_0``).

    ``inner`` holds the ``B - 1`` inner edges along axis 0 (broadcastable against ``values``).
    The bin of ``c`` is the number of inner edges strictly below it, so ``0`` lands in the first
    bin, ``1`` in the last, and a value equal to an edge in the bin that edge closes.  (NumPy
    arrays of one set of edges take ``searchsorted(inner, c, side="left")``, the same count.)
    """
    idx = xp.zeros(values.shape, dtype=xp.int32, device=array_api_compat.device(values))
    for j in range(int(inner.shape[0])):
        idx = idx + astype(values > inner[j, ...], xp.int32, xp)
    return idx


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
        check_label_range(int(yn.min()), int(yn.max()), k, arg)
    return y


def check_label_range(lo: int, hi: int, k: int, arg: str = "y") -> None:
    if lo < 0 or hi >= k:
        raise LogitkitValueError(expected(arg, f"class labels in [0, {k})", lo if lo < 0 else hi))


def bin_edges(confidences: Any, n_bins: int | str = "auto", *,
              binning: str = "quantile") -> np.ndarray:
    """The ``B + 1`` bin edges of ``binning`` over ``confidences``, for
    ``CalibrationStats(edges=...)``: equal-mass bins chosen on a first pass, then merged exactly.

    Args:
        confidences: 1-D values in [0, 1] (for example each row's top-label probability).
        n_bins: a positive int, or ``"auto"`` (:func:`auto_bins` of the number of values).
        binning: ``"quantile"`` (edge ``b`` is the ``ceil(b N / B)``-th smallest value, NumPy's
            ``"inverted_cdf"`` quantile; repeated edges are kept and their bins stay empty) or
            ``"uniform"`` (``b / B``, correctly rounded; the values only count for ``"auto"``).

    Returns:
        float64 edges from 0 to 1, non-decreasing.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import bin_edges
        >>> bin_edges(np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95]), 3)
        array([0. , 0.6, 0.8, 1. ])
        >>> bin_edges(np.array([0.5, 0.6, 0.7]), 4, binning="uniform")
        array([0.  , 0.25, 0.5 , 0.75, 1.  ])
    """
    v = np.asarray(to_numpy(confidences), dtype=np.float64)
    if v.ndim != 1:
        raise LogitkitValueError(expected("confidences", "a 1-D array", f"shape {v.shape}"))
    if v.size == 0 or not np.all((v >= 0) & (v <= 1)):  # NaN fails this too
        bad = "no values" if v.size == 0 else repr(float(v[~((v >= 0) & (v <= 1))][0]))
        raise LogitkitValueError(expected("confidences", "at least one value, each in [0, 1]",
                                          Described(bad)))
    return edges_of(v, resolve_bins(check_n_bins(n_bins), int(v.shape[0])), binning)
