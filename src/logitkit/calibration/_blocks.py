"""Sums over row blocks: the one hook through which calibration code reaches partitioned arrays.

Calibration is built on sums: per-bin statistics for the metrics, and the objective's value,
gradient and Hessian for each optimiser step of a calibrator's fit.  :func:`row_sums` returns
``fn(*arrays)`` for in-memory arrays; an adapter registered with :func:`register` may instead map
``fn`` over aligned row blocks of partitioned arrays and add the results (one pass over the data
per call).  This module names no array library: an adapter is a leaf that imports this module and
registers itself (the Dask adapter, :mod:`._dask`, does so when ``logitkit.calibration`` is
imported), and nothing here imports an adapter.

:func:`row_reduce` is the general form: ``fn`` may be told the index of its block's first row
(``offset=True``), the total is passed through ``finish``, and with ``lazy=True`` an adapter
returns ``finish(total)`` as a lazy 0-d array of its own kind (array type in = array type out).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["Least", "add", "known_rows", "map_rows", "partitioned", "register", "register_mapper",
           "row_reduce", "row_sums"]

#: ``adapter(fn, arrays, kwargs, *, finish, offset, lazy)`` returns ``finish`` of the sums (see
#: :func:`row_reduce`), or ``NotImplemented`` for arrays it does not handle.
Adapter = Callable[..., Any]

_ADAPTERS: list[Adapter] = []
_CLAIMS: list[Callable[[Any], bool]] = []


def register(adapter: Adapter, *, claims: Callable[[Any], bool] | None = None) -> Adapter:
    """Add ``adapter`` to those :func:`row_sums` asks (once; returns it, for use as a decorator).

    ``claims(array)`` says whether the adapter handles an array (for :func:`partitioned`).
    """
    if adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)
        if claims is not None:
            _CLAIMS.append(claims)
    return adapter


def partitioned(*arrays: Any) -> bool:
    """True when an adapter handles one of ``arrays`` (their sums are then a map-reduce, and
    a metric's result may stay lazy): the one question calibration code asks about them."""
    return any(claim(a) for a in arrays if a is not None for claim in _CLAIMS)


def known_rows(x: Any) -> Any:
    """``x`` with its shape known: a partitioned array whose chunk sizes are not (a
    boolean-masked Dask array) has them computed, in place (``compute_chunk_sizes``, one
    pass); anything else as it is.  The one rule for the fits, the metrics and the adapter."""
    shape = getattr(x, "shape", ())
    if any(math.isnan(float(d)) for d in shape) and hasattr(x, "compute_chunk_sizes"):
        x.compute_chunk_sizes()
    return x


class Least:
    """A number that :func:`add` combines by keeping the lesser: a block function returns
    ``Least(its block's minimum)`` and :func:`row_sums` gives ``Least(the minimum over every
    block)`` through the same map-reduce as its sums (``+`` is ``min``).

    Examples:
        >>> (Least(3.0) + Least(2.0)).value
        2.0
    """

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __add__(self, other: Least) -> Least:
        return Least(min(self.value, other.value))

    def __repr__(self) -> str:
        return f"Least({self.value!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # adapters may pickle block results
        return (Least, (self.value,))


def add(a: Any, b: Any) -> Any:
    """Elementwise sum of two results of the same ``fn`` (tuples, lists and dicts recursively)."""
    if isinstance(a, tuple):
        return tuple(add(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, list):
        return [add(u, v) for u, v in zip(a, b, strict=True)]
    if isinstance(a, dict):
        return {key: add(a[key], b[key]) for key in a}
    return a + b


def row_sums(fn: Callable[..., Any], *arrays: Any, **kwargs: Any) -> Any:
    """``fn`` summed over the rows of ``arrays``.

    Args:
        fn: a function of row blocks of ``arrays`` (same positions; ``None`` stays ``None``) and
            ``kwargs``, returning NumPy arrays or numbers (or tuples, lists, dicts of them) that
            add across row blocks.  Adapters may run it in other processes, so it should be a
            module-level function and ``kwargs`` picklable.
        *arrays: arrays whose first axis is the same rows (or ``None``).
        **kwargs: passed to every call of ``fn``.

    Returns:
        ``fn(*arrays, **kwargs)`` for in-memory arrays; for arrays an adapter handles, the sum
        of ``fn`` over their row blocks, computed now.

    Examples:
        >>> import numpy as np
        >>> def moments(x):
        ...     return len(x), x.sum()
        >>> row_sums(moments, np.arange(4.0))
        (4, np.float64(6.0))
    """
    return row_reduce(fn, *arrays, **kwargs)


def _identity(total: Any) -> Any:
    return total


def row_reduce(
    fn: Callable[..., Any],
    *arrays: Any,
    finish: Callable[[Any], Any] = _identity,
    offset: bool = False,
    lazy: bool = False,
    **kwargs: Any,
) -> Any:
    """``finish`` of ``fn`` summed over the rows of ``arrays``.

    Args:
        fn: as for :func:`row_sums`; with ``offset=True`` it also receives ``offset=``, the
            index of its block's first row (0 for in-memory arrays).
        *arrays: arrays whose first axis is the same rows (or ``None``).
        finish: applied once to the total (a module-level function: adapters may run it
            elsewhere).
        offset: pass ``offset=`` to ``fn``.
        lazy: for arrays an adapter handles, return ``finish(total)`` as a lazy 0-d float64
            array of their kind instead of computing it now.
        **kwargs: passed to every call of ``fn``.

    Returns:
        ``finish(fn(*arrays, **kwargs))`` for in-memory arrays.

    Examples:
        >>> import numpy as np
        >>> def first_rows(x, *, offset):
        ...     return np.array([offset, len(x)])
        >>> row_reduce(first_rows, np.arange(5.0), offset=True, finish=list)
        [np.int64(0), np.int64(5)]
    """
    for adapter in _ADAPTERS:
        out = adapter(fn, arrays, kwargs, finish=finish, offset=offset, lazy=lazy)
        if out is not NotImplemented:
            return out
    if offset:
        kwargs = {**kwargs, "offset": 0}
    return finish(fn(*arrays, **kwargs))


_MAPPERS: list[Callable[..., Any]] = []


def register_mapper(mapper: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``mapper(fn, x)`` to those :func:`map_rows` asks (it returns ``NotImplemented`` for
    arrays it does not handle); returns it, for use as a decorator."""
    if mapper not in _MAPPERS:
        _MAPPERS.append(mapper)
    return mapper


def map_rows(fn: Callable[[Any], Any], x: Any) -> Any:
    """``fn`` (NumPy rows ``(r, K)`` to rows ``(r, K)`` of the same dtype) applied to ``x``.

    For in-memory arrays this is ``fn(x)``; an adapter may apply it block by block and return
    a lazy array of its own kind (a calibrator's ``transform`` of a partitioned array).

    Examples:
        >>> import numpy as np
        >>> map_rows(lambda rows: rows * 2.0, np.ones((2, 3)))
        array([[2., 2., 2.],
               [2., 2., 2.]])
    """
    for mapper in _MAPPERS:
        out = mapper(fn, x)
        if out is not NotImplemented:
            return out
    return fn(x)
