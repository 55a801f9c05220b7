"""KL divergence from logits, and knowledge distillation (forward, reverse and Jensen–Shannon)."""

from __future__ import annotations

import math
from typing import Any

from .._ce_rows import reduce
from .._core import log_softmax, softmax
from .._layout import Axis, layout, to_rows
from .._namespace import (
    ArrayT,
    LogitkitValueError,
    as_array,
    astype,
    check_choice,
    check_mask,
    check_number,
    check_reduction,
    compute_dtypes,
    expected,
    namespace,
    stop_gradient,
)
from ._cross_entropy import cross_entropy

__all__ = ["distillation_loss", "kl_divergence"]


def _xlogx(q: Any, log_q: Any, xp: Any) -> Any:
    """``q·log q`` with ``0·log 0 = 0`` (and no NaN in its derivative)."""
    zero = xp.zeros_like(q)
    pos = q > 0
    return xp.where(pos, q * xp.where(pos, log_q, zero), zero)


def _counted(where: Any, shape: tuple[int, ...], axis: Axis, xp: Any) -> Any:
    """Rows (the reduced shape) with at least one unmasked class, or None without a mask."""
    if where is None:
        return None
    lay = layout(shape, axis)
    m = to_rows(check_mask(where, shape, xp), lay, xp)
    return xp.reshape(xp.any(m, axis=-1), lay.batch_shape)


def _reduce_rows(rows: Any, counted: Any, reduction: str, xp: Any) -> Any:
    """``"none"``, ``"sum"``, or the mean over the counted rows (0 when none counts)."""
    if counted is None:
        return reduce(rows, reduction, float(math.prod(rows.shape)), xp)
    rows = xp.where(counted, rows, 0.0)
    return reduce(rows, reduction, xp.sum(astype(counted, rows.dtype, xp)), xp)


def kl_divergence(
    target: Any,
    logits: ArrayT,
    /,
    *,
    axis: Axis = -1,
    log_target: bool = False,
    temperature: Any = 1.0,
    where: Any = None,
    reduction: str = "mean",
) -> ArrayT:
    r"""``KL(target ‖ softmax(logits / T))``: the divergence of the model from the target.

    .. math::
        \operatorname{KL}(q \,\|\, p) = \sum_c q_c (\log q_c - \log p_c)
            = H(q, p) - H(q),\qquad p = \operatorname{softmax}(z / T)

    The direction is the one of ``torch.nn.functional.kl_div(log_softmax(logits), target)`` and
    ``optax.kl_divergence(log_softmax(logits), target)``: the target comes first and the expectation
    is under the target.

    Args:
        target: probabilities ``q`` of the logits' shape (or ``log q`` with ``log_target``).
        logits: ``(..., K, ...)`` scores of the model distribution ``p``.
        axis: the class axis.
        log_target: ``target`` holds log-probabilities (``-inf`` for zero probability).
        temperature: positive ``T`` applied to the logits (scalar or per row).
        where: boolean mask of the classes that take part; the target must put no mass on
            masked classes (they have ``p = 0``, so the divergence would be infinite).
        reduction: ``"none"``, ``"sum"``, or ``"mean"`` over the rows (the per-example
            ``batchmean``, never a mean over classes).

    Returns:
        The divergence (nats), of the logits' array type.

    Note:
        ``0·log 0 = 0``: classes with zero target probability contribute nothing, whatever their
        logit; target mass on a class with ``p = 0`` gives ``+inf``.  Fully masked rows give 0 and
        leave the mean.  The target is checked to be a distribution on eager arrays.

    Examples:
        >>> import numpy as np
        >>> from logitkit import kl_divergence
        >>> q = np.array([0.5, 0.5, 0.0])
        >>> print(round(float(kl_divergence(q, np.log(q + 1e-300))), 12))
        0.0
        >>> print(round(float(kl_divergence(q, np.zeros(3))), 6))  # log 3 - log 2
        0.405465
    """
    xp = namespace(target, logits, where, temperature)
    logits = as_array(logits, "logits", xp)
    target = as_array(target, "target", xp)
    if not isinstance(log_target, bool):
        raise LogitkitValueError(expected("log_target", "a bool", log_target))
    check_reduction(reduction)
    if tuple(target.shape) != tuple(logits.shape):
        raise LogitkitValueError(expected("target", f"of the logits' shape {tuple(logits.shape)}",
                                          f"shape {tuple(target.shape)}"))
    acc, _ = compute_dtypes(logits, None, xp)
    if not xp.isdtype(target.dtype, "real floating"):
        target = astype(target, acc, xp)
    if log_target:
        log_q = target
        q = xp.exp(log_q)
    else:
        q = target
        log_q = xp.log(xp.where(q > 0, q, xp.ones_like(q)))
    ce = cross_entropy(logits, q, axis=axis, temperature=temperature, where=where,
                       reduction="none")
    lay = layout(tuple(logits.shape), axis)
    neg_h = xp.reshape(xp.sum(to_rows(_xlogx(q, log_q, xp), lay, xp), axis=-1), lay.batch_shape)
    kl = astype(ce, neg_h.dtype, xp) + neg_h
    counted = _counted(where, tuple(logits.shape), axis, xp)
    return astype(_reduce_rows(kl, counted, reduction, xp), ce.dtype, xp)


