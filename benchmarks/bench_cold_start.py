"""The first call of each kernel in a fresh process: nothing is compiled at run time.

Each (op, dtype) runs in its own fresh interpreter, which times ``import logitkit``, then the
first call (the extension is loaded and the kernel runs for the first time), then a second call
of the same op on the same input; the figure of merit is the first call (goal: ≤ 20 ms beyond
``import logitkit``).  Medians over ``--repeats`` fresh processes.  The calibration engine's
native pass is timed as ``ece`` and ``CalibrationStats`` (15 bins) from probabilities (made by
NumPy before the timer, so that no kernel has run) and from logits; for these the import column
includes ``import logitkit.calibration``.

    python benchmarks/bench_cold_start.py                  # in this environment
    python benchmarks/bench_cold_start.py --fresh-venv     # also: a new venv, `pip install .`,
                                                           # the build's wall time, then the same
    python benchmarks/bench_cold_start.py --demo           # also: `logitkit calibrate`'s demo

(``--fresh-venv`` builds the extension from source into a temporary virtual environment, from
the package index's cache, so it takes minutes; the venv is deleted afterwards.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy_with_grad", "ece(probs)",
       "ece(logits)", "CalibrationStats(probs)", "CalibrationStats(logits)")
DTYPES = ("float32", "float64")

CODE = """
import sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import logitkit
op, dt = sys.argv[1], sys.argv[2]
if "(" in op:
    import logitkit.calibration
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((256, 1000)).astype(dt)
t = np.random.default_rng(1).integers(0, 1000, 256)
if "(" in op:
    from_logits = op.endswith("(logits)")
    if not from_logits:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        x = e / e.sum(axis=1, keepdims=True)
    if op.startswith("ece"):
        call = lambda: logitkit.calibration.ece(x, t, from_logits=from_logits)
    else:
        call = lambda: (logitkit.calibration.CalibrationStats(15)
                        .update(x, t, from_logits=from_logits).compute())
else:
    fn = getattr(logitkit, op)
    call = (lambda: fn(x, t)) if op == "cross_entropy_with_grad" else (lambda: fn(x))
if sys.argv[3] == "warm-namespace":
    import array_api_compat.numpy  # the generic dispatch's own first use, apart
t3, c3 = time.perf_counter(), time.process_time()
call()
t4, c4 = time.perf_counter(), time.process_time()
call()
t5 = time.perf_counter()
from logitkit import config
print(t1 - t0, t2 - t1, t4 - t3, t5 - t4, config.simd_target(), "numba" in sys.modules, c4 - c3)
"""


def cold_start(python: str, repeats: int) -> list[str]:
    """The table; '1st CPU' is the first call's CPU time (every thread of the process), which a
    busy machine's wait for a core does not inflate as it does the wall clock; the last column is
    the first call when ``array_api_compat.numpy`` (which the argument checks import on first use,
    and which imports NumPy's lazy submodules) was imported before the timer: what the kernels
    themselves cost on a first call."""
    lines = [f"{'op':<24} {'dtype':<8} {'import numpy':>12} {'import logitkit':>15} "
             f"{'1st call':>9} {'1st CPU':>8} {'2nd call':>9} {'1st/2nd':>7} {'1st, ns warm':>12}   "
             f"(ms, medians of {repeats} fresh processes)"]
    target = "?"
    for op in OPS:
        for dt in DTYPES:
            rows, warm = [], []
            for _ in range(repeats):
                for mode, into in (("cold", rows), ("warm-namespace", warm)):
                    out = subprocess.run([python, "-c", CODE, op, dt, mode], capture_output=True,
                                         text=True, check=True,
                                         cwd=tempfile.gettempdir()).stdout.split()
                    assert out[5] == "False", "numba was imported"
                    into.append([float(v) * 1e3 for v in out[:4] + out[6:7]])
                    target = out[4]
            med = [statistics.median(col) for col in zip(*rows, strict=True)]
            first_warm = statistics.median(r[2] for r in warm)
            lines.append(f"{op:<24} {dt:<8} {med[0]:12.1f} {med[1]:15.1f} {med[2]:9.2f} "
                         f"{med[4]:8.2f} {med[3]:9.2f} {med[2] / med[3]:7.1f} {first_warm:12.2f}")
    lines.append(f"kernels: {target}")
    return lines


def fresh_venv(repeats: int) -> list[str]:
    base = Path(tempfile.mkdtemp(prefix="logitkit-cold-"))
    try:
        venv = base / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
        start = time.perf_counter()
        subprocess.run([python, "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
        built = time.perf_counter() - start
        lines = [f"fresh venv: `pip install .` (the extension built from source) took "
                 f"{built:.0f} s"]
        return lines + cold_start(python, repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def demo(repeats: int) -> list[str]:
    exe = shutil.which("logitkit")
    if exe is None:
        return ["demo: the `logitkit` command is not installed here"]
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([exe, "calibrate"], capture_output=True, check=True, cwd=out)
            times.append(time.perf_counter() - start)
    return [f"`logitkit calibrate` (the built-in demo), wall: median {statistics.median(times):.2f} s "
            f"of {repeats} (min {min(times):.2f} s)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fresh-venv", action="store_true",
                        help="also build and time a fresh `pip install .` in a new venv")
    parser.add_argument("--demo", action="store_true", help="also time `logitkit calibrate`")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} on {os.cpu_count()} CPUs")
    print("\n".join(cold_start(sys.executable, args.repeats)))
    if args.demo:
        print("\n".join(demo(args.repeats)))
    if args.fresh_venv:
        print("\n".join(fresh_venv(args.repeats)))


if __name__ == "__main__":
    main()
