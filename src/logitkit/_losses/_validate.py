"""Argument checking for the cross-entropy family: turns user input into a row-form ``Problem``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._ce_rows import Problem
from .._core import check_softcap
from .._layout import Axis, Layout, layout, param_rows, to_rows
from .._namespace import (
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_int,
    check_mask,
    check_number,
    check_positive_scalar_or_array,
    check_reduction,
    compute_dtypes,
    expected,
    is_concrete,
    is_numpy,
    namespace,
    to_numpy,
)


@dataclass
class Checked:
    """A validated problem plus what is needed to shape the results."""

    pb: Problem  # rows in the input dtype (cast with `cast` before computing)
    xp: Any
    lay: Layout
    acc: Any  # accumulation dtype
    out_dtype: Any  # loss dtype
    grad_dtype: Any  # dlogits dtype
    logits: Any  # the logits array as given (after `as_array`)
    target: Any
    weight: Any  # the weight array as given, or None
    temperature: Any  # float, or the array as given


def check_probability_targets(q: Any, mask: Any, xp: Any, arg: str = "target") -> None:
    """Eager check that probability targets are non-negative and sum to one (NaN is an error).

    Two streaming passes over the targets and no temporary of their size: the minimum (NaN
    propagates through it) and the row sums accumulated in float64.  A float64 copy of the
    targets, as this once made, cost eight times the kernel's own time on 2048×32000 and
    twice the targets' memory.
    """
    if not is_concrete(q):
        return
    a = to_numpy(q)
    if a.size == 0:
        return
    low = a.min()
    if not low >= 0:
        bad = a[np.isnan(a) | (a < 0)].ravel()[0]
        raise LogitkitValueError(expected(arg, "probabilities (non-negative, not NaN)", bad.item()))
    sums = a.sum(axis=-1, dtype=np.float64)
    if mask is not None:
        rows = to_numpy(mask).any(axis=-1)
        sums = sums[rows]
    k = a.shape[-1]
    eps = float(np.finfo(a.dtype).eps) if a.dtype.kind == "f" else 2.0**-52
    tol = max(1e-5, 4.0 * math.sqrt(k) * eps)
    off = np.abs(sums - 1.0) > tol
    if off.any():
        raise LogitkitValueError(
            expected(arg, f"probabilities that sum to 1 over the class axis (within {tol:.1e})",
                     f"a row summing to {sums[off][0].item()!r}")
        )


def check_ignore_index(ignore_index: object) -> int | None:
    """``ignore_index`` as an int (or None); a bool or a float is a type error."""
    if ignore_index is None:
        return None
    return check_int(ignore_index, "ignore_index", low=None, what="an int or None")


def check_options(
    *, label_smoothing: object, z_loss: object, logit_l2: object, reduction: object
) -> tuple[float, float, float, str]:
    eps = check_number(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    zl = check_number(z_loss, "z_loss", low=0.0, high=math.inf, high_open=True)
    l2 = check_number(logit_l2, "logit_l2", low=0.0, high=math.inf, high_open=True)
    red = check_reduction(reduction)
    return eps, zl, l2, red


def check_column_options(
    *, ignore_index: object, label_smoothing: object, z_loss: object, softcap: object,
    reduction: object
) -> tuple[float, float, float | None, str]:
    """The options of the losses over blocks of columns (``linear_cross_entropy``,
    ``vocab_parallel_cross_entropy``): ``(label_smoothing, z_loss, softcap, reduction)``."""
    check_ignore_index(ignore_index)
    eps, zl, _, red = check_options(label_smoothing=label_smoothing, z_loss=z_loss,
                                    logit_l2=0.0, reduction=reduction)
    return eps, zl, check_softcap(softcap), red


def check_cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: Axis,
    ignore_index: Any,
    weight: Any,
    label_smoothing: Any,
    z_loss: Any,
    logit_l2: Any,
    temperature: Any,
    where: Any,
    softcap: Any,
    reduction: Any,
) -> Checked:
    xp = namespace(logits, target, weight, where, temperature)
    logits = as_array(logits, "logits", xp)
    acc, out_dtype = compute_dtypes(logits, None, xp)
    grad_dtype = out_dtype
    shape = tuple(logits.shape)
    lay = layout(shape, axis, "logits")
    eps, zl, l2, red = check_options(label_smoothing=label_smoothing, z_loss=z_loss,
                                     logit_l2=logit_l2, reduction=reduction)
    cap = check_softcap(softcap)
    n, k = lay.n, lay.k

    temp = check_positive_scalar_or_array(temperature, "temperature", xp, allow_zero=False,
                                          allow_inf=False)
    if not isinstance(temp, float):
        t_rows = param_rows(astype(temp, acc, xp), lay, "temperature", xp)
    else:
        t_rows = temp

    mask = None
    if where is not None:
        mask = to_rows(check_mask(where, shape, xp), lay, xp)

    w = None
    if weight is not None:
        weight = as_array(weight, "weight", xp)
        if tuple(weight.shape) != (k,):
            raise LogitkitValueError(
                expected("weight", f"a 1-d array of shape ({k},), one per class",
                         f"shape {tuple(weight.shape)}"))
        if is_concrete(weight):
            wn = to_numpy(weight).astype(np.float64)
            bad = ~np.isfinite(wn) | (wn < 0)
            if bad.any():
                raise LogitkitValueError(
                    expected("weight", "non-negative and finite", wn[bad][0].item()))
        w = astype(weight, acc, xp)

    target = as_array(target, "target", xp, numeric=False)
    labels = probs = keep = bad_rows = None
    if xp.isdtype(target.dtype, "integral"):
        if tuple(target.shape) != lay.batch_shape:
            raise LogitkitValueError(expected(
                "target", f"class indices of shape {lay.batch_shape} (the logits' shape without "
                f"`axis`) or probabilities of shape {shape}", f"shape {tuple(target.shape)}"))
        check_ignore_index(ignore_index)
        lab = xp.reshape(astype(target, xp.int64, xp), (n,))
        valid = (lab >= 0) & (lab < k)
        if ignore_index is not None:
            keep = lab != int(ignore_index)
            valid = valid | ~keep
        if not is_concrete(valid):  # under jit even a concrete target gives a traced `valid`
            bad_rows = ~valid
        elif not bool(xp.all(valid)):
            # From the target as given: an unsigned label past 2**63 is negative as int64.
            got = to_numpy(xp.reshape(target, (n,)))[~to_numpy(valid)][0].item()
            raise LogitkitValueError(expected("target", f"class indices in [0, {k})", got))
        if keep is None and bad_rows is None and is_numpy(xp):
            # Every label checked valid: the labels as they are (NumPy: nothing keeps them past
            # the call), not a copy through `where` (a tenth of a 65536x128 float32 loss).
            labels = lab
        else:
            ok = valid if keep is None else valid & keep
            labels = xp.where(ok, lab, xp.zeros_like(lab))
    elif xp.isdtype(target.dtype, "real floating"):
        if tuple(target.shape) != shape:
            raise LogitkitValueError(expected(
                "target", f"probabilities of shape {shape} or integer class indices of shape "
                f"{lay.batch_shape}", f"shape {tuple(target.shape)}"))
        if ignore_index is not None:
            raise LogitkitValueError(expected(
                "ignore_index", "None with probability targets (it applies to class indices)",
                ignore_index))
        probs = to_rows(target, lay, xp)
        check_probability_targets(probs, mask, xp)
    else:
        raise LogitkitTypeError(expected(
            "target", "integer class indices or floating probabilities",
            f"an array of dtype {target.dtype}"))

    pb = Problem(
        x=to_rows(logits, lay, xp), labels=labels, probs=probs, mask=mask,
        weight=w, keep=keep, bad=bad_rows, temperature=t_rows, softcap=cap,
        label_smoothing=eps, z_loss=zl, logit_l2=l2, reduction=red,
    )
    return Checked(pb, xp, lay, acc, out_dtype, grad_dtype, logits, target, weight, temp)

