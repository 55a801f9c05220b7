"""Wall and CPU time of the built-in demo, ``logitkit calibrate``, in fresh processes, and where
it goes.

Run: ``python benchmarks/bench_cli_demo.py [--repeats N]``.  Issue 15 wants the demo within 2 s
wall on a warm install (the kernels compiled or cached).  CPU seconds are printed beside the
wall-clock ones: on a shared, loaded machine they are the better guide to a quiet one.  The same run times, in fresh processes
too, a Python that only imports NumPy (the floor any command pays) and each stage of the demo
in-process: imports, the model, the cross-validation of every method, the measuring, the
diagram; every figure is printed with its ratio to that floor.

The command draws its diagram in a helper process (on Linux) that imports matplotlib while the
fit runs: on two idle cores the import leaves the wall time.  The same run times, interleaved
with the command, the command with the diagram drawn in-process (the helper switched off), and
splits the command's CPU seconds between its own process (the critical path on an idle machine)
and the helper's.  The command forks its helper only when the load average leaves a core idle
(the first line); the split forces it, to show what it does at the load of the run: on a
loaded machine the two processes only share the same cores.
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
# The command in-process (``logitkit.cli.main``), with the helper forced or off (argv[1]), printing
# the CPU seconds of its own process and of its reaped children (the helper).
COMMAND = r"""
import contextlib, io, json, resource, sys
import logitkit.cli._calibrate as calibrate
import logitkit.cli._helper as helper
if sys.argv[1] == "off":
    helper.available = lambda: False
else:  # whatever the load (the command forks its helper only when a core is idle)
    calibrate.idle_core = lambda: True
from logitkit.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["calibrate", "--out", sys.argv[2]])
own = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps([own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime]))
sys.exit(code)
"""


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
    split: dict[str, list[tuple[float, float, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "logitkit", "calibrate", "--out", str(Path(tmp) / "warm")])
        for i in range(args.repeats):
            floor.append(_run([sys.executable, "-c", FLOOR])[:2])
            demo.append(_run([sys.executable, "-m", "logitkit", "calibrate", "--out",
                              str(Path(tmp) / f"run{i}")])[:2])
            for mode in ("off", "on"):
                wall, _, out = _run([sys.executable, "-c", COMMAND, mode,
                                     str(Path(tmp) / f"{mode}{i}")])
                own, helper = json.loads(out)
                split[mode].append((wall, own, helper))
            stages.append(json.loads(_run([sys.executable, "-c", STAGES])[2]))
    base_wall = statistics.median(w for w, _ in floor)
    for name, runs in (("python -c 'import numpy'", floor), ("logitkit calibrate (demo)", demo)):
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:30} wall {wall:6.2f} s ({wall / base_wall:5.1f}x the floor), "
              f"CPU {cpu:6.2f} s")
    off_wall = statistics.median(w for w, _, _ in split["off"])
    for mode, name in (("off", "diagram drawn in-process"), ("on", "by the helper (forced)")):
        wall = statistics.median(w for w, _, _ in split[mode])
        own = statistics.median(o for _, o, _ in split[mode])
        helper = statistics.median(h for _, _, h in split[mode])
        print(f"  {name:28} wall {wall:6.2f} s ({wall / base_wall:5.1f}x the floor, "
              f"{wall / off_wall:4.2f}x in-process), CPU {own:5.2f} s in the command's "
              f"process + {helper:4.2f} s in the helper")
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
