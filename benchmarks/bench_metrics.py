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

The data are built a slab of rows at a time, and the probabilities' part and the logits' part
each hold only their own matrix; the NumPy and PyTorch references form their float64, one-hot
and softmax temporaries a slab of rows at a time (``SLAB`` entries): 1e6 x 1000 then peaks near
two copies of its 4 GB matrix (the input and the NumPy softmax's output), not six.

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


def make_data(n: int, k: int, seed: int = 0, keep: str = "both"
              ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """float32 ``(logits, probs, labels)`` of a model three times too confident, built a slab
    of rows at a time; ``keep="logits"`` or ``"probs"`` holds only that one (the same values:
    the same random stream), so that a 1e6 x 1000 run never holds both 4 GB matrices."""
    rng = np.random.default_rng(seed)
    z = np.empty((n, k), dtype=np.float32) if keep in ("both", "logits") else None
    p = np.empty((n, k), dtype=np.float32) if keep in ("both", "probs") else None
    y = np.empty(n, dtype=np.int64)
    step = max(1, (1 << 22) // k)  # rows of about 4M entries per slab
    for s in range(0, n, step):
        rows = min(step, n - s)
        u = rng.standard_normal((rows, k), dtype=np.float32) * 1.5
        y[s:s + rows] = np.argmax(u + rng.gumbel(size=(rows, k)).astype(np.float32), axis=1)
        zz = 3.0 * u
        if z is not None:
            z[s:s + rows] = zz
        if p is not None:
            e = np.exp(zz - zz.max(axis=1, keepdims=True))
            p[s:s + rows] = e / e.sum(axis=1, keepdims=True)
    return z, p, y


def row_slabs(n: int, k: int) -> list[slice]:
    """Slabs of rows of at most ``SLAB`` entries: the references form their float64, one-hot
    and softmax temporaries a slab at a time (a whole-matrix float64 copy of 1e6 x 1000 is
    8 GB), as a user with a large matrix would."""
    step = max(1, SLAB // k)
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


SLAB = 1 << 24


# ------------------------------------------------------------------------------ plain NumPy


def np_ece(p: np.ndarray, y: np.ndarray, norm: str = "l1") -> float:
    conf = p.max(axis=1)
    hit = p.argmax(axis=1) == y
    b = np.clip(np.ceil(conf * BINS).astype(np.int64) - 1, 0, BINS - 1)
    cnt = np.bincount(b, minlength=BINS)
    gap = np.abs(np.bincount(b, hit, BINS) - np.bincount(b, conf, BINS)) / np.maximum(cnt, 1)
    return float(gap.max() if norm == "max" else (cnt * gap).sum() / len(y))


def np_brier(p: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for r in row_slabs(*p.shape):
        d = p[r].astype(np.float64)
        d[np.arange(len(d)), y[r]] -= 1.0
        total += float((d * d).sum())
    return total / len(y)


def np_nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(p[np.arange(len(y)), y].astype(np.float64)).mean())


def np_accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float((p.argmax(axis=1) == y).mean())


def np_all_from_logits(z: np.ndarray, y: np.ndarray) -> list[float]:
    p = np.empty_like(z)
    for r in row_slabs(*z.shape):
        e = np.exp(z[r] - z[r].max(axis=1, keepdims=True))
        p[r] = e / e.sum(axis=1, keepdims=True)
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
    n, k = p.shape
    slabs = row_slabs(n, k)

    def brier() -> Any:  # the one-hot (int64) of 1e6 x 1000 alone is 8 GB: a slab at a time
        return sum(((tp[r] - F.one_hot(ty[r], k)) ** 2).sum() for r in slabs) / n

    def nll() -> Any:
        return sum(F.nll_loss(torch.log(tp[r]), ty[r], reduction="sum") for r in slabs) / n

    return {
        "ece": lambda: multiclass_calibration_error(tp, ty, k, n_bins=BINS, norm="l1"),
        "mce": lambda: multiclass_calibration_error(tp, ty, k, n_bins=BINS, norm="max"),
        "brier_score": brier,
        "nll": nll,
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


def copy_time(p: np.ndarray, repeat: int) -> float:
    """The baseline: np.copyto of ``p`` (its destination freed on return)."""
    dst = np.empty_like(p)
    return median_time(lambda: np.copyto(dst, p), repeat)


def probability_part(n: int, k: int, repeat: int) -> dict[str, Any]:
    """The copy baseline and each metric on the probabilities (only they are held, with
    np.copyto's destination while the baseline is timed)."""
    _, p, y = make_data(n, k, keep="probs")
    assert p is not None
    base = copy_time(p, repeat)
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
    return rows


def run(n: int, k: int, repeat: int) -> dict[str, Any]:
    # The probabilities' part, then the logits' part: one 4-byte matrix at a time.
    rows = probability_part(n, k, repeat)
    base = rows["copyto_s"]
    gc.collect()
    z, _, y = make_data(n, k, keep="logits")
    assert z is not None

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
