"""Time of ``import logitkit`` in fresh interpreters (median of several), NumPy's own import apart.

Run: ``python benchmarks/bench_import.py [--repeats N]``.  The goal is under 0.5 s; no optional
backend may be imported (the kernels' extension is loaded on first use, see bench_cold_start.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = (
    "import sys, time; t0 = time.perf_counter(); import numpy; t1 = time.perf_counter(); "
    "import logitkit; t2 = time.perf_counter(); "
    "print(t1 - t0, t2 - t1, 'torch' in sys.modules)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    numpy_s, logitkit_s = [], []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                             check=True).stdout.split()
        numpy_s.append(float(out[0]))
        logitkit_s.append(float(out[1]))
        assert out[2] == "False", "torch was imported by `import logitkit`"
    print(f"import numpy:            median {statistics.median(numpy_s):.3f} s")
    print(f"import logitkit (after): median {statistics.median(logitkit_s):.3f} s")
    print(f"total:                   median "
          f"{statistics.median(a + b for a, b in zip(numpy_s, logitkit_s, strict=True)):.3f} s")


if __name__ == "__main__":
    main()
