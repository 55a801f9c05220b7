"""Every calibrator against the public implementations of the same method, on data made the way
a user would make it.

    python benchmarks/bench_calibrators.py quality          # the method x data table
    python benchmarks/bench_calibrators.py spread --splits 20 --methods beta vector
    python benchmarks/bench_calibrators.py rules --splits 30  # select's rule over many splits
    python benchmarks/bench_calibrators.py floors --splits 30  # isotonic/histogram's floor
    python benchmarks/bench_calibrators.py speed            # fits on 1e5 x 100 float32 logits
    python benchmarks/bench_calibrators.py speed --n 20000 --k 50 --methods vector structured
    python benchmarks/bench_calibrators.py speed --methods matrix --breakdown  # where ours spends

``quality``: six data sets, each split into a calibration and a test part.  Four are the held-out
logits of small models trained here (a torch CNN and a torch MLP overfitted on scikit-learn's
digits, gradient boosting on breast_cancer, Gaussian naive Bayes on wine), two are synthetic with
known truth (10 classes, three times too confident with class biases; 20 classes mixed by a
near-identity matrix).  Every method is fitted on the calibration part by logitkit and by each
installed peer (probmetrics, dirichletcal, scikit-learn, betacal, netcal); the table gives the
test NLL, ECE and Brier score of each, the ratio of logitkit's test NLL to the best peer's, and
logitkit's fit time as a ratio to the fastest peer's (timed in the same run).  ``select``'s
choice (5-fold cross-fitted on the calibration part) is scored on the same test part against
the best single method.

``spread``: ``quality``'s NLL ratio to the best peer over ``--splits`` random calibration/test
splits of each data set (the four models trained once, their held-out half re-divided; the
synthetic sets drawn afresh, ``--synthetic-splits`` times): mean, worst and best per method.

``floors``: the isotonic and histogram calibrators' probability floor ``1/(2(N + 1))`` against
fractions of it (1/2, 1/4, 1/10, 1/100) over the same splits of the four real files: the mean
test NLL of each, and its ratio to the best peer's (scikit-learn's isotonic regression gives 0
and an infinite NLL wherever a test row falls outside the calibration rows) on the splits
where that is finite.

``rules``: ``select``'s rule and its alternatives (evidence against "none" at several z bars,
stepwise through temperature, the one-standard-error rule, each on one and on ``--cv-repeats``
repeated cross-validation runs) over the same splits: the mean and worst test-NLL ratio of each
rule's choice to the split's best single method, and how often it did worse than no calibration.

``speed``: one calibration set of ``--n`` rows and ``--k`` classes (float32 logits of a model
three times too confident, with class biases), every parametric method fitted by logitkit and
by every peer side by side (each peer in a spawned child, stopped after ``--cap`` CPU seconds
or 12x ours, whichever is longer);
prints each fit's seconds, the peer's time over logitkit's, and the test NLL of each fit (so a
fast fit that stops early shows).  A peer whose memory need is out of
reach (dirichletcal forms an ``N × (K+1) × (K+1)`` array) is skipped with the reason.

Peers come from ``pip install -e ".[bench]"``; a missing peer is reported and skipped.  On
Python 3.11, dirichletcal 0.5 needs ``pip install --no-deps --ignore-requires-python
dirichletcal==0.5.3`` (it declares Python >= 3.12 but runs on 3.11).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from logitkit import log_softmax, softmax
from logitkit.calibration import (
    BetaCalibrator,
    DirichletScaler,
    HistogramCalibrator,
    IsotonicCalibrator,
    MatrixScaler,
    StructuredScaler,
    TemperatureScaler,
    VectorScaler,
    brier_score,
    ece,
    select,
)
from logitkit.calibration._scaling import _AffineScaler

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Fit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


# --------------------------------------------------------------------------------------------
# data made the way a user would
# --------------------------------------------------------------------------------------------


def _split(n: int, y: np.ndarray, seed: int, parts: tuple[float, ...]) -> list[np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    out = []
    rest, rest_y = idx, y
    total = 1.0
    for share in parts[:-1]:
        take, rest, _, rest_y = train_test_split(rest, rest_y, train_size=share / total,
                                                 stratify=rest_y, random_state=seed)
        total -= share
        out.append(take)
    out.append(rest)
    return out


def _resplit(pool: tuple[np.ndarray, np.ndarray, np.ndarray], split: int) -> Split:
    """The held-out rows ``rest`` of a model's logits ``z`` split in half, stratified, into a
    calibration and a test part by the seed ``split`` (split 0 is the table's split)."""
    from sklearn.model_selection import train_test_split

    z, y, rest = pool
    cal, test = train_test_split(rest, train_size=0.5, stratify=y[rest], random_state=split)
    return z[cal], y[cal], z[test], y[test]


@functools.cache
def _torch_model_logits(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A torch CNN or MLP overfitted on half of digits: its logits of every row, the labels,
    and the held-out rows (trained once per process: the splits re-split its held-out half)."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    train, rest = _split(len(y), y, seed, (0.5, 0.5))
    if kind == "cnn":
        net = torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 16, 10))
    else:
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(300):  # far past zero training error: overconfident on new rows
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        z = net(torch.from_numpy(x)).numpy().astype(np.float64)
    return z, y, rest


