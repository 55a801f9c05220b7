"""Sharded inputs for ``logitkit calibrate``: folders, glob patterns, and a Dask cluster.

``expand_inputs`` turns folders and glob patterns into the sorted list of prediction files they
hold.  With ``--scheduler ADDRESS`` each file becomes one block of a Dask array, read by the
cluster's workers and kept in their memory; the temperature fit (one map-reduce per Newton step)
and the before/after metrics (one map-reduce each) then run there, and only O(bins) sums come
back.
"""

from __future__ import annotations

import argparse
import functools
import glob
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ._io import FORMATS, CliError, Columns, read_labels, read_predictions

_PATTERN = "*?["


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder becomes its prediction files, a glob pattern its matches.

    Both expansions are sorted by name, so shard order (and the result) is reproducible.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in FORMATS)
            if not found:
                raise CliError(f"{path}: no prediction files ({', '.join(FORMATS)}) in this "
                               "folder")
            out.extend(found)
        elif not path.exists() and any(c in str(path) for c in _PATTERN):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                           if Path(p).is_file())
            if not found:
                raise CliError(f"{path}: no file matches this pattern")
            out.extend(found)
        else:
            out.append(path)
    return out


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
    """One file's ``(logits, labels)``, checked as the in-process reader checks them."""
    pred = read_predictions(path, cols, need_labels=labels_path is None)
    labels = read_labels(labels_path, cols) if labels_path is not None else pred.labels
    if labels is None:
        raise CliError(f"{path}: no labels found; pass --labels FILE (or store them as "
                       f"'{cols.labels_key}' / a '{cols.label_column}' column)")
    if labels.shape[0] != pred.logits.shape[0]:
        src = labels_path if labels_path is not None else path
        raise CliError(f"{src}: {labels.shape[0]} labels for {pred.logits.shape[0]} rows of "
                       "logits")
    logits = pred.logits
    if logits.shape[1] == 1:  # one binary logit per row: the logits [0, z]
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    return logits, labels


def _meta(shard: tuple[np.ndarray, np.ndarray]) -> tuple[int, int, str]:
    return int(shard[0].shape[0]), int(shard[0].shape[1]), shard[0].dtype.str


def _logits_of(shard: tuple[np.ndarray, np.ndarray], dtype: str) -> np.ndarray:
    return shard[0].astype(dtype, copy=False)


def _labels_of(shard: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return shard[1]


def load_on_cluster(args: argparse.Namespace, files: list[Path]) -> tuple[Any, Any, list[str]]:
    """Dask ``(logits, labels)`` with one block per file, read and held by the workers."""
    import dask
    import dask.array as da
    from dask import delayed

    if args.binning == "quantile":
        raise CliError("--binning quantile needs every confidence in one place; use uniform "
                       "bins with --scheduler")
    if args.labels is not None and len(files) > 1:
        raise CliError("--labels works with one input file; give each file its labels instead")
    cols = Columns(label_column=args.label_column, logits_key=args.logits_key,
                   labels_key=args.labels_key)
    read = delayed(_read_shard, pure=True)
    shards = dask.persist(*[read(path, args.labels, cols) for path in files])
    meta = dask.compute(*[delayed(_meta, pure=True)(s) for s in shards])
    widths = sorted({k for _, k, _ in meta})
    if len(widths) > 1:
        raise CliError(f"the input files have different numbers of classes: {widths}")
    dtype = np.result_type(*[np.dtype(d) for _, _, d in meta]).str
    logits = da.concatenate([
        da.from_delayed(delayed(_logits_of, pure=True)(s, dtype), shape=(n, k), dtype=dtype)
        for s, (n, k, _) in zip(shards, meta, strict=True)])
    labels = da.concatenate([
        da.from_delayed(delayed(_labels_of, pure=True)(s), shape=(n,), dtype=np.int64)
        for s, (n, _, _) in zip(shards, meta, strict=True)])
    return logits, labels, [str(p) for p in files]


def _evaluate_block(z: np.ndarray, y: np.ndarray, temperature: float, n_bins: int
                    ) -> tuple[Any, float]:
    """``(CalibrationStats of softmax(z / T), Σ −log p_y)`` of one block, from the logits."""
    from .. import cross_entropy, softmax
    from ..calibration import CalibrationStats

    z = z.astype(np.float64)
    stats = CalibrationStats(n_bins=n_bins).update(softmax(z, axis=1, temperature=temperature), y)
    return stats, float(cross_entropy(z, y, temperature=temperature, reduction="sum"))


def _merge_evaluations(a: tuple[Any, float], b: tuple[Any, float]) -> tuple[Any, float]:
    return a[0].merge(b[0]), a[1] + b[1]


def evaluate_on_cluster(logits: Any, y: Any, temperature: float, n_bins: int,
                        binning: str) -> dict[str, Any]:
    """The CLI's ``evaluate`` on Dask arrays: one map-reduce of per-block stats."""
    import dask
    from dask import delayed


    if binning != "uniform":
        raise CliError("--binning quantile needs every confidence in one place; use uniform "
                       "bins with --scheduler")
    y = y.rechunk((logits.chunks[0],))
    block = delayed(_evaluate_block, pure=True)
    parts = [block(zb, yb, temperature, n_bins)
             for zb, yb in zip(logits.to_delayed().ravel(), y.to_delayed().ravel(), strict=True)]
    # Each part is O(bins): merged here, in order (the merge is exact).
    stats, nll_sum = functools.reduce(_merge_evaluations, dask.compute(*parts))
    out: dict[str, Any] = stats.compute()
    out["nll"] = nll_sum / stats.count  # from the logits: exact where log(softmax) underflows
    return out
