"""Statistical models built on the softmax: :class:`SoftmaxRegression`, the multinomial GLM.

``ConvergenceWarning`` is resolved on first use: scikit-learn's
``sklearn.exceptions.ConvergenceWarning`` when scikit-learn is installed (what the solvers emit),
else :class:`LogitkitConvergenceWarning`; importing this package never imports scikit-learn.
"""

from __future__ import annotations

from typing import Any

from .._estimator import LogitkitConvergenceWarning as LogitkitConvergenceWarning
from .._estimator import NotFittedError as NotFittedError
from .._estimator import convergence_warning_class as convergence_warning_class
from ._softmax_regression import SoftmaxRegression as SoftmaxRegression


def __getattr__(name: str) -> Any:
    if name == "ConvergenceWarning":
        return convergence_warning_class()
    raise AttributeError(f"module 'logitkit.models' has no attribute {name!r}")


__all__ = [
    "ConvergenceWarning",
    "LogitkitConvergenceWarning",
    "NotFittedError",
    "SoftmaxRegression",
    "convergence_warning_class",
]
