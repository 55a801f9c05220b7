"""``CalibrationStats``: O(bins) mergeable sums from which every calibration figure is computed."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from .._namespace import Described, LogitkitValueError, check_choice, check_int, expected
from ._binning import MODES, check_edges, check_n_bins, uniform_edges
from ._engine import Spec, Sums
from ._measure import check_temperature, host_sums
from ._metrics import MIN_COUNT, _decomposition, _error_value, _share
from ._resample import check_options, group_count, interval, resample_values

__all__ = ["CalibrationStats"]

_FIGURES = ("accuracy", "nll", "brier", "ece", "rms_ce", "rms_ce_debiased", "mce")


class CalibrationStats:
    r"""Running per-bin sums for calibration metrics: update on batches, merge across workers.

    The state is, per bin ``b`` (and per class in ``"classwise"`` mode), the count ``n_b``,
    ``Σ confidence``, ``Σ correct``, ``Σ confidence²`` and ``Σ confidence·correct``, plus four
    totals (rows, top-1 hits, Σ Brier, Σ NLL): float64 NumPy arrays of size O(bins), kept for
    each of up to 1024 fixed groups of rows so that :meth:`intervals` can resample them.  Every
    metric is a function of these sums, so updating batch by batch, or merging the stats of
    shards, gives the same result as one call on all the data (up to float64 rounding).

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{N}\Bigl|\frac{\Sigma\,\mathrm{correct}_b}{n_b}
        - \frac{\Sigma\,\mathrm{conf}_b}{n_b}\Bigr|

    Args:
        n_bins: number of bins (uniform, right-closed; see :func:`~logitkit.calibration.ece`).
        mode: ``"top-label"`` or ``"classwise"``.
        edges: optional ``B + 1`` non-decreasing bin edges from 0 to 1 (for example equal-mass
            edges computed on a first pass); they override ``n_bins``.  Data-dependent
            ``"quantile"`` binning cannot be merged exactly, so it is expressed through fixed
            ``edges``.
        min_count: bins with fewer predictions are left out of the MCE (and listed in
            ``compute()["mce_excluded_bins"]``).

    Note:
        The correctness indicator is 0 or 1, so ``Σ correct² = Σ correct`` and the debiased l2
        estimator needs no further sum.  ``update`` accepts any supported array library
        (probabilities, or logits with ``from_logits=True`` at any ``temperature``) and keeps
        only the O(bins) sums on the host.  Row ``i`` of the stream (counted across updates)
        belongs to group ``i`` for ``i < 1024`` and to a fixed hash of ``i`` after; merged
        stats add their groups.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import CalibrationStats, ece
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        >>> y = np.array([0, 1, 1, 0])
        >>> a = CalibrationStats(n_bins=5).update(p[:2], y[:2])
        >>> b = CalibrationStats(n_bins=5).update(p[2:], y[2:])
        >>> print(round(a.merge(b).compute()["ece"], 6), round(float(ece(p, y, n_bins=5)), 6))
        0.25 0.25
    """

    def __init__(self, n_bins: int = 15, *, mode: str = "top-label", edges: Any = None,
                 min_count: int = MIN_COUNT) -> None:
        check_choice(mode, "mode", MODES)
        if edges is None:
            b = check_n_bins(n_bins)
            if isinstance(b, str):
                raise LogitkitValueError(expected(
                    "n_bins", "a positive int (running statistics cannot choose bins from data "
                    "they have not seen; pass `edges`)", n_bins))
            self.n_bins = b
            self.edges = uniform_edges(b)
        else:
            self.edges = check_edges(edges)
            self.n_bins = int(self.edges.size - 1)
        self.mode = mode
        self.min_count = check_int(min_count, "min_count")
        self.n_classes: int | None = None
        self._sums: Sums | None = None
        self.count = 0

    def __repr__(self) -> str:
        return (f"CalibrationStats(n_bins={self.n_bins}, mode={self.mode!r}, "
                f"count={self.count})")

    # ---------------------------------------------------------------------------------------

    def _spec(self, k: int, from_logits: bool, temperature: float) -> Spec:
        inner = self.edges[1:-1]
        classwise = self.mode == "classwise"
        spec = Spec(from_logits=from_logits, beta=1.0 / check_temperature(temperature),
                    moments=True, brier=True, n_bins=self.n_bins, inner=inner,
                    cw_bins=self.n_bins if classwise else 0,
                    cw_inner=inner if classwise else None)
        return replace(spec, groups=group_count(spec, k, 1 << 62))

    def update(self, probs: Any, y: Any, *, from_logits: bool = False,
               temperature: float = 1.0) -> CalibrationStats:
        """Add a batch (one pass over it).

        Args:
            probs: ``(N, K)`` probabilities, or ``(N,)`` binary (see
                :func:`~logitkit.calibration.ece`); logits with ``from_logits``.
            y: ``(N,)`` integer labels.
            from_logits: ``probs`` holds logits (the softmax is fused into the pass).
            temperature: the logits are divided by it first (``from_logits`` only).

        Returns:
            ``self``.  Dask arrays are reduced in one map-reduce and computed.
        """
        if not isinstance(from_logits, bool):
            raise LogitkitValueError(expected("from_logits", "a bool", from_logits))
        shape = getattr(probs, "shape", None) or np.shape(probs)
        k = 2 if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1) else int(shape[-1])
        if self.n_classes is not None and k != self.n_classes:
            raise LogitkitValueError(
                expected("probs", f"{self.n_classes} classes like earlier batches", f"{k}"))
        spec = self._spec(k, from_logits, temperature)
        sums = host_sums(probs, y, spec, base=self.count)
        n = int(sums.n.sum())
        if n == 0:
            raise LogitkitValueError(expected("probs", "non-empty (at least one row)", "0 rows"))
        self._sums = sums if self._sums is None else self._sums + sums
        self.n_classes = k
        self.count += n
        return self

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        """A new object holding the sums of ``self`` and ``other`` (neither is changed).

        Args:
            other: stats with the same bins, mode, ``min_count`` and number of classes.

        Returns:
            The merged :class:`CalibrationStats`.
        """
        if not isinstance(other, CalibrationStats):
            raise LogitkitValueError(expected("other", "a CalibrationStats", other))
        if other.mode != self.mode or not np.array_equal(other.edges, self.edges):
            raise LogitkitValueError(expected(
                "other", f"stats with mode={self.mode!r} and the same {self.n_bins} bins", other))
        if other.min_count != self.min_count:  # else the merged MCE hung on the order
            raise LogitkitValueError(expected(
                "other", f"stats with min_count={self.min_count}",
                Described(f"min_count={other.min_count}")))
        if None not in (self.n_classes, other.n_classes) and self.n_classes != other.n_classes:
            raise LogitkitValueError(
                expected("other", f"stats over {self.n_classes} classes", other.n_classes))
        out = CalibrationStats(mode=self.mode, edges=self.edges, min_count=self.min_count)
        parts = [s._sums for s in (self, other) if s._sums is not None]
        out._sums = None if not parts else (parts[0] if len(parts) == 1 else parts[0] + parts[1])
        out.n_classes = self.n_classes if self.n_classes is not None else other.n_classes
        out.count = self.count + other.count
        return out

    __add__ = merge

    # ---------------------------------------------------------------------------------------

    def _checked(self) -> Sums:
        if self._sums is None or self.count == 0:
            raise LogitkitValueError(
                expected("the stats", "updated with at least one row", "no data"))
        return self._sums

    def _values(self, sums: Sums) -> dict[str, np.ndarray]:
        classwise = self.mode == "classwise"

        def err(norm: str, debias: bool = False) -> np.ndarray:
            return _error_value(sums, np, norm=norm, debias=debias, min_count=self.min_count,
                                classwise=classwise)

        return {
            "accuracy": _share(sums, np, field="hits"),
            "nll": _share(sums, np, field="nll"),
            "brier": _share(sums, np, field="brier"),
            "ece": err("l1"),
            "rms_ce": err("l2"),
            "rms_ce_debiased": err("l2", True),
            "mce": err("max"),
        }

    def compute(self) -> dict[str, Any]:
        """The metrics of all the data seen.

        Returns:
            A dict with ``count``, ``accuracy``, ``ece`` (l1), ``rms_ce`` (l2),
            ``rms_ce_debiased`` (Kumar et al. 2019), ``mce`` (max over bins of at least
            ``min_count``; NaN when none), ``brier``, ``nll`` (floats);
            ``brier_decomposition``: the dict of
            :func:`~logitkit.calibration.brier_decomposition` in this ``mode`` (its ``brier`` is
            the multiclass score in classwise mode, the top label's ``mean((conf − correct)²)``
            otherwise);
            per bin ``bin_edges`` (``B + 1``), ``bin_count``, ``bin_confidence`` and
            ``bin_accuracy`` (means, NaN for empty bins; per class in classwise mode);
            ``mce_min_count`` and ``mce_excluded_bins`` (indices of the non-empty bins left out
            of the MCE; ``(class, bin)`` pairs in classwise mode).
        """
        total = self._checked().total()
        out: dict[str, Any] = {"count": self.count}
        out.update({key: float(v[0]) for key, v in self._values(total).items()})
        classwise = self.mode == "classwise"
        parts = _decomposition(total, np, classwise=classwise)
        out["brier_decomposition"] = {"mode": self.mode,
                                      **{key: float(v[0]) for key, v in parts.items()}}
        s = (total.cw if classwise else total.bins)
        assert s is not None
        s = s[0]
        count = s[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(count > 0, s[1] / np.where(count > 0, count, 1), math.nan)
            mean_acc = np.where(count > 0, s[2] / np.where(count > 0, count, 1), math.nan)
        excluded = np.argwhere((count > 0) & (count < self.min_count))
        out.update({
            "bin_edges": self.edges.copy(),
            "bin_count": count.copy(),
            "bin_confidence": mean_conf,
            "bin_accuracy": mean_acc,
            "mce_min_count": self.min_count,
            "mce_excluded_bins": [tuple(int(i) for i in e) if classwise else int(e[0])
                                  for e in excluded],
        })
        return out

    def intervals(self, *, level: float = 0.95, n_resamples: int = 1000,
                  method: str = "percentile", random_state: Any = None
                  ) -> dict[str, tuple[float, float]]:
        """Bootstrap confidence intervals of every figure of :meth:`compute`.

        The fixed row groups are resampled with replacement (see
        :func:`~logitkit.calibration.bootstrap`): no pass over the data, a few milliseconds.

        Args:
            level: confidence level in (0, 1).
            n_resamples: number of bootstrap resamples.
            method: ``"percentile"``, ``"basic"`` or ``"bca"``.
            random_state: ``None``, an int seed or a ``numpy.random.Generator``.

        Returns:
            ``{figure: (low, high)}`` for ``accuracy``, ``nll``, ``brier``, ``ece``, ``rms_ce``,
            ``rms_ce_debiased`` and ``mce``.

        Examples:
            >>> import numpy as np
            >>> from logitkit import softmax
            >>> from logitkit.calibration import CalibrationStats
            >>> rng = np.random.default_rng(0)
            >>> z = rng.normal(size=(2000, 5)) * 3
            >>> y = rng.integers(0, 5, 2000)
            >>> stats = CalibrationStats().update(z, y, from_logits=True)
            >>> low, high = stats.intervals(random_state=0)["ece"]
            >>> bool(low < stats.compute()["ece"] < high)
            True
        """
        sums = self._checked()
        n_resamples, level, method = check_options(n_resamples, level, method)
        keys = list(_FIGURES)

        def values(s: Sums, xp: Any) -> np.ndarray:
            v = self._values(s)
            return np.stack([v[key] for key in keys], axis=-1)

        estimate = values(sums.total(), np)[0]
        reps, jack = resample_values(sums, values, n_resamples=n_resamples,
                                     random_state=random_state, jackknife=method == "bca")
        out = {}
        for j, key in enumerate(keys):
            low, high = interval(float(estimate[j]), reps[:, j],
                                 None if jack is None else jack[:, j], level=level,
                                 method=method)
            out[key] = (low, high)
        return out
