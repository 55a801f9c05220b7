"""The calibrators' shared shell: inputs, the estimator contract, and saving to JSON.

Every calibrator maps logits ``(N, K)`` to calibrated logits ``(N, K)`` (log-probabilities up to
a per-row constant), so ``predict_proba`` is always ``softmax(transform(x))``.  This module holds
what they share, once:

- the input rule: a 1-D array or a single column is the logit of class 1 of a binary problem
  (the logits ``[0, z]``); with ``from_probs=True`` the inputs are probabilities and their natural
  log is used (a single column ``p`` becomes ``[1 − p, p]``), a probability of exactly 0 read as
  half the smallest positive probability of the fit's rows (:func:`zero_floor`, the command
  line's rule too; the calibrator keeps it as ``zero_floor_``);
- the fit's input pass: labels, weights and values checked in one pass over the rows (one
  map-reduce through :func:`._blocks.row_sums` on partitioned arrays), the fit itself then
  reading NumPy (or partitioned) rows, never a float64 copy of them;
- the estimator contract (``fit``/``transform``/``predict_proba``/``predict``/``score``,
  ``get_params``/``set_params``, scikit-learn's ``check_is_fitted`` and ``clone``);
- :meth:`Calibrator.to_dict` / :meth:`Calibrator.from_dict`: a fitted calibrator as plain JSON
  data (method, parameters, fitted values, class count, input kind, schema version), restored
  exactly (floats are written with ``repr``, which round-trips).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from .._core import log_softmax, softmax
from .._estimator import Estimator, check_is_fitted, convergence_warning_class
from .._namespace import (
    Described,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_choice,
    check_int,
    check_number,
    compute_dtypes,
    default_float,
    expected,
    is_low_precision,
    is_numpy,
    namespace,
    to_numpy,
)
from ._blocks import Least, known_rows, partitioned, row_sums
from ._blocks import map_rows as map_row_blocks
from ._fitting import small_problem_threads

__all__ = ["SCHEMA_VERSION", "CalibrationWarning", "Calibrator", "FitData", "IdentityCalibrator"]

#: Version of the dictionaries written by :meth:`Calibrator.to_dict`.
SCHEMA_VERSION = 1


class CalibrationWarning(UserWarning):
    """A calibration result that is valid but needs attention (a bound, no convergence)."""


_CONVERGENCE: list[type[Warning]] = []


def convergence_warning() -> type[Warning]:
    """The warning for a fit that stopped before converging: a :class:`CalibrationWarning`
    that is also scikit-learn's ``ConvergenceWarning`` when that is installed, so either
    filter silences it."""
    if not _CONVERGENCE:
        base = convergence_warning_class()
        bases = (CalibrationWarning,) if issubclass(CalibrationWarning, base) else (
            CalibrationWarning, base)
        _CONVERGENCE.append(type("CalibrationConvergenceWarning", bases, {
            "__module__": __name__,
            "__doc__": "A calibrator's fit stopped at max_iter before converging."}))
    return _CONVERGENCE[0]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


class FitData:
    """The rows a fit reads: ``x`` (NumPy ``(N, K_in)`` of any real dtype, or a partitioned
    array), ``y`` (integer labels), ``w`` (float64 weights or ``None``), the class count ``k``
    (2 for a single column), the total weight, whether ``x`` holds probabilities and, if so,
    ``floor``: the log-probability their zeros are read as (:func:`zero_floor` of the fitted
    rows; ``-inf`` for logits).  Every construction states it: the fit's input pass computes
    it, a subsample keeps its whole's (one fit reads every part of its rows alike), and
    :meth:`take` computes that of the rows it takes (a fold is fitted as its own data)."""

    def __init__(self, x: Any, y: Any, w: Any, k: int, total_weight: float,
                 from_probs: bool, *, floor: float) -> None:
        self.x, self.y, self.w = x, y, w
        self.k, self.total_weight, self.from_probs = k, total_weight, from_probs
        self.floor = floor if from_probs else -math.inf
        self.n = int(x.shape[0])
        self.partitioned = partitioned(x, y, w)

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> FitData:
        """The rows selected by the boolean mask ``rows`` (in-memory arrays), in their order.

        ``out``: optional buffer for the selected values of ``x`` (same dtype and row shape,
        at least as many rows), filled a block of rows at a time and returned as a view.  It
        lets :func:`select` reuse one buffer for every fold: a fresh copy of 0.8 × 1e6 × 100
        float32 rows took 0.08–1.1 s on two busy cores (page faults of a new 320 MB mapping),
        the same copy into a reused buffer a steady 0.08 s.

        Probabilities' ``floor`` is that of the rows taken (:func:`zero_floor`): a fold's
        calibrator reads zeros by its own training rows, not by the rows it is scored on.
        """
        w = None if self.w is None else self.w[rows]
        total = float(np.count_nonzero(rows)) if w is None else float(w.sum())
        if out is None:
            x = self.x[rows]
        else:
            idx = np.flatnonzero(rows)
            x = out[:idx.size]
            step = 1 << 14
            for start in range(0, idx.size, step):
                part = idx[start:start + step]
                x[start:start + part.size] = self.x[part]
        floor = floor_of_least(least_probability(x).value) if self.from_probs else -math.inf
        return FitData(x, self.y[rows], w, self.k, total, self.from_probs, floor=floor)

    def warm_starts(self, sizes: tuple[int, ...]) -> Iterator[FitData]:
        """Evenly spaced subsamples of about ``sizes`` rows each (in-memory inputs at least
        four times larger only), for fits that start from a subsample's optimum: a few cheap
        passes there save full passes here, and only the starting point depends on them."""
        if self.partitioned:
            return
        for size in sizes:
            if self.n <= 4 * size:
                return
            sub = self.subsample(self.n // size)
            if not sub.total_weight > 0:
                return
            yield sub

    def thin(self, step: int) -> FitData:
        """:meth:`subsample` of in-memory rows; partitioned (Dask) data as it is, since a
        map-reduce reads every block anyway.  For statistics that only steer a fit (a
        starting point, a change of variables, a preconditioner)."""
        return self if self.partitioned else self.subsample(step)

    def subsample(self, step: int) -> FitData:
        """Every ``step``-th row (views of in-memory arrays).  With weights that hold zeros, every
        ``step′``-th of the ``P`` rows of positive weight, ``step′ = max(1, ⌊step·P/N⌋)``: as
        many rows as without zeros or more (all ``P`` when fewer), a copy.  Every ``step``-th row
        can all weigh nothing (weights on every tenth of 60,000 rows, step 12), and structured
        scaling then stopped on a NaN start (a temperature fitted on no weight), matrix scaling
        on NaN starting biases."""
        if self.w is not None:
            weights = np.asarray(self.w)
            positive = np.flatnonzero(weights > 0)
            if positive.size < self.n:
                rows = positive[::max(1, step * positive.size // self.n)]
                return FitData(self.x[rows], self.y[rows], weights[rows], self.k,
                               float(weights[rows].sum()), self.from_probs, floor=self.floor)
        w = None if self.w is None else self.w[::step]
        total = float(self.n // step + (self.n % step > 0)) if w is None else float(w.sum())
        return FitData(self.x[::step], self.y[::step], w, self.k, total, self.from_probs,
                       floor=self.floor)


def ridge(alpha: float | str, total_weight: float) -> float:
    """The scalers' ridge toward the identity map: ``"auto"`` is ``0.5/N`` (``N`` the total
    weight: about half a row's worth), or a number ``≥ 0``."""
    if isinstance(alpha, str):
        check_choice(alpha, "alpha", ("auto",))
        return 0.5 / total_weight
    return check_number(alpha, "alpha", low=0.0, high=math.inf, high_open=True)


