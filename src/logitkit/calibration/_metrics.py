"""Calibration metrics on probabilities: ECE (l1, l2, max), MCE, Brier score, NLL, accuracy.

Each binned metric is a function of per-bin sums (:mod:`._binning`), turned into a number by
:func:`calibration_error_from_sums`, which :class:`~logitkit.calibration.CalibrationStats` shares.
"""

from __future__ import annotations

from typing import Any

from .._core import log_softmax
from .._namespace import (
    Array,
    LogitkitValueError,
    as_array,
    astype,
    check_choice,
    expected,
    namespace,
)
from ._binning import (
    NORMS,
    acc_dtype,
    binned,
    check_labels,
    check_n_bins,
    onehot,
    prepare,
    safe_log,
)
from ._dask import is_dask

__all__ = ["accuracy", "brier_score", "calibration_error_from_sums", "ece", "mce", "nll"]


def calibration_error_from_sums(
    sums: Array, n: Any, *, norm: str, debias: bool, xp: Any
) -> Array:
    """The calibration error from per-bin sums ``(count, Σ conf, Σ correct)``.

    ``sums`` has shape ``(3, B)`` (top-label) or ``(3, K, B)`` (one row per class); ``n`` is the
    number of predictions.  Per column, l1 is ``Σ_b (n_b/N)|acc_b − conf_b|``, l2 the square root
    of ``Σ_b (n_b/N)(acc_b − conf_b)²`` (minus the Kumar et al. bias term when ``debias``), max the
    largest gap over non-empty bins.  Classwise columns are combined as the mean (l1), the root
    of the mean square (l2) and the max (max), as in Kumar et al. (2019).
    """
    count, s_conf, s_hit = sums[0, ...], sums[1, ...], sums[2, ...]
    zero = xp.zeros((), dtype=count.dtype)
    one = xp.ones((), dtype=count.dtype)
    nonempty = count > 0
    safe = xp.where(nonempty, count, one)
    gap = xp.where(nonempty, (s_hit - s_conf) / safe, zero)
    weight = count / n
    if norm == "max":
        return xp.max(xp.abs(gap))
    if norm == "l1":
        per_col = xp.sum(weight * xp.abs(gap), axis=-1)
        return xp.mean(per_col) if per_col.ndim else per_col
    sq = weight * gap * gap
    if debias:
        # Kumar, Liang & Ma (2019): subtract the variance of each bin's mean label,
        # ybar (1 - ybar) / (n_b - 1); bins with fewer than two points contribute nothing.
        ybar = xp.where(nonempty, s_hit / safe, zero)
        two = count >= 2
        denom = xp.where(two, count - 1, one)
        sq = xp.where(two, sq - weight * ybar * (1 - ybar) / denom, zero)
    per_col = xp.maximum(xp.sum(sq, axis=-1), zero)
    return xp.sqrt(xp.mean(per_col) if per_col.ndim else per_col)


