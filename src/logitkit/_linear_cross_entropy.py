"""Fused linear layer + cross-entropy for large vocabularies, without the N×V logits.

A language model's last layer turns ``N`` hidden states of width ``H`` into ``N×V`` logits and
feeds them to the cross-entropy; at ``V`` in the tens or hundreds of thousands the logits, their
softmax and their gradient dominate the memory of training.  Here the logits are only ever formed
one block of ``rows × cols`` at a time: blocks of tokens, and of the vocabulary when ``V`` is
large, merged by an online log-sum-exp.  The gradient of a block, ``(p − y)`` (plus the z-loss and
softcap terms), is multiplied into ``d_hidden``, ``d_weight`` and ``d_bias`` as soon as it exists.

Two ways to get the gradient were measured (``benchmarks/bench_linear_cross_entropy.py``):

* **in forward** — when the loss is reduced to a scalar the gradient of every block is known the
  moment the block's log-sum-exp is; it is accumulated during the forward pass and scaled by the
  upstream scalar in ``backward``.  Three matrix products per block (like the dense computation).
* **recompute** — ``forward`` keeps the per-token log-sum-exp (O(N)), ``backward`` recomputes each
  block of logits.  Four matrix products per block.

The first is the faster one (at N=8192, H=256, V=32000 in float32 on two CPU cores: 0.87× the
CPU time of the dense torch step against 1.05× for recomputing, at 1/23 of its peak memory), so
it is used for ``reduction="mean"`` and ``"sum"`` whenever a gradient is wanted;
``reduction="none"`` needs the per-token upstream gradient, which only exists in ``backward``,
so it recomputes.  When the vocabulary itself is split, the log-sum-exp of a
token is complete only after its last vocabulary block; the forward then makes a second pass over
the vocabulary for the gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from . import _ce_rows as ce
from ._core import merge_lse
from ._losses._validate import check_column_options
from ._namespace import (
    Array,
    ArrayT,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_int,
    compute_dtypes,
    expected,
    is_lazy,
    is_numpy,
    is_torch,
    namespace,
    stop_gradient,
    to_numpy,
)

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# Elements of one block of logits: one buffer of 64 MiB in float32 (two with a softcap), reused
# for the logits, their exponentials and their gradient.  Smaller blocks mean more (and smaller)
# parallel regions per step; at 2**22 the blocked step was 1.8x slower than the dense one on two
# busy cores, at 2**24 it is faster (benchmarks/bench_linear_cross_entropy.py).
_BLOCK_ELEMENTS = 2**24
_MIN_ROWS = 128


@dataclass(frozen=True)
class _Options:
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: str
    rows: int  # tokens per block
    cols: int  # vocabulary entries per block


@dataclass
class _Result:
    loss: Array  # (n,) per-token loss of the kept tokens
    lse: Array  # (n,) log-sum-exp of their (softcapped) logits
    d_hidden: Array | None  # (n, H)
    d_weight: Array | None  # (V, H)
    d_bias: Array | None  # (V,)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    hidden: Array  # (N, H) in the accumulation dtype
    weight: Array  # (V, H)
    bias: Array | None  # (V,)
    target: Array  # (N,) integer
    keep: Array  # (n,) indices of the tokens that are not ignored
    valid: Array | None  # (N,) bool, None when nothing can be ignored
    n_total: int
    target_shape: tuple[int, ...]
    out_dtype: Any
    opts: _Options


_CHUNKS = "a positive int or a pair of positive ints"


def _chunks(chunk_size: object, n: int, v: int) -> tuple[int, int]:
    if chunk_size is None:
        rows = max(_BLOCK_ELEMENTS // max(v, 1), _MIN_ROWS)
        cols = max(_BLOCK_ELEMENTS // rows, 1)
    elif isinstance(chunk_size, (tuple, list)) and len(chunk_size) == 2:
        rows, cols = (check_int(c, "chunk_size", what=_CHUNKS) for c in chunk_size)
    else:
        rows, cols = check_int(chunk_size, "chunk_size", what=_CHUNKS), v
    return max(1, min(rows, max(n, 1))), max(1, min(cols, max(v, 1)))


def _validate(
    hidden: Any, weight: Any, target: Any, bias: Any, *, chunk_size: object,
    ignore_index: object, label_smoothing: object, z_loss: object, softcap: object,
    reduction: object,
) -> tuple[_Inputs, Any]:
    xp = namespace(hidden, weight, target, bias)
    if not (is_numpy(xp) or is_torch(xp)):
        raise LogitkitTypeError(expected("hidden", "a NumPy array or a torch tensor",
                                         f"an array of {xp.__name__}"))
    hidden = as_array(hidden, "hidden", xp)
    weight = as_array(weight, "weight", xp)
    target = as_array(target, "target", xp)
    bias = None if bias is None else as_array(bias, "bias", xp)
    for arr, arg in ((hidden, "hidden"), (weight, "weight"), (target, "target"), (bias, "bias")):
        if arr is not None and is_lazy(arr):
            raise LogitkitTypeError(expected(arg, "an eager array", "a lazy array"))
    if hidden.ndim < 1:
        raise LogitkitValueError(expected("hidden", "an array of shape (..., H)", hidden))
    h = hidden.shape[-1]
    if weight.ndim != 2 or weight.shape[1] != h:
        raise LogitkitValueError(expected("weight", f"an array of shape (V, {h})",
                                          f"shape {tuple(weight.shape)}"))
    v = int(weight.shape[0])
    if bias is not None and tuple(bias.shape) != (v,):
        raise LogitkitValueError(expected("bias", f"an array of shape ({v},)",
                                          f"shape {tuple(bias.shape)}"))
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise LogitkitValueError(expected("target", f"integer class indices of shape "
                                          f"{tuple(hidden.shape[:-1])}",
                                          f"shape {tuple(target.shape)}"))
    if not xp.isdtype(target.dtype, "integral"):
        raise LogitkitTypeError(expected("target", "an array of integer class indices",
                                         f"an array of dtype {target.dtype}"))
    eps, zl, cap, red = check_column_options(
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, reduction=reduction)

    # One working dtype for all three arrays: their common type, floating, float32 at least.
    dtypes = [hidden.dtype, weight.dtype] + ([] if bias is None else [bias.dtype])
    common = xp.result_type(*dtypes)
    probe = xp.empty((0,), dtype=common, device=array_api_compat.device(hidden))
    acc, out_dtype = compute_dtypes(probe, None, xp)

    target_shape = tuple(int(s) for s in target.shape)
    n_total = math.prod(target_shape)
    hidden = xp.reshape(astype(hidden, acc, xp), (n_total, h))
    target = xp.reshape(target, (n_total,))
    valid = (target != ignore_index) if ignore_index is not None else None
    t_np = to_numpy(target)
    t_kept = t_np if ignore_index is None else t_np[t_np != ignore_index]
    if t_kept.size and (int(t_kept.min()) < 0 or int(t_kept.max()) >= v):
        bad = t_kept[(t_kept < 0) | (t_kept >= v)][0]
        raise LogitkitValueError(expected("target", f"class indices in [0, {v})", int(bad)))
    if valid is None:
        keep = xp.arange(n_total, device=array_api_compat.device(hidden))
    else:
        (keep,) = xp.nonzero(valid)
    rows, cols = _chunks(chunk_size, int(keep.shape[0]), v)
    opts = _Options(eps, zl, cap, red, rows, cols)
    # The blocked code never differentiates through these (autograd sees the originals).
    weight = stop_gradient(astype(weight, acc, xp), xp)
    bias = None if bias is None else stop_gradient(astype(bias, acc, xp), xp)
    inputs = _Inputs(stop_gradient(hidden, xp), weight, bias, target, keep, valid, n_total,
                     target_shape, out_dtype, opts)
    return inputs, xp


# --------------------------------------------------------------------------------------------
# the blocked computation (NumPy, and torch without autograd)
# --------------------------------------------------------------------------------------------


class _Kernel:
    """In-place arithmetic on the block buffers the blocked loop owns, for NumPy or torch.

    The blocks are written into buffers allocated once per call: a fresh 16-64 MiB array per
    block would cost a page-faulting allocation each time and lets the C allocator keep freed
    blocks resident (measured: ten times the logical peak in resident memory).
    """

    def __init__(self, xp: Any, like: Array) -> None:
        self.xp = xp
        self.is_torch = is_torch(xp)
        self.dtype = like.dtype
        self.device = array_api_compat.device(like)
        self._tmp: dict[tuple[int, ...], Array] = {}

    def empty(self, shape: tuple[int, ...]) -> Array:
        return self.xp.empty(shape, dtype=self.dtype, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self.xp.zeros(shape, dtype=self.dtype, device=self.device)

    def view(self, flat: Array, shape: tuple[int, int]) -> Array:
        """A contiguous ``shape`` view of the start of a flat buffer."""
        return self.xp.reshape(flat[: shape[0] * shape[1]], shape)

    def logits(self, h: Array, w: Array, b: Array | None, out: Array, t_out: Any,
               softcap: float | None) -> tuple[Array, Array | None]:
        """``out = softcap(h @ w.T + b)``; ``t_out = tanh((h @ w.T + b)/c)`` when capped."""
        if self.is_torch:
            import torch

            if b is None:
                torch.mm(h, w.T, out=out)
            else:
                torch.addmm(b, h, w.T, out=out)
        else:
            import numpy as np

            np.matmul(h, w.T, out=out)
            if b is not None:
                out += b
        if softcap is None:
            return out, None
        t_out[...] = out
        t_out /= softcap
        self.tanh_(t_out)
        out[...] = t_out
        out *= softcap
        return out, t_out

    def exp_(self, x: Array) -> None:
        if self.is_torch:
            x.exp_()
        else:
            import numpy as np

            np.exp(x, out=x)

    def tanh_(self, x: Array) -> None:
        if self.is_torch:
            x.tanh_()
        else:
            import numpy as np

            np.tanh(x, out=x)

    def matmul_acc(self, acc: Array, a: Array, b: Array) -> None:
        """``acc += a @ b`` without a temporary the size of ``acc`` per call."""
        if self.is_torch:
            acc.addmm_(a, b)
            return
        import numpy as np

        shape = tuple(acc.shape)
        tmp = self._tmp.get(shape)
        if tmp is None:
            tmp = self._tmp[shape] = self.empty(shape)
        np.matmul(a, b, out=tmp)
        acc += tmp


def _blocked(
    hidden: Array, weight: Array, bias: Array | None, y: Array, opts: _Options, xp: Any, *,
    scale: Any, lse: Any = None,
) -> _Result:
    """Per-token losses of ``hidden @ weight.T + bias`` and, if ``scale`` is given, the gradients
    of ``Σ scale_i·loss_i``.

    A block that holds whole rows of logits (the vocabulary in one block) is a dense
    cross-entropy problem: :mod:`logitkit._ce_rows` computes its losses and writes its gradient
    over the logits (the fused kernel on NumPy and CPU torch).  A split vocabulary takes the
    online log-sum-exp over blocks of columns and that module's column rules; ``lse`` (from an
    earlier forward) then skips the statistics pass.
    """
    n, h = int(hidden.shape[0]), int(hidden.shape[1])
    v = int(weight.shape[0])
    k = _Kernel(xp, hidden)
    eps, zc, cap = opts.label_smoothing, opts.z_loss, opts.softcap
    rows, cols = max(1, min(opts.rows, n)), min(opts.cols, v)
    col_starts = list(range(0, v, cols))
    single = len(col_starts) == 1
    want_grad = scale is not None
    if isinstance(scale, float):
        scale = xp.full((n,), scale, dtype=k.dtype, device=k.device)

    # Any: NumPy arrays or torch tensors, or None where the pass does not need them.
    zflat: Any = k.empty((rows * cols,))
    tflat: Any = k.empty((rows * cols,)) if cap is not None and not single else None
    losses: Any = k.empty((n,)) if lse is None else None
    lses: Any = k.empty((n,)) if lse is None and not single else lse
    d_hidden: Any = k.zeros((n, h)) if want_grad else None
    d_weight: Any = k.zeros((v, h)) if want_grad else None
    d_bias: Any = k.zeros((v,)) if want_grad and bias is not None else None

    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        m = r1 - r0
        h_c, y_c = hidden[r0:r1, :], y[r0:r1]
        s_c = None if scale is None else xp.reshape(scale[r0:r1], (m, 1))
        if single:
            z, _ = k.logits(h_c, weight, bias, k.view(zflat, (m, v)), None, None)
            pb = ce.Problem(x=z, labels=y_c, probs=None, mask=None, weight=None, keep=None,
                            bad=None, temperature=1.0, softcap=cap, label_smoothing=eps,
                            z_loss=zc, logit_l2=0.0, reduction="none")
            counted = xp.ones((m,), dtype=xp.bool, device=k.device)
            if not want_grad:
                losses[r0:r1] = ce.fast_forward(pb, xp).loss
                continue
            loss, g = ce.loss_and_gradient(pb, s_c, xp, counted=counted, out=z)
            if losses is not None:
                losses[r0:r1] = loss
            d_hidden[r0:r1, :] = xp.matmul(g, weight)
            k.matmul_acc(d_weight, g.T, h_c)
            if bias is not None:
                d_bias += xp.sum(g, axis=0)
            continue
        if lse is not None:
            lse_c = xp.reshape(lse[r0:r1], (m, 1))
        else:
            # Pass 1 over the vocabulary: online log-sum-exp, target logit, sum of logits.
            lse_c = None
            z_t = xp.zeros((m, 1), dtype=k.dtype, device=k.device)
            z_sum = xp.zeros((m, 1), dtype=k.dtype, device=k.device)
            for c0 in col_starts:
                c1 = min(c0 + cols, v)
                z, _ = k.logits(h_c, weight[c0:c1, :], None if bias is None else bias[c0:c1],
                                k.view(zflat, (m, c1 - c0)),
                                None if tflat is None else k.view(tflat, (m, c1 - c0)), cap)
                inside = (y_c >= c0) & (y_c < c1)
                local = xp.where(inside, y_c - c0, xp.zeros_like(y_c))
                picked = xp.take_along_axis(z, local[:, None], axis=1)
                z_t = z_t + xp.where(inside[:, None], picked, 0.0)
                if eps:
                    z_sum = z_sum + xp.sum(z, axis=1, keepdims=True)
                top = xp.max(z, axis=1, keepdims=True)
                z -= top
                k.exp_(z)
                block_lse = top + xp.log(xp.sum(z, axis=1, keepdims=True))
                lse_c = block_lse if lse_c is None else merge_lse(lse_c, block_lse, xp)
            loss = ce.column_loss(lse_c, z_t, z_sum, vocab=v, label_smoothing=eps, z_loss=zc)
            losses[r0:r1] = loss[:, 0]
            lses[r0:r1] = lse_c[:, 0]
        if not want_grad:
            continue
        # Pass 2 (or the backward's only pass): p = exp(z − lse), block by block.
        for c0 in col_starts:
            c1 = min(c0 + cols, v)
            w_j = weight[c0:c1, :]
            z, t = k.logits(h_c, w_j, None if bias is None else bias[c0:c1],
                            k.view(zflat, (m, c1 - c0)),
                            None if tflat is None else k.view(tflat, (m, c1 - c0)), cap)
            z -= lse_c
            k.exp_(z)
            (hit,) = xp.nonzero((y_c >= c0) & (y_c < c1))
            ce.column_gradient_(z, lse_c, s_c, hit, xp.take(y_c, hit, axis=0) - c0, vocab=v,
                                label_smoothing=eps, z_loss=zc, tanh=t)
            k.matmul_acc(d_hidden[r0:r1, :], z, w_j)
            k.matmul_acc(d_weight[c0:c1, :], z.T, h_c)
            if bias is not None:
                d_bias[c0:c1] += xp.sum(z, axis=0)
    return _Result(losses, lses, d_hidden, d_weight, d_bias)


def _kept(inp: _Inputs, xp: Any) -> tuple[Array, Array]:
    """Hidden states and targets of the tokens that are not ignored (dropped before any product)."""
    if inp.valid is None:
        return inp.hidden, inp.target
    return xp.take(inp.hidden, inp.keep, axis=0), xp.take(inp.target, inp.keep, axis=0)


def _scatter_rows(values: Array, inp: _Inputs, xp: Any) -> Array:
    """``values`` (rows of the kept tokens) put back among all tokens, zeros for ignored ones."""
    if inp.valid is None:
        return values
    n = int(values.shape[0])
    dev = array_api_compat.device(values)
    # Position of each token among the kept ones; ignored tokens point at an extra zero row.
    pos = xp.cumulative_sum(astype(inp.valid, xp.int64, xp)) - 1
    pos = xp.where(inp.valid, pos, xp.full_like(pos, n))
    zero_row = xp.zeros((1, *values.shape[1:]), dtype=values.dtype, device=dev)
    return xp.take(xp.concat([values, zero_row], axis=0), pos, axis=0)


def _row_scale(inp: _Inputs, n_kept: int, g: Any, xp: Any, like: Array) -> Array:
    """The per-token factor ``∂(reduced loss)/∂loss_i · g`` of the kept tokens, ``(n,)``."""
    ones = xp.ones((n_kept,), dtype=xp.bool, device=array_api_compat.device(like))
    g = astype(xp.asarray(g, device=array_api_compat.device(like)), like.dtype, xp)
    return ce.row_scale(ones, inp.opts.reduction, float(n_kept), g, xp)[:, 0]


def _reduce(loss_kept: Array, inp: _Inputs, xp: Any) -> Array:
    if inp.opts.reduction == "none":
        full = _scatter_rows(loss_kept, inp, xp)
        return astype(xp.reshape(full, inp.target_shape), inp.out_dtype, xp)
    loss = ce.reduce(loss_kept, inp.opts.reduction, float(loss_kept.shape[0]), xp)
    return astype(loss, inp.out_dtype, xp)


# --------------------------------------------------------------------------------------------
# torch autograd
# --------------------------------------------------------------------------------------------


@functools.cache
def _torch_function() -> Any:
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Blocked linear + cross-entropy; saves the inputs and O(N) statistics only."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, inp: _Inputs, xp: Any,
                    strategy: str) -> Any:
            opts = inp.opts
            h_kept, y_kept = _kept(inp, xp)
            n = int(inp.keep.shape[0])
            wants = any(ctx.needs_input_grad[:3])
            in_forward = wants and strategy == "forward" and opts.reduction != "none"
            res = _blocked(h_kept, inp.weight, inp.bias, y_kept, opts, xp,
                           scale=_row_scale(inp, n, 1.0, xp, h_kept) if in_forward else None)
            ctx.inp, ctx.xp, ctx.in_forward = inp, xp, in_forward
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
            if in_forward:
                d_hidden = _scatter_rows(res.d_hidden, inp, xp)
                ctx.save_for_backward(d_hidden, res.d_weight, res.d_bias)
            else:
                ctx.save_for_backward(h_kept, y_kept, res.lse)
            return _reduce(res.loss, inp, xp)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_out: Any) -> Any:
            inp, xp = ctx.inp, ctx.xp
            if ctx.in_forward:
                d_hidden, d_weight, d_bias = ctx.saved_tensors
                g = astype(grad_out, d_hidden.dtype, xp)
                d_hidden, d_weight = d_hidden * g, d_weight * g
                d_bias = None if d_bias is None else d_bias * g
            else:
                h_kept, y_kept, lse = ctx.saved_tensors
                n = int(h_kept.shape[0])
                g = astype(grad_out, h_kept.dtype, xp)
                if inp.opts.reduction == "none":
                    scale = xp.take(xp.reshape(g, (inp.n_total,)), inp.keep, axis=0)
                else:
                    scale = _row_scale(inp, n, g, xp, h_kept)
                res = _blocked(h_kept, inp.weight, inp.bias, y_kept, inp.opts, xp,
                               scale=scale, lse=lse)
                d_hidden = _scatter_rows(res.d_hidden, inp, xp)
                d_weight, d_bias = res.d_weight, res.d_bias
            dt_h, dt_w, dt_b = ctx.dtypes
            d_hidden = xp.reshape(astype(d_hidden, dt_h, xp), (*inp.target_shape, -1))
            d_weight = astype(d_weight, dt_w, xp)
            d_bias = None if d_bias is None else astype(d_bias, dt_b, xp)
            return (d_hidden if ctx.needs_input_grad[0] else None,
                    d_weight if ctx.needs_input_grad[1] else None,
                    d_bias if ctx.needs_input_grad[2] else None, None, None, None)

    return LinearCrossEntropy


def _torch_linear_cross_entropy(hidden: Any, weight: Any, target: Any, bias: Any,
                                inp: _Inputs, xp: Any, strategy: str) -> Any:
    return _torch_function().apply(hidden, weight, bias, inp, xp, strategy)


def _needs_autograd(*arrays: Any) -> bool:
    import torch

    return torch.is_grad_enabled() and any(
        a is not None and getattr(a, "requires_grad", False) for a in arrays)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def linear_cross_entropy(
    hidden: ArrayT,
    weight: Any,
    target: Any,
    /,
    *,
    bias: Any = None,
    chunk_size: int | tuple[int, int] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> ArrayT:
    r"""Cross-entropy of the logits ``hidden @ weight.T + bias``, never holding all N×V of them.

    .. math::
        z_i = s_c(W h_i + b),\qquad
        \ell_i = \operatorname{lse}(z_i) - (1-\varepsilon)\, z_{i,y_i}
                 - \frac{\varepsilon}{V}\sum_j z_{ij} + c_z \operatorname{lse}(z_i)^2,

    with :math:`s_c(u) = c\tanh(u/c)` when ``softcap`` is given (the identity otherwise).  The
    result equals ``cross_entropy(hidden @ weight.T + bias, target, ...)`` with the same options;
    only blocks of ``rows × cols`` logits exist at any time, merged by an online log-sum-exp.

    Args:
        hidden: ``(..., H)`` hidden states (NumPy array or torch tensor).
        weight: ``(V, H)`` output projection (the unembedding), as in ``torch.nn.Linear``.
        target: ``(...)`` integer class indices in ``[0, V)`` (or ``ignore_index``).
        bias: optional ``(V,)`` bias of the projection.
        chunk_size: tokens per block (an int), or ``(tokens, vocabulary entries)`` per block.
            ``None`` picks blocks of about 16M logits (64 MiB in float32), splitting the
            vocabulary only when a block of 128 tokens would exceed that (V > 131072).
        ignore_index: tokens whose target equals it are dropped before the matrix product; they
            give loss 0, gradient 0, and do not count in the mean.
        label_smoothing: ε in ``[0, 1]``: the target is ``(1−ε)·onehot + ε/V``.
        z_loss: ``c_z ≥ 0``: adds ``c_z·lse²`` per token (PaLM).
        softcap: ``c > 0``: logits become ``c·tanh(z/c)`` before everything else (Gemma 2).
        reduction: ``"mean"`` over the kept tokens, ``"sum"``, or ``"none"`` (``target``'s shape).

    Returns:
        The loss, of the input's array type, in the inputs' floating dtype (float16/bfloat16
        accumulate in float32).  With torch tensors that require grad it is differentiable
        with respect to ``hidden``, ``weight`` and ``bias``; for NumPy use
        :func:`linear_cross_entropy_with_grad`.

    Note:
        Memory: O(rows·cols) for the blocks, plus the inputs and their gradients; the autograd
        graph keeps the inputs' gradients (``mean``/``sum``: computed during the forward pass,
        3 matrix products per block, as fast as the dense computation) or O(N) log-sum-exps
        (``none``: logits recomputed in backward, 4 matrix products per block, because the
        per-token upstream gradient exists only then).  The gradient is computed once and is not
        differentiable again.  ``reduction="mean"`` with every token ignored gives 0.
        Non-finite inputs give NaN.  JAX and other array libraries are not supported.

    Examples:
        >>> import numpy as np
        >>> from logitkit._linear_cross_entropy import linear_cross_entropy
        >>> rng = np.random.default_rng(0)
        >>> h, w = rng.normal(size=(6, 4)), rng.normal(size=(10, 4))
        >>> y = np.array([1, 2, 3, -100, 5, 9])
        >>> loss = linear_cross_entropy(h, w, y, ignore_index=-100, chunk_size=(2, 3))
        >>> dense = h @ w.T
        >>> lse = np.log(np.exp(dense).sum(1))
        >>> keep = y != -100
        >>> bool(np.isclose(loss, np.mean(lse[keep] - dense[keep, y[keep]])))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2025);
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training" (2024);
        Milakov & Gimelshein, "Online normalizer calculation for softmax" (2018).
    """
    inp, xp = _validate(hidden, weight, target, bias, chunk_size=chunk_size,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        z_loss=z_loss, softcap=softcap, reduction=reduction)
    if is_torch(xp) and _needs_autograd(hidden, weight, bias):
        return _torch_linear_cross_entropy(hidden, weight, target, bias, inp, xp, "forward")
    h_kept, y_kept = _kept(inp, xp)
    res = _blocked(h_kept, inp.weight, inp.bias, y_kept, inp.opts, xp, scale=None)
    return _reduce(res.loss, inp, xp)


def linear_cross_entropy_with_grad(
    hidden: ArrayT,
    weight: Any,
    target: Any,
    /,
    *,
    bias: Any = None,
    chunk_size: int | tuple[int, int] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    grad_output: Any = None,
) -> tuple[ArrayT, ArrayT, ArrayT, ArrayT | None]:
    r""":func:`linear_cross_entropy` and its gradients, in one blocked pass (for NumPy users).

    .. math::
        \frac{\partial L}{\partial z_{ij}} = g_i\,\bigl((1 + 2c_z\operatorname{lse}_i)p_{ij}
            - (1-\varepsilon)[j = y_i] - \varepsilon/V\bigr)\bigl(1 - (z_{ij}/c)^2\bigr),\quad
        \nabla_h = \frac{\partial L}{\partial z} W,\ \
        \nabla_W = \Bigl(\frac{\partial L}{\partial z}\Bigr)^{\!\top} h,\ \
        \nabla_b = \mathbf 1^\top \frac{\partial L}{\partial z}

    Args:
        hidden: ``(..., H)`` hidden states.
        weight: ``(V, H)`` output projection.
        target: ``(...)`` integer class indices.
        bias: optional ``(V,)`` bias.
        chunk_size: as in :func:`linear_cross_entropy`.
        ignore_index: as in :func:`linear_cross_entropy`.
        label_smoothing: as in :func:`linear_cross_entropy`.
        z_loss: as in :func:`linear_cross_entropy`.
        softcap: as in :func:`linear_cross_entropy`.
        reduction: as in :func:`linear_cross_entropy`.
        grad_output: the upstream gradient ``g`` of the loss: a scalar, or for
            ``reduction="none"`` an array of ``target``'s shape.  ``None`` means 1, so with
            ``reduction="none"`` the gradients are those of the sum of the per-token losses.

    Returns:
        ``(loss, d_hidden, d_weight, d_bias)``: the loss as :func:`linear_cross_entropy` returns
        it and the gradients of ``Σ g·loss`` in the shapes and dtypes of ``hidden``, ``weight``
        and ``bias`` (``d_bias`` is ``None`` without a bias).  Works for torch tensors too (no
        autograd graph is built).

    Note:
        Ignored tokens get a zero row in ``d_hidden``.  When the vocabulary is split into blocks
        the logits of each block are computed twice (once for the log-sum-exp, once for the
        gradient); otherwise once.

    Examples:
        >>> import numpy as np
        >>> from logitkit._linear_cross_entropy import linear_cross_entropy_with_grad
        >>> h, w = np.eye(2), np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        >>> loss, dh, dw, db = linear_cross_entropy_with_grad(h, w, np.array([0, 1]))
        >>> print(round(float(loss), 6), dh.shape, dw.shape, db)
        0.551445 (2, 2) (3, 2) None
    """
    inp, xp = _validate(hidden, weight, target, bias, chunk_size=chunk_size,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        z_loss=z_loss, softcap=softcap, reduction=reduction)
    h_kept, y_kept = _kept(inp, xp)
    n = int(h_kept.shape[0])
    dt = h_kept.dtype
    if grad_output is None:
        row_scale: Any = _row_scale(inp, n, 1.0, xp, h_kept)
    else:
        g = astype(as_array(grad_output, "grad_output", xp), dt, xp)
        if inp.opts.reduction == "none" and g.ndim > 0:
            if tuple(g.shape) != inp.target_shape:
                raise LogitkitValueError(expected("grad_output", f"a scalar or an array of "
                                                  f"shape {inp.target_shape}",
                                                  f"shape {tuple(g.shape)}"))
            row_scale = xp.take(xp.reshape(g, (inp.n_total,)), inp.keep, axis=0)
        elif g.ndim == 0:
            row_scale = _row_scale(inp, n, g, xp, h_kept)
        else:
            raise LogitkitValueError(expected("grad_output", "a scalar", f"shape {g.shape}"))
    res = _blocked(h_kept, inp.weight, inp.bias, y_kept, inp.opts, xp, scale=row_scale)
    loss = _reduce(res.loss, inp, xp)
    d_hidden = _scatter_rows(res.d_hidden, inp, xp)
    d_hidden = xp.reshape(d_hidden, (*inp.target_shape, int(inp.hidden.shape[1])))
    d_hidden = astype(d_hidden, inp.out_dtype, xp)
    d_weight = astype(res.d_weight, inp.out_dtype, xp)
    d_bias = None if res.d_bias is None else astype(res.d_bias, inp.out_dtype, xp)
    return loss, d_hidden, d_weight, d_bias
