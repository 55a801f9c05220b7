"""The scaling fits on 1e5 x 100 float32 logits (or ``--n`` rows) as users meet them: cold,
forked and busy.

For each method, in one run:

- cold: a fresh interpreter imports logitkit and fits once (the import and the first fit timed
  apart), then fits again (warm);
- forked: the parent fits, then a ``fork()``-ed child fits the same rows (its pool, BLAS limit
  and kernels inherited across the fork), and its coefficients are compared with the parent's;
- busy: the warm fit again next to two busy processes (a pure-Python loop each).

Figures are wall seconds and ratios to the warm fit timed in the same process.

    python benchmarks/bench_fit_conditions.py [--methods matrix structured dirichlet vector
                                               structured-vector] [--n 10000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HOG = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"

CHILD = r"""
import os, sys, time, warnings
t0 = time.perf_counter()
import numpy as np
import logitkit.calibration as cal
t_import = time.perf_counter() - t0
sys.path.insert(0, "benchmarks")
from bench_calibrators import _speed_data
z, y, _, _ = _speed_data(int(sys.argv[3]), 100)
make = {"matrix": cal.MatrixScaler, "structured": cal.StructuredScaler,
        "dirichlet": cal.DirichletScaler, "vector": cal.VectorScaler,
        "structured-vector": lambda: cal.StructuredScaler(form="vector")}[sys.argv[1]]
warnings.simplefilter("ignore")

def fit():
    t = time.perf_counter()
    est = make().fit(z, y)
    return time.perf_counter() - t, est

first, est = fit()
warm, est = fit()
warm = min(warm, fit()[0])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    t, child = fit()
    same = bool(np.array_equal(child.coef_, est.coef_))
    os.write(w, f"{t} {same}".encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
t_fork, same = os.read(r, 100).decode().split()
hogs = [__import__("subprocess").Popen([sys.executable, "-c", sys.argv[2]]) for _ in range(2)]
try:
    time.sleep(0.5)
    busy = min(fit()[0] for _ in range(3))
finally:
    for h in hogs:
        h.kill()
print(f"{sys.argv[1]:17s} import {t_import:5.2f} s | first fit {first:5.2f} ({first / warm:4.2f}x) "
      f"| warm {warm:5.2f} | forked child {float(t_fork):5.2f} ({float(t_fork) / warm:4.2f}x, "
      f"same coefficients: {same}) | two busy processes {busy:5.2f} ({busy / warm:4.2f}x)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=["matrix", "structured", "dirichlet"],
                        choices=["matrix", "structured", "dirichlet", "vector", "structured-vector"])
    parser.add_argument("--n", type=int, default=100_000, help="rows (default 1e5)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.n} x 100; each line is one fresh process")
    for method in args.methods:
        out = subprocess.run([sys.executable, "-c", CHILD, method, HOG, str(args.n)], capture_output=True,
                             text=True, check=True)
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
