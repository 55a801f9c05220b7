"""Output buffers of the kernels: large ones placed on huge pages, and recycled once freed.

Writing a fresh output costs a page fault per page first touched and the operating system's
zeroing of it.  On our machines that alone is 0.8–1.4× the time of a ``np.copyto`` of the same
array, as much as the kernel's own work, and it is paid again on every call: NumPy's large
buffers come from ``mmap`` and go back to the OS when freed.  Two things keep it down:

* **Placement** (:func:`empty`): a large output starts at a 2 MiB boundary, so that it is backed
  by transparent huge pages end to end (see :func:`empty` for why malloc's placement is not).
* **Recycling**: when the last array viewing a large output is freed, its memory goes to a
  small pool instead of back to the OS, and the next output that fits takes it over, already
  mapped: no faults and no zeroing.  It is the same bargain glibc's heap strikes for blocks
  under 32 MiB, made explicit and bounded:

  - a buffer enters the pool only after every view of it (NumPy views, ``torch.from_numpy``
    tensors, ...) is gone, so nothing the caller can still reach is ever reused;
  - the pool keeps at most :data:`MAX_BUFFERS` buffers and :func:`buffer_cache_limit` bytes
    (1 GiB by default); the least recently freed go back to the OS first;
  - pooled memory is handed to ``madvise(MADV_FREE)``: the OS may take those pages back at any
    time it needs memory, without swapping (they read as zeros if it did), so the pool never
    holds memory against the rest of the machine.  Where ``MADV_FREE`` does not exist
    (Windows), nothing is pooled;
  - the peak memory of a call is unchanged: a pooled buffer replaces a new one.

  ``LOGITKIT_BUFFER_CACHE=0`` in the environment (read on every call) or
  ``set_buffer_cache(0)`` turns recycling off; :func:`release_buffers` empties the pool.

A recycled output holds the previous result's values until the kernel overwrites them, like
any ``np.empty``; every kernel writes every element of its output.
"""

from __future__ import annotations

import collections
import ctypes
import math
import mmap
import os
import sys
from typing import Any

import numpy as np

#: Outputs at least this large are placed on a 2 MiB boundary and recycled.
ALIGN_MIN_BYTES = 1 << 22
HUGE_PAGE = 1 << 21
PAGE = 1 << 12
#: At most this many freed buffers are kept.
MAX_BUFFERS = 4
#: A freed buffer is reused for a request needing at least this fraction of its size.
_MIN_FILL = 0.5

_limit: list[int] = [1 << 30]
#: Freed raw buffers, least recently freed first.  Only atomic deque operations touch it
#: (append, popleft, len, list()): the pool takes no lock, so a buffer freed by the garbage
#: collector in the middle of a call on the same thread cannot deadlock.
_free: collections.deque[np.ndarray] = collections.deque()


