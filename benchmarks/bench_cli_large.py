"""``logitkit calibrate`` on a large file: its time against loading the file plus the fit.

Run: ``python benchmarks/bench_cli_large.py [--rows 1000000] [--classes 100] [--method
temperature] [--repeats 3]``.  Issue 14 asks that ``logitkit calibrate`` on 1e6 × 100 float32
logits (``.npy`` + labels) finish in at most 3× the time of loading the file plus the fit, with
an interval on every figure.

The same run times, each as the median of ``--repeats`` fresh processes:

- the baseline: ``numpy.load`` of both files, then ``logitkit.calibration.select`` with the
  method and folds the command uses (the fit the command cannot avoid: a cross-validation, so
  that every figure is held out), and, for scale, one fit of the method on every row;
- the command itself, ``python -m logitkit calibrate LOGITS.npy --labels LABELS.npy`` with the
  same method (the diagram included, progress off).

It prints the seconds and the ratio of the command to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE = r"""
import sys, time, warnings
import numpy as np
from logitkit.calibration import select
from logitkit.calibration._select import CANDIDATES
warnings.simplefilter("ignore")
logits_path, labels_path, method, cv = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
z = np.load(logits_path)
y = np.load(labels_path)
t1 = time.perf_counter()
select(z, y, methods="auto" if method == "auto" else [method], cv=cv, random_state=0)
t2 = time.perf_counter()
cls, params = CANDIDATES["temperature" if method == "auto" else method]
cls(**params).fit(z, y)
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def _make(folder: Path, n: int, k: int) -> tuple[Path, Path]:
    """Logits three times too confident for their labels, float32, as a model would write."""
    rng = np.random.default_rng(0)
    logits = folder / "logits.npy"
    labels = folder / "labels.npy"
    z = np.empty((n, k), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    step = 100_000
    for start in range(0, n, step):
        true = rng.normal(size=(min(step, n - start), k)).astype(np.float32) * 1.5
        p = np.exp(true - true.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y[start:start + len(true)] = (p.cumsum(axis=1) > rng.random((len(true), 1))).argmax(1)
        z[start:start + len(true)] = 3 * true
    np.save(logits, z)
    np.save(labels, y)
    return logits, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--method", default="temperature")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        logits, labels = _make(folder, args.rows, args.classes)
        base, command = [], []
        for i in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", BASELINE, str(logits), str(labels),
                                  args.method, str(args.cv)], capture_output=True, text=True,
                                 check=True).stdout.split()
            base.append(tuple(float(v) for v in out))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "logitkit", "calibrate", str(logits),
                            "--labels", str(labels), "--method", args.method, "--cv",
                            str(args.cv), "--out", str(folder / f"out{i}"), "--progress",
                            "never"], capture_output=True, text=True, check=True)
            command.append(time.perf_counter() - start)
    load = statistics.median(b[0] for b in base)
    fit = statistics.median(b[1] for b in base)
    one = statistics.median(b[2] for b in base)
    cmd = statistics.median(command)
    print(f"{args.rows:,} x {args.classes} float32 logits, --method {args.method}, "
          f"--cv {args.cv} (medians of {args.repeats} fresh processes)")
    rows = [("load both .npy files", load, ""),
            ("select: the fit the command needs", fit, f"  (one fit on every row: {one:.2f} s)"),
            ("load + fit", load + fit, "  1.00x"),
            ("logitkit calibrate", cmd, f"  {cmd / (load + fit):.2f}x (goal: at most 3x)")]
    for name, seconds, tail in rows:
        print(f"  {name:36} {seconds:8.2f} s{tail}")


if __name__ == "__main__":
    main()
