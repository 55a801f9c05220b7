"""Choosing a calibrator by cross-validation: every candidate scored on rows it did not see."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

from .._core import log_softmax, softmax
from .._namespace import (
    LogitkitError,
    LogitkitTypeError,
    LogitkitValueError,
    check_choice,
    check_int,
    expected,
)
from ._base import Calibrator, FitData, IdentityCalibrator, fit_data
from ._binary import BetaCalibrator, HistogramCalibrator, IsotonicCalibrator
from ._fitting import small_problem_threads
from ._scaling import DirichletScaler, MatrixScaler, StructuredScaler, VectorScaler
from ._temperature import TemperatureScaler

__all__ = ["CANDIDATES", "Selection", "select"]

#: Every candidate by name, simplest first (the order in which ties are broken): its class and
#: constructor arguments.
CANDIDATES: dict[str, tuple[type[Calibrator], dict[str, Any]]] = {
    "none": (IdentityCalibrator, {}),
    "temperature": (TemperatureScaler, {}),
    "vector": (VectorScaler, {}),
    "structured-vector": (StructuredScaler, {"form": "vector"}),
    "beta": (BetaCalibrator, {}),
    "structured": (StructuredScaler, {}),
    "dirichlet": (DirichletScaler, {}),
    "matrix": (MatrixScaler, {}),
    "histogram": (HistogramCalibrator, {}),
    "isotonic": (IsotonicCalibrator, {}),
}
_ALWAYS = ("none", "temperature")
_SCORINGS = ("nll", "brier", "ece")
#: A candidate within this relative margin of the best score counts as tied with it.
NEAR_TIE = 1e-3
#: Held-out accuracy change (vs "none") beyond which a candidate is flagged.
ACCURACY_FLAG = 0.01


def stratified_folds(y: np.ndarray, cv: int, rng: np.random.Generator) -> np.ndarray:
    """The fold (``0 … cv − 1``) of each row: each class's rows shuffled and dealt round-robin,
    continuing from where the previous class stopped, so fold sizes differ by at most one and
    every fold holds each class in proportion."""
    folds = np.empty(y.shape[0], dtype=np.int32)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        folds[idx] = (np.arange(idx.size) + offset) % cv
        offset = (offset + idx.size) % cv
    return folds


def _metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from ._metrics import accuracy, brier_score, ece, nll

    p = softmax(logits, axis=1)
    return {
        "nll": float(nll(logits, y, from_logits=True)),
        "ece": float(ece(p, y)),
        "brier": float(brier_score(p, y)),
        "accuracy": float(accuracy(p, y)),
    }


class Selection:
    """What :func:`select` found.

    Attributes:
        table_: one dict per candidate, simplest first: ``method``; the out-of-fold ``nll``,
            ``ece``, ``brier``, ``accuracy`` (every row scored by a calibrator fitted without
            its fold); ``accuracy_change`` against ``"none"``; ``fold_spread`` (the standard
            deviation of the scoring metric across folds); ``fit_time`` (seconds, mean over
            folds); ``converged`` (every fold's fit); ``at_bound`` (some fold's fit stopped at a
            bound); ``flagged`` (held-out accuracy changed by
            more than one point); ``warnings`` (messages of the folds' fits); ``error`` (why
            the candidate failed, else ``None``); ``chosen``.
        best_: the chosen method's name.
        calibrator_: the chosen method refitted on all rows.
        folds_: ``(N,)`` fold of each row.
        oof_logits_: ``(N, K)`` out-of-fold calibrated logits of the chosen method (their
            softmax gives its held-out probabilities, the figures of ``table_``).
        scoring, cv: as given to :func:`select`.
    """

    def __init__(self, table: list[dict[str, Any]], best: str, calibrator: Calibrator,
                 folds: np.ndarray, fold_calibrators: dict[str, list[Calibrator]],
                 logits: np.ndarray, scoring: str, cv: int) -> None:
        self.table_ = table
        self.best_ = best
        self.calibrator_ = calibrator
        self.folds_ = folds
        self.fold_calibrators_ = fold_calibrators
        self.scoring = scoring
        self.cv = cv
        self._logits = logits
        self.oof_logits_ = self.oof_logits(best)

    def oof_logits(self, method: str) -> np.ndarray:
        """Out-of-fold calibrated logits of any candidate that fitted (no refit: each fold's
        calibrator, kept from the selection, applied to its held-out rows).

        Args:
            method: a name from ``table_``.

        Returns:
            ``(N, K)`` float64 logits.
        """
        if method not in self.fold_calibrators_:
            raise LogitkitValueError(expected(
                "method", f"one of {', '.join(self.fold_calibrators_)}", method))
        z = self._logits
        k = self.calibrator_.n_classes_
        out = np.empty((z.shape[0], k))
        for f, cal in enumerate(self.fold_calibrators_[method]):
            rows = self.folds_ == f
            out[rows] = np.asarray(cal.transform(z[rows]), dtype=np.float64)
        return out

    def row(self, method: str | None = None) -> dict[str, Any]:
        """The table's row of ``method`` (default: the chosen one)."""
        name = self.best_ if method is None else method
        for r in self.table_:
            if r["method"] == name:
                return r
        raise LogitkitValueError(expected("method", "a method of the table", name))

    def transform(self, logits: Any) -> Any:
        """``calibrator_.transform``."""
        return self.calibrator_.transform(logits)

    def predict_proba(self, logits: Any) -> Any:
        """``calibrator_.predict_proba``."""
        return self.calibrator_.predict_proba(logits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the table, the choice, and the refitted calibrator's ``to_dict``."""
        return {"best": self.best_, "scoring": self.scoring, "cv": self.cv,
                "table": self.table_, "calibrator": self.calibrator_.to_dict()}

    def __repr__(self) -> str:
        lines = [f"Selection(best={self.best_!r}, scoring={self.scoring!r}, cv={self.cv})",
                 f"{'method':18s} {'nll':>8s} {'ece':>7s} {'brier':>7s} {'acc':>6s}"
                 f" {'spread':>7s} {'fit s':>7s}"]
        for r in self.table_:
            mark = "*" if r["chosen"] else ("!" if r["flagged"] else " ")
            lines.append(f"{mark}{r['method']:17s} {r['nll']:8.4f} {r['ece']:7.4f} "
                         f"{r['brier']:7.4f} {r['accuracy']:6.3f} {r['fold_spread']:7.4f} "
                         f"{r['fit_time']:7.3f}")
        return "\n".join(lines)


def make_candidate(name: str, from_probs: bool = False) -> Calibrator:
    """A new, unfitted calibrator of the candidate ``name`` (see :data:`CANDIDATES`)."""
    check_choice(name, "method", list(CANDIDATES))
    cls, params = CANDIDATES[name]
    factory: Any = cls
    cal: Calibrator = factory(**params, from_probs=from_probs)
    return cal


#: The calibration methods :func:`make_calibrator` and :func:`select` know, simplest first (the
#: order in which :func:`select` breaks ties); ``"none"`` is the identity.
METHODS: tuple[str, ...] = tuple(CANDIDATES)


def make_calibrator(method: str, *, from_probs: bool = False) -> Calibrator:
    """A new, unfitted calibrator from its method name, as :func:`select` makes its candidates.

    Args:
        method: one of :data:`METHODS`.
        from_probs: the calibrator takes probabilities instead of logits.

    Returns:
        The calibrator, configured as :func:`select` configures that candidate (for example
        ``"structured-vector"`` is ``StructuredScaler(form="vector")``).

    Raises:
        LogitkitValueError: ``method`` is not one of :data:`METHODS`.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import make_calibrator
        >>> make_calibrator("structured-vector")
        StructuredScaler(form='vector')
        >>> z = np.array([[4.0, 0.0], [0.0, 4.0], [3.0, 1.0], [1.0, 3.0]])
        >>> make_calibrator("temperature").fit(z, [0, 1, 1, 0]).n_classes_
        2
    """
    return make_candidate(method, from_probs)


def _candidates(methods: Any) -> list[str]:
    if isinstance(methods, str):
        names = list(CANDIDATES) if methods == "auto" else [methods]
    else:
        try:
            names = list(methods)
        except TypeError:
            raise LogitkitTypeError(expected("methods", "'auto', a method name or a list of "
                                             "them", methods)) from None
    for name in names:
        check_choice(name, "methods", [*CANDIDATES, "auto"])
    chosen = set(names) | set(_ALWAYS)
    return [name for name in CANDIDATES if name in chosen]


def select(logits: Any, y: Any, /, *, methods: Any = "auto", cv: int = 5,
           scoring: str = "nll", random_state: Any = None, from_probs: bool = False,
           progress: Any = None) -> Selection:
    r"""Choose a calibrator by cross-validation, with "leave it alone" always a candidate.

    The rows are split into ``cv`` stratified folds; every candidate is fitted on ``cv − 1``
    folds and scored on the held-out one, so each row is scored by a calibrator that never saw
    it.  The candidate with the best pooled out-of-fold ``scoring`` wins, except that:

    - ties and near-ties (within 0.1% of the best score) go to the simpler method, in the
      order of :data:`CANDIDATES` (``none``, ``temperature``, the parametric maps by number of
      parameters, then the non-parametric ``histogram`` and ``isotonic``);
    - a candidate whose fit failed, did not converge or stopped at a bound in some fold (a
      temperature at its bound means separable folds: out of fold it can look perfect and
      still be infinitely confident on new rows), or lowered held-out accuracy by more than
      one point (it is flagged in the table) is not chosen.

    ``"none"`` (the logits unchanged) and ``"temperature"`` are always candidates, so the
    choice is never worse than either out of fold; on small or near-separable data "none" is
    often the honest answer.  Every candidate is fitted on all rows first: that fit starts its
    folds' fits (a few Newton steps instead of a dozen) and is the calibrator returned if it
    wins.

    Args:
        logits: ``(N, K)`` logits (or ``(N,)`` binary); probabilities with ``from_probs``.
            Arrays of any supported library are read into host memory.
        y: ``(N,)`` integer labels in ``[0, K)``.
        methods: ``"auto"`` (every candidate), one name, or a list of names from
            :data:`CANDIDATES`.
        cv: the number of folds, at least 2.
        scoring: ``"nll"``, ``"brier"`` or ``"ece"`` (lower is better).
        random_state: seed (or ``numpy.random.Generator``) of the fold assignment.
        from_probs: the inputs are probabilities; every candidate uses their logs.
        progress: optional callable ``progress(done, total, method)``, called after each fit
            (``total`` = candidates × (``cv`` + 1)).

    Returns:
        A :class:`Selection` with ``table_``, ``best_``, ``calibrator_`` and the chosen
        method's out-of-fold logits ``oof_logits_``.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import select
        >>> rng = np.random.default_rng(0)
        >>> true = rng.normal(size=(1500, 4)) * 2
        >>> p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
        >>> y = (p.cumsum(1) > rng.random((1500, 1))).argmax(1)
        >>> sel = select(3 * true, y, random_state=0)
        >>> sel.best_ in ("temperature", "vector", "structured-vector", "structured")
        True
        >>> sel.row("none")["nll"] > sel.row()["nll"]
        True
    """
    names = _candidates(methods)
    cv = check_int(cv, "cv", low=2)
    check_choice(scoring, "scoring", _SCORINGS)
    if not isinstance(from_probs, bool):
        raise LogitkitTypeError(expected("from_probs", "a bool", from_probs))
    data = fit_data(logits, y, None, from_probs=from_probs, allow_neg_inf=True)
    z = np.asarray(data.x)
    labels = np.asarray(data.y).astype(np.intp, copy=False)
    data = FitData(z, labels, None, data.k, float(z.shape[0]), from_probs)
    n = z.shape[0]
    if cv > n:
        raise LogitkitValueError(expected("cv", f"at most the number of rows ({n})", cv))
    rng = random_state if isinstance(random_state, np.random.Generator) else \
        np.random.default_rng(random_state)
    folds = stratified_folds(labels, cv, rng)
    with small_problem_threads(n * data.k):
        rows, full, fold_cals = _select(data, folds, names, cv, scoring, progress)
    best = _choose(rows, scoring)
    return Selection(rows, best, full[best], folds, fold_cals, z, scoring, cv)


def _select(data: FitData, folds: np.ndarray, names: list[str], cv: int, scoring: str,
            progress: Any) -> tuple[list[dict[str, Any]], dict[str, Calibrator],
                                    dict[str, list[Calibrator]]]:
    z, labels, k, n, from_probs = data.x, data.y, data.k, data.n, data.from_probs
    rows: list[dict[str, Any]] = []
    full: dict[str, Calibrator] = {}
    fold_cals: dict[str, list[Calibrator]] = {}
    total, done = len(names) * (cv + 1), 0
    for name in names:
        row: dict[str, Any] = {"method": name, "error": None, "warnings": [],
                               "converged": True, "at_bound": False}
        oof = np.empty((n, k))
        cals: list[Calibrator] = []
        seconds = 0.0
        try:
            if name != "none" and not make_candidate(name)._allow_neg_inf \
                    and not np.isfinite(z).all():
                raise LogitkitValueError(expected(
                    "logits", f"finite for {name} scaling", "infinite values"))
            # all rows first: the calibrator select returns if this candidate wins, and the
            # start of every fold's fit (a few Newton steps from there instead of a dozen)
            for f in range(-1, cv):
                train = folds != f
                cal = make_candidate(name, from_probs)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t0 = time.perf_counter()
                    if f < 0:
                        cal._fit_data(data)
                    else:
                        cal._fit_data(data.take(train), warm=full[name])
                        seconds += time.perf_counter() - t0
                row["warnings"] += sorted({str(w.message) for w in caught} -
                                          set(row["warnings"]))
                done += 1
                if progress is not None:
                    progress(done, total, name)
                if f < 0:
                    full[name] = cal
                    continue
                row["converged"] &= bool(getattr(cal, "converged_", True))
                row["at_bound"] |= bool(getattr(cal, "at_bound_", False))
                oof[~train] = np.asarray(cal.transform(z[~train]), dtype=np.float64)
                cals.append(cal)
        except LogitkitError as exc:
            done = len(rows) * (cv + 1) + cv + 1
            row.update({"error": str(exc), "nll": math.inf, "ece": math.nan,
                        "brier": math.nan, "accuracy": math.nan, "fold_spread": math.nan,
                        "fit_time": seconds / max(1, len(cals) + 1)})
            full.pop(name, None)
            rows.append(row)
            continue
        fold_cals[name] = cals
        row.update(_metrics(oof, labels))
        if scoring == "nll":
            logp = np.asarray(log_softmax(oof, axis=1))
            picked = -logp[np.arange(n), labels]
            per_fold = [float(picked[folds == f].mean()) for f in range(cv)]
        else:
            per_fold = [_metrics(oof[folds == f], labels[folds == f])[scoring]
                        for f in range(cv)]
        row["fold_spread"] = float(np.std(per_fold))
        row["fit_time"] = seconds / cv
        rows.append(row)
    return rows, full, fold_cals


def _choose(rows: list[dict[str, Any]], scoring: str) -> str:
    base_acc = next(r["accuracy"] for r in rows if r["method"] == "none")
    for r in rows:
        change = r["accuracy"] - base_acc if r["error"] is None else math.nan
        r["accuracy_change"] = change
        r["flagged"] = bool(abs(change) > ACCURACY_FLAG) if r["error"] is None else True
        r["chosen"] = False
    eligible = [r for r in rows if r["error"] is None and r["converged"] and not r["at_bound"]
                and not r["accuracy_change"] < -ACCURACY_FLAG and math.isfinite(r[scoring])]
    if not eligible:  # "none" is always eligible unless its own NLL is infinite
        eligible = [r for r in rows if r["method"] == "none"]
    best_score = min(r[scoring] for r in eligible)
    margin = NEAR_TIE * abs(best_score) + 1e-12 if math.isfinite(best_score) else 0.0
    winner = next(r for r in eligible if r[scoring] <= best_score + margin)
    winner["chosen"] = True
    return str(winner["method"])

