"""Calibration metrics: ECE (l1, l2, max; uniform or equal-mass bins; top-label or class-wise),
MCE, Brier score and its decomposition, NLL, accuracy — thin functions of the engine's sums.

Each metric is a *plan*: the :class:`~._engine.Spec` of what one pass over the predictions must
accumulate, and a function of the resulting sums (:mod:`._formulas`).  :func:`._measure.evaluate`
runs the plan on NumPy, torch, JAX, array-api-strict or Dask input;
:func:`~logitkit.calibration.bootstrap` runs the same plan with row groups and evaluates the same
function on resampled sums.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .._namespace import (
    LogitkitTypeError,
    LogitkitValueError,
    check_choice,
    check_int,
    expected,
)
from ._binning import NORMS
from ._engine import Spec, Sums
from ._formulas import brier_parts, calibration_error
from ._measure import Binning, check_temperature, evaluate, n_rows

__all__ = [
    "PLANS",
    "accuracy",
    "brier_decomposition",
    "brier_score",
    "ece",
    "mce",
    "nll",
]

DECOMPOSITION = ("brier", "calibration", "refinement", "within_bin", "resolution", "uncertainty")

#: Bins with fewer predictions than this are left out of the maximum (MCE) by default.
MIN_COUNT = 10

Plan = tuple[Spec, Callable[[Sums, Any], Any]]


def _check_flag(value: object, arg: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise LogitkitTypeError(expected(arg, "a bool", value))
    return bool(value)


# --------------------------------------------------------------------------------------------
# values of sums
# --------------------------------------------------------------------------------------------


def _error_value(sums: Sums, xp: Any, *, norm: str, debias: bool, min_count: int,
                 classwise: bool) -> Any:
    b = sums.cw if classwise else sums.bins
    assert b is not None
    return calibration_error(b[:, 0, ...], b[:, 1, ...], b[:, 2, ...], sums.n, norm=norm,
                             debias=debias, classwise=classwise, min_count=min_count, xp=xp)


def _share(sums: Sums, xp: Any, *, field: str) -> Any:
    return getattr(sums, field) / sums.n


def _decomposition(sums: Sums, xp: Any, *, classwise: bool) -> dict[str, Any]:
    if classwise:
        c = sums.cw
        assert c is not None
        return brier_parts(c[:, 0, ...], c[:, 1, ...], c[:, 2, ...], c[:, 3, ...], c[:, 4, ...],
                           sums.n, classwise=True, xp=xp)
    b = sums.bins
    assert b is not None
    return brier_parts(b[:, 0, ...], b[:, 1, ...], b[:, 2, ...], b[:, 3, ...], b[:, 4, ...],
                       sums.n, classwise=False, xp=xp)


# --------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------


def ece_plan(x: Any, *, n_bins: object = 15, binning: str = "uniform", norm: str = "l1",
             mode: str = "top-label", debias: bool = False, min_count: int = MIN_COUNT,
             edges: Any = None, from_logits: bool = False, temperature: float = 1.0) -> Plan:
    bins = Binning(n_bins, binning, mode, edges)
    check_choice(norm, "norm", NORMS)
    if _check_flag(debias, "debias") and norm != "l2":
        raise LogitkitValueError(expected("debias", "False unless norm='l2'", debias))
    min_count = check_int(min_count, "min_count")
    spec = Spec(from_logits=_check_flag(from_logits, "from_logits"),
                beta=1.0 / check_temperature(temperature), brier=False, nll=False,
                **bins.fields(n_rows(x)))
    return spec, partial(_error_value, norm=norm, debias=debias, min_count=min_count,
                         classwise=bins.classwise)


def mce_plan(x: Any, *, n_bins: object = 15, binning: str = "uniform", mode: str = "top-label",
             min_count: int = MIN_COUNT, edges: Any = None, from_logits: bool = False,
             temperature: float = 1.0) -> Plan:
    return ece_plan(x, n_bins=n_bins, binning=binning, norm="max", mode=mode,
                    min_count=min_count, edges=edges, from_logits=from_logits,
                    temperature=temperature)


def _total_plan(field: str, *, from_logits: bool = False, temperature: float = 1.0) -> Plan:
    spec = Spec(from_logits=_check_flag(from_logits, "from_logits"),
                beta=1.0 / check_temperature(temperature), brier=field == "brier",
                nll=field == "nll", top=field == "hits")
    return spec, partial(_share, field=field)


def brier_plan(x: Any, **options: Any) -> Plan:
    return _total_plan("brier", **options)


def nll_plan(x: Any, **options: Any) -> Plan:
    return _total_plan("nll", **options)


def accuracy_plan(x: Any, **options: Any) -> Plan:
    return _total_plan("hits", **options)


def decomposition_plan(x: Any, *, n_bins: object = 15, binning: str = "uniform",
                       mode: str = "classwise", edges: Any = None, from_logits: bool = False,
                       temperature: float = 1.0) -> Plan:
    bins = Binning(n_bins, binning, mode, edges)
    spec = Spec(from_logits=_check_flag(from_logits, "from_logits"),
                beta=1.0 / check_temperature(temperature), brier=False, nll=False, moments=True,
                **bins.fields(n_rows(x)))
    return spec, partial(_decomposition, classwise=bins.classwise)


# --------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------


def ece(
    probs: Any,
    y: Any,
    /,
    *,
    n_bins: int | str = 15,
    binning: str = "uniform",
    norm: str = "l1",
    mode: str = "top-label",
    debias: bool = False,
    min_count: int = MIN_COUNT,
    from_logits: bool = False,
) -> Any:
    r"""Expected calibration error of predicted probabilities.

    Predictions are grouped into ``n_bins`` bins by confidence; the error is the gap between
    accuracy and mean confidence per bin, weighted by the share of predictions in the bin:

    .. math::
        \mathrm{ECE}_{l1} = \sum_{b=1}^{B} \frac{n_b}{N}\,\bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|,
        \qquad
        \mathrm{ECE}_{l2} = \Bigl(\sum_b \frac{n_b}{N}(\mathrm{acc}_b - \mathrm{conf}_b)^2\Bigr)^{1/2},
        \qquad
        \mathrm{ECE}_{\max} = \max_{b:\,n_b \ge n_{\min}} \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    Args:
        probs: ``(N, K)`` probabilities (rows sum to one), or ``(N,)`` / ``(N, 1)`` the
            probability of class 1 of a binary problem (expanded to ``[1 − p, p]``); logits of
            the same shapes with ``from_logits``.
        y: ``(N,)`` integer class labels in ``[0, K)``.
        n_bins: number of bins ``B``, or ``"auto"``: ``ceil(N^{1/3})`` within [5, 50] (see
            :func:`~logitkit.calibration.auto_bins`).
        binning: ``"uniform"``: bins ``((b−1)/B, b/B]``; ``"quantile"``: equal-mass bins (the
            *adaptive* ECE of Nguyen & O'Connor 2015 and Nixon et al. 2019) whose inner edges
            are the inverted-CDF empirical quantiles of the confidences.  Both are right-closed.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).
        mode: ``"top-label"``: the confidence is the largest probability and "correct" means its
            class is the label; ``"classwise"``: every class column is binned on its own against
            ``y == k`` and the per-class errors are averaged (l1), root-mean-squared (l2) or
            maximised (max).
        debias: for ``norm="l2"`` only, subtract each bin's sampling variance
            ``ȳ_b(1 − ȳ_b)/(n_b − 1)`` (Kumar et al. 2019); bins with one point then count 0, and
            a negative total is clipped to 0.
        min_count: for ``norm="max"`` only: bins with fewer predictions are left out of the
            maximum (default 10: a bin of one prediction has a gap of 0 or 1 whatever the
            model); NaN when no bin has that many.  ``1`` keeps every non-empty bin.
        from_logits: ``probs`` holds logits; the softmax is fused into the pass, never formed.

    Returns:
        A 0-d array of the input's array type (float64 where the backend has it).  Dask arrays
        give a lazy 0-d Dask array: one map-reduce of per-block bin sums (uniform bins).

    Note:
        **Bin edges.** A confidence of exactly 0 lands in the first bin and exactly 1 in the
        last; a value equal to an edge ``b/B`` (the correctly rounded ``b / B``) lands in the
        bin it closes: bins are right-closed, as in Guo et al. (2017).  torchmetrics, netcal and
        relplot close their bins on the left, so the figures agree except for confidences
        exactly on an edge (such as the 0.5 of a two-class tie).  ``argmax`` ties pick the
        first class.  For two classes, torchmetrics' ``BinaryCalibrationError`` and netcal's
        ``ECE`` (given ``p`` or ``[1 − p, p]``) measure the calibration of ``P(class 1)``, which
        is ``mode="classwise"`` here; the default top-label ECE bins ``max(p, 1 − p)``, another
        figure.

        **Under jax.jit** the values cannot be read, so nothing is checked there: labels out
        of range and rows that are not probabilities give numbers, not errors (the losses give
        NaN for such labels).  Check the inputs eagerly, or compute the metric outside
        ``jit``.

        **One pass.** NumPy arrays and CPU torch tensors are read once, a chunk of rows at a
        time, in their own precision (float32 stays float32; no float64 copy of the matrix);
        probabilities are validated in the same pass, with a row-sum tolerance of ``1e-3``
        (``4u`` for float16/bfloat16 input, whose own rounding is larger).

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import ece
        >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        >>> y = np.array([0, 1, 1, 0])
        >>> print(round(float(ece(probs, y, n_bins=5)), 6))
        0.25
        >>> print(round(float(ece(probs, y, n_bins=5, norm="max", min_count=1)), 6))
        0.4
        >>> print(round(float(ece(np.log(probs), y, n_bins=5, from_logits=True)), 6))
        0.25

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
        Kumar, Liang & Ma, "Verified Uncertainty Calibration", NeurIPS 2019.
        Nixon et al., "Measuring Calibration in Deep Learning", CVPR Workshops 2019.
    """
    spec, value = ece_plan(probs, n_bins=n_bins, binning=binning, norm=norm, mode=mode,
                           debias=debias, min_count=min_count, from_logits=from_logits)
    return evaluate(probs, y, spec, value)


def mce(
    probs: Any,
    y: Any,
    /,
    *,
    n_bins: int | str = 15,
    binning: str = "uniform",
    mode: str = "top-label",
    min_count: int = MIN_COUNT,
    from_logits: bool = False,
) -> Any:
    r"""Maximum calibration error: the largest accuracy–confidence gap over well-filled bins.

    .. math::
        \mathrm{MCE} = \max_{b:\,n_b \ge n_{\min}} \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` for a binary problem (see :func:`ece`);
            logits with ``from_logits``.
        y: ``(N,)`` integer labels.
        n_bins: number of bins, or ``"auto"``.
        binning: ``"uniform"`` (right-closed) or ``"quantile"``.
        mode: ``"top-label"`` or ``"classwise"`` (the max over classes and bins).
        min_count: bins holding fewer predictions are not used for the maximum (default 10).
            They are reported, not hidden: :meth:`CalibrationStats.compute` lists them
            (``"mce_excluded_bins"``) and the reliability diagram draws them faint.
        from_logits: ``probs`` holds logits.

    Returns:
        A 0-d array of the input's array type; equals ``ece(..., norm="max")``; NaN when no bin
        holds ``min_count`` predictions.

    Note:
        The maximum of a few sparsely filled bins says more about the bin's size than about the
        model: one image in a bin of one has a gap of 0 or 1.  ``min_count=1`` gives the
        classical MCE (Naeini et al. 2015) over every non-empty bin.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import mce
        >>> print(round(float(mce(np.array([0.9, 0.9, 0.2]), np.array([1, 0, 0]), min_count=1)), 6))
        0.4
        >>> print(float(mce(np.array([0.9, 0.9, 0.2]), np.array([1, 0, 0]))))
        nan
    """
    spec, value = mce_plan(probs, n_bins=n_bins, binning=binning, mode=mode,
                           min_count=min_count, from_logits=from_logits)
    return evaluate(probs, y, spec, value)


def brier_score(probs: Any, y: Any, /, *, from_logits: bool = False) -> Any:
    r"""Brier score: the mean over rows of the squared distance to the one-hot label.

    .. math::
        \mathrm{BS} = \frac{1}{N}\sum_{i=1}^{N}\sum_{k=1}^{K}\bigl(p_{ik} - [y_i = k]\bigr)^2
        = \frac{1}{N}\sum_i \Bigl(\sum_k p_{ik}^2 - 2 p_{i y_i} + 1\Bigr)

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` for a binary problem; logits with
            ``from_logits``.
        y: ``(N,)`` integer labels.
        from_logits: ``probs`` holds logits.

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
    spec, value = brier_plan(probs, from_logits=from_logits)
    return evaluate(probs, y, spec, value)


