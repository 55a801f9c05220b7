"""Post-hoc calibration: calibrators, the choice among them, metrics, mergeable statistics, plots.

- :class:`TemperatureScaler` fits one temperature T > 0 on held-out logits (safeguarded Newton
  on β = 1/T, float64, one pass over the data per iteration); :class:`VectorScaler`,
  :class:`MatrixScaler`, :class:`DirichletScaler` and :class:`StructuredScaler` fit affine maps
  of the logits, :class:`BetaCalibrator`, :class:`IsotonicCalibrator` and
  :class:`HistogramCalibrator` one-vs-rest maps of the probabilities; every one is a
  :class:`Calibrator`, saved with ``to_dict`` and restored with ``Calibrator.from_dict``.
  With ``from_probs=True`` they read probabilities, a zero as :func:`zero_floor` of the fit's
  rows (half their least positive probability), its row renormalised (:func:`floored_logs`).
- :class:`StackedCalibrator` mixes them, weighted by held-out likelihood.
- :func:`select` chooses among them (and "none", and the mixture) by cross-validated NLL;
  :func:`candidates_of` says which it fits; :func:`out_of_fold_logits` gives any candidate's
  cross-fitted logits from its fold calibrators.
- :func:`make_calibrator` makes one by its method name (:data:`METHODS`); :data:`ACCURACY_FLAG`
  is the held-out accuracy change beyond which :func:`select` flags a candidate.
- :func:`ece`, :func:`mce`, :func:`brier_score`, :func:`nll`, :func:`accuracy` score
  probabilities; :class:`CalibrationStats` accumulates the same metrics in O(bins) memory and
  merges exactly across batches and workers.
- :func:`smooth_ece` (Błasiok & Nakkiran's smECE, relplot's automatic bandwidth) and
  :func:`smooth_reliability`, its smoothed curve; :func:`brier_decomposition`.
- :func:`bootstrap` gives any metric a confidence interval (resampling fixed row groups: no
  second pass over the data); :meth:`CalibrationStats.intervals` does it for every figure.
- :func:`reliability_diagram` draws them (matplotlib, optional).
- :func:`figure_from_stats` draws :meth:`CalibrationStats.compute` results; :func:`bin_edges`
  gives the equal-mass edges of a first pass for ``CalibrationStats(edges=...)``.
"""

from __future__ import annotations

from . import _dask  # noqa: F401  (registers the Dask adapter of _blocks.row_sums; imports no Dask)
from ._base import CalibrationWarning as CalibrationWarning
from ._base import Calibrator as Calibrator
from ._base import IdentityCalibrator as IdentityCalibrator
from ._base import floored_logs as floored_logs
from ._base import zero_floor as zero_floor
from ._binary import BetaCalibrator as BetaCalibrator
from ._binary import HistogramCalibrator as HistogramCalibrator
from ._binary import IsotonicCalibrator as IsotonicCalibrator
from ._binning import auto_bins as auto_bins
from ._binning import bin_edges as bin_edges
from ._bootstrap import BootstrapResult as BootstrapResult
from ._bootstrap import bootstrap as bootstrap
from ._diagram import figure_from_stats as figure_from_stats
from ._diagram import reliability_diagram as reliability_diagram
from ._metrics import accuracy as accuracy
from ._metrics import brier_decomposition as brier_decomposition
from ._metrics import brier_score as brier_score
from ._metrics import ece as ece
from ._metrics import mce as mce
from ._metrics import nll as nll
from ._scaling import DirichletScaler as DirichletScaler
from ._scaling import MatrixScaler as MatrixScaler
from ._scaling import StructuredScaler as StructuredScaler
from ._scaling import VectorScaler as VectorScaler
from ._select import ACCURACY_FLAG as ACCURACY_FLAG
from ._select import AUTO_MAX_CLASSES as AUTO_MAX_CLASSES
from ._select import FULL_MAPS as FULL_MAPS
from ._select import METHODS as METHODS
from ._select import SEPARABLE as SEPARABLE
from ._select import Selection as Selection
from ._select import StackedCalibrator as StackedCalibrator
from ._select import candidates_of as candidates_of
from ._select import make_calibrator as make_calibrator
from ._select import out_of_fold_logits as out_of_fold_logits
from ._select import select as select
from ._smooth import SmoothReliability as SmoothReliability
from ._smooth import smooth_ece as smooth_ece
from ._smooth import smooth_reliability as smooth_reliability
from ._stats import CalibrationStats as CalibrationStats
from ._temperature import TemperatureScaler as TemperatureScaler

__all__ = [
    "ACCURACY_FLAG",
    "AUTO_MAX_CLASSES",
    "FULL_MAPS",
    "METHODS",
    "SEPARABLE",
    "BetaCalibrator",
    "BootstrapResult",
    "CalibrationStats",
    "CalibrationWarning",
    "Calibrator",
    "DirichletScaler",
    "HistogramCalibrator",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "MatrixScaler",
    "Selection",
    "SmoothReliability",
    "StackedCalibrator",
    "StructuredScaler",
    "TemperatureScaler",
    "VectorScaler",
    "accuracy",
    "auto_bins",
    "bin_edges",
    "bootstrap",
    "brier_decomposition",
    "brier_score",
    "candidates_of",
    "ece",
    "figure_from_stats",
    "floored_logs",
    "make_calibrator",
    "mce",
    "nll",
    "out_of_fold_logits",
    "reliability_diagram",
    "select",
    "smooth_ece",
    "smooth_reliability",
    "zero_floor",
]
