"""Contrastive losses built on the cross-entropy: InfoNCE, NT-Xent and CLIP's symmetric loss."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .._core import logsumexp
from .._namespace import (
    ArrayT,
    LogitkitTypeError,
    LogitkitValueError,
    as_array,
    astype,
    check_number,
    check_reduction,
    compute_dtypes,
    expected,
    is_array,
    namespace,
)
from ._cross_entropy import cross_entropy

__all__ = ["clip_loss", "info_nce", "ntxent"]

_LN_100 = math.log(100.0)
_CLIP_INIT = math.log(1.0 / 0.07)  # CLIP's initial log-scale


def _embeddings(x: Any, arg: str, xp: Any) -> Any:
    x = as_array(x, arg, xp)
    if x.ndim != 2:
        raise LogitkitValueError(expected(arg, "a 2-d array (batch, features)",
                                          f"shape {tuple(x.shape)}"))
    acc, _ = compute_dtypes(x, None, xp)
    return astype(x, acc, xp)


def _unit(x: Any, xp: Any) -> Any:
    """Rows scaled to unit length; rows shorter than the dtype's epsilon are divided by it."""
    eps = float(xp.finfo(x.dtype).eps)
    norm = xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True))
    return x / xp.maximum(norm, xp.asarray(eps, dtype=x.dtype, device=array_api_compat.device(x)))


def info_nce(
    query: ArrayT,
    keys: ArrayT,
    /,
    *,
    temperature: float = 0.1,
    positive: Any = None,
    normalize: bool = True,
    reduction: str = "mean",
) -> ArrayT:
    r"""InfoNCE: classify each query's positive key among all keys by similarity.

    .. math::
        \ell_i = -\log \frac{\exp(s(q_i, k_{\pi_i}) / T)}{\sum_j \exp(s(q_i, k_j) / T)},\qquad
        s(q, k) = \frac{\langle q, k\rangle}{\lVert q\rVert \lVert k\rVert}

    Args:
        query: ``(N, D)`` query embeddings.
        keys: ``(M, D)`` key embeddings; every key is a negative for every query except its
            positive.
        temperature: positive finite ``T``.
        positive: ``(N,)`` integer index of each query's positive key; by default key ``i`` is
            the positive of query ``i`` (then ``M ≥ N``).
        normalize: use cosine similarity (``True``) or the raw dot product.
        reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the queries.

    Returns:
        The loss, of the embeddings' array type.

    Note:
        With ``normalize``, an all-zero embedding has similarity 0 with everything.

    Examples:
        >>> import numpy as np
        >>> from logitkit import info_nce
        >>> q = np.eye(3)
        >>> print(round(float(info_nce(q, q, temperature=1.0)), 6))
        0.551445

    References:
        van den Oord, Li & Vinyals, "Representation learning with contrastive predictive
        coding" (2018).
    """
    xp = namespace(query, keys, positive)
    q = _embeddings(query, "query", xp)
    k = _embeddings(keys, "keys", xp)
    if k.shape[1] != q.shape[1]:
        raise LogitkitValueError(expected("keys", f"{q.shape[1]} features like `query`",
                                          f"shape {tuple(k.shape)}"))
    t = check_number(temperature, "temperature", low=0.0, low_open=True, high=math.inf,
                     high_open=True)
    if not isinstance(normalize, bool):
        raise LogitkitTypeError(expected("normalize", "a bool", normalize))
    check_reduction(reduction)
    if positive is None:
        if k.shape[0] < q.shape[0]:
            raise LogitkitValueError(expected(
                "keys", f"at least {q.shape[0]} rows (one positive per query) when `positive` "
                "is not given", f"shape {tuple(k.shape)}"))
        positive = xp.arange(q.shape[0], device=array_api_compat.device(q))
    if normalize:
        q, k = _unit(q, xp), _unit(k, xp)
    logits = (q @ xp.matrix_transpose(k)) / t
    return cross_entropy(logits, positive, reduction=reduction)


