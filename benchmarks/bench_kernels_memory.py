"""Peak memory of cross_entropy_with_grad on 8192×32000 float32, each variant in its own process.

    python benchmarks/bench_kernels_memory.py            # all variants
    python benchmarks/bench_kernels_memory.py --n 2048   # a smaller problem

For each variant a fresh interpreter creates the logits (and targets), warms the kernels up on a
tiny problem, records its peak RSS (``ru_maxrss``) just before the call, makes the call, and
reports the growth of the peak as a multiple of the logits' size.  Variants: the fused kernel
returning a new gradient, the kernel writing into the logits (``out=logits``), the generic path
(kernels off), logitkit's torch adapter on CPU (forward + backward), and PyTorch's own
``cross_entropy`` for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import gc, json, resource, sys
import numpy as np
n, k, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import logitkit
from logitkit._kernels import fast_path

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

small = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
t_small = np.arange(4)
logitkit.cross_entropy_with_grad(small, t_small)
logitkit.cross_entropy_with_grad(small.copy(), t_small, out=small.copy())
rng = np.random.default_rng(0)
t = rng.integers(0, k, n)
if variant.startswith("torch"):
    import torch
    x = torch.randn(n, k, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    xs = torch.randn(4, 64).requires_grad_(True)
    logitkit.cross_entropy(xs, torch.arange(4)).backward()
    torch.nn.functional.cross_entropy(xs, torch.arange(4)).backward()
    tt = torch.from_numpy(t)
    x.requires_grad_(True)
    gc.collect()
    before = peak()
    if variant == "torch-logitkit":
        logitkit.cross_entropy(x, tt).backward()
    else:
        torch.nn.functional.cross_entropy(x, tt).backward()
    nbytes = x.numel() * 4
else:
    x = rng.standard_normal((n, k), dtype=np.float32)
    gc.collect()
    before = peak()
    if variant == "kernel":
        loss, g = logitkit.cross_entropy_with_grad(x, t)
    elif variant == "kernel-out-logits":
        loss, g = logitkit.cross_entropy_with_grad(x, t, out=x)
    else:
        with fast_path(False):
            loss, g = logitkit.cross_entropy_with_grad(x, t)
    nbytes = x.nbytes
after = peak()
print(json.dumps({"variant": variant, "logits_bytes": nbytes, "peak_growth_bytes": after - before,
                  "growth_over_logits": (after - before) / nbytes}))
"""

VARIANTS = ("kernel", "kernel-out-logits", "generic", "torch-logitkit", "torch-native")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for variant in args.variants.split(","):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(args.n), str(args.k), variant],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"cross_entropy_with_grad, {args.n}x{args.k} float32: peak RSS growth during the call")
        for r in results:
            print(f"  {r['variant']:<18} {r['peak_growth_bytes'] / 2**20:9.1f} MiB"
                  f"  = {r['growth_over_logits']:.2f} x logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