#: The log of the smallest normal float64 (2.2e-308), -708.4: the floor of rows with no positive
#: probability at all (every value is then the floor, and any floor gives the same uniform
#: rows), and that of calibrators saved by :meth:`Calibrator.to_dict` before the floor was
#: fitted (their ``transform`` is restored as it was).
LOG_TINY = math.log(np.finfo(np.float64).tiny)

_LEAST_CHUNK = 1 << 20  # values per chunk of least_probability's integer temporaries


def least_probability(x: Any) -> Least:
    """``Least`` of the positive probabilities in a block of rows ``(N, K)`` (of ``p`` and
    ``1 − p`` for a single column ``p = P(class 1)``, as :func:`probability_logs` reads it);
    ``Least(inf)`` when none is positive.  A block function for :func:`row_sums`, which takes
    the least over every block.

    Read in the rows' own float type through its bits: the bit patterns of non-negative
    floats order as unsigned integers do, so ``bits − 1`` (0 wraps to the largest integer) has
    its minimum at the least positive value, while negative values, ``-0`` and NaN (sign bit
    or bits above ``+inf``) never win.  One integer pass a chunk, no float64 copy and no
    boolean gather: 1e5 × 100 float32 probabilities 65-87 -> 4 ms, so the fit's input pass
    (median of 9) 100 -> 20 ms, against 16 ms before it looked for the least at all."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    bits = np.dtype(f"u{x.dtype.itemsize}")
    above = int(np.array(np.inf, dtype=x.dtype).view(bits))  # bits of +inf, minus 1, plus 1
    best = above
    step = max(1, _LEAST_CHUNK // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        block = np.ascontiguousarray(x[start:start + step])
        if block.size:
            best = min(best, int((block.view(bits) - bits.type(1)).min()))
    least = (float(np.array(best + 1, dtype=bits).view(x.dtype)) if best < above
             else math.inf)
    if x.shape[1] == 1:  # 1 − p of the largest p below 1, in float64
        below = x[x < 1]
        if below.size:
            least = min(least, 1.0 - float(below.max()))
    return Least(least)


def floor_of_least(least: float) -> float:
    """The log-probability that a probability of exactly 0 is read as: ``log(least / 2)``,
    half the smallest positive probability ``least`` of the rows a calibrator is fitted on
    (:func:`least_probability`; :data:`LOG_TINY` when there is none).

    A probability of 0 is a logit of ``-inf``: no map can move it, ``0 · -inf`` makes the
    gradients NaN, and a zero on a label leaves no finite objective.  In data such zeros are
    nearly always probabilities rounded below the model's resolution (a random forest's
    votes, a float32 softmax that underflowed), so they are read as half the least
    probability the model gives at all: below every probability it did give, on its own
    scale.  The one rule for a zero: the library's calibrators with ``from_probs=True`` fit it
    on their rows (``zero_floor_``, saved by :meth:`Calibrator.to_dict`; :func:`select`'s
    folds each on their own training rows) and read every zero of ``transform``'s input with
    it, and the command line reads the calibration file with it and every later file
    (``--test``, ``apply``) with the value in its report.

    It replaced the smallest normal float64 (:data:`LOG_TINY`, -708.4, where dirichletcal
    clips), which made one zero worth 708 nats: on a random forest's probabilities (50 trees
    on 40% of scikit-learn's digits, calibrated on 600 of the other rows, tested on the
    rest) matrix and Dirichlet scaling's test NLL went 0.146 -> 0.130 and 0.154 -> 0.133;
    with the forest trained on 15% (one of the 928 test rows with a zero on its label),
    temperature, vector, matrix and Dirichlet scaling 2.1-3.1 -> 0.21-0.24
    (``tests/test_calibrators.py::test_a_random_forests_zeros_are_read_at_half_its_least_probability``).
    """
    # log(least) − log 2, not log(least / 2): the least subnormal float64 halves to 0
    return math.log(least) - math.log(2.0) if least < math.inf else LOG_TINY


def zero_floor(p: Any) -> float:
    """The log-probability that a probability of exactly 0 in ``p`` is read as: half the least
    positive probability of ``p`` (:func:`floor_of_least`), the floor a calibrator fitted on
    ``p`` with ``from_probs=True`` keeps as ``zero_floor_``.

    Args:
        p: probabilities ``(N, K)``, or ``(N,)`` / ``(N, 1)`` for ``P(class 1)`` (whose
            ``1 − p`` counts too), of any array library (read on the host).

    Returns:
        ``log(least) − log 2``; the log of the smallest normal float64 when nothing is positive.

    Examples:
        >>> import math, numpy as np
        >>> zero_floor(np.array([[0.0, 0.2, 0.8], [0.5, 0.5, 0.0]])) == math.log(0.2) - math.log(2)
        True
    """
    arr = np.asarray(to_numpy(p))
    if arr.size == 0 or arr.dtype.kind not in "biuf" or not np.all((arr >= 0) & (arr <= 1)):
        what = ("no values" if arr.size == 0 else f"dtype {arr.dtype}"
                if arr.dtype.kind not in "biuf"
                else f"{float(arr[~((arr >= 0) & (arr <= 1))][0])!r}")  # NaN fails too
        raise LogitkitValueError(expected("p", "probabilities in [0, 1], at least one",
                                          Described(what)))
    return floor_of_least(least_probability(arr).value)


def probability_logs(p: Any, xp: Any, floor: float) -> Any:
    """The logits of probabilities ``p`` ``(N, K)``, or ``(N, 1)`` (``P(class 1)``, read as
    ``[1 − p, p]``): their natural logs, a zero read as ``floor`` (:func:`zero_floor`) and its
    row renormalised (:func:`floored_logs`, from the row's sum of ``p``: no exponentials).
    The one reading of probabilities, for the fit's rows (:func:`expand_rows`), for
    ``transform``'s input (:func:`input_logits`) and for the command line's files, in ``p``'s
    array library and floating dtype (lazily on Dask), without a warning for a zero."""
    one = xp.ones((), dtype=p.dtype)
    if int(p.shape[1]) == 1:
        # log1p(-p) for the complement, not log(1 - p): exact for small p
        logs = xp.concat([xp.log1p(-xp.where(p < one, p, xp.zeros_like(one))),
                          xp.log(xp.where(p > 0, p, one))], axis=1)
        positive = xp.concat([p < one, p > 0], axis=1)
        total = one  # 1 − p + p: a row with a zero holds 0 and 1
    else:
        logs, positive = xp.log(xp.where(p > 0, p, one)), p > 0
        total = xp.sum(p, axis=1, keepdims=True)
    return _floor_rows(logs, positive, total, floor, xp)


def floored_logs(logs: Any, floor: float) -> Any:
    """Log-probabilities ``(N, K)`` with each ``-inf`` (a probability of 0) read as ``floor``,
    and each row that held one renormalised (``exp`` of it sums to 1 again, the floors' share
    taken from the others: the row minus ``log(Σ exp(logs) + n·exp(floor))`` for its ``n``
    zeros).  Rows without a zero are returned as they are (``log1p(-p)`` of a single column
    stays exact for tiny ``p``).  The one treatment of a zero, for the calibrators' input
    (:func:`probability_logs`) and the command line's files (probabilities and
    log-probabilities alike), in ``logs``' array library (lazily on Dask).

    Examples:
        >>> import numpy as np
        >>> logs = np.array([[-np.inf, np.log(0.5), np.log(0.5)]])  # the log of [0, 1/2, 1/2]
        >>> np.exp(floored_logs(logs, np.log(0.25))).round(6)
        array([[0.2, 0.4, 0.4]])
    """
    xp = namespace(logs)
    positive = logs > -math.inf
    # log-probabilities (at most 0 but for rounding): their exponentials cannot overflow
    return _floor_rows(logs, positive, xp.sum(xp.exp(logs), axis=1, keepdims=True), floor, xp)


def _floor_rows(logs: Any, positive: Any, total: Any, floor: float, xp: Any) -> Any:
    """:func:`floored_logs` given the rows' ``Σ exp(logs)`` over their positive entries
    (``total``): each entry that is not ``positive`` is ``floor``, and a row with ``n`` such
    entries is shifted by ``−log(total + n·exp(floor))``.  A whole-row ``log_softmax`` of
    every row (as before) made reading 1e5 × 100 float32 probabilities 175 -> 392 ms, for
    rows that mostly hold no zero; the row sums cost one pass without exponentials."""
    zeros = xp.sum(xp.astype(~positive, logs.dtype), axis=1, keepdims=True)
    floored = xp.where(positive, logs, xp.asarray(floor, dtype=logs.dtype))
    # a row without a zero is shifted by log 1 = 0, and x − 0 is x: one full-width pass
    shift = xp.log(xp.where(zeros > 0, total + zeros * math.exp(floor), xp.ones_like(zeros)))
    return floored - shift


def expand_rows(x: np.ndarray, from_probs: bool, floor: float) -> np.ndarray:
    """A block of input rows as float64 logits ``(rows, K)``: a single column becomes
    ``[0, z]``, probabilities their logs (:func:`probability_logs`, at least ``floor``: the
    fit's :attr:`FitData.floor`)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    out = x.astype(np.float64)
    if from_probs:
        return probability_logs(out, np, floor)
    if x.shape[1] == 1:
        return np.concatenate([np.zeros_like(out), out], axis=1)
    return out


def _check_block(x: Any, y: Any, w: Any, *, k: int, from_probs: bool
                 ) -> tuple[np.ndarray, Least]:
    """Counts of what is wrong in a block of rows (all add across blocks): ``[rows, labels out
    of range, NaN, +inf, -inf, probabilities outside [0, 1], bad weights, Σ weights]``, and
    with ``from_probs`` the least positive probability (:func:`least_probability`)."""
    x = np.asarray(x)
    y = np.asarray(y)
    out = np.zeros(8)
    out[0] = x.shape[0]
    least = least_probability(x) if from_probs else Least(math.inf)
    if x.shape[0] == 0:
        return out, least
    out[1] = np.count_nonzero((y < 0) | (y >= k))
    if x.dtype.kind == "f" and not np.isfinite(x.min() + x.max()):
        out[2] = np.count_nonzero(np.isnan(x))
        out[3] = np.count_nonzero(x == np.inf)
        out[4] = np.count_nonzero(x == -np.inf)
    if from_probs:
        out[5] = np.count_nonzero((x < 0) | (x > 1))
    if w is None:
        out[7] = x.shape[0]
    else:
        w = np.asarray(w, dtype=np.float64)
        out[6] = np.count_nonzero(~np.isfinite(w) | (w < 0))
        out[7] = w[np.isfinite(w)].sum()
    return out, least


def _host(x: Any, arg: str) -> Any:
    """``x`` as a NumPy array (a view where possible), or as is when partitioned.

    float16 and bfloat16 come to the host as float32 (NumPy has no bfloat16: torch's and
    JAX's were refused as "traced" or "not numeric"; every fit is in float64 anyway).  A
    partitioned array whose row count is unknown (a boolean-masked Dask array) has it
    computed first (:func:`._blocks.known_rows`, as for the metrics)."""
    if partitioned(x):
        return known_rows(x)
    xp = namespace(x)
    arr = as_array(x, arg, xp)
    if is_low_precision(arr.dtype, xp):
        arr = astype(arr, xp.float32, xp)
    try:
        return np.asarray(to_numpy(arr))
    except Exception:  # a JAX tracer, a lazy array that cannot be read
        raise LogitkitTypeError(
            expected(arg, "a concrete array (fit cannot be traced)", arr)) from None


def fit_data(logits: Any, y: Any, sample_weight: Any, *, from_probs: bool,
             allow_neg_inf: bool) -> FitData:
    """Validate the fit's inputs in one pass over the rows and return them as :class:`FitData`.

    Raises one clear error for: a wrong shape or dtype, no rows, labels out of ``[0, K)``,
    NaN or ``+inf`` values (and ``-inf`` unless ``allow_neg_inf``), probabilities outside
    ``[0, 1]`` with ``from_probs``, negative or non-finite weights, all weights zero.
    """
    x = _host(logits, "logits")
    if x.dtype.kind not in "biuf":
        raise LogitkitTypeError(expected("logits", "a real numeric array", f"dtype {x.dtype}"))
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise LogitkitValueError(expected("logits", "of shape (N, K) or (N,)",
                                          Described(f"shape {tuple(x.shape)}")))
    n = int(x.shape[0])
    if n == 0:
        raise LogitkitValueError(expected("logits", "non-empty (at least one row)", "0 rows"))
    if int(x.shape[1]) == 0:
        raise LogitkitValueError(expected("logits", "of shape (N, K) with K ≥ 1, or (N,)",
                                          Described(f"shape {tuple(x.shape)}")))
    k = 2 if int(x.shape[1]) == 1 else int(x.shape[1])
    labels, w = _labels_and_weights(y, sample_weight, n)
    counts, least = row_sums(_check_block, x, labels, w, k=k, from_probs=from_probs)
    _, bad_y, nan, pinf, ninf, bad_p, bad_w, total = (float(c) for c in counts)
    _check_label_and_weight_counts(bad_y, bad_w, total, k)
    if from_probs:
        if bad_p or nan:
            raise LogitkitValueError(expected(
                "logits", "probabilities in [0, 1] (from_probs=True)",
                Described(f"{int(bad_p + nan)} values outside [0, 1]")))
    elif nan or pinf or (ninf and not allow_neg_inf):
        what = "finite" if not allow_neg_inf else \
            "finite (-inf allowed only for classes that are not the label)"
        raise LogitkitValueError(expected("logits", what, Described(
            f"{int(nan)} NaN, {int(pinf)} +inf and {int(ninf)} -inf values")))
    if not from_probs and int(x.shape[1]) >= 2:
        head = np.asarray(x[:1000])
        if np.all(head >= 0) and np.all(head <= 1) and np.allclose(
                head.sum(axis=1), 1.0, atol=1e-4):
            warnings.warn(
                "`logits` looks like probabilities (rows in [0, 1] summing to 1); the "
                "calibrators need logits. Pass from_probs=True to use their log.",
                CalibrationWarning, stacklevel=4)
    return FitData(x, labels, w, k, total, from_probs,
                   floor=floor_of_least(least.value) if from_probs else -math.inf)


def _labels_and_weights(y: Any, sample_weight: Any, n: int) -> tuple[Any, Any]:
    """``y`` and ``sample_weight`` on the host (or partitioned), of the right dtype and shape
    for ``n`` rows: the checks of :func:`fit_data` and :meth:`Calibrator.score` (their values
    are checked by :func:`_check_label_and_weight_counts`)."""
    labels = _host(y, "y")
    if labels.dtype.kind not in "iub":
        raise LogitkitTypeError(expected("y", "an array of integer class labels",
                                         Described(f"dtype {labels.dtype}")))
    if labels.ndim != 1 or int(labels.shape[0]) != n:
        raise LogitkitValueError(expected("y", f"of shape ({n},) to match the logits",
                                          Described(f"shape {tuple(labels.shape)}")))
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if not partitioned(labels):
        labels = labels.astype(np.intp, copy=False)
    w = None
    if sample_weight is not None:
        w = _host(sample_weight, "sample_weight")
        if w.ndim != 1 or int(w.shape[0]) != n:
            raise LogitkitValueError(expected("sample_weight", f"of shape ({n},)",
                                              Described(f"shape {tuple(w.shape)}")))
        w = w.astype(np.float64)
    return labels, w


def _check_label_and_weight_counts(bad_y: float, bad_w: float, total: float, k: int) -> None:
    """One error for labels outside ``[0, k)`` or for weights that are negative, non-finite or
    all zero (``total`` their sum), from counts of them."""
    if bad_y:
        raise LogitkitValueError(expected("y", f"class labels in [0, {k})",
                                          Described(f"{int(bad_y)} labels outside that range")))
    if bad_w or not total > 0:
        raise LogitkitValueError(expected("sample_weight", "finite, non-negative and not all zero",
                                          Described(f"{int(bad_w)} negative or non-finite "
                                                    f"weights, total {total:g}")))


def input_logits(logits: Any, from_probs: bool, floor: float) -> tuple[Any, Any]:
    """``(xp, z)``: the input as ``(N, K)`` floating logits of its own array library
    (probabilities read with ``floor``, the calibrator's ``zero_floor_``)."""
    xp = namespace(logits)
    z = as_array(logits, "logits", xp)
    if not xp.isdtype(z.dtype, "real floating"):
        z = astype(z, default_float(xp, z), xp)
    if z.ndim == 1:
        z = xp.reshape(z, (int(z.shape[0]), 1))
    if z.ndim != 2 or int(z.shape[1]) == 0:
        raise LogitkitValueError(expected("logits", "of shape (N, K) with K ≥ 1, or (N,)",
                                          Described(f"shape {tuple(z.shape)}")))
    if from_probs:
        return xp, probability_logs(z, xp, floor)
    if int(z.shape[1]) == 1:
        z = xp.concat([xp.zeros_like(z), z], axis=1)
    return xp, z


def rowwise(fn: Callable[[Any], Any], z: Any) -> Any:
    """``fn`` of ``z``, on each row block of a partitioned array (lazily)."""
    return map_row_blocks(fn, z) if partitioned(z) else fn(z)


def map_rows(fn: Callable[[np.ndarray], np.ndarray], z: Any, xp: Any) -> Any:
    """``fn`` (NumPy rows ``(r, K)`` → ``(r, K)``) applied to ``z`` of any array library, the
    result in ``z``'s library, dtype and device; partitioned arrays stay lazy, block by block."""
    def rows(block: Any) -> np.ndarray:
        host = np.asarray(block)
        return fn(host).astype(host.dtype, copy=False)

    if partitioned(z):
        return map_row_blocks(rows, z)
    try:
        host = to_numpy(z)
    except Exception:  # a JAX tracer (jax.jit), which has no values to read
        raise LogitkitTypeError(expected(
            "logits", "a concrete array: this calibrator maps its rows in NumPy, so it cannot "
            "be traced (jax.jit) or differentiated", z)) from None
    out = rows(host)
    if is_numpy(xp):
        return out
    import array_api_compat

    return xp.asarray(out, device=array_api_compat.device(z))


# --------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Calibrator]] = {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


#: A fitted field's check for :meth:`Calibrator.from_dict`: ``(shape, rule)``.  Each extent of
#: the shape is a number, ``"K"`` (the class count), ``"C"`` (the calibrated classes of the
#: one-vs-rest calibrators: 1 for two classes, else K) or another name, bound by its first use
#: and equal wherever it recurs, with an optional ``"+1"``; the rule is ``"finite"``,
#: ``"positive"`` (finite, > 0), ``"non-negative"`` (finite, ≥ 0) or ``"probability"`` (in
#: [0, 1]).
FieldCheck = tuple[tuple[Any, ...], str]

_RULES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "finite": ("finite number", np.isfinite),
    "positive": ("finite number > 0", lambda a: np.isfinite(a) & (a > 0)),
    "non-negative": ("finite number ≥ 0", lambda a: np.isfinite(a) & (a >= 0)),
    "probability": ("number in [0, 1]", lambda a: (a >= 0) & (a <= 1)),
}


