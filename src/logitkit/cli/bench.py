"""``logitkit bench``: side-by-side CPU timings of logitkit and the installed peers.

Every figure is the median of several repeats (after untimed warm-up calls), divided by the
median time of ``np.copyto`` of the same array into a preallocated buffer (the memory-bandwidth
floor of an operation that reads and writes the array once), timed again just before each row.
Peers: SciPy (``scipy.special``), PyTorch (all threads), JAX (``jit``, ``block_until_ready``);
each is skipped when not installed.  The cross-entropy row times forward and backward
(``logitkit.cross_entropy_with_grad``, PyTorch's ``cross_entropy`` + ``backward()``, JAX's
``value_and_grad``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["configure", "run"]

SHAPES = ((2048, 32000), (64, 262144), (65536, 128))
OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy")
DTYPES = ("float32", "float64")
PEERS = ("scipy", "torch", "jax")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES),
                        help="comma-separated NxK shapes (default: %(default)s)")
    parser.add_argument("--ops", default=",".join(OPS),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated subset of %(default)s, or 'none'")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="timed repeats per figure; the median is reported (default 7)")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes and 3 repeats (unless --shapes or --repeats say "
                             "otherwise): a check that everything runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


class BenchError(ValueError):
    """A bad ``bench`` option (reported as one line by the CLI)."""


def _split(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise BenchError(f"Expected `--{what}` to be a comma-separated subset of "
                         f"{', '.join(allowed)}, but got {text!r}")
    return items


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            n, k = (int(p) for p in parts)
        except ValueError:
            raise BenchError(f"Expected `--shapes` to be NxK pairs like 2048x32000, "
                             f"but got {item.strip()!r}") from None
        if n < 1 or k < 1:
            raise BenchError(f"Expected `--shapes` to be positive, but got {item.strip()!r}")
        out.append((n, k))
    return out


#: Timed repeats per figure by default (``--quick``: 3, unless ``--repeats`` is given).
REPEATS = 7
#: Untimed calls before the repeats: at least this many, and for at least this long.
WARMUP_CALLS = 3
WARMUP_SECONDS = 0.2


def _warm_up(fn: Callable[[], Any]) -> None:
    """Untimed calls until steady state: compilation, caches, and the allocator's first use of
    fresh memory (on a virtual machine a page the host has taken back costs a host fault on
    its first touch, for a few calls after a new allocation pattern)."""
    start = time.perf_counter()
    for i in range(10):
        fn()
        if i + 1 >= WARMUP_CALLS and time.perf_counter() - start >= WARMUP_SECONDS:
            break


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds per call of ``fn``, after the warm-up, its repeats back to back.

    Each implementation runs its repeats in a row, as in a loop that calls the same operation
    on arrays of one shape: its allocations reuse the memory its previous call freed (logitkit
    keeps its freed large outputs for that, ``logitkit.config.set_buffer_cache``; NumPy,
    SciPy, PyTorch and JAX give them back to the OS and fault fresh pages in on every call).
    Timed round-robin instead, the implementations took each other's freed huge pages, and on a
    virtual machine that hands free huge pages back to the host (free page reporting) the
    next large allocation often landed on pages the host had to fault in again (10-20x
    calls for whichever allocated with huge pages: logitkit and SciPy here, not PyTorch)."""
    _warm_up(fn)
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# implementations
# --------------------------------------------------------------------------------------------


def _logitkit(op: str, x: np.ndarray, t: np.ndarray) -> Callable[[], Any]:
    import logitkit

    if op == "cross_entropy":
        return lambda: logitkit.cross_entropy_with_grad(x, t)
    fn = getattr(logitkit, op)
    return lambda: fn(x, axis=-1)


def _scipy(op: str, x: np.ndarray, t: np.ndarray) -> Callable[[], Any] | None:
    try:
        import scipy.special as sp
    except ImportError:
        return None
    if op == "cross_entropy":
        def ce() -> Any:
            # The NumPy/SciPy way: log-softmax, gather, and p − y for the gradient.
            logp = sp.log_softmax(x, axis=-1)
            loss = -np.take_along_axis(logp, t[:, None], axis=-1).mean()
            g = np.exp(logp, out=logp)
            g[np.arange(len(t)), t] -= 1
            g /= len(t)
            return loss, g
        return ce
    fn = getattr(sp, op)
    return lambda: fn(x, axis=-1)


def _torch(op: str, x: np.ndarray, t: np.ndarray) -> Callable[[], Any] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    tx = torch.from_numpy(x)
    if op == "cross_entropy":
        tt = torch.from_numpy(t)
        leaf = tx.clone().requires_grad_(True)

        def ce() -> Any:
            leaf.grad = None
            loss = torch.nn.functional.cross_entropy(leaf, tt)
            loss.backward()
            return loss

        return ce
    fn: Any = {"softmax": torch.softmax, "log_softmax": torch.log_softmax,
               "logsumexp": torch.logsumexp}[op]

    def call() -> Any:
        with torch.no_grad():
            return fn(tx, -1)

    return call


