"""Attention: scaled dot-product attention with an exact, tiled online softmax, and the merge of
partial results computed over disjoint sets of keys.

- :func:`attention` computes ``softmax(scale · q kᵀ + mask) v`` one block of keys at a time
  (O(block) memory per query; fully masked rows give zeros; softcap and attention sinks).
- :func:`merge_logsumexp` and :func:`merge_attention` combine partial results (split-KV decoding,
  ring or sequence-parallel attention).

Examples:
    >>> import numpy as np
    >>> from logitkit.attention import attention
    >>> q = k = v = np.eye(2)
    >>> attention(q, k, v, scale=0.0)  # equal scores: the mean of the values
    array([[0.5, 0.5],
           [0.5, 0.5]])
"""

from __future__ import annotations

from ._attention import attention as attention
from ._attention import merge_attention as merge_attention
from ._attention import merge_logsumexp as merge_logsumexp

__all__ = ["attention", "merge_attention", "merge_logsumexp"]
