"""DESIGN §7 accuracy bounds against exact (mpmath) references, on every backend, in float32
and float64: random rows and adversarial ones (one dominant term, near-ties, ±700 spreads in
float64 and ±80 in float32, a large common offset, K up to 5000).

``benchmarks/accuracy_report.py`` prints the worst error/bound ratios these tests hold below 1.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest

import reference
from conftest import _module, asarray, maybe_jit, to_numpy
from logitkit import _kernels, log_softmax, logsumexp, softmax

# NumPy and CPU torch take the fused kernels by default: check them and the generic path.
PATHS = [("numpy", "kernel"), ("numpy", "generic"), ("array_api_strict", "generic"),
         ("torch", "kernel"), ("torch", "generic"), ("jax", "generic")]


def path_context(path: str):
    return contextlib.nullcontext() if path == "kernel" else _kernels.fast_path(False)


@functools.cache
def groups(dtype: str) -> dict:
    """Rows grouped by length (one call per length), with their exact references."""
    out: dict[int, list] = {}
    for row in reference.accuracy_rows(dtype):
        out.setdefault(row.size, []).append((row, reference.exact_row(row)))
    return out


def three(z):
    return softmax(z), log_softmax(z), logsumexp(z)


def worst_ratios(xp, dtype: str) -> dict:
    worst = {"softmax": 0.0, "log_softmax": 0.0, "logsumexp": 0.0}
    f = maybe_jit(three, xp)
    for rows in groups(dtype).values():
        batch = np.stack([r for r, _ in rows])
        p, logp, lse = (to_numpy(a) for a in f(asarray(xp, batch)))
        assert p.dtype == np.dtype(dtype)
        for i, (row, exact) in enumerate(rows):
            got = {"softmax": p[i], "log_softmax": logp[i], "logsumexp": lse[i]}
            for name, r in reference.error_bound_ratios(row, exact, got, dtype).items():
                worst[name] = max(worst[name], r)
    return worst


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("backend", "path"), PATHS)
def test_error_within_design_bounds(backend, path, dtype):
    with path_context(path):
        worst = worst_ratios(_module(backend), dtype)
    assert all(np.isfinite(v) for v in worst.values()), worst
    assert max(worst.values()) <= 1.0, worst


def test_the_bound_check_can_fail():
    # The check is not vacuous: a softmax computed in float32 fails the float64 bound.
    row = reference.accuracy_rows("float64", big=False)[0]
    exact = reference.exact_row(row)
    p32 = np.asarray(softmax(row.astype(np.float32)), dtype=np.float64)
    got = {"softmax": p32, "log_softmax": np.log(p32), "logsumexp": np.log(np.exp(row).sum())}
    assert reference.error_bound_ratios(row, exact, got, "float64")["softmax"] > 1.0


@pytest.mark.parametrize(("backend", "path"), PATHS)
def test_logsumexp_dominant_term_uses_log1p(backend, path):
    # lse(0, -40) = log1p(e^-40) ≈ 4.25e-18: a naive log(1 + e^-40) gives exactly 0 (still within
    # the §7 absolute bound, but the table promises the Blanchard–Higham–Higham form).
    with path_context(path):
        out = float(to_numpy(logsumexp(asarray(_module(backend), np.array([0.0, -40.0])))))
    assert out == pytest.approx(float(reference.lse(np.array([0.0, -40.0]))), rel=1e-15)