def _numbers(value: Any) -> np.ndarray | None:
    """``value`` (a number, or nested lists of numbers) as a float64 array; None for anything
    else (a bool, a string, ``None``, a ragged list)."""
    def numeric(v: Any) -> bool:
        if isinstance(v, list):
            return all(numeric(u) for u in v)
        if isinstance(v, np.ndarray):
            return v.dtype.kind in "fiu"
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    if not numeric(value):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged
        return None


def _extent(dim: Any, sizes: dict[str, int]) -> int | None:
    """The extent ``dim`` stands for, None while its name is unbound."""
    if isinstance(dim, int):
        return dim
    name, _, plus = str(dim).partition("+")
    return sizes[name] + int(plus or 0) if name in sizes else None


def _wanted(shape: tuple[Any, ...], rule: str, sizes: dict[str, int]) -> str:
    """What a field should hold, in words: "a finite number > 0", "4 finite numbers"."""
    one = _RULES[rule][0]
    many = one.replace("number", "numbers", 1)
    if not shape:
        return f"a {one}"
    dims = [_extent(d, sizes) for d in shape]
    if len(dims) == 1:
        return f"a list of {many}" if dims[0] is None else f"{dims[0]} {many}"
    return f"a {' × '.join('n' if d is None else str(d) for d in dims)} array of {many}"


