"""Binary and one-vs-rest calibrators of the probabilities: beta, isotonic, histogram binning.

Each calibrates one class probability ``p_k = softmax(z)_k`` at a time against ``[y = k]``: for
two classes only class 1 (class 0 gets ``1 − q``), for ``K ≥ 3`` every class, and the ``K``
calibrated values are renormalised.  ``transform`` returns ``log q`` (logits whose softmax is the
renormalised ``q``).  ``log p_k`` and ``log(1 − p_k)`` come from the logits exactly (no clipping
of ``p`` to ``[ε, 1 − ε]`` before the log), and the isotonic and histogram values are kept in
``[floor, 1 − floor]`` with ``floor = 1/(2(N + 1))``, so no class probability is ever exactly 0
and the NLL stays finite.

The floor is borne out by measurement (``bench_calibrators.py floors``): over 30 calibration/test splits of the benchmark's four
real files (``benchmarks/bench_calibrators.py``), floors of 1/2, 1/4, 1/10 and 1/100 of it
raised isotonic regression's mean test NLL on every file (breast_cancer GBM 0.150 -> 0.155,
0.161, 0.169, 0.190; digits MLP 0.135 -> 0.138 ... 0.180), and histogram binning's on three
(wine: 0.1078 -> 0.1068 at half the floor, then up).  A smaller floor only helps on the
splits where no test row falls outside what the calibration rows showed, where scikit-learn's
unfloored isotonic regression (which gives 0) stays finite: 9 of 30 on breast_cancer, this
floor's NLL 2.7% above it there on average.  On the others a row given the floor pays
``-log floor``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import _kernels
from .._core import log_softmax
from .._namespace import LogitkitValueError, check_choice, check_int, check_number, expected
from ._base import Calibrator, FieldCheck, FitData, expand_rows, map_rows
from ._binning import edges_of
from ._blocks import row_sums
from ._engine import THREADS
from ._fitting import CACHE_FEATURES, _check_finite

__all__ = ["BetaCalibrator", "HistogramCalibrator", "IsotonicCalibrator"]

_CHUNK_ELEMENTS = 1 << 20  # 8 MiB of float64 per chunk: amortises the kernels' parallel launches
#: Beta's sums over precomputed features call no kernel: chunks that stay in cache through
#: their two dozen NumPy operations (1e5 x 100: 0.53 -> 0.30 CPU s a pass).
_RESIDENT_ELEMENTS = 1 << 15
#: Beta's warm start: an evenly spaced subsample of about this many rows is fitted first.
_WARM_START_ROWS = (4_000, 20_000)
#: Isotonic fits of at least this many class probabilities sort the classes on threads.
ISOTONIC_THREADED = 1 << 20


def _log1mexp(a: np.ndarray) -> np.ndarray:
    """``log(1 − exp(a))`` for ``a ≤ 0``, accurate on both sides of ``−log 2`` (Mächler 2012):
    ``log1p(−eᵃ)`` below, ``log(−expm1(a))`` above (computed only where needed: most class
    probabilities are small)."""
    with np.errstate(divide="ignore"):
        out = np.log1p(-np.exp(a))
        near = a > -math.log(2.0)
        if near.any():
            out[near] = np.log(-np.expm1(np.minimum(a[near], 0.0)))
    return out


def class_logs(x: Any, from_probs: bool, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """``(log p, log(1 − p))`` of the calibrated classes for a block of input rows, float64
    (probabilities' zeros read as ``floor``: :func:`._base.expand_rows`).

    Two classes: class 1 only, from the margin ``m = z₁ − z₀`` (``−softplus(∓m)``); ``K ≥ 3``:
    every class, from ``log_softmax``.
    """
    z = expand_rows(x, from_probs, floor)
    if z.shape[1] == 2:
        m = z[:, 1:2] - z[:, 0:1]
        return -np.logaddexp(0.0, -m), -np.logaddexp(0.0, m)
    lp = log_softmax(z, axis=1)
    return lp, _log1mexp(lp)


#: Beta calibration reads ``log p`` and ``log(1 − p)`` floored at ``log ε`` (``ε = 2⁻⁵²``):
#: betacal clips ``p`` to ``[ε, 1 − ε]`` and the map should not extrapolate beyond it.
LOG_EPS = math.log(np.finfo(np.float64).eps)


def beta_logs(x: Any, from_probs: bool, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`class_logs` floored at :data:`LOG_EPS`."""
    lp, l1mp = class_logs(x, from_probs, floor)
    return np.maximum(lp, LOG_EPS), np.maximum(l1mp, LOG_EPS)


def _targets(y: np.ndarray, k: int) -> np.ndarray:
    """``[y = c]`` for the calibrated classes ``c`` (class 1 only when ``k = 2``)."""
    y = np.asarray(y).astype(np.intp, copy=False)
    if k == 2:
        return (y == 1).astype(np.float64)[:, None]
    return (y[:, None] == np.arange(k)).astype(np.float64)


def _from_class_probs(logq: np.ndarray, log1mq: np.ndarray, k: int) -> np.ndarray:
    """The output logits ``(r, K)`` from ``log q`` (and ``log(1 − q)``) of the calibrated
    classes."""
    if k == 2:
        return np.concatenate([log1mq, logq], axis=1)
    return logq


class _OneVsRest(Calibrator):
    """Shared transform: ``log q`` of every calibrated class, renormalised by the softmax."""

    def _class_probs(self, p: np.ndarray, lp: np.ndarray,
                     l1mp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log q, log(1 − q))`` from ``p`` (and its logs) of the calibrated classes."""
        raise NotImplementedError  # pragma: no cover

    def _transform_rows(self, x: np.ndarray) -> np.ndarray:
        k = self.n_classes_
        lp, l1mp = class_logs(x, False, -math.inf)
        logq, log1mq = self._class_probs(np.exp(lp), lp, l1mp)
        return _from_class_probs(logq, log1mq, k)

    def _transform(self, z: Any, xp: Any) -> Any:
        """Calibrated logits: NumPy arithmetic (interpolation, bins) on the host, the result
        returned in ``z``'s array type (not differentiable)."""
        return map_rows(self._transform_rows, z, xp)


def _clipped_logs(q: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    q = np.clip(q, floor, 1.0 - floor)
    return np.log(q), np.log1p(-q)


# --------------------------------------------------------------------------------------------
# beta calibration
# --------------------------------------------------------------------------------------------


def beta_features(x: Any, from_probs: bool, floor: float, k: int) -> np.ndarray:
    """``[log p | −log(1 − p)]`` of the calibrated classes, floored (:func:`beta_logs`), for a
    block of input rows: ``(r, 2C)`` float64, the two features :func:`beta_sums` reads (from
    logits of ``K >= 3`` classes by the native kernel: one read of each row, no temporaries)."""
    x = np.asarray(x)
    if k > 2 and not from_probs:
        fast = _kernels.beta_features(x, LOG_EPS)
        if fast is not None:
            return fast
    n = x.shape[0]
    n_cls = 1 if k == 2 else k
    out = np.empty((n, 2 * n_cls))
    chunk = max(16, _CHUNK_ELEMENTS // max(k, 2))
    for start in range(0, n, chunk):
        lp, l1mp = beta_logs(x[start:start + chunk], from_probs, floor)
        out[start:start + chunk, :n_cls] = lp
        np.negative(l1mp, out=out[start:start + chunk, n_cls:])
    return out


def _class_sums(feat: np.ndarray, w: np.ndarray | None, th: np.ndarray,
                cls: np.ndarray | None) -> np.ndarray:
    """The ten per-class sums of ``csrc/beta.cpp`` ``(10, C)`` over features ``(r, 2C)`` with
    coefficients ``th`` ``(C, 3)``, for the classes ``cls`` only (``None``: all): the native
    kernel, or the same arithmetic in NumPy in chunks of rows that stay in cache.  The columns
    of a subset are gathered first when it is at most a quarter of the classes (the kernel
    reads whole rows: computing every class costs less than gathering most of them)."""
    n_all = th.shape[0]
    if cls is not None and 4 * cls.size <= n_all:  # a few classes: gather their columns
        feat, th, cls = feat[:, np.r_[cls, n_all + cls]], th[cls], None
    fast = _kernels.beta_sums(feat, w, th.T)
    if fast is not None:
        return fast if cls is None else fast[:, cls]
    if cls is not None:
        feat, th = feat[:, np.r_[cls, n_all + cls]], th[cls]
    n_cls = th.shape[0]
    out = np.zeros((10, n_cls))
    chunk = max(16, _RESIDENT_ELEMENTS // max(n_cls, 2))
    for start in range(0, feat.shape[0], chunk):
        u, v = feat[start:start + chunk, :n_cls], feat[start:start + chunk, n_cls:]
        s = u * th[:, 0]
        s += v * th[:, 1]
        s += th[:, 2]
        # softplus(s), σ(s) and σ(s)(1 − σ(s)) from one exponential: e = exp(−|s|)
        e = np.exp(-np.abs(s))
        sp = np.maximum(s, 0.0)
        sp += np.log1p(e)
        d = 1.0 / (1.0 + e)
        q = np.where(s >= 0, d, e * d)
        r = e * d * d
        if w is not None:
            wc = w[start:start + chunk, None]
            sp *= wc
            q *= wc
            r *= wc
        ru, rv = r * u, r * v
        out[0] += sp.sum(axis=0)
        out[1] += np.einsum("rc,rc->c", q, u)
        out[2] += np.einsum("rc,rc->c", q, v)
        out[3] += q.sum(axis=0)
        out[4] += np.einsum("rc,rc->c", ru, u)
        out[5] += np.einsum("rc,rc->c", ru, v)
        out[6] += np.einsum("rc,rc->c", rv, v)
        out[7] += ru.sum(axis=0)
        out[8] += rv.sum(axis=0)
        out[9] += r.sum(axis=0)
    return out


def beta_sums(x: Any, y: Any, w: Any, *, theta: np.ndarray, free: np.ndarray,
              from_probs: bool, floor: float, k: int, features: bool = False,
              classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per calibrated class ``c``: ``Σ w·loss``, its gradient and Hessian in ``(a, b, c)`` for
    the logistic model ``logit q = a log p − b log(1 − p) + c`` (``free`` masks fixed
    coefficients).  Shapes ``(C,)``, ``(C, 3)``, ``(C, 3, 3)``.  ``features``: the rows ``x``
    are already :func:`beta_features`.  ``classes``: only these calibrated classes (indices;
    ``theta`` and ``free`` have one row each).

    The loss ``softplus(s) − t·s`` and its gradient ``(σ(s) − t)·(u, v, 1)`` are summed as
    their coefficient-dependent parts (:func:`_class_sums`, one pass over the features) less
    the targets' parts ``t·(u, v, 1)``, which only the rows' own class contributes (a gather
    of ``N`` entries, not ``N × C``)."""
    x = np.asarray(x)
    n = x.shape[0]
    n_all = 1 if k == 2 else k
    cls = None if classes is None or len(classes) == n_all else np.asarray(classes, np.intp)
    th = np.zeros((n_all, 3))
    th[slice(None) if cls is None else cls] = theta * free
    # the calibrated class of each row (−1: none)
    label = np.asarray(y).astype(np.intp, copy=False)
    label = np.where(label == 1, 0, -1) if k == 2 else label
    sums = np.zeros((10, n_all if cls is None else cls.size))
    target = np.zeros((3, n_all))
    wall = None if w is None else np.asarray(w, dtype=np.float64)
    chunk = max(n, 1) if features else max(16, _CHUNK_ELEMENTS // max(k, 2))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        feat = (x[start:stop] if features
                else beta_features(x[start:stop], from_probs, floor, k))
        wc = None if wall is None else wall[start:stop]
        sums += _class_sums(feat, wc, th, cls)
        lab = label[start:stop]
        rows = np.flatnonzero(lab >= 0)
        hit = lab[rows]
        wt = np.ones(rows.size) if wc is None else wc[rows]
        target[0] += np.bincount(hit, weights=wt * feat[rows, hit], minlength=n_all)
        target[1] += np.bincount(hit, weights=wt * feat[rows, n_all + hit], minlength=n_all)
        target[2] += np.bincount(hit, weights=wt, minlength=n_all)
    if cls is not None:
        target, th = target[:, cls], th[cls]
    f = sums[0] - np.einsum("mc,cm->c", target, th)
    g = sums[1:4].T - target.T
    h = np.empty((th.shape[0], 3, 3))
    h[:, 0, 0], h[:, 0, 1], h[:, 1, 1] = sums[4], sums[5], sums[6]
    h[:, 0, 2], h[:, 1, 2], h[:, 2, 2] = sums[7], sums[8], sums[9]
    h[:, 1, 0], h[:, 2, 0], h[:, 2, 1] = sums[5], sums[7], sums[8]
    return f, g * free, h * free[:, :, None] * free[:, None, :]


def class_newton(evaluate: Any, theta: np.ndarray, free: np.ndarray, max_iter: int,
                 tol: float) -> tuple[np.ndarray, int, float]:
    """Damped Newton on ``C`` independent small problems at once: ``evaluate(θ)`` (``θ`` of
    shape ``(C, p)``) gives each problem's objective ``(C,)``, gradient ``(C, p)`` and Hessian
    ``(C, p, p)`` in one pass over the rows.  Each problem has its own backtracking line
    search, so one problem's rejected step does not hold the others back, and a pass
    computes only the problems not yet converged: ``evaluate(θ, idx)`` gives the rows ``idx``
    of the three results for ``θ = θ_all[idx]`` (1e5 x 100 one-vs-rest beta: one joint line
    search took 9 passes of 0.35 CPU s from a warm start, this 6 of which the last three cost
    a tenth as much).  ``free`` masks fixed coefficients.  Returns ``(θ, passes, largest
    gradient entry)``."""
    every = np.arange(theta.shape[0])
    theta = theta.copy()
    f, g, h = evaluate(theta, every)
    passes = 1
    n, p = theta.shape
    t = np.ones(n)
    step = np.zeros_like(theta)
    slope = np.zeros(n)
    fresh = np.ones(n, dtype=bool)  # needs a new Newton direction
    while passes < max_iter:
        if not (np.all(np.isfinite(f)) and np.all(np.isfinite(g))):
            _check_finite(math.nan, g)
        done = np.abs(g).max(axis=1) <= tol
        if done.all():
            break
        todo = fresh & ~done
        if todo.any():
            hh = h[todo] + (1.0 - free[todo])[:, :, None] * np.eye(p)  # fixed: no step
            try:
                s = -np.linalg.solve(hh, g[todo][:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:  # a singular Hessian (unpenalised, separable)
                s = -(np.linalg.pinv(hh) @ g[todo][:, :, None])[:, :, 0]
            sl = np.einsum("cp,cp->c", g[todo], s)
            uphill = ~(sl < 0)  # not a descent direction: steepest descent
            s[uphill] = -g[todo][uphill]
            sl[uphill] = -np.einsum("cp,cp->c", g[todo][uphill], g[todo][uphill])
            step[todo], slope[todo], t[todo] = s, sl, 1.0
        idx = np.flatnonzero(~done)
        trial = theta[idx] + t[idx, None] * step[idx]
        f1, g1, h1 = evaluate(trial, idx)
        passes += 1
        ok = np.isfinite(f1) & (f1 <= f[idx] + 1e-4 * t[idx] * slope[idx])
        took = idx[ok]
        theta[took], f[took], g[took], h[took] = trial[ok], f1[ok], g1[ok], h1[ok]
        t[idx[~ok]] *= 0.5
        fresh[:] = False
        fresh[took] = True
        if np.any(t[idx[~ok]] < 1e-12):  # no descent left along Newton's direction
            break
    return theta, passes, float(np.abs(g).max()) if g.size else 0.0


class BetaCalibrator(_OneVsRest):
    r"""Beta calibration (Kull, Silva Filho & Flach 2017), one-vs-rest beyond two classes.

    .. math::
        \operatorname{logit} q = a \log p - b \log(1 - p) + c,\qquad a, b \ge 0

    the three-parameter ("abm") model, fitted in float64 on the exact logistic likelihood plus
    a ridge toward the identity map ``(a, b, c) = (1, 1, 0)`` (``q = p``)::

        mean loss + (reg / N) · ‖(a, b, c) − (1, 1, 0)‖²

    by Newton's method, every class with its own line search (one-vs-rest, the ``K`` problems
    are independent; a pass computes only the classes not yet converged; large inputs start
    from the fits of evenly spaced subsamples, each solved only to a tenth of its gradient's
    sampling noise, ``0.1/√n``).  A pass is one read of the features ``log p`` and
    ``−log(1 − p)`` (computed once) by a native kernel whose SIMD lanes are the classes
    (1e5 × 100 float32 logits: 0.4-0.5 CPU s a fit, against 2.0 in NumPy).  The ridge is worth about half a row: it
    vanishes as ``N`` grows, and it keeps the fit finite where a one-vs-rest class is
    (nearly) separable, where the unpenalised optimum runs off to infinity (``b`` up to 265
    on the wine file) and gave 1.4-3x the test NLL of ``betacal`` and probmetrics, whose
    L-BFGS stops early.  ``reg = 0.5`` was chosen over random calibration/test splits
    (``benchmarks/bench_calibrators.py spread``): test NLL against the best of those peers, mean and
    worst over 20 splits, 0.49 / 0.92 (wine naive Bayes), 0.73 / 1.05 (digits CNN),
    0.79 / 1.02 (digits MLP), 0.96 / 1.01 (breast_cancer), 0.999 (synthetic); unpenalised
    2.46 / 5.5, 3.9 / 34, ∞, 1.00 / 1.00, 0.999; Platt's prior-corrected targets instead of a
    ridge 0.77 / 2.2 on wine (these figures come from the splits ``reg`` was chosen on; no
    further splits were held out).  ``reg = 0`` is the classic, unpenalised method.
    As in the authors' ``betacal``, the unconstrained fit comes first; a
    class whose ``a`` (else ``b``) comes out negative is refitted with that coefficient at 0,
    which keeps the map monotone.  ``log p`` and ``log(1 − p)`` come exactly from the logits
    and are floored at ``log ε`` (``ε = 2⁻⁵²``), as ``betacal`` clips ``p`` to ``[ε, 1 − ε]``:
    without the floor, the very confident rows of an overfitted network (``log p`` of −100
    and below) drove the map to extreme probabilities on new rows (digits MLP: test NLL 0.169
    against betacal's 0.115).

    Its map runs in NumPy on the host: the result comes back in the input's array type, but
    it is not differentiable (torch gradients do not flow through it) and cannot be traced
    (``jax.jit`` gets a :class:`~logitkit.LogitkitTypeError` saying so).

    Args:
        reg: the ridge's weight (per ``N`` rows of total weight) toward the identity map;
            0 for the unpenalised method.
        max_iter: the most passes over the data (per stage).
        tol: converged when the largest gradient entry (per class, mean loss) is at most ``tol``.
        from_probs: the inputs are probabilities (their logs are used).

    Attributes:
        coef_: ``(C, 3)`` coefficients ``(a, b, c)``, one row per calibrated class (``C = 1``
            for two classes, ``K`` otherwise).
        n_iter_, converged_, n_classes_: passes, convergence, ``K``.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import BetaCalibrator
        >>> rng = np.random.default_rng(0)
        >>> s = rng.normal(size=4000) * 3
        >>> y = (rng.random(4000) < 1 / (1 + np.exp(-s / 3))).astype(int)
        >>> bc = BetaCalibrator().fit(s, y)   # one logit column: a binary problem
        >>> bc.coef_.round(1)   # the truth: logit q = (log p − log(1 − p)) / 3
        array([[ 0.3,  0.4, -0. ]])

    References:
        Kull, Silva Filho & Flach, "Beta calibration: a well-founded and easily implemented
        improvement on logistic calibration for binary classifiers", AISTATS 2017.
    """

    method = "beta"
    _fitted_fields = ("coef_", "n_iter_", "converged_")

    def _fitted_checks(self) -> dict[str, FieldCheck]:
        return {"coef_": (("C", 3), "finite")}

    def __init__(self, *, reg: float = 0.5, max_iter: int = 100, tol: float = 1e-6,
                 from_probs: bool = False) -> None:
        self.reg = reg
        self.max_iter = max_iter
        self.tol = tol
        self.from_probs = from_probs

    def _fit(self, data: FitData) -> None:
        max_iter, tol = self._iteration_settings()
        reg = check_number(self.reg, "reg", low=0.0, high=math.inf, high_open=True)
        k = data.k
        n_cls = 1 if k == 2 else k
        free = np.ones((n_cls, 3))
        identity = np.array([1.0, 1.0, 0.0])  # the map q = p
        # Newton makes 10-50 passes: in memory, the features are computed once, not per pass
        cached = not data.partitioned and data.n * 2 * n_cls <= CACHE_FEATURES
        if cached:
            data = FitData(beta_features(data.x, data.from_probs, data.floor, k), data.y,
                           data.w, k, data.total_weight, data.from_probs, floor=data.floor)

        def objective(part: FitData) -> Any:
            lam = reg / part.total_weight

            def evaluate(theta: np.ndarray,
                         idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                fr = free[idx]
                f, g, h = row_sums(beta_sums, part.x, part.y, part.w, theta=theta, free=fr,
                                   from_probs=part.from_probs, floor=part.floor, k=k,
                                   features=cached,
                                   classes=None if idx.size == n_cls else idx)
                tw = part.total_weight
                d = (theta - identity) * fr
                h = h / tw
                h += 2.0 * lam * fr[:, :, None] * np.eye(3)
                return f / tw + lam * (d * d).sum(axis=1), g / tw + 2.0 * lam * d, h
            return evaluate

        warm = getattr(self, "_warm", None)
        # from zero (q = 1/2), as iteratively reweighted least squares starts a logistic
        # regression: from the identity map (1, 1, 0) the confident rows of an overconfident
        # model made the first steps backtrack (the demo: 51 passes instead of 26)
        theta = warm.coef_.copy() if warm is not None else np.zeros((n_cls, 3))
        if warm is None:
            # a few passes over an evenly spaced subsample start the full fit near its optimum
            for sub in data.warm_starts(_WARM_START_ROWS):
                if cached:  # one copy of the strided rows, not one a pass
                    sub = FitData(np.ascontiguousarray(sub.x), sub.y, sub.w, k,
                                  sub.total_weight, sub.from_probs, floor=sub.floor)
                # only a start: solved to a tenth of the sampling noise of its gradient
                # (~1/√n of the mean loss), not to tol; the full fit's answer is unchanged
                loose = max(tol, 0.1 / math.sqrt(sub.total_weight))
                theta = class_newton(objective(sub), theta, free, max_iter, loose)[0]
        evaluate = objective(data)
        theta, n_iter, grad_max = class_newton(evaluate, theta, free, max_iter, tol)
        negative_a = theta[:, 0] < 0
        negative_b = (theta[:, 1] < 0) & ~negative_a
        if negative_a.any() or negative_b.any():
            free[negative_a, 0] = 0.0
            free[negative_b, 1] = 0.0
            theta, more, grad_max = class_newton(evaluate, theta * free, free, max_iter, tol)
            n_iter += more
        self.coef_ = theta
        self._record_convergence(n_iter, grad_max <= tol, f"largest gradient entry "
                                 f"{grad_max:.3g} > tol = {tol:g}")

    def _class_probs(self, p: np.ndarray, lp: np.ndarray,
                     l1mp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp, l1mp = np.maximum(lp, LOG_EPS), np.maximum(l1mp, LOG_EPS)
        a, b, c = self.coef_[:, 0], self.coef_[:, 1], self.coef_[:, 2]
        s = a * lp - b * l1mp + c
        return -np.logaddexp(0.0, -s), -np.logaddexp(0.0, s)


# --------------------------------------------------------------------------------------------
# isotonic regression
# --------------------------------------------------------------------------------------------


def _class_probabilities(data: FitData) -> np.ndarray:
    """``p`` of the calibrated classes for every row, ``(N, C)`` float64 (in memory)."""
    x = np.asarray(data.x)
    chunk = max(16, _CHUNK_ELEMENTS // data.k)
    parts = [np.exp(class_logs(x[s:s + chunk], data.from_probs, data.floor)[0])
             for s in range(0, x.shape[0], chunk)]
    return np.concatenate(parts, axis=0)


def isotonic_fit(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in ``w``-weighted least squares
    (pool-adjacent-violators; ``w > 0``), float64.

    Every pooling merges adjacent blocks whose means decrease, so the order of the poolings
    does not change the (unique) answer.  While they pay, whole passes run in NumPy: every
    maximal non-increasing run of blocks is pooled at once (a valid sequence of pairwise
    poolings: the pooled mean of a decreasing run stays at or above the next block's).  A pass that pools
    fewer than 1 % of the blocks hands the rest to the classic one-pass stack, which is
    linear in the worst case (``[0, 1, …, n − 2, −10⁹]`` pools one block a pass).  On the
    demo's folds this avoids importing ``scipy.optimize`` (0.3-0.4 CPU s) for its
    ``isotonic_regression``, whose answer it equals (``tests/test_calibrators.py``).
    """
    sums = np.asarray(w * y, dtype=np.float64)
    weights = np.asarray(w, dtype=np.float64)
    starts = np.arange(y.size)
    while sums.size > 1:
        down = sums[1:] * weights[:-1] <= sums[:-1] * weights[1:]  # mean i+1 <= mean i
        pooled = int(np.count_nonzero(down))
        if pooled == 0:
            break
        if pooled * 100 < sums.size:
            sums, weights, starts = _pool_by_stack(sums, weights, starts)
            break
        # A block in a non-increasing run joins its run.  Equal neighbours are pooled too: they
        # always share a level of the fit (a level's last value is at most its mean and the
        # next level's first at least its own, so equal values cannot straddle two levels),
        # and pooling them leaves 0/1 labels a few blocks, not one per row.
        first = np.flatnonzero(np.r_[True, ~down])
        sums, weights = np.add.reduceat(sums, first), np.add.reduceat(weights, first)
        starts = starts[first]
    return np.repeat(sums / weights, np.diff(np.r_[starts, y.size]))


def _pool_by_stack(sums: np.ndarray, weights: np.ndarray,
                   starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators in one pass with a stack of blocks (linear time)."""
    s_out: list[float] = []
    w_out: list[float] = []
    i_out: list[int] = []
    for s, w, i in zip(sums.tolist(), weights.tolist(), starts.tolist(), strict=True):
        while s_out and s * w_out[-1] < s_out[-1] * w:
            s += s_out.pop()
            w += w_out.pop()
            i = i_out.pop()
        s_out.append(s)
        w_out.append(w)
        i_out.append(i)
    return np.array(s_out), np.array(w_out), np.array(i_out, dtype=np.intp)


class IsotonicCalibrator(_OneVsRest):
    r"""Isotonic regression (Zadrozny & Elkan 2002), one-vs-rest, renormalised.

    For each calibrated class, the non-decreasing step function of ``p_k`` closest to
    ``[y = k]`` in weighted least squares (pool-adjacent-violators, :func:`isotonic_fit`;
    equal ``p_k`` pooled first, as scikit-learn does), evaluated by
    linear interpolation between its steps' ends and held constant beyond the fitted range
    (scikit-learn's ``out_of_bounds="clip"``).  Values are kept in ``[floor, 1 − floor]``,
    ``floor = 1/(2(N + 1))``, so a class never gets probability exactly 0.

    Its map runs in NumPy on the host: the result comes back in the input's array type, but
    it is not differentiable (torch gradients do not flow through it) and cannot be traced
    (``jax.jit`` gets a :class:`~logitkit.LogitkitTypeError` saying so).

    Args:
        from_probs: the inputs are probabilities (their logs are used).

    Attributes:
        knots_x_, knots_y_: the interpolation knots of all calibrated classes, concatenated.
        knots_start_: ``(C + 1,)`` offsets: class ``c``'s knots are
            ``[knots_start_[c], knots_start_[c + 1])``.
        floor_: the smallest probability given.
        n_classes_: ``K``.

    Note:
        On Dask arrays the rows are computed into memory: isotonic regression needs all of
        them sorted.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import IsotonicCalibrator
        >>> rng = np.random.default_rng(0)
        >>> s = rng.normal(size=2000) * 3
        >>> y = (rng.random(2000) < 1 / (1 + np.exp(-s / 3))).astype(int)
        >>> iso = IsotonicCalibrator().fit(s, y)
        >>> q = iso.predict_proba(np.array([-6.0, 0.0, 6.0]))[:, 1]
        >>> bool(q[0] < q[1] < q[2]), bool(q.min() > 0)
        (True, True)
    """

    method = "isotonic"
    _allow_neg_inf = True
    _fitted_fields = ("knots_x_", "knots_y_", "knots_start_", "floor_")

    def _fitted_checks(self) -> dict[str, FieldCheck]:
        return {"knots_x_": (("n",), "finite"), "knots_y_": (("n",), "probability"),
                "knots_start_": (("C+1",), "non-negative"), "floor_": ((), "positive")}

    def _check_fitted(self, fitted: dict[str, Any], where: str) -> None:
        """Class ``c``'s knots are ``knots_start_[c]:knots_start_[c + 1]``: whole offsets from
        0 to the knot count, each class with at least one knot (``np.interp`` needs one)."""
        starts = np.asarray(fitted["knots_start_"], dtype=np.float64)
        n = len(fitted["knots_x_"])
        if not (np.all(starts == np.round(starts)) and starts[0] == 0 and starts[-1] == n
                and np.all(np.diff(starts) >= 1)):
            raise LogitkitValueError(expected(
                f"{where}['fitted']['knots_start_']",
                f"increasing whole offsets from 0 to the knot count {n}",
                fitted["knots_start_"]))

    def __init__(self, *, from_probs: bool = False) -> None:
        self.from_probs = from_probs

    def _fit(self, data: FitData) -> None:
        p = _class_probabilities(data)
        y = np.asarray(data.y)
        t = _targets(y, data.k)
        w = np.ones(data.n) if data.w is None else np.asarray(data.w, dtype=np.float64)
        columns = np.ascontiguousarray(p.T)  # each class's p_k contiguous, to sort

        def knots(c: int) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(columns[c], kind="stable")
            pc, tc, wc = columns[c][order], t[order, c], w[order]
            keep = wc > 0
            pc, tc, wc = pc[keep], tc[keep], wc[keep]
            # equal p_k pooled (np.unique's values and first indices, pc being sorted)
            first = np.flatnonzero(np.r_[True, pc[1:] != pc[:-1]])
            ux = pc[first]
            wsum = np.add.reduceat(wc, first)
            ymean = np.add.reduceat(wc * tc, first) / wsum
            fitted = isotonic_fit(ymean, wsum)
            # Keep the ends of each constant run: interpolation between them is the same map.
            change = np.ones(ux.size, dtype=bool)
            if ux.size > 2:
                same_prev = np.r_[False, fitted[1:] == fitted[:-1]]
                same_next = np.r_[fitted[:-1] == fitted[1:], False]
                change = ~(same_prev & same_next)
            return ux[change], fitted[change]

        # The classes' sorts release the GIL: on THREADS threads (a pool for one fit, nothing
        # to survive a fork) once there is enough to share.  8e4 x 100 on two cores: 1.58 s
        # one class at a time from strided columns with np.unique's second sort, 0.81 s now
        classes = range(columns.shape[0])
        workers = min(THREADS, len(classes)) if p.size >= ISOTONIC_THREADED else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(knots, classes))
        else:
            parts = [knots(c) for c in classes]
        self.knots_x_ = np.concatenate([x for x, _ in parts])
        self.knots_y_ = np.concatenate([v for _, v in parts])
        self.knots_start_ = np.r_[0, np.cumsum([x.size for x, _ in parts])].astype(np.float64)
        self.floor_ = 0.5 / (data.total_weight + 1.0)

    def _class_probs(self, p: np.ndarray, lp: np.ndarray,
                     l1mp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.empty_like(p)
        starts = self.knots_start_.astype(np.intp)
        for c in range(p.shape[1]):
            sl = slice(starts[c], starts[c + 1])
            q[:, c] = np.interp(p[:, c], self.knots_x_[sl], self.knots_y_[sl])
        return _clipped_logs(q, self.floor_)


# --------------------------------------------------------------------------------------------
# histogram binning
# --------------------------------------------------------------------------------------------


def histogram_sums(x: Any, y: Any, w: Any, *, edges: np.ndarray, from_probs: bool,
                   floor: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per calibrated class and bin: ``(Σ w, Σ w·[y = c])``, each ``(C, B)``; ``edges`` is
    ``(C, B + 1)``, bins right-closed (the first also holds its left edge)."""
    x = np.asarray(x)
    n_cls, n_bins = edges.shape[0], edges.shape[1] - 1
    count = np.zeros((n_cls, n_bins))
    hits = np.zeros((n_cls, n_bins))
    chunk = max(16, _CHUNK_ELEMENTS // max(k, 2))
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        p = np.exp(class_logs(x[start:stop], from_probs, floor)[0])
        t = _targets(np.asarray(y[start:stop]), k)
        wc = None if w is None else np.asarray(w[start:stop], dtype=np.float64)
        for c in range(n_cls):
            b = bin_of(p[:, c], edges[c])
            count[c] += np.bincount(b, weights=wc, minlength=n_bins)
            hits[c] += np.bincount(b, weights=t[:, c] if wc is None else t[:, c] * wc,
                                   minlength=n_bins)
    return count, hits


def bin_of(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Right-closed bins ``(e_b, e_{b+1}]``; values at or below the first edge go to bin 0."""
    return np.clip(np.searchsorted(edges[1:-1], p, side="left"), 0, edges.size - 2)


class HistogramCalibrator(_OneVsRest):
    r"""Histogram binning (Zadrozny & Elkan 2001), one-vs-rest, renormalised.

    Each calibrated class's ``p_k`` is binned (``n_bins`` equal-width bins on ``[0, 1]``, or
    equal-mass bins from the fit's quantiles) and mapped to its bin's (weighted) share of
    ``[y = k]``; an empty bin gets the class's overall share.  Values are kept in
    ``[floor, 1 − floor]``, ``floor = 1/(2(N + 1))``, so a class never gets probability 0.

    Its map runs in NumPy on the host: the result comes back in the input's array type, but
    it is not differentiable (torch gradients do not flow through it) and cannot be traced
    (``jax.jit`` gets a :class:`~logitkit.LogitkitTypeError` saying so).

    Args:
        n_bins: bins per class.
        binning: ``"uniform"`` (equal width, the default of netcal and probmetrics) or
            ``"quantile"`` (equal mass; on Dask arrays the rows are computed into memory
            for the quantiles).
        from_probs: the inputs are probabilities (their logs are used).

    Attributes:
        edges_: ``(C, n_bins + 1)`` bin edges per calibrated class.
        values_: ``(C, n_bins)`` calibrated probability per bin.
        floor_: the smallest probability given.
        n_classes_: ``K``.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import HistogramCalibrator
        >>> rng = np.random.default_rng(0)
        >>> s = rng.normal(size=2000) * 3
        >>> y = (rng.random(2000) < 1 / (1 + np.exp(-s / 3))).astype(int)
        >>> hb = HistogramCalibrator(n_bins=5).fit(s, y)
        >>> hb.values_.round(2)
        array([[0.26, 0.42, 0.5 , 0.62, 0.76]])
    """

    method = "histogram"
    _allow_neg_inf = True
    _fitted_fields = ("edges_", "values_", "floor_")

    def _fitted_checks(self) -> dict[str, FieldCheck]:
        return {"edges_": (("C", "B+1"), "finite"), "values_": (("C", "B"), "probability"),
                "floor_": ((), "positive")}

    def __init__(self, *, n_bins: int = 10, binning: str = "uniform",
                 from_probs: bool = False) -> None:
        self.n_bins = n_bins
        self.binning = binning
        self.from_probs = from_probs

    def _fit(self, data: FitData) -> None:
        n_bins = check_int(self.n_bins, "n_bins")
        check_choice(self.binning, "binning", ("uniform", "quantile"))
        n_cls = 1 if data.k == 2 else data.k
        if self.binning == "uniform":
            edges = np.tile(np.linspace(0.0, 1.0, n_bins + 1), (n_cls, 1))
        else:
            p = _class_probabilities(data)
            w = None if data.w is None else np.asarray(data.w, dtype=np.float64)
            edges = np.stack([_quantile_edges(p[:, c], n_bins, w) for c in range(n_cls)])
        count, hits = row_sums(histogram_sums, data.x, data.y, data.w, edges=edges,
                               from_probs=data.from_probs, floor=data.floor, k=data.k)
        prior = hits.sum(axis=1, keepdims=True) / count.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(count > 0, hits / count, prior)
        self.edges_ = edges
        self.values_ = values
        self.floor_ = 0.5 / (data.total_weight + 1.0)

    def _class_probs(self, p: np.ndarray, lp: np.ndarray,
                     l1mp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.empty_like(p)
        for c in range(p.shape[1]):
            q[:, c] = self.values_[c][bin_of(p[:, c], self.edges_[c])]
        return _clipped_logs(q, self.floor_)


def _quantile_edges(p: np.ndarray, n_bins: int, w: np.ndarray | None) -> np.ndarray:
    """Equal-mass edges ``0, …, 1`` of ``p``: the metrics' inverted-CDF rule
    (:func:`._binning.edges_of`) without weights; with sample weights, edge ``b`` is the first
    sorted value whose cumulative weight reaches ``b/B`` of the total (the same rule with each
    row counted by its weight)."""
    if w is None:
        return edges_of(p, n_bins, "quantile")
    order = np.argsort(p, kind="stable")
    cw = np.cumsum(w[order])
    qs = np.arange(1, n_bins) / n_bins
    idx = np.searchsorted(cw, qs * cw[-1], side="left")
    inner = p[order][np.clip(idx, 0, p.size - 1)].astype(np.float64)
    return np.concatenate([[0.0], inner, [1.0]])