@functools.cache
def _gbm_breast_cancer(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = load_breast_cancer(return_X_y=True)
    train, rest = _split(len(y), y, seed, (0.5, 0.5))
    model = GradientBoostingClassifier(n_estimators=300, random_state=seed).fit(x[train], y[train])
    z = model.decision_function(x)  # the log-odds: one binary logit column
    return z, y, rest


@functools.cache
def _nb_wine(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_wine
    from sklearn.naive_bayes import GaussianNB

    x, y = load_wine(return_X_y=True)
    train, rest = _split(len(y), y, seed, (0.5, 0.5))
    model = GaussianNB().fit(x[train], y[train])
    z = model.predict_joint_log_proba(x)  # log P(x, y): logits up to a per-row constant
    return z, y, rest


def _draw(true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (softmax(true, axis=1).cumsum(axis=1) > rng.random((true.shape[0], 1))).argmax(axis=1)


def _synthetic_overconfident(seed: int = 0, n_cal: int = 5000, n_test: int = 20000) -> Split:
    rng = np.random.default_rng(seed)
    k = 10
    true = rng.normal(size=(n_cal + n_test, k)) * 2.0
    y = _draw(true, rng)
    z = 3.0 * true + rng.normal(size=k)
    return z[:n_cal], y[:n_cal], z[n_cal:], y[n_cal:]


def _synthetic_mixed(seed: int = 1, n_cal: int = 10000, n_test: int = 20000) -> Split:
    rng = np.random.default_rng(seed)
    k = 20
    true = rng.normal(size=(n_cal + n_test, k)) * 1.5
    y = _draw(true, rng)
    mix = np.eye(k) * 2.0 + rng.normal(size=(k, k)) * 0.15
    z = true @ mix.T + rng.normal(size=k) * 0.5
    return z[:n_cal], y[:n_cal], z[n_cal:], y[n_cal:]


#: name -> the data of split ``s`` (0: the table's split).  The four models are trained once on
#: their training half; a split re-divides their held-out half into calibration and test rows.
#: The synthetic sets are drawn afresh (seed + s).
DATASETS: dict[str, Callable[[int], Split]] = {
    "digits CNN": lambda s: _resplit(_torch_model_logits("cnn"), s),
    "digits MLP": lambda s: _resplit(_torch_model_logits("mlp"), s),
    "breast_cancer GBM": lambda s: _resplit(_gbm_breast_cancer(), s),
    "wine naive Bayes": lambda s: _resplit(_nb_wine(), s),
    "synthetic 10 classes": lambda s: _synthetic_overconfident(seed=s),
    "synthetic 20 mixed": lambda s: _synthetic_mixed(seed=1 + s),
}


# --------------------------------------------------------------------------------------------
# the methods: logitkit's and the peers'
# --------------------------------------------------------------------------------------------


def _two(z: np.ndarray) -> np.ndarray:
    """Logits as two columns ``[0, z]`` for a binary column."""
    return np.stack([np.zeros_like(z), z], axis=1) if z.ndim == 1 else z


def _probs(z: np.ndarray) -> np.ndarray:
    return softmax(_two(z).astype(np.float64), axis=1)


def ours(cls: type, **params: Any) -> Fit:
    def fit(z: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = cls(**params).fit(z, y)
        return lambda t: np.asarray(est.predict_proba(t))
    fit.estimator = (cls, params)  # type: ignore[attr-defined]
    return fit


def _sklearn(method: str) -> Fit:
    def fit(z: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        from sklearn.base import BaseEstimator, ClassifierMixin
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        class Passthrough(ClassifierMixin, BaseEstimator):
            def fit(self, x: Any, labels: Any) -> Passthrough:
                self.classes_ = np.arange(max(2, int(np.max(labels)) + 1))
                return self

            def decision_function(self, x: Any) -> Any:
                return x[:, 0] if x.shape[1] == 1 else x

            def predict(self, x: Any) -> Any:
                return np.argmax(_two(x[:, 0]) if x.shape[1] == 1 else x, axis=1)

        zz = z[:, None] if z.ndim == 1 else z
        cal = CalibratedClassifierCV(FrozenEstimator(Passthrough().fit(zz, y)), method=method)
        cal.fit(zz, y)
        return lambda t: cal.predict_proba(t[:, None] if t.ndim == 1 else t)
    return fit


def _without_numba() -> None:
    """probmetrics imports numba at module level for its 'saga' optimiser without declaring it
    (logitkit has no numba); the calibrators timed here use its default 'bfgs' optimiser, which
    never calls a numba function, so an identity ``njit`` stands in when numba is absent (the
    same stand-in as the differential tests' ``probmetrics_calibrators`` fixture)."""
    import importlib.util
    import sys
    import types

    if "numba" in sys.modules or importlib.util.find_spec("numba") is not None:
        return
    stub: Any = types.ModuleType("numba")
    stub.njit = lambda *a, **kw: a[0] if len(a) == 1 and callable(a[0]) and not kw else (
        lambda fn: fn)
    stub.prange = range
    sys.modules["numba"] = stub


def _probmetrics(name: str, logits: bool = False, **config: Any) -> Fit:
    def fit(z: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        _without_numba()
        from probmetrics import calibrators as pc
        from probmetrics.distributions import CategoricalLogits

        if logits:
            cal = getattr(pc, name)()
            cal.fit_torch(CategoricalLogits(torch.as_tensor(_two(z))), torch.as_tensor(y))
            return lambda t: cal.predict_proba_torch(
                CategoricalLogits(torch.as_tensor(_two(t)))).get_probs().numpy()
        if name == "ovr-beta":
            cal = pc.MulticlassOneVsRestCalibrator(pc.BetacalCalibrator())
        elif name == "ovr-histogram":
            cal = pc.MulticlassOneVsRestCalibrator(pc.BinaryHistogramBinningCalibrator())
        else:
            cal = pc.get_calibrator(name, **config)
        cal.fit(_probs(z), y)
        return lambda t: cal.predict_proba(_probs(t))
    return fit


def _netcal(name: str) -> Fit:
    def fit(z: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        from netcal import binning, scaling

        cls = getattr(scaling, name, None) or getattr(binning, name)
        cal = cls()
        binary = z.ndim == 1 or z.shape[1] == 2
        p = _probs(z)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cal.fit(p[:, 1] if binary else p, y)

        def predict(t: np.ndarray) -> np.ndarray:
            q = _probs(t)
            out = np.asarray(cal.transform(q[:, 1] if binary else q), dtype=np.float64)
            return np.stack([1 - out, out], axis=1) if binary else out
        return predict
    return fit


def _dirichletcal(name: str, **params: Any) -> Fit:
    def fit(z: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        from dirichletcal.calib import fulldirichlet, matrixscaling, tempscaling, vectorscaling

        if name == "full":
            cal = fulldirichlet.FullDirichletCalibrator(**params)
            cal.fit(_probs(z), y)
            return lambda t: np.asarray(cal.predict_proba(_probs(t)))
        module = {"temperature": tempscaling.TemperatureScaling,
                  "vector": vectorscaling.VectorScaling,
                  "matrix": matrixscaling.MatrixScaling}[name]
        cal = module(logit_input=True)
        cal.fit(_two(z).astype(np.float64), y)
        return lambda t: np.asarray(cal.predict_proba(_two(t).astype(np.float64)))
    return fit


def _betacal() -> Fit:
    def fit(z: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        from betacal import BetaCalibration

        cal = BetaCalibration(parameters="abm").fit(_probs(z)[:, 1], y)
        return lambda t: (lambda q: np.stack([1 - q, q], 1))(cal.predict(_probs(t)[:, 1]))
    return fit


#: method -> (logitkit's fit, {peer: fit}, binary only?, multiclass only?)
METHODS: dict[str, tuple[Fit, dict[str, Fit]]] = {
    "temperature": (ours(TemperatureScaler), {
        "sklearn": _sklearn("temperature"), "probmetrics": _probmetrics("temp-scaling"),
        "netcal": _netcal("TemperatureScaling"), "dirichletcal": _dirichletcal("temperature")}),
    "vector": (ours(VectorScaler), {
        "probmetrics": _probmetrics("VectorScalingCalibrator", logits=True),
        "netcal": _netcal("LogisticCalibration"), "dirichletcal": _dirichletcal("vector")}),
    "matrix": (ours(MatrixScaler), {
        "probmetrics": _probmetrics("MatrixScalingCalibrator", logits=True),
        "dirichletcal": _dirichletcal("matrix")}),
    "dirichlet": (ours(DirichletScaler), {
        "dirichletcal": _dirichletcal("full", reg_lambda=1e-2, reg_mu=1e-2, reg_norm=True),
        "probmetrics": _probmetrics("dircal")}),
    "structured": (ours(StructuredScaler), {"probmetrics": _probmetrics("sms")}),
    "structured-vector": (ours(StructuredScaler, form="vector"),
                          {"probmetrics": _probmetrics("svs")}),
    "beta": (ours(BetaCalibrator), {"betacal": _betacal(), "probmetrics": _probmetrics("ovr-beta"),
                                    "netcal": _netcal("BetaCalibration")}),
    "isotonic": (ours(IsotonicCalibrator), {
        "sklearn": _sklearn("isotonic"), "probmetrics": _probmetrics("isotonic"),
        "netcal": _netcal("IsotonicRegression")}),
    "histogram": (ours(HistogramCalibrator), {
        "probmetrics": _probmetrics("ovr-histogram"), "netcal": _netcal("HistogramBinning")}),
}
#: Peer fits that run dirichletcal, which forms an ``N × (K+1) × (K+1)`` float64 array
#: (probmetrics' "dircal" is dirichletcal's FullDirichletCalibrator).
WRAPS_DIRICHLETCAL = {("dirichletcal", m) for m in ("temperature", "vector", "matrix", "dirichlet")
                      } | {("probmetrics", "dirichlet")}
#: Peers that implement a method for two classes only, or for more only.
BINARY_ONLY = {("beta", "betacal"), ("beta", "netcal")}
MULTICLASS_ONLY = {("beta", "probmetrics")}


def _scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = np.asarray(p, dtype=np.float64)
    picked = p[np.arange(len(y)), y]
    with np.errstate(divide="ignore"):
        nll = float(-np.mean(np.log(picked)))
    return {"nll": nll, "ece": float(ece(p, y)), "brier": float(brier_score(p, y))}


def _timed(fit: Fit, z: np.ndarray,
           y: np.ndarray) -> tuple[tuple[float, float], Callable | None, str]:
    """``((wall s, CPU s), predict or None, why)``: CPU seconds (every thread of the process)
    are the fairer figure on a shared, loaded machine; wall seconds the one a user sees."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict = fit(z, y)
    except ImportError as exc:
        return (math.nan, math.nan), None, f"not installed ({exc.name})"
    except Exception as exc:  # a peer that fails on these data is reported, not hidden
        return (math.nan, math.nan), None, f"failed: {type(exc).__name__}: {str(exc)[:60]}"
    return (time.perf_counter() - t0, time.process_time() - c0), predict, ""


def _peer_child(method: str, peer: str, n: int, k: int, conn: Any) -> None:
    """In a fresh (spawned) process: rebuild the speed data and time one peer's fit; sends
    its CPU seconds when the timed fit starts, then the result."""
    warnings.filterwarnings("ignore")
    z, y, zt, yt = _speed_data(n, k)
    fit = METHODS[method][1][peer]
    _timed(fit, z[:500], y[:500])  # its imports and first calls warmed up, as ours are
    conn.send(time.process_time())
    t, predict, why = _timed(fit, z, y)
    conn.send((t, None if predict is None else _scores(predict(zt), yt), why))


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a running process has used so far (Linux)."""
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _capped(method: str, peer: str, n: int, k: int,
            cap: float) -> tuple[tuple[float, float], dict[str, float] | None, str]:
    """A peer's fit in a spawned child, stopped once it has used ``cap`` CPU seconds:
    ``((wall s, CPU s), test scores or None, why)``.  Some peers take hours on large inputs
    (netcal's 1000 epochs); a fork is unsafe once OpenMP runs, so the child rebuilds the
    (seeded) data itself.  The cap is on CPU, not wall, seconds: on a shared machine the wall
    clock of both sides depends on the load."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_peer_child, args=(method, peer, n, k, child))
    proc.start()
    setup = parent.recv()  # the child's CPU seconds before its timed fit
    t0, done = time.perf_counter(), False
    cpu = 0.0
    while not done:
        done = parent.poll(0.5)
        if not done:
            try:
                cpu = _cpu_seconds(proc.pid) - setup
            except OSError:  # it has exited: its result is in the pipe
                continue
            if cpu > cap:
                break
    if done:
        out = parent.recv()
        proc.join()
        return out
    proc.terminate()
    proc.join()
    return (time.perf_counter() - t0, cpu), None, f"stopped after {cpu:.0f} CPU s"


def _applies(method: str, peer: str, k: int) -> bool:
    return not ((k == 2 and (method, peer) in MULTICLASS_ONLY)
                or (k > 2 and (method, peer) in BINARY_ONLY))


def quality(methods: list[str], datasets: list[str]) -> None:
    print("test NLL / ECE / Brier of each method, logitkit against the best peer implementation")
    print("(nll ratio = logitkit / best peer; time ratio = logitkit's CPU seconds / the fastest "
          "peer's, same run)\n")
    for name in datasets:
        z, y, zt, yt = DATASETS[name](0)
        k = 2 if z.ndim == 1 else z.shape[1]
        base = _scores(_probs(zt), yt)
        print(f"== {name}: {len(y)} calibration rows, {len(yt)} test rows, {k} classes; "
              f"uncalibrated NLL {base['nll']:.4f} ECE {base['ece']:.4f} "
              f"Brier {base['brier']:.4f}")
        print(f"  {'method':18s} {'NLL':>8s} {'ECE':>7s} {'Brier':>7s} | {'best peer':>22s} "
              f"{'its NLL':>8s} {'ratio':>6s} | {'time ratio':>10s}")
        single = {}
        for method in methods:
            mine, peers = METHODS[method]
            t_ours, predict, why = _timed(mine, z, y)
            if predict is None:
                print(f"  {method:18s} {why}")
                continue
            s = _scores(predict(zt), yt)
            single[method] = s["nll"]
            best_peer, best_nll, fastest = "-", math.inf, math.inf
            notes = []
            for peer, fit in peers.items():
                if not _applies(method, peer, k):
                    continue
                t_peer, pp, why = _timed(fit, z, y)
                if pp is None:
                    notes.append(f"{peer}: {why}")
                    continue
                ps = _scores(pp(zt), yt)
                fastest = min(fastest, t_peer[1])
                if ps["nll"] < best_nll or best_peer == "-":
                    best_peer, best_nll = peer, ps["nll"]
            ratio = s["nll"] / best_nll if math.isfinite(best_nll) else math.nan
            tr = t_ours[1] / fastest if math.isfinite(fastest) else math.nan
            print(f"  {method:18s} {s['nll']:8.4f} {s['ece']:7.4f} {s['brier']:7.4f} | "
                  f"{best_peer:>22s} {best_nll:8.4f} {ratio:6.3f} | {tr:10.3f}"
                  + (f"   ({'; '.join(notes)})" if notes else ""))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sel = select(z, y, random_state=0)
        s = _scores(np.asarray(sel.predict_proba(zt)), yt)
        best = min(single.values()) if single else math.nan
        chosen_base = sel.best_
        print(f"  select -> {chosen_base:16s} test NLL {s['nll']:.4f} (best single method "
              f"{best:.4f}, ratio {s['nll'] / best:.3f}); uncalibrated {base['nll']:.4f}\n")


def spread(methods: list[str], datasets: list[str], n_splits: int,
           synthetic_splits: int) -> None:
    """``quality``'s NLL ratio (logitkit / the best peer of that split) over many
    calibration/test splits: its mean, worst and best per method and data set (one split's
    ratio on 44-449 rows is mostly the luck of that split)."""
    print("test NLL of logitkit / the best peer's, over random calibration/test splits: "
          "mean, worst, best\n")
    for name in datasets:
        splits = synthetic_splits if name.startswith("synthetic") else n_splits
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        for split in range(splits):
            z, y, zt, yt = DATASETS[name](split)
            k = 2 if z.ndim == 1 else z.shape[1]
            for method in methods:
                mine, peers = METHODS[method]
                best = math.inf
                for peer, fit in peers.items():
                    if _applies(method, peer, k):
                        pp = _timed(fit, z, y)[1]
                        if pp is not None:
                            best = min(best, _scores(pp(zt), yt)["nll"])
                predict = _timed(mine, z, y)[1]
                if predict is not None and math.isfinite(best):
                    ratios[method].append(_scores(predict(zt), yt)["nll"] / best)
        print(f"== {name}: {splits} splits")
        for method, rs in ratios.items():
            if rs:
                print(f"  {method:18s} mean {np.mean(rs):7.3f}  worst {np.max(rs):7.3f}  "
                      f"best {np.min(rs):7.3f}", flush=True)
        print()


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    """Mean NLL of the labels' probabilities, ``inf`` for a zero or a NaN (a peer's
    probabilities may hold either)."""
    p = np.asarray(p, dtype=np.float64)
    p = np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(-np.mean(np.log(p[np.arange(len(y)), y])))
    return value if math.isfinite(value) else math.inf


FLOOR_FRACTIONS = (1.0, 0.5, 0.25, 0.1, 0.01)


def floors(n_splits: int) -> None:
    """The isotonic and histogram calibrators' floor against fractions of it (see the module)."""
    from logitkit.calibration import HistogramCalibrator, IsotonicCalibrator

    real = [name for name in DATASETS if not name.startswith("synthetic")]
    print(f"test NLL over {n_splits} calibration/test splits: mean, and over the splits where "
          "the best peer's is finite, the mean ratio to it\n")
    for method, cls in (("isotonic", IsotonicCalibrator), ("histogram", HistogramCalibrator)):
        print(f"== {method}: floor x " + "  ".join(f"{f:>16g}" for f in FLOOR_FRACTIONS))
        for name in real:
            nll: dict[float, list[float]] = {f: [] for f in FLOOR_FRACTIONS}
            peer_nll = []
            for split in range(n_splits):
                z, y, zt, yt = DATASETS[name](split)
                k = 2 if z.ndim == 1 else z.shape[1]
                best = math.inf
                for peer, fit in METHODS[method][1].items():
                    if _applies(method, peer, k):
                        predict = _timed(fit, z, y)[1]
                        if predict is not None:
                            best = min(best, _nll(predict(zt), yt))
                peer_nll.append(best)
                est = cls().fit(z, y)
                floor = est.floor_
                for f in FLOOR_FRACTIONS:  # the floor only clips what transform gives
                    est.floor_ = floor * f
                    nll[f].append(_nll(np.asarray(est.predict_proba(zt)), yt))
            peer = np.array(peer_nll)
            finite = np.isfinite(peer)
            cells = []
            for f in FLOOR_FRACTIONS:
                a = np.array(nll[f])
                ratio = np.mean(a[finite] / peer[finite]) if finite.any() else math.nan
                cells.append(f"{a.mean():.4f} ({ratio:5.3f})")
            print(f"  {name:18s} " + "  ".join(f"{c:>16s}" for c in cells)
                  + f"   peer finite on {finite.sum()}/{n_splits}", flush=True)
        print()


# --------------------------------------------------------------------------------------------
# select's rule, studied over many calibration/test splits
# --------------------------------------------------------------------------------------------

Losses = dict[str, np.ndarray]


def _z(gain: np.ndarray) -> float:
    """Mean per-row gain over its standard error (select's ``gain_z``)."""
    from logitkit.calibration._select import _evidence

    return _evidence(gain)


def _argmin(losses: Losses, names: list[str]) -> str:
    """The lowest mean loss among ``names``, near-ties (0.1%) to the simpler (earlier) one."""
    means = {m: float(np.mean(losses[m])) for m in names}
    best = min(means.values())
    return next(m for m in names if means[m] <= best + 1e-3 * abs(best) + 1e-12)


def _rule_argmin(losses: Losses, ok: list[str]) -> str:
    return _argmin(losses, ok)


def _rule_z_none(t: float) -> Callable[[Losses, list[str]], str]:
    def rule(losses: Losses, ok: list[str]) -> str:
        return _argmin(losses, [m for m in ok if m == "none"
                                or _z(losses["none"] - losses[m]) >= t])
    return rule


def _rule_z_temperature(t: float, richer: float | None = None,
                        both: bool = False) -> Callable[[Losses, list[str]], str]:
    """Two steps of evidence: temperature over none (``t``), then any richer map over that
    base (``richer``, default ``t``; ``both``: over none too)."""
    bar = t if richer is None else richer

    def rule(losses: Losses, ok: list[str]) -> str:
        base = "temperature" if "temperature" in ok and \
            _z(losses["none"] - losses["temperature"]) >= t else "none"
        return _argmin(losses, [base] + [
            m for m in ok if m not in ("none", "temperature")
            and _z(losses[base] - losses[m]) >= bar
            and (not both or _z(losses["none"] - losses[m]) >= bar)])
    return rule


def _rule_one_se(c: float) -> Callable[[Losses, list[str]], str]:
    """The simplest candidate within ``c`` paired standard errors of the best."""
    def rule(losses: Losses, ok: list[str]) -> str:
        best = _argmin(losses, ok)
        for m in ok:
            d = losses[m] - losses[best]
            se = float(np.std(d, ddof=1)) / math.sqrt(d.size) if d.size > 1 else 0.0
            if float(np.mean(d)) <= c * se:
                return m
        return best
    return rule


RULES: dict[str, Callable[[Losses, list[str]], str]] = {
    "argmin": _rule_argmin,
    "z>=1 vs none": _rule_z_none(1.0),
    "z>=1.5 vs none": _rule_z_none(1.5),
    "z>=2 vs none": _rule_z_none(2.0),
    "z>=1 stepwise": _rule_z_temperature(1.0),
    "z>=1.5 stepwise": _rule_z_temperature(1.5),
    "z>=1, then 1.5 stepwise": _rule_z_temperature(1.0, 1.5),
    "z>=1, then 2 stepwise": _rule_z_temperature(1.0, 2.0),
    "z>=1, then 1.5 vs both": _rule_z_temperature(1.0, 1.5, both=True),
    "1-SE": _rule_one_se(1.0),
    "0.5-SE": _rule_one_se(0.5),
}


def _selection_evidence(z: np.ndarray, y: np.ndarray,
                        seed: int) -> tuple[Losses, list[str], bool, str, Any]:
    """One :func:`select` run: per-row out-of-fold NLL of every candidate (the mixture's
    nested), the candidates its guards leave eligible (fitted, converged, off bounds,
    accuracy kept), whether the rows are separable, its choice, and the selection."""
    from logitkit.calibration._select import _usable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select(z, y, random_state=seed)
    losses, ok = {}, []
    rows = np.arange(len(y))
    for r in sel.table_:
        m = r["method"]
        if r["error"] is not None:
            continue
        losses[m] = -np.asarray(log_softmax(sel.oof_logits(m), axis=1))[rows, y]
        if _usable(r, "nll"):
            ok.append(m)
    return losses, ok, sel.separable_, sel.best_, sel


def rules(datasets: list[str], n_splits: int, repeats: int, synthetic_splits: int) -> None:
    """Every rule of :data:`RULES`, on ``repeats``-times repeated 5-fold CV (per-row losses
    averaged over the repeats) and on one CV run, over ``n_splits`` calibration/test splits of
    each data set: the mean and worst test-NLL ratio of its choice to the best single method
    of that split (the best of the nine calibrators refitted on every calibration row, chosen
    on the test rows: a bar no rule can meet every time), and how often the choice did worse
    than the uncalibrated logits."""
    names = list(METHODS)
    print("select's rule over random calibration/test splits (test NLL of the choice / the "
          "split's best single method; 'x none' = splits where the choice was worse than the "
          "uncalibrated logits by over 1%)\n")
    for name in datasets:
        splits = synthetic_splits if name.startswith("synthetic") else n_splits
        ratios: dict[str, list[float]] = {}
        worse: dict[str, int] = {}
        picks: dict[str, dict[str, int]] = {}
        for split in range(splits):
            z, y, zt, yt = DATASETS[name](split)
            test = {"none": _scores(_probs(zt), yt)["nll"]}
            for method in names:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    test[method] = _scores(METHODS[method][0](z, y)(zt), yt)["nll"]
            best = min(test[m] for m in names)
            runs = [_selection_evidence(z, y, 1000 * split + r) for r in range(repeats)]
            if "stacked" in runs[0][0]:  # the mixture: refitted as select refits it
                mixture = runs[0][4].refit("stacked")
                test["stacked"] = _scores(np.asarray(mixture.predict_proba(zt)), yt)["nll"]
            apart = runs[0][2]
            choices = {"select (as built)": runs[0][3]}
            for label, used in (("", runs[:1]), (f" cv x{repeats}", runs)):
                ok = [m for m in used[0][1] if all(m in u[1] for u in used)]
                losses = {m: np.mean([u[0][m] for u in used], axis=0) for m in ok}
                for rule, fn in RULES.items():
                    choices[rule + label] = "none" if apart else fn(losses, ok)
            for m in ("temperature", "structured"):
                choices[f"always {m}"] = m
            for rule, m in choices.items():
                ratios.setdefault(rule, []).append(test[m] / best)
                worse[rule] = worse.get(rule, 0) + int(test[m] > 1.01 * test["none"])
                picks.setdefault(rule, {})
                picks[rule][m] = picks[rule].get(m, 0) + 1
        print(f"== {name}: {splits} splits of {len(y)} calibration / {len(yt)} test rows")
        print(f"  {'rule':26s} {'mean':>6s} {'worst':>6s} {'x none':>6s}  choices")
        for rule, rs in ratios.items():
            top = ", ".join(f"{m} {c}" for m, c in sorted(picks[rule].items(),
                                                         key=lambda kv: -kv[1]))
            print(f"  {rule:26s} {np.mean(rs):6.3f} {np.max(rs):6.3f} {worse[rule]:6d}  {top}",
                  flush=True)
        print()


def _speed_data(n: int, k: int) -> Split:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(n + 20000, k)) * 1.5
    y_all = _draw(true, rng)
    z_all = (3.0 * true + rng.normal(size=k) * 0.5).astype(np.float32)
    return z_all[:n], y_all[:n], z_all[n:], y_all[n:]


def _breakdown(method: str, z: np.ndarray, y: np.ndarray) -> str:
    """Where one of logitkit's affine fits spends its CPU and wall seconds: the temperature
    stage, the features computed once, the whitening moments and the preconditioner (L-BFGS),
    and the passes over the rows (float32-product, float64 and Newton ones), with the pass
    count and the test that stopped the fit."""
    from logitkit.calibration import _scaling as sc

    parts = {"temperature": (sc, "_temperature_stage"), "features": (sc, "_cached_features"),
             "whiten": (sc.Standardised, "__init__"),
             "precondition": (sc.Standardised, "precondition"),
             "float32 passes": (sc.Objective, "coarse_value_grad"),
             "float64 passes": (sc.Objective, "value_grad"),
             "Newton passes": (sc.Objective, "value_grad_hess")}
    spent = dict.fromkeys(parts, 0.0)
    waited = dict.fromkeys(parts, 0.0)
    calls = dict.fromkeys(parts, 0)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - c0
                waited[name] += time.perf_counter() - w0
                calls[name] += 1
        return run

    saved = {name: getattr(owner, attr) for name, (owner, attr) in parts.items()}
    fit: Any = METHODS[method][0]
    cls, params = fit.estimator
    try:
        for name, (owner, attr) in parts.items():
            setattr(owner, attr, timed(name, saved[name]))
        c0, w0 = time.process_time(), time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = cls(**params).fit(z, y)
        total, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        for name, (owner, attr) in parts.items():
            setattr(owner, attr, saved[name])
    shown = ", ".join(f"{name} {spent[name]:.2f}/{waited[name]:.2f}"
                      + (f" ({calls[name]})" if "passes" in name else "")
                      for name in parts if calls[name])
    return (f"{est.n_iter_} passes, stopped by {getattr(est, 'stopped_by_', '?')}; CPU/wall s "
            f"{total:.2f}/{wall:.2f}: {shown}, other {total - sum(spent.values()):.2f}/"
            f"{wall - sum(waited.values()):.2f}")


def speed(n: int, k: int, methods: list[str], repeat: int, cap: float,
          breakdown: bool = False) -> None:
    z, y, zt, yt = _speed_data(n, k)
    # warm the kernels and the imports up on a small fit
    for method in methods:
        METHODS[method][0](z[:500], y[:500])
    print(f"fits on {n} x {k} float32 logits (test NLL on 20000 more rows); "
          f"uncalibrated test NLL {-np.mean(log_softmax(zt.astype(np.float64), axis=1)[np.arange(20000), yt]):.4f}")
    print(f"  {'method':18s} {'wall s':>7s} {'CPU s':>7s} {'test NLL':>9s} | {'peer':>12s} "
          f"{'wall s':>7s} {'CPU s':>7s} {'test NLL':>9s} {'peer/ours wall':>14s} {'CPU':>6s}")
    for method in methods:
        mine, peers = METHODS[method]
        runs = []
        for _ in range(repeat):
            t, predict, _ = _timed(mine, z, y)
            runs.append(t)
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        nll_ours = _scores(predict(zt), yt)["nll"]
        print(f"  {method:18s} {wall:7.2f} {cpu:7.2f} {nll_ours:9.4f} |", flush=True)
        if breakdown and issubclass(mine.estimator[0], _AffineScaler):  # type: ignore[attr-defined]
            print(f"  {'':18s} {_breakdown(method, z, y)}", flush=True)
        for peer in peers:
            if not _applies(method, peer, k):
                continue
            if (peer, method) in WRAPS_DIRICHLETCAL and n * (k + 1) ** 2 * 8 > 2 * 2**30:
                print(f"  {'':18s} {'':7s} {'':7s} {'':9s} | {peer:>12s} skipped: needs an "
                      f"N x (K+1)^2 float64 array ({n * (k + 1) ** 2 * 8 / 2**30:.1f} GiB)")
                continue
            # long enough to show a tenfold gap
            (pw, pc), scores, why = _capped(method, peer, n, k, max(cap, 12.0 * cpu))
            if scores is None:
                print(f"  {'':18s} {'':7s} {'':7s} {'':9s} | {peer:>12s} {why}"
                      + (f" ({pc / cpu:.0f}x ours in CPU s and more)"
                         if why.startswith("stopped") else ""), flush=True)
                continue
            print(f"  {'':18s} {'':7s} {'':7s} {'':9s} | {peer:>12s} {pw:7.2f} {pc:7.2f} "
                  f"{scores['nll']:9.4f} {pw / wall:14.1f} {pc / cpu:6.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["quality", "spread", "rules", "floors", "speed"])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--datasets", nargs="*", default=None, choices=list(DATASETS),
                        help="quality only: the data sets to score (default: all six)")
    parser.add_argument("--splits", type=int, default=30,
                        help="spread, rules and floors: calibration/test splits of each real data set")
    parser.add_argument("--synthetic-splits", type=int, default=5,
                        help="spread and rules: splits (fresh draws) of each synthetic set")
    parser.add_argument("--cv-repeats", type=int, default=3,
                        help="rules only: repeated cross-validation runs per split")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--breakdown", action="store_true",
                        help="speed only: where each of logitkit's affine fits spends its CPU "
                             "seconds (one more fit of each)")
    parser.add_argument("--cap", type=float, default=60.0,
                        help="CPU seconds after which a peer's fit is stopped, at least 12x "
                             "ours (speed only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.part == "quality":
        quality(args.methods or list(METHODS), args.datasets or list(DATASETS))
    elif args.part == "spread":
        spread(args.methods or list(METHODS), args.datasets or list(DATASETS), args.splits,
               args.synthetic_splits)
    elif args.part == "floors":
        floors(args.splits)
    elif args.part == "rules":
        rules(args.datasets or list(DATASETS), args.splits, args.cv_repeats,
              args.synthetic_splits)
    else:
        parametric = ["temperature", "vector", "structured-vector", "beta", "dirichlet",
                      "structured", "matrix"]
        speed(args.n, args.k, args.methods or parametric, args.repeat, args.cap, args.breakdown)


if __name__ == "__main__":
    main()
