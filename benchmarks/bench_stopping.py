"""Where L-BFGS's noise rule stops the full maps, against their converged optimum.

The full maps above 16 classes (matrix, Dirichlet and structured matrix scaling) are fitted by
L-BFGS, which stops once the last step lowered the objective by at most ``ε``
(``NOISE_FRACTION`` = 1e-3 standard errors of the mean loss) and the quadratic model predicts
at most ``ε`` more, provided the fit has settled (``_fitting.SETTLED``: the decreases
shrinking, the last at most the one before it and the predicted one at most the last, and a
gradient step finding at most ``ε`` at the least curvature the steps have seen).

The rule may also stop after a step larger than ``ε`` that the model foretold
(``_fitting.FORETOLD``: that step's decrease within a factor 1.25 of its forecast, and the
forecast's geometric sum, what the model says is left, at most ``ε``).

For each fit of a grid (method × classes × rows × the logits' scale) this prints the passes
and the gap to the optimum (the same fit run with no noise rule to ``tol = 1e-9``) in units of
``ε``, without that guard, with it, and with it and the foretold step, and a summary.  A gap above 1 means the rule
stopped further from the minimum than it promises.

    python benchmarks/bench_stopping.py [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import time
import warnings
from typing import Any

import numpy as np
from scipy.special import softmax

from logitkit.calibration import DirichletScaler, MatrixScaler, StructuredScaler, _fitting, _scaling

METHODS = {"matrix": MatrixScaler, "dirichlet": DirichletScaler, "structured": StructuredScaler}


def _data(k: int, n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    y = (softmax(true, axis=1).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    mix = np.eye(k) + rng.normal(size=(k, k)) * 0.1
    z = scale * (true @ mix.T) + rng.normal(size=k) * 0.5
    return z.astype(np.float32 if n * k >= 1 << 20 else np.float64), y


def _fit(cls: type, z: np.ndarray, y: np.ndarray, *, guard: bool, foretold: bool = True,
         exact: bool = False) -> tuple[float, int, str, float, Any]:
    saved = (_fitting.SETTLED, _fitting.FORETOLD, _scaling.NOISE_FRACTION)
    _fitting.SETTLED, _fitting.FORETOLD = guard, foretold
    if exact:
        _scaling.NOISE_FRACTION = 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = cls(tol=1e-9, max_iter=3000) if exact else cls()
            t0 = time.perf_counter()
            est.fit(z, y)
            wall = time.perf_counter() - t0
    finally:
        _fitting.SETTLED, _fitting.FORETOLD, _scaling.NOISE_FRACTION = saved
    return float(est.objective_), int(est.n_iter_), str(est.stopped_by_), wall, est


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    args = parser.parse_args()
    ks = (17, 40, 100)
    ns = (60, 600, 6000, 60000) if not args.quick else (60, 6000)
    scales = (0.01, 1.0, 30.0, 300.0) if not args.quick else (1.0, 30.0)
    print(f"{'method':10s} {'K':>4s} {'N':>6s} {'scale':>6s} | {'no guard':>8s} {'gap/ε':>8s} | "
          f"{'guard':>5s} {'gap/ε':>8s} | {'+fore':>5s} {'gap/ε':>8s} {'stop':>9s} | {'optimum':>7s}")
    rows = []
    for (name, cls), k, n, scale in itertools.product(METHODS.items(), ks, ns, scales):
        z, y = _data(k, n, scale, seed=k * 7 + n)
        f_opt, p_opt, _, _, _ = _fit(cls, z, y, guard=True, exact=True)
        f_old, p_old, _, _, _ = _fit(cls, z, y, guard=False, foretold=False)
        f_mid, p_mid, _, _, _ = _fit(cls, z, y, guard=True, foretold=False)
        f_new, p_new, why, _, est = _fit(cls, z, y, guard=True)
        p = np.clip(est.predict_proba(z), 1e-300, None)
        loss = -np.log(p[np.arange(n), y])
        eps = _scaling.NOISE_FRACTION * float(loss.std()) / np.sqrt(n)
        gaps = [(f - f_opt) / eps for f in (f_old, f_mid, f_new)]
        rows.append((p_old, p_mid, p_new, *gaps))
        print(f"{name:10s} {k:4d} {n:6d} {scale:6g} | {p_old:8d} {gaps[0]:8.3f} | {p_mid:5d} "
              f"{gaps[1]:8.3f} | {p_new:5d} {gaps[2]:8.3f} {why:>9s} | {p_opt:7d}", flush=True)
    a = np.array(rows)
    print(f"\n{len(rows)} fits: passes without the guard {a[:, 0].sum():.0f}, with it "
          f"{a[:, 1].sum():.0f}, with it and a foretold step {a[:, 2].sum():.0f}")
    for label, col in (("without the guard", 3), ("with it", 4), ("with a foretold step", 5)):
        print(f"  gap/ε {label}: max {a[:, col].max():.3f}, above 1: "
              f"{(a[:, col] > 1).sum():.0f}, above 10: {(a[:, col] > 10).sum():.0f}")
    print(f"  a foretold step: fewer passes in {(a[:, 2] < a[:, 1]).sum():.0f} fits, more in "
          f"{(a[:, 2] > a[:, 1]).sum():.0f}")


if __name__ == "__main__":
    main()
