"""Calibration on Dask arrays: the adapter of :func:`._blocks.row_reduce`, a leaf module.

Calibration is built on sums, so a Dask array is handled by mapping a NumPy function over its row
blocks and adding the results in a tree (one pass over the data, one ``compute``):

* the metrics and :class:`~logitkit.calibration.CalibrationStats`: the engine's per-block sums
  (:func:`._engine.block_sums`), reached through :func:`._blocks.row_reduce`; a metric's result
  stays a lazy 0-d Dask array (array type in = array type out);
* ``TemperatureScaler.fit``: each Newton step maps ``_nll_derivatives`` over the blocks.

This module imports :mod:`._blocks` and registers itself there; no other calibration module
imports it (the package facade imports it once so that it registers).  With a
``distributed.Client`` active, the work runs on its cluster.  Nothing here imports Dask at module
import time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .._namespace import LogitkitTypeError, LogitkitValueError, expected, is_dask
from ._blocks import add as _add_sums
from ._blocks import register as _register

__all__ = ["is_dask"]


# --------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------


def _as_dask(x: Any, arg: str, chunks: Any = None) -> Any:
    import dask.array as da

    if is_dask(x):
        arr = x
    else:
        try:
            host = np.asarray(x if not hasattr(x, "detach") else x.detach().cpu().numpy())
        except Exception:
            raise LogitkitTypeError(expected(arg, "a numeric array", x)) from None
        arr = da.from_array(host, chunks=chunks if chunks is not None else "auto")
    if any(math.isnan(c) for dim in arr.chunks for c in dim):
        arr = arr.compute_chunk_sizes()
    return arr


def _rows(probs: Any, y: Any, w: Any = None, *, arg: str = "probs") -> tuple[Any, Any, Any]:
    """``probs`` (rows in blocks, all columns in one), and ``y``/``w`` blocked like its rows."""
    first = probs if is_dask(probs) else (y if is_dask(y) else w)
    p = _as_dask(probs, arg, chunks=None if is_dask(probs) else _row_chunks(first))
    if p.ndim not in (1, 2):
        raise LogitkitValueError(expected(arg, "of shape (N, K) or (N,)", f"shape {p.shape}"))
    if p.ndim == 2:
        p = p.rechunk({1: -1})
    n = int(p.shape[0])
    if n == 0:
        raise LogitkitValueError(expected(arg, "non-empty (at least one row)", "0 rows"))

    def aligned(a: Any, name: str) -> Any:
        if a is None:
            return None
        arr = _as_dask(a, name, chunks=(p.chunks[0],))
        if arr.ndim != 1 or int(arr.shape[0]) != n:
            raise LogitkitValueError(expected(name, f"of shape ({n},) to match the predictions",
                                              f"shape {tuple(arr.shape)}"))
        return arr.rechunk((p.chunks[0],))

    return p, aligned(y, "y"), aligned(w, "sample_weight")


def _claims(x: Any) -> bool:
    return is_dask(x)


@partial(_register, claims=_claims)
def _row_sums(fn: Callable[..., Any], arrays: Any, kwargs: dict[str, Any], *,
              finish: Callable[[Any], Any], offset: bool = False, lazy: bool = False) -> Any:
    """:func:`._blocks.row_reduce` for Dask arrays: ``fn`` mapped over aligned row blocks, the
    results added in a tree, ``finish`` applied to the total; one ``compute`` (or none, lazy)."""
    first = next((a for a in arrays if a is not None and is_dask(a)), None)
    if first is None:
        return NotImplemented
    import dask
    import dask.array as da
    from dask import delayed

    rows = _as_dask(first, "arrays")
    rows = rows.rechunk({i: -1 for i in range(1, rows.ndim)})
    chunks = (rows.chunks[0],)
    aligned = []
    for a in arrays:
        if a is None:
            aligned.append([None] * len(chunks[0]))
            continue
        if a is not first and not is_dask(a):
            a = np.asarray(a)
            a = _as_dask(a, "arrays", chunks=(chunks[0], *((-1,) * (a.ndim - 1))))
        arr = rows if a is first else a.rechunk((chunks[0], *((-1,) * (a.ndim - 1))))
        aligned.append(_blocks_of(arr))
    block = delayed(fn, pure=True)
    starts = np.concatenate([[0], np.cumsum(chunks[0])[:-1]]).astype(int).tolist()
    parts = [block(*blk, **kwargs, **({"offset": start} if offset else {}))
             for blk, start in zip(zip(*aligned, strict=True), starts, strict=True)]
    result = delayed(finish, pure=True)(_tree(parts, _add_sums))
    if lazy:
        return da.from_delayed(result, shape=(), dtype=np.float64)
    (total,) = dask.compute(result)
    return total


def _blocks_of(arr: Any) -> list[Any]:
    return list(arr.to_delayed().reshape(-1))


def _row_chunks(first: Any) -> Any:
    return (first.chunks[0],) if first is not None and is_dask(first) else None


def _blocks(arr: Any) -> list[Any]:
    return [] if arr is None else list(arr.to_delayed().ravel())


def _tree(parts: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Pairwise reduction of delayed values (a tree: depth log2 of the number of blocks)."""
    from dask import delayed

    step = delayed(combine, pure=True)
    while len(parts) > 1:
        nxt = [step(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


# --------------------------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------------------------


def _block_nll_sums(z: np.ndarray, y: np.ndarray, w: np.ndarray | None, beta: float,
                    from_probs: bool) -> tuple[float, float, float, float]:
    from ._nll_sums import _nll_derivatives

    if from_probs:
        with np.errstate(divide="ignore"):
            z = np.log(z.astype(np.float64))
    return _nll_derivatives(z, y, beta, w)


def _add4(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]


def nll_sums(z: Any, y: Any, beta: float, w: Any, *, chunk_rows: int, from_probs: bool,
             pool: Any = None, progress: Any = None, cache: Any = None
             ) -> tuple[float, float, float, float]:
    """The four sums of :func:`._nll_sums.nll_sums` over Dask blocks: one pass, one compute.

    ``chunk_rows``, ``pool`` and ``cache`` belong to the NumPy path and are ignored: the blocks
    are Dask's, and the scheduler runs them in parallel.
    """
    import dask
    from dask import delayed

    block = delayed(_block_nll_sums, pure=True)
    w_blocks = _blocks(w) if w is not None else [None] * len(_blocks(y))
    parts = [block(zb, yb, wb, float(beta), from_probs)
             for zb, yb, wb in zip(_blocks(z), _blocks(y), w_blocks, strict=True)]
    (total,) = dask.compute(_tree(parts, _add4))
    if progress is not None:
        progress(int(z.shape[0]))
    return float(total[0]), float(total[1]), float(total[2]), float(total[3])


def _binary_logits(z: Any, from_probs: bool) -> Any:
    import dask.array as da

    if from_probs:
        return da.concatenate([1.0 - z, z], axis=1)
    return da.concatenate([da.zeros_like(z), z], axis=1)


def fit_temperature(scaler: Any, logits: Any, y: Any, sample_weight: Any = None, *,
                    progress: Any = None) -> Any:
    """``TemperatureScaler.fit`` for Dask arrays (same result as on NumPy, to ~1e-10).

    One pass validates the labels (and the weights, or the probabilities with ``from_probs``);
    then every Newton step is one map-reduce.  There is no subsample warm start: it would cost a
    pass of its own over data that is not in memory.
    """
    import dask
    import dask.array as da

    from ._temperature import _newton

    t_min, t_max, max_iter, tol, _ = scaler._check_params()
    z, labels, w = _rows(logits, y, sample_weight, arg="logits")
    if not (z.dtype.kind in "f" or z.dtype.kind in "iub"):
        raise LogitkitTypeError(expected("logits", "a real numeric array", f"dtype {z.dtype}"))
    if z.dtype.kind != "f":
        z = z.astype(np.float64)
    if labels.dtype.kind not in "iub":
        raise LogitkitTypeError(expected("y", "an array of integer class labels",
                                         f"dtype {labels.dtype}"))
    if z.ndim == 1:
        z = z[:, None]
    if z.shape[1] == 1:
        z = _binary_logits(z, scaler.from_probs).rechunk({1: -1})
    n, k = int(z.shape[0]), int(z.shape[1])

    checks: list[Any] = [labels.min(), labels.max()]
    if w is not None:
        w = w.astype(np.float64)
        checks += [(~da.isfinite(w)).any(), w.min(), w.max()]
    if scaler.from_probs:
        checks += [z.min(), z.max()]
    values = dask.compute(*checks)
    lo_y, hi_y = int(values[0]), int(values[1])
    if lo_y < 0 or hi_y >= k:
        raise LogitkitValueError(expected("y", f"class labels in [0, {k})",
                                          lo_y if lo_y < 0 else hi_y))
    rest = values[2:]
    if w is not None:
        bad, w_min, w_max = rest[:3]
        rest = rest[3:]
        if bool(bad) or float(w_min) < 0 or not float(w_max) > 0:
            raise LogitkitValueError(expected(
                "sample_weight", "finite, non-negative and not all zero",
                f"values in [{float(w_min)}, {float(w_max)}]"))
    if scaler.from_probs:
        p_min, p_max = float(rest[0]), float(rest[1])
        if not (p_min >= 0.0 and p_max <= 1.0):
            raise LogitkitValueError(expected(
                "logits", "probabilities in [0, 1] (from_probs=True)",
                p_max if not p_max <= 1.0 else p_min))
    else:
        scaler._warn_if_probs(np.asarray(z[: min(n, 1000)].compute()), "logits")

    beta, n_iter, converged, at_bound, f = _newton(
        z, labels, w, 1.0 / t_max, 1.0 / t_min, 1.0, max_iter, tol, 0, scaler.from_probs, None,
        progress, sums=nll_sums)
    scaler._record_fit(beta, n_iter, converged, at_bound, k, f, beta_max=1.0 / t_min,
                       stacklevel=3)
    return scaler
