"""The fused cross-entropy with its gradient: the Python side of the native kernel (``csrc/ce.cpp``).

Per row (class axis last, ``z = softcap(x)/T``, masked classes excluded, ``W_c = w_c·y_c`` the
weighted smoothed target) the kernel computes the loss ``Σ_c W_c lse − Σ_c W_c z_c + c_z lse² +
(λ/2)‖x‖²`` and writes, once, the gradient ``g_c = s·([coef·p_c − W_c]/T·softcap'(x_c) + λx_c)``
with ``coef = Σ_c W_c + 2 c_z lse`` and ``s`` the reduction's scale.  The gradient may overwrite
the logits (``out=logits``).  Rows that do not count (ignored label, every class masked) get a
zero gradient and loss; rows the kernel flags (a NaN, a +inf, nothing finite, a label outside
``[0, K)``, values that would overflow) are left untouched, and recomputed here by the generic
path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _call(x: np.ndarray, out: np.ndarray | None, *, labels: np.ndarray | None,
          probs: np.ndarray | None, mask: np.ndarray | None, weight: np.ndarray | None,
          counted: np.ndarray, scales: np.ndarray, eps: float, cz: float, lam: float, cap: float,
          inv_t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel over the rows of ``x`` (N, K); returns ``(loss, lse, coef, special)``."""
    from . import native

    n = x.shape[0]
    loss = np.zeros(n, dtype=np.float64)
    stat = np.zeros((2, n), dtype=np.float64)
    special = np.zeros(n, dtype=np.bool_)
    native().cross_entropy(
        x=x, out=out, labels=labels, probs=probs, mask=mask, weight=weight, counted=counted,
        scales=scales, label_smoothing=eps, z_loss=cz, logit_l2=lam, softcap=cap, inv_t=inv_t,
        loss=loss, lse=stat[0], coef=stat[1], special=special)
    return loss, stat[0], stat[1], special


