"""``CalibrationStats``: O(bins) mergeable sums from which every calibration metric is computed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._namespace import LogitkitValueError, astype, check_choice, expected, to_numpy
from ._binning import MODES, binned, check_n_bins, onehot, prepare, safe_log, uniform_edges
from ._dask import is_dask
from ._metrics import calibration_error_from_sums

__all__ = ["CalibrationStats"]


class CalibrationStats:
    r"""Running per-bin sums for calibration metrics: update on batches, merge across workers.

    The state is, per bin ``b`` (and per class in ``"classwise"`` mode), the count ``n_b``,
    ``Σ confidence`` and ``Σ correct``, plus four totals (rows, top-1 hits, Σ Brier, Σ NLL), all
    float64 NumPy arrays of size O(bins).  Every metric is a function of these sums, so updating
    batch by batch, or merging the stats of shards, gives the same result as one call on all the
    data (up to float64 rounding of the sums).

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{N}\Bigl|\frac{\Sigma\,\mathrm{correct}_b}{n_b}
        - \frac{\Sigma\,\mathrm{conf}_b}{n_b}\Bigr|

    Args:
        n_bins: number of bins (uniform, right-closed; see :func:`~logitkit.calibration.ece`).
        mode: ``"top-label"`` or ``"classwise"``.
        edges: optional ``B + 1`` increasing bin edges from 0 to 1 (for example equal-mass edges
            computed on a first pass); they override ``n_bins``.  Data-dependent ``"quantile"``
            binning cannot be merged exactly, so it is expressed through fixed ``edges``.

    Note:
        The correctness indicator is 0 or 1, so ``Σ correct² = Σ correct`` and the debiased l2
        estimator needs no further sum.  ``update`` accepts any supported array library and
        copies only the O(bins) sums to the host.

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

    def __init__(self, n_bins: int = 15, *, mode: str = "top-label", edges: Any = None) -> None:
        check_choice(mode, "mode", MODES)
        if edges is None:
            self.n_bins = check_n_bins(n_bins)
            self.edges = uniform_edges(self.n_bins)
        else:
            e = np.asarray(to_numpy(edges), dtype=np.float64)
            if e.ndim != 1 or e.size < 2 or e[0] != 0.0 or e[-1] != 1.0 or np.any(np.diff(e) <= 0):
                raise LogitkitValueError(
                    expected("edges", "increasing bin edges from 0 to 1", edges))
            self.edges = e
            self.n_bins = int(e.size - 1)
        self.mode = mode
        self.n_classes: int | None = None
        self._sums: np.ndarray | None = None  # (3, B) or (3, K, B)
        self.count = 0
        self.n_correct = 0.0
        self.sum_brier = 0.0
        self.sum_nll = 0.0

    def __repr__(self) -> str:
        return (f"CalibrationStats(n_bins={self.n_bins}, mode={self.mode!r}, "
                f"count={self.count})")

    # ---------------------------------------------------------------------------------------

    def update(self, probs: Any, y: Any) -> CalibrationStats:
        """Add a batch.

        Args:
            probs: ``(N, K)`` probabilities, or ``(N,)`` binary (see
                :func:`~logitkit.calibration.ece`).
            y: ``(N,)`` integer labels.

        Returns:
            ``self``.  Dask arrays are reduced in one map-reduce (a ``CalibrationStats`` per
            block, merged) and computed.
        """
        if is_dask(probs, y):
            from ._dask import update_stats

            return update_stats(self, probs, y)
        xp, p, labels = prepare(probs, y)
        k = int(p.shape[1])
        if self.n_classes is not None and k != self.n_classes:
            raise LogitkitValueError(
                expected("probs", f"{self.n_classes} classes like earlier batches", f"{k}"))
        sums, _ = binned(p, labels, n_bins=self.n_bins, binning="uniform", mode=self.mode,
                         xp=xp, edges=self.edges)
        hot = onehot(labels, k, p, xp)
        diff = p - hot
        brier = xp.sum(diff * diff)
        nll = -xp.sum(safe_log(xp.sum(p * hot, axis=1), xp))
        pred = xp.argmax(p, axis=1)
        hits = xp.sum(astype(pred == astype(labels, pred.dtype, xp), p.dtype, xp))
        sums_np = np.asarray(to_numpy(sums), dtype=np.float64)
        self._sums = sums_np if self._sums is None else self._sums + sums_np
        self.n_classes = k
        self.count += int(p.shape[0])
        self.n_correct += float(to_numpy(hits))
        self.sum_brier += float(to_numpy(brier))
        self.sum_nll += float(to_numpy(nll))
        return self

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        """A new object holding the sums of ``self`` and ``other`` (neither is changed).

        Args:
            other: stats with the same bins, mode and number of classes.

        Returns:
            The merged :class:`CalibrationStats`.
        """
        if not isinstance(other, CalibrationStats):
            raise LogitkitValueError(expected("other", "a CalibrationStats", other))
        if other.mode != self.mode or not np.array_equal(other.edges, self.edges):
            raise LogitkitValueError(expected(
                "other", f"stats with mode={self.mode!r} and the same {self.n_bins} bins", other))
        if None not in (self.n_classes, other.n_classes) and self.n_classes != other.n_classes:
            raise LogitkitValueError(
                expected("other", f"stats over {self.n_classes} classes", other.n_classes))
        out = CalibrationStats(mode=self.mode, edges=self.edges)
        parts = [s._sums for s in (self, other) if s._sums is not None]
        out._sums = None if not parts else (parts[0] if len(parts) == 1 else parts[0] + parts[1])
        out.n_classes = self.n_classes if self.n_classes is not None else other.n_classes
        out.count = self.count + other.count
        out.n_correct = self.n_correct + other.n_correct
        out.sum_brier = self.sum_brier + other.sum_brier
        out.sum_nll = self.sum_nll + other.sum_nll
        return out

    __add__ = merge

    def compute(self) -> dict[str, Any]:
        """The metrics of all the data seen.

        Returns:
            A dict with ``count``, ``accuracy``, ``ece`` (l1), ``rms_ce`` (l2),
            ``rms_ce_debiased`` (Kumar et al. 2019), ``mce`` (max), ``brier``, ``nll`` (floats), and
            per bin ``bin_edges`` (``B + 1``), ``bin_count``, ``bin_confidence`` and
            ``bin_accuracy`` (means, NaN for empty bins; per class in classwise mode).
        """
        if self._sums is None or self.count == 0:
            raise LogitkitValueError(
                expected("the stats", "updated with at least one row", "no data"))
        s = self._sums

        def err(norm: str, debias: bool = False) -> float:
            return float(calibration_error_from_sums(s, self.count, norm=norm, debias=debias,
                                                     xp=np))

        count = s[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(count > 0, s[1] / np.where(count > 0, count, 1), math.nan)
            mean_acc = np.where(count > 0, s[2] / np.where(count > 0, count, 1), math.nan)
        return {
            "count": self.count,
            "accuracy": self.n_correct / self.count,
            "ece": err("l1"),
            "rms_ce": err("l2"),
            "rms_ce_debiased": err("l2", True),
            "mce": err("max"),
            "brier": self.sum_brier / self.count,
            "nll": self.sum_nll / self.count,
            "bin_edges": self.edges.copy(),
            "bin_count": count.copy(),
            "bin_confidence": mean_conf,
            "bin_accuracy": mean_acc,
        }
