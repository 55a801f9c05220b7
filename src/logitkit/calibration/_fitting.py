"""Minimisers for the calibrators' convex objectives, in float64, with convergence reported.

The objectives are a mean negative log-likelihood over the rows plus a ridge penalty; one
evaluation is one pass over the rows (one map-reduce on partitioned arrays).  Two minimisers:

- :func:`newton` for small parameter vectors (temperature aside, at most a few hundred
  numbers): a Newton step from the exact gradient and a Hessian (exact, or summed over an evenly
  spaced subsample of the rows when all rows would cost far more than the gradient), solved by
  an eigendecomposition that leaves directions of zero curvature alone (the gauge of
  unpenalised biases), with an Armijo backtracking line search.  Convergence is tested on the
  exact gradient of all rows, so a subsampled Hessian changes the path, never the answer.
- :func:`lbfgs` for matrix maps (``K(K + 1)`` parameters): L-BFGS on the exact value and
  gradient.

Both stop when the largest gradient entry is at most ``tol`` and report passes, convergence
and the final gradient; neither hides a failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._namespace import LogitkitValueError, expected

__all__ = ["CACHE_FEATURES", "Result", "lbfgs", "newton", "small_problem_threads"]

#: In-memory inputs of at most this many feature values have their features computed once
#: (float64: 512 MiB at most) when a fit makes many passes over them.
CACHE_FEATURES = 1 << 26
#: Inputs of at most this many values are fitted with single-threaded BLAS (see below).
SMALL_INPUT = 1 << 20
_CONTROLLER: list[Any] = []


@contextlib.contextmanager
def small_problem_threads(n_values: int) -> Iterator[None]:
    """Single-threaded BLAS while fitting an input of at most :data:`SMALL_INPUT` values.

    The small matrices of such fits (a Hessian's eigendecomposition, products with a few
    thousand rows) gain nothing from BLAS threads, and on a busy machine OpenBLAS's thread
    hand-offs made them 10× slower (an eigendecomposition of 110 × 110 took 240 ms on two
    loaded cores, 20 ms single-threaded).  Uses threadpoolctl (which scikit-learn installs)
    when it is there; otherwise it changes nothing.
    """
    if n_values > SMALL_INPUT:
        yield
        return
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings it
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    controller = _CONTROLLER[0]
    if controller is None:  # pragma: no cover
        yield
        return
    # The limit is the process's: Python threads fitting at once share one limiter, set by the
    # first to enter and restored by the last to leave (each restoring its own snapshot would
    # leave BLAS single-threaded for good when the exits interleave).
    with _LIMIT_LOCK:
        if _LIMIT["depth"] == 0:
            with _any_thread_may_set():
                _LIMIT["limiter"] = controller.limit(limits=1, user_api="blas")
        _LIMIT["depth"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT["depth"] -= 1
            if _LIMIT["depth"] == 0:
                with _any_thread_may_set():
                    _LIMIT.pop("limiter").restore_original_limits()


@contextlib.contextmanager
def _any_thread_may_set() -> Iterator[None]:
    """Let this thread set OpenBLAS's (process-wide) thread count, and no thread keep that
    right after.  threadpoolctl 3.8 lets only a "controlling" thread set it, the first to try,
    which keeps the right until it leaves a ``with`` block; the limiter above is entered by
    one thread and restored by whichever leaves last, so no block ends, and the first fit's
    thread (the main one, mostly) kept the right for good: a fit in any other thread got
    OpenBLAS's full thread count where it asked for one (and on a busy machine the thread
    hand-offs this limit avoids), and a product's rounding that follows the thread count
    made it differ from the same fit in the main thread.  The set and the restore happen
    under ``_LIMIT_LOCK``, so the right is cleared just around them."""
    try:
        from threadpoolctl import OpenBLASController
        clear = OpenBLASController.clear_controlling_thread
    except (ImportError, AttributeError):  # pragma: no cover - threadpoolctl before 3.8
        clear = None
    if clear is not None:
        clear(force=True)
    try:
        yield
    finally:
        if clear is not None:
            clear(force=True)


_LIMIT_LOCK = threading.Lock()
_LIMIT: dict[str, Any] = {"depth": 0}


def _reset_limit_after_fork() -> None:
    # a child forked while another thread held the lock or the limit starts afresh
    global _LIMIT_LOCK
    _LIMIT_LOCK = threading.Lock()
    _LIMIT.clear()
    _LIMIT["depth"] = 0


os.register_at_fork(after_in_child=_reset_limit_after_fork)


@dataclass
class Result:
    """What a minimiser found: parameters, objective, largest gradient entry, passes over the
    data, whether it converged and by which test."""

    theta: np.ndarray
    value: float
    grad_max: float
    n_iter: int
    converged: bool
    #: which test ended the fit: "gradient" (``max |∇f| <= tol``), "noise" (the decreases fell
    #: below the objective's sampling noise), "precision" (below float64's), "max_iter", or
    #: "line search" (no step lowered the objective)
    stopped_by: str = "gradient"


def _check_finite(f: float, g: np.ndarray) -> None:
    if not (math.isfinite(f) and np.all(np.isfinite(g))):
        raise LogitkitValueError(expected(
            "logits", "finite values that keep the objective finite",
            "a NaN or infinite objective (overflow in the calibrated logits)"))


def _newton_step(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``-(H + δI)⁻¹ g`` by Cholesky, with ``δ = 1e-10·max diag H`` (raised ×100 until the
    factorisation succeeds): a flat direction of ``H`` (the gauge of unpenalised biases) gets
    no component of ``g`` and so no step, and elsewhere the step is Newton's to 1e-10."""
    h = 0.5 * (h + h.T)
    scale = float(np.max(np.abs(np.diag(h)))) if h.size else 0.0
    if not scale > 0:
        return -g
    eye = np.eye(h.shape[0])
    delta = 1e-10 * scale
    while delta <= scale:
        shifted = h + delta * eye
        try:
            np.linalg.cholesky(shifted)  # positive definite at this shift
        except np.linalg.LinAlgError:
            delta *= 100.0
            continue
        # one LU solve: NumPy has no triangular solve, and two general solves with the factor
        # cost twice as much (K = 1000 vector scaling: 1.5 s of its 7.6)
        return -np.linalg.solve(shifted, g)
    return -g / scale  # pragma: no cover - H is positive semi-definite by construction


