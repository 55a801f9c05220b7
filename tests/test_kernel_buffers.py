"""The kernels' large output buffers: placed on huge pages, recycled only once nothing views them."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import numpy as np
import pytest

import logitkit
from logitkit import _kernels
from logitkit._kernels import _buffers, fast_path

SHAPE = (1100, 1024)  # 4.3 MiB of float32: just over the size that is placed and recycled


def generic(fn, *args, **kwargs):
    with fast_path(False):
        return fn(*args, **kwargs)


def address(a) -> int:
    return a.__array_interface__["data"][0]


def huge_page(a) -> int:
    """The huge page an output starts on: its offset within the page follows its input's."""
    return address(a) >> 21


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    """Each test starts and ends with an empty pool, the default limit and recycling on."""
    monkeypatch.delenv("LOGITKIT_BUFFER_CACHE", raising=False)
    _kernels.release_buffers()
    limit = _buffers._limit[0]
    yield
    _buffers._limit[0] = limit
    _kernels.release_buffers()


needs_madv_free = pytest.mark.skipif(
    _buffers._advise is None, reason="no MADV_FREE on this platform: nothing is pooled")


def logits(seed: int, shape=SHAPE, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype) * 4


@needs_madv_free
def test_a_freed_output_is_reused_and_overwritten_everywhere():
    x = logits(0)
    p = logitkit.softmax(x)
    first = huge_page(p)
    p[...] = np.nan  # what a recycled buffer holds is whatever its last user left there
    del p
    assert _buffers.pooled_bytes() > 0
    y = logits(1)
    y[5] = -np.inf  # a row the generic path fills in
    y[7, 3] = np.nan
    q = logitkit.log_softmax(y)
    assert huge_page(q) == first and _buffers.pooled_bytes() == 0
    np.testing.assert_allclose(q, generic(logitkit.log_softmax, y), rtol=2e-6, atol=2e-6)
    q[...] = np.nan
    del q
    t = np.random.default_rng(2).integers(0, SHAPE[1], SHAPE[0])
    t[::3] = -100
    loss, g = logitkit.cross_entropy_with_grad(logits(3), t, ignore_index=-100,
                                               label_smoothing=0.1)
    assert huge_page(g) == first
    ref_loss, ref_g = generic(logitkit.cross_entropy_with_grad, logits(3), t, ignore_index=-100,
                              label_smoothing=0.1)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-9)  # NaN left over would fail


@needs_madv_free
def test_nothing_the_caller_can_reach_is_reused():
    x = logits(0)
    p = logitkit.softmax(x)
    row = p[3]  # a NumPy view
    expected = row.copy()
    del p
    assert _buffers.pooled_bytes() == 0
    q = logitkit.softmax(logits(1))
    np.testing.assert_array_equal(row, expected)
    assert not np.shares_memory(row, q)
    del row
    assert _buffers.pooled_bytes() > 0


@needs_madv_free
def test_torch_tensors_keep_their_buffer():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(logits(0))
    p = logitkit.softmax(x)
    expected = p.clone()
    assert _buffers.pooled_bytes() == 0
    q = logitkit.softmax(torch.from_numpy(logits(1)))
    torch.testing.assert_close(p, expected, rtol=0, atol=0)
    assert p.data_ptr() != q.data_ptr()
    del p
    assert _buffers.pooled_bytes() > 0
    # The autograd adapter's gradient: pooled only once the leaf lets go of it.
    _kernels.release_buffers()
    leaf = x.clone().requires_grad_(True)
    t = torch.from_numpy(np.random.default_rng(2).integers(0, SHAPE[1], SHAPE[0]))
    logitkit.cross_entropy(leaf, t).backward()
    expected = leaf.grad.clone()
    assert _buffers.pooled_bytes() == 0
    r = logitkit.softmax(torch.from_numpy(logits(2)))
    torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=0)
    assert leaf.grad.data_ptr() != r.data_ptr()
    leaf.grad = None
    assert _buffers.pooled_bytes() > 0


@needs_madv_free
def test_the_pool_is_bounded_and_releases_the_oldest_first():
    outs = [logitkit.softmax(logits(i)) for i in range(_buffers.MAX_BUFFERS + 2)]
    pages = [huge_page(o) for o in outs]
    while outs:
        outs.pop(0)  # freed in order
    held = list(_buffers._free)
    assert len(held) == _buffers.MAX_BUFFERS
    assert _buffers.pooled_bytes() <= _kernels.buffer_cache_limit()
    q = logitkit.softmax(logits(9))
    assert huge_page(q) == pages[-1]  # the most recently freed; the two first went to the OS
    assert [address(r) for r in _buffers._free] == [address(r) for r in held[:-1]]
    one = held[0].nbytes
    _kernels.set_buffer_cache(one)  # lowering the limit trims the pool at once
    assert _buffers.pooled_bytes() <= one
    _kernels.set_buffer_cache(one - 1)
    del q
    assert _buffers.pooled_bytes() == 0  # a buffer larger than the limit is never pooled


