"""Cross-entropy over a vocabulary split across ``torch.distributed`` ranks (Megatron-style).

Each rank of the group holds the logits of a contiguous slice of the vocabulary for the same
tokens.  The forward pass all-reduces, per token, the max of the logits and then (in one call)
the sum of the exponentials, the target logit (found on one rank only) and the sum of the
logits for label smoothing.  The backward pass needs no communication: with the log-sum-exp
known, each rank's gradient ``p − y`` lives on its own slice.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import array_api_compat

from .. import _ce_rows as ce
from .._losses._validate import check_column_options
from .._namespace import (
    LogitkitTypeError,
    LogitkitValueError,
    expected,
)

__all__ = ["vocab_parallel_cross_entropy"]


def _group_layout(group: Any, local_size: int, device: Any) -> tuple[int, int, bool]:
    """(first vocabulary index of this rank, total vocabulary size, distributed?)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise LogitkitValueError(expected(
                "group", "None when torch.distributed is not initialised", group))
        return 0, local_size, False
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    sizes = torch.zeros(world, dtype=torch.int64, device=device)
    sizes[rank] = local_size
    dist.all_reduce(sizes, group=group)
    return int(sizes[:rank].sum()), int(sizes.sum()), True


def _working(logits: Any, cap: float | None) -> tuple[Any, Any]:
    """The logits, detached, in float32 at least (float16/bfloat16 accumulate in float32) and
    softcapped, with ``tanh(z / c)`` (None without a softcap)."""
    import torch

    z = logits.detach()
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    if cap is None:
        return z, None
    t = torch.tanh(z / cap)
    return cap * t, t


@functools.cache
def _function() -> Any:
    import torch
    import torch.distributed as dist

    class VocabParallelCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any, target: Any, start: int, total: int,
                    group: Any, distributed: bool, keep: Any, opts: tuple) -> Any:
            eps, zc, cap, reduction, n_kept = opts
            xp = array_api_compat.array_namespace(logits)
            z, _ = _working(logits, cap)
            local = z.shape[-1]
            top = torch.amax(z, dim=-1) if local else torch.full(
                z.shape[:-1], -math.inf, dtype=z.dtype, device=z.device)
            if distributed:
                dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
            # A row of -inf everywhere (all ranks) would give inf - inf; shift it by 0 instead.
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            inside = (target >= start) & (target < start + local)
            col = torch.where(inside, target - start, torch.zeros_like(target))
            z_y = torch.gather(z, -1, col.unsqueeze(-1)).squeeze(-1) if local else \
                torch.zeros_like(top)
            sums = torch.stack([
                torch.exp(z - top.unsqueeze(-1)).sum(-1),
                torch.where(inside, z_y, torch.zeros_like(z_y)),
                z.sum(-1) if eps else torch.zeros_like(top),
            ])
            if distributed:
                dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
            s, z_y, sum_z = sums[0], sums[1], sums[2]
            lse = top + torch.log(s)
            loss = ce.column_loss(lse, z_y, sum_z, vocab=total, label_smoothing=eps, z_loss=zc)
            loss = torch.where(keep, loss, torch.zeros_like(loss))
            ctx.save_for_backward(logits, target, lse, top, s, keep)
            ctx.meta = (start, total, opts)
            return ce.reduce(loss, reduction, float(n_kept), xp).to(logits.dtype)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_out: Any) -> Any:
            logits, target, lse, top, s, keep = ctx.saved_tensors
            start, total, (eps, zc, cap, reduction, n_kept) = ctx.meta
            xp = array_api_compat.array_namespace(logits)
            z, t = _working(logits, cap)
            shape = z.shape
            local = shape[-1]
            scale = ce.row_scale(keep.reshape(-1), reduction, float(n_kept),
                                 grad_out.to(z.dtype).reshape(-1) if reduction == "none"
                                 else grad_out.to(z.dtype), xp)
            z = z.reshape(-1, local)
            lse = lse.reshape(-1, 1)
            # e^{z − m} / s rather than e^{z − lse}: the rounding of lse = m + log s would be
            # magnified by exp into every probability (1e-5 at logits 1e4 in float32).
            g = torch.exp(z - top.reshape(-1, 1)) / s.reshape(-1, 1)
            flat = target.reshape(-1)
            inside = keep.reshape(-1) & (flat >= start) & (flat < start + local)
            (rows,) = torch.nonzero(inside, as_tuple=True)
            ce.column_gradient_(g, lse, scale, rows, flat[rows] - start, vocab=total,
                                label_smoothing=eps, z_loss=zc,
                                tanh=None if t is None else t.reshape(-1, local))
            return g.reshape(shape).to(logits.dtype), None, None, None, None, None, None, None

    return VocabParallelCrossEntropy


