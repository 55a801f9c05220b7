"""Choosing a calibrator by cross-validation: every candidate scored on rows it did not see."""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from .._core import log_softmax, logsumexp
from .._namespace import (
    Described,
    LogitkitError,
    LogitkitTypeError,
    LogitkitValueError,
    check_choice,
    check_int,
    expected,
)
from ._base import (
    CalibrationWarning,
    Calibrator,
    FieldCheck,
    FitData,
    IdentityCalibrator,
    expand_rows,
    fit_data,
)
from ._binary import BetaCalibrator, HistogramCalibrator, IsotonicCalibrator
from ._fitting import small_problem_threads
from ._scaling import (
    BLOCK_MAX_CLASSES,
    DirichletScaler,
    MatrixScaler,
    StructuredScaler,
    VectorScaler,
)
from ._stack import MIN_WEIGHT, stack_weights
from ._stats import CalibrationStats
from ._temperature import TemperatureScaler

__all__ = ["CANDIDATES", "Selection", "StackedCalibrator", "candidates_of", "select"]

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
    # "stacked": (StackedCalibrator, {}), added below its class: a mixture of the others
}
_ALWAYS = ("none", "temperature")
#: The maps with a parameter per pair of classes, which ``"auto"`` leaves out above
#: :data:`AUTO_MAX_CLASSES` classes.
FULL_MAPS = ("structured", "dirichlet", "matrix")
#: Above this many classes ``"auto"`` fits no full map (they are fitted when named): their
#: passes cost K² a row and their preconditioner is diagonal there.  On 1e4 × 1000 logits one
#: fit took 32 s (structured), 19 s (Dirichlet) and 66 s (matrix) against 6 s for vector
#: scaling, and ``select`` fits each six times.
AUTO_MAX_CLASSES = BLOCK_MAX_CLASSES
#: The candidate that mixes the others (:class:`StackedCalibrator`).
STACKED = "stacked"
#: Pseudo-rows per component of the mixture weights' Dirichlet prior
#: (:func:`._stack.stack_weights`).
STACK_PRIOR = 1.0
#: The fewest misclassified calibration rows on which :func:`select` may choose the mixture.
MIX_MIN_ERRORS = 3
_SCORINGS = ("nll", "brier", "ece")
#: A candidate within this relative margin of the best score counts as tied with it.
NEAR_TIE = 1e-3
#: Held-out accuracy change (vs "none") beyond which a candidate is flagged.
ACCURACY_FLAG = 0.01
#: The evidence temperature scaling (one parameter) must show to replace "none": its
#: out-of-fold NLL gain per row over its standard error (``gain_z``) at least this.
TEMPERATURE_EVIDENCE = 1.0
#: The evidence any richer calibrator must show over "none" and over the base (temperature
#: scaling when it passed :data:`TEMPERATURE_EVIDENCE`): ``gain_z`` (and
#: ``gain_z_temperature``) at least this (about one chance in 15 of a gain that large by luck
#: alone).
EVIDENCE = 1.5


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


def misclassified(logits: np.ndarray, y: np.ndarray, from_probs: bool = False,
                  floor: float = -math.inf, *, up_to: int | None = None) -> int:
    """The number of rows whose label does not have the strictly largest logit, counting no
    further than ``up_to`` (the search stops there).

    ``logits`` are input rows (:func:`._base.expand_rows` makes them float64 logits, zero
    probabilities ``floor``), read a block of :data:`CHUNK_ELEMENTS` at a time: no float64
    copy of the whole input is made.
    """
    step = _chunk_rows(logits)
    count = 0
    for start in range(0, logits.shape[0], step):
        block = expand_rows(logits[start:start + step], from_probs, floor)
        labels = y[start:start + step]
        rows = np.arange(labels.shape[0])
        own = block[rows, labels].copy()
        block[rows, labels] = -np.inf
        count += int(np.count_nonzero(~(own > block.max(axis=1))))
        if up_to is not None and count >= up_to:
            return up_to
    return count


def separable(logits: np.ndarray, y: np.ndarray, from_probs: bool = False,
              floor: float = -math.inf) -> bool:
    """Whether every row's label has the strictly largest logit: then no row is misclassified,
    the NLL keeps falling as the logits are sharpened (temperature scaling runs to its bound),
    and rows held out of such data cannot show what over-confidence costs.  The first block
    with a misclassified row ends the search (:func:`misclassified`)."""
    return misclassified(logits, y, from_probs, floor, up_to=1) == 0


#: What :func:`select` says (as a :class:`CalibrationWarning`) when it leaves separable data
#: alone.
SEPARABLE = ("every calibration row's label has the largest logit (the rows are separable): "
             "out of fold every method that sharpens the logits looks better, yet none can learn "
             "from these rows how confident to be on rows it gets wrong, so the logits are left "
             "as they are (method none); calibrate on more data, or on data with errors")