@needs_madv_free
def test_a_buffer_is_reused_only_for_a_similar_size():
    p = logitkit.softmax(logits(0, shape=(4400, 1024)))  # 17 MiB
    first = huge_page(p)
    del p
    q = logitkit.softmax(logits(1))  # 4.3 MiB: would waste three quarters of the pooled buffer
    assert huge_page(q) != first and _buffers.pooled_bytes() > 0


def test_switches_turn_recycling_off(monkeypatch):
    monkeypatch.setenv("LOGITKIT_BUFFER_CACHE", "0")
    assert _kernels.buffer_cache_limit() == 0
    p = logitkit.softmax(logits(0))
    assert address(p) % (1 << 21) < 4096  # still placed on a huge page
    del p
    assert _buffers.pooled_bytes() == 0
    monkeypatch.delenv("LOGITKIT_BUFFER_CACHE")
    _kernels.set_buffer_cache(0)
    assert _kernels.buffer_cache_limit() == 0
    p = logitkit.softmax(logits(0))
    del p
    assert _buffers.pooled_bytes() == 0


@needs_madv_free
def test_release_buffers_gives_back_what_the_pool_held():
    p = logitkit.softmax(logits(0))
    del p
    held = _buffers.pooled_bytes()
    assert held > 0 and _kernels.release_buffers() == held
    assert _buffers.pooled_bytes() == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1G", None])
def test_set_buffer_cache_rejects_bad_limits(bad):
    error = logitkit.LogitkitValueError if bad == -1 else logitkit.LogitkitTypeError
    with pytest.raises(error, match=r"`max_bytes`.*non-negative integer"):
        _kernels.set_buffer_cache(bad)


LAZY_FREE = r"""
import numpy as np, logitkit

def lazy_free_kib():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("LazyFree:"):
                return int(line.split()[1])
    return -1

before = lazy_free_kib()
p = logitkit.softmax(np.ones((1100, 1024), np.float32))
kib = p.nbytes // 1024
del p
print(before, lazy_free_kib() - before, kib)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps_rollup")
@needs_madv_free
def test_pooled_memory_is_left_for_the_os_to_take_back():
    # In a fresh interpreter: pages once advised keep counting as LazyFree after malloc reuses
    # them, so only a process that never pooled anything shows the change cleanly.
    out = subprocess.run([sys.executable, "-c", LAZY_FREE], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if k != "LOGITKIT_BUFFER_CACHE"})
    before, grown, kib = map(int, out.stdout.split())
    if before < 0:
        pytest.skip("this kernel does not report LazyFree")  # pragma: no cover
    assert grown >= kib * 9 // 10  # (nearly) every page of the output


def test_concurrent_calls_never_share_a_live_buffer():
    xs = [logits(i) for i in range(4)]
    expected = [generic(logitkit.softmax, x) for x in xs]

    def work(i: int) -> bool:
        kept = []
        for _ in range(6):
            kept.append(logitkit.softmax(xs[i]))
            if len(kept) > 2:
                kept.pop(0)  # free one while the other threads allocate
        return all(np.allclose(k, expected[i], rtol=2e-6, atol=1e-12) for k in kept)

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, range(4)))


@needs_madv_free
def test_a_copied_or_pickled_buffer_owner_never_frees_memory_in_use():
    """The object that owns a recycled output cannot be copied or pickled (a second owner would
    give the memory back to the pool while the first is still read), and even one made around
    that guard does not; copies and pickles of the array itself are independent arrays."""
    import copy
    import pickle

    p = logitkit.softmax(logits(0))
    owner = p.base
    while isinstance(owner, np.ndarray):  # the output is a view of the owner's array
        owner = owner.base
    assert type(owner) is _buffers._Lease
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            attempt(owner)
    clone = object.__new__(_buffers._Lease)
    clone._raw = owner._raw
    clone.__array_interface__ = owner.__array_interface__
    del clone
    assert _buffers.pooled_bytes() == 0  # the clone gave nothing back
    expected = p.copy()
    for twin in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert not np.shares_memory(twin, p)
        np.testing.assert_array_equal(twin, expected)
    q = logitkit.softmax(logits(1))
    assert not np.shares_memory(p, q)
    np.testing.assert_array_equal(p, expected)
    del p, owner
    assert _buffers.pooled_bytes() > 0  # the true owner's buffer, once nothing views it
