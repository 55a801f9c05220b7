"""Post-hoc calibration: temperature scaling, calibration metrics, mergeable statistics, plots.

- :class:`TemperatureScaler` fits one temperature T > 0 on held-out logits (safeguarded Newton
  on β = 1/T, float64, one pass over the data per iteration).
- :func:`ece`, :func:`mce`, :func:`brier_score`, :func:`nll`, :func:`accuracy` score
  probabilities; :class:`CalibrationStats` accumulates the same metrics in O(bins) memory and
  merges exactly across batches and workers.
- :func:`smooth_ece` (Błasiok & Nakkiran's smECE, relplot's automatic bandwidth) and
  :func:`smooth_reliability`, its smoothed curve; :func:`brier_decomposition`.
- :func:`bootstrap` gives any metric a confidence interval (resampling fixed row groups: no
  second pass over the data); :meth:`CalibrationStats.intervals` does it for every figure.
- :func:`reliability_diagram` draws them (matplotlib, optional).
"""

from __future__ import annotations

from . import _dask  # noqa: F401  (registers the Dask adapter of _blocks.row_sums; imports no Dask)
from ._binning import auto_bins as auto_bins
from ._bootstrap import BootstrapResult as BootstrapResult
from ._bootstrap import bootstrap as bootstrap
from ._diagram import reliability_diagram as reliability_diagram
from ._metrics import accuracy as accuracy
from ._metrics import brier_decomposition as brier_decomposition
from ._metrics import brier_score as brier_score
from ._metrics import ece as ece
from ._metrics import mce as mce
from ._metrics import nll as nll
from ._smooth import SmoothReliability as SmoothReliability
from ._smooth import smooth_ece as smooth_ece
from ._smooth import smooth_reliability as smooth_reliability
from ._stats import CalibrationStats as CalibrationStats
from ._temperature import CalibrationWarning as CalibrationWarning
from ._temperature import TemperatureScaler as TemperatureScaler

__all__ = [
    "BootstrapResult",
    "CalibrationStats",
    "CalibrationWarning",
    "SmoothReliability",
    "TemperatureScaler",
    "accuracy",
    "auto_bins",
    "bootstrap",
    "brier_decomposition",
    "brier_score",
    "ece",
    "mce",
    "nll",
    "reliability_diagram",
    "smooth_ece",
    "smooth_reliability",
]
