"""``logitkit calibrate --scheduler ADDRESS``: the shards of a folder on a Dask cluster.

Each file becomes one block of a Dask array, read by the cluster's workers with the same reader
as a local run (so every file is checked the same way) and kept in their memory; the
temperature fit (one map-reduce per Newton step) and the before/after metrics (one map-reduce
each) then run there, and only O(bins) sums come back.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ._io import CliError, Columns, missing_labels, read_predictions
from ._kinds import Kind, detect, floor_note, to_logits, zero_floor


@contextmanager
def on_cluster(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` connected to ``address`` (the default client while open)."""
    try:
        from distributed import Client
    except ImportError:
        raise CliError("--scheduler needs Dask's 'distributed' package "
                       "(pip install 'logitkit[dask]')") from None
    try:
        client = Client(address, timeout="10s", set_as_default=True)
    except (OSError, TimeoutError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        raise CliError(f"cannot reach the Dask scheduler at {address} "
                       f"({text[0] if text else type(exc).__name__})") from None
    try:
        yield client
    finally:
        client.close()


def _read_shard(path: Path, labels_path: Path | None, cols: Columns
                ) -> tuple[np.ndarray, np.ndarray]:
    """One file's ``(scores, labels)``, checked as the in-process reader checks them."""
    pred = read_predictions(path, cols, labels_path)
    if pred.labels is None:
        raise missing_labels(path, pred, cols)
    return pred.scores, pred.labels


def _meta(shard: tuple[np.ndarray, np.ndarray], given: str
          ) -> tuple[int, int, str, str, str]:
    kind = detect(shard[0], given)
    return (int(shard[0].shape[0]), int(shard[0].shape[1]), shard[0].dtype.str, kind.name,
            kind.reason)


def _zeros(shard: tuple[np.ndarray, np.ndarray], kind: Kind) -> tuple[int, float]:
    return zero_floor(shard[0], kind)


def _logits_of(shard: tuple[np.ndarray, np.ndarray], kind: Kind, dtype: str, path: str,
               floor: float) -> np.ndarray:
    return to_logits(shard[0], kind, path, floor=floor).astype(dtype, copy=False)


def _labels_of(shard: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return shard[1]


def load_on_cluster(args: argparse.Namespace, files: list[Path]) -> Any:
    """The calibration set as Dask arrays with one block per file, read and held by the
    workers: a :class:`~logitkit.cli._calibrate.Labelled`."""
    import dask
    import dask.array as da
    from dask import delayed

    from ._outcome import Labelled, check_fit_rows, check_label_range

    if args.binning == "quantile":
        raise CliError("--binning quantile needs every confidence in one place; use uniform "
                       "bins with --scheduler")
    if args.labels is not None and len(files) > 1:
        raise CliError("--labels works with one input file; give each file its labels instead")
    cols = Columns.from_args(args)
    read = delayed(_read_shard, pure=True)
    shards = dask.persist(*[read(path, args.labels, cols) for path in files])
    meta = dask.compute(*[delayed(_meta, pure=True)(s, args.input) for s in shards])
    widths = sorted({m[1] for m in meta})
    if len(widths) > 1:
        raise CliError(f"the input files have different numbers of classes: {widths}")
    kinds = {m[3] for m in meta}
    if len(kinds) > 1:
        first = {m[3]: (path, m[4]) for path, m in zip(files, meta, strict=True)}
        raise CliError("the input files hold different kinds of scores: "
                       + "; ".join(f"{p} {name} ({why})" for name, (p, why) in first.items())
                       + "; pass --input to say which")
    kind = Kind(meta[0][3], meta[0][4])
    zeros = dask.compute(*[delayed(_zeros, pure=True)(s, kind) for s in shards])
    count = sum(c for c, _ in zeros)
    floor = min(f for _, f in zeros)  # one floor for every shard: the smallest over them all
    dtype = np.result_type(*[np.dtype(m[2]) for m in meta]).str
    k = max(2, widths[0])
    logits = da.concatenate([
        da.from_delayed(delayed(_logits_of, pure=True)(s, kind, dtype, str(path), floor),
                        shape=(m[0], k), dtype=dtype)
        for s, m, path in zip(shards, meta, files, strict=True)])
    labels = da.concatenate([
        da.from_delayed(delayed(_labels_of, pure=True)(s), shape=(m[0],), dtype=np.int64)
        for s, m in zip(shards, meta, strict=True)])
    low, high = dask.compute(labels.min(), labels.max())
    check_label_range(np.array([low, high]), k, str(files[0]))
    check_fit_rows(sum(int(m[0]) for m in meta), int(low), int(high), str(files[0]), args.cv)
    notes = [floor_note(files[0].parent, count, floor)] if count else []
    return Labelled(logits, labels, kind, [str(p) for p in files], notes, floor)


def fit_on_cluster(train: Any, test: Any, args: argparse.Namespace, progress: Any) -> Any:
    """``calibrate``'s fit when the rows live on the cluster: cross-fitted there.

    ``--method auto`` is temperature scaling here: choosing among the methods compares their
    out-of-fold predictions, which :func:`~logitkit.calibration.select` holds in one place.
    The folds interleave the rows (row ``i`` is in fold ``(i + seed) mod cv``), so every shard
    takes part in every fold; each fold's fit is the method fitted with the fold's rows
    weighted 0 (one map-reduce per optimiser step, like the final fit on every row), and the
    out-of-fold figures are one more map-reduce.
    """
    import time
    import warnings

    import dask.array as da

    from .. import LogitkitError
    from ..calibration import ACCURACY_FLAG, CalibrationWarning, make_calibrator
    from ._measure import Options, measure
    from ._outcome import Outcome, held_out
    from ._report import candidates

    method = "temperature" if args.method == "auto" else args.method
    z, y = train.logits, train.y
    n = int(z.shape[0])
    y = y.rechunk((z.chunks[0],))
    folds = ((da.arange(n, chunks=(z.chunks[0],)) + args.seed) % args.cv).astype(np.int64)
    fold_fits = []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        try:
            with progress.stage(f"cross-fitting {method} over {args.cv} folds", n) as tick:
                for f in range(args.cv):
                    weight = (folds != f).astype(np.float64)
                    fold_fits.append(make_calibrator(method).fit(z, y, sample_weight=weight))
                    tick(n // args.cv)
            seconds = (time.perf_counter() - start) / args.cv
            with progress.stage(f"fitting {method} on every row", n) as tick:
                cal = make_calibrator(method).fit(z, y)
                tick(n)
        except LogitkitError as exc:
            raise CliError(f"--method {method} on the cluster: {exc}") from None
    said = list(dict.fromkeys(str(w.message) for w in caught
                              if issubclass(w.category, CalibrationWarning)))
    opts = Options.from_args(args)
    with progress.stage("measuring", 2 * n) as tick:
        none = measure(z, y, opts)
        oof = measure(z, y, opts, calibrators=fold_fits, folds=folds)
        tick(2 * n)
    table = []
    for name, figures, fit_seconds, fits in (("none", none, 0.0, []),
                                             (method, oof, seconds, fold_fits)):
        change = figures["accuracy"] - none["accuracy"]
        table.append({"method": name, "error": None, "fit_time": fit_seconds,
                      "fold_spread": math.nan, "accuracy_change": change,
                      "flagged": abs(change) > ACCURACY_FLAG,
                      "converged": all(bool(getattr(c, "converged_", True)) for c in fits),
                      "at_bound": any(bool(getattr(c, "at_bound_", False)) for c in fits)})
    note = (f"{args.cv} interleaved folds on the cluster (row i in fold (i + {args.seed}) mod "
            f"{args.cv})" + ("; --method auto fits temperature scaling there"
                             if args.method == "auto" else ""))
    if test is None:
        before, after = none, oof
    else:
        before = measure(test.logits, test.y, opts)
        after = measure(test.logits, test.y, opts, calibrators=[cal])
    m = n if test is None else int(test.y.shape[0])
    return Outcome(cal, said, before, after, held_out(args, n, m, test is not None),
                   candidates(table, method, {"none": none, method: oof}), note)