def newton(
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
    theta: np.ndarray,
    *,
    max_iter: int,
    tol: float,
) -> Result:
    """Damped Newton: ``evaluate(θ) -> (f, ∇f, H)`` is one pass over the rows.

    Args:
        evaluate: the objective, its exact gradient and a positive semi-definite Hessian.
        theta: the starting point.
        max_iter: the most passes over the data.
        tol: converged when ``max |∇f| <= tol``.

    Returns:
        A :class:`Result`; ``n_iter`` counts passes (line-search trials included).
    """
    f, g, h = evaluate(theta)
    _check_finite(f, g)
    passes = 1
    while passes < max_iter:
        gmax = float(np.max(np.abs(g))) if g.size else 0.0
        if gmax <= tol:
            return Result(theta, f, gmax, passes, True)
        with small_problem_threads(0):  # a dense solve of at most a few hundred unknowns
            step = _newton_step(h, g)
        slope = float(g @ step)
        if slope >= 0:  # not a descent direction (an indefinite Hessian): steepest descent
            step, slope = -g, -float(g @ g)
        t = 1.0
        while True:
            trial = theta + t * step
            f1, g1, h1 = evaluate(trial)
            passes += 1
            if math.isfinite(f1) and f1 <= f + 1e-4 * t * slope:
                break
            if passes >= max_iter or t < 1e-12:
                gmax = float(np.max(np.abs(g)))
                return Result(theta, f, gmax, passes, False,
                              "max_iter" if passes >= max_iter else "line search")
            t *= 0.5
        _check_finite(f1, g1)
        theta, f, g, h = trial, f1, g1, h1
    gmax = float(np.max(np.abs(g))) if g.size else 0.0
    return Result(theta, f, gmax, passes, gmax <= tol, "gradient" if gmax <= tol else "max_iter")


#: Whether L-BFGS's noise rule asks that the fit have settled (see :func:`lbfgs`); False
#: drops that guard (for ``benchmarks/bench_stopping.py``, which compares the two).
SETTLED = True
#: Whether the noise rule may also stop after a step larger than ``ε`` (at most 10 ε) when the
#: quadratic model foretold that step (see :func:`lbfgs`); False keeps the rule that waits for a
#: step of at most ``ε`` (for ``benchmarks/bench_stopping.py``, which compares the two).
FORETOLD = True
#: A coarse line search that fails where the decrease it asked for, ``−t·gᵀd``, is at most this
#: fraction of ``max(|f|, 1)`` (float32's unit roundoff, ``2⁻²⁴``) goes on with the exact
#: evaluation at once (see :func:`lbfgs`), instead of backtracking into the coarse values'
#: rounding.
COARSE_RESOLUTION = 2.0 ** -24