def _jax(op: str, x: np.ndarray, t: np.ndarray) -> Callable[[], Any] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    jx = jax.device_put(x)
    if op == "cross_entropy":
        jt = jax.device_put(t)

        def loss(z: Any) -> Any:
            lse = jax.nn.logsumexp(z, axis=-1)
            return jnp.mean(lse - jnp.take_along_axis(z, jt[:, None], axis=-1)[:, 0])

        f = jax.jit(jax.value_and_grad(loss))
        return lambda: jax.block_until_ready(f(jx))
    g: Any = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax,
              "logsumexp": jax.nn.logsumexp}[op]
    jf = jax.jit(lambda z: g(z, axis=-1))
    return lambda: jax.block_until_ready(jf(jx))


_PEER_FACTORIES = {"scipy": _scipy, "torch": _torch, "jax": _jax}


def _buffer_cache_bytes() -> int:
    """logitkit's limit on recycled output buffers in this run (0: every output is fresh)."""
    from ..config import buffer_cache_limit

    return buffer_cache_limit()


def _versions() -> dict[str, str]:
    import logitkit

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "logitkit": logitkit.__version__}
    from .. import config

    out["kernels"] = config.simd_target() or "none"
    out["threads"] = str(config.num_threads())
    for name in ("scipy", "torch", "jax"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def bench(shapes: list[tuple[int, int]], ops: list[str], dtypes: list[str], peers: list[str],
          repeats: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every (shape, dtype, op) for logitkit and ``peers``; returns a JSON-able report."""
    rng = np.random.default_rng(0)
    rows = []
    for n, k in shapes:
        for dt in dtypes:
            x = (rng.standard_normal((n, k), dtype=np.float32) * 3).astype(dt)
            t = rng.integers(0, k, n)
            buf = np.empty_like(x)

            def copy(x: np.ndarray = x, buf: np.ndarray = buf) -> None:
                np.copyto(buf, x)

            for op in ops:
                impls: dict[str, Callable[[], Any] | None] = {"logitkit": _logitkit(op, x, t)}
                for p in peers:
                    impls[p] = _PEER_FACTORIES[p](op, x, t)
                # The baseline again for every row: a shared machine drifts over a run.
                copy_s = _median_time(copy, repeats)
                times: dict[str, float] = {}
                for name, fn in impls.items():
                    if fn is None:
                        continue
                    if progress is not None:
                        progress(f"{op} {n}x{k} {dt} {name}")
                    times[name] = _median_time(fn, repeats)
                    del fn
                impls.clear()
                gc.collect()
                ours = times["logitkit"]
                rows.append({
                    "op": op, "shape": [n, k], "dtype": dt, "copy_s": copy_s,
                    "seconds": times,
                    "ratio_to_copy": {name: s / copy_s for name, s in times.items()},
                    "speedup": {name: s / ours for name, s in times.items() if name != "logitkit"},
                })
            del x, buf
            gc.collect()
    return {
        "unit": "median seconds; ratio_to_copy = time / time of np.copyto of the same array",
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "versions": _versions(),
        "buffer_cache_bytes": _buffer_cache_bytes(),
        "results": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: ratios to memcpy, and logitkit's speedup per peer."""
    peers = sorted({p for r in report["results"] for p in r["seconds"] if p != "logitkit"},
                   key=lambda p: PEERS.index(p) if p in PEERS else 99)
    head = ["op", "shape", "dtype", "memcpy ms", "logitkit"] + peers + [f"vs {p}" for p in peers]
    lines = [head]
    for r in report["results"]:
        ratio = r["ratio_to_copy"]
        row = [r["op"], "x".join(map(str, r["shape"])), r["dtype"], f"{r['copy_s'] * 1e3:.1f}",
               f"{ratio['logitkit']:.2f}x"]
        row += [f"{ratio[p]:.2f}x" if p in ratio else "-" for p in peers]
        row += [f"{r['speedup'][p]:.1f}x" if p in r["speedup"] else "-" for p in peers]
        lines.append(row)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(line, widths, strict=True)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    v = report["versions"]
    foot = (f"times are medians of {report['repeats']} repeats, as multiples of np.copyto of the "
            f"same array ({report['cpu_count']} CPUs); 'vs X' = X's time / logitkit's time. "
            + ", ".join(f"{k} {val}" for k, val in v.items())
            + f"; logitkit's output recycling {'on' if report.get('buffer_cache_bytes') else 'off'}"
            " (LOGITKIT_BUFFER_CACHE=0 turns it off).")
    return "\n".join([*out, "", foot])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`configure`); returns 0."""
    from ._io import CliError

    try:
        if args.quick:  # small shapes and 3 repeats, unless those are given too
            shapes = [(256, 4096), (8, 32768), (4096, 128)]
            repeats = 3 if args.repeats == REPEATS else args.repeats
        else:
            shapes = _shapes(args.shapes)
            repeats = args.repeats
        if args.quick and args.shapes != ",".join(f"{n}x{k}" for n, k in SHAPES):
            shapes = _shapes(args.shapes)
        if not isinstance(repeats, int) or repeats < 1:
            raise BenchError(f"Expected `--repeats` to be a positive integer, but got {repeats}")
        ops = _split(args.ops, OPS, "ops")
        dtypes = _split(args.dtypes, DTYPES, "dtypes")
        peers = [] if args.peers.strip() == "none" else _split(args.peers, PEERS, "peers")
    except BenchError as exc:
        raise CliError(str(exc)) from None

    def progress(text: str) -> None:
        if not args.json:
            print(f"  timing {text} ...", file=sys.stderr, flush=True)

    report = bench(shapes, ops, dtypes, peers, repeats, progress)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 0
