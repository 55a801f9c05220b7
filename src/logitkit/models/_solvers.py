"""The solvers of :class:`~logitkit.models.SoftmaxRegression`: its objective, L-BFGS, Newton–CG
and gradient descent.

The objective is the sample-weighted mean cross-entropy of ``softmax(X̃ θᵀ)`` plus an L2 penalty
on the weights; its value and its gradient in the logits, ``w_i (p_i − y_i)``, come from the
library's one cross-entropy (:func:`logitkit.losses.cross_entropy_with_grad`, the fused kernel on
NumPy), pulled back through the linear map; its Hessian-vector products from the core's
``cross_entropy_hvp``.  Everything here is NumPy float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._derivatives import cross_entropy_hvp
from .._losses._cross_entropy import cross_entropy_with_grad

__all__ = ["Objective", "gradient_descent", "lbfgs", "newton"]

# A Gram matrix larger than this is not eigen-decomposed for the gd step; the Frobenius norm
# (a looser but still valid upper bound on the spectral norm) is used instead.
_MAX_GRAM = 2048


# --------------------------------------------------------------------------------------------
# the objective: mean weighted NLL + (alpha/2)‖W‖², its gradient and Hessian-vector products
# --------------------------------------------------------------------------------------------


class Objective:
    r"""The training objective over ``theta`` = ``[W | b]`` flattened (``K × (d + 1)``, C order).

    .. math::
        f(W, b) = \sum_i w_i\,\bigl(-\log\operatorname{softmax}(W x_i + b)_{y_i}\bigr)
                  + \tfrac{\alpha}{2}\lVert W\rVert_F^2,\qquad w_i = s_i / \textstyle\sum_j s_j
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float,
                 n_classes: int, fit_intercept: bool) -> None:
        n = X.shape[0]
        self.Xa = np.hstack([X, np.ones((n, 1))]) if fit_intercept else np.ascontiguousarray(X)
        self.y = y
        self.w = weights / weights.sum()
        self.w_col = self.w[:, None]
        self.alpha = alpha
        self.k, self.p = n_classes, self.Xa.shape[1]
        self.penalised = np.ones((1, self.p))
        if fit_intercept:
            self.penalised[0, -1] = 0.0

    def logits(self, theta: np.ndarray) -> np.ndarray:
        return self.Xa @ theta.reshape(self.k, self.p).T

    def loss_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        T = theta.reshape(self.k, self.p)
        W = T * self.penalised
        # The seed's gradient p − y in the logits, per row, weighted, pulled back through
        # z = X̃ θᵀ.  G is a fresh buffer owned here, so it is updated in place.
        losses, G = cross_entropy_with_grad(self.Xa @ T.T, self.y, reduction="none")
        f = float(self.w @ losses) + 0.5 * self.alpha * float(np.vdot(W, W))
        G *= self.w_col
        grad = G.T @ self.Xa
        if self.alpha:
            grad += self.alpha * W
        return f, grad.ravel()

    def loss(self, theta: np.ndarray) -> float:
        return self.loss_grad(theta)[0]

    def hvp(self, theta: np.ndarray) -> Any:
        """``v ↦ ∇²f(θ) v``, from the core's cross-entropy Hessian-vector product in the logits."""
        Z = self.logits(theta)

        def product(v: np.ndarray) -> np.ndarray:
            V = v.reshape(self.k, self.p)
            HU = cross_entropy_hvp(Z, self.Xa @ V.T, axis=1) * self.w[:, None]
            return (HU.T @ self.Xa + self.alpha * V * self.penalised).ravel()

        return product

    def lipschitz(self) -> float:
        """An upper bound ``L`` on the largest eigenvalue of ``∇²f`` everywhere.

        ``diag(p) − p pᵀ ⪯ ½ I`` for every probability vector, so
        ``∇²f ⪯ ½ λ_max(X̃ᵀ diag(w) X̃) ⊗ I + α I``.
        """
        A = self.Xa * np.sqrt(self.w)[:, None]
        n, p = A.shape
        if min(n, p) <= _MAX_GRAM:
            gram = A.T @ A if p <= n else A @ A.T
            top = float(np.linalg.eigvalsh(gram)[-1])
        else:
            top = float(np.sum(A * A))
        return 0.5 * top + self.alpha


def lbfgs(obj: Objective, theta: np.ndarray, max_iter: int, tol: float
           ) -> tuple[np.ndarray, int, str | None]:
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise ImportError(
            "solver='lbfgs' needs SciPy (install logitkit[sklearn] or scipy), "
            "or use solver='newton' or solver='gd'"
        ) from None
    res = minimize(
        obj.loss_grad, theta, method="L-BFGS-B", jac=True,
        # The same stopping rule as scikit-learn: max |gradient| <= tol, or no progress in f.
        options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
    )
    problem = None
    if res.status == 1:
        problem = f"did not converge in max_iter={max_iter} iterations"
    elif not res.success and np.max(np.abs(res.jac)) > tol:
        problem = f"stopped early ({res.message})"
    return res.x, int(res.nit), problem


def _conjugate_gradient(hv: Any, b: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Solve ``H x = b`` for a PSD ``H`` given as a product (stops on non-positive curvature)."""
    x = np.zeros_like(b)
    r = b.copy()
    d = r.copy()
    rs = float(r @ r)
    for _ in range(max_iter):
        if math.sqrt(rs) <= tol:
            break
        Hd = hv(d)
        curvature = float(d @ Hd)
        if curvature <= 1e-14 * float(d @ d):
            if not x.any():
                x = b.copy()  # no curvature information at all: steepest descent
            break
        step = rs / curvature
        x += step * d
        r -= step * Hd
        rs_next = float(r @ r)
        d = r + (rs_next / rs) * d
        rs = rs_next
    return x


def newton(obj: Objective, theta: np.ndarray, max_iter: int, tol: float
            ) -> tuple[np.ndarray, int, str | None]:
    f, g = obj.loss_grad(theta)
    n_iter = 0
    while np.max(np.abs(g)) > tol:
        if n_iter >= max_iter:
            return theta, n_iter, f"did not converge in max_iter={max_iter} iterations"
        norm = float(np.linalg.norm(g))
        # Inexact Newton: the forcing term min(½, √‖g‖)·‖g‖ gives superlinear convergence.
        direction = _conjugate_gradient(obj.hvp(theta), -g, min(0.5, math.sqrt(norm)) * norm,
                                        max_iter=max(20, 2 * theta.size))
        slope = float(g @ direction)
        if slope >= 0:  # numerically flat: fall back to the gradient
            direction, slope = -g, -norm * norm
        t = 1.0
        for _ in range(60):  # Armijo backtracking
            f_new, g_new = obj.loss_grad(theta + t * direction)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            return theta, n_iter, "stopped early (the line search found no decrease)"
        theta, f, g = theta + t * direction, f_new, g_new
        n_iter += 1
    return theta, n_iter, None


def gradient_descent(obj: Objective, theta: np.ndarray, max_iter: int, tol: float,
                      step: float) -> tuple[np.ndarray, int, str | None]:
    # The seed's rule z ← z − η (p − y), pulled back to the weights: θ ← θ − η ∇f(θ).
    _, g = obj.loss_grad(theta)
    n_iter = 0
    while np.max(np.abs(g)) > tol:
        if n_iter >= max_iter:
            return theta, n_iter, f"did not converge in max_iter={max_iter} iterations"
        theta = theta - step * g
        _, g = obj.loss_grad(theta)
        n_iter += 1
    return theta, n_iter, None
