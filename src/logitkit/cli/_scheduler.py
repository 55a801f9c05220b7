"""``logitkit calibrate --scheduler ADDRESS``: the shards of a folder on a Dask cluster.

Each file becomes one block of a Dask array, read by the cluster's workers with the same reader
as a local run (so every file is checked the same way) and kept in their memory; the
temperature fit (one map-reduce per Newton step) and the before/after metrics (one map-reduce
each) then run there, and only O(bins) sums come back.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ._io import CliError, Columns, missing_labels, read_predictions
from ._kinds import Kind, detect, to_logits


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


def _logits_of(shard: tuple[np.ndarray, np.ndarray], kind: Kind, dtype: str, path: str
               ) -> np.ndarray:
    return to_logits(shard[0], kind, path).astype(dtype, copy=False)


def _labels_of(shard: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return shard[1]


def load_on_cluster(args: argparse.Namespace, files: list[Path]) -> Any:
    """The calibration set as Dask arrays with one block per file, read and held by the
    workers: a :class:`~logitkit.cli._calibrate.Labelled`."""
    import dask
    import dask.array as da
    from dask import delayed

    from ._calibrate import Labelled, check_label_range

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
    dtype = np.result_type(*[np.dtype(m[2]) for m in meta]).str
    k = max(2, widths[0])
    logits = da.concatenate([
        da.from_delayed(delayed(_logits_of, pure=True)(s, kind, dtype, str(path)),
                        shape=(m[0], k), dtype=dtype)
        for s, m, path in zip(shards, meta, files, strict=True)])
    labels = da.concatenate([
        da.from_delayed(delayed(_labels_of, pure=True)(s), shape=(m[0],), dtype=np.int64)
        for s, m in zip(shards, meta, strict=True)])
    low, high = dask.compute(labels.min(), labels.max())
    check_label_range(np.array([low, high]), k, str(files[0]))
    return Labelled(logits, labels, kind, [str(p) for p in files])


def _evaluate_block(z: np.ndarray, y: np.ndarray, temperature: float, edges: np.ndarray
                    ) -> tuple[Any, float]:
    """``(CalibrationStats of softmax(z / T), Σ −log p_y)`` of one block, from the logits."""
    from .. import log_softmax, softmax
    from ..calibration import CalibrationStats

    z = z.astype(np.float64)
    stats = CalibrationStats(edges=edges).update(softmax(z, axis=1, temperature=temperature), y)
    logp = log_softmax(z, axis=1, temperature=temperature)
    return stats, -float(logp[np.arange(len(y)), y].sum())


def _merge_evaluations(a: tuple[Any, float], b: tuple[Any, float]) -> tuple[Any, float]:
    return a[0].merge(b[0]), a[1] + b[1]


def evaluate_on_cluster(logits: Any, y: Any, temperature: float, n_bins: int,
                        binning: str) -> dict[str, Any]:
    """The CLI's ``evaluate`` on Dask arrays: one map-reduce of per-block stats."""
    import dask
    from dask import delayed

    from ..calibration._binning import uniform_edges
    from ..calibration._dask import _tree

    if binning != "uniform":
        raise CliError("--binning quantile needs every confidence in one place; use uniform "
                       "bins with --scheduler")
    edges = uniform_edges(n_bins)
    y = y.rechunk((logits.chunks[0],))
    block = delayed(_evaluate_block, pure=True)
    parts = [block(zb, yb, temperature, edges)
             for zb, yb in zip(logits.to_delayed().ravel(), y.to_delayed().ravel(), strict=True)]
    (stats, nll_sum) = dask.compute(_tree(parts, _merge_evaluations))[0]
    out: dict[str, Any] = stats.compute()
    out["nll"] = nll_sum / stats.count  # from the logits: exact where log(softmax) underflows
    return out
