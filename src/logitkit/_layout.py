"""Rows: the layout every reduction of the library is computed in.

A reduction over one axis, or over a tuple of axes, is computed on a 2-D array of *rows*: the reduced
axes moved last, in the order given, and flattened into one axis of length ``K``; the other axes
flattened into ``N`` rows.  The math above this module (the core, the cross-entropy) only ever reduces
over the last axis of an ``(N, K)`` array, and per-row parameters (a temperature, a sink) are
``(N, 1)`` columns.

A tuple of axes is flattened in the order given, as ``x.transpose(...).reshape(...)`` would flatten it:
``axis=(2, 1)`` counts the class index as ``i₂·n₁ + i₁``, which is what integer targets index.

This module sits below the core and imports nothing of the library but :mod:`._namespace`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from ._namespace import (
    Array,
    Described,
    LogitkitValueError,
    broadcast_shapes,
    expected,
    is_numpy,
    is_torch,
    normalize_axis,
)

__all__ = ["Axis", "Layout", "const", "from_rows", "layout", "param_rows", "reduced", "to_rows"]

Axis = int | Sequence[int]


@dataclass(frozen=True)
class Layout:
    """How an array of ``shape`` maps to ``(N, K)`` rows for a reduction over ``axes``."""

    shape: tuple[int, ...]  # the array's shape
    axes: tuple[int, ...]  # the reduced axes, non-negative, in the order given
    perm: tuple[int, ...] | None  # the permutation that moves them last (None: already last)
    batch_shape: tuple[int, ...]  # the shape without the reduced axes
    k: int  # the row length: the product of the reduced axes' sizes

    @property
    def n(self) -> int:
        """The number of rows."""
        return math.prod(self.batch_shape)

    @property
    def reduced_keepdims(self) -> tuple[int, ...]:
        """The shape with the reduced axes kept as size 1."""
        return tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))


def layout(shape: tuple[int, ...], axis: Axis, arg: str = "x") -> Layout:
    """The rows of an array of ``shape`` (named ``arg`` in errors) reduced over ``axis``."""
    key = axis if isinstance(axis, int) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if key is not None and not isinstance(axis, bool):
        try:
            return _cached_layout(tuple(shape), key, arg)
        except TypeError:  # an unhashable entry in the axes: validated (and refused) below
            pass
    return _make_layout(tuple(shape), axis, arg)


@functools.lru_cache(maxsize=256)
def _cached_layout(shape: tuple[int, ...], axis: Axis, arg: str) -> Layout:
    return _make_layout(shape, axis, arg)


def _make_layout(shape: tuple[int, ...], axis: Axis, arg: str) -> Layout:
    ndim = len(shape)
    if ndim == 0:
        raise LogitkitValueError(expected(
            arg, "an array with at least one axis to reduce over", Described("a 0-d array")))
    axes = normalize_axis(axis, ndim)
    batch_axes = tuple(a for a in range(ndim) if a not in axes)
    perm = batch_axes + axes
    batch_shape = tuple(shape[a] for a in batch_axes)
    k = math.prod(shape[a] for a in axes)
    return Layout(tuple(shape), axes, None if perm == tuple(range(ndim)) else perm, batch_shape, k)


def to_rows(x: Array, lay: Layout, xp: Any) -> Array:
    """``x`` (of ``lay.shape``) as ``(N, K)`` rows.

    NumPy and torch rows are made contiguous when the reduced axes were not last: both libraries
    sum a strided axis one term after another, with an error that grows like K (5–8× the DESIGN
    §7 bound at K = 10⁵), and a contiguous last axis pairwise or in cascades.  The copy is one of
    the several temporaries of the generic path, and it makes every later temporary contiguous.
    """
    if lay.perm is not None:
        x = xp.permute_dims(x, lay.perm)
        if is_numpy(xp):
            x = np.ascontiguousarray(x)
        elif is_torch(xp):
            x = x.contiguous()
    return xp.reshape(x, (lay.n, lay.k))


def from_rows(y: Array, lay: Layout, xp: Any) -> Array:
    """``(N, K)`` rows back in ``lay.shape`` (the inverse of :func:`to_rows`)."""
    y = xp.reshape(y, (*lay.batch_shape, *(lay.shape[a] for a in lay.axes)))
    if lay.perm is not None:
        inverse = [0] * len(lay.perm)
        for i, p in enumerate(lay.perm):
            inverse[p] = i
        y = xp.permute_dims(y, tuple(inverse))
    return y


def reduced(y: Array, lay: Layout, keepdims: bool, xp: Any) -> Array:
    """A per-row result (``(N,)`` or ``(N, 1)``) in the reduced shape, or the keepdims shape."""
    return xp.reshape(y, lay.reduced_keepdims if keepdims else lay.batch_shape)


def param_rows(value: Array, lay: Layout, arg: str, xp: Any) -> Array:
    """A per-row parameter (temperature, sink) as an ``(N, 1)`` column.

    ``value`` broadcasts either to the reduced shape (``x``'s shape without the reduced axes) or,
    with as many dimensions as ``x``, to the keepdims shape.
    """
    shape = tuple(value.shape)
    if len(shape) == len(lay.shape):
        broadcast_shapes(arg, shape, lay.reduced_keepdims)
        value = xp.broadcast_to(value, lay.reduced_keepdims)
        if lay.perm is not None:
            value = xp.permute_dims(value, lay.perm)
    else:
        broadcast_shapes(arg, shape, lay.batch_shape)
        value = xp.broadcast_to(value, lay.batch_shape)
    return xp.reshape(value, (lay.n, 1))


def const(value: float, like: Array, xp: Any) -> Array:
    """A 0-d array holding ``value`` in ``like``'s dtype and on its device.

    Only for finite values: an eager JAX array holding ±inf or NaN trips ``jax.debug_infs`` and
    ``jax.debug_nans`` even where the result is finite, so the math passes those as Python
    floats to ``where``, ``maximum`` and ``minimum``, which fold them in.
    """
    return xp.asarray(value, dtype=like.dtype, device=array_api_compat.device(like))
