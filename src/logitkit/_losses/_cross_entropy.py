"""Cross-entropy from logits, its fused gradient, and the margin form of the loss."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .. import _ce_rows as ce
from .._layout import Axis, from_rows
from .._namespace import (
    ArrayT,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    compute_dtypes,
    expected,
    is_concrete,
    is_jax,
    is_numpy,
    is_torch,
    namespace,
    to_numpy,
)
from ._validate import Checked, check_cross_entropy

__all__ = ["cross_entropy", "cross_entropy_with_grad", "margin_cross_entropy"]


def _loss_shape(loss: Any, ck: Checked) -> Any:
    xp = ck.xp
    if ck.pb.reduction == "none":
        loss = xp.reshape(loss, ck.lay.batch_shape)
    return astype(loss, ck.out_dtype, xp)


def cross_entropy(
    logits: ArrayT,
    target: Any,
    /,
    *,
    axis: Axis = -1,
    ignore_index: int | None = None,
    weight: Any = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_l2: float = 0.0,
    temperature: Any = 1.0,
    where: Any = None,
    softcap: float | None = None,
    reduction: str = "mean",
) -> ArrayT:
    r"""Cross-entropy between a target and ``softmax(logits / T)``, with PyTorch's options.

    .. math::
        \ell_i = -\sum_c w_c\, y_{ic} \log \operatorname{softmax}(z_i)_c
                 + c_z \operatorname{lse}(z_i)^2 + \tfrac{\lambda}{2}\lVert x_i\rVert^2,
        \qquad z = \operatorname{softcap}(x) / T,
        \qquad y = (1-\varepsilon)\,\operatorname{onehot}(t) + \varepsilon / K_{\text{valid}}

    and the gradient is exactly
    :math:`\partial\ell_i/\partial z_i = (\sum_c w_c y_{ic} + 2 c_z \operatorname{lse}) p_i - w \odot y_i`,
    i.e. ``(p − y)/T`` (+ ``λx``) without weights.

    Args:
        logits: ``(..., K, ...)`` scores; NumPy, PyTorch, JAX or any array-API array.
        target: integer class indices of the logits' shape without ``axis``, or probabilities
            of the logits' shape (non-negative, summing to 1 over ``axis``; checked on eager
            arrays).  The dtype decides which.
        axis: the class axis.  A tuple of axes is one flattened class axis, counted in the order
            given (as optax counts): ``axis=(2, 1)`` numbers class ``(i₂, i₁)`` as ``i₂·n₁ + i₁``.
        ignore_index: a class index whose rows give loss 0, gradient 0, and do not count in the
            mean (integer targets only).  ``None`` by default, unlike PyTorch's −100: a label of
            −100 is then out of range like any other.
        weight: ``(K,)`` non-negative per-class weights.  With integer targets ``"mean"`` divides
            by ``Σ_i weight[target_i]`` over the counted rows (PyTorch's weighted mean, also with
            label smoothing); with probability targets it divides by the number of rows (as
            PyTorch).  Treated as a constant by the autodiff adapters.
        label_smoothing: ``ε ∈ [0, 1]``; the target becomes ``(1−ε)·y + ε/K_valid`` over the
            unmasked classes of each row.
        z_loss: ``c_z ≥ 0`` adds ``c_z · logsumexp(z)²`` per row (PaLM's z-loss).
        logit_l2: ``λ ≥ 0`` adds ``(λ/2)·Σ x²`` over the unmasked logits as given.
        temperature: positive finite ``T`` (a scalar, or per row: broadcastable to the reduced
            shape); the loss is that of ``softmax(z/T)``.
        where: boolean mask broadcastable to ``logits``; ``False`` classes are excluded.
        softcap: a positive ``c`` applies ``c·tanh(x/c)`` before the temperature.
        reduction: ``"none"`` (per-row losses, the logits' shape without ``axis``), ``"sum"``,
            or ``"mean"`` over the counted rows.

    Returns:
        The loss, of the logits' array type (float16/bfloat16 logits accumulate in float32 and
        return their own dtype).

    Note:
        Rows whose label is ``ignore_index`` and rows with every class masked give loss 0 and
        gradient 0 and leave the mean's denominator; a mean over no counted row is 0 (not NaN).
        Probability targets use ``0·log 0 = 0`` and ``0·(−inf) = 0`` in value and gradient.  A
        target on a class of probability 0 (masked, or a ``−inf`` logit) gives ``+inf``; an
        unmasked NaN gives NaN; ``k`` logits at ``+inf`` give ``p = 1/k`` there.  Out-of-range
        labels raise on eager arrays and give a NaN loss on JAX (whose arrays cannot be read).

        Autodiff: on PyTorch, when the logits (or probability targets) require grad and neither
        ``weight`` nor ``temperature`` does, a ``torch.autograd.Function`` applies the analytic
        gradient and keeps only O(N) row statistics besides its inputs.  On JAX, with a scalar
        ``temperature``, a ``jax.custom_vjp`` does the same, ``weight`` differentiable too
        (reverse mode only: use ``jax.jacrev``, not ``jax.jacfwd``/``jax.hessian``).  Otherwise
        the backend differentiates the computation itself (gradients also for ``weight`` and
        ``temperature``).

    Examples:
        >>> import numpy as np
        >>> from logitkit import cross_entropy
        >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
        >>> print(round(float(cross_entropy(logits, np.array([0, 2]))), 6))
        0.669962
        >>> cross_entropy(logits, np.array([0, -100]), ignore_index=-100, reduction="none").round(4)
        array([0.2413, 0.    ])
        >>> float(cross_entropy(np.array([40.0, 0.0]), np.array(0)))  # log1p(exp(-40)), not 0
        4.248354255291589e-18

    References:
        Szegedy et al., "Rethinking the Inception architecture" (2016), label smoothing;
        Chowdhery et al., "PaLM" (2022), z-loss.
    """
    ck = check_cross_entropy(
        logits, target, axis=axis, ignore_index=ignore_index, weight=weight,
        label_smoothing=label_smoothing, z_loss=z_loss, logit_l2=logit_l2,
        temperature=temperature, where=where, softcap=softcap, reduction=reduction)
    xp = ck.xp
    if is_torch(xp):
        from .._autodiff import _torch

        if _torch.applies(ck.pb, ck.weight, ck.temperature, ck.target, ck.logits):
            return _loss_shape(_torch.cross_entropy(ck.pb, ck.acc, xp), ck)
    elif is_jax(xp):
        from .._autodiff import _jax

        if _jax.applies(ck.pb):
            return _loss_shape(_jax.cross_entropy(ck.pb, ck.acc), ck)
    pb = ce.cast(ck.pb, ck.acc, xp)
    if _needs_graph(ck):  # the backend differentiates the generic path itself
        stats = ce.forward(pb, xp)
    else:
        stats = ce.fast_forward(pb, xp)
    return _loss_shape(ce.reduce(stats.loss, pb.reduction, stats.denom, xp), ck)


def _needs_graph(ck: Checked) -> bool:
    """Whether torch records a graph through one of the inputs (the kernels would cut it)."""
    if not is_torch(ck.xp):
        return False
    import torch

    return torch.is_grad_enabled() and any(
        bool(getattr(a, "requires_grad", False))
        for a in (ck.logits, ck.target, ck.weight, ck.temperature))


def cross_entropy_with_grad(
    logits: ArrayT,
    target: Any,
    /,
    *,
    axis: Axis = -1,
    ignore_index: int | None = None,
    weight: Any = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_l2: float = 0.0,
    temperature: Any = 1.0,
    where: Any = None,
    softcap: float | None = None,
    reduction: str = "mean",
    out: Any = None,
) -> tuple[ArrayT, ArrayT]:
    r"""The cross-entropy and its gradient with respect to the logits, in one pass.

    .. math::
        \frac{\partial \ell}{\partial x} = s_i\Bigl(\frac{(\textstyle\sum_c W_{ic}
            + 2 c_z \operatorname{lse}_i)\, p_i - W_i}{T} \odot \operatorname{softcap}'(x_i)
            + \lambda x_i\Bigr),\qquad W_{ic} = w_c\, y_{ic}

    where ``s_i`` is ``1/denominator`` for ``"mean"`` and 1 for ``"sum"`` and ``"none"``.  Without
    weights, regularisers, softcap and temperature this is ``(p − y)``, scaled by the reduction.

    For NumPy input the fused CPU kernel is used when it applies; otherwise (and for every other
    backend) the generic path computes the same values without any autodiff.

    Args:
        logits: ``(..., K, ...)`` scores.
        target: class indices or probabilities (see :func:`cross_entropy`).
        axis: the class axis.
        ignore_index: see :func:`cross_entropy`.
        weight: see :func:`cross_entropy`.
        label_smoothing: see :func:`cross_entropy`.
        z_loss: see :func:`cross_entropy`.
        logit_l2: see :func:`cross_entropy`.
        temperature: see :func:`cross_entropy`.
        where: see :func:`cross_entropy`.
        softcap: see :func:`cross_entropy`.
        reduction: see :func:`cross_entropy`.  With ``"none"`` the gradient holds each row's
            own gradient (the gradient of the sum of the per-row losses).
        out: NumPy only: a caller-owned array of the logits' shape and the gradient's dtype
            (the logits' floating dtype) that receives the gradient; it may be ``logits``
            itself, which is then overwritten after the loss is computed.

    Returns:
        ``(loss, dlogits)``: the loss as :func:`cross_entropy` returns it, and the gradient with
        the logits' shape (``out`` when given).

    Note:
        Ignored and fully masked rows get a zero gradient; masked entries get exactly 0.

    Examples:
        >>> import numpy as np
        >>> from logitkit import cross_entropy_with_grad
        >>> loss, g = cross_entropy_with_grad(np.zeros((1, 4)), np.array([1]))
        >>> print(round(float(loss), 6))
        1.386294
        >>> g
        array([[ 0.25, -0.75,  0.25,  0.25]])
    """
    ck = check_cross_entropy(
        logits, target, axis=axis, ignore_index=ignore_index, weight=weight,
        label_smoothing=label_smoothing, z_loss=z_loss, logit_l2=logit_l2,
        temperature=temperature, where=where, softcap=softcap, reduction=reduction)
    xp = ck.xp
    if out is not None:
        _check_out(out, ck)
    pb = ce.cast(ck.pb, ck.acc, xp)
    counted = ce.counted_rows(pb, xp)
    denom = ce.denominator(pb, counted, xp)
    # The upstream cotangent 1 as one 0-d array, not a column of ones: the mean's 1/denominator
    # is then formed once, not once per row (the same (N, 1) scale).
    one = xp.asarray(1.0, dtype=ck.acc, device=array_api_compat.device(pb.x))
    scale = ce.row_scale(counted, pb.reduction, denom, one, xp)
    # The gradient straight into `out` when its rows are the problem's rows (the class axis
    # last, C order, the working dtype): then `out` may also be the logits themselves.
    rows_out = None
    if (out is not None and ck.lay.perm is None and len(ck.lay.axes) == 1
            and out.flags.c_contiguous and out.dtype == np.dtype(ck.acc)
            and (_same_memory(out, pb.x) or not np.shares_memory(out, pb.x))):
        rows_out = out.reshape(ck.lay.n, ck.lay.k)
    loss_rows, g = ce.loss_and_gradient(pb, scale, xp, counted=counted, denom=denom,
                                        out=rows_out)
    loss = _loss_shape(ce.reduce(loss_rows, pb.reduction, denom, xp), ck)
    if rows_out is not None:
        return loss, out
    g = astype(from_rows(g, ck.lay, xp), ck.grad_dtype, xp)
    if out is not None:
        np.copyto(out, g)
        return loss, out
    return loss, g


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same elements (partial overlap is neither this nor apart:
    writing the gradient row by row there would overwrite logits not yet read)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.reshape(a.shape).strides)


def _check_out(out: Any, ck: Checked) -> None:
    if not is_numpy(ck.xp) or not isinstance(ck.logits, np.ndarray):
        raise LogitkitTypeError(expected("out", "None for non-NumPy logits", type(out).__name__))
    if not isinstance(out, np.ndarray):
        raise LogitkitTypeError(expected("out", "a NumPy array or None", type(out).__name__))
    if out.shape != tuple(ck.logits.shape):
        raise LogitkitValueError(
            expected("out", f"of shape {tuple(ck.logits.shape)}", f"shape {out.shape}"))
    if out.dtype != np.dtype(ck.grad_dtype):
        raise LogitkitValueError(expected("out", f"of dtype {np.dtype(ck.grad_dtype)}",
                                          f"dtype {out.dtype}"))
    if not out.flags.writeable:
        raise LogitkitValueError(expected("out", "a writeable array", "a read-only array"))


def margin_cross_entropy(margin: Any, num_classes: Any, /) -> Any:
    r"""Cross-entropy of a softmax whose target logit leads the other ``K − 1`` by ``margin``.

    .. math::
        \ell(m, K) = -\log\frac{e^{m}}{e^{m} + (K-1)} = \log\bigl(1 + (K-1)e^{-m}\bigr)

    computed as ``softplus(log(K−1) − m)``, which neither overflows for very negative margins nor
    loses the tiny loss of a large margin.

    Args:
        margin: the margin ``m`` (scalar or array); ``±inf`` give the limits 0 and ``+inf``.
        num_classes: ``K ≥ 1`` (scalar or array broadcastable with ``margin``).

    Returns:
        The loss, broadcast over ``margin`` and ``num_classes`` (of their array type).

    Note:
        ``K = 1`` gives 0 for every finite margin (the only class always wins); the loss is
        decreasing in ``m`` and equals ``log K`` at ``m = 0``.

    Examples:
        >>> import numpy as np
        >>> from logitkit import margin_cross_entropy
        >>> print(round(float(margin_cross_entropy(0.0, 10)), 6))  # log 10
        2.302585
        >>> float(margin_cross_entropy(np.array(50.0), 2))
        1.9287498479639178e-22
    """
    xp = namespace(margin, num_classes)
    m = as_array(margin, "margin", xp)
    k = as_array(num_classes, "num_classes", xp)
    acc, _ = compute_dtypes(m, None, xp)
    if is_concrete(k):
        kn = to_numpy(k).astype(np.float64)
        if (~(kn >= 1)).any():
            raise LogitkitValueError(expected("num_classes", "at least 1", kn[~(kn >= 1)][0].item()))
    m = astype(m, acc, xp)
    k = astype(k, acc, xp)
    one = xp.asarray(1.0, dtype=acc, device=array_api_compat.device(m))
    km1 = k - one
    log_km1 = xp.log(xp.where(km1 > 0, km1, one))
    t = log_km1 - m
    # softplus(t) = max(t, 0) + log1p(exp(-|t|)); K = 1 gives exactly 0.
    safe = xp.where(xp.isfinite(t), t, xp.zeros_like(t))
    sp = xp.maximum(safe, xp.zeros_like(safe)) + xp.log1p(xp.exp(-xp.abs(safe)))
    sp = xp.where(t == math.inf, t, xp.where(t == -math.inf, xp.zeros_like(t), sp))
    sp = xp.where(xp.isnan(t), t, sp)
    return xp.where(km1 > 0, sp, xp.zeros_like(sp))