def distillation_loss(
    student_logits: ArrayT,
    teacher_logits: Any,
    /,
    *,
    temperature: float = 1.0,
    divergence: str = "forward",
    labels: Any = None,
    alpha: float = 0.5,
    ignore_index: int | None = None,
    axis: Axis = -1,
    where: Any = None,
    reduction: str = "mean",
) -> ArrayT:
    r"""Knowledge-distillation loss of Hinton et al. (2015), with the ``T²`` factor.

    .. math::
        \ell = \alpha\, T^2 D\bigl(p_T^{\text{teacher}},\, p_T^{\text{student}}\bigr)
               + (1-\alpha)\, \operatorname{CE}(\text{student}, \text{labels}),
        \qquad p_T = \operatorname{softmax}(z / T)

    with ``D`` the forward ``KL(teacher ‖ student)``, the reverse ``KL(student ‖ teacher)``, or the
    Jensen–Shannon divergence ``½KL(t‖m) + ½KL(s‖m)``, ``m = (t + s)/2``.  The ``T²`` keeps the
    soft term's gradient, ``T·(p_s − p_t)`` for the forward KL, on the scale of the hard term's.

    Args:
        student_logits: ``(..., K, ...)`` logits of the student (the ones that get gradients).
        teacher_logits: logits of the teacher, same shape; a constant for differentiation.
        temperature: positive finite ``T`` applied to both.
        divergence: ``"forward"``, ``"reverse"`` or ``"jsd"``.
        labels: optional integer class indices (the logits' shape without ``axis``) for the
            hard cross-entropy term at temperature 1; without them the loss is the soft term alone
            and ``alpha`` is not used.
        alpha: weight in ``[0, 1]`` of the soft term when ``labels`` are given.
        ignore_index: with ``labels``, rows with this label are left out of both terms and of the
            mean.
        axis: the class axis.
        where: boolean mask of the classes that take part (for both models).
        reduction: ``"none"``, ``"sum"``, or ``"mean"``: the per-example mean (DistilBERT's
            ``batchmean``), not a mean over classes.

    Returns:
        The loss, of the student logits' array type.

    Note:
        Fully masked and ignored rows give 0 and leave the mean; classes where the teacher has
        probability 0 contribute nothing to the forward KL.

    Examples:
        >>> import numpy as np
        >>> from logitkit import distillation_loss
        >>> s = np.array([[1.0, 0.0, -1.0]])
        >>> print(round(float(distillation_loss(s, s, temperature=4.0)), 12))
        0.0
        >>> t = np.array([[0.0, 2.0, 0.0]])
        >>> a = distillation_loss(s, t, temperature=2.0, divergence="jsd")
        >>> b = distillation_loss(t, s, temperature=2.0, divergence="jsd")
        >>> bool(np.isclose(a, b))  # the Jensen-Shannon divergence is symmetric
        True

    References:
        Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
        Sanh et al., "DistilBERT" (2019).
    """
    xp = namespace(student_logits, teacher_logits, labels, where)
    student = as_array(student_logits, "student_logits", xp)
    teacher = as_array(teacher_logits, "teacher_logits", xp)
    if tuple(teacher.shape) != tuple(student.shape):
        raise LogitkitValueError(expected(
            "teacher_logits", f"of the student logits' shape {tuple(student.shape)}",
            f"shape {tuple(teacher.shape)}"))
    t = check_number(temperature, "temperature", low=0.0, low_open=True, high=math.inf,
                     high_open=True)
    check_choice(divergence, "divergence", ("forward", "reverse", "jsd"))
    a = check_number(alpha, "alpha", low=0.0, high=1.0)
    check_reduction(reduction)
    if labels is None and ignore_index is not None:
        raise LogitkitValueError(expected("ignore_index", "None when no `labels` are given",
                                          ignore_index))
    acc, out_dtype = compute_dtypes(student, None, xp)
    teacher = stop_gradient(astype(teacher, acc, xp), xp)
    student = astype(student, acc, xp)
    opts = dict(axis=axis, temperature=t, where=where)
    lay = layout(tuple(student.shape), axis)

    def row_sum(v: Any) -> Any:
        return xp.reshape(xp.sum(to_rows(v, lay, xp), axis=-1), lay.batch_shape)

    if divergence == "forward":
        p_t = softmax(teacher, **opts)
        soft = kl_divergence(p_t, student, reduction="none", **opts)
    else:
        log_s = log_softmax(student, **opts)
        log_t = log_softmax(teacher, **opts)
        p_s, p_t = xp.exp(log_s), xp.exp(log_t)
        if divergence == "reverse":
            soft = row_sum(_xlogx(p_s, log_s, xp) - _plogq(p_s, log_t, xp))
        else:
            log_m = _log_mean(log_s, log_t, xp)
            soft = 0.5 * row_sum(_xlogx(p_t, log_t, xp) - _plogq(p_t, log_m, xp)
                                 + _xlogx(p_s, log_s, xp) - _plogq(p_s, log_m, xp))
    soft = (t * t) * soft
    counted = _counted(where, tuple(student.shape), axis, xp)
    if labels is None:
        total = soft
    else:
        hard = cross_entropy(student, labels, axis=axis, where=where, ignore_index=ignore_index,
                             reduction="none")
        total = a * soft + (1.0 - a) * hard
        if ignore_index is not None:
            labels_arr = as_array(labels, "labels", xp)
            keep = labels_arr != int(ignore_index)
            counted = keep if counted is None else counted & keep
    return astype(_reduce_rows(total, counted, reduction, xp), out_dtype, xp)


def _plogq(p: Any, log_q: Any, xp: Any) -> Any:
    """``p·log q`` with ``0·log q = 0`` even where ``q = 0``."""
    zero = xp.zeros_like(p)
    pos = p > 0
    return xp.where(pos, p * xp.where(pos, log_q, zero), zero)


def _log_mean(log_a: Any, log_b: Any, xp: Any) -> Any:
    """``log((a + b)/2)`` from the logs (``-inf`` only where both are ``-inf``)."""
    hi = xp.maximum(log_a, log_b)
    lo = xp.minimum(log_a, log_b)
    finite = xp.isfinite(hi)
    hi_s = xp.where(finite, hi, xp.zeros_like(hi))
    lo_s = xp.where(finite, lo, xp.zeros_like(lo))
    out = hi_s + xp.log1p(xp.exp(lo_s - hi_s)) - math.log(2.0)
    return xp.where(finite, out, hi)
