"""Switches for logitkit's native CPU kernels: on or off, their threads, their output recycling.

NumPy arrays and CPU torch tensors (float32, float64) go through native kernels compiled when
logitkit is installed; every other input, and every call with the kernels off, takes the generic
array-API path, which computes the same values (within the accuracy bounds of the design
contract).  The switches:

* the kernels: ``LOGITKIT_DISABLE_KERNELS=1`` in the environment (read on every call),
  :func:`set_kernels` for the process, ``with use_kernels(False):`` for a block of code in one
  thread or task (it overrides the other two);
* their threads: ``LOGITKIT_NUM_THREADS`` (read when the kernels are first used) or
  :func:`set_num_threads`; by default the CPUs the process may run on (:func:`cpus_available`;
  logitkit's pools of Python threads follow the same count and ``LOGITKIT_NUM_THREADS``).  Work estimated below
  about 50 µs runs on the calling thread, and a call never waits for a busy pool;
* the output recycling: outputs of 4 MiB and more are kept for reuse once nothing views them (at
  most 4 buffers and 1 GiB, handed to the OS's ``MADV_FREE``), so that a loop of calls does not
  fault fresh pages in on every call.  ``LOGITKIT_BUFFER_CACHE=0`` (read on every call) or
  ``set_buffer_cache(0)`` turns it off; :func:`release_buffers` empties the pool now;
* the instruction set: the widest the CPU runs (:func:`simd_target`); ``LOGITKIT_SIMD=baseline``
  or ``avx2`` (read when the kernels are first used) asks for a narrower one.

Examples:
    >>> import numpy as np
    >>> import logitkit
    >>> from logitkit import config
    >>> x = np.array([[1.0, 2.0, 3.0]])
    >>> with config.use_kernels(False):
    ...     generic = logitkit.softmax(x)
    >>> bool(np.allclose(logitkit.softmax(x), generic, rtol=1e-14))
    True
    >>> config.simd_target() in ("avx512", "avx2", "baseline")
    True
"""

from __future__ import annotations

from ._kernels import buffer_cache_limit as buffer_cache_limit
from ._kernels import cpus_available as cpus_available
from ._kernels import fast_path as use_kernels
from ._kernels import fast_path_enabled as kernels_enabled
from ._kernels import num_threads as num_threads
from ._kernels import release_buffers as release_buffers
from ._kernels import set_buffer_cache as set_buffer_cache
from ._kernels import set_fast_path as set_kernels
from ._kernels import set_num_threads as set_num_threads
from ._kernels import simd_target as simd_target

__all__ = [
    "buffer_cache_limit",
    "cpus_available",
    "kernels_enabled",
    "num_threads",
    "release_buffers",
    "set_buffer_cache",
    "set_kernels",
    "set_num_threads",
    "simd_target",
    "use_kernels",
]
