"""Small kernels on a machine whose every core is busy: logitkit against SciPy.

Starts one busy process per CPU (a pure-Python loop each, ended when the run ends), then times
a float32 (1000, 100) softmax by ``logitkit.softmax`` and by ``scipy.special.softmax`` on the
same input: medians of ``--calls`` calls each, interleaved in rounds so that both see the same
load.  The goal is logitkit no slower than SciPy.  Without ``--no-load`` the same is timed first
on the machine as it is, for comparison.

    python benchmarks/bench_contention.py [--calls 200] [--shape 1000x100] [--hogs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def timings(shape: tuple[int, int], calls: int) -> dict[str, float]:
    import scipy.special

    import logitkit

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    impls = {"logitkit": lambda: logitkit.softmax(x),
             "scipy": lambda: scipy.special.softmax(x, axis=-1)}
    for fn in impls.values():  # warm up: imports, first calls
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(calls // 10):
        for name, fn in impls.items():  # rounds of 10 calls each, interleaved
            for _ in range(10):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(label: str, t: dict[str, float]) -> str:
    return (f"{label:<32} logitkit {t['logitkit'] * 1e3:7.3f} ms   scipy {t['scipy'] * 1e3:7.3f} ms"
            f"   scipy/logitkit {t['scipy'] / t['logitkit']:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--shape", default="1000x100")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2,
                        help="busy processes (default: one per CPU)")
    parser.add_argument("--no-load", action="store_true", help="skip the run without the hogs")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    from logitkit import config

    print(f"float32 {shape[0]}x{shape[1]} softmax, medians of {args.calls} calls; kernels "
          f"{config.simd_target()}, {config.num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if not args.no_load:
        print(report("as the machine is", timings(shape, args.calls)))
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=600)])
            for _ in range(args.hogs)]
    try:
        time.sleep(1.0)  # let the scheduler spread them
        print(report(f"with {args.hogs} busy processes", timings(shape, args.calls)))
    finally:
        for p in hogs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