def ntxent(embeddings: ArrayT, labels: Any, /, *, temperature: float = 0.07) -> ArrayT:
    r"""NT-Xent (SimCLR's normalized temperature-scaled cross-entropy) over labelled groups.

    Every pair ``(a, p)`` of distinct samples with the same label is a positive pair; samples with
    other labels are the negatives of ``a``; a sample is never compared with itself.

    .. math::
        \ell_{ap} = -\log\frac{e^{s_{ap}}}{e^{s_{ap}} + \sum_{n:\,y_n \ne y_a} e^{s_{an}}},
        \qquad s_{ij} = \frac{\langle e_i, e_j\rangle}{T\,\lVert e_i\rVert \lVert e_j\rVert},
        \qquad \ell = \operatorname{mean}_{(a,p)} \ell_{ap}

    (the form of ``optax.ntxent`` and pytorch-metric-learning's ``NTXentLoss``: other positives
    are not in the denominator).

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer group labels; equal labels mark positive pairs.
        temperature: positive finite ``T`` (default 0.07).

    Returns:
        The mean over all positive pairs (a scalar of the embeddings' array type); 0 when there
        is no positive pair.

    Note:
        An anchor without negatives gives ``-log 1 = 0`` for its pairs.

    Examples:
        >>> import numpy as np
        >>> from logitkit import ntxent
        >>> e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> print(round(float(ntxent(e, np.array([0, 0, 1, 1]), temperature=1.0)), 6))
        0.551445

    References:
        Chen et al., "A simple framework for contrastive learning of visual representations"
        (2020).
    """
    xp = namespace(embeddings, labels)
    e = _embeddings(embeddings, "embeddings", xp)
    labels = as_array(labels, "labels", xp)
    if not xp.isdtype(labels.dtype, "integral") or tuple(labels.shape) != (e.shape[0],):
        raise LogitkitValueError(expected("labels", f"integer labels of shape ({e.shape[0]},)",
                                          f"shape {tuple(labels.shape)} and dtype {labels.dtype}"))
    t = check_number(temperature, "temperature", low=0.0, low_open=True, high=math.inf,
                     high_open=True)
    u = _unit(e, xp)
    s = (u @ xp.matrix_transpose(u)) / t
    n = e.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = xp.eye(n, dtype=xp.bool, device=array_api_compat.device(e))
    pos = same & ~eye
    neg_lse = logsumexp(s, axis=-1, where=~same, keepdims=True)
    # ℓ_ap = log(e^{s_ap} + e^{neg}) − s_ap = softplus(neg − s_ap), 0 when there is no negative.
    diff = neg_lse - s
    finite = xp.isfinite(diff) & pos
    zero = xp.zeros_like(s)
    d = xp.where(finite, diff, zero)
    sp = xp.maximum(d, zero) + xp.log1p(xp.exp(-xp.abs(d)))
    terms = xp.where(finite, sp, xp.where(pos & (diff == math.inf), diff, zero))
    count = xp.sum(astype(pos, s.dtype, xp))
    total = xp.sum(terms)
    return xp.where(count > 0, total / xp.where(count > 0, count, xp.ones_like(count)),
                    xp.zeros_like(total))


def clip_loss(
    image_embeddings: ArrayT,
    text_embeddings: ArrayT,
    /,
    *,
    logit_scale: Any = _CLIP_INIT,
    normalize: bool = True,
) -> ArrayT:
    r"""CLIP's symmetric contrastive loss: image→text and text→image cross-entropy, averaged.

    .. math::
        L = \exp(\min(\lambda, \ln 100))\, \hat I \hat T^\top,\qquad
        \ell = \tfrac12\bigl(\operatorname{CE}(L, \text{diag}) + \operatorname{CE}(L^\top,
        \text{diag})\bigr)

    Args:
        image_embeddings: ``(N, D)``; row ``i`` matches row ``i`` of ``text_embeddings``.
        text_embeddings: ``(N, D)``.
        logit_scale: the learnable log-scale ``λ`` (a float or a 0-d array, differentiable);
            clamped at ``ln 100`` as in CLIP (the gradient is 0 above it).  The default is
            CLIP's initial ``ln(1/0.07)``.
        normalize: scale the embeddings to unit length first (CLIP does).

    Returns:
        The mean loss over the ``N`` pairs and the two directions.

    Examples:
        >>> import numpy as np
        >>> from logitkit import clip_loss
        >>> e = np.eye(2)
        >>> print(round(float(clip_loss(e, e, logit_scale=0.0)), 6))
        0.313262

    References:
        Radford et al., "Learning transferable visual models from natural language
        supervision" (2021).
    """
    xp = namespace(image_embeddings, text_embeddings, logit_scale)
    img = _embeddings(image_embeddings, "image_embeddings", xp)
    txt = _embeddings(text_embeddings, "text_embeddings", xp)
    if tuple(txt.shape) != tuple(img.shape):
        raise LogitkitValueError(expected(
            "text_embeddings", f"of the image embeddings' shape {tuple(img.shape)}",
            f"shape {tuple(txt.shape)}"))
    if not isinstance(normalize, bool):
        raise LogitkitTypeError(expected("normalize", "a bool", normalize))
    if is_array(logit_scale):
        ls = astype(as_array(logit_scale, "logit_scale", xp), img.dtype, xp)
        if ls.ndim != 0:
            raise LogitkitValueError(expected("logit_scale", "a scalar", logit_scale))
        scale = xp.exp(xp.minimum(ls, xp.asarray(_LN_100, dtype=ls.dtype,
                                                 device=array_api_compat.device(ls))))
    else:
        v = check_number(logit_scale, "logit_scale", high=math.inf, high_open=True)
        scale = math.exp(min(v, _LN_100))
    if normalize:
        img, txt = _unit(img, xp), _unit(txt, xp)
    logits = scale * (img @ xp.matrix_transpose(txt))
    target = xp.arange(img.shape[0], device=array_api_compat.device(img))
    return 0.5 * (cross_entropy(logits, target) + cross_entropy(xp.matrix_transpose(logits),
                                                                target))
