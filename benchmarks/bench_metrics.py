"""Calibration metrics: logitkit's one-pass engine against a plain NumPy version and torchmetrics.

    python benchmarks/bench_metrics.py                       # 1e6 x 100, 1e7 x 10, 1e6 x 1000
    python benchmarks/bench_metrics.py --shapes 200000x100 --repeat 3

For each shape (float32 probabilities of an overconfident model and their logits) it prints, as
ratios to ``np.copyto`` of the same array timed in the same run (medians of ``--repeat``: on a
shared machine the median says more than the best):

* each of ``ece``, ``mce``, ``brier_score``, ``nll``, ``accuracy`` on the probabilities, for
  logitkit, a ten-line NumPy version of the same definition, and torchmetrics (its calibration
  error and accuracy; PyTorch's own ``nll_loss`` and a tensor expression for the Brier score,
  which torchmetrics does not have);
* all five from the logits in one call (``CalibrationStats().update(logits, y,
  from_logits=True).compute()``), against NumPy's softmax followed by the five NumPy versions;
* the bootstrap intervals of every figure (``CalibrationStats.intervals``, 1000 resamples);
* the peak memory each logitkit call allocates beyond its input, as a share of the input
  (``tracemalloc``, which NumPy reports to), and that of the NumPy version.

Ratios below 1 are faster than a copy of the input.  ``--json`` writes the numbers to a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from logitkit.calibration import CalibrationStats, accuracy, brier_score, ece, mce, nll

BINS = 15


def make_data(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 ``(logits, probs, labels)`` of a model three times too confident."""
    rng = np.random.default_rng(seed)
    z = np.empty((n, k), dtype=np.float32)
    p = np.empty((n, k), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    step = max(1, (1 << 22) // k)  # rows of about 4M entries per step
    for s in range(0, n, step):
        rows = min(step, n - s)
        u = rng.standard_normal((rows, k), dtype=np.float32) * 1.5
        y[s:s + rows] = np.argmax(u + rng.gumbel(size=(rows, k)).astype(np.float32), axis=1)
        zz = 3.0 * u
        z[s:s + rows] = zz
        e = np.exp(zz - zz.max(axis=1, keepdims=True))
        p[s:s + rows] = e / e.sum(axis=1, keepdims=True)
    return z, p, y


# ------------------------------------------------------------------------------ plain NumPy


def np_ece(p: np.ndarray, y: np.ndarray, norm: str = "l1") -> float:
    conf = p.max(axis=1)
    hit = p.argmax(axis=1) == y
    b = np.clip(np.ceil(conf * BINS).astype(np.int64) - 1, 0, BINS - 1)
    cnt = np.bincount(b, minlength=BINS)
    gap = np.abs(np.bincount(b, hit, BINS) - np.bincount(b, conf, BINS)) / np.maximum(cnt, 1)
    return float(gap.max() if norm == "max" else (cnt * gap).sum() / len(y))


def np_brier(p: np.ndarray, y: np.ndarray) -> float:
    d = p.astype(np.float64)
    d[np.arange(len(y)), y] -= 1.0
    return float((d * d).sum(axis=1).mean())


def np_nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(p[np.arange(len(y)), y].astype(np.float64)).mean())


def np_accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float((p.argmax(axis=1) == y).mean())


def np_all_from_logits(z: np.ndarray, y: np.ndarray) -> list[float]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return [np_ece(p, y), np_ece(p, y, "max"), np_brier(p, y), np_nll(p, y), np_accuracy(p, y)]


# ------------------------------------------------------------------------------ torchmetrics


def torch_peers(p: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]] | None:
    try:
        import torch
        import torch.nn.functional as F
        from torchmetrics.functional.classification import (
            multiclass_accuracy,
            multiclass_calibration_error,
        )
    except ImportError:
        return None
    tp, ty = torch.from_numpy(p), torch.from_numpy(y)
    k = p.shape[1]
    return {
        "ece": lambda: multiclass_calibration_error(tp, ty, k, n_bins=BINS, norm="l1"),
        "mce": lambda: multiclass_calibration_error(tp, ty, k, n_bins=BINS, norm="max"),
        "brier_score": lambda: ((tp - F.one_hot(ty, k)) ** 2).sum(dim=1).mean(),
        "nll": lambda: F.nll_loss(torch.log(tp), ty),
        "accuracy": lambda: multiclass_accuracy(tp, ty, k, average="micro"),
    }


