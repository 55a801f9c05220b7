"""Scaled dot-product attention with an exact, tiled online softmax.

``attention`` computes ``softmax(scale · q kᵀ + mask) v`` one block of keys at a time, carrying a
running max ``m``, a running sum ``l`` and an unnormalised output ``acc`` per query (Milakov &
Gimelshein 2018; the FlashAttention recurrence), so the forward pass never holds more than
``S × block_size`` scores.  The running max is a constant for differentiation (the result does not
depend on it), which keeps autodiff free of NaN on masked and fully masked rows.

``merge_logsumexp`` and ``merge_attention`` combine partial results computed over disjoint sets of
keys (split-KV decoding, ring or sequence-parallel attention): the partial outputs are weighted by
``exp(lse_part − lse_total)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import array_api_compat
import numpy as np

from ._core import logsumexp
from ._namespace import (
    Array,
    Described,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    broadcast_shapes,
    check_int,
    check_number,
    compute_dtypes,
    expected,
    namespace,
    stop_gradient,
)

__all__ = ["attention", "merge_attention", "merge_logsumexp"]


def _check_shapes(q: Array, k: Array, v: Array) -> tuple[tuple[int, ...], int, int, int]:
    """(broadcast batch shape, S, Skv, Dv) after checking that q, k, v fit together."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 2:
            raise LogitkitValueError(
                expected(name, "an array of shape (..., length, features)",
                         Described(f"shape {tuple(a.shape)}"))
            )
    if k.shape[-1] != q.shape[-1]:
        raise LogitkitValueError(
            expected("k", f"an array with {q.shape[-1]} features (the last axis of `q`)",
                     Described(f"shape {tuple(k.shape)}"))
        )
    if v.shape[-2] != k.shape[-2]:
        raise LogitkitValueError(
            expected("v", f"an array with {k.shape[-2]} rows (the keys' length)",
                     Described(f"shape {tuple(v.shape)}"))
        )
    try:
        batch = tuple(int(n) for n in np.broadcast_shapes(
            tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2])))
    except ValueError:
        raise LogitkitValueError(
            expected("q, k, v", "arrays whose leading (batch) axes broadcast together",
                     Described(f"shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                               f"{tuple(v.shape)}"))
        ) from None
    return batch, int(q.shape[-2]), int(k.shape[-2]), int(v.shape[-1])


def _prepare_mask(mask: Any, shape: tuple[int, ...], acc: Any, xp: Any) -> Array | None:
    if mask is None:
        return None
    mask = as_array(mask, "mask", xp, numeric=False)
    is_bool = mask.dtype == xp.bool
    if not is_bool and not xp.isdtype(mask.dtype, "real floating"):
        raise LogitkitTypeError(
            expected("mask", "a boolean or a real floating array",
                     Described(f"dtype {mask.dtype}"))
        )
    broadcast_shapes("mask", tuple(mask.shape), shape)
    # Padding to full rank keeps the later column slices cheap views.
    if mask.ndim < len(shape):
        mask = xp.reshape(mask, (1,) * (len(shape) - mask.ndim) + tuple(mask.shape))
    return mask if is_bool else astype(mask, acc, xp)


def _prepare_sink(sink: Any, batch: tuple[int, ...], acc: Any, like: Array, xp: Any) -> Array:
    """The sink as ``(*batch, 1, 1)``: one logit per (batch, head), shared by every query."""
    if isinstance(sink, bool) or isinstance(sink, str):
        raise LogitkitTypeError(expected("sink", "a real number or array", sink))
    if isinstance(sink, numbers.Real):
        col = xp.full((*batch, 1, 1), float(sink), dtype=acc, device=array_api_compat.device(like))
        return col
    s = astype(as_array(sink, "sink", xp), acc, xp)
    broadcast_shapes("sink", tuple(s.shape), batch)
    s = xp.broadcast_to(s, batch)
    return xp.reshape(s, (*batch, 1, 1))


def attention(
    q: Any,
    k: Any,
    v: Any,
    /,
    *,
    mask: Any = None,
    is_causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    sink: Any = None,
    block_size: int | None = None,
    return_lse: bool = False,
) -> Any:
    r"""Scaled dot-product attention, exact on masked rows, optionally tiled over the keys.

    .. math::
        s_{ij} = \operatorname{mask}\bigl(c \tanh(\sigma\, q_i \cdot k_j / c)\bigr),\qquad
        o_i = \frac{\sum_j e^{s_{ij} - m_i} v_j}{e^{\sigma_0 - m_i} + \sum_j e^{s_{ij} - m_i}},\qquad
        \operatorname{lse}_i = m_i + \log\Bigl(e^{\sigma_0 - m_i} + \sum_j e^{s_{ij} - m_i}\Bigr)

    where :math:`\sigma` is ``scale``, :math:`c` the ``softcap``, :math:`\sigma_0` the ``sink``
    (the term is absent without one) and :math:`m_i` any constant (the running max).

    Args:
        q: queries ``(..., S, D)``; NumPy, PyTorch, JAX or array-API arrays.
        k: keys ``(..., Skv, D)``.
        v: values ``(..., Skv, Dv)``.  The leading axes of ``q``, ``k``, ``v`` broadcast together.
        mask: optional, broadcastable to ``(..., S, Skv)``.  Boolean: ``True`` means the query
            may attend to the key (PyTorch's meaning).  Floating: added to the scores
            (``-inf`` excludes a key).
        is_causal: query ``i`` attends only to keys ``j <= i`` (PyTorch's top-left alignment,
            ``tril(ones(S, Skv))``).  Unlike PyTorch it may be combined with ``mask`` (both apply).
        scale: the factor on ``q kᵀ``; default ``1/sqrt(D)``.  A finite real number.
        softcap: a positive ``c`` replaces the scaled scores by ``c·tanh(s/c)`` before the mask
            (Gemma 2).
        sink: an attention sink: one extra logit per head that joins the normalisation with a
            zero value vector, so a query may attend to "nothing".  A scalar or an array
            broadcastable to the batch shape ``q.shape[:-2]`` (for ``(B, H, S, D)`` queries:
            ``(H,)`` or ``(B, H)``); it is neither scaled, softcapped nor masked.
        block_size: tile the keys in blocks of this many with the online softmax, so the
            forward pass holds ``O(S · block_size)`` scores instead of ``O(S · Skv)``.
            ``None`` uses one block.
        return_lse: also return the log-sum-exp of each query's scores (sink included),
            for :func:`merge_attention`.

    Returns:
        The output ``(..., S, Dv)`` of the queries' array type (and, with ``return_lse``,
        ``(output, lse)`` with ``lse`` of shape ``(..., S)``).

    Note:
        A query row with every key masked (and no sink) gives an output of zeros, an ``lse`` of
        ``-inf`` and a zero gradient, never NaN.  Scores must otherwise be finite; a NaN input
        gives NaN.  float16/bfloat16 inputs accumulate in float32.  The forward memory is
        ``O(S · block_size)``; the backward pass of an autodiff framework keeps each block's
        scores (recompute-in-backward is left to fused kernels).

    Examples:
        >>> import numpy as np
        >>> from logitkit.attention import attention
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> k = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> v = np.array([[1.0], [2.0], [3.0]])
        >>> attention(q, k, v, block_size=2).round(4)
        array([[2.    ],
               [2.2033]])
        >>> attention(q, k, v, mask=np.array([False, False, False])).round(4)
        array([[0.],
               [0.]])

    References:
        Vaswani et al., "Attention is all you need", NeurIPS 2017.
        Milakov & Gimelshein, "Online normalizer calculation for softmax", arXiv:1805.02867 (2018).
        Dao et al., "FlashAttention", NeurIPS 2022.
    """
    xp = namespace(q, k, v, mask, sink)
    q = as_array(q, "q", xp)
    k = as_array(k, "k", xp)
    v = as_array(v, "v", xp)
    if not isinstance(is_causal, bool):
        raise LogitkitTypeError(expected("is_causal", "a bool", is_causal))
    if not isinstance(return_lse, bool):
        raise LogitkitTypeError(expected("return_lse", "a bool", return_lse))
    batch, s_len, kv_len, dv = _check_shapes(q, k, v)
    block = None if block_size is None else check_int(block_size, "block_size")
    cap = None if softcap is None else check_number(
        softcap, "softcap", low=0.0, low_open=True, high=math.inf, high_open=True)
    if scale is None:
        scale_v = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    else:
        scale_v = check_number(scale, "scale", low=-math.inf, high=math.inf, low_open=True,
                               high_open=True)

    acc_dtype, out_dtype = compute_dtypes(q, None, xp)
    q = astype(q, acc_dtype, xp)
    k = astype(k, acc_dtype, xp)
    v = astype(v, acc_dtype, xp)
    m_arr = _prepare_mask(mask, (*batch, s_len, kv_len), acc_dtype, xp)
    dev = array_api_compat.device(q)

    out_shape = (*batch, s_len, dv)
    if sink is None:
        m = xp.full((*batch, s_len, 1), -math.inf, dtype=acc_dtype, device=dev)
        total = xp.zeros((*batch, s_len, 1), dtype=acc_dtype, device=dev)
    else:
        sink_col = _prepare_sink(sink, batch, acc_dtype, q, xp)
        sink_col = xp.broadcast_to(sink_col, (*batch, s_len, 1))
        m = stop_gradient(sink_col, xp)
        total = xp.exp(sink_col - m)  # 1 in value, carries the sink's derivative
    out = xp.zeros(out_shape, dtype=acc_dtype, device=dev)

    qs = q * scale_v
    step = kv_len if block is None else block
    rows = xp.reshape(xp.arange(s_len, device=dev), (s_len, 1)) if is_causal else None
    for start in range(0, kv_len, max(step, 1)):
        stop = min(start + step, kv_len)
        if is_causal and start > s_len - 1:
            break  # every later key is after every query
        scores = xp.matmul(qs, xp.matrix_transpose(k[..., start:stop, :]))
        if cap is not None:
            scores = cap * xp.tanh(scores / cap)
        allowed = None
        if m_arr is not None:
            part = m_arr[..., start:stop]
            if part.dtype == xp.bool:
                allowed = part
            else:
                scores = scores + part
        if rows is not None:
            cols = xp.reshape(xp.arange(start, stop, device=dev), (1, stop - start))
            causal = cols <= rows
            allowed = causal if allowed is None else (allowed & causal)
        if allowed is not None:
            scores = xp.where(allowed, scores, -math.inf)
        m, total, out = _online_update(m, total, out, scores, v[..., start:stop, :], xp)

    empty = total == 0
    denom = xp.where(empty, 1.0, total)
    result = xp.where(empty, 0.0, out / denom)
    result = astype(result, out_dtype, xp)
    if not return_lse:
        return result
    m_safe = xp.where(m == -math.inf, 0.0, m)
    lse = xp.where(empty, -math.inf, m_safe + xp.log(denom))
    return result, astype(lse[..., 0], out_dtype, xp)


def _online_update(
    m: Array, total: Array, out: Array, scores: Array, v_block: Array, xp: Any
) -> tuple[Array, Array, Array]:
    """One step of the online softmax: fold a block of scores and values into (m, l, acc)."""
    block_max = xp.max(scores, axis=-1, keepdims=True)
    m_new = stop_gradient(xp.maximum(m, block_max), xp)
    # A row with nothing seen yet keeps m = -inf; shifting by 0 there gives exp(-inf) = 0.
    m_safe = xp.where(m_new == -math.inf, 0.0, m_new)
    alpha = xp.exp(m - m_safe)
    p = xp.exp(scores - m_safe)
    total = alpha * total + xp.sum(p, axis=-1, keepdims=True)
    out = alpha * out + xp.matmul(p, v_block)
    return m_new, total, out


def merge_logsumexp(lse_a: Any, lse_b: Any, /) -> Any:
    r"""The log-sum-exp of a union from the log-sum-exps of two disjoint parts.

    .. math::
        \operatorname{lse}(a \cup b) = \log\bigl(e^{\operatorname{lse}(a)} + e^{\operatorname{lse}(b)}\bigr)

    Args:
        lse_a: log-sum-exp over the first part, any shape.
        lse_b: log-sum-exp over the second part, broadcastable with ``lse_a``.

    Returns:
        The merged log-sum-exp, of the broadcast shape and the inputs' array type.

    Note:
        An empty part has ``lse = -inf`` and drops out; two empty parts give ``-inf`` with a zero
        gradient (no NaN), as in :func:`logitkit.logsumexp`.

    Examples:
        >>> import numpy as np
        >>> from logitkit.attention import merge_logsumexp
        >>> float(merge_logsumexp(np.log(2.0), np.log(3.0)) - np.log(5.0))
        0.0
        >>> float(merge_logsumexp(-np.inf, -np.inf))
        -inf
    """
    xp = namespace(lse_a, lse_b)
    a = as_array(lse_a, "lse_a", xp)
    b = as_array(lse_b, "lse_b", xp)
    a, b = xp.broadcast_arrays(a, b)
    return logsumexp(xp.stack([a, b], axis=-1), axis=-1)


def merge_attention(out_a: Any, lse_a: Any, out_b: Any, lse_b: Any, /) -> tuple[Any, Any]:
    r"""Combine two partial attention results over disjoint sets of keys.

    .. math::
        \operatorname{lse} = \log(e^{\operatorname{lse}_a} + e^{\operatorname{lse}_b}),\qquad
        o = e^{\operatorname{lse}_a - \operatorname{lse}}\, o_a + e^{\operatorname{lse}_b - \operatorname{lse}}\, o_b

    Args:
        out_a: output ``(..., S, Dv)`` of :func:`attention` over the first keys.
        lse_a: its ``lse`` ``(..., S)`` (``attention(..., return_lse=True)``).
        out_b: output over the other keys.
        lse_b: its ``lse``.

    Returns:
        ``(out, lse)``: the attention output and log-sum-exp over all the keys, equal to one
        call of :func:`attention` on the concatenated keys (with a sink, pass it to one part only).

    Note:
        A part whose rows are fully masked (``lse = -inf``) gets weight 0; if both are, the row
        is zeros with ``lse = -inf``, as in :func:`attention`.

    Examples:
        >>> import numpy as np
        >>> from logitkit.attention import attention, merge_attention
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
        >>> oa, la = attention(q, k[:2], v[:2], return_lse=True)
        >>> ob, lb = attention(q, k[2:], v[2:], return_lse=True)
        >>> out, lse = merge_attention(oa, la, ob, lb)
        >>> bool(np.allclose(out, attention(q, k, v)))
        True
    """
    xp = namespace(out_a, lse_a, out_b, lse_b)
    oa = as_array(out_a, "out_a", xp)
    ob = as_array(out_b, "out_b", xp)
    la = as_array(lse_a, "lse_a", xp)
    lb = as_array(lse_b, "lse_b", xp)
    for name, o, lse in (("lse_a", oa, la), ("lse_b", ob, lb)):
        if tuple(lse.shape) != tuple(o.shape[:-1]):
            raise LogitkitValueError(
                expected(name, f"of shape {tuple(o.shape[:-1])} (its output without the last "
                               "axis)", Described(f"shape {tuple(lse.shape)}"))
            )
    lse = merge_logsumexp(la, lb)
    safe = xp.where(lse == -math.inf, 0.0, lse)
    out = _weight(la, safe, xp) * oa + _weight(lb, safe, xp) * ob
    return out, lse


def _weight(lse_part: Array, lse_total: Array, xp: Any) -> Array:
    """``exp(lse_part − lse_total)`` as a column, 0 (with a zero gradient) for an empty part."""
    present = lse_part != -math.inf
    part = xp.where(present, lse_part, 0.0)
    w = xp.where(present, xp.exp(part - lse_total), 0.0)
    return xp.expand_dims(w, axis=-1)
