"""What the kernels are given and what they give back: validated problems, results, flagged rows.

The core and the losses validate their arguments once, describe the problem with one of these
dataclasses and hand it to an entry point of :mod:`logitkit._kernels`.  The entry point returns
``None`` when no kernel applies (another backend, dtype or layout, or the fast path switched off);
otherwise a result whose ``flagged`` rows are the ones the kernel did not compute — a NaN, a
``+inf`` or nothing finite among a row's logits, an out-of-range label, or anything else the kernel
cannot do within the accuracy of DESIGN §7.  The caller computes those rows on its own generic
path and writes them into the result; the kernels never call back into the library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CalibrationPass",
    "CalibrationSums",
    "CrossEntropyResult",
    "CrossEntropyRows",
    "Normalise",
    "NormaliseResult",
]


def _as_input(values: np.ndarray, torch: bool) -> Any:
    if not torch:
        return values
    import torch as _torch

    return _torch.from_numpy(values)


@dataclass(frozen=True)
class Normalise:
    """softmax, log_softmax or logsumexp of ``x`` over ``axes``, computed in ``x``'s dtype.

    Every field is already validated: ``axes`` are distinct non-negative axes of ``x`` (in any
    order), ``temperature`` is positive and finite, ``softcap`` positive and finite or ``None``,
    ``where`` a boolean array broadcastable to ``x`` or ``None``.
    """

    x: Any  # a NumPy array or a torch tensor, as the caller received it
    axes: tuple[int, ...]
    op: str  # "softmax", "log_softmax" or "logsumexp"
    temperature: float = 1.0
    softcap: float | None = None
    where: Any = None


@dataclass
class NormaliseResult:
    """The kernel's values and the rows it left to the caller.

    ``values`` has ``x``'s shape (softmax, log_softmax) or ``x``'s shape without the reduced axes
    (logsumexp); ``flagged`` is a boolean array of the latter shape, and ``values`` is undefined
    in the flagged rows.  ``values`` is a NumPy array the caller may write into; :meth:`as_input`
    turns it into the input's array type (a zero-copy torch tensor for torch input).
    """

    values: np.ndarray
    flagged: np.ndarray
    torch: bool = False

    def as_input(self, values: np.ndarray) -> Any:
        return _as_input(values, self.torch)


@dataclass(frozen=True)
class CrossEntropyRows:
    """The cross-entropy of ``N`` rows of ``K`` logits, and its gradient if ``grad_scale`` is set.

    The caller validated everything and owns the reduction: which rows count, the mean's
    denominator, and so the per-row factor ``grad_scale`` of the gradient.  Per row ``i`` (``z =
    softcap(x)/T``, ``W_ic = w_c·y_ic`` the weighted, smoothed target over the unmasked classes)::

        loss_i = Σ_c W_ic (lse_i − z_ic) + c_z lse_i² + (λ/2) Σ_c x_ic²
        grad_i = grad_scale_i · ([(Σ_c W_ic + 2 c_z lse_i) p_i − W_i] / T ⊙ softcap'(x_i) + λ x_i)

    Rows that do not count get loss 0 and gradient 0.  ``out`` (``(N, K)``, ``x``'s dtype, C
    order) receives the gradient and may be ``x`` itself; flagged rows of ``out`` are left as
    they were, so that the caller can still read their logits there.
    """

    x: Any  # (N, K) logits, C-contiguous float32/float64: a NumPy array or a CPU torch tensor
    labels: Any = None  # (N,) integer class indices (values in rows that do not count are ignored)
    probs: Any = None  # (N, K) probability targets, x's dtype (instead of labels)
    where: Any = None  # (N, K) or (1, K) boolean mask of the classes that take part
    weight: Any = None  # (K,) non-negative per-class weights
    counted: Any = None  # (N,) bool, the rows that count (None: every row)
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    logit_l2: float = 0.0
    temperature: float = 1.0
    softcap: float | None = None
    grad_scale: Any = None  # None (no gradient), a float, or an (N,) array
    out: Any = None  # (N, K) buffer for the gradient, or None for a fresh one


@dataclass
class CrossEntropyResult:
    """Per-row losses (float64, 0 in rows that do not count), the gradient (``None`` unless
    asked for; a NumPy array the caller may write into) and the flagged rows (``(N,)`` bool;
    their loss and gradient are the caller's to compute)."""

    loss: np.ndarray
    grad: np.ndarray | None
    flagged: np.ndarray
    torch: bool = False

    def as_input(self, values: np.ndarray) -> Any:
        return _as_input(values, self.torch)


@dataclass(frozen=True)
class CalibrationPass:
    """The calibration engine's one pass over ``N`` rows of probabilities or logits.

    Every field is already validated by the engine (``calibration/_engine.py``, whose
    :class:`Spec` this mirrors): ``x`` is a 2-D NumPy array with ``K ≥ 2`` columns (float32 and
    float64 rows are read in place when C-contiguous; any other dtype or layout is converted to
    ``work`` a slab of rows at a time), ``labels`` an ``(N,)`` integer array (int32 and int64 read
    as they are, others converted to int64; a label outside ``[0, K)`` stops the pass:
    ``invalid``, and the engine says which).  Per row ``i`` the pass
    computes the confidence, the arg-max, ``−log p_y`` and the Brier term, and adds them, for row group ``g(offset + i)``, to the totals, the
    top-label bin of the confidence (``edges``: ``B + 1`` float64 edges from 0 to 1, bins
    right-closed; ``uniform`` when they are the correctly rounded ``b / B``) and, class-wise,
    the bin of every probability (``cw_edges``: ``(CB + 1,)`` shared or ``(CB + 1, K)`` per
    class).  Probabilities whose rows are not clearly valid (in ``[0, 1]``, no NaN, summing to
    1 within ``tolerance``) are not summed: the result says so and the engine's own validation
    judges them.
    """

    x: np.ndarray
    labels: np.ndarray
    work: np.dtype  # float32 or float64: the precision of the row arithmetic
    from_logits: bool
    beta: float = 1.0
    tolerance: float = 1e-3
    offset: int = 0
    groups: int = 1
    top: bool = True
    brier: bool = True
    nll: bool = True
    moments: bool = False
    edges: np.ndarray | None = None
    uniform: bool = False
    cw_edges: np.ndarray | None = None
    cw_uniform: bool = False
    keep_rows: bool = False


@dataclass
class CalibrationSums:
    """What :func:`~logitkit._kernels.calibration_sums` adds up, float64.

    ``totals`` ``(G, 4)``: rows, top-1 hits, ``Σ −log p_y``, ``Σ`` Brier; ``bins`` ``(G, F,
    B)`` (count, Σ conf, Σ hit, and with ``moments`` Σ conf², Σ conf·hit); ``cw`` ``(G, 5, K,
    CB)`` (count, Σ p, Σ hit, Σ p², Σ p·hit); with ``keep_rows`` every row's ``conf`` and
    ``hit``.  ``flagged`` rows (logits holding a NaN, a ``+inf`` or nothing finite) are in none
    of the sums and their per-row values are undefined: they are the caller's to compute.
    ``invalid``: probabilities the kernel did not accept, or a label out of range; nothing
    else in the result is meaningful then.
    """

    totals: np.ndarray
    bins: np.ndarray | None
    cw: np.ndarray | None
    conf: np.ndarray | None
    hit: np.ndarray | None
    flagged: np.ndarray
    n_flagged: int
    invalid: bool
