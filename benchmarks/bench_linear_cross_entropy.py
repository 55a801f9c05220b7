"""Peak memory and time of ``linear_cross_entropy`` against the dense torch computation.

Every case runs in a fresh Python process, so the peak resident memory (``ru_maxrss``) of one
case cannot hide in another's.  A case creates its inputs, records ``ru_maxrss`` as the baseline,
then runs forward + backward ``--repeat`` times; it reports the increase of the peak over the
baseline and the best wall and CPU (all threads) time of one step.  ``--rounds`` fresh processes
per case are interleaved with the other cases', so a busy spell of a shared machine hits them all.

Cases:

* ``dense``: ``F.cross_entropy(hidden @ weight.T + bias, target)`` and ``backward``;
* ``fused``: ``linear_cross_entropy`` as shipped (gradient accumulated during the forward pass);
* ``recompute``: the same blocks, logits recomputed in ``backward`` instead.

Run::

    python benchmarks/bench_linear_cross_entropy.py                      # N=8192 H=256 V=32000
    python benchmarks/bench_linear_cross_entropy.py --vocab 32000 64000 --repeat 3
    python benchmarks/bench_linear_cross_entropy.py --cases fused --vocab 128000

The dense case's peak grows as 3-4 × N × V × 4 bytes: mind the machine's memory before asking for
a large vocabulary with ``dense`` among the cases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def run_case(case: str, n: int, hidden: int, vocab: int, repeat: int, threads: int,
             chunk: int | None) -> dict:
    import resource
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    h = torch.randn(n, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) / hidden**0.5).requires_grad_(True)
    b = torch.zeros(vocab, requires_grad=True)
    y = torch.randint(0, vocab, (n,))

    if case == "dense":
        import torch.nn.functional as F

        def step() -> float:
            loss = F.cross_entropy(h @ w.T + b, y)
            loss.backward()
            return float(loss.detach())
    else:
        from logitkit._linear_cross_entropy import _torch_linear_cross_entropy, _validate

        strategy = {"fused": "forward", "recompute": "recompute"}[case]

        def step() -> float:
            inp, xp = _validate(h, w, y, b, chunk_size=chunk, ignore_index=None,
                                label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean")
            loss = _torch_linear_cross_entropy(h, w, y, b, inp, xp, strategy)
            loss.backward()
            return float(loss.detach())

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu, value = [], [], 0.0
    for _ in range(repeat):
        h.grad = w.grad = b.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        value = step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"case": case, "n": n, "hidden": hidden, "vocab": vocab, "loss": value,
            "time_s": min(times), "times_s": times, "cpu_s": min(cpu), "cpus_s": cpu,
            "peak_mib": (peak - base) / 1024,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000])
    parser.add_argument("--cases", nargs="+", default=["dense", "fused", "recompute"])
    parser.add_argument("--repeat", type=int, default=2, help="steps per process")
    parser.add_argument("--table", help="print the table of a --json output file and exit")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--chunk", type=int, default=None, help="tokens per block")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()

    if args.table:
        with open(args.table) as f:
            _table([json.loads(line) for line in f if line.strip()])
        return
    if args.one:
        case, vocab = args.one.split(":")
        print(json.dumps(run_case(case, args.n, args.hidden, int(vocab), args.repeat,
                                  args.threads, args.chunk)))
        return

    results = []
    for vocab in args.vocab:
        runs: dict[str, list[dict]] = {case: [] for case in args.cases}
        # Rounds interleave the cases, so a busy spell of the machine hits all of them.
        for _ in range(args.rounds):
            for case in args.cases:
                runs[case].append(_spawn(case, vocab, args))
        for case in args.cases:
            res = dict(runs[case][0])
            res["times_s"] = [t for r in runs[case] for t in r["times_s"]]
            res["time_s"] = min(res["times_s"])
            res["cpus_s"] = [t for r in runs[case] for t in r["cpus_s"]]
            res["cpu_s"] = min(res["cpus_s"])
            res["peak_mib"] = max(r["peak_mib"] for r in runs[case])
            results.append(res)
            if args.json:
                print(json.dumps(res), flush=True)
    if args.json:
        return
    _table(results)


def _spawn(case: str, vocab: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{case}:{vocab}", "--n", str(args.n),
           "--hidden", str(args.hidden), "--repeat", str(args.repeat),
           "--threads", str(args.threads)]
    if args.chunk:
        cmd += ["--chunk", str(args.chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(results: list[dict]) -> None:
    print(f"{'N':>6} {'H':>5} {'V':>7} {'case':>10} {'peak MiB':>9} {'time s':>8} "
          f"{'cpu s':>8} {'peak/dense':>10} {'time/dense':>10} {'cpu/dense':>10}")
    for r in results:
        dense = next((d for d in results if d["case"] == "dense" and d["vocab"] == r["vocab"]),
                     None)
        ratio_m = f"{r['peak_mib'] / dense['peak_mib']:.3f}" if dense else "-"
        ratio_t = f"{r['time_s'] / dense['time_s']:.3f}" if dense else "-"
        ratio_c = f"{r['cpu_s'] / dense['cpu_s']:.3f}" if dense else "-"
        print(f"{r['n']:>6} {r['hidden']:>5} {r['vocab']:>7} {r['case']:>10} "
              f"{r['peak_mib']:>9.1f} {r['time_s']:>8.3f} {r['cpu_s']:>8.3f} {ratio_m:>10} "
              f"{ratio_t:>10} {ratio_c:>10}")


if __name__ == "__main__":
    main()
