"""Small kernels on a machine whose every core is busy: logitkit against SciPy.

Starts one busy process per CPU (a pure-Python loop each, ended when the run ends), then times
a float32 (1000, 100) softmax by ``logitkit.softmax`` and by ``scipy.special.softmax`` on the
same input: medians of ``--calls`` calls each, interleaved in rounds so that both see the same
load.  The goal is logitkit no slower than SciPy.  Without ``--no-load`` the same is timed first
on the machine as it is, for comparison.

The calibration engine's native pass is timed the same way against its NumPy pass
(``LOGITKIT_DISABLE_KERNELS=1``, set between rounds): ``ece`` and ``CalibrationStats`` on the
same shape, from probabilities and from logits.  The goal is the native pass no slower.

    python benchmarks/bench_contention.py [--calls 200] [--shape 1000x100] [--hogs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


CALIBRATION = ("ece(probs)", "ece(logits)", "CalibrationStats(probs)",
               "CalibrationStats(logits)")


def calibration_call(op: str, shape: tuple[int, int]) -> Callable[[], object]:
    from logitkit.calibration import CalibrationStats, ece

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    from_logits = op.endswith("(logits)")
    if not from_logits:  # probabilities by NumPy, so that no kernel runs before the timing
        e = np.exp(x - x.max(axis=1, keepdims=True))
        x = e / e.sum(axis=1, keepdims=True)
    if op.startswith("ece"):
        return lambda: ece(x, y, from_logits=from_logits)
    return lambda: CalibrationStats(15).update(x, y, from_logits=from_logits).compute()


def median_times(impls: dict[str, tuple[str | None, Callable[[], object]]],
                 calls: int) -> dict[str, float]:
    """Medians of ``calls`` calls of each impl, in interleaved rounds of 10; each impl is run
    with ``LOGITKIT_DISABLE_KERNELS`` set to its value (unset for None) for its rounds."""
    def environment(value: str | None) -> None:
        if value is None:
            os.environ.pop("LOGITKIT_DISABLE_KERNELS", None)
        else:
            os.environ["LOGITKIT_DISABLE_KERNELS"] = value

    try:
        for value, fn in impls.values():  # warm up: imports, first calls
            environment(value)
            for _ in range(5):
                fn()
        times: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(calls // 10):
            for name, (value, fn) in impls.items():  # rounds of 10 calls each, interleaved
                environment(value)
                for _ in range(10):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    finally:
        environment(None)
    return {name: statistics.median(ts) for name, ts in times.items()}


def timings(shape: tuple[int, int], calls: int) -> dict[str, dict[str, float]]:
    import scipy.special

    import logitkit

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = {"softmax": median_times({"logitkit": (None, lambda: logitkit.softmax(x)),
                                    "scipy": (None, lambda: scipy.special.softmax(x, axis=-1))},
                                   calls)}
    for op in CALIBRATION:
        fn = calibration_call(op, shape)
        out[op] = median_times({"native": (None, fn), "numpy": ("1", fn)}, calls)
    return out


def report(label: str, t: dict[str, dict[str, float]]) -> str:
    s = t["softmax"]
    lines = [f"{label:<32} logitkit {s['logitkit'] * 1e3:7.3f} ms   scipy {s['scipy'] * 1e3:7.3f} ms"
             f"   scipy/logitkit {s['scipy'] / s['logitkit']:5.2f}x"]
    for op in CALIBRATION:
        c = t[op]
        lines.append(f"  {op:<30} native {c['native'] * 1e3:7.3f} ms   numpy pass "
                     f"{c['numpy'] * 1e3:7.3f} ms   numpy/native {c['numpy'] / c['native']:5.2f}x")
    return "\n".join(lines)


def load_ratios(quiet: dict[str, dict[str, float]], busy: dict[str, dict[str, float]],
                hogs: int) -> str:
    """How much the busy processes slowed each op down: busy time / quiet time."""
    lines = [f"slow-down with {hogs} busy processes (busy / as the machine is):"]
    for op, impls in quiet.items():
        ratios = "   ".join(f"{name} {busy[op][name] / t:5.2f}x" for name, t in impls.items())
        lines.append(f"  {op:<30} {ratios}")
    return "\n".join(lines)


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
    quiet = None
    if not args.no_load:
        quiet = timings(shape, args.calls)
        print(report("as the machine is", quiet))
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=600)])
            for _ in range(args.hogs)]
    try:
        time.sleep(1.0)  # let the scheduler spread them
        busy = timings(shape, args.calls)
        print(report(f"with {args.hogs} busy processes", busy))
        if quiet is not None:
            print(load_ratios(quiet, busy, args.hogs))
    finally:
        for p in hogs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
