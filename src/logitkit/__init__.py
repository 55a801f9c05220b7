"""logitkit: turn a model's raw scores (logits) into probabilities people can trust.

The core functions work on NumPy, PyTorch, JAX and any array-API array, and return the input's
array type.  The modules ``logitkit.losses``, ``logitkit.calibration``, ``logitkit.models``,
``logitkit.attention``, ``logitkit.sampling``, ``logitkit.rl`` and ``logitkit.distributed`` are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._core import entropy as entropy
from ._core import log_softmax as log_softmax
from ._core import logsumexp as logsumexp
from ._core import softmax as softmax
from ._derivatives import cross_entropy_hessian as cross_entropy_hessian
from ._derivatives import cross_entropy_hvp as cross_entropy_hvp
from ._derivatives import softmax_jacobian as softmax_jacobian
from ._derivatives import softmax_jvp as softmax_jvp
from ._derivatives import softmax_vjp as softmax_vjp
from ._namespace import LogitkitError as LogitkitError
from ._namespace import LogitkitTypeError as LogitkitTypeError
from ._namespace import LogitkitValueError as LogitkitValueError

__version__ = "0.1.0"

# Public names that live in modules we import lazily, so `import logitkit` stays light.
_LAZY = {
    "cross_entropy": "logitkit.losses",
    "cross_entropy_with_grad": "logitkit.losses",
    "kl_divergence": "logitkit.losses",
    "distillation_loss": "logitkit.losses",
    "margin_cross_entropy": "logitkit.losses",
    "info_nce": "logitkit.losses",
    "ntxent": "logitkit.losses",
    "clip_loss": "logitkit.losses",
    "linear_cross_entropy": "logitkit.losses",
    "linear_cross_entropy_with_grad": "logitkit.losses",
}
_SUBMODULES = {"attention", "losses", "calibration", "models", "sampling", "rl", "distributed",
               "cli", "config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"logitkit.{name}")
    raise AttributeError(f"module 'logitkit' has no attribute {name!r}")


__all__ = [
    "LogitkitError",
    "LogitkitTypeError",
    "LogitkitValueError",
    "cross_entropy_hessian",
    "cross_entropy_hvp",
    "entropy",
    "log_softmax",
    "logsumexp",
    "softmax",
    "softmax_jacobian",
    "softmax_jvp",
    "softmax_vjp",
    *_LAZY,
]