def ece(
    probs: Any,
    y: Any,
    /,
    *,
    n_bins: int = 15,
    binning: str = "uniform",
    norm: str = "l1",
    mode: str = "top-label",
    debias: bool = False,
) -> Any:
    r"""Expected calibration error of predicted probabilities.

    Predictions are grouped into ``n_bins`` bins by confidence; the error is the gap between
    accuracy and mean confidence per bin, weighted by the share of predictions in the bin:

    .. math::
        \mathrm{ECE}_{l1} = \sum_{b=1}^{B} \frac{n_b}{N}\,\bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|,
        \qquad
        \mathrm{ECE}_{l2} = \Bigl(\sum_b \frac{n_b}{N}(\mathrm{acc}_b - \mathrm{conf}_b)^2\Bigr)^{1/2},
        \qquad
        \mathrm{ECE}_{\max} = \max_{b:\,n_b>0} \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    Args:
        probs: ``(N, K)`` probabilities (rows sum to one), or ``(N,)`` / ``(N, 1)`` the
            probability of class 1 of a binary problem (expanded to ``[1 − p, p]``).
        y: ``(N,)`` integer class labels in ``[0, K)``.
        n_bins: number of bins ``B``.
        binning: ``"uniform"``: bins ``((b−1)/B, b/B]``, right-closed as in Guo et al. (2017);
            ``"quantile"``: equal-mass bins whose inner edges are the inverted-CDF empirical
            quantiles of the confidences (right-closed too).
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).
        mode: ``"top-label"``: the confidence is the largest probability and "correct" means its
            class is the label; ``"classwise"``: every class column is binned on its own against
            ``y == k`` and the per-class errors are averaged (l1), root-mean-squared (l2) or
            maximised (max).
        debias: for ``norm="l2"`` only, subtract each bin's sampling variance
            ``ȳ_b(1 − ȳ_b)/(n_b − 1)`` (Kumar et al. 2019); bins with one point then count 0, and
            a negative total is clipped to 0.

    Returns:
        A 0-d array of the input's array type (float64 where the backend has it).  Dask
        arrays give a lazy 0-d Dask array: one map-reduce of per-block bin sums (uniform bins).

    Note:
        A confidence of exactly 0 lands in the first bin and exactly 1 in the last; a value equal
        to an edge ``b/B`` (computed as the correctly rounded ``b / B``) lands in the bin it
        closes.  torchmetrics' bins are left-closed, so the two agree except for values exactly
        on an edge.  ``argmax`` ties pick the first class.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import ece
        >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        >>> y = np.array([0, 1, 1, 0])
        >>> print(round(float(ece(probs, y, n_bins=5)), 6))
        0.25
        >>> print(round(float(ece(probs, y, n_bins=5, norm="max")), 6))
        0.4

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
        Kumar, Liang & Ma, "Verified Uncertainty Calibration", NeurIPS 2019.
        Nixon et al., "Measuring Calibration in Deep Learning", CVPR Workshops 2019.
    """
    n_bins = check_n_bins(n_bins)
    check_choice(norm, "norm", NORMS)
    if not isinstance(debias, bool):
        raise LogitkitValueError(expected("debias", "a bool", debias))
    if debias and norm != "l2":
        raise LogitkitValueError(expected("debias", "False unless norm='l2'", debias))
    if is_dask(probs, y):  # one map-reduce over the row blocks, a lazy result
        from ._dask import ece as dask_ece

        return dask_ece(probs, y, n_bins=n_bins, binning=binning, norm=norm, mode=mode,
                        debias=debias)
    xp, p, labels = prepare(probs, y)
    sums, _ = binned(p, labels, n_bins=n_bins, binning=binning, mode=mode, xp=xp)
    return calibration_error_from_sums(sums, int(p.shape[0]), norm=norm, debias=debias, xp=xp)


def mce(
    probs: Any, y: Any, /, *, n_bins: int = 15, binning: str = "uniform", mode: str = "top-label"
) -> Any:
    r"""Maximum calibration error: the largest accuracy–confidence gap over non-empty bins.

    .. math::
        \mathrm{MCE} = \max_{b:\,n_b>0} \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` for a binary problem (see :func:`ece`).
        y: ``(N,)`` integer labels.
        n_bins: number of bins.
        binning: ``"uniform"`` (right-closed) or ``"quantile"``.
        mode: ``"top-label"`` or ``"classwise"`` (the max over classes and bins).

    Returns:
        A 0-d array of the input's array type; equals ``ece(..., norm="max")``.

    Note:
        Bins without predictions are ignored; MCE is sensitive to sparsely populated bins.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import mce
        >>> print(round(float(mce(np.array([0.9, 0.9, 0.2]), np.array([1, 0, 0]))), 6))
        0.4
    """
    return ece(probs, y, n_bins=n_bins, binning=binning, norm="max", mode=mode)