def cross_entropy_with_grad(logits: Any, target: Any, /, *, out: Any = None, axis: Any = -1,
                            ignore_index: Any = None, weight: Any = None,
                            label_smoothing: Any = 0.0, z_loss: Any = 0.0, logit_l2: Any = 0.0,
                            temperature: Any = 1.0, where: Any = None, softcap: Any = None,
                            reduction: str = "mean") -> Any:
    """``(loss, dlogits)`` by :func:`ce_rows`, or ``None`` when the kernel does not apply.

    The arguments were validated by :func:`logitkit.cross_entropy_with_grad`.
    """
    from . import _axis, _empty, _float_array, _inv_temperature, _Plan, _scalar
    from . import _softcap as _cap

    x = _float_array(logits)
    if x is None or not x.flags.c_contiguous or reduction not in ("mean", "sum", "none"):
        return None
    ax = _axis(axis, x.ndim)
    if ax is None or ax[1] != x.ndim - 1:
        return None
    plan = _Plan(x, *ax)
    n, k = plan.outer, plan.k
    if n == 0 or k == 0:
        return None
    x2 = x.reshape(n, k)
    dt = x.dtype
    inv_t = _inv_temperature(temperature, dt)
    cap = _cap(softcap, dt)
    eps, cz, lam = _scalar(label_smoothing), _scalar(z_loss), _scalar(logit_l2)
    if inv_t is None or cap is None or eps is None or cz is None or lam is None:
        return None
    mask_info = plan.mask(where)
    if mask_info is None:
        return None
    mask, has_mask = mask_info

    if type(target) is not np.ndarray:
        return None
    is_prob = target.dtype.kind == "f"
    if is_prob:
        if target.shape != x.shape:
            return None
        probs = np.ascontiguousarray(target.reshape(n, k), dtype=dt)
        labels = None
        keep = None
    elif target.dtype.kind in "iu":
        if target.size != n:
            return None
        # The kernels flag a label out of [0, K) for the generic path (which raises for it).
        labels = np.ascontiguousarray(target.reshape(n), dtype=np.int64)
        keep = None
        if ignore_index is not None:
            keep = labels != int(ignore_index)
            labels = np.where(keep, labels, 0)
        probs = None
    else:
        return None

    has_weight = weight is not None
    if has_weight:
        if type(weight) is not np.ndarray:
            return None
        w = np.ascontiguousarray(weight, dtype=dt)
        if w.shape != (k,):
            return None
    else:
        w = None

    counted = np.ones(n, dtype=np.bool_) if keep is None else keep
    if has_mask:
        alive = np.asarray(mask.any(axis=1))
        counted = counted & (alive if alive.size == n else bool(alive[0]))
    if w is not None and labels is not None:
        denom = float(np.sum(w[np.clip(labels, 0, k - 1)][counted], dtype=np.float64))
    elif keep is None and not has_mask:
        denom = float(n)
    else:
        denom = float(np.count_nonzero(counted))
    if reduction == "mean":
        scale = 1.0 / denom if denom > 0 else 0.0
    else:
        scale = 1.0

    if out is None:
        g = _empty(x2.shape, dt, like=x2)
    else:
        if type(out) is not np.ndarray or out.shape != x.shape or out.dtype != dt:
            return None
        if not out.flags.c_contiguous or not out.flags.writeable:
            return None
        same = out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
        if not same and np.shares_memory(out, x):
            # Partial overlap: the row-by-row order would corrupt the logits.  The same array
            # is fine: each row's logits are read before its gradient row is written.
            return None
        g = out.reshape(n, k)

    loss_rows, _lse, _coef, special = _call(
        x2, g, labels=labels, probs=probs, mask=mask if has_mask else None, weight=w,
        counted=counted,
        scales=np.full(1, scale), eps=eps, cz=cz, lam=lam, cap=float(cap), inv_t=float(inv_t))

    if special.any():
        _fix_special(special, x2, g, labels, probs, mask if has_mask else None, scale, loss_rows,
                     dict(ignore_index=None, weight=weight, label_smoothing=label_smoothing,
                          z_loss=z_loss, logit_l2=logit_l2, temperature=temperature,
                          softcap=softcap))

    if reduction == "none":
        loss: Any = loss_rows.astype(dt).reshape(plan.reduced_shape)
    else:
        total = float(np.sum(loss_rows))
        if reduction == "sum":
            loss = dt.type(total)
        else:
            loss = np.asarray(total / denom if denom > 0 else 0.0, dtype=dt)
    return loss, (out if out is not None else g.reshape(x.shape))


def _fix_special(special: np.ndarray, x2: np.ndarray, g: np.ndarray, labels: np.ndarray | None,
                 probs: np.ndarray | None, mask: np.ndarray | None, scale: float,
                 loss_rows: np.ndarray, options: dict[str, Any]) -> None:
    """Rows with a NaN, a +inf or nothing finite: the generic path, per row, then scaled."""
    from .. import losses
    from . import fast_path

    idx = np.flatnonzero(special)
    xs = np.array(x2[idx])
    ts = labels[idx] if labels is not None else probs[idx]  # type: ignore[index]
    ws = None
    if mask is not None:
        ws = np.array(np.broadcast_to(mask, x2.shape)[idx])
    with fast_path(False):
        ls, gs = losses.cross_entropy_with_grad(xs, ts, where=ws, reduction="none", **options)
    loss_rows[idx] = ls
    g[idx] = gs * gs.dtype.type(scale)


# --------------------------------------------------------------------------------------------
# the torch autograd adapter on CPU: the same kernel through zero-copy NumPy views
# --------------------------------------------------------------------------------------------


