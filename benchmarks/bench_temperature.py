"""Temperature scaling: logitkit's TemperatureScaler against scikit-learn's
``CalibratedClassifierCV(method="temperature")`` on the same logits.

    python benchmarks/bench_temperature.py                 # 1e6 x 100 float32 logits
    python benchmarks/bench_temperature.py --n 200000 --k 50

The logits are those of a model that is ``--scale`` times too confident: labels are drawn from
``softmax(u)`` (Gumbel-max) and the model reports ``scale * u``, so the optimal temperature is
close to ``scale``.  scikit-learn receives the logits through a frozen pass-through classifier
whose ``decision_function`` returns them unchanged (its temperature calibrator then runs
``minimize_scalar`` on log β with its multinomial loss).  Both optima are scored with the same
float64 NLL; the speed ratio is scikit-learn's fit time over logitkit's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from logitkit.calibration import TemperatureScaler
from logitkit.calibration._nll_sums import nll_sums


def make_logits(n: int, k: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = np.empty((n, k), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    step = 100_000
    for start in range(0, n, step):
        rows = min(step, n - start)
        u = rng.normal(size=(rows, k)) * 1.5
        y[start:start + rows] = np.argmax(u + rng.gumbel(size=(rows, k)), axis=1)
        z[start:start + rows] = scale * u
    return z, y


def float64_nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    sw, s_nll, _, _ = nll_sums(z, y, 1.0 / temperature, None, chunk_rows=max(1, 65536 // z.shape[1]),
                              from_probs=False, floor=-np.inf)
    return s_nll / sw


def fit_sklearn(z: np.ndarray, y: np.ndarray) -> float:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    class Passthrough(ClassifierMixin, BaseEstimator):
        def fit(self, x, labels):
            self.classes_ = np.arange(int(np.max(labels)) + 1)
            return self

        def decision_function(self, x):
            return x

        def predict(self, x):
            return np.argmax(x, axis=1)

    model = CalibratedClassifierCV(FrozenEstimator(Passthrough().fit(z[:1], y)),
                                   method="temperature")
    model.fit(z, y)
    beta = float(model.calibrated_classifiers_[0].calibrators[0].beta_)
    return 1.0 / beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--scale", type=float, default=2.5)
    parser.add_argument("--repeat", type=int, default=3,
                        help="logitkit fits before and after scikit-learn's (each)")
    parser.add_argument("--threads", type=int, default=None, help="logitkit n_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    z, y = make_logits(args.n, args.k, args.scale, args.seed)
    load_before = os.getloadavg()[0]

    def ours() -> tuple[TemperatureScaler, float]:
        start = time.perf_counter()
        fitted = TemperatureScaler(n_threads=args.threads).fit(z, y)
        return fitted, time.perf_counter() - start

    # logitkit's fits before and after scikit-learn's, so a change of machine load during the
    # long scikit-learn fit shows up in the spread instead of biasing the ratio.
    ours_times = []
    for _ in range(args.repeat):
        ts, seconds = ours()
        ours_times.append(seconds)
    start = time.perf_counter()
    t_sklearn = fit_sklearn(z, y)
    sk_time = time.perf_counter() - start
    for _ in range(args.repeat):
        ts, seconds = ours()
        ours_times.append(seconds)

    nll_ours = float64_nll(z, y, ts.temperature_)
    nll_sk = float64_nll(z, y, t_sklearn)
    result = {
        "shape": [args.n, args.k],
        "dtype": "float32",
        "logitkit": {"temperature": ts.temperature_, "nll": nll_ours, "n_iter": ts.n_iter_,
                     "converged": ts.converged_, "seconds_best": min(ours_times),
                     "seconds_median": statistics.median(ours_times),
                     "seconds_all": [round(t, 3) for t in ours_times]},
        "sklearn": {"temperature": t_sklearn, "nll": nll_sk, "seconds": sk_time},
        "nll_ours_minus_sklearn": nll_ours - nll_sk,
        "speedup_vs_best": sk_time / min(ours_times),
        "speedup_vs_median": sk_time / statistics.median(ours_times),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