def _madvise_free() -> Any:
    """``buffer → bool``: hand a raw buffer's whole pages to ``madvise(MADV_FREE)``, or None
    where that does not exist."""
    advice = getattr(mmap, "MADV_FREE", None)
    if advice is None or sys.platform == "win32":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - every POSIX libc has madvise
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int

    def advise(raw: np.ndarray) -> bool:
        addr = raw.__array_interface__["data"][0]
        lo = -(-addr // PAGE) * PAGE
        hi = (addr + raw.nbytes) // PAGE * PAGE
        return hi <= lo or fn(lo, hi - lo, advice) == 0

    return advise


_advise = _madvise_free()


def set_buffer_cache(max_bytes: int) -> None:
    """Keep at most ``max_bytes`` of freed kernel outputs for reuse (0 turns recycling off and
    empties the pool).  The default is 1 GiB; see the module's docstring."""
    from .._namespace import check_int

    _limit[0] = check_int(max_bytes, "max_bytes", low=0, what="a non-negative integer")
    _trim()


def buffer_cache_limit() -> int:
    """The pool's limit in bytes now (0 when recycling is off, by the switch or the platform)."""
    if _advise is None:
        return 0
    if os.environ.get("LOGITKIT_BUFFER_CACHE", "").strip().lower() in {"0", "false", "no",
                                                                       "off"}:
        return 0
    return _limit[0]


def release_buffers() -> int:
    """Give every pooled buffer back to the OS now; returns the bytes released."""
    released = 0
    while True:
        try:
            raw = _free.popleft()
        except IndexError:
            return released
        released += raw.nbytes


def pooled_bytes() -> int:
    """Bytes held in the pool now."""
    return sum(raw.nbytes for raw in list(_free))


def _trim() -> None:
    """Drop the least recently freed buffers until the pool is within its limits."""
    limit = buffer_cache_limit()
    while True:
        held = list(_free)
        if len(held) <= MAX_BUFFERS and sum(r.nbytes for r in held) <= limit:
            return
        try:
            _free.popleft()
        except IndexError:
            return


def _give(raw: np.ndarray) -> None:
    """A buffer no array views any more: into the pool if it fits there, else to the OS."""
    limit = buffer_cache_limit()
    if raw.nbytes > limit or _advise is None or not _advise(raw):
        return
    _free.append(raw)
    _trim()


def _take(need: int) -> np.ndarray | None:
    """The most recently freed pooled buffer of at least ``need`` bytes (and not much more; its
    pages are the likeliest to be still in cache), or None."""
    if buffer_cache_limit() == 0:
        if _free:
            release_buffers()
        return None
    for _ in range(len(_free)):
        try:
            raw = _free.pop()
        except IndexError:
            return None
        if need <= raw.nbytes and need >= _MIN_FILL * raw.nbytes:
            return raw
        _free.appendleft(raw)  # not this one: it goes to the far end, first to be trimmed
    return None


#: ``id(raw buffer) → id(its lease)`` for every buffer out on lease: a buffer goes back to the
#: pool only from the lease it was handed to, never from a copy of that lease.
_leased: dict[int, int] = {}


class _Lease:
    """The owner of one output's memory: NumPy views it through ``__array_interface__``, so
    every array and tensor made from the output keeps it alive, and when the last goes its
    raw buffer goes to the pool.

    A lease cannot be copied or pickled (``copy.copy(p.base)`` raises): a second owner of the
    same memory would hand it back to the pool while the first is still read.  Copying or
    pickling the *array* copies its values, as for any array.  And only the lease the buffer
    was handed to returns it, so even an owner made around the guard (``object.__new__``,
    ``__setstate__``) cannot free memory that is still in use.
    """

    __slots__ = ("__array_interface__", "_raw")

    def __init__(self, raw: np.ndarray, start: int, shape: tuple[int, ...],
                 dtype: np.dtype) -> None:
        self._raw = raw
        self.__array_interface__ = {
            "shape": tuple(shape), "typestr": dtype.str, "version": 3,
            "data": (raw.__array_interface__["data"][0] + start, False)}
        _leased[id(raw)] = id(self)

    def __reduce__(self) -> Any:
        raise TypeError("logitkit's output buffer owner cannot be copied or pickled; "
                        "copy or pickle the array instead")

    def __copy__(self) -> Any:
        return self.__reduce__()

    def __deepcopy__(self, memo: Any) -> Any:
        return self.__reduce__()

    def __del__(self) -> None:
        try:
            raw = getattr(self, "_raw", None)
            if raw is not None and _leased.get(id(raw)) == id(self):
                del _leased[id(raw)]
                _give(raw)
        except Exception:  # pragma: no cover - interpreter shutdown: the OS takes it back
            pass


def empty(shape: tuple[int, ...], dtype: Any, like: np.ndarray | None = None) -> np.ndarray:
    """``np.empty(shape, dtype)``; when large, placed at the start of a 2 MiB huge page and
    recycled (module docstring).

    NumPy asks the OS for transparent huge pages on large buffers, but malloc hands them out 16
    bytes past a 4 KiB boundary, so both ends of the buffer fall back to 4 KiB pages, each fault
    as expensive as a huge one; on a 32 MiB output that is a third of the write time.  A buffer
    2 MiB larger, of which an aligned part is used, is backed by huge pages end to end.  The
    slack is address space only: it is never touched, so never resident.

    The output never starts at the same offset within a page as ``like`` (the input the kernel
    reads alongside it): when both lie at the same offset of their huge pages, every element
    read and written maps to the same cache sets, and the kernels ran up to ten times slower.
    The output is placed half a page from the input instead.

    A large result is a writeable, C-contiguous, 64-byte aligned array whose ``base`` is the
    buffer's owner (``flags.owndata`` is False, as for any view).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < ALIGN_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    shift = 0
    if like is not None:
        shift = (like.__array_interface__["data"][0] + PAGE // 2) % PAGE // 64 * 64
    need = nbytes + HUGE_PAGE + PAGE
    raw = _take(need)
    if raw is None:
        raw = np.empty(need, dtype=np.uint8)
    start = -raw.__array_interface__["data"][0] % HUGE_PAGE + shift
    if buffer_cache_limit() == 0:
        return raw[start:start + nbytes].view(dtype).reshape(shape)
    return np.asarray(_Lease(raw, start, shape, dtype))