def _generator(random_state: Any) -> np.random.Generator:
    """The fold assignment's generator: ``None``, an int ≥ 0 (not a bool) or a Generator."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    want = "None, an integer ≥ 0 or a numpy.random.Generator"
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(
            random_state, (int, np.integer))):
        raise LogitkitTypeError(expected("random_state", want, random_state))
    if random_state is not None and random_state < 0:
        raise LogitkitValueError(expected("random_state", want, random_state))
    return np.random.default_rng(random_state)


def separable_fitted(method: str) -> str:
    """What :meth:`Selection.refit` says (as a :class:`CalibrationWarning`) when it fits a
    method on separable rows that :func:`select` left alone (the method was asked for): the
    rows are separable, the method was fitted anyway, and what that risks; not
    :data:`SEPARABLE`, which says the logits were left as they are."""
    return ("every calibration row's label has the largest logit (the rows are separable): "
            f"{method} was fitted anyway, as asked, but these rows cannot show how confident "
            "to be on rows the model gets wrong (out of fold, sharpening the logits always "
            "looks better), so it may be over-confident on new data; calibrate on more data, "
            "or on data with errors")


#: Entries of the input per block of rows when held-out rows are scored (or searched):
#: a block's float64 calibrated logits take 8 MiB, whatever N.
CHUNK_ELEMENTS = 1 << 20


def _chunk_rows(z: np.ndarray) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, int(np.prod(z.shape[1:], dtype=np.int64))))


def out_of_fold_logits(z: np.ndarray, folds: np.ndarray | None, calibrators: Sequence[Calibrator]
              ) -> np.ndarray:
    """``(rows, K)`` float64 out-of-fold calibrated logits of a block of input rows ``z``:
    each row transformed by the calibrator of its fold (``folds``), in the input's own dtype
    (as :meth:`Calibrator.transform` returns it), then widened (one calibrator: every row,
    ``folds`` unused).  The one rule for a
    candidate's out-of-fold logits: :func:`select`'s scores, :meth:`Selection.oof_logits` and
    the command line's out-of-fold figures all come from it.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import out_of_fold_logits, select
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(600, 3)) * 3
        >>> y = (z + rng.gumbel(size=z.shape) * 3).argmax(1)
        >>> sel = select(z, y, methods="temperature", random_state=0)
        >>> oof = out_of_fold_logits(z, sel.folds_, sel.fold_calibrators_["temperature"])
        >>> bool(np.array_equal(oof, sel.oof_logits("temperature")))
        True
    """
    if len(calibrators) == 0:
        raise LogitkitValueError(expected("calibrators", "one fitted calibrator per fold",
                                          Described("none")))
    if folds is None or len(calibrators) == 1:
        return np.asarray(calibrators[0].transform(z), dtype=np.float64)
    folds = np.asarray(folds)
    n = int(np.shape(z)[0])
    if folds.shape != (n,) or folds.dtype.kind not in "iu" or (folds.size and (
            folds.min() < 0 or folds.max() >= len(calibrators))):
        # a row without its fold's calibrator would keep np.empty's bytes
        raise LogitkitValueError(expected(
            "folds", f"({n},) integers in [0, {len(calibrators)}), one calibrator each",
            Described(f"shape {folds.shape}, dtype {folds.dtype}" + (
                f", values {folds.min()}..{folds.max()}" if folds.size else ""))))
    out = np.empty((n, calibrators[0].n_classes_))
    for f, cal in enumerate(calibrators):
        rows = folds == f
        if rows.any():
            out[rows] = np.asarray(cal.transform(z[rows]), dtype=np.float64)
    return out


def _figures(stats: CalibrationStats) -> dict[str, float]:
    """The table's figures of a candidate's held-out rows."""
    out = stats.compute()
    return {key: float(out[key]) for key in ("nll", "ece", "brier", "accuracy")}


class Selection:
    """What :func:`select` found.

    Attributes:
        table_: one dict per candidate, simplest first: ``method``; the out-of-fold ``nll``,
            ``ece``, ``brier``, ``accuracy`` (every row scored by a calibrator fitted without
            its fold); ``accuracy_change`` against ``"none"``; ``fold_spread`` (the standard
            deviation of the scoring metric across folds); ``gain_z`` (the mean out-of-fold NLL
            gain per row over ``"none"``, in standard errors); ``gain_z_temperature`` (the
            same over temperature scaling); ``fit_time`` (seconds, mean over
            folds); ``converged`` (every fold's fit); ``at_bound`` (some fold's fit stopped at a
            bound); ``flagged`` (held-out accuracy changed by
            more than one point); ``warnings`` (messages of the folds' fits); ``error`` (why
            the candidate failed, else ``None``); ``chosen``.
        best_: the chosen method's name.
        calibrator_: the chosen method refitted on all rows.
        folds_: ``(N,)`` fold of each row.
        oof_logits_: ``(N, K)`` out-of-fold calibrated logits of the chosen method (their
            softmax gives its held-out probabilities, the figures of ``table_``), computed
            when first read.
        fold_calibrators_: each fitted candidate's ``cv`` fold calibrators (fold ``f``'s
            was fitted without the rows of fold ``f``).
        separable_: every row's label has the largest logit, so "none" was chosen.
        scoring, cv: as given to :func:`select`.
    """

    def __init__(self, table: list[dict[str, Any]], best: str, calibrator: Calibrator,
                 folds: np.ndarray, fold_calibrators: dict[str, list[Calibrator]],
                 data: FitData, scoring: str, cv: int, separable: bool = False,
                 stack_weights: dict[str, float] | None = None) -> None:
        self.table_ = table
        self.separable_ = separable
        self.best_ = best
        self.calibrator_ = calibrator
        self.folds_ = folds
        self.fold_calibrators_ = fold_calibrators
        self.scoring = scoring
        self.cv = cv
        self._data = data
        self._logits = data.x
        self._stack_weights = stack_weights

    def refit(self, method: str) -> Calibrator:
        """Any candidate that fitted, refitted on all rows as :func:`select` refits its
        choice (``calibrator_`` itself for the chosen one; ``"stacked"``: its components
        refitted, with the weights of every row's out-of-fold figures).

        Args:
            method: a name from ``table_``.

        Returns:
            The fitted calibrator.

        Warns:
            CalibrationWarning: the rows are separable (:attr:`separable_`, so :func:`select`
                chose "none") and ``method`` is another: it is fitted anyway.
        """
        if method not in self.fold_calibrators_:
            raise LogitkitValueError(expected(
                "method", f"one of {', '.join(self.fold_calibrators_)}", method))
        if method == self.best_:
            return self.calibrator_
        if self.separable_ and method != "none":
            warnings.warn(separable_fitted(method), CalibrationWarning, stacklevel=2)
        return _refit(method, self._data, self._stack_weights)

    @cached_property
    def oof_logits_(self) -> np.ndarray:
        """``(N, K)`` float64 out-of-fold calibrated logits of the chosen method, computed
        when first read (a float64 copy of the input that :func:`select` itself never needs:
        it scores the held-out rows a block at a time)."""
        return self.oof_logits(self.best_)

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
        return out_of_fold_logits(self._logits, self.folds_, self.fold_calibrators_[method])

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
                "separable": self.separable_, "table": self.table_,
                "calibrator": self.calibrator_.to_dict()}

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


def candidates_of(methods: Any, *, n_classes: int | None = None) -> list[str]:
    """The candidates :func:`select` fits for ``methods`` (``"auto"``, a name or a list of
    names), simplest first: always ``"none"`` and ``"temperature"``, and every candidate
    for ``"auto"`` or when ``"stacked"`` (a mixture of all the others) is asked for, but the
    full maps (:data:`FULL_MAPS`) that are not named when ``n_classes`` is above
    :data:`AUTO_MAX_CLASSES`.

    Examples:
        >>> from logitkit.calibration import candidates_of
        >>> candidates_of("vector")
        ['none', 'temperature', 'vector']
        >>> "matrix" in candidates_of("auto", n_classes=1000)
        False
    """
    if isinstance(methods, str):
        names = [methods]
    elif isinstance(methods, Iterator):  # read twice (checked, then fitted): used up at once
        raise LogitkitTypeError(expected(
            "methods", "'auto', a method name or a list of them (not an iterator, which "
            "would be used up by the first reading)", methods))
    else:
        try:
            names = list(methods)
        except TypeError:
            raise LogitkitTypeError(expected("methods", "'auto', a method name or a list of "
                                             "them", methods)) from None
    for name in names:
        check_choice(name, "methods", [*CANDIDATES, "auto"])
    chosen = set(names) | set(_ALWAYS)
    if "auto" in chosen or STACKED in chosen:
        chosen = set(CANDIDATES)
        if n_classes is not None and n_classes > AUTO_MAX_CLASSES:
            chosen -= set(FULL_MAPS) - set(names)
    return [name for name in CANDIDATES if name in chosen]


def select(logits: Any, y: Any, /, *, methods: Any = "auto", cv: int = 5,
           scoring: str = "nll", random_state: Any = None, from_probs: bool = False,
           progress: Any = None) -> Selection:
    r"""Choose a calibrator by cross-validation, with "leave it alone" always a candidate.

    The rows are split into ``cv`` stratified folds; every candidate is fitted on ``cv − 1``
    folds and scored on the held-out one, so each row is scored by a calibrator that never saw
    it.

    With ``scoring="nll"`` and at least :data:`MIX_MIN_ERRORS` (3) misclassified rows, the
    choice is the mixture ``"stacked"`` (:class:`StackedCalibrator`: the usable candidates
    weighted by out-of-fold likelihood) whenever its nested out-of-fold NLL (fold ``f``
    scored with weights fitted on the other folds only) is below ``"none"``'s.  On small
    calibration sets no single method wins reliably out of fold, and the mixture hedges
    between them; over 30 calibration/test splits of each of the benchmark's small real files
    it took the mean (worst) test NLL over the split's best single method from 1.09 (2.70)
    to 1.06 (1.15) on breast_cancer, 1.29 (1.87) to 1.06 (1.43) on the digits CNN and 1.11
    (1.22) to 1.04 (1.22) on the digits MLP (the wine file, 0-3 errors, 1.11 (1.64)
    unchanged; ``benchmarks/bench_calibrators.py rules --cv-repeats 1``).  The
    mixture is not held to the near-tie rule below (which would keep the single methods'
    pick unless the mixture beat it by 0.1% out of fold): its nested figure pays for fitting
    its weights, the pick's does not pay for being the luckiest of nine, and on the same
    splits that variant gave 1.04 (1.18), 1.14 (1.64) and 1.04 (1.22).  So where temperature
    scaling and the mixture tie out of fold, the mixture (which gives temperature scaling
    most of its weight there) is chosen.  Fewer
    errors than that, or another scoring, and the single methods compete: the candidate with
    the best pooled out-of-fold ``scoring`` wins, except that:

    - a candidate replaces the simpler ones only on evidence, in two steps.  Temperature
      scaling (one parameter) replaces ``"none"`` when its out-of-fold NLL gain per row over
      ``"none"`` is at least :data:`TEMPERATURE_EVIDENCE` (1.0) standard errors (``gain_z``
      in the table); that winner is the base, and a richer calibrator replaces it only when
      its gains over ``"none"`` and over the base are both at least :data:`EVIDENCE` (1.5)
      standard errors (``gain_z`` and ``gain_z_temperature``).  (Averaging each row's out-of-fold NLL over
      three cross-validation runs was measured too: it sharpens ``gain_z`` without removing
      the bias of a lucky map, and on one of 30 wine splits let Dirichlet calibration through
      at 16× the best test NLL.)
      On small or nearly separable data the out-of-fold ranking is mostly luck: over 30
      calibration/test splits of a naive Bayes model of scikit-learn's wine data (44
      calibration rows, 0-3 misclassified) the plain best out-of-fold NLL made the test NLL
      worse than no calibration in 18 (16× the split's best method at worst), while a single
      bar of 1.5 against ``"none"`` for every candidate left an overconfident gradient
      boosting model of 142 rows uncalibrated in 4 of 30 splits (2.7× the best test NLL);
      the two steps keep the first guard and leave 2 of those 30 uncalibrated
      (``benchmarks/bench_calibrators.py rules``, figures in the Note below);
    - ties and near-ties (within 0.1% of the best score) go to the simpler method, in the
      order of :data:`CANDIDATES` (``none``, ``temperature``, the parametric maps by number of
      parameters, then the non-parametric ``histogram`` and ``isotonic``);
    - a candidate whose fit failed, did not converge or stopped at a bound in some fold (a
      temperature at its bound means separable folds: out of fold it can look perfect and
      still be infinitely confident on new rows), or lowered held-out accuracy by more than
      one point (it is flagged in the table) is not chosen.

    ``"none"`` (the logits unchanged) and ``"temperature"`` are always candidates, so the
    choice is never worse than either out of fold; on small or near-separable data "none" is
    often the honest answer.  On separable data (every row's label has the largest logit, so
    no row shows what over-confidence costs) the choice is "none" whatever the table says,
    with a :class:`CalibrationWarning`: there every sharpening map looks better out of fold,
    and on a naive Bayes model of scikit-learn's wine data every parametric method of every
    implementation made the test NLL worse (temperature scaling: 0.21 to 18.9).  Every fold's fit starts cold (from a start that never saw the
    held-out rows), and the winner is refitted on all rows.

    Args:
        logits: ``(N, K)`` logits (or ``(N,)`` binary); probabilities with ``from_probs``.
            Arrays of any supported library are read into host memory.
        y: ``(N,)`` integer labels in ``[0, K)``.
        methods: ``"auto"`` (every candidate), one name, or a list of names from
            :data:`CANDIDATES` (:func:`candidates_of` says which are fitted; ``"stacked"``
            brings every single method in, to mix).  Above :data:`AUTO_MAX_CLASSES` (256)
            classes ``"auto"`` and ``"stacked"`` leave out the full maps (structured,
            Dirichlet and matrix scaling: K² parameters, 20-70 s a fit on 1e4 × 1000
            logits), which are fitted when named.
        cv: the number of folds, at least 2.
        scoring: ``"nll"``, ``"brier"`` or ``"ece"`` (lower is better).
        random_state: seed (or ``numpy.random.Generator``) of the fold assignment.
        from_probs: the inputs are probabilities; every candidate uses their logs.
        progress: optional callable ``progress(done, total, method)``, called after each fit
            (``total`` = candidates × ``cv`` + 1, the last being the winner's refit).

    Returns:
        A :class:`Selection` with ``table_``, ``best_``, ``calibrator_``, ``separable_`` and
        the chosen method's out-of-fold logits ``oof_logits_``.

    Warns:
        CalibrationWarning: the rows are separable, so the choice is "none".

    Note:
        How the rule was chosen: 30 random calibration/test splits of each of four small real
        files (the models trained once, their held-out half re-divided), every rule applied to
        the same out-of-fold figures, scored by the test NLL of its choice over the split's
        best single method (chosen on the test rows, so 1.00 is out of reach).  Mean / worst
        (``benchmarks/bench_calibrators.py rules --cv-repeats 1``, with temperature scaling's
        ridge; the rule itself was chosen before it, on the same kind of splits):

        =============================  =============  =============  =============  =============
        rule                           wine (44 rows) breast (142)   digits MLP     digits CNN
        =============================  =============  =============  =============  =============
        best out-of-fold NLL           3.28 / 16.2    1.08 / 1.68    1.07 / 1.32    1.22 / 1.64
        1.5 SE over "none", every one  1.11 / 1.64    1.34 / 2.98    1.10 / 1.22    1.33 / 1.87
        1.0 SE over "none", every one  2.65 / 16.2    1.06 / 1.65    1.11 / 1.25    1.29 / 1.87
        one-standard-error rule        ∞ / ∞          1.14 / 2.73    1.11 / 1.39    1.33 / 2.12
        two steps (this rule)          1.11 / 1.64    1.09 / 2.70    1.08 / 1.17    1.33 / 1.87
        always temperature scaling     1.05 / 1.31    1.02 / 1.12    1.03 / 1.12    1.38 / 2.18
        always structured (SMS)        1.28 / 1.94    1.05 / 1.15    1.04 / 1.18    1.25 / 1.95
        =============================  =============  =============  =============  =============

        No rule reaches 1.01 on these sizes: with 44-449 rows the out-of-fold differences
        between calibrators are within their noise, and the test rows' own noise (45-450 rows)
        makes the split's best method a moving target.  Since temperature scaling gained its
        ridge (unpenalised it was 4.71 / 111 on wine), always choosing it is the best row on
        three files and the worst on the digits CNN, where the richer maps win; the two-step
        rule sits between, never at the worst.  On the two synthetic sets (5,000 and 10,000
        rows) every rule chose the same method, within 0.1% of the best.  The rule's bars (1.0
        and 1.5) were picked from a few round values on such splits, so its own row flatters it
        a little.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import select
        >>> rng = np.random.default_rng(0)
        >>> true = rng.normal(size=(1500, 4)) * 2
        >>> p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
        >>> y = (p.cumsum(1) > rng.random((1500, 1))).argmax(1)
        >>> sel = select(3 * true, y, random_state=0)
        >>> sel.best_ in ("temperature", "vector", "structured-vector", "structured",
        ...               "stacked")
        True
        >>> sel.row("none")["nll"] > sel.row()["nll"]
        True
    """
    candidates_of(methods)  # checked before the data are read
    cv = check_int(cv, "cv", low=2)
    check_choice(scoring, "scoring", _SCORINGS)
    if not isinstance(from_probs, bool):
        raise LogitkitTypeError(expected("from_probs", "a bool", from_probs))
    data = _in_memory(fit_data(logits, y, None, from_probs=from_probs, allow_neg_inf=True))
    names = candidates_of(methods, n_classes=data.k)
    n = data.n
    if cv > n:
        raise LogitkitValueError(expected("cv", f"at most the number of rows ({n})", cv))
    rng = _generator(random_state)
    folds = stratified_folds(data.y, cv, rng)
    total = len(names) * cv + 1
    ticks = _Ticks(progress, total)
    with small_problem_threads(n * data.k):
        rows, fold_cals, losses, stats = _select(data, folds, names, cv, scoring, ticks)
        errors = misclassified(data.x, data.y, from_probs, data.floor, up_to=MIX_MIN_ERRORS)
        apart = errors == 0
        weights = None
        if STACKED in names:
            weights = _stacked_candidate(data, folds, rows, fold_cals, losses, stats, cv,
                                         scoring, ticks)
        _evidence_columns(rows, losses)
        best = _choose(rows, scoring, apart, mix=errors >= MIX_MIN_ERRORS)
        final = _refit(best, data, weights)
    ticks.done(best)
    if apart:
        warnings.warn(SEPARABLE, CalibrationWarning, stacklevel=2)
    return Selection(rows, best, final, folds, fold_cals, data, scoring, cv, apart, weights)


def _in_memory(data: FitData) -> FitData:
    """Validated rows in host memory (a Dask or device input read once), without weights."""
    z = np.asarray(data.x)
    labels = np.asarray(data.y).astype(np.intp, copy=False)
    return FitData(z, labels, None, data.k, float(z.shape[0]), data.from_probs,
                   floor=data.floor)


class _Ticks:
    """Progress of a selection: ``progress(done, total, method)`` after each fit."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress, self.total, self.count = progress, total, 0

    def __call__(self, name: str, fits: int = 1) -> None:
        self.count += fits
        if self.progress is not None and fits:
            self.progress(self.count, self.total, name)

    def skip(self, fits: int) -> None:
        """Fits that will not happen (a candidate that failed)."""
        self.count += fits

    def done(self, best: str) -> None:
        """The winner's refit: the last tick."""
        if self.progress is not None:
            self.progress(self.total, self.total, best)