def check_fitted(checks: dict[str, FieldCheck], fitted: dict[str, Any], k: int,
                 where: str) -> dict[str, int]:
    """Raise :class:`LogitkitValueError` unless every field of ``checks`` is in ``fitted``:
    numbers of the shape and rule it declares for ``k`` classes.  The one check of saved
    calibrators (:meth:`Calibrator.from_dict`), driven by each class's own declaration
    (:meth:`Calibrator._fitted_checks`), so that a hand-edited or damaged save is refused when
    it is read, not found out as NaN probabilities or a broadcast error when it is applied.

    Returns the extents the named dimensions were bound to."""
    sizes = {"K": k, "C": 1 if k == 2 else k}
    for name, (shape, rule) in checks.items():
        arg = f"{where}['fitted'][{name!r}]"
        if name not in fitted:
            raise LogitkitValueError(expected(arg, _wanted(shape, rule, sizes),
                                              Described("nothing (it is missing)")))
        arr = _numbers(fitted[name])
        if arr is None:
            raise LogitkitValueError(expected(arg, _wanted(shape, rule, sizes), fitted[name]))
        if arr.ndim != len(shape):
            raise LogitkitValueError(expected(arg, _wanted(shape, rule, sizes),
                                              Described(f"shape {arr.shape}")))
        for dim, got in zip(shape, arr.shape, strict=True):
            need = _extent(dim, sizes)
            if need is None:
                base, _, plus = str(dim).partition("+")
                need = sizes[base] = got - int(plus or 0)
                if need < 1:
                    raise LogitkitValueError(expected(arg, _wanted(shape, rule, sizes),
                                                      Described(f"shape {arr.shape}")))
                need = got
            if got != need:
                raise LogitkitValueError(expected(arg, _wanted(shape, rule, sizes),
                                                  Described(f"shape {arr.shape}")))
        bad = ~_RULES[rule][1](arr)
        if bad.any():
            raise LogitkitValueError(expected(arg, _wanted(shape, rule, sizes),
                                              Described(f"{float(arr[bad].flat[0])!r}")))
    return sizes