def brier_score(probs: Any, y: Any, /) -> Any:
    r"""Brier score: the mean over rows of the squared distance to the one-hot label.

    .. math::
        \mathrm{BS} = \frac{1}{N}\sum_{i=1}^{N}\sum_{k=1}^{K}\bigl(p_{ik} - [y_i = k]\bigr)^2

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` for a binary problem.
        y: ``(N,)`` integer labels.

    Returns:
        A 0-d array in ``[0, 2]``.

    Note:
        A single binary column is expanded to ``[1 − p, p]``, so the value is
        ``2·mean((p − y)²)``: twice scikit-learn's binary ``brier_score_loss``, and equal to its
        multiclass form on the two columns.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import brier_score
        >>> print(round(float(brier_score(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))), 6))
        0.37
    """
    if is_dask(probs, y):
        from ._dask import mean_of_stats

        return mean_of_stats(probs, y, "sum_brier")
    xp, p, labels = prepare(probs, y)
    diff = p - onehot(labels, int(p.shape[1]), p, xp)
    return xp.mean(xp.sum(diff * diff, axis=1))


def nll(probs: Any, y: Any, /, *, from_logits: bool = False) -> Any:
    r"""Negative log-likelihood (log loss, in nats) of the labels.

    .. math::
        \mathrm{NLL} = -\frac{1}{N}\sum_{i=1}^{N} \log p_{i, y_i},
        \qquad p = \operatorname{softmax}(z) \text{ when } \texttt{from\_logits}

    Args:
        probs: ``(N, K)`` probabilities (or ``(N,)`` binary), or logits when ``from_logits``.
        y: ``(N,)`` integer labels.
        from_logits: ``probs`` holds logits; the log-probabilities come from
            :func:`logitkit.log_softmax`, which is exact where ``log(softmax)`` would underflow.

    Returns:
        A 0-d array; ``inf`` when a label has probability exactly 0.

    Note:
        No clipping: a zero probability on the true class is an infinite loss, reported as such.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import nll
        >>> print(round(float(nll(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 0]))), 6))
        0.399253
        >>> print(round(float(nll(np.array([[0.0, 800.0]]), np.array([0]), from_logits=True)), 1))
        800.0
    """
    if is_dask(probs, y):
        from ._dask import mean_of_stats, nll_from_logits

        return nll_from_logits(probs, y) if from_logits else mean_of_stats(probs, y, "sum_nll")
    if not from_logits:
        xp, p, labels = prepare(probs, y)
        py = xp.sum(p * onehot(labels, int(p.shape[1]), p, xp), axis=1)
        return -xp.mean(safe_log(py, xp))
    xp = namespace(probs, y)
    z = as_array(probs, "probs", xp)
    if z.ndim != 2 or int(z.shape[0]) == 0:
        raise LogitkitValueError(expected("probs", "logits of shape (N, K) with N >= 1",
                                          f"shape {tuple(z.shape)}"))
    z = astype(z, acc_dtype(xp), xp)
    labels = check_labels(y, int(z.shape[0]), int(z.shape[1]), xp)
    logp = log_softmax(z, axis=1)
    picked = xp.sum(xp.where(onehot(labels, int(z.shape[1]), z, xp) > 0, logp,
                             xp.zeros((), dtype=z.dtype)), axis=1)
    return -xp.mean(picked)


def accuracy(probs: Any, y: Any, /) -> Any:
    r"""Top-1 accuracy: the share of rows whose most probable class is the label.

    .. math::
        \mathrm{acc} = \frac{1}{N}\sum_i \bigl[\arg\max_k p_{ik} = y_i\bigr]

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` binary probabilities.
        y: ``(N,)`` integer labels.

    Returns:
        A 0-d array in ``[0, 1]``.

    Note:
        Ties pick the first class (``argmax``).

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import accuracy
        >>> print(float(accuracy(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))))
        0.5
    """
    if is_dask(probs, y):
        from ._dask import mean_of_stats

        return mean_of_stats(probs, y, "n_correct")
    xp, p, labels = prepare(probs, y)
    pred = xp.argmax(p, axis=1)
    return xp.mean(astype(pred == astype(labels, pred.dtype, xp), p.dtype, xp))
