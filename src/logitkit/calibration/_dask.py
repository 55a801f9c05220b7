"""Calibration on Dask arrays: every metric and every Newton step is one map-reduce.

The calibration code is built on sums (the objectives of the calibrators' fits, the per-bin sums
of :class:`~logitkit.calibration.CalibrationStats` for the metrics), so a Dask array is handled by
mapping the NumPy code over its row blocks and adding the results:

* :func:`._blocks.row_sums` (registered here): a function of row blocks mapped over aligned
  Dask blocks and the results added in one ``compute``; every calibrator's fit reaches Dask
  through it (one map-reduce per optimiser step);
* ``ece``/``mce``/``brier_score``/``nll``/``accuracy``: one ``CalibrationStats`` per block, merged
  in a tree; the result is a lazy 0-d Dask array (array type in = array type out);
* ``CalibrationStats.update``: the same merged stats, computed and added to the object.

With a ``distributed.Client`` active, the work runs on its cluster.  Nothing here imports Dask at
module import time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


@_register
def _row_sums(fn: Callable[..., Any], arrays: Any, kwargs: dict[str, Any]) -> Any:
    """:func:`._blocks.row_sums` for Dask arrays: ``fn`` mapped over aligned row blocks, the
    results added in a tree, one ``compute``."""
    first = next((a for a in arrays if a is not None and is_dask(a)), None)
    if first is None:
        return NotImplemented
    import dask
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
    parts = [block(*blk, **kwargs) for blk in zip(*aligned, strict=True)]
    (total,) = dask.compute(_tree(parts, _add_sums))
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
# metrics
# --------------------------------------------------------------------------------------------


def _block_stats(p: np.ndarray, y: np.ndarray, edges: np.ndarray, mode: str) -> Any:
    from ._stats import CalibrationStats

    stats = CalibrationStats(mode=mode, edges=edges)
    return stats.update(p, y) if p.shape[0] else stats


def _merge(a: Any, b: Any) -> Any:
    return a.merge(b)


def _stats_delayed(probs: Any, y: Any, *, edges: np.ndarray, mode: str) -> Any:
    from dask import delayed

    p, labels, _ = _rows(probs, y)
    block = delayed(_block_stats, pure=True)
    parts = [block(pb, yb, edges, mode)
             for pb, yb in zip(_blocks(p), _blocks(labels), strict=True)]
    return _tree(parts, _merge)


def _lazy_scalar(value: Any) -> Any:
    import dask.array as da

    return da.from_delayed(value, shape=(), dtype=np.float64)


def _error(stats: Any, norm: str, debias: bool) -> np.ndarray:
    from ._metrics import calibration_error_from_sums

    return np.asarray(calibration_error_from_sums(stats._sums, stats.count, norm=norm,
                                                  debias=debias, xp=np), dtype=np.float64)


def _share(stats: Any, field: str) -> np.ndarray:
    return np.asarray(getattr(stats, field) / stats.count, dtype=np.float64)


def ece(probs: Any, y: Any, *, n_bins: int, binning: str, norm: str, mode: str,
        debias: bool) -> Any:
    """:func:`~logitkit.calibration.ece` of Dask arrays: a lazy 0-d Dask array."""
    from dask import delayed

    from ._binning import uniform_edges

    if binning != "uniform":
        raise LogitkitValueError(expected(
            "binning", "'uniform' for Dask arrays (equal-mass edges need a global sort; give "
            "CalibrationStats fixed `edges` instead)", binning))
    stats = _stats_delayed(probs, y, edges=uniform_edges(n_bins), mode=mode)
    return _lazy_scalar(delayed(_error, pure=True)(stats, norm, debias))


def mean_of_stats(probs: Any, y: Any, field: str) -> Any:
    """``sum_brier``, ``sum_nll`` or ``n_correct`` of the merged stats over the row count."""
    from dask import delayed

    from ._binning import uniform_edges

    stats = _stats_delayed(probs, y, edges=uniform_edges(1), mode="top-label")
    return _lazy_scalar(delayed(_share, pure=True)(stats, field))


def _block_nll_from_logits(z: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    from ._metrics import nll

    n = int(z.shape[0])
    return (float(nll(z, y, from_logits=True)) * n if n else 0.0), n


def _add_pairs(a: tuple[float, int], b: tuple[float, int]) -> tuple[float, int]:
    return a[0] + b[0], a[1] + b[1]


def _pair_mean(pair: tuple[float, int]) -> np.ndarray:
    return np.asarray(pair[0] / pair[1], dtype=np.float64)


def nll_from_logits(logits: Any, y: Any) -> Any:
    """:func:`~logitkit.calibration.nll` with ``from_logits=True`` of Dask arrays (lazy)."""
    from dask import delayed

    z, labels, _ = _rows(logits, y, arg="probs")
    if z.ndim != 2:
        raise LogitkitValueError(expected("probs", "logits of shape (N, K) with N >= 1",
                                          f"shape {z.shape}"))
    block = delayed(_block_nll_from_logits, pure=True)
    parts = [block(zb, yb) for zb, yb in zip(_blocks(z), _blocks(labels), strict=True)]
    return _lazy_scalar(delayed(_pair_mean, pure=True)(_tree(parts, _add_pairs)))


def update_stats(stats: Any, probs: Any, y: Any) -> Any:
    """``stats.update(probs, y)`` for Dask arrays: one map-reduce, then the sums are added."""
    import dask

    (other,) = dask.compute(_stats_delayed(probs, y, edges=stats.edges, mode=stats.mode))
    merged = stats.merge(other)
    for field in ("_sums", "n_classes", "count", "n_correct", "sum_brier", "sum_nll"):
        setattr(stats, field, getattr(merged, field))
    return stats
