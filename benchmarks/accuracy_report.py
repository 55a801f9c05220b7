"""Worst error/bound ratio of softmax, log_softmax and logsumexp against DESIGN §7, per dtype and
backend, on the rows of ``tests/test_accuracy.py`` (random and adversarial, K up to 5000).

A ratio of 1 means an error exactly at the bound (16u(1 + d_i) relative for softmax,
16u(1 + d_i + ln K) absolute for log_softmax, 16u(max(1, |lse|) + ln K) for logsumexp).

Run: ``python benchmarks/accuracy_report.py``.
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import conftest  # noqa: E402
from test_accuracy import PATHS, path_context, worst_ratios  # noqa: E402


def main() -> None:
    heads = [f"{b}/{p}" for b, p in PATHS]
    print(f"{'function':<12} {'dtype':<8} " + " ".join(f"{h:>23}" for h in heads))
    for dtype in ("float32", "float64"):
        table = {}
        for b, p in PATHS:
            with path_context(p):
                table[b, p] = worst_ratios(conftest._module(b), dtype)
        for name in ("softmax", "log_softmax", "logsumexp"):
            cells = " ".join(f"{table[key][name]:>23.3f}" for key in PATHS)
            print(f"{name:<12} {dtype:<8} {cells}")


if __name__ == "__main__":
    main()
