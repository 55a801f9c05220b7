"""The part of scikit-learn's estimator contract that logitkit's estimators share.

``get_params`` / ``set_params`` / ``__repr__`` read the constructor's signature, as
``sklearn.base.BaseEstimator`` does, so the estimators follow the contract without importing
scikit-learn.  The not-fitted error, the convergence warning and the fitted check live here once
for every estimator (``SoftmaxRegression`` and the calibrators): each is scikit-learn's own class
(or a subclass of it) when scikit-learn is installed, so one ``except`` or warning filter serves
both libraries, and scikit-learn is imported only when one of them is needed.
"""

from __future__ import annotations

import inspect
from typing import Any

from ._namespace import LogitkitValueError, expected

__all__ = [
    "Estimator",
    "LogitkitConvergenceWarning",
    "NotFittedError",
    "ParamsMixin",
    "check_is_fitted",
    "convergence_warning_class",
    "not_fitted_error_class",
]


class ParamsMixin:
    """Constructor arguments as parameters: ``__init__`` only stores its keyword arguments."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, by name (scikit-learn's ``get_params``).

        Args:
            deep: accepted for compatibility (there are no nested estimators).

        Returns:
            A dict from argument name to value.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set constructor arguments by name and return ``self`` (validated in ``fit``).

        Args:
            **params: argument names and new values.

        Returns:
            ``self``.
        """
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise LogitkitValueError(
                    expected("params", f"among {', '.join(valid)}", key)
                    + f" (Invalid parameter {key!r} for estimator {type(self).__name__})"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in
                    inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if not (v is defaults[k] or (type(v) is type(defaults[k]) and v == defaults[k]))]
        return f"{type(self).__name__}({', '.join(changed)})"


class NotFittedError(LogitkitValueError, AttributeError):
    """A prediction method was called before ``fit``.

    A ``ValueError`` and an ``AttributeError`` like scikit-learn's ``NotFittedError``; when
    scikit-learn is installed the error raised is also an instance of scikit-learn's class.
    """


_NOT_FITTED: list[type[Exception]] = []


def not_fitted_error_class() -> type[Exception]:
    """:class:`NotFittedError`, also a subclass of scikit-learn's when that is installed."""
    if not _NOT_FITTED:
        try:
            from sklearn.exceptions import NotFittedError as SklearnNotFittedError
        except ImportError:
            _NOT_FITTED.append(NotFittedError)
        else:
            _NOT_FITTED.append(type("NotFittedError", (NotFittedError, SklearnNotFittedError),
                                    {"__module__": __name__, "__doc__": NotFittedError.__doc__}))
    return _NOT_FITTED[0]


class LogitkitConvergenceWarning(UserWarning):
    """A solver stopped at ``max_iter`` before the gradient fell below ``tol``.

    Emitted only when scikit-learn is not installed; with scikit-learn, logitkit emits
    ``sklearn.exceptions.ConvergenceWarning`` so that one filter silences both libraries.
    ``logitkit.models.ConvergenceWarning`` names whichever of the two is emitted.
    """


def convergence_warning_class() -> type[Warning]:
    """The warning class emitted on non-convergence (see :class:`LogitkitConvergenceWarning`)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
    except ImportError:
        return LogitkitConvergenceWarning
    return ConvergenceWarning


def check_is_fitted(estimator: Any, attr: str | None = None) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has its fitted attribute.

    Args:
        estimator: a logitkit estimator.
        attr: the attribute that ``fit`` sets (default: the class's ``_fitted_attr``).
    """
    name = attr if attr is not None else type(estimator)._fitted_attr
    if getattr(estimator, name, None) is None:
        raise not_fitted_error_class()(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            "appropriate arguments before using this estimator."
        )


class Estimator(ParamsMixin):
    """:class:`ParamsMixin` plus the fitted state scikit-learn asks about.

    Subclasses name the attribute their ``fit`` sets in ``_fitted_attr``; scikit-learn's
    ``check_is_fitted`` then works through ``__sklearn_is_fitted__``, and ``__sklearn_tags__``
    describes the estimator as ``_estimator_type`` (a classifier by default).
    """

    _fitted_attr: str = ""
    _estimator_type: str = "classifier"

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, type(self)._fitted_attr, None) is not None

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags, TransformerTags

        classifier = self._estimator_type == "classifier"
        return Tags(
            estimator_type=self._estimator_type,
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags() if classifier else None,
            # an estimator with transform (a calibrator) says so: check_estimator refused to
            # start on one without the tag
            transformer_tags=TransformerTags() if hasattr(self, "transform") else None,
            input_tags=InputTags(),
        )
