"""Calibration on Dask arrays: the adapter of :func:`._blocks.row_reduce`, a leaf module.

Calibration is built on sums, so a Dask array is handled by mapping a NumPy function over its row
blocks and adding the results in a tree (one pass over the data, one ``compute``):

* the metrics and :class:`~logitkit.calibration.CalibrationStats`: the engine's per-block sums
  (:func:`._engine.block_sums`), reached through :func:`._blocks.row_reduce`; a metric's result
  stays a lazy 0-d Dask array (array type in = array type out);
* every calibrator's fit: each optimiser step maps the sums of its objective (value, gradient,
  Hessian) over the blocks through :func:`._blocks.row_sums`, and ``transform`` maps its NumPy
  rows through :func:`._blocks.map_rows`, lazily (array type in = array type out).

This module imports :mod:`._blocks` and registers itself there; no other calibration module
imports it (the package facade imports it once so that it registers).  With a
``distributed.Client`` active, the work runs on its cluster.  Nothing here imports Dask at module
import time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .._namespace import LogitkitTypeError, LogitkitValueError, expected, is_dask
from ._blocks import add as _add_sums
from ._blocks import known_rows
from ._blocks import register as _register
from ._blocks import register_mapper as _register_mapper

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
    return known_rows(arr)


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
        if a is not first:  # a masked Dask array's chunk sizes are computed (_as_dask)
            a = _as_dask(a, "arrays", chunks=None if is_dask(a) else (
                chunks[0], *((-1,) * (np.ndim(a) - 1))))
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


@_register_mapper
def _map_rows(fn: Callable[[np.ndarray], np.ndarray], x: Any) -> Any:
    """:func:`._blocks.map_rows` for Dask arrays: ``fn`` on each row block, lazily."""
    if not is_dask(x):
        return NotImplemented
    x = x.rechunk({i: -1 for i in range(1, x.ndim)})
    return x.map_blocks(fn, dtype=x.dtype)
