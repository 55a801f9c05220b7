"""Wall and CPU time of the built-in demo, ``logitkit calibrate``, in fresh processes, and where
it goes.

Run: ``python benchmarks/bench_cli_demo.py [--repeats N]``.  Issue 15 wants the demo within 2 s
wall on a warm install (the kernels compiled or cached).  CPU seconds are printed beside the
wall-clock ones: on a shared, loaded machine they are the better guide to a quiet one.  The same run times, in fresh processes
too, a Python that only imports NumPy (the floor any command pays) and each stage of the demo
in-process: imports, the model, the cross-validation of every method, the measuring, the
diagram; every figure is printed with its ratio to that floor.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = "import numpy"
STAGES = r"""
import time, io, json, sys
t = [(time.perf_counter(), time.process_time())]
import numpy as np
from logitkit.cli._measure import Options, measure
from logitkit.calibration import select
import matplotlib.figure, matplotlib.backends.backend_agg
t.append((time.perf_counter(), time.process_time()))
from logitkit.cli._demo import make_demo
demo = make_demo()
t.append((time.perf_counter(), time.process_time()))
sel = select(demo.logits, demo.labels, cv=5, random_state=0)
t.append((time.perf_counter(), time.process_time()))
figures = {r["method"]: measure(sel.oof_logits(r["method"]), demo.labels, Options())
           for r in sel.table_ if r["error"] is None}
before, after = figures["none"], figures[sel.best_]
t.append((time.perf_counter(), time.process_time()))
from logitkit.calibration._diagram import figure_from_stats
buf = io.BytesIO()
figure_from_stats([before, after], ("before", "after")).savefig(buf, format="png")
t.append((time.perf_counter(), time.process_time()))
print(json.dumps([[b[0] - a[0], b[1] - a[1]] for a, b in zip(t, t[1:])]))
"""
NAMES = ("imports", "the model", "select (every method, 5 folds)",
         "measuring (every candidate, intervals)", "the diagram")


def _run(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the child, and its stdout."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    floor, demo, stages = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "logitkit", "calibrate", "--out", str(Path(tmp) / "warm")])
        for i in range(args.repeats):
            floor.append(_run([sys.executable, "-c", FLOOR])[:2])
            demo.append(_run([sys.executable, "-m", "logitkit", "calibrate", "--out",
                              str(Path(tmp) / f"run{i}")])[:2])
            stages.append(json.loads(_run([sys.executable, "-c", STAGES])[2]))
    base_wall = statistics.median(w for w, _ in floor)
    for name, runs in (("python -c 'import numpy'", floor), ("logitkit calibrate (demo)", demo)):
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:30} wall {wall:6.2f} s ({wall / base_wall:5.1f}x the floor), "
              f"CPU {cpu:6.2f} s")
    print("stages of the demo, in-process (medians):")
    for j, name in enumerate(NAMES):
        wall = statistics.median(run[j][0] for run in stages)
        cpu = statistics.median(run[j][1] for run in stages)
        print(f"  {name:40} wall {wall:6.3f} s ({wall / base_wall:5.2f}x the floor), "
              f"CPU {cpu:6.3f} s")
    print(f"(medians of {args.repeats} fresh processes after one warm-up run; the goal is the "
          "demo within 2 s wall)")


if __name__ == "__main__":
    main()
