"""Softmax regression: the multinomial generalised linear model the softmax comes from.

The categorical distribution is an exponential family whose natural parameters are the logits; a
GLM makes them linear in the features, ``z = W x + b``, and the canonical link turns them into the
probabilities ``p = softmax(z)``.  Its negative log-likelihood has the gradient ``p − y`` in the
logits (the library's cross-entropy) and the Hessian ``diag(p) − p pᵀ`` (the core's), which is all
the three solvers of :mod:`._solvers` need; this module validates the data and is the estimator.

The estimator follows the scikit-learn contract without importing scikit-learn: it stores its
arguments in ``__init__``, learns trailing-underscore attributes in ``fit``, and answers
``get_params``/``set_params``/``__sklearn_tags__`` itself, so it clones, pipelines and passes
``check_estimator`` when scikit-learn is installed, and imports (and fits with ``solver="newton"``
or ``"gd"``) when it is not.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import array_api_compat
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
    expected,
    is_concrete,
    is_numpy,
    namespace,
    to_numpy,
)
from ._solvers import Objective, gradient_descent, lbfgs, newton

__all__ = ["SoftmaxRegression"]

_SOLVERS = ("lbfgs", "newton", "gd")
_DEFAULT_MAX_ITER = {"lbfgs": 100, "newton": 100, "gd": 10_000}


def _data_conversion_warning_class() -> type[Warning]:
    try:
        from sklearn.exceptions import DataConversionWarning
    except ImportError:
        return UserWarning
    return DataConversionWarning


# --------------------------------------------------------------------------------------------
# input validation (scikit-learn's conventions, logitkit's wording)
# --------------------------------------------------------------------------------------------


def _is_sparse(X: object) -> bool:
    return type(X).__module__.startswith("scipy.sparse")


def _feature_names(X: object) -> np.ndarray | None:
    columns = getattr(X, "columns", None)
    if columns is None or _is_tensor(X):
        return None
    names = np.asarray(list(columns), dtype=object)
    if len(names) and all(isinstance(c, str) for c in names):
        return names
    return None


def _is_tensor(X: object) -> bool:
    return bool(array_api_compat.is_torch_array(X) or array_api_compat.is_jax_array(X))


def _as_float64_matrix(X: object, name: str) -> np.ndarray:
    """``X`` as a finite 2-D float64 NumPy array (from NumPy, lists, pandas, torch or JAX)."""
    if X is None or isinstance(X, (str, bytes)):
        raise LogitkitTypeError(expected("X", "a 2-D numeric array", X))
    if _is_sparse(X):
        raise LogitkitTypeError(
            expected("X", "a dense array", Described(f"a sparse matrix ({type(X).__name__})"))
            + "; sparse input is not supported, convert it with X.toarray()"
        )
    try:
        arr = np.asarray(to_numpy(X) if array_api_compat.is_array_api_obj(X) else X)
    except Exception as exc:
        raise LogitkitTypeError(expected("X", "a 2-D numeric array", X) + f" ({exc})") from None
    if arr.dtype.kind == "c":
        raise LogitkitValueError(
            expected("X", "a real numeric array", Described("complex data")) + " (Complex data not supported)"
        )
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise LogitkitTypeError(
                expected("X", "a numeric array", Described(f"an element that is not a number: {exc}"))
            ) from None
    if arr.ndim != 2:
        raise LogitkitValueError(
            expected("X", "a 2-D array of shape (n_samples, n_features)", Described(f"shape {arr.shape}"))
            + ". Reshape your data either using X.reshape(-1, 1) if it has a single feature "
            "or X.reshape(1, -1) if it is a single sample"
        )
    if arr.shape[0] == 0:
        raise LogitkitValueError(
            expected("X", "non-empty", Described(f"0 sample(s) (shape={arr.shape}) while a minimum "
                                            "of 1 is required."))
        )
    if arr.shape[1] == 0:
        raise LogitkitValueError(
            expected("X", "non-empty", Described(f"0 feature(s) (shape={arr.shape}) while a minimum "
                                            "of 1 is required."))
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise LogitkitValueError(expected(name, "finite", Described("NaN or infinity (inf)")))
    return arr


def _labels(y: object, cls: str) -> np.ndarray:
    if y is None:
        raise LogitkitValueError(
            expected("y", "class labels", None)
            + f": {cls} requires y to be passed, but the target y is None"
        )
    arr = np.asarray(to_numpy(y) if array_api_compat.is_array_api_obj(y) else y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape "
            "of y to (n_samples,), for example using ravel().",
            _data_conversion_warning_class(), stacklevel=3,
        )
        arr = arr.ravel()
    if arr.ndim != 1:
        raise LogitkitValueError(expected("y", "a 1-D array of class labels", Described(f"shape {arr.shape}")))
    if arr.dtype.kind == "c" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise LogitkitValueError(expected("y", "finite class labels", Described("NaN or infinity")))
    if arr.dtype.kind == "f" and np.any(arr != np.round(arr)):
        raise LogitkitValueError(
            expected("y", "class labels (integers, strings or booleans)", Described("continuous values"))
            + " (Unknown label type: continuous)"
        )
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr}
        numeric = all(issubclass(k, numbers.Number) for k in kinds)
        if numeric and any(isinstance(v, numbers.Real) and not float(v).is_integer() for v in arr):
            raise LogitkitValueError(
                expected("y", "class labels (integers, strings or booleans)", Described("continuous values"))
                + " (Unknown label type: continuous)"
            )
        if not numeric and len({k for k in kinds if not issubclass(k, str)}) > 0:
            raise LogitkitTypeError(
                expected("y", "class labels of one kind", Described("mixed types"))
                + " (Unknown label type: mixed)"
            )
    return arr


def _sample_weight(sample_weight: object, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        sw = np.full(n, float(sample_weight))
    else:
        raw = to_numpy(sample_weight) if array_api_compat.is_array_api_obj(sample_weight) \
            else sample_weight
        try:
            sw = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise LogitkitTypeError(
                expected("sample_weight", "a 1-D numeric array", sample_weight)
            ) from None
    if sw.shape != (n,):
        raise LogitkitValueError(
            expected("sample_weight", f"of shape ({n},) like y", Described(f"shape {sw.shape}"))
        )
    if not np.isfinite(sw).all() or (sw < 0).any():
        bad = sw[~(np.isfinite(sw) & (sw >= 0))][0]
        raise LogitkitValueError(expected("sample_weight", "non-negative and finite", bad))
    if not sw.sum() > 0:
        raise LogitkitValueError(expected("sample_weight", "positive somewhere", Described("all zeros")))
    return sw


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------


class SoftmaxRegression(Estimator):
    r"""Multinomial logistic (softmax) regression, the GLM of the categorical distribution.

    The logits are linear in the features and the class probabilities are their softmax; the
    weights minimise the sample-weighted mean negative log-likelihood plus an L2 penalty on the
    coefficients (the intercept is not penalised):

    .. math::
        p(y = k \mid x) = \operatorname{softmax}(W x + b)_k,\qquad
        \min_{W, b}\ \frac{\sum_i s_i\,(-\log p(y_i \mid x_i))}{\sum_i s_i}
        + \frac{\alpha}{2}\lVert W \rVert_F^2

    Args:
        alpha: L2 penalty strength ``α ≥ 0``.  ``alpha = 1 / (C · Σ sᵢ)`` (``1/(C·n_samples)``
            without sample weights) reproduces scikit-learn's multinomial
            ``LogisticRegression(C=C)``, which scales its penalty by the sum of the sample
            weights.  For two classes scikit-learn fits one binomial coefficient vector; the
            same model needs ``alpha = 2 / (C · Σ sᵢ)`` here (see the Note).
        fit_intercept: learn the unpenalised intercept ``b``.
        solver: ``"lbfgs"`` (SciPy's L-BFGS-B with the exact gradient ``X̃ᵀ(p − y)``),
            ``"newton"`` (inexact Newton: conjugate gradients on exact Hessian-vector products
            from :func:`logitkit.cross_entropy_hvp`, Armijo line search) or ``"gd"`` (gradient
            descent, the seed's rule ``z ← z − η(p − y)`` applied to the weights).
        learning_rate: the gd step ``η``; ``None`` uses ``1/L`` with ``L`` the Lipschitz bound
            ``½ λ_max(X̃ᵀ diag(w) X̃) + α`` of the gradient, for which every step decreases the
            objective by at least ``‖∇f‖² / (2L)``.  Any ``η < 2/L`` still decreases it; larger
            steps may diverge.  Ignored by the other solvers.
        max_iter: iteration limit; ``None`` means 100 for ``"lbfgs"`` and ``"newton"`` and
            10 000 for ``"gd"``.
        tol: stop when the largest entry of the objective's gradient is at most ``tol``
            (scikit-learn's rule for ``lbfgs`` and ``newton-cg``).
        warm_start: start from the previous fit's ``coef_`` and ``intercept_`` when the classes
            and features match, instead of from zero.

    Attributes:
        coef_: ``(n_classes, n_features)`` float64 weights ``W`` (rows sum to zero over classes
            in the solution of a penalised fit; they are centred after every fit).
        intercept_: ``(n_classes,)`` float64 intercepts, centred to sum to zero (the softmax is
            invariant to a common shift); zeros without ``fit_intercept``.
        classes_: the sorted class labels (any sortable labels: integers, strings, booleans).
        n_iter_: iterations the solver ran (an int).
        n_features_in_: number of features seen in ``fit``.
        feature_names_in_: column names, only when ``fit`` was given a DataFrame with string
            column names.
        objective_: the objective value at the solution.
        learning_rate_: the gd step used (``None`` for the other solvers).

    Note:
        Fitting always happens in NumPy float64: torch, JAX, pandas and list inputs are copied
        to NumPy first, so the model is the same whatever the input's library.  The prediction
        methods compute in the input's own array library, device and float dtype (integer input
        is promoted to that library's default float) and return its array type; ``predict``
        returns the input's array type when the labels are numeric, a NumPy array otherwise.

        Two classes are still fitted as the softmax model with two rows in ``coef_`` (the
        penalised solution has ``coef_[1] = −coef_[0]``); ``decision_function`` then returns the
        log-odds ``z₁ − z₀`` of ``classes_[1]`` with shape ``(n_samples,)``, as scikit-learn does,
        and ``(n_samples, n_classes)`` logits otherwise.  A single class in ``y`` is an error.

        Without a penalty (``alpha=0``) on linearly separable classes the likelihood has no
        maximiser (the weights grow without bound): every solver then stops at ``max_iter``
        with a warning.  When ``max_iter`` is reached, ``ConvergenceWarning`` is emitted: scikit-learn's
        ``sklearn.exceptions.ConvergenceWarning`` when scikit-learn is installed, else
        :class:`LogitkitConvergenceWarning` (a ``UserWarning``).  scikit-learn is never imported
        to fit or predict; SciPy is needed only by ``solver="lbfgs"``.

    Examples:
        >>> import numpy as np
        >>> from logitkit.models import SoftmaxRegression
        >>> X = np.array([[-1.5], [-0.9], [-0.3], [0.3], [0.9], [1.5]])
        >>> y = np.array(["a", "a", "b", "b", "c", "c"])
        >>> model = SoftmaxRegression(alpha=0.01, tol=1e-8).fit(X, y)
        >>> model.predict(np.array([[-1.4], [0.1], [1.4]]))
        array(['a', 'b', 'c'], dtype='<U1')
        >>> model.predict_proba(X).sum(axis=1).round(12)
        array([1., 1., 1., 1., 1., 1.])
        >>> gd = SoftmaxRegression(alpha=0.01, solver="gd", tol=1e-6).fit(X, y)
        >>> bool(np.allclose(gd.predict_proba(X), model.predict_proba(X), atol=1e-4))
        True

    References:
        McCullagh & Nelder, *Generalized Linear Models*, 2nd ed. (1989), ch. 5.
        Böhning, "Multinomial logistic regression algorithm", Ann. Inst. Stat. Math. 44 (1992):
        the bound ``diag(p) − p pᵀ ⪯ ½ I`` behind the gd step.
        Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), §7.1 (Newton–CG).
    """

    _estimator_type = "classifier"  # scikit-learn < 1.6 reads this
    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray
    n_iter_: int
    n_features_in_: int
    feature_names_in_: np.ndarray
    objective_: float
    learning_rate_: float | None

    def __init__(
        self,
        *,
        alpha: float = 1e-4,
        fit_intercept: bool = True,
        solver: str = "lbfgs",
        learning_rate: float | None = None,
        max_iter: int | None = None,
        tol: float = 1e-4,
        warm_start: bool = False,
    ) -> None:
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start

    # ---------------------------------------------------------------- scikit-learn contract

    _fitted_attr = "coef_"

    # ---------------------------------------------------------------- fitting

    def _check_params(self) -> tuple[float, str, int, float, float | None]:
        alpha = check_number(self.alpha, "alpha", low=0.0)
        if math.isinf(alpha):
            raise LogitkitValueError(expected("alpha", "finite", self.alpha))
        solver = check_choice(self.solver, "solver", _SOLVERS)
        for flag in ("fit_intercept", "warm_start"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise LogitkitTypeError(expected(flag, "a bool", getattr(self, flag)))
        max_iter = self.max_iter
        if max_iter is None:
            max_iter = _DEFAULT_MAX_ITER[solver]
        else:
            max_iter = check_int(max_iter, "max_iter", what="a positive int or None")
        tol = check_number(self.tol, "tol", low=0.0)
        lr = self.learning_rate
        if lr is not None:
            lr = check_number(lr, "learning_rate", low=0.0, low_open=True)
            if math.isinf(lr):
                raise LogitkitValueError(expected("learning_rate", "finite", self.learning_rate))
        return alpha, solver, int(max_iter), tol, lr

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SoftmaxRegression:
        """Fit the weights by minimising the penalised mean negative log-likelihood.

        Args:
            X: features ``(n_samples, n_features)``: NumPy, list, pandas, torch or JAX; copied to
                NumPy float64.
            y: class labels ``(n_samples,)`` (integers, strings or booleans, any values); at
                least two distinct classes.
            sample_weight: non-negative weights ``(n_samples,)``, or ``None`` for ones.  The
                loss is their weighted mean, so scaling all weights changes nothing and a
                weight of 2 equals repeating the sample.

        Returns:
            ``self``.

        Raises:
            LogitkitValueError: bad shapes, non-finite values, fewer than two classes,
                continuous ``y``, negative weights or bad parameters.
        """
        alpha, solver, max_iter, tol, lr = self._check_params()
        cls = type(self).__name__
        names = _feature_names(X)
        Xn = _as_float64_matrix(X, "X")
        yn = _labels(y, cls)
        n, d = Xn.shape
        if yn.shape[0] != n:
            raise LogitkitValueError(
                expected("y", f"of length {n} like X", Described(f"length {yn.shape[0]}"))
                + " (inconsistent numbers of samples)"
            )
        sw = _sample_weight(sample_weight, n)
        try:
            classes, y_idx = np.unique(yn, return_inverse=True)
        except TypeError:
            raise LogitkitTypeError(
                expected("y", "sortable class labels of one kind", Described("mixed types"))
                + " (Unknown label type: mixed)"
            ) from None
        if classes.size < 2:
            raise LogitkitValueError(
                f"Expected `y` to be labels of at least 2 classes, but got 1 class: "
                f"{classes[0].tolist()!r}; {cls} can't train when only one class is present"
            )
        k = classes.size
        obj = Objective(Xn, y_idx.ravel(), sw, alpha, k, self.fit_intercept)

        start = np.zeros((k, obj.p))
        if (self.warm_start and hasattr(self, "coef_") and self.coef_.shape == (k, d)
                and np.array_equal(self.classes_, classes)):
            start[:, :d] = self.coef_
            if self.fit_intercept:
                start[:, d] = self.intercept_
        theta = start.ravel()

        self.learning_rate_ = None
        if solver == "lbfgs":
            theta, n_iter, problem = lbfgs(obj, theta, max_iter, tol)
        elif solver == "newton":
            theta, n_iter, problem = newton(obj, theta, max_iter, tol)
        else:
            self.learning_rate_ = lr if lr is not None else 1.0 / obj.lipschitz()
            theta, n_iter, problem = gradient_descent(obj, theta, max_iter, tol,
                                                       self.learning_rate_)
        if problem is not None:
            warnings.warn(
                f"{cls}(solver={solver!r}) {problem}; the largest gradient entry is above "
                f"tol={tol:g}. Increase max_iter, loosen tol or standardise the features.",
                convergence_warning_class(), stacklevel=2,
            )
        T = theta.reshape(k, obj.p)
        # The softmax ignores a shift common to all classes: centring removes it from the
        # unpenalised intercept and can only lower the penalty (it matters when alpha = 0).
        coef = T[:, :d] - T[:, :d].mean(axis=0)
        intercept = T[:, d] - T[:, d].mean() if self.fit_intercept else np.zeros(k)
        self.coef_ = np.ascontiguousarray(coef)
        self.intercept_ = intercept
        self.classes_ = classes
        self.n_iter_ = n_iter
        self.n_features_in_ = d
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        theta_c = np.hstack([coef, intercept[:, None]]) if self.fit_intercept else coef
        self.objective_ = obj.loss(theta_c.ravel())
        return self

    # ---------------------------------------------------------------- prediction

    def _check_fitted(self) -> None:
        check_is_fitted(self, "coef_")

    def _check_feature_names(self, X: Any) -> None:
        fitted = getattr(self, "feature_names_in_", None)
        given = _feature_names(X)
        cls = type(self).__name__
        if given is not None and fitted is None:
            warnings.warn(f"X has feature names, but {cls} was fitted without feature names",
                          UserWarning, stacklevel=4)
        elif given is None and fitted is not None:
            warnings.warn(f"X does not have valid feature names, but {cls} was fitted with "
                          "feature names", UserWarning, stacklevel=4)
        elif given is not None and fitted is not None and (
                len(given) != len(fitted) or np.any(given != fitted)):
            raise LogitkitValueError(
                expected("X's feature names", f"{list(fitted)} as in fit", list(given))
                + " (The feature names should match those that were passed during fit.)"
            )

    def _logits(self, X: Any) -> tuple[Any, Any]:
        """The logits ``X Wᵀ + b`` in ``X``'s array library, and that library's namespace."""
        self._check_fitted()
        self._check_feature_names(X)
        if not array_api_compat.is_array_api_obj(X) or isinstance(X, np.ndarray):
            # NumPy, lists, pandas (sparse is rejected): float64, the model's own dtype, so
            # predict_log_proba and log(predict_proba) agree as closely as float64 allows.
            Xn = _as_float64_matrix(X, "X")
            self._check_n_features(Xn.shape[1])
            return Xn @ self.coef_.T + self.intercept_, namespace(Xn)
        xp = namespace(X)
        Xa = as_array(X, "X", xp)
        if Xa.ndim != 2:
            raise LogitkitValueError(
                expected("X", "a 2-D array of shape (n_samples, n_features)",
                         Described(f"shape {tuple(Xa.shape)}"))
            )
        self._check_n_features(int(Xa.shape[1]))
        acc, _ = compute_dtypes(Xa, None, xp)
        Xa = astype(Xa, acc, xp)
        if is_concrete(Xa) and not bool(xp.all(xp.isfinite(Xa))):
            raise LogitkitValueError(expected("X", "finite", Described("NaN or infinity (inf)")))
        device = array_api_compat.device(Xa)
        W = xp.asarray(self.coef_, dtype=acc, device=device)
        b = xp.asarray(self.intercept_, dtype=acc, device=device)
        return Xa @ xp.permute_dims(W, (1, 0)) + b, xp

    def _check_n_features(self, n: int) -> None:
        if n != self.n_features_in_:
            raise LogitkitValueError(
                f"Expected `X` to have {self.n_features_in_} features as in fit, but got {n}: "
                f"X has {n} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )

    def decision_function(self, X: Any) -> Any:
        """The logits ``X Wᵀ + b``; for two classes the log-odds ``z₁ − z₀`` of ``classes_[1]``.

        Args:
            X: features ``(n_samples, n_features)``.

        Returns:
            ``(n_samples, n_classes)`` logits, or ``(n_samples,)`` log-odds for two classes, in
            ``X``'s array type.
        """
        z, _ = self._logits(X)
        if len(self.classes_) == 2:
            return z[:, 1] - z[:, 0]
        return z

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``softmax(X Wᵀ + b)``, columns in the order of ``classes_``.

        Args:
            X: features ``(n_samples, n_features)``.

        Returns:
            ``(n_samples, n_classes)`` probabilities in ``X``'s array type; rows sum to one.
        """
        z, _ = self._logits(X)
        return softmax(z, axis=1)

    def predict_log_proba(self, X: Any) -> Any:
        """Log-probabilities ``log_softmax(X Wᵀ + b)`` (exact, never ``log`` of a rounded 0).

        Args:
            X: features ``(n_samples, n_features)``.

        Returns:
            ``(n_samples, n_classes)`` log-probabilities in ``X``'s array type.
        """
        z, _ = self._logits(X)
        return log_softmax(z, axis=1)

    def predict(self, X: Any) -> Any:
        """The most probable class of each sample (the arg-max of the logits).

        Args:
            X: features ``(n_samples, n_features)``.

        Returns:
            ``(n_samples,)`` labels from ``classes_``: in ``X``'s array type when the labels are
            numeric, a NumPy array otherwise.
        """
        z, xp = self._logits(X)
        idx = to_numpy(xp.argmax(z, axis=1))
        labels = self.classes_[np.asarray(idx, dtype=np.intp)]
        if is_numpy(xp) or labels.dtype.kind not in "biuf":
            return labels
        return xp.asarray(labels, device=array_api_compat.device(z))

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean (sample-weighted) accuracy of ``predict(X)`` against ``y``.

        Args:
            X: features ``(n_samples, n_features)``.
            y: true labels ``(n_samples,)``.
            sample_weight: optional non-negative weights.

        Returns:
            The accuracy, a float in [0, 1].
        """
        pred = np.asarray(to_numpy(self.predict(X)))
        truth = _labels(y, type(self).__name__)
        if truth.shape != pred.shape:
            raise LogitkitValueError(expected("y", f"of length {pred.shape[0]} like X",
                                              Described(f"shape {truth.shape}")))
        sw = _sample_weight(sample_weight, pred.shape[0])
        return float(np.sum(sw * (pred == truth)) / np.sum(sw))