# ------------------------------------------------------------------------------ timing


def median_time(f: Callable[[], Any], repeat: int) -> float:
    """The median wall time of ``repeat`` calls (after one warm-up call)."""
    f()
    out = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def peak_extra(f: Callable[[], Any], nbytes: int) -> float:
    """Peak bytes ``f`` allocates (NumPy and Python), as a share of ``nbytes``."""
    gc.collect()
    tracemalloc.start()
    try:
        f()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / nbytes


def run(n: int, k: int, repeat: int) -> dict[str, Any]:
    z, p, y = make_data(n, k)
    dst = np.empty_like(p)
    base = median_time(lambda: np.copyto(dst, p), repeat)
    ours = {
        "ece": lambda: ece(p, y),
        "mce": lambda: mce(p, y),
        "brier_score": lambda: brier_score(p, y),
        "nll": lambda: nll(p, y),
        "accuracy": lambda: accuracy(p, y),
    }
    plain = {
        "ece": lambda: np_ece(p, y),
        "mce": lambda: np_ece(p, y, "max"),
        "brier_score": lambda: np_brier(p, y),
        "nll": lambda: np_nll(p, y),
        "accuracy": lambda: np_accuracy(p, y),
    }
    peers = torch_peers(p, y)
    rows: dict[str, Any] = {"n": n, "k": k, "copyto_s": base}
    for name in ours:
        rows[name] = {
            "logitkit": median_time(ours[name], repeat) / base,
            "numpy": median_time(plain[name], repeat) / base,
            "torchmetrics": None if peers is None else median_time(peers[name], repeat) / base,
            "logitkit_peak_extra": peak_extra(ours[name], p.nbytes),
            "numpy_peak_extra": peak_extra(plain[name], p.nbytes),
        }

    def all_five() -> dict[str, Any]:
        return CalibrationStats(BINS).update(z, y, from_logits=True).compute()

    rows["all five from logits"] = {
        "logitkit": median_time(all_five, repeat) / base,
        "numpy": median_time(lambda: np_all_from_logits(z, y), repeat) / base,
        "torchmetrics": None,
        "logitkit_peak_extra": peak_extra(all_five, z.nbytes),
        "numpy_peak_extra": peak_extra(lambda: np_all_from_logits(z, y), z.nbytes),
    }
    stats = CalibrationStats(BINS).update(z, y, from_logits=True)
    t_int = median_time(lambda: stats.intervals(random_state=0), repeat)
    rows["intervals (1000 resamples)"] = {"seconds": t_int, "ratio": t_int / base}
    return rows


def show(rows: dict[str, Any]) -> None:
    n, k = rows["n"], rows["k"]
    print(f"\n{n:.0e} x {k} float32 (np.copyto {rows['copyto_s'] * 1e3:.0f} ms = 1.0)")
    print(f"{'':24}{'logitkit':>10}{'numpy':>10}{'torchm.':>10}{'peak +mem':>11}{'numpy mem':>11}")
    for key, r in rows.items():
        if not isinstance(r, dict) or "logitkit" not in r:
            continue
        tm = "-" if r["torchmetrics"] is None else f"{r['torchmetrics']:.2f}"
        print(f"{key:24}{r['logitkit']:>10.2f}{r['numpy']:>10.2f}{tm:>10}"
              f"{100 * r['logitkit_peak_extra']:>10.1f}%{100 * r['numpy_peak_extra']:>10.1f}%")
    it = rows["intervals (1000 resamples)"]
    print(f"{'intervals, every figure':24}{it['ratio']:>10.2f}   ({it['seconds'] * 1e3:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1000000x100", "10000000x10",
                                                        "1000000x1000"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results = []
    for shape in args.shapes:
        n, k = (int(float(v)) for v in shape.lower().split("x"))
        rows = run(n, k, args.repeat)
        show(rows)
        results.append(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
