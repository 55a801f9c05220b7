"""Peak memory of a cross-entropy forward + backward: logitkit's torch adapter against
``torch.nn.functional.cross_entropy``.

Each case runs in a fresh subprocess.  The figure is how far the process's peak resident set
(``ru_maxrss``) rises above its resident set once the logits and targets exist, so it counts every
temporary of the forward and backward passes plus the gradient itself (N×K, needed by both).

    python benchmarks/bench_ce_memory.py            # 8192 × 32000 float32
    python benchmarks/bench_ce_memory.py --n 1024 --k 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = {
    "torch": "torch.nn.functional.cross_entropy",
    "logitkit": "logitkit.cross_entropy (autograd.Function adapter)",
    "torch+smoothing": "torch.nn.functional.cross_entropy, label_smoothing=0.1",
    "logitkit+smoothing": "logitkit.cross_entropy, label_smoothing=0.1",
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _case(name: str, n: int, k: int) -> dict:
    import torch
    import torch.nn.functional as F

    import logitkit

    torch.manual_seed(0)
    smoothing = 0.1 if name.endswith("+smoothing") else 0.0
    use_logitkit = name.startswith("logitkit")

    def loss_fn(x, t):
        if use_logitkit:
            return logitkit.cross_entropy(x, t, label_smoothing=smoothing)
        return F.cross_entropy(x, t, label_smoothing=smoothing)

    # Warm the code paths on a tiny problem so imports and first-call setup are not counted.
    xs = torch.randn(8, 16, requires_grad=True)
    loss_fn(xs, torch.randint(0, 16, (8,))).backward()

    x = torch.randn(n, k, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, k, (n,))
    before = _peak_mib()
    start = time.perf_counter()
    loss = loss_fn(x, t)
    loss.backward()
    seconds = time.perf_counter() - start
    after = _peak_mib()
    return {
        "case": name, "what": CASES[name], "n": n, "k": k,
        "logits_mib": round(x.numel() * 4 / 2**20, 1),
        "peak_rise_mib": round(after - before, 1), "seconds": round(seconds, 2),
        "loss": float(loss), "grad_sum": float(x.grad.double().abs().sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32000)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(args.case, args.n, args.k)))
        return
    results = []
    for name in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--case", name, "--n", str(args.n), "--k", str(args.k)],
            check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    width = max(len(r["what"]) for r in results)
    print(f"cross-entropy forward+backward, {args.n}×{args.k} float32 "
          f"(logits {results[0]['logits_mib']} MiB)")
    for r in results:
        print(f"  {r['what']:<{width}}  peak rise {r['peak_rise_mib']:>8.1f} MiB  "
              f"({r['peak_rise_mib'] / r['logits_mib']:.2f}× logits)  {r['seconds']:.2f} s  "
              f"loss {r['loss']:.6f}")


if __name__ == "__main__":
    main()
