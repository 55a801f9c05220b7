"""Running the engine on any input: the NumPy pass, the generic path, and Dask row blocks.

A metric is a :class:`~._engine.Spec` (what one pass accumulates) and a function of the
resulting :class:`~._engine.Sums` (:mod:`._formulas`).  This module builds the spec from the
user's options (bins, binning, mode) and runs it where the data are:

* :func:`host_sums`: float64 NumPy sums for any input (the statistics, the bootstrap and the
  diagrams keep their state on the host);
* :func:`evaluate`: a metric's value with the input's array type: the chunked NumPy pass for
  NumPy and CPU torch, whole-array operations of the input's namespace elsewhere (``jax.jit``
  works), and a lazy 0-d Dask array for Dask input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from .._namespace import (
    LogitkitValueError,
    as_array,
    check_choice,
    check_number,
    expected,
    namespace,
    to_numpy,
)
from ._binning import (
    BINNINGS,
    MODES,
    check_n_bins,
    edges_of,
    quantile_edges,
    resolve_bins,
    uniform_edges,
)
from ._blocks import known_rows, partitioned, row_reduce
from ._engine import (
    Rows,
    Spec,
    Sums,
    accumulate_rows,
    as_rows_2d,
    block_sums,
    confidences,
    fast_path,
    xp_bin_sums,
    xp_rows,
)

__all__ = ["Binning", "evaluate", "host_sums", "n_rows"]

#: A function of (total) sums and a namespace: the metric's value, with the sums' leading axes.
Value = Callable[[Sums, Any], Any]


def n_rows(x: Any) -> int:
    """The rows of ``x``; a partitioned array that does not know them (a boolean-masked Dask
    array) has its chunk sizes computed first (:func:`._blocks.known_rows`)."""
    shape = getattr(known_rows(x), "shape", None)
    if shape is None:
        shape = np.asarray(x).shape
    return int(shape[0]) if len(shape) else 0


def check_temperature(temperature: object) -> float:
    return check_number(temperature, "temperature", low=0.0, low_open=True, high=np.inf,
                        high_open=True)


class Binning:
    """The user's bin options, checked once: ``n_bins`` (int or ``"auto"``), ``binning``,
    ``mode``, and explicit ``edges`` (which override both)."""

    def __init__(self, n_bins: object = 15, binning: str = "uniform", mode: str = "top-label",
                 edges: Any = None) -> None:
        self.n_bins = check_n_bins(n_bins)
        self.binning = check_choice(binning, "binning", BINNINGS)
        self.mode = check_choice(mode, "mode", MODES)
        self.edges = None if edges is None else np.asarray(edges, dtype=np.float64)

    @property
    def classwise(self) -> bool:
        return self.mode == "classwise"

    def fields(self, n: int) -> dict[str, Any]:
        """The :class:`Spec` fields of these bins for ``n`` rows (equal-mass edges left
        ``None``: :func:`resolve` or the generic path computes them from the data)."""
        inner: np.ndarray | None
        if self.edges is not None:
            b, inner = int(self.edges.size - 1), self.edges[1:-1]
        else:
            b = resolve_bins(self.n_bins, n)
            inner = uniform_edges(b)[1:-1] if self.binning == "uniform" else None
        if self.classwise:
            return {"cw_bins": b, "cw_inner": inner}
        return {"n_bins": b, "inner": inner}


def probabilities(x: np.ndarray, from_logits: bool, beta: float) -> np.ndarray:
    """All the probabilities of a NumPy input (class-wise equal-mass edges and the class-wise
    smooth ECE need every column whole)."""
    from .._core import softmax

    x = as_rows_2d(x, from_logits)
    if not from_logits:
        return x
    return softmax(x.astype(np.float64), axis=1, temperature=1.0 / beta)


def resolve(x: Any, y: Any, spec: Spec) -> Spec:
    """``spec`` with equal-mass edges computed from the data (a first pass): the top-label
    confidences, one chunk at a time; class-wise, a sorted copy of the probabilities."""
    changes: dict[str, Any] = {}
    lazy = partitioned(x, y)
    if (spec.n_bins and spec.inner is None) or (spec.cw_bins and spec.cw_inner is None):
        if lazy:
            raise LogitkitValueError(expected(
                "binning", "'uniform' for Dask arrays (equal-mass edges need a global sort; "
                "give CalibrationStats fixed `edges` instead)", "quantile"))
        xn = np.asarray(to_numpy(x))
    if spec.n_bins and spec.inner is None:
        conf = confidences(xn, y, from_logits=spec.from_logits, beta=spec.beta)
        changes["inner"] = edges_of(conf, spec.n_bins, "quantile")[1:-1]
    if spec.cw_bins and spec.cw_inner is None:
        p = probabilities(xn, spec.from_logits, spec.beta)
        changes["cw_inner"] = np.asarray(quantile_edges(p, spec.cw_bins, np), dtype=np.float64)
    return replace(spec, **changes) if changes else spec


# --------------------------------------------------------------------------------------------
# host sums (NumPy, any input)
# --------------------------------------------------------------------------------------------


def host_sums(x: Any, y: Any, spec: Spec, *, base: int = 0, arg: str = "probs") -> Sums:
    """:class:`Sums` (float64 NumPy) of any input; ``base`` is the index of its first row (the
    rows seen before, for the row groups)."""
    if partitioned(x, y):
        spec = resolve(x, y, spec)
        return row_reduce(_offset_block_sums, x, y, offset=True, spec=spec, base=base, arg=arg)
    xp = namespace(x, y)
    x = as_array(x, arg, xp)
    if fast_path(x, xp):
        spec = resolve(x, y, spec)
        return block_sums(to_numpy(x), to_numpy(as_array(y, "y", xp, numeric=False)),
                          spec=spec, offset=base, arg=arg)
    r = xp_rows(x, y, from_logits=spec.from_logits, beta=spec.beta, xp=xp, arg=arg)
    if (spec.n_bins and spec.inner is None) or (spec.cw_bins and spec.cw_inner is None):
        spec = resolve(to_numpy(r.probs), None, replace(spec, from_logits=False))
    yn = np.asarray(to_numpy(r.labels)).astype(np.intp)
    correct = np.asarray(to_numpy(r.correct)) > 0
    p_y = np.asarray(to_numpy(r.p_y), dtype=np.float64)
    rows = Rows(
        conf=np.asarray(to_numpy(r.conf), dtype=np.float64),
        pred=np.where(correct, yn, -1),
        p_y=p_y,
        logp_y=np.asarray(to_numpy(r.logp_y), dtype=np.float64),
        sumsq=np.asarray(to_numpy(r.brier), dtype=np.float64) + 2.0 * p_y - 1.0,
        probs=np.asarray(to_numpy(r.probs), dtype=np.float64) if spec.needs_probs else None,
    )
    sums = Sums.zeros(spec, int(r.probs.shape[1]))
    accumulate_rows(sums, rows, yn, spec, base)
    return sums


def _offset_block_sums(x: Any, y: Any, *, spec: Spec, base: int, offset: int, arg: str) -> Sums:
    return block_sums(x, y, spec=spec, offset=base + offset, arg=arg)


# --------------------------------------------------------------------------------------------
# a metric's value, with the input's array type
# --------------------------------------------------------------------------------------------


def evaluate(x: Any, y: Any, spec: Spec, value: Value, *, keys: tuple[str, ...] | None = None,
             arg: str = "probs") -> Any:
    """``value`` of the sums of ``(x, y)`` as a 0-d array of the input's kind (float64 where
    the backend has it; a lazy 0-d Dask array for Dask input).  With ``keys``, ``value``
    returns a dict and so does this (one pass; Dask parts share their blocks' work)."""
    if partitioned(x, y):
        spec = resolve(x, y, spec)
        if keys is None:
            return row_reduce(block_sums, x, y, lazy=True, spec=spec, arg=arg,
                              finish=partial(_finish, value=value))
        return {key: row_reduce(block_sums, x, y, lazy=True, spec=spec, arg=arg,
                                finish=partial(_finish, value=value, key=key)) for key in keys}
    xp = namespace(x, y)
    xa = as_array(x, arg, xp)
    if fast_path(xa, xp):
        sums = block_sums(to_numpy(xa), to_numpy(as_array(y, "y", xp, numeric=False)),
                          spec=resolve(xa, y, spec), arg=arg)
        wrap = (lambda v: v) if type(xa) is np.ndarray or xp is np else partial(_like, x=xa, xp=xp)
        if keys is None:
            return wrap(_finish(sums, value=value))
        return {key: wrap(_finish(sums, value=value, key=key)) for key in keys}
    out = value(xp_sums(xa, y, spec, xp, arg=arg), xp)
    return out[0] if keys is None else {key: out[key][0] for key in keys}


def _finish(sums: Sums, *, value: Value, key: str | None = None) -> np.ndarray:
    if not sums.n.sum() > 0:
        raise LogitkitValueError(expected("probs", "non-empty (at least one row)", "0 rows"))
    out = value(sums.total(), np)
    return np.asarray((out if key is None else out[key])[0], dtype=np.float64)


def _like(out: np.ndarray, x: Any, xp: Any) -> Any:
    import array_api_compat

    return xp.asarray(out, device=array_api_compat.device(x))


def xp_sums(x: Any, y: Any, spec: Spec, xp: Any, *, arg: str = "probs") -> Sums:
    """:class:`Sums` (leading axis 1) as arrays of ``xp``: whole-array operations, no host
    transfer (``jit``-compatible).  Groups and smooth-ECE grids are host-side only."""
    r = xp_rows(x, y, from_logits=spec.from_logits, beta=spec.beta, xp=xp, arg=arg)
    dt = r.conf.dtype

    def one(a: Any) -> Any:
        return xp.reshape(a, (1, *a.shape))

    n = int(r.conf.shape[0])
    sums = Sums(n=xp.full((1,), float(n), dtype=dt), hits=one(xp.sum(r.correct)),
                nll=one(-xp.sum(r.logp_y)), brier=one(xp.sum(r.brier)),
                n_classes=int(r.probs.shape[1]))
    if spec.n_bins:
        inner = (quantile_edges(r.conf, spec.n_bins, xp) if spec.inner is None
                 else xp.asarray(spec.inner, dtype=dt))
        weights = [r.conf, r.correct]
        if spec.moments:
            weights += [r.conf * r.conf, r.conf * r.correct]
        sums.bins = one(xp_bin_sums(r.conf, weights, inner, spec.n_bins, xp))
    if spec.cw_bins:
        inner = (quantile_edges(r.probs, spec.cw_bins, xp) if spec.cw_inner is None
                 else xp.asarray(spec.cw_inner, dtype=dt))
        if inner.ndim == 1:
            inner = xp.reshape(inner, (-1, 1))
        p, hot = r.probs, r.hot
        cw = xp_bin_sums(p, [p, hot, p * p, p * hot], inner, spec.cw_bins, xp)
        sums.cw = one(cw)
    return sums

