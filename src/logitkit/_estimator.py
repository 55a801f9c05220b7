"""The part of scikit-learn's estimator contract that logitkit's estimators share.

``get_params`` / ``set_params`` / ``__repr__`` read the constructor's signature, as
``sklearn.base.BaseEstimator`` does, so the estimators follow the contract without importing
scikit-learn.
"""

from __future__ import annotations

import inspect
from typing import Any

from ._namespace import LogitkitValueError, expected


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
