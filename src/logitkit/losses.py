"""Losses on logits: the cross-entropy family, divergences, distillation and contrastive losses.

Every loss takes logits (never probabilities) and works on NumPy, PyTorch, JAX and array-API
arrays.  On PyTorch and JAX the cross-entropy carries its analytic gradient ``(p − y)/T`` through
lean autodiff adapters that keep O(N) memory for backward.  ``linear_cross_entropy`` fuses the
output projection with the loss and never holds the N×V logits.
"""

from __future__ import annotations

from ._linear_cross_entropy import linear_cross_entropy as linear_cross_entropy
from ._linear_cross_entropy import (
    linear_cross_entropy_with_grad as linear_cross_entropy_with_grad,
)
from ._losses._contrastive import clip_loss as clip_loss
from ._losses._contrastive import info_nce as info_nce
from ._losses._contrastive import ntxent as ntxent
from ._losses._cross_entropy import cross_entropy as cross_entropy
from ._losses._cross_entropy import cross_entropy_with_grad as cross_entropy_with_grad
from ._losses._cross_entropy import margin_cross_entropy as margin_cross_entropy
from ._losses._divergence import distillation_loss as distillation_loss
from ._losses._divergence import kl_divergence as kl_divergence

__all__ = [
    "clip_loss",
    "cross_entropy",
    "cross_entropy_with_grad",
    "distillation_loss",
    "info_nce",
    "kl_divergence",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "margin_cross_entropy",
    "ntxent",
]
