"""Beyond one process: the vocabulary split across ``torch.distributed`` ranks.

``vocab_parallel_cross_entropy`` computes the cross-entropy of logits whose vocabulary dimension
is sharded over a process group (tensor parallelism, as in Megatron-LM).  The Dask integration of
the calibration statistics lives in :mod:`logitkit.calibration`, which accepts Dask arrays.
"""

from __future__ import annotations

from ._vocab_parallel import vocab_parallel_cross_entropy as vocab_parallel_cross_entropy

__all__ = ["vocab_parallel_cross_entropy"]