def vocab_parallel_cross_entropy(
    logits_shard: Any,
    target: Any,
    /,
    *,
    group: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> Any:
    r"""Cross-entropy of logits whose vocabulary is split across the ranks of a process group.

    Rank ``r`` of ``group`` holds ``logits_shard`` of shape ``(..., V_r)``: the logits of the
    vocabulary entries ``[V_0 + … + V_{r−1}, V_0 + … + V_r)`` (contiguous, in rank order; the
    slices may differ in size).  Every rank passes the same ``target`` (global class indices)
    and receives the same loss; the gradient with respect to ``logits_shard`` is that rank's
    slice of the gradient of the full computation.

    .. math::
        m_i = \max_r \max_j z^{(r)}_{ij},\quad
        \operatorname{lse}_i = m_i + \log \sum_r \sum_j e^{z^{(r)}_{ij} - m_i},\quad
        \ell_i = \operatorname{lse}_i - (1-\varepsilon) z_{i y_i}
                 - \frac{\varepsilon}{V}\sum_j z_{ij} + c_z \operatorname{lse}_i^2

    Args:
        logits_shard: ``(..., V_r)`` torch tensor, this rank's slice of the logits.
        target: ``(...)`` integer tensor of global class indices in ``[0, V)``, equal on
            every rank.
        group: the ``torch.distributed`` process group over which the vocabulary is split
            (``None``: the default group).  Without an initialised process group the call is
            the single-process cross-entropy of ``logits_shard``.
        ignore_index: tokens with this target give loss 0, gradient 0 and leave the mean.
        label_smoothing: ε in ``[0, 1]``; the smoothing mass is spread over the full
            vocabulary ``V = Σ_r V_r``.
        z_loss: ``c_z ≥ 0`` adds ``c_z·lse²`` per token.
        softcap: ``c > 0`` applies ``c·tanh(z/c)`` to the logits first.
        reduction: ``"mean"`` over the kept tokens (0 when none is kept), ``"sum"`` or
            ``"none"``.

    Returns:
        The loss (a torch tensor, the same on every rank), differentiable with respect to
        ``logits_shard``.

    Note:
        Two all-reduces per call in the forward pass (the max; then the sum of exponentials,
        target logit and logit sum in one tensor) and one small all-reduce of the slice sizes;
        none in the backward pass, which recomputes the exponentials from the saved shard and
        the O(N) log-sum-exps.  The gradient is not differentiable again.  Out-of-range targets
        raise on every rank alike (all ranks see the same ``target``).

    Examples:
        >>> import torch
        >>> from logitkit.distributed import vocab_parallel_cross_entropy
        >>> logits = torch.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
        >>> loss = vocab_parallel_cross_entropy(logits, torch.tensor([0]))  # one process
        >>> loss.backward()
        >>> print(round(loss.item(), 4), logits.grad.round(decimals=4))
        0.2413 tensor([[-0.2144,  0.1753,  0.0391]])

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using
        Model Parallelism" (2019).
    """
    import torch

    if not isinstance(logits_shard, torch.Tensor):
        raise LogitkitTypeError(expected("logits_shard", "a torch tensor", logits_shard))
    if not isinstance(target, torch.Tensor):
        raise LogitkitTypeError(expected("target", "a torch tensor", target))
    if logits_shard.ndim < 1 or not torch.is_floating_point(logits_shard):
        raise LogitkitTypeError(expected("logits_shard", "a floating tensor of shape (..., V_r)",
                                         logits_shard))
    if tuple(target.shape) != tuple(logits_shard.shape[:-1]):
        raise LogitkitValueError(expected("target", f"of shape {tuple(logits_shard.shape[:-1])}",
                                          f"shape {tuple(target.shape)}"))
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise LogitkitTypeError(expected("target", "an integer tensor of class indices",
                                         f"a tensor of dtype {target.dtype}"))
    eps, zc, cap, red = check_column_options(
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, reduction=reduction)

    start, total, distributed = _group_layout(group, int(logits_shard.shape[-1]),
                                              logits_shard.device)
    target = target.to(torch.int64)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None \
        else target != ignore_index
    kept = target[keep]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= total):
        bad = kept[(kept < 0) | (kept >= total)][0]
        raise LogitkitValueError(expected("target", f"class indices in [0, {total})", int(bad)))
    safe_target = torch.where(keep, target, torch.full_like(target, -1))
    opts = (eps, zc, cap, red, int(keep.sum()))
    return _function().apply(logits_shard, safe_target, start, total, group, distributed,
                             keep, opts)
