"""Peak memory of tiled and untiled ``logitkit.attention.attention`` (forward pass) at a long sequence.

Every case runs in a fresh Python process.  A case builds its inputs, resets the process's peak
resident memory (Linux ``/proc/self/clear_refs``; elsewhere the peak since start-up is used), runs
one forward pass, and reports the peak's increase over the resident memory before the call.  For
NumPy cases it also reports the peak of ``tracemalloc`` (NumPy registers its buffers there), which
counts array memory exactly.

Cases: ``numpy-untiled``, ``numpy-tiled``, ``torch-untiled``, ``torch-tiled`` and, for reference,
``torch-sdpa`` (``torch.nn.functional.scaled_dot_product_attention``).  The untiled cases hold the
``S × S`` scores (and their exponentials); the tiled ones ``S × block``.

Run::

    python benchmarks/bench_attention_memory.py                    # S=4096, D=64, block 256, float32
    python benchmarks/bench_attention_memory.py --seq 8192 --block 512 --dtype float64
    python benchmarks/bench_attention_memory.py --cases numpy-tiled numpy-untiled --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = ["numpy-untiled", "numpy-tiled", "torch-untiled", "torch-tiled", "torch-sdpa"]


def _rss_kib() -> tuple[int, int]:
    """(current, peak) resident memory in KiB."""
    current = peak = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
        return current, peak
    except OSError:  # not Linux: the peak since start-up
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            peak //= 1024
        return peak, peak


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_case(case: str, seq: int, dim: int, block: int, dtype: str) -> dict:
    """One case, in this process."""
    import numpy as np

    from logitkit.attention import attention

    backend, kind = case.split("-")
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((seq, dim)).astype(dtype) for _ in range(3)]
    tracemalloc_peak = None
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        torch.set_grad_enabled(False)
        q, k, v = (torch.from_numpy(a) for a in arrays)
        if kind == "sdpa":
            fn = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
                q[None], k[None], v[None], is_causal=True)[0]
        else:
            fn = lambda: attention(q, k, v, is_causal=True,  # noqa: E731
                                   block_size=block if kind == "tiled" else None)
    else:
        q, k, v = arrays
        fn = lambda: attention(q, k, v, is_causal=True,  # noqa: E731
                               block_size=block if kind == "tiled" else None)

    _reset_peak()
    before, _ = _rss_kib()
    if backend == "numpy":
        import tracemalloc

        tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    if backend == "numpy":
        tracemalloc_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    _, peak = _rss_kib()
    assert tuple(out.shape) == (seq, dim)
    return {
        "case": case,
        "seq": seq,
        "dim": dim,
        "block": block if kind == "tiled" else None,
        "dtype": dtype,
        "peak_rss_increase_mib": round((peak - before) / 1024, 1),
        "tracemalloc_peak_mib": None if tracemalloc_peak is None
        else round(tracemalloc_peak / 2**20, 1),
        "scores_mib": round(seq * (seq if kind != "tiled" else block) * np.dtype(dtype).itemsize
                            / 2**20, 1),
        "seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096, help="sequence length S (= Skv)")
    parser.add_argument("--dim", type=int, default=64, help="head dimension D (= Dv)")
    parser.add_argument("--block", type=int, default=256, help="key block of the tiled cases")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--json", action="store_true", help="print one JSON object per case")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in-process
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_case(args.one, args.seq, args.dim, args.block, args.dtype)))
        return 0

    results = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case, "--seq", str(args.seq), "--dim",
               str(args.dim), "--block", str(args.block), "--dtype", args.dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr.strip()}", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    print(f"attention forward, causal, S={args.seq}, D={args.dim}, {args.dtype}, "
          f"tiled block={args.block}; peak memory over the inputs")
    print(f"{'case':<15}{'peak RSS +MiB':>15}{'tracemalloc MiB':>17}{'one score tile MiB':>20}"
          f"{'seconds':>10}")
    for r in results:
        tm = "-" if r["tracemalloc_peak_mib"] is None else f"{r['tracemalloc_peak_mib']:.1f}"
        print(f"{r['case']:<15}{r['peak_rss_increase_mib']:>15.1f}{tm:>17}"
              f"{r['scores_mib']:>20.1f}{r['seconds']:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
