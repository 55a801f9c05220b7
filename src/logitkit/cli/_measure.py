"""Held-out figures of calibrated logits: the one measurement engine, with an interval on each.

Every figure the command prints or writes comes from :class:`~logitkit.calibration.
CalibrationStats` updated with logits (``from_logits=True``: the softmax is fused into the
engine's one pass, and the NLL is exact where ``log(softmax)`` would underflow) and its
:meth:`~logitkit.calibration.CalibrationStats.intervals` (a bootstrap over the engine's fixed
row groups: no second pass over the data).  The logits are the model's own, or calibrated row
by row: by one calibrator, or, out of fold, by the calibrator of each row's fold.  Dask arrays
go through the same engine (one map-reduce); the calibrated logits are then a lazy map over the
blocks.

The intervals are those of the figures given the calibrator (the rows are resampled, the fits
are not redone); a cross-fitted figure's uncertainty from the fits themselves shows in the
candidates' fold-to-fold spread.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_CHUNK = 1 << 20  # logits entries per chunk of calibrated rows held at once


@dataclass(frozen=True)
class Options:
    """How the figures are measured: ``--bins``, ``--binning``, ``--level``, ``--resamples``
    (0: no intervals) and ``--seed`` (of the bootstrap, so reruns agree)."""

    bins: int | str = 15
    binning: str = "uniform"
    level: float = 0.95
    resamples: int = 1000
    seed: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(bins=args.bins, binning=args.binning, level=args.level,
                   resamples=args.resamples, seed=args.seed)


def calibrated_rows(z: np.ndarray, folds: np.ndarray | None, calibrators: Sequence[Any]
                    ) -> np.ndarray:
    """float64 calibrated logits of a block of rows: ``calibrators[f]`` for the rows of fold
    ``f`` (one calibrator: every row), by the rule of ``select``'s out-of-fold logits (each
    calibrator transforms the rows in their own dtype; the result is widened)."""
    from ..calibration import out_of_fold_logits

    z = np.asarray(z)
    return out_of_fold_logits(z, None if folds is None else np.asarray(folds).reshape(-1), calibrators)


def _blocks(z: Any, folds: Any, calibrators: Sequence[Any] | None) -> Iterator[Any]:
    """The logits to measure, as one array (the engine takes any size in one pass) or, when
    calibrated in memory, as chunks of rows (O(chunk) extra memory)."""
    import array_api_compat

    if calibrators is None:
        yield z
    elif array_api_compat.is_dask_array(z):
        import dask.array as da

        z = z.rechunk({1: -1})
        f = [] if folds is None else [folds.rechunk((z.chunks[0],))[:, None]]
        yield da.map_blocks(_block_rows, z, *f, calibrators=calibrators, dtype=np.float64)
    else:
        step = max(1, _CHUNK // int(z.shape[1]))
        for start in range(0, int(z.shape[0]), step):
            rows = slice(start, start + step)
            yield calibrated_rows(z[rows], None if folds is None else folds[rows], calibrators)


def _block_rows(z: np.ndarray, folds: np.ndarray | None = None, *,
                calibrators: Sequence[Any]) -> np.ndarray:
    return calibrated_rows(z, folds, calibrators)


def _edges(z: Any, folds: Any, calibrators: Sequence[Any] | None, n_bins: int,
           binning: str) -> np.ndarray | None:
    """None for uniform bins, else equal-mass edges of the confidences (a first pass, in
    memory)."""
    from .. import log_softmax
    from ..calibration import bin_edges

    if binning == "uniform":
        return None
    conf = np.concatenate([np.exp(np.asarray(log_softmax(b, axis=1)).max(axis=1))
                           for b in _blocks(z, folds, calibrators)])
    return bin_edges(conf, n_bins, binning="quantile")


def measure(z: Any, y: Any, opts: Options, *, calibrators: Sequence[Any] | None = None,
            folds: Any = None) -> dict[str, Any]:
    """The figures of ``z`` (logits, calibrated by ``calibrators`` when given) against ``y``.

    Returns:
        :meth:`CalibrationStats.compute`'s dict (every figure, the per-bin arrays, the Brier
        decomposition, the bins left out of the MCE) with ``"intervals"``: ``{figure: (low,
        high)}`` at ``opts.level`` (empty when ``opts.resamples`` is 0).
    """
    from ..calibration import CalibrationStats, auto_bins

    n_bins = auto_bins(int(y.shape[0])) if opts.bins == "auto" else int(opts.bins)
    stats = CalibrationStats(n_bins, edges=_edges(z, folds, calibrators, n_bins, opts.binning))
    start = 0
    for block in _blocks(z, folds, calibrators):
        rows = int(block.shape[0])
        stats.update(block, y[start:start + rows], from_logits=True)
        start += rows
    out = stats.compute()
    out["intervals"] = {} if opts.resamples == 0 else stats.intervals(
        level=opts.level, n_resamples=opts.resamples, random_state=opts.seed)
    return out