def _refit(method: str, data: FitData, weights: dict[str, float] | None) -> Calibrator:
    """``method`` refitted on all rows (the stacked mixture: its components, with
    ``weights``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folds' warnings are in the table
        if method == STACKED:
            if weights is None:  # pragma: no cover - a stacked row always has weights
                raise LogitkitValueError(expected("method", "a fitted candidate", method))
            comps = [make_candidate(name, data.from_probs)._fit_data(data)
                     if w >= MIN_WEIGHT else None for name, w in weights.items()]
            return StackedCalibrator.assembled(list(weights), list(weights.values()), comps,
                                               data.k, data.from_probs)
        return make_candidate(method, data.from_probs)._fit_data(data)


def _select(data: FitData, folds: np.ndarray, names: list[str], cv: int, scoring: str,
            ticks: _Ticks) -> tuple[list[dict[str, Any]], dict[str, list[Calibrator]],
                                    dict[str, np.ndarray], dict[str, list[CalibrationStats]]]:
    """Fit every candidate (but the mixture) on each fold's training rows and score it on the
    held-out rows.

    Folds outside, candidates inside: each fold's training rows are copied once, in their
    original order (every fit sees exactly the rows, and the order, it always did), into one
    buffer reused by every fold (:meth:`FitData.take`), and shared by the candidates; "none"
    reads no rows and needs no copy.  Scoring reads the held-out rows a block at a time
    (:data:`CHUNK_ELEMENTS`): each candidate's calibrated block (:func:`out_of_fold_logits`) goes
    through the measurement engine (:class:`CalibrationStats`: NLL, ECE, Brier, accuracy in
    one pass, the softmax fused) and ``log_softmax`` for its per-row NLL (the evidence), so
    nothing of size ``N × K`` in float64 is formed.  On 1e6 × 100 float32 logits with
    ``methods="temperature"`` (median of 5 fresh processes, 2 cores at load 0.7-1.2) select
    took 10.8 s, 9.1× its six fits' 1.2 s, and peaked at 2.76 GB; now 2.7 s (2.3× the fits'
    wall time, 1.8× their CPU time) and 0.81 GB, the input's 0.42 GB included.  Two threads
    scoring halves of each fold were tried and dropped: no gain at load 2.7.

    Returns the table's rows (``"stacked"``'s not yet), each candidate's fold calibrators,
    its per-row out-of-fold NLL and its per-fold :class:`CalibrationStats`.
    """
    z, labels, n, from_probs = data.x, data.y, data.n, data.from_probs
    singles = [name for name in names if name != STACKED]
    rows: dict[str, dict[str, Any]] = {}
    losses: dict[str, np.ndarray] = {}  # out-of-fold NLL per row, for the evidence
    stats: dict[str, list[CalibrationStats]] = {}
    fold_cals: dict[str, list[Calibrator]] = {name: [] for name in singles}
    seconds = dict.fromkeys(singles, 0.0)
    # whether every input value is finite: looked at once, and only if a candidate asks
    all_finite = functools.cache(lambda: bool(np.isfinite(z).all()))
    for name in singles:
        rows[name] = _new_row(name)
    buffer: np.ndarray | None = None  # every fold's training rows, in turn
    for f in range(cv):
        train_rows = folds != f
        train: FitData | None = None
        fitted: dict[str, Calibrator] = {}
        for name in singles:
            row = rows[name]
            if row["error"] is not None:
                continue
            try:
                if (name != "none" and not make_candidate(name)._allow_neg_inf
                        and not all_finite()):
                    raise LogitkitValueError(expected(
                        "logits", f"finite for {name} scaling", "infinite values"))
                # Every fold's fit starts cold: started from the fit on all rows, a fit whose
                # optimum is nearly flat (unpenalised matrix scaling of 449 rows) stopped next
                # to that start, which had seen the held-out rows, and looked best out of fold
                # (chosen: test NLL 0.30 against 0.075 for the best method).
                cal = make_candidate(name, from_probs)
                if name == "none" and not from_probs:
                    rows_of_fold = data  # the identity reads no rows: its fold needs no copy
                    # (probabilities: it reads zeros by the floor of its fold's rows, below)
                else:
                    if train is None:
                        if buffer is None:
                            most = n - int(np.bincount(folds, minlength=cv).min())
                            buffer = np.empty((most, *z.shape[1:]), dtype=z.dtype)
                        train = data.take(train_rows, out=buffer)
                    rows_of_fold = train
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t0 = time.perf_counter()
                    cal._fit_data(rows_of_fold)
                    seconds[name] += time.perf_counter() - t0
            except LogitkitError as exc:
                ticks.skip(cv - f)  # its remaining folds are not fitted
                row.update({"error": str(exc), "nll": math.inf, "ece": math.nan,
                            "brier": math.nan, "accuracy": math.nan, "fold_spread": math.nan,
                            "fit_time": seconds[name] / (len(fold_cals[name]) + 1)})
                continue
            row["warnings"] += sorted({str(w.message) for w in caught} - set(row["warnings"]))
            ticks(name)
            row["converged"] &= bool(getattr(cal, "converged_", True))
            row["at_bound"] |= bool(getattr(cal, "at_bound_", False))
            fold_cals[name].append(cal)
            fitted[name] = cal
        del train
        _score_fold(z, labels, np.flatnonzero(folds == f), fitted, stats, losses, n)
    out: list[dict[str, Any]] = []
    for name in singles:
        row = rows[name]
        out.append(row)
        if row["error"] is not None:
            del fold_cals[name]
            losses.pop(name, None)
            continue
        _pooled_figures(row, stats[name], losses[name], folds, cv, scoring)
        row["fit_time"] = seconds[name] / cv
    return out, fold_cals, losses, stats


def _new_row(name: str) -> dict[str, Any]:
    return {"method": name, "error": None, "warnings": [], "converged": True,
            "at_bound": False}


def _pooled_figures(row: dict[str, Any], stats: list[CalibrationStats], loss: np.ndarray,
                    folds: np.ndarray, cv: int, scoring: str) -> None:
    """A candidate's table figures from its folds' :class:`CalibrationStats` and its per-row
    out-of-fold NLL ``loss``: the pooled NLL, ECE, Brier and accuracy, and the fold spread."""
    pooled = stats[0]
    for other in stats[1:]:
        pooled = pooled.merge(other)
    row.update(_figures(pooled))
    if scoring == "nll":
        per_fold = [float(loss[folds == f].mean()) for f in range(cv)]
    else:
        per_fold = [_figures(s)[scoring] for s in stats]
    row["fold_spread"] = float(np.std(per_fold))


def _accuracy_changes(rows: list[dict[str, Any]]) -> None:
    """``accuracy_change`` (against "none") and ``flagged`` of every row; ``chosen`` False."""
    base_acc = next(r["accuracy"] for r in rows if r["method"] == "none")
    for r in rows:
        change = r["accuracy"] - base_acc if r["error"] is None else math.nan
        r["accuracy_change"] = change
        r["flagged"] = bool(abs(change) > ACCURACY_FLAG) if r["error"] is None else True
        r["chosen"] = False


def _usable(row: dict[str, Any], scoring: str) -> bool:
    """A candidate that may be chosen, or mixed: it fitted and converged on every fold, away
    from its bounds, did not cost more than :data:`ACCURACY_FLAG` of held-out accuracy, and
    has a finite score."""
    return bool(row["error"] is None and row["converged"] and not row["at_bound"]
                and not row["accuracy_change"] < -ACCURACY_FLAG
                and math.isfinite(row[scoring]))


def _stacked_candidate(data: FitData, folds: np.ndarray, rows: list[dict[str, Any]],
                       fold_cals: dict[str, list[Calibrator]], losses: dict[str, np.ndarray],
                       stats: dict[str, list[CalibrationStats]], cv: int, scoring: str,
                       ticks: _Ticks) -> dict[str, float] | None:
    """Add the mixture's row to ``rows`` (and its fold calibrators, losses and stats); return
    its weights from every row's out-of-fold figures (``None`` when it cannot be formed).

    The mixture of the usable candidates (:func:`_usable`) with the weights that maximise the
    out-of-fold likelihood (:func:`._stack.stack_weights`) would score itself on the rows its
    weights were fitted to; its out-of-fold figures are nested instead: fold ``f``'s rows are
    scored by a mixture of the candidates' fold-``f`` calibrators with weights fitted to the
    other folds' out-of-fold losses only.
    """
    _accuracy_changes(rows)
    names = [r["method"] for r in rows if _usable(r, "nll")]
    row = _new_row(STACKED)
    rows.append(row)
    if len(names) < 2:
        ticks.skip(cv)
        row.update({"error": "needs two usable candidates to mix, found "
                             f"{len(names)} ({', '.join(names) or 'none'})",
                    "nll": math.inf, "ece": math.nan, "brier": math.nan,
                    "accuracy": math.nan, "fold_spread": math.nan, "fit_time": 0.0})
        return None
    logp = -np.stack([losses[name] for name in names])
    weights = stack_weights(logp, prior=STACK_PRIOR)
    fold_cals[STACKED] = []
    z, labels, n = data.x, data.y, data.n
    for f in range(cv):
        held = folds == f
        w = stack_weights(logp[:, ~held], prior=STACK_PRIOR)
        cal = StackedCalibrator.assembled(names, list(w), [fold_cals[m][f] for m in names],
                                          data.k, data.from_probs)
        fold_cals[STACKED].append(cal)
        _score_fold(z, labels, np.flatnonzero(held), {STACKED: cal}, stats, losses, n)
        ticks(STACKED)
    _pooled_figures(row, stats[STACKED], losses[STACKED], folds, cv, scoring)
    by_name = {r["method"]: r for r in rows}
    row["fit_time"] = sum(by_name[m]["fit_time"] for m in names)
    row["weights"] = {m: float(v) for m, v in zip(names, weights, strict=True)}
    return dict(row["weights"])


def _score_fold(z: np.ndarray, labels: np.ndarray, held: np.ndarray,
                fitted: dict[str, Calibrator], stats: dict[str, list[CalibrationStats]],
                losses: dict[str, np.ndarray], n: int) -> None:
    """Add one fold's held-out rows ``held`` to each fitted candidate's figures: a
    :class:`CalibrationStats` per fold (its table figures and spread) and the per-row NLL."""
    fold_stats = {name: CalibrationStats() for name in fitted}
    step = _chunk_rows(z)
    for start in range(0, held.size, step):
        idx = held[start:start + step]
        block, y = z[idx], labels[idx]
        for name, cal in fitted.items():
            logits = out_of_fold_logits(block, None, [cal])
            fold_stats[name].update(logits, y, from_logits=True)
            logp = np.asarray(log_softmax(logits, axis=1))
            if name not in losses:
                losses[name] = np.empty(n)
            losses[name][idx] = -logp[np.arange(idx.size), y]
    for name, s in fold_stats.items():
        stats.setdefault(name, []).append(s)


def _evidence_columns(rows: list[dict[str, Any]], losses: dict[str, np.ndarray]) -> None:
    """``gain_z`` and ``gain_z_temperature`` of every fitted candidate from its per-row
    out-of-fold NLL ``losses``."""
    for row in rows:
        name = row["method"]
        if name not in losses:
            continue
        for key, base in (("gain_z", "none"), ("gain_z_temperature", "temperature")):
            row[key] = 0.0 if name == base else (
                _evidence(losses[base] - losses[name]) if base in losses else math.nan)


def _evidence(gain: np.ndarray) -> float:
    """The mean of the per-row gains over its standard error (``inf`` for a candidate that is
    finite where "none" is infinite, NaN where both are)."""
    with np.errstate(invalid="ignore"):
        mean = float(np.mean(gain))
        spread = float(np.std(gain, ddof=1)) if gain.size > 1 else 0.0
    if mean == math.inf:
        return math.inf
    if not (math.isfinite(mean) and math.isfinite(spread)):
        return math.nan
    if spread == 0.0:
        return math.inf if mean > 0 else 0.0
    return mean / (spread / math.sqrt(gain.size))


def _choose(rows: list[dict[str, Any]], scoring: str, apart: bool = False,
            mix: bool = False) -> str:
    """The chosen candidate's name (its row marked ``chosen``).

    The mixture (``"stacked"``) is chosen when ``mix`` (at least :data:`MIX_MIN_ERRORS`
    misclassified rows), the scoring is the NLL (the likelihood its weights maximise), it is
    usable and its nested out-of-fold NLL beats "none"'s, even at a near tie with a single
    method (measured: see :func:`select`); otherwise the two-step evidence rule picks among
    the single methods.
    """
    _accuracy_changes(rows)
    stacked = next((r for r in rows if r["method"] == STACKED), None)
    none = next(r for r in rows if r["method"] == "none")
    if (stacked is not None and mix and not apart and scoring == "nll"
            and _usable(stacked, scoring) and stacked["nll"] < none["nll"]):
        stacked["chosen"] = True
        return STACKED
    usable = {r["method"]: r for r in rows if r["method"] != STACKED and _usable(r, scoring)}
    temperature = usable.get("temperature")
    base = "temperature" if temperature is not None and \
        temperature["gain_z"] >= TEMPERATURE_EVIDENCE else "none"
    eligible = [r for r in rows if r["method"] in usable and (
        r["method"] == base or (r["method"] not in ("none", "temperature")
                                and r["gain_z"] >= EVIDENCE
                                and (base == "none" or r["gain_z_temperature"] >= EVIDENCE)))]
    if apart or not eligible:  # "none" is always eligible unless its own NLL is infinite
        eligible = [none]
    best_score = min(r[scoring] for r in eligible)
    margin = NEAR_TIE * abs(best_score) + 1e-12 if math.isfinite(best_score) else 0.0
    winner = next(r for r in eligible if r[scoring] <= best_score + margin)
    winner["chosen"] = True
    return str(winner["method"])


class StackedCalibrator(Calibrator):
    r"""A mixture of calibrators, weighted by held-out likelihood (stacking).

    Every candidate of ``methods`` (:func:`select`'s, ``"none"`` included) is fitted on
    ``cv − 1`` folds and scores each held-out row's label; the mixture weights ``w`` maximise
    the likelihood of those out-of-fold scores (:func:`._stack.stack_weights`, with a
    Dirichlet prior of :data:`STACK_PRIOR` pseudo-row per candidate), and the candidates are
    refitted on all rows:

    .. math::
        p(y \mid z) = \sum_m w_m\, \operatorname{softmax}(f_m(z))_y,

    ``transform`` returning its log (a valid set of logits).  Candidates that fail, do not
    converge, stop at a bound, or cost held-out accuracy are left out (:func:`select`'s
    rule), as are those whose weight is below :data:`._stack.MIN_WEIGHT`.

    Why a mixture: on small calibration sets no single method wins reliably out of fold
    (their differences are within the noise), while the mixture hedges, and a little weight on
    "none" or a broad method bounds the loss on a row the sharpest map gets wrong.  Over 30
    calibration/test splits of the benchmark's four small real files its test NLL over the
    split's best single method was, mean / worst, 1.06 / 1.15 (breast_cancer), 1.06 / 1.43
    (digits CNN), 1.04 / 1.22 (digits MLP), where :func:`select`'s single-method rule gave
    1.09 / 2.70, 1.29 / 1.87, 1.11 / 1.22.

    Row weights are not supported: the mixture's weights come from cross-validation.  Dask
    input is read into memory, as :func:`select` reads it.

    Args:
        methods: ``"auto"`` (every single method, as :func:`candidates_of` says) or a list
            of names of :data:`CANDIDATES`.
        cv: folds of the cross-validation, at least 2.
        random_state: seed of the fold assignment (an int or ``None``).
        from_probs: the inputs are probabilities.

    Attributes:
        methods_: the mixed candidates' names (weight at least ``MIN_WEIGHT``).
        weights_: ``(M,)`` their weights, summing to 1.
        components_: the candidates, fitted on all rows.
        n_classes_: the class count.

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import StackedCalibrator, TemperatureScaler
        >>> rng = np.random.default_rng(0)
        >>> true = rng.normal(size=(1500, 4)) * 2
        >>> p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
        >>> y = (p.cumsum(1) > rng.random((1500, 1))).argmax(1)
        >>> st = StackedCalibrator(methods=["temperature", "vector"]).fit(3 * true, y)
        >>> st.methods_[0], round(float(st.weights_.sum()), 12)
        ('none', 1.0)
        >>> bool(st.score(3 * true, y) > TemperatureScaler().fit(3 * true, y).score(3 * true, y) - 0.01)
        True
    """

    method = STACKED
    _allow_neg_inf = True

    def __init__(self, *, methods: Any = "auto", cv: int = 5, random_state: Any = 0,
                 from_probs: bool = False) -> None:
        self.methods = methods
        self.cv = cv
        self.random_state = random_state
        self.from_probs = from_probs

    @classmethod
    def assembled(cls, names: Sequence[str], weights: Sequence[float],
                  components: Sequence[Calibrator | None], k: int, from_probs: bool
                  ) -> StackedCalibrator:
        """A fitted mixture of the fitted ``components``, one per name and weight: those whose
        weight is below ``MIN_WEIGHT`` are left out (they may be ``None``, not fitted), the
        others' weights renormalised.  Probabilities' zeros are read as the components read
        them (``zero_floor_`` of the rows they were all fitted on)."""
        kept = [(n, float(w), c) for n, w, c in zip(names, weights, components, strict=True)
                if w >= MIN_WEIGHT]
        if any(c is None for _, _, c in kept):
            raise LogitkitValueError(expected(
                "components", f"a fitted calibrator for every weight of at least {MIN_WEIGHT:g}",
                [n for n, _, c in kept if c is None]))
        total = sum(w for _, w, _ in kept)
        out = cls(methods=[n for n, _, _ in kept], from_probs=from_probs)
        out.methods_ = [n for n, _, _ in kept]
        out.weights_ = np.array([w / total for _, w, _ in kept])
        out.components_ = [c for _, _, c in kept]
        if from_probs:
            out.zero_floor_ = out.components_[0].zero_floor_
        out.n_classes_ = k
        return out

    def _check_params(self) -> None:
        super()._check_params()
        names = candidates_of(self.methods)
        check_int(self.cv, "cv", low=2)
        if len(names) < 2:  # pragma: no cover - none and temperature are always there
            raise LogitkitValueError(expected("methods", "two candidates or more", names))

    def _fit(self, data: FitData) -> None:
        if data.w is not None:
            raise LogitkitValueError(expected(
                "sample_weight", "None (a stacked mixture's weights come from "
                "cross-validation; row weights are not supported)", "row weights"))
        data = _in_memory(data)
        cv = check_int(self.cv, "cv", low=2)
        if cv > data.n:
            raise LogitkitValueError(expected("cv", f"at most the number of rows ({data.n})",
                                              cv))
        names = [n for n in candidates_of(self.methods, n_classes=data.k)
                 if n != STACKED] + [STACKED]
        rng = _generator(self.random_state)
        folds = stratified_folds(data.y, cv, rng)
        ticks = _Ticks(None, 0)
        rows, fold_cals, losses, stats = _select(data, folds, names, cv, "nll", ticks)
        weights = _stacked_candidate(data, folds, rows, fold_cals, losses, stats, cv, "nll",
                                     ticks)
        if weights is None:
            raise LogitkitValueError(expected("logits", "rows on which two candidates fit",
                                              rows[-1]["error"]))
        fitted: Any = _refit(STACKED, data, weights)
        self.methods_ = fitted.methods_
        self.weights_ = fitted.weights_
        self.components_ = fitted.components_

    def _transform(self, z: Any, xp: Any) -> Any:
        import array_api_compat

        dev = array_api_compat.device(z)
        parts = [log_softmax(c._transform(z, xp), axis=-1)
                 + xp.asarray(math.log(w), dtype=z.dtype, device=dev)
                 for c, w in zip(self.components_, self.weights_, strict=True)]
        return logsumexp(xp.stack(parts, axis=0), axis=0)

    def _encode_fitted(self) -> dict[str, Any]:
        return {"methods_": list(self.methods_), "weights_": self.weights_.tolist(),
                "components_": [c.to_dict() for c in self.components_]}

    def _fitted_checks(self) -> dict[str, FieldCheck]:
        return {"weights_": (("m",), "non-negative")}

    def _check_fitted(self, fitted: dict[str, Any], where: str) -> None:
        """One name and one component (itself checked, with this class count) per weight,
        the weights summing to a positive number; the components are rebuilt here."""
        m = len(fitted["weights_"])
        arg = f"{where}['fitted']"
        if not float(np.sum(fitted["weights_"])) > 0:
            raise LogitkitValueError(expected(f"{arg}['weights_']",
                                              "weights with a positive sum",
                                              fitted["weights_"]))
        names, parts = fitted.get("methods_"), fitted.get("components_")
        if not (isinstance(names, list) and len(names) == m
                and all(isinstance(n, str) for n in names)):
            raise LogitkitValueError(expected(f"{arg}['methods_']",
                                              f"{m} method names, one per weight", names))
        if not (isinstance(parts, list) and len(parts) == m):
            raise LogitkitValueError(expected(
                f"{arg}['components_']", f"{m} calibrators, one per weight",
                Described(f"{len(parts)} of them") if isinstance(parts, list) else parts))
        built = [Calibrator._from_dict(c, f"{arg}['components_'][{i}]")
                 for i, c in enumerate(parts)]
        for i, c in enumerate(built):
            if c.n_classes_ != self.n_classes_ or c.from_probs != self.from_probs:
                raise LogitkitValueError(expected(
                    f"{arg}['components_'][{i}]",
                    f"a calibrator of {self.n_classes_} classes reading "
                    f"{'probabilities' if self.from_probs else 'logits'} like the mixture",
                    Described(f"one of {c.n_classes_} classes")))
        fitted["components_"] = built

    def _decode_fitted(self, fitted: dict[str, Any]) -> None:
        self.methods_ = [str(m) for m in fitted["methods_"]]
        self.weights_ = np.asarray(fitted["weights_"], dtype=np.float64)
        self.components_ = [c if isinstance(c, Calibrator) else Calibrator.from_dict(c)
                            for c in fitted["components_"]]


CANDIDATES[STACKED] = (StackedCalibrator, {})

#: The calibration methods :func:`make_calibrator` and :func:`select` know, simplest first (the
#: order in which :func:`select` breaks ties; ``"stacked"``, the mixture of the others, last);
#: ``"none"`` is the identity.
METHODS: tuple[str, ...] = tuple(CANDIDATES)