class Calibrator(Estimator):
    """Base of every calibrator: logits in, calibrated logits (and probabilities) out.

    Subclasses set ``method`` (the name ``select`` and the command line use), list the fitted
    attributes that define them in ``_fitted_fields`` and implement ``_fit(data)`` and
    ``_transform(z, xp)``.
    """

    method: ClassVar[str] = ""
    _fitted_attr = "n_classes_"
    #: Fitted attributes written by :meth:`to_dict`, besides ``n_classes_``.
    _fitted_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether ``-inf`` logits (excluded classes) are accepted by ``fit``.
    _allow_neg_inf: ClassVar[bool] = False

    from_probs: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            _REGISTRY[cls.method] = cls

    # ---------------------------------------------------------------- hooks

    def _fit(self, data: FitData) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, z: Any, xp: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_params(self) -> None:
        if not isinstance(self.from_probs, bool):
            raise LogitkitTypeError(expected("from_probs", "a bool", self.from_probs))

    def _iteration_settings(self) -> tuple[int, float]:
        """``(max_iter, tol)`` checked: a positive int and a number in ``(0, 1]``."""
        me: Any = self  # the calibrators that iterate have both parameters
        max_iter = check_int(me.max_iter, "max_iter")
        tol = check_number(me.tol, "tol", low=0.0, low_open=True, high=1.0)
        return max_iter, tol

    def _record_convergence(self, n_iter: int, converged: bool, detail: str) -> None:
        """Store ``n_iter_`` and ``converged_``; a fit that stopped before converging warns
        (at the user's ``fit`` call), never silently."""
        self.n_iter_ = n_iter
        self.converged_ = converged
        if not converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in {n_iter} passes over the data "
                f"({detail}); increase max_iter, add regularisation, or check the data.",
                convergence_warning(), stacklevel=5)

    # ---------------------------------------------------------------- contract

    def fit(self, logits: Any, y: Any, sample_weight: Any = None) -> Calibrator:
        """Fit the calibrator on held-out logits and labels.

        Args:
            logits: ``(N, K)`` logits, or ``(N,)`` binary logits (the logit of class 1);
                probabilities with ``from_probs=True``.  NumPy, PyTorch, JAX, array-likes, or
                Dask arrays (for the parametric calibrators each optimiser step is then one
                map-reduce over the row blocks).
            y: ``(N,)`` integer labels in ``[0, K)``.
            sample_weight: optional ``(N,)`` non-negative weights, not all zero.

        Returns:
            ``self``, fitted.
        """
        self._check_params()
        data = fit_data(logits, y, sample_weight, from_probs=self.from_probs,
                        allow_neg_inf=self._allow_neg_inf)
        return self._fit_data(data)

    def _fit_data(self, data: FitData, warm: Calibrator | None = None) -> Calibrator:
        """Fit on validated rows (``fit`` after its input pass; :func:`select`'s folds).

        ``warm``: a fitted calibrator of the same kind whose parameters start the iterations
        (select fits every candidate on all rows first, then each fold from there).
        """
        self._check_params()
        self._warm = warm
        try:
            with small_problem_threads(data.n * data.k):
                self._fit(data)
        finally:
            del self._warm
        if self.from_probs:
            #: the log-probability that a probability of 0 is read as (:func:`zero_floor`)
            self.zero_floor_ = data.floor
        self.n_classes_ = data.k
        return self

    def _checked_input(self, logits: Any) -> tuple[Any, Any]:
        check_is_fitted(self)
        xp, z = input_logits(logits, self.from_probs,
                             float(self.zero_floor_) if self.from_probs else -math.inf)
        if int(z.shape[1]) != self.n_classes_:
            raise LogitkitValueError(expected(
                "logits", f"with {self.n_classes_} classes (columns) like the fit",
                Described(f"{int(z.shape[1])} columns")))
        return xp, z

    def transform(self, logits: Any) -> Any:
        """Calibrated logits: ``softmax`` of them is the calibrated probabilities.

        Args:
            logits: ``(N, K)`` or ``(N,)`` logits (probabilities with ``from_probs``), of any
                supported array library.

        Returns:
            ``(N, K)`` logits of the input's array type, floating dtype and device.  A class
            whose input logit is ``-inf`` (excluded from its row) stays ``-inf``, so its
            probability is exactly 0 whatever the map.
        """
        return self._calibrated(logits)

    def _calibrated(self, logits: Any, then: Callable[[Any], Any] | None = None) -> Any:
        """``then`` (``softmax``, ``log_softmax``; nothing for :meth:`transform`) of the
        calibrated logits, in the input's dtype, computed in float32 at least: float16 and
        bfloat16 input is mapped in float32 and only the result is rounded to its dtype (the
        library's rule for half precision).  Mapped in float16, calibrated logits of a few
        hundred are rounded by a tenth, and their probabilities were 0.02-0.1 off (a row of
        60000 overflowed to ``inf``); rounded after the softmax, a probability is off by at
        most float16's 2⁻¹¹."""
        xp, z = self._checked_input(logits)
        finish = (lambda t: t) if then is None else then
        if partitioned(z):  # the NumPy map on each row block, lazily
            def block(b: Any) -> np.ndarray:
                host = np.asarray(b)
                work = host.astype(compute_dtypes(host, None, np)[0], copy=False)
                return np.asarray(finish(self._excluded(self._transform(work, np), work,
                                                        np))).astype(host.dtype, copy=False)

            return map_row_blocks(block, z)
        work, out = compute_dtypes(z, None, xp)
        if work == out:
            return finish(self._excluded(self._transform(z, xp), z, xp))
        z = astype(z, work, xp)
        return astype(finish(self._excluded(self._transform(z, xp), z, xp)), out, xp)

    def _excluded(self, out: Any, z: Any, xp: Any) -> Any:
        """``out`` with ``-inf`` wherever the logits ``z`` are ``-inf``: a class excluded from
        a row (masked) stays excluded, probability exactly 0, whatever the map (structured
        scaling's uniform mixture gave one 0.10, histogram binning its bin's share).  Not for
        probabilities (``from_probs``): a probability of 0 is read as the fit's floor."""
        if self.from_probs:
            return out
        if is_numpy(xp):  # the minimum first: a pass without a mask (1e5 x 100: 3 ms, not 12)
            if z.size == 0 or not np.isneginf(z.min()):
                return out
            return np.where(np.isneginf(z), -np.inf, out)
        return xp.where(xp.isinf(z) & (z < 0), xp.asarray(-math.inf, dtype=out.dtype), out)

    def fit_transform(self, logits: Any, y: Any, sample_weight: Any = None) -> Any:
        """``fit(logits, y, sample_weight).transform(logits)``."""
        return self.fit(logits, y, sample_weight).transform(logits)

    def predict_proba(self, logits: Any) -> Any:
        """Calibrated probabilities ``softmax(transform(logits))``, ``(N, K)``, input's type
        (and dtype: half precision is calibrated in float32, then rounded)."""
        return self._calibrated(logits, lambda z: softmax(z, axis=-1))

    def predict_log_proba(self, logits: Any) -> Any:
        """``log_softmax(transform(logits))``, exact where the probability underflows."""
        return self._calibrated(logits, lambda z: log_softmax(z, axis=-1))

    def predict(self, logits: Any) -> Any:
        """The most probable class of each row after calibration, ``(N,)``, input's type."""
        z = self.transform(logits)
        return namespace(z).argmax(z, axis=-1)

    @property
    def classes_(self) -> np.ndarray:
        """The class labels ``0, 1, …, K − 1`` once fitted (scikit-learn's scorers read them
        beside ``predict_proba``: without them ``neg_log_loss`` in ``cross_val_score`` or
        ``GridSearchCV`` was NaN, and a grid search chose its first point)."""
        k = getattr(self, "n_classes_", None)
        if k is None:
            raise AttributeError(f"{type(self).__name__} is not fitted: no classes_")
        return np.arange(int(k))

    def score(self, logits: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean (weighted) log-likelihood of the labels: the negative NLL, higher is better.

        A calibrator exists to improve probabilities, not the arg-max, so its score is the
        log-likelihood rather than scikit-learn's default accuracy.

        Args:
            logits: as for :meth:`transform`.
            y: ``(N,)`` integer labels.
            sample_weight: optional ``(N,)`` non-negative weights.

        Returns:
            A float ``≤ 0``.
        """
        logp = np.asarray(to_numpy(self.predict_log_proba(logits)), dtype=np.float64)
        n, k = logp.shape
        # the labels and weights are checked as fit checks them (a label of -1 was scored as
        # the last class, 2.9 as 2, negative weights were taken)
        y_in, w_in = _labels_and_weights(y, sample_weight, n)
        labels = np.asarray(y_in)
        w = None if w_in is None else np.asarray(w_in)
        bad_w = 0.0 if w is None else float(np.count_nonzero(~(np.isfinite(w) & (w >= 0))))
        _check_label_and_weight_counts(float(np.count_nonzero((labels < 0) | (labels >= k))),
                                       bad_w, float(n if w is None else w.sum()), k)
        picked = logp[np.arange(n), labels]
        return float(np.average(picked, weights=w))

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """The fitted calibrator as JSON-ready data, restored exactly by :meth:`from_dict`.

        Returns:
            ``{"schema_version", "method", "params", "n_classes", "input", "fitted"}``:
            the constructor's arguments, the class count, ``"probs"`` or ``"logits"`` (what
            ``transform`` expects) and every fitted attribute (lists of floats).

        Examples:
            >>> import json
            >>> import numpy as np
            >>> from logitkit.calibration import Calibrator, TemperatureScaler
            >>> rng = np.random.default_rng(0)
            >>> z, y = rng.normal(size=(200, 3)) * 3, rng.integers(0, 3, 200)
            >>> ts = TemperatureScaler().fit(z + 3 * np.eye(3)[y], y)
            >>> text = json.dumps(ts.to_dict())
            >>> again = Calibrator.from_dict(json.loads(text))
            >>> again.temperature_ == ts.temperature_, type(again).__name__
            (True, 'TemperatureScaler')
        """
        check_is_fitted(self)
        fitted = {"n_classes_": int(self.n_classes_), **self._encode_fitted()}
        if self.from_probs:
            fitted["zero_floor_"] = float(self.zero_floor_)
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "params": {k: _jsonable(v) for k, v in self.get_params().items()},
            "n_classes": int(self.n_classes_),
            "input": "probs" if self.from_probs else "logits",
            "fitted": fitted,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Calibrator:
        """A fitted calibrator from :meth:`to_dict`'s data (or its JSON text).

        Args:
            data: the dictionary (or JSON string) written by :meth:`to_dict`.

        Returns:
            A fitted calibrator of the class named by ``data["method"]`` whose
            ``transform`` equals the saved one's.
        """
        if isinstance(data, str):
            data = json.loads(data)
        return cls._from_dict(data, "data")

    @classmethod
    def _from_dict(cls, data: Any, where: str) -> Calibrator:
        """:meth:`from_dict`, its errors naming the dictionary ``where`` (a report's
        ``calibrator``, a mixture's component).

        Everything ``transform`` reads is checked before it is set (:func:`check_fitted`, by
        each class's :meth:`_fitted_checks`): a missing, non-numeric, non-finite or misshapen
        value, or a class count that disagrees, is a :class:`LogitkitValueError` here, not a
        NaN or a broadcast error when the calibrator is applied.  The fit's diagnostics
        (``n_iter_``, ``converged_``, ...) are restored as saved, unchecked: nothing reads
        them to compute."""
        if not isinstance(data, dict):
            raise LogitkitTypeError(expected(where, "a dict written by to_dict", data))
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:  # not True, not 1.0
            raise LogitkitValueError(expected(f"{where}['schema_version']",
                                              str(SCHEMA_VERSION), version))
        method = data.get("method")
        if method not in _REGISTRY:
            raise LogitkitValueError(expected(
                f"{where}['method']", f"one of {', '.join(sorted(_REGISTRY))}", method))
        target = _REGISTRY[str(method)]
        if cls is not Calibrator and not issubclass(target, cls):
            raise LogitkitValueError(expected(f"{where}['method']", repr(cls.method), method))
        for part in ("params", "fitted"):
            if not isinstance(data.get(part), dict):
                raise LogitkitValueError(expected(f"{where}[{part!r}]", "a dict",
                                                  data.get(part)))
        defaults = {p: getattr(target(), p) for p in target._param_names()}
        params = {}
        for name, value in data["params"].items():
            if isinstance(defaults.get(name), tuple) and isinstance(value, list):
                value = tuple(value)
            params[name] = value
        est = target(**params)
        est._check_params()
        fitted = dict(data["fitted"])
        k = fitted.pop("n_classes_", None)
        if type(k) is not int or k < 2:
            raise LogitkitValueError(expected(f"{where}['fitted']['n_classes_']",
                                              "an integer ≥ 2", k))
        if "n_classes" in data and data["n_classes"] != k:
            raise LogitkitValueError(expected(
                f"{where}['n_classes']", f"{k}, the fitted class count", data["n_classes"]))
        checks = est._fitted_checks()
        if est.from_probs and "zero_floor_" in fitted:
            checks["zero_floor_"] = ((), "finite")
        check_fitted(checks, fitted, k, where)
        est.n_classes_ = k
        if est.from_probs:  # saved before the floor was fitted: the rule of then, LOG_TINY
            est.zero_floor_ = float(fitted.pop("zero_floor_", LOG_TINY))
        est._check_fitted(fitted, where)
        est._decode_fitted(fitted)
        est._restore()
        return est

    def _fitted_checks(self) -> dict[str, FieldCheck]:
        """What :meth:`from_dict` checks of the saved fields ``transform`` reads (``{name:
        (shape, rule)}``, see :data:`FieldCheck`); parameters are set, the class count not yet
        (it is ``K`` in the shapes)."""
        return {}

    def _check_fitted(self, fitted: dict[str, Any], where: str) -> None:
        """Checks of saved values beyond :meth:`_fitted_checks`'s (how fields relate), after
        those passed; nothing by default."""

    def _encode_fitted(self) -> dict[str, Any]:
        """The fitted attributes of ``_fitted_fields`` as JSON-ready values (numbers, lists)."""
        return {name: _jsonable(getattr(self, name)) for name in self._fitted_fields}

    def _decode_fitted(self, fitted: dict[str, Any]) -> None:
        """Set the fitted attributes from :meth:`_encode_fitted`'s values (lists become
        float64 arrays)."""
        for name, value in fitted.items():
            if isinstance(value, list):
                value = np.asarray(value, dtype=np.float64)
            setattr(self, name, value)

    def _restore(self) -> None:
        """Rebuild derived attributes after :meth:`from_dict` (nothing by default)."""


class IdentityCalibrator(Calibrator):
    """No calibration: ``transform`` returns the logits unchanged (the method ``"none"``).

    The baseline every choice is measured against: :func:`select` always includes it, so
    "leave the model alone" is an answer it can give.

    Args:
        from_probs: the inputs are probabilities (their logs are returned).

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import IdentityCalibrator
        >>> IdentityCalibrator().fit(np.array([[2.0, 0.0]]), np.array([0])).transform(
        ...     np.array([[1.0, 3.0]]))
        array([[1., 3.]])
    """

    method = "none"
    _allow_neg_inf = True

    def __init__(self, *, from_probs: bool = False) -> None:
        self.from_probs = from_probs

    def _fit(self, data: FitData) -> None:
        pass

    def _transform(self, z: Any, xp: Any) -> Any:
        return z


def method_names() -> list[str]:
    """The registered calibration methods, by name."""
    return sorted(_REGISTRY)


def calibrator_class(method: str) -> type[Calibrator]:
    return _REGISTRY[method]