def _problem_arrays(pb: Any) -> dict[str, Any] | None:
    """Kernel arguments for a row-form problem of torch tensors (see ``_autodiff._ce_rows``)."""
    from . import _torch_view

    x = _torch_view(pb.x)
    if x is None or x.ndim != 2 or pb.bad is not None:
        return None
    n, k = x.shape
    if n == 0 or k == 0:
        return None
    dt = x.dtype
    temp = pb.temperature
    if not isinstance(temp, float) or not (0.0 < temp < math.inf):
        return None
    inv_t = dt.type(1.0) / dt.type(temp)
    if not np.isfinite(inv_t):
        return None
    args: dict[str, Any] = dict(
        labels=None, probs=None, mask=None, weight=None, eps=float(pb.label_smoothing),
        cz=float(pb.z_loss), lam=float(pb.logit_l2),
        cap=0.0 if pb.softcap is None else float(dt.type(pb.softcap)), inv_t=float(inv_t))
    if pb.probs is not None:
        probs = _torch_view(pb.probs.detach())
        if probs is None or probs.shape != x.shape or probs.dtype != dt:
            return None
        args["probs"] = probs
    else:
        args["labels"] = np.ascontiguousarray(pb.labels.detach().cpu().numpy(), dtype=np.int64)
    if pb.mask is not None:
        args["mask"] = np.ascontiguousarray(pb.mask.detach().cpu().numpy(), dtype=np.bool_)
    if pb.weight is not None:
        args["weight"] = np.ascontiguousarray(pb.weight.detach().cpu().numpy(), dtype=dt)
    keep = None if pb.keep is None else pb.keep.detach().cpu().numpy().astype(np.bool_)
    counted = np.ones(n, dtype=np.bool_) if keep is None else keep
    if args["mask"] is not None:
        counted = counted & args["mask"].any(axis=1)
    if args["labels"] is not None:
        args["labels"] = np.where(counted, args["labels"], 0)
    args["counted"] = np.ascontiguousarray(counted)
    return {"x": x, **args}


def torch_forward(pb: Any) -> Any:
    """The adapter's forward statistics (``RowStats``) by the kernel, or ``None``."""
    import torch

    from .._autodiff._ce_rows import RowStats

    args = _problem_arrays(pb)
    if args is None:
        return None
    x, counted, labels, w = args.pop("x"), args["counted"], args["labels"], args["weight"]
    loss, lse, coef, special = _call(x, None, scales=np.ones(1), **args)
    if special.any():
        return None  # the generic forward defines NaN, +inf and all −inf rows
    if w is not None and labels is not None:
        denom = float(np.sum(np.where(counted, w[labels], 0), dtype=np.float64))
    else:
        denom = float(np.count_nonzero(counted))
    dt = torch.float32 if x.dtype == np.float32 else torch.float64
    return RowStats(
        torch.from_numpy(loss).to(dt),
        torch.from_numpy(lse).to(dt)[:, None],
        torch.from_numpy(coef).to(dt)[:, None],
        torch.from_numpy(counted),
        torch.from_numpy(special),
        torch.tensor(denom, dtype=dt),
    )


def torch_gradient(pb: Any, stats: Any, scale: Any) -> Any:
    """``∂/∂x`` of ``Σ_i scale_i · loss_i`` into one fresh tensor by the kernel, or ``None``."""
    import torch

    from . import _empty

    args = _problem_arrays(pb)
    if args is None or bool(stats.special.any()):
        return None
    x = args.pop("x")
    n = x.shape[0]
    args["counted"] = np.ascontiguousarray(stats.counted.detach().cpu().numpy(), dtype=np.bool_)
    if args["labels"] is not None:
        args["labels"] = np.where(args["counted"], args["labels"], 0)
    scales = np.ascontiguousarray(scale.detach().cpu().numpy().reshape(-1), dtype=np.float64)
    if scales.size not in (1, n):
        return None
    gv = _empty(tuple(pb.x.shape), x.dtype, like=x)
    g = torch.from_numpy(gv)
    _loss, _lse, _coef, special = _call(x, gv.reshape(x.shape), scales=scales, **args)
    if special.any():
        return None
    return g
