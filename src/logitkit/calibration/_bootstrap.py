"""``bootstrap``: a confidence interval for any calibration metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._namespace import LogitkitTypeError, expected, to_numpy
from ._measure import host_sums, n_rows
from ._metrics import PLANS
from ._resample import check_options, group_count, interval, resample_values
from ._smooth import smooth_ece, smooth_replicates

__all__ = ["BootstrapResult", "bootstrap"]


@dataclass(frozen=True)
class BootstrapResult:
    """A metric's value and its bootstrap confidence interval.

    Attributes:
        estimate: the metric on all the data.
        low, high: the interval's ends.
        level: its confidence level.
        method: ``"percentile"``, ``"basic"`` or ``"bca"``.
        standard_error: the standard deviation of the bootstrap replicates.
        n_resamples: the number of replicates.
        n_groups: the number of row groups resampled (``N`` when every row is its own group:
            the ordinary bootstrap), or ``None`` for a callable resampled by
            ``scipy.stats.bootstrap``.
        distribution: the ``n_resamples`` replicates.
    """

    estimate: float
    low: float
    high: float
    level: float
    method: str
    standard_error: float
    n_resamples: int
    n_groups: int | None
    distribution: np.ndarray = field(repr=False)

    def __iter__(self) -> Any:  # ``estimate, low, high = bootstrap(...)``
        return iter((self.estimate, self.low, self.high))


def bootstrap(
    metric: Callable[..., Any],
    probs: Any,
    y: Any,
    /,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    method: str = "percentile",
    random_state: Any = None,
    **metric_options: Any,
) -> BootstrapResult:
    r"""A bootstrap confidence interval for a calibration metric.

    For logitkit's metrics (:func:`ece`, :func:`mce`, :func:`brier_score`, :func:`nll`,
    :func:`accuracy`, :func:`smooth_ece`, with any of their options) the data are read **once**:
    the engine keeps its sums for up to 1024 fixed groups of rows, and each resample draws the
    groups with replacement and adds their sums, so a thousand resamples cost milliseconds on any
    ``N × K`` and never touch the ``K`` columns again.  With at most 1024 rows every row is its
    own group and this is the ordinary bootstrap; with more it resamples fixed random groups of
    rows, which matches the row bootstrap's mean and covariance (the variance up to ``(G − 1)/G``)
    and converges to it as ``N`` grows (:mod:`logitkit.calibration._resample`).  Binned metrics
    keep the bins of the full sample (equal-mass edges are not recomputed per resample).

    Any other callable ``metric(probs, y, **metric_options)`` is resampled row by row with
    ``scipy.stats.bootstrap`` (paired rows; SciPy required): exact, but one evaluation per
    resample, and its BCa needs ``N`` leave-one-out evaluations, which is why logitkit's own
    metrics do not go that way.

    Args:
        metric: a logitkit metric function, or any callable of ``(probs, y)``.
        probs: ``(N, K)`` probabilities, or ``(N,)`` binary; logits with
            ``from_logits=True`` among ``metric_options``.
        y: ``(N,)`` integer labels.
        n_resamples: number of bootstrap resamples.
        level: confidence level in (0, 1).
        method: ``"percentile"`` (default: the replicates' quantiles), ``"basic"`` (reflected
            about the estimate) or ``"bca"`` (bias-corrected and accelerated, Efron 1987; the
            acceleration from the leave-one-group-out values).
        random_state: ``None``, an int seed or a ``numpy.random.Generator``.
        **metric_options: passed to ``metric`` (``n_bins``, ``norm``, ``mode``, ...).

    Returns:
        A :class:`BootstrapResult` (unpacks as ``estimate, low, high``).

    Note:
        The percentile interval of a binned ECE covers the *population* ECE of the same bins
        when the miscalibration is large against the sampling noise of a bin; a well-calibrated
        model's plug-in ECE is biased upwards (the mean of ``|noise|``), and so is its interval
        (use ``norm="l2", debias=True`` there, or the smooth ECE).  Its coverage is tested by
        simulation against a known truth.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import bootstrap, ece
        >>> rng = np.random.default_rng(0)
        >>> f = rng.uniform(0.5, 1.0, 20_000)
        >>> y = np.where(rng.uniform(size=20_000) < f - 0.1, 0, 1)  # 10 points overconfident
        >>> probs = np.stack([f, 1 - f], axis=1)
        >>> est, low, high = bootstrap(ece, probs, y, n_bins=10, random_state=0)
        >>> bool(low < 0.1 < high), round(high - low, 3)
        (True, 0.012)
    """
    n_resamples, level, method = check_options(n_resamples, level, method)
    if not callable(metric):
        raise LogitkitTypeError(expected("metric", "a metric function", metric))
    if metric is smooth_ece:
        value, reps, jack, g = smooth_replicates(probs, y, n_resamples=n_resamples,
                                                 random_state=random_state,
                                                 jackknife=method == "bca", **metric_options)
        return _result(value, reps, jack, level, method, g)
    plan = PLANS.get(metric)
    if plan is None:
        return _scipy(metric, probs, y, n_resamples, level, method, random_state,
                      metric_options)
    spec, value_of = plan(probs, **metric_options)
    k = _n_classes(probs)
    spec = replace(spec, groups=group_count(spec, k, n_rows(probs)))
    sums = host_sums(probs, y, spec)
    estimate = float(value_of(sums.total(), np)[0])
    reps, jack = resample_values(sums, value_of, n_resamples=n_resamples,
                                 random_state=random_state, jackknife=method == "bca")
    return _result(estimate, reps, jack, level, method, int(np.count_nonzero(sums.n)))


def _n_classes(x: Any) -> int:
    shape = getattr(x, "shape", None) or np.shape(x)
    return 2 if len(shape) == 1 or shape[-1] == 1 else int(shape[-1])


def _result(estimate: float, reps: np.ndarray, jack: np.ndarray | None, level: float,
            method: str, groups: int | None) -> BootstrapResult:
    low, high = interval(estimate, reps, jack, level=level, method=method)
    finite = reps[np.isfinite(reps)]
    se = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return BootstrapResult(estimate=estimate, low=low, high=high, level=level, method=method,
                           standard_error=se, n_resamples=int(reps.size), n_groups=groups,
                           distribution=reps)


def _scipy(metric: Callable[..., Any], probs: Any, y: Any, n_resamples: int, level: float,
           method: str, random_state: Any, options: dict[str, Any]) -> BootstrapResult:
    from scipy.stats import bootstrap as scipy_bootstrap

    p = np.asarray(to_numpy(probs))
    labels = np.asarray(to_numpy(y))

    def statistic(rows: np.ndarray) -> float:
        return float(np.asarray(to_numpy(metric(p[rows], labels[rows], **options))))

    index = np.arange(p.shape[0])
    estimate = statistic(index)
    res = scipy_bootstrap((index,), statistic, vectorized=False, n_resamples=n_resamples,
                          confidence_level=level, method="BCa" if method == "bca" else method,
                          random_state=np.random.default_rng(random_state))
    reps = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    return BootstrapResult(estimate=estimate, low=float(res.confidence_interval.low),
                           high=float(res.confidence_interval.high), level=level, method=method,
                           standard_error=float(res.standard_error), n_resamples=n_resamples,
                           n_groups=None, distribution=reps)