def lbfgs(
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    memory: int = 20,
    grad_max: Callable[[np.ndarray], float] | None = None,
    coarse: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
    noise: Callable[[], float] | None = None,
    project: Callable[[np.ndarray, float, np.ndarray], tuple[np.ndarray, float, np.ndarray]]
    | None = None,
) -> Result:
    """L-BFGS on ``evaluate(θ) -> (f, ∇f)`` (one pass over the rows per call).

    The two-loop recursion (Nocedal & Wright 2006, Algorithm 7.4) with the initial inverse
    Hessian ``(sᵀy / yᵀy) I``, and a backtracking line search from the unit step (Armijo's
    condition, ``c₁ = 1e-4``; quadratic interpolation between halving and a tenth).  A pair
    with ``sᵀy ≤ 0`` is not stored, so the inverse Hessian stays positive definite.  Written
    here rather than SciPy's L-BFGS-B: at ``K(K + 1) = 10,100`` parameters its bound-handling
    bookkeeping cost 30 ms a step (a fifth of a pass over 1e5 rows), and importing
    ``scipy.optimize`` 0.3-1 s per process.

    Args:
        evaluate: the objective and its exact gradient.
        theta: the starting point.
        max_iter: the most passes over the data.
        tol: converged when ``max |∇f| <= tol``.
        memory: the number of correction pairs kept.
        grad_max: for a preconditioned problem, the largest gradient entry in the original
            parameters given that of the optimised ones (the test is applied to it).
        coarse: a cheaper, less precise ``evaluate`` (float32 products) used for the steps
            while its errors are far below the decreases being compared.  The minimiser
            switches to ``evaluate`` for good when a coarse gradient passes the test or a
            coarse line search fails (its step below ``1e-12``, or the decrease it asked for
            below :data:`COARSE_RESOLUTION` of the objective: the coarse values' rounding,
            ~``2⁻²⁴|f|`` at worst, can then hide it; backtracking on to ``1e-12`` cost a dozen
            passes in flat fits, ``bench_stopping.py``'s Dirichlet scaling of 17 classes on
            60,000 rows of logits × 0.01 21 passes where float64 took 6).  The gradient test
            is always passed on ``evaluate``'s values, and a fit that ends for any reason but ``noise`` reports them (one more
            pass when it stopped on coarse ones); one that the noise rule ends reports the
            coarse value, whose error the caller bounds far below ``ε``.
        noise: the current noise threshold ``ε`` of the objective: the minimiser also stops
            (converged) once the last step lowered ``f`` by at most ``ε`` and the quadratic
            model predicts at most ``ε`` more (``-½ gᵀd`` along the next direction ``d``),
            provided the fit has settled (:data:`SETTLED`): the decreases are shrinking,
            seen and foretold (the last at most the one before it, the predicted one at most
            the last), and a gradient step would find at most ``ε`` even at the least
            curvature the steps have seen (``½‖g‖² / min sᵀy/sᵀs <= ε``), which the model's
            inverse Hessian can hide in directions it has not explored.  On a plateau (nearly
            constant logits, nearly separable directions) the decreases can start below
            ``ε`` and then grow 2.6× a pass: structured scaling of 40 classes on 60 rows of
            logits × 0.01 stopped there, "converged", 0.22 above its minimum, and of 100
            classes on 60 rows 0.65 above the best point 3,000 passes reach (its test NLL
            worse than the uncalibrated logits'); the first now ends within ``ε``, the second
            at ``max_iter``, reported.  ``benchmarks/bench_stopping.py`` (144 fits): noise
            stops more than ``ε`` above the optimum 29 → 1 (1.06 ``ε``), for 21% more passes
            in all, nearly all on small or nearly constant logits; the speed benchmark's
            1e5 × 100 fits stop after the same passes.
            A settled fit also stops after a last step larger than ``ε`` that the model
            foretold (:data:`FORETOLD`): at most ``10 ε``, within a factor 1.25 of the
            decrease the model forecast for it, and the model's forecast of what is left (the
            next predicted decrease, summed geometrically at its ratio to the last decrease)
            at most ``ε``.  Waiting for a step below ``ε`` costs a pass that
            the model already accounted for: ``bench_stopping.py`` 6,248 → 6,199 passes, one
            fewer in 48 of the 144 fits and more in none, every new gap to the optimum at most
            1.001 ``ε`` (no cap at ``10 ε``: structured scaling on 60 rows × 40 classes stopped
            after a forecast step of 1.26 with one pair, 0.22 above the optimum); the speed
            benchmark's matrix, structured and Dirichlet fits 6 / 4 / 5 → 5 / 3 / 4 passes
            (median of 10 interleaved, 0.480 → 0.440, 0.453 → 0.400, 0.418 → 0.352 s).
        project: ``(θ, f, ∇f) -> (θ′, f′, ∇f′)`` with ``f′ <= f`` computed without a pass
            (an exact minimisation over directions the data term does not see), applied to
            the start and to every accepted step; the pairs are taken between projected
            points, which keeps them secant pairs of the objective.

    Returns:
        A :class:`Result`; ``n_iter`` counts passes and ``stopped_by`` says which test ended
        the fit.  A step that lowers ``f`` by less than ``1e-15·max(|f|, 1)`` also counts as
        converged (``"precision"``): the minimum to the precision of the objective in float64.
    """
    def gmax_of(g: np.ndarray) -> float:
        return grad_max(g) if grad_max is not None else float(np.max(np.abs(g)))

    current = coarse if coarse is not None else evaluate
    f, g = current(theta)
    _check_finite(f, g)
    passes = 1
    if project is not None:
        theta, f, g = project(theta, f, g)

    def exact(theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Switch to the exact evaluation for good: the value and gradient at ``theta``."""
        nonlocal passes, current
        current = evaluate
        f, g = evaluate(theta)
        _check_finite(f, g)
        passes += 1
        return f, g

    def limit() -> int:  # while coarse, one pass is kept for the exact values at the end
        return max_iter - (current is not evaluate)

    def finish(theta: np.ndarray, f: float, g: np.ndarray, converged: bool,
               why: str) -> Result:
        if current is not evaluate and why != "noise":  # the exact objective and gradient
            f, g = exact(theta)
        gmax = gmax_of(g)
        if gmax <= tol:
            converged, why = True, "gradient"
        return Result(theta, f, gmax, passes, converged, why)

    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    decrease = earlier = forecast = math.inf
    while True:
        gmax = gmax_of(g)
        if gmax <= tol:
            if current is evaluate:
                return Result(theta, f, gmax, passes, True, "gradient")
            f, g = exact(theta)  # confirm on the exact gradient, and go on with it if need be
            continue
        if passes >= limit():
            return finish(theta, f, g, False, "max_iter")
        d = -g
        if pairs:  # the two-loop recursion: d = -H g
            alphas = []
            for s_i, y_i, rho in reversed(pairs):
                a = rho * float(s_i @ d)
                alphas.append(a)
                d = d - a * y_i
            s_i, y_i, _ = pairs[-1]
            d = d * (float(s_i @ y_i) / float(y_i @ y_i))
            for (s_i, y_i, rho), a in zip(pairs, reversed(alphas), strict=True):
                d = d + (a - rho * float(y_i @ d)) * s_i
        slope = float(g @ d)
        if not slope < 0:  # lost positive definiteness to rounding: restart from the gradient
            pairs.clear()
            d, slope = -g, -float(g @ g)
        predicted = -0.5 * slope
        if noise is not None and pairs:
            eps = noise()
            settled = not SETTLED or (
                decrease <= earlier and predicted <= decrease
                and 0.5 * float(g @ g) <= eps * min(float(s_i @ y_i) / float(s_i @ s_i)
                                                   for s_i, y_i, _ in pairs))
            # a last step of at most 10 ε whose decrease was within a factor 1.25 of the
            # model's forecast for it: the model is trusted for the rest, the geometric sum of
            # decreases shrinking at the ratio of the predicted one to the last
            foretold = FORETOLD and decrease <= 10.0 * eps and (
                0.8 * forecast <= decrease <= 1.25 * forecast and predicted < decrease
                and predicted / (1.0 - predicted / decrease) <= eps)
            if (decrease <= eps or foretold) and predicted <= eps and settled:
                return finish(theta, f, g, True, "noise")
        # the first step (no curvature yet) moves by at most 1 in the largest entry
        t = 1.0 if pairs else min(1.0, 1.0 / max(float(np.max(np.abs(g))), 1e-300))
        accepted = False
        while True:
            trial = theta + t * d
            f1, g1 = current(trial)
            passes += 1
            if math.isfinite(f1) and f1 <= f + 1e-4 * t * slope:
                accepted = True
                break
            unresolved = (current is not evaluate
                          and -slope * t <= COARSE_RESOLUTION * max(abs(f), 1.0))
            if passes >= limit() or t < 1e-12 or unresolved:
                break
            if math.isfinite(f1):  # minimiser of the quadratic through f, slope and f1
                t = min(0.5 * t, max(0.1 * t, -slope * t * t / (2.0 * (f1 - f - slope * t))))
            else:
                t *= 0.1
        if not accepted:
            if current is not evaluate and (t < 1e-12 or unresolved):
                f, g = exact(theta)  # the coarse values cannot resolve this step
                decrease = math.inf
                continue
            return finish(theta, f, g, False,
                          "max_iter" if passes >= limit() else "line search")
        _check_finite(f1, g1)
        if project is not None:
            trial, f1, g1 = project(trial, f1, g1)
        s_new, y_new = trial - theta, g1 - g
        sy = float(s_new @ y_new)
        if sy > 1e-12 * float(y_new @ y_new):
            pairs.append((s_new, y_new, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        earlier, decrease = decrease, f - f1
        forecast = predicted if t == 1.0 else math.inf  # the model's decrease for this step
        theta, f, g = trial, f1, g1
        if decrease <= 1e-15 * max(abs(f), 1.0):
            if current is evaluate:
                return Result(theta, f, gmax_of(g), passes, True, "precision")
            f, g = exact(theta)
            decrease = math.inf