def nll(probs: Any, y: Any, /, *, from_logits: bool = False) -> Any:
    r"""Negative log-likelihood (log loss, in nats) of the labels.

    .. math::
        \mathrm{NLL} = -\frac{1}{N}\sum_{i=1}^{N} \log p_{i, y_i},
        \qquad \log p_{i y_i} = z_{i y_i} - \max_k z_{ik}
        - \log \sum_k e^{z_{ik} - \max_k z_{ik}} \text{ when } \texttt{from\_logits}

    Args:
        probs: ``(N, K)`` probabilities (or ``(N,)`` binary), or logits when ``from_logits``.
        y: ``(N,)`` integer labels.
        from_logits: ``probs`` holds logits; the log-probability is computed from the logits,
            exact where ``log(softmax)`` would underflow.

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
    spec, value = nll_plan(probs, from_logits=from_logits)
    return evaluate(probs, y, spec, value)


def accuracy(probs: Any, y: Any, /, *, from_logits: bool = False) -> Any:
    r"""Top-1 accuracy: the share of rows whose most probable class is the label.

    .. math::
        \mathrm{acc} = \frac{1}{N}\sum_i \bigl[\arg\max_k p_{ik} = y_i\bigr]

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` binary probabilities; logits with
            ``from_logits``.
        y: ``(N,)`` integer labels.
        from_logits: ``probs`` holds logits.

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
    spec, value = accuracy_plan(probs, from_logits=from_logits)
    return evaluate(probs, y, spec, value)


def brier_decomposition(
    probs: Any,
    y: Any,
    /,
    *,
    n_bins: int | str = 15,
    binning: str = "uniform",
    mode: str = "classwise",
    from_logits: bool = False,
) -> dict[str, Any]:
    r"""The Brier score split into calibration and refinement (Murphy 1973; DeGroot & Fienberg 1983).

    Predictions are binned (per class in ``"classwise"`` mode); with ``n_b``, ``p̄_b`` and
    ``ȳ_b`` a bin's size, mean probability and share of hits:

    .. math::
        \mathrm{BS} = \underbrace{\tfrac{1}{N}\sum_b n_b(\bar p_b - \bar y_b)^2}_{\text{calibration}}
        + \underbrace{\tfrac{1}{N}\sum_b n_b\,\bar y_b(1 - \bar y_b)}_{\text{refinement}}
        + \underbrace{\tfrac{1}{N}\sum_b \textstyle\sum_{i\in b}\bigl[(p_i - \bar p_b)^2
          - 2(p_i - \bar p_b)(y_i - \bar y_b)\bigr]}_{\text{within-bin}}

    and refinement = uncertainty − resolution, with uncertainty ``Σ_k ȳ_k(1 − ȳ_k)`` (the
    score of always predicting the base rates) and resolution ``(1/N) Σ_b n_b (ȳ_b − ȳ)²``.

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` binary; logits with ``from_logits``.
        y: ``(N,)`` integer labels.
        n_bins: number of bins, or ``"auto"``.
        binning: ``"uniform"`` or ``"quantile"`` (per class in class-wise mode).
        mode: ``"classwise"`` (default): every class column against ``y == k``, summed over
            classes, so ``brier`` equals :func:`brier_score`; ``"top-label"``: the confidence
            against "correct", so ``brier`` is ``mean((conf − correct)²)``.
        from_logits: ``probs`` holds logits.

    Returns:
        A dict of 0-d arrays (input's array type): ``brier``, ``calibration``, ``refinement``,
        ``within_bin``, ``resolution``, ``uncertainty``; ``calibration + refinement +
        within_bin == brier`` up to rounding.

    Note:
        The classical two-term decomposition is exact only when every prediction in a bin is
        the same; with binned continuous predictions the within-bin term (Stephenson, Coelho &
        Jolliffe 2008) closes the sum, and it is small when the bins are narrow.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import brier_decomposition, brier_score
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        >>> y = np.array([0, 1, 1, 0])
        >>> parts = brier_decomposition(p, y, n_bins=5)
        >>> total = parts["calibration"] + parts["refinement"] + parts["within_bin"]
        >>> print(round(float(total), 6), round(float(brier_score(p, y)), 6))
        0.5 0.5

    References:
        Murphy, "A New Vector Partition of the Probability Score", J. Appl. Meteor. 1973.
        Stephenson, Coelho & Jolliffe, "Two Extra Components in the Brier Score
        Decomposition", Weather and Forecasting 2008.
    """
    spec, value = decomposition_plan(probs, n_bins=n_bins, binning=binning, mode=mode,
                                     from_logits=from_logits)
    return evaluate(probs, y, spec, value, keys=DECOMPOSITION)


#: Each metric's plan, for :func:`~logitkit.calibration.bootstrap`.
PLANS: dict[Callable[..., Any], Callable[..., Plan]] = {
    ece: ece_plan,
    mce: mce_plan,
    brier_score: brier_plan,
    nll: nll_plan,
    accuracy: accuracy_plan,
}
