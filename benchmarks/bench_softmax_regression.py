"""``SoftmaxRegression`` against scikit-learn's multinomial ``LogisticRegression`` (lbfgs).

For each dataset bundled with scikit-learn (iris, wine, digits: no download), the features are
standardised on a stratified 70/30 split (``random_state=0``), scikit-learn fits
``LogisticRegression(C=C)`` and logitkit fits ``SoftmaxRegression(alpha=1/(C·n_train))``, the same
objective ``mean NLL + (alpha/2)·‖W‖²``.  Both objectives are recomputed here with SciPy's
``log_softmax`` from the returned coefficients (not read from either estimator).

Columns: ``gap`` = (ours − scikit-learn's objective) / scikit-learn's (negative: ours is lower),
test accuracy of each, and the median fit time over ``--repeat`` runs of each (scikit-learn's
lbfgs at the same ``--tol``).  Timings share the machine with whatever else runs on it: compare
the two columns of one run, not runs on different machines.

Run::

    python benchmarks/bench_softmax_regression.py                      # lbfgs and newton, tol 1e-8
    python benchmarks/bench_softmax_regression.py --solvers lbfgs newton gd --datasets iris
    python benchmarks/bench_softmax_regression.py --tol 1e-4 --repeat 9 --threads 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import warnings


def _objective(coef, intercept, X, y, alpha):
    import numpy as np
    from scipy.special import log_softmax

    logp = log_softmax(X @ coef.T + intercept, axis=1)
    return float(-logp[np.arange(len(y)), y].mean() + 0.5 * alpha * np.sum(coef * coef))


def _median_time(make, X, y, repeat):
    """The last fitted model and the median wall time of ``repeat`` fits of a fresh ``make()``."""
    times = []
    model = None
    for _ in range(repeat):
        estimator = make()
        start = time.perf_counter()
        model = estimator.fit(X, y)
        times.append(time.perf_counter() - start)
    return model, statistics.median(times)


@contextlib.contextmanager
def _thread_limit(threads):
    if threads is None:
        yield
        return
    import scipy.optimize  # noqa: F401  (load every BLAS/OpenMP runtime before limiting them)
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    import logitkit.config
    import logitkit.models

    logitkit.config.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        yield


def run(datasets, solvers, C, tol, repeat, max_iter):
    import numpy as np
    from sklearn import datasets as skdata
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from logitkit.models import SoftmaxRegression

    rows = []
    for name in datasets:
        X, y = getattr(skdata, f"load_{name}")(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
        scaler = StandardScaler().fit(Xtr)
        Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
        alpha = 1.0 / (C * len(ytr))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tight tolerances may end in a line-search stop
            sk, sk_time = _median_time(
                lambda: LogisticRegression(C=C, tol=tol, max_iter=max_iter), Xtr, ytr, repeat)
        f_sk = _objective(sk.coef_, sk.intercept_, Xtr, ytr, alpha)
        acc_sk = float(sk.score(Xte, yte))
        for solver in solvers:
            limit = max_iter if solver != "gd" else 100 * max_iter
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ours, ours_time = _median_time(
                    lambda a=alpha, s=solver, m=limit: SoftmaxRegression(
                        alpha=a, solver=s, tol=tol, max_iter=m), Xtr, ytr, repeat)
            f_ours = _objective(ours.coef_, ours.intercept_, Xtr, ytr, alpha)
            rows.append({
                "dataset": name, "n_train": len(ytr), "n_features": Xtr.shape[1],
                "n_classes": len(ours.classes_), "solver": solver,
                "objective": f_ours, "objective_sklearn": f_sk,
                "gap": (f_ours - f_sk) / abs(f_sk),
                "acc": float(ours.score(Xte, yte)), "acc_sklearn": acc_sk,
                "n_iter": int(ours.n_iter_), "n_iter_sklearn": int(np.ravel(sk.n_iter_)[0]),
                "time_ms": 1e3 * ours_time, "time_sklearn_ms": 1e3 * sk_time,
                "warned": bool(caught),
            })
    return rows


def _table(rows, C, tol, repeat):
    head = (f"{'dataset':<8} {'n×d, K':<13} {'solver':<7} {'gap (rel.)':>11} "
            f"{'acc ours':>8} {'acc skl':>8} {'iters':>11} {'ours ms':>9} {'skl ms':>9} "
            f"{'ratio':>6}")
    lines = [f"C={C:g} (alpha=1/(C·n)), tol={tol:g}, median of {repeat} fits", head,
             "-" * len(head)]
    for r in rows:
        shape = f"{r['n_train']}×{r['n_features']}, {r['n_classes']}"
        iters = f"{r['n_iter']}/{r['n_iter_sklearn']}"
        mark = "*" if r["warned"] else ""
        lines.append(
            f"{r['dataset']:<8} {shape:<13} {r['solver'] + mark:<7} {r['gap']:>+11.2e} "
            f"{100 * r['acc']:>7.2f}% {100 * r['acc_sklearn']:>7.2f}% {iters:>11} "
            f"{r['time_ms']:>9.1f} {r['time_sklearn_ms']:>9.1f} "
            f"{r['time_ms'] / r['time_sklearn_ms']:>6.2f}"
        )
    if any(r["warned"] for r in rows):
        lines.append("* the solver warned (did not reach tol within max_iter)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["iris", "wine", "digits"],
                        choices=["iris", "wine", "digits", "breast_cancer"])
    parser.add_argument("--solvers", nargs="+", default=["lbfgs", "newton"],
                        choices=["lbfgs", "newton", "gd"])
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--max-iter", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS, OpenMP (both libraries) and logitkit's kernel threads to this")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args(argv)
    with _thread_limit(args.threads):
        rows = run(args.datasets, args.solvers, args.C, args.tol, args.repeat, args.max_iter)
    print(json.dumps(rows, indent=1) if args.json else _table(rows, args.C, args.tol, args.repeat))


if __name__ == "__main__":
    main()
