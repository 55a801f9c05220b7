"""The native kernels: accuracy of their exp, fast path = generic path, the switch, torch views.

Every comparison runs the same call twice, once with the fast path and once inside
``fast_path(False)`` (the generic array-API path), and requires agreement within the DESIGN §7
bounds (both sides are within them of the exact value, so within twice of each other).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import hypothesis.extra.numpy as hnp
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit
import reference
from conftest import assert_close
from logitkit import _kernels
from logitkit._kernels import fast_path

U = {np.float32: 2.0**-24, np.float64: 2.0**-53}
DTYPES = [np.float32, np.float64]


def generic(fn, *args, **kwargs):
    with fast_path(False):
        return fn(*args, **kwargs)


def _spy(entry: str, call) -> bool:
    """Whether ``call()`` got a result from the kernel entry point ``entry``."""
    real = getattr(_kernels, entry)
    seen = []

    def spy(problem):
        result = real(problem)
        seen.append(result is not None)
        return result

    setattr(_kernels, entry, spy)
    try:
        with np.errstate(all="ignore"):
            call()
    finally:
        setattr(_kernels, entry, real)
    return any(seen)


def uses_kernel(name: str, x, **kwargs) -> bool:
    """Whether ``logitkit.<name>(x, **kwargs)`` is computed by the kernel."""
    return _spy("normalise", lambda: getattr(logitkit, name)(x, **kwargs))


def uses_ce_kernel(x, t, **kwargs) -> bool:
    """Whether ``cross_entropy_with_grad(x, t, **kwargs)`` is computed by the kernel."""
    return _spy("cross_entropy", lambda: logitkit.cross_entropy_with_grad(x, t, **kwargs))


@pytest.fixture(params=["serial", "parallel"])
def pool(request):
    """Run a test once on the calling thread only and once on the thread pool whatever the size
    (with a single thread both runs are serial)."""
    native = _kernels.native()
    before = native.min_parallel_ns()
    native.set_min_parallel_ns(1e30 if request.param == "serial" else 0.0)
    yield request.param
    native.set_min_parallel_ns(before)


def assert_same(fast, slow, dtype, *, scale=None, err_msg=""):
    """Equal special values; finite values within 32u·(1 + |slow| + scale) (twice the §7 bound)."""
    f = np.asarray(fast, dtype=np.float64)
    s = np.asarray(slow, dtype=np.float64)
    assert f.shape == s.shape, err_msg
    np.testing.assert_array_equal(np.isnan(f), np.isnan(s), err_msg=err_msg)
    inf = np.isinf(s)
    np.testing.assert_array_equal(f[inf], s[inf], err_msg=err_msg)
    ok = np.isfinite(s)
    assert np.isfinite(f[ok]).all(), err_msg
    tol = 32 * U[dtype] * (1.0 + np.abs(s[ok]) + (0.0 if scale is None else scale))
    # Subnormal probabilities carry no relative guarantee (DESIGN §7): absolute there.
    tiny = float(np.finfo(dtype).tiny)
    err = np.abs(f[ok] - s[ok])
    bad = err > np.maximum(tol * np.maximum(np.abs(s[ok]), 1.0), tiny)
    assert not bad.any(), f"{err_msg}: max error {err.max()} at {np.flatnonzero(bad)[:5]}"


# --------------------------------------------------------------------------------------------
# import cost and the switch
# --------------------------------------------------------------------------------------------


def test_import_loads_no_kernel_compiler_and_no_optional_backend():
    # How long the import takes is measured by benchmarks/bench_import.py, not asserted here:
    # a timed test on shared machines fails on load, not on code.
    heavy = ["numba", "llvmlite", "torch", "jax", "scipy", "matplotlib", "sklearn", "dask",
             "pandas"]
    code = f"import sys, logitkit; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_switches_turn_the_fast_path_off(monkeypatch):
    x = np.random.default_rng(0).standard_normal((3, 5))
    assert uses_kernel("softmax", x)
    with fast_path(False):
        assert not uses_kernel("softmax", x)
        with fast_path(True):
            assert uses_kernel("softmax", x)
    _kernels.set_fast_path(False)
    try:
        assert not uses_kernel("softmax", x)
        assert not uses_kernel("logsumexp", x)
        with fast_path(True):
            assert uses_kernel("softmax", x)
    finally:
        _kernels.set_fast_path(True)
    monkeypatch.setenv("LOGITKIT_DISABLE_KERNELS", "1")
    assert not _kernels.fast_path_enabled()
    assert not uses_kernel("log_softmax", x)
    monkeypatch.setenv("LOGITKIT_DISABLE_KERNELS", "0")
    assert uses_kernel("log_softmax", x)


def test_unsupported_options_fall_back_to_the_generic_path():
    x = np.random.default_rng(0).standard_normal((3, 5))
    assert not uses_kernel("softmax", x, temperature=0.0)
    assert not uses_kernel("softmax", x, temperature=math.inf)
    assert not uses_kernel("softmax", x, temperature=np.ones(3))
    assert not uses_kernel("softmax", x, sink=0.0)
    assert not uses_kernel("softmax", x.astype(np.float16))
    assert not uses_kernel("softmax", x.astype(np.int64))
    assert not uses_kernel("softmax", x, dtype=np.float32)
    assert not uses_kernel("softmax", x[:, :, None], axis=(0, 2))  # not consecutive
    assert not uses_kernel("logsumexp", x, b=np.ones(5))
    assert not uses_kernel("softmax", np.zeros((3, 0)))
    # ...and the library still answers them (the generic path).
    assert_close(logitkit.softmax(x, temperature=0.0).sum(-1), np.ones(3))


def test_bad_input_still_raises_the_library_error():
    x = np.zeros((2, 3))
    with pytest.raises(logitkit.LogitkitValueError, match="temperature"):
        logitkit.softmax(x, temperature=-1.0)
    with pytest.raises(logitkit.LogitkitValueError, match="softcap"):
        logitkit.log_softmax(x, softcap=-2.0)
    with pytest.raises(logitkit.LogitkitValueError, match="where"):
        logitkit.softmax(x, where=np.ones(4, dtype=bool))
    with pytest.raises(logitkit.LogitkitTypeError, match="where"):
        logitkit.softmax(x, where=np.ones(3))
    with pytest.raises(logitkit.LogitkitValueError, match="axis"):
        logitkit.logsumexp(x, axis=3)


# --------------------------------------------------------------------------------------------
# the vectorised exp against mpmath
# --------------------------------------------------------------------------------------------


def _map(name, a):
    out = np.empty_like(a)
    getattr(_kernels.native(), name)(a, out)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("target")
def test_exp_is_within_two_units_of_roundoff(dtype):
    lo = -110.0 if dtype == np.float32 else -750.0
    rng = np.random.default_rng(7)
    d = np.concatenate([
        np.linspace(lo, 0.0, 20001), -rng.exponential(5.0, 4000), -rng.random(2000) * 1e-6,
        [0.0, -0.0, -np.log(2) / 2, -np.log(2), -1e-30], np.linspace(lo, lo + 60, 500),
    ]).astype(dtype)
    out = _map("exp", d)
    assert out[d == 0].tolist() == [1.0] * int((d == 0).sum())  # exp(0) is exactly 1
    exact = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in d])
    tiny = float(np.finfo(dtype).tiny)
    normal = exact >= tiny
    rel = np.abs(out[normal] - exact[normal]) / exact[normal]
    assert rel.max() <= 2 * U[dtype], rel.max() / U[dtype]
    # Subnormal results: rounded once (error at most one subnormal step), never flushed.
    step = float(np.finfo(dtype).smallest_subnormal)
    assert np.all(np.abs(out[~normal] - exact[~normal]) <= step)
    assert np.all(out[exact >= step] > 0)  # no representable result is flushed to zero


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("target")
def test_exp_propagates_nan_and_flushes_below_underflow(dtype):
    d = np.array([np.nan, -np.inf, -1e30, -2000.0, -1e9], dtype=dtype)
    out = _map("exp", d)
    assert np.isnan(out[0])
    assert out[1:].tolist() == [0.0, 0.0, 0.0, 0.0]
    # Both sides of the point below which lanes are 0 without being computed (-104 in float32,
    # -746 in float64): the rounded exact value either way, within one subnormal step.
    cut = -104.0 if dtype == np.float32 else -746.0
    near = np.array([cut - 1, np.nextafter(cut, -np.inf), cut, np.nextafter(cut, 0), cut + 0.5,
                     cut + 1, cut + 3], dtype=dtype)
    exact = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in near])
    step = float(np.finfo(dtype).smallest_subnormal)
    assert np.all(np.abs(_map("exp", near) - exact) <= step)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("target")
def test_tanh_is_within_three_units_of_roundoff(dtype):
    """The softcap's vectorised tanh, against mpmath, on both sides of the switch between its
    two formulas (|z| = 0.625), where the exponential form saturates, and for tiny arguments."""
    big = 1e300 if dtype == np.float64 else 1e30
    rng = np.random.default_rng(11)
    z = np.concatenate([
        np.linspace(-20.0, 20.0, 20001), rng.standard_normal(4000) * 3,
        rng.standard_normal(1000) * 1e-4, np.linspace(0.6, 0.65, 1001),
        -np.linspace(0.6, 0.65, 1001), [1e-30, -1e-30, 5e-39, 30.0, -30.0, big, -big],
    ]).astype(dtype)
    out = _map("tanh", z)
    exact = np.array([float(mpmath.tanh(mpmath.mpf(float(v)))) for v in z])
    rel = np.abs(out - exact) / np.maximum(np.abs(exact), float(np.finfo(dtype).tiny))
    assert rel.max() <= 3 * U[dtype], rel.max() / U[dtype]
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=dtype)
    out = _map("tanh", special)
    assert np.isnan(out[0]) and out[1:3].tolist() == [1.0, -1.0]
    assert out[3:].tolist() == [0.0, 0.0] and np.signbit(out[3:]).tolist() == [False, True]


# --------------------------------------------------------------------------------------------
# accuracy of the kernels against the exact (mpmath) values: DESIGN §7 bounds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_meet_the_accuracy_bounds(dtype):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((3, 40)) * 30, rng.standard_normal((2, 40)) * 1e-3,
                        np.linspace(-80, 5, 40)[None]]).astype(dtype)
    x[4, 5] = 60.0  # one dominant term: the log1p form matters
    assert uses_kernel("softmax", x)
    u = U[dtype]
    k = x.shape[1]
    d = np.abs(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    p = logitkit.softmax(x)
    exact_p = reference.softmax(x)
    normal = exact_p >= np.finfo(dtype).tiny
    rel = np.abs(p - exact_p)[normal] / exact_p[normal]
    assert np.all(rel <= 16 * u * (1 + d[normal]))
    logp = logitkit.log_softmax(x)
    assert np.all(np.abs(logp - reference.log_softmax(x)) <= 16 * u * (1 + d + np.log(k)))
    lse = logitkit.logsumexp(x)
    exact_lse = reference.lse(x)
    assert np.all(np.abs(lse - exact_lse) <= 16 * u * (np.maximum(1, np.abs(exact_lse)) + np.log(k)))


@pytest.mark.usefixtures("target")
def test_vectorised_log1p_is_within_three_ulps():
    """The rows' log-sums ``log1p(a)``, ``a = rest + n_top − 1 ≥ 0``: on both sides of the
    switch at √2 of the log's reduction, at powers of two, for tiny ``a`` (a dominant row)
    and huge ones."""
    rng = np.random.default_rng(11)
    a = np.concatenate([rng.random(3000), np.exp(rng.random(3000) * 30), rng.random(500) * 1e-12,
                        2.0 ** -np.arange(1, 60), 2.0 ** np.arange(0, 60) - 1.0,
                        [0.0, 2**-52, 2**0.5 - 1, np.nextafter(2**0.5, 0) - 1, 1.0, 2.0, 262143.0,
                         1e300, 5e-324]])
    out = _map("log1p", a)
    exact = np.array([float(mpmath.log1p(mpmath.mpf(float(v)))) for v in a])
    assert (out[a == 0.0] == 0.0).all()  # log(1) is exactly 0
    err = np.abs(out - exact)
    ulp = np.spacing(np.maximum(np.abs(exact), np.finfo(np.float64).smallest_subnormal))
    assert np.all(err <= 3 * ulp), (err / ulp).max()


@pytest.mark.parametrize("k", [127, 128, 129, 32000, 262144])
def test_float32_long_rows_meet_the_accuracy_bounds(k):
    """The float32 kernels sum in float32 over blocks, then in float64: the §7 bounds hold on
    rows of every length, up to the benchmark's vocabularies (float64 reference sums)."""
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((2, k)) * 4).astype(np.float32)
    x[1, 7] = 30.0  # one dominant entry
    assert uses_kernel("softmax", x)
    u = U[np.float32]
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    e = np.exp(x64 - m)
    s = np.sum(e, axis=1, keepdims=True)  # float64: exact enough against float32 bounds
    d = m - x64
    p = logitkit.softmax(x)
    normal = e / s >= np.finfo(np.float32).tiny
    rel = np.abs(p - e / s)[normal] / (e / s)[normal]
    assert np.all(rel <= 16 * u * (1 + d[normal])), rel.max() / u
    logp = logitkit.log_softmax(x)
    assert np.all(np.abs(logp - (x64 - m - np.log(s))) <= 16 * u * (1 + d + np.log(k)))
    lse = logitkit.logsumexp(x)
    exact = (m + np.log(s))[:, 0]
    assert np.all(np.abs(lse - exact) <= 16 * u * (np.maximum(1, np.abs(exact)) + np.log(k)))


def test_large_outputs_are_placed_on_huge_page_boundaries():
    small = _kernels._empty((3, 5), np.float32)
    assert small.shape == (3, 5) and small.dtype == np.float32
    big = _kernels._empty((1025, 1024), np.float32)  # just over 4 MiB
    assert big.shape == (1025, 1024) and big.dtype == np.float32
    assert big.flags.c_contiguous and big.flags.writeable
    assert big.__array_interface__["data"][0] % (1 << 21) == 0
    big[...] = 1.0  # the whole view is usable
    x = np.random.default_rng(0).standard_normal((1100, 1024)).astype(np.float32)
    p = logitkit.softmax(x)
    addr = p.__array_interface__["data"][0]
    assert addr % (1 << 21) < 4096  # within the first 4 KiB of a huge page
    # ... half a page away from the input's offset (same offsets slow the kernels down)
    assert (addr - x.__array_interface__["data"][0]) % 4096 in range(2048 - 63, 2049)
    assert_same(p, generic(logitkit.softmax, x), np.float32)
    q = logitkit.log_softmax(p)  # an aligned input gets an output half a page away from it
    assert (q.__array_interface__["data"][0] - addr) % 4096 == 2048


@pytest.fixture
def streaming():
    """Outputs of 1 MiB and more streamed (the default starts at 3/4 of the last-level cache)."""
    native = _kernels.native()
    before = native.stream_min_bytes()
    native.set_stream_min_bytes(1 << 20)
    yield
    native.set_stream_min_bytes(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("streaming", "pool")
def test_large_outputs_streamed_to_memory_equal_generic(dtype):
    """Large outputs are written by streaming stores from a scratch row: rows whose output
    starts off a 64-byte boundary (K = 4099), edge rows, and the label's entry of the
    cross-entropy's gradient falling in the aligned part, the head and the tail."""
    rng = np.random.default_rng(9)
    k = 4099
    n = (1 << 20) // (k * np.dtype(dtype).itemsize) + 3
    x = (rng.standard_normal((n, k)) * 5).astype(dtype)
    x[2, 7] = np.nan
    x[5] = -np.inf
    x[6, [1, 9]] = np.inf
    t = rng.integers(0, k, n)
    t[:4] = [0, 1, k - 1, 2048]
    with np.errstate(all="ignore"):
        for fn in (logitkit.softmax, logitkit.log_softmax):
            assert_same(fn(x, temperature=1.3), generic(fn, x, temperature=1.3), dtype,
                        scale=np.log(k))
        loss, g = logitkit.cross_entropy_with_grad(x, t, reduction="none")
        ref_loss, ref_g = generic(logitkit.cross_entropy_with_grad, x, t, reduction="none")
    tol = dict(rtol=5e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-14)
    assert_close(loss, ref_loss, **tol)
    assert_close(g, ref_g, **tol)


def test_cross_entropy_kernel_never_indexes_outside_the_row():
    """The kernel entry point checks the labels itself: a label outside [0, K) is flagged for
    the caller (the public function raised for it before), never read out of range."""
    x = np.zeros((3, 4))
    for bad in (4, -1, 1 << 40):
        res = _kernels.cross_entropy(_kernels.CrossEntropyRows(x, labels=np.array([0, bad, 2]),
                                                               grad_scale=1.0))
        assert res.flagged.tolist() == [False, True, False]
        assert_close(res.loss[[0, 2]], np.full(2, np.log(4)))
        with pytest.raises(logitkit.LogitkitValueError, match="target"):
            logitkit.cross_entropy(x, np.array([0, bad, 2]))


def test_logsumexp_keeps_the_tiny_terms_of_a_dominant_row():
    x = np.array([[0.0, -40.0, -45.0]])
    lse = logitkit.logsumexp(x)
    exact = float(mpmath.log(1 + mpmath.exp(-40) + mpmath.exp(-45)))
    assert uses_kernel("logsumexp", x)
    assert abs(float(lse[0]) - exact) <= 2 * U[np.float64] * exact


# --------------------------------------------------------------------------------------------
# the edge-case table (DESIGN §2): fast path = generic path
# --------------------------------------------------------------------------------------------

INF, NAN = np.inf, np.nan
EDGE_ROWS = {
    "finite": [1.0, -2.0, 3.0, 0.5],
    "masked": [1.0, 2.0, 3.0, 4.0],  # with the all-False mask row below
    "all -inf": [-INF, -INF, -INF, -INF],
    "one +inf": [1.0, INF, 3.0, -INF],
    "two +inf": [INF, 0.0, INF, 2.0],
    "nan": [1.0, NAN, 2.0, 3.0],
    "nan and inf": [INF, NAN, 2.0, -INF],
    "masked nan": [NAN, 1.0, 2.0, INF],
    "huge": [3e38, -3e38, 1e38, 0.0],
    "tiny": [1e-38, -1e-38, 0.0, 1e-45],
    "ties": [5.0, 5.0, 5.0, 1.0],
    "one dominant": [0.0, -30.0, -60.0, -100.0],
}
EDGE_MASK = {"masked": [False] * 4, "masked nan": [False, True, True, False],
             "one +inf": [True, True, False, True]}


def _table(dtype):
    with np.errstate(over="ignore"):
        x = np.array(list(EDGE_ROWS.values()), dtype=dtype)
    mask = np.ones(x.shape, dtype=bool)
    for i, name in enumerate(EDGE_ROWS):
        if name in EDGE_MASK:
            mask[i] = EDGE_MASK[name]
    return x, mask


OPTION_SETS = [
    {},
    {"temperature": 0.25},
    {"temperature": 7.0},
    {"softcap": 2.0},
    {"softcap": 30.0, "temperature": 0.5},
    {"temperature": 0.0},  # generic path (limit), must still agree
    {"temperature": math.inf},
    {"temperature": "per-row"},
    {"sink": 0.0},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(map(str, o.items())))
@pytest.mark.usefixtures("pool")
def test_edge_case_table_fast_equals_generic(dtype, masked, options):
    x, mask = _table(dtype)
    opts = dict(options)
    if opts.get("temperature") == "per-row":
        opts["temperature"] = np.linspace(0.5, 3.0, x.shape[0]).astype(dtype)
    where = mask if masked else None
    for fn in (logitkit.softmax, logitkit.log_softmax):
        with np.errstate(all="ignore"):
            fast = fn(x, where=where, **opts)
            slow = generic(fn, x, where=where, **opts)
        assert fast.dtype == slow.dtype == dtype
        assert_same(fast, slow, dtype, scale=np.log(4), err_msg=f"{fn.__name__} {options}")
    if not options:
        fast = logitkit.logsumexp(x, where=where)
        with np.errstate(over="ignore"):  # the generic path warns on the ±3e38 row
            slow = generic(logitkit.logsumexp, x, where=where)
        assert fast.dtype == slow.dtype
        assert_same(fast, slow, dtype, err_msg="logsumexp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_rows_through_the_kernel_entry_points(dtype):
    x, mask = _table(dtype)
    assert uses_kernel("softmax", x, where=mask)
    assert uses_kernel("log_softmax", x, softcap=3.0, temperature=2.0)
    assert uses_kernel("logsumexp", x, where=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_axis_and_empty_batch(dtype):
    for shape in [(3, 0), (0, 4), (2, 0, 3)]:
        x = np.zeros(shape, dtype=dtype)
        for fn in (logitkit.softmax, logitkit.log_softmax, logitkit.logsumexp):
            assert_close(fn(x, axis=1), generic(fn, x, axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_logsumexp_keepdims_and_sign(dtype):
    x, mask = _table(dtype)
    for keepdims in (False, True):
        fast = logitkit.logsumexp(x, where=mask, keepdims=keepdims, return_sign=True)
        with np.errstate(over="ignore"):
            slow = generic(logitkit.logsumexp, x, where=mask, keepdims=keepdims, return_sign=True)
        assert_same(fast[0], slow[0], dtype)
        assert_close(fast[1], slow[1])
        assert fast[0].shape == slow[0].shape and fast[1].dtype == slow[1].dtype
    one = logitkit.logsumexp(x[0])
    assert isinstance(one, np.ndarray) and one.shape == ()


# --------------------------------------------------------------------------------------------
# layouts: middle axes, tuple axes, broadcast masks, long rows split across threads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("pool")
def test_other_axes_and_layouts(dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 37, 70)) * 6).astype(dtype)
    x[1, 4, 9] = np.nan
    x[2, :, 3] = -np.inf
    x[0, 5, 6] = np.inf
    mask = rng.random((37, 70)) > 0.3
    cases = [dict(axis=0), dict(axis=1), dict(axis=1, where=mask), dict(axis=-1, where=mask[0]),
             dict(axis=(1, 2)), dict(axis=(0, 1), temperature=2.5), dict(axis=2, softcap=4.0)]
    for opts in cases:
        for fn in (logitkit.softmax, logitkit.log_softmax):
            assert_same(fn(x, **opts), generic(fn, x, **opts), dtype, scale=8.0,
                        err_msg=f"{fn.__name__} {opts}")
        lse_opts = {k: v for k, v in opts.items() if k in ("axis", "where")}
        assert_same(logitkit.logsumexp(x, **lse_opts), generic(logitkit.logsumexp, x, **lse_opts),
                    dtype, err_msg=f"lse {opts}")
    xt = np.asfortranarray(x)  # non-contiguous input is made contiguous first
    assert_same(logitkit.softmax(xt, axis=1), generic(logitkit.softmax, x, axis=1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [2047, 2048, 2049, 40001])
@pytest.mark.usefixtures("pool")
def test_chunk_boundaries_and_split_rows(dtype, k):
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((1, k)) * 10).astype(dtype)
    x[0, k // 2] = 80.0  # the max arrives in a later chunk: the running sum is rescaled
    x[0, -1] = 79.5
    mask = rng.random(k) > 0.1
    for opts in ({}, {"where": mask}, {"temperature": 3.0}, {"softcap": 20.0}):
        for fn in (logitkit.softmax, logitkit.log_softmax):
            assert_same(fn(x, **opts), generic(fn, x, **opts), dtype, scale=np.log(k) + 100)
    assert_same(logitkit.logsumexp(x, where=mask), generic(logitkit.logsumexp, x, where=mask),
                dtype, scale=np.log(k))
    x[0, 7] = np.nan
    assert np.isnan(logitkit.softmax(x)).all()


def test_small_inputs_stay_on_the_calling_thread():
    """Work below the threshold (in estimated nanoseconds) never wakes the pool; larger work
    does, in every layout, and a few long rows are split across the threads."""
    native = _kernels.native()
    if native.num_threads() < 2:
        pytest.skip("one thread: nothing is ever run on the pool")  # pragma: no cover
    rng = np.random.default_rng(1)
    small = rng.standard_normal((150, 3))
    jobs = native.pool_jobs()
    logitkit.log_softmax(small)
    logitkit.softmax(small.reshape(50, 3, 3), axis=1)
    logitkit.cross_entropy_with_grad(small, rng.integers(0, 3, 150))
    assert native.pool_jobs() == jobs
    big = rng.standard_normal((64, 1 << 14))
    for call in (lambda: logitkit.log_softmax(big),
                 lambda: logitkit.softmax(big.reshape(64, 8, -1), axis=1),
                 lambda: logitkit.cross_entropy_with_grad(big, rng.integers(0, big.shape[1], 64)),
                 lambda: logitkit.softmax(big.reshape(1, -1))):  # one row, split in segments
        jobs = native.pool_jobs()
        call()
        assert native.pool_jobs() > jobs
    one_row = big.reshape(1, -1)
    assert_same(logitkit.softmax(one_row), generic(logitkit.softmax, one_row), np.float64)
    with np.errstate(all="ignore"):
        assert_same(logitkit.log_softmax(big), generic(logitkit.log_softmax, big), np.float64)


# --------------------------------------------------------------------------------------------
# property-based: random arrays with specials, masks and options
# --------------------------------------------------------------------------------------------

elements = st.one_of(
    st.floats(-1e4, 1e4, width=32),
    st.sampled_from([np.inf, -np.inf, np.nan, 0.0, 3e38, -3e38]),
)


@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
                 elements=elements),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from([1.0, 0.3, 4.0]),
    softcap=st.sampled_from([None, 5.0]),
    mask_seed=st.one_of(st.none(), st.integers(0, 2**16)),
)
def test_fast_equals_generic_on_random_arrays(x, dtype, temperature, softcap, mask_seed):
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    where = None
    if mask_seed is not None:
        where = np.random.default_rng(mask_seed).random(x.shape) > 0.3
    opts = dict(temperature=temperature, softcap=softcap, where=where)
    assert uses_kernel("softmax", x, **opts)
    scale = np.log(x.shape[1]) + 1.0
    with np.errstate(all="ignore"):
        for fn in (logitkit.softmax, logitkit.log_softmax):
            assert_same(fn(x, **opts), generic(fn, x, **opts), dtype, scale=scale)
        assert_same(logitkit.logsumexp(x, where=where), generic(logitkit.logsumexp, x, where=where),
                    dtype, scale=scale)


# --------------------------------------------------------------------------------------------
# torch CPU tensors: zero-copy views into the same kernels
# --------------------------------------------------------------------------------------------


def test_torch_cpu_tensors_use_the_kernels(monkeypatch):
    import torch
    calls = []
    real = _kernels._run

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_kernels, "_run", spy)
    x = torch.randn(4, 300, dtype=torch.float32)
    p = logitkit.softmax(x, temperature=0.7)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float32 and calls
    assert_close(p, torch.softmax(x / 0.7, dim=-1), rtol=2e-6, atol=1e-9)
    lse = logitkit.logsumexp(x.double(), where=torch.ones(300, dtype=torch.bool))
    assert lse.dtype == torch.float64 and lse.shape == (4,)
    assert_close(lse, torch.logsumexp(x.double(), dim=-1), rtol=1e-14)
    calls.clear()
    # Autograd needs the generic path (a differentiable graph): no kernel then.
    xg = x.clone().requires_grad_(True)
    logitkit.log_softmax(xg).sum().backward()
    assert not calls and xg.grad is not None
    with torch.no_grad():
        logitkit.log_softmax(xg)
    assert calls


# --------------------------------------------------------------------------------------------
# cross_entropy_with_grad
# --------------------------------------------------------------------------------------------


def reference_ce(x, target, *, ignore_index=None, weight=None, label_smoothing=0.0, z_loss=0.0,
                 logit_l2=0.0, temperature=1.0, where=None, softcap=None, reduction="mean"):
    """A straightforward float64 NumPy cross-entropy and its gradient (finite rows)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _reference_ce(x, target, ignore_index, weight, label_smoothing, z_loss, logit_l2,
                             temperature, where, softcap, reduction)


def _reference_ce(x, target, ignore_index, weight, label_smoothing, z_loss, logit_l2,
                  temperature, where, softcap, reduction):
    x = np.asarray(x, dtype=np.float64)
    n, k = x.shape
    mask = np.ones((n, k), bool) if where is None else np.broadcast_to(where, (n, k))
    xs = np.where(mask, x, 0.0)
    y = softcap * np.tanh(xs / softcap) if softcap else xs
    z = np.where(mask, y / temperature, -np.inf)
    lse = np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1)) + z.max(1)
    logp = z - lse[:, None]
    p = np.exp(logp)
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    kv = mask.sum(1, keepdims=True)
    if target.dtype.kind == "f":
        q = target.astype(np.float64)
        keep = np.ones(n, bool)
    else:
        keep = np.ones(n, bool) if ignore_index is None else target != ignore_index
        q = np.zeros((n, k))
        q[np.arange(n)[keep], target[keep]] = 1.0
    yt = (1 - label_smoothing) * q + np.where(mask, label_smoothing / np.maximum(kv, 1), 0.0)
    big_w = w * yt
    counted = keep & mask.any(1)
    loss = -np.sum(np.where(big_w > 0, big_w * logp, 0.0), 1) + z_loss * lse**2
    loss = loss + 0.5 * logit_l2 * np.sum(np.where(mask, x, 0.0) ** 2, 1)
    loss = np.where(counted, loss, 0.0)
    coef = big_w.sum(1) + 2 * z_loss * lse
    g = (coef[:, None] * p - big_w) / temperature
    if softcap:
        g = g * (1 - np.tanh(xs / softcap) ** 2)
    g = np.where(mask, g + logit_l2 * xs, 0.0)
    g = np.where(counted[:, None], g, 0.0)
    if reduction == "none":
        return loss, g
    if reduction == "sum":
        return loss.sum(), g
    if target.dtype.kind != "f" and weight is not None:
        denom = np.sum(np.where(counted, w[np.where(keep, target, 0)], 0.0))
    else:
        denom = counted.sum()
    return loss.sum() / denom, g / denom


CE_OPTIONS = [
    {},
    {"ignore_index": -100},
    {"weight": "w", "ignore_index": -100},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": "w"},
    {"z_loss": 1e-2},
    {"logit_l2": 0.05},
    {"temperature": 1.7},
    {"softcap": 4.0},
    {"where": "mask", "label_smoothing": 0.1},
    {"where": "row mask", "weight": "w", "softcap": 3.0, "temperature": 0.5, "logit_l2": 0.1,
     "z_loss": 0.01, "label_smoothing": 0.3},
]


def _ce_case(dtype, options, target_kind):
    rng = np.random.default_rng(11)
    n, k = 24, 130
    x = (rng.standard_normal((n, k)) * 3).astype(dtype)
    opts = dict(options)
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(k).astype(dtype) + 0.1
    if opts.get("where") == "mask":
        mask = rng.random((n, k)) > 0.2
        if target_kind == "int":
            mask[3] = False  # a fully masked row: loss 0, gradient 0, not counted
        opts["where"] = mask
    elif opts.get("where") == "row mask":
        opts["where"] = rng.random(k) > 0.25
    if target_kind == "int":
        t = rng.integers(0, k, n)
        if "where" in opts:  # labels on live classes (a masked label is an infinite loss)
            live = np.broadcast_to(opts["where"], (n, k))
            t = np.array([np.flatnonzero(r)[0] if r.any() else 0 for r in live])
        if "ignore_index" in opts:
            t[[2, 9]] = -100
    else:
        opts.pop("ignore_index", None)
        q = rng.random((n, k)) ** 4
        if "where" in opts:
            q = np.where(np.broadcast_to(opts["where"], (n, k)), q, 0.0)
            q[~q.any(1)] = 1.0 / k
        t = (q / q.sum(1, keepdims=True)).astype(dtype)
    return x, t, opts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target_kind", ["int", "prob"])
@pytest.mark.parametrize("options", CE_OPTIONS, ids=lambda o: ",".join(o))
@pytest.mark.usefixtures("pool")
def test_cross_entropy_with_grad_matches_reference_and_generic(dtype, target_kind, options):
    x, t, opts = _ce_case(dtype, options, target_kind)
    assert uses_ce_kernel(x, t, **opts)
    tol = dict(rtol=5e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-14)
    for reduction in ("mean", "sum", "none"):
        loss, g = logitkit.cross_entropy_with_grad(x, t, reduction=reduction, **opts)
        assert g.dtype == dtype and g.shape == x.shape
        rl, rg = reference_ce(x, t, reduction=reduction, **opts)
        assert_close(loss, rl, **tol, err_msg=f"loss {reduction}")
        assert_close(g, rg, **tol, err_msg=f"grad {reduction}")
        sl, sg = generic(logitkit.cross_entropy_with_grad, x, t, reduction=reduction, **opts)
        assert type(loss) is type(sl) and np.shape(loss) == np.shape(sl)
        assert np.asarray(loss).dtype == np.asarray(sl).dtype
        assert_close(loss, sl, **tol)
        assert_close(g, sg, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("pool")
def test_cross_entropy_special_rows_equal_generic(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((8, 20)) * 2).astype(dtype)
    x[1, 3] = np.nan
    x[2, 4] = np.inf
    x[3, [5, 6]] = np.inf
    x[4] = -np.inf
    x[5, 0] = -np.inf
    t = np.array([0, 1, 4, 7, 2, 0, 3, 5])
    mask = np.ones((8, 20), bool)
    mask[6] = False
    for opts in ({}, {"where": mask}, {"z_loss": 0.1, "logit_l2": 0.1}, {"label_smoothing": 0.1}):
        for reduction in ("none", "mean"):
            with np.errstate(invalid="ignore"):
                fast = logitkit.cross_entropy_with_grad(x, t, reduction=reduction, **opts)
                slow = generic(logitkit.cross_entropy_with_grad, x, t, reduction=reduction, **opts)
            tol = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
            assert_close(fast[0], slow[0], **tol)
            assert_close(fast[1], slow[1], **tol, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [
    {"logit_l2": 0.1, "softcap": 5.0, "ignore_index": -100},  # the options block
    {"label_smoothing": 0.1, "weight": "w"},  # ... without softcap: the logits are overwritten
    {},  # the plain block
    {"z_loss": 1e-3, "temperature": 0.7, "ignore_index": -100},
], ids=["options", "options-no-softcap", "plain", "plain-z-loss"])
@pytest.mark.usefixtures("pool")
def test_cross_entropy_gradient_into_the_logits_themselves(dtype, options):
    """``out=logits``: the kernels read each row through a form LLVM still vectorises (a copy,
    or the output itself); the values are those written to a separate buffer, edge rows too."""
    x, t, opts = _ce_case(dtype, options, "int")
    opts["reduction"] = "none"  # per-row losses: the edge rows' NaN must not hide the others
    x[1, 3] = np.nan
    x[4, 4] = np.inf
    x[5] = -np.inf
    x[6, :-1] = -np.inf
    with np.errstate(invalid="ignore"):
        expected_loss, expected = logitkit.cross_entropy_with_grad(x, t, **opts)
        buf = x.copy()
        loss, g = logitkit.cross_entropy_with_grad(buf, t, out=buf, **opts)
        assert g is buf
        assert_close(loss, expected_loss, rtol=0)
        assert_close(buf, expected, rtol=0)
        assert np.isfinite(expected_loss).sum() >= len(t) - 4
        other = np.empty_like(x)
        loss, g = logitkit.cross_entropy_with_grad(x, t, out=other, **opts)
    assert g is other
    assert_close(other, expected, rtol=0)
    # A buffer that partly overlaps the logits is not written row by row: the gradient is
    # computed apart and copied.
    big = np.concatenate([x.ravel(), np.zeros(x.shape[1], dtype)])
    shifted = big[x.shape[1]:].reshape(x.shape)
    with np.errstate(invalid="ignore"):
        logitkit.cross_entropy_with_grad(big[: x.size].reshape(x.shape), t, out=shifted, **opts)
    assert_close(shifted, expected, rtol=0)


def test_cross_entropy_batch_shapes_and_fallbacks():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7))
    t = rng.integers(0, 7, (2, 3))
    loss, g = logitkit.cross_entropy_with_grad(x, t, reduction="none")
    assert loss.shape == (2, 3) and g.shape == x.shape
    sl, sg = generic(logitkit.cross_entropy_with_grad, x, t, reduction="none")
    assert_close(loss, sl)
    assert_close(g, sg)
    # Class axis in the middle: the rows are made contiguous for the kernel; a per-row
    # temperature: the generic path answers.
    assert uses_ce_kernel(x, t[:, None].repeat(7, 1)[:, :, 0] % 3, axis=1)
    assert not uses_ce_kernel(x, t, temperature=np.ones((2, 3)))


@pytest.mark.usefixtures("pool")
def test_torch_adapter_uses_the_kernel_on_cpu(monkeypatch):
    import torch

    calls = []
    real = _kernels.cross_entropy

    def spy(problem):
        out = real(problem)
        calls.append(("torch_forward" if problem.grad_scale is None else "torch_gradient",
                      out is not None))
        return out

    monkeypatch.setattr(_kernels, "cross_entropy", spy)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((6, 50)), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(rng.integers(0, 50, 6))
    w = torch.rand(50) + 0.5
    loss = logitkit.cross_entropy(x, t, weight=w, label_smoothing=0.1)
    loss.backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(ref_x, t, weight=w, label_smoothing=0.1)
    ref.backward()
    assert_close(loss.detach(), ref.detach(), rtol=2e-6)
    assert_close(x.grad, ref_x.grad, rtol=2e-5, atol=1e-8)
    assert {name for name, _ in calls} == {"torch_forward", "torch_gradient"}
    assert all(ok for _, ok in calls), calls


def _mixed_calls(rng: np.random.Generator) -> list:
    """Calls over every kernel and layout, small and large (serial and pool-sized), the
    calibration engine's native pass (from probabilities and from logits) among them."""
    from logitkit.calibration import ece

    calls = []
    for i in range(8):
        dt = (np.float32, np.float64)[i % 2]
        n, k = ((512, 300), (3, 70000), (40, 9))[i % 3]
        x = (rng.standard_normal((n, k)) * 4).astype(dt)
        t = rng.integers(0, k, n)
        mask = rng.random(k) > 0.2
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        calls += [
            (logitkit.softmax, (x,), {}),
            (logitkit.log_softmax, (x,), {"temperature": 1.7, "where": mask}),
            (logitkit.logsumexp, (x,), {"axis": -1}),
            (logitkit.softmax, (x.reshape(n, k, 1)[:, :, [0, 0]].copy(),), {"axis": 1}),
            (logitkit.cross_entropy_with_grad, (x, t), {}),
            (logitkit.cross_entropy_with_grad, (x, t), {"label_smoothing": 0.1, "softcap": 5.0}),
            (ece, (x, t), {"from_logits": True}),
            (ece, (p, t), {"mode": "classwise"}),
        ]
    return calls


def _results(calls: list, order: list[int]) -> list:
    out = [None] * len(calls)
    for j in order:
        fn, args, kwargs = calls[j]
        r = fn(*args, **kwargs)
        out[j] = [np.array(a) for a in (r if isinstance(r, tuple) else (r,))]
    return out


def test_python_threads_get_the_serial_results_bit_for_bit():
    """8 Python threads × 200 mixed calls at once (the GIL released in the kernels, the pool
    shared or busy) give exactly what one thread gets, calling them one at a time."""
    import concurrent.futures

    calls = _mixed_calls(np.random.default_rng(0))
    native = _kernels.native()
    threads = native.num_threads()
    native.set_num_threads(1)
    try:
        expected = _results(calls, list(range(len(calls))))
    finally:
        native.set_num_threads(threads)

    def work(seed: int) -> bool:
        order = np.random.default_rng(seed).integers(0, len(calls), 200).tolist()
        got = _results(calls, order)
        return all(all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got[j], expected[j],
                                                                           strict=True))
                   for j in set(order))

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        assert all(ex.map(work, range(8)))


# --------------------------------------------------------------------------------------------
# limits of the float range, and long rows: what the kernels compute, and what they hand over
# --------------------------------------------------------------------------------------------


def _exact(x: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(log_softmax, softmax, logsumexp)`` of ``x / temperature`` (1-D float64) in extended
    precision, far more accurate than the float64 bounds under test (mpmath would take seconds
    for 10^5 terms)."""
    if np.finfo(np.longdouble).eps >= 2.0**-60:  # pragma: no cover - longdouble is double
        pytest.skip("needs an extended-precision long double for the reference")
    z = x.astype(np.longdouble) / np.longdouble(temperature)
    m = z.max()
    lse = m + np.log(np.sum(np.exp(z - m)))
    return z - lse, np.exp(z - lse), lse


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.usefixtures("pool")
def test_long_near_tie_rows_meet_the_bound(temperature):
    """float64 rows of 10^5 near-equal logits (every term of the sum near 1): long running sums
    drift outside the DESIGN §7 bound (the numba kernels' softmax was 52× over it at T = 3 on
    the first row); lanes over short blocks, summed with compensation, stay within it."""
    u = U[np.float64]
    k = 100_000
    rng = np.random.default_rng(16)
    x = np.stack([1.0 + 1e-13 * rng.standard_normal(k), 1.0 + rng.random(k) * 1e-3])
    logp = logitkit.log_softmax(x, temperature=temperature)
    p = logitkit.softmax(x, temperature=temperature)
    for i in range(2):
        exact_logp, exact_p, _ = _exact(x[i], temperature)
        d = (np.max(x[i]) - x[i]) / temperature
        assert np.all(np.abs(logp[i] - exact_logp) <= 16 * u * (1 + d + np.log(k)))
        assert np.all(np.abs(p[i] - exact_p) <= 16 * u * (1 + d) * exact_p)


@pytest.mark.usefixtures("pool")
def test_long_reductions_over_a_middle_axis_meet_the_bound():
    """logsumexp / log_softmax over axis 0 of a (10^5, 3) float64 array (the strided kernel,
    summing along the slow axis): within the §7 bounds (the numba kernel's logsumexp was 9.7×
    over on the near-tie column)."""
    u = U[np.float64]
    k = 100_000
    rng = np.random.default_rng(17)
    x = np.stack([1.0 + 1e-13 * rng.standard_normal(k), rng.standard_normal(k) * 3,
                  5.0 + rng.standard_normal(k) * 0.01], axis=1)
    lse = logitkit.logsumexp(x, axis=0)
    logp = logitkit.log_softmax(x, axis=0)
    for j in range(3):
        exact_logp, _, exact = _exact(x[:, j])
        assert abs(lse[j] - exact) <= 16 * u * (max(1.0, abs(float(exact))) + np.log(k))
        d = np.max(x[:, j]) - x[:, j]
        assert np.all(np.abs(logp[:, j] - exact_logp) <= 16 * u * (1 + d + np.log(k)))


def test_cross_entropy_with_huge_logsumexp_is_exact():
    """|lse| beyond 1.34e154 with no z-loss: the z-loss term is never formed as 0·lse² = 0·inf;
    the float32 lse of ``[[3e38, 2.9e38]]`` at T = 0.5 (6e38) is formed in float64, so it
    cannot overflow (issue 16's list of limits)."""
    x = np.array([[1e200, 0.0]])
    assert uses_ce_kernel(x, np.array([0]))
    loss, g = logitkit.cross_entropy_with_grad(x, np.array([0]))
    assert float(loss) == 0.0 and g.tolist() == [[0.0, 0.0]]
    loss, g = logitkit.cross_entropy_with_grad(x, np.array([1]), reduction="sum")
    assert float(loss) == 1e200 and g.tolist() == [[1.0, -1.0]]
    x32 = np.array([[3e38, 2.9e38]], dtype=np.float32)
    loss, g = logitkit.cross_entropy_with_grad(x32, np.array([1]), temperature=0.5)
    assert abs(float(loss) - 2e37) <= 4 * U[np.float32] * 2e37  # exact: 2e37 + log1p(e^-2e37)
    assert g.tolist() == [[2.0, -2.0]]


def _native_ce(x, t, **options):
    n = x.shape[0]
    out = np.empty_like(x)
    stats = [np.zeros(n) for _ in range(3)]
    special = np.zeros(n, dtype=bool)
    args = dict(labels=t, probs=None, mask=None, weight=None, counted=np.ones(n, bool),
                scales=np.ones(1), label_smoothing=0.0, z_loss=0.0, logit_l2=0.0, softcap=0.0,
                inv_t=1.0)
    args.update(options)
    _kernels.native().cross_entropy(x=x, out=out, loss=stats[0], lse=stats[1], coef=stats[2],
                                    special=special, **args)
    return stats[0], out, special


def test_cross_entropy_kernel_reads_scales_in_the_logits_dtype_and_skips_unasked_stats():
    """The per-row gradient scales are read in float64 or in the logits' own dtype (no float64
    copy of a float32 scale column on every call: the caller's ``(N, 1)`` scale is in the
    working dtype), with the same gradient bit for bit; ``lse`` and ``coef`` are written only
    when asked for (the losses never read them), and a scale in a third dtype is refused."""
    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((37, 130)) * 3).astype(dt)
        t = rng.integers(0, 130, 37)
        s = (rng.random(37) + 0.5).astype(dt)
        loss, g, special = _native_ce(x, t, scales=s.astype(np.float64))
        n = x.shape[0]
        out, loss2, flags = np.empty_like(x), np.zeros(n), np.zeros(n, dtype=bool)
        _kernels.native().cross_entropy(
            x=x, out=out, labels=t, probs=None, mask=None, weight=None, counted=np.ones(n, bool),
            scales=s, label_smoothing=0.0, z_loss=0.0, logit_l2=0.0, softcap=0.0, inv_t=1.0,
            loss=loss2, lse=None, coef=None, special=flags)
        assert not special.any() and not flags.any()
        assert np.array_equal(out, g) and np.array_equal(loss2, loss)
    with pytest.raises(ValueError, match="scales"):
        _native_ce(x, t, scales=s.astype(np.float16))


def test_cross_entropy_hands_the_kernel_the_callers_labels_and_working_scales(monkeypatch):
    """On the NumPy fast path no per-row copy is made around the kernel: int64 labels that were
    checked valid reach it as the caller's array (they went through a `where` copy before), the
    gradient's per-row scale in the logits' dtype (no float64 copy) and no lse/coef outputs."""
    seen = {}
    real = _kernels.native()

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def cross_entropy(self, **kw):
            seen.update(kw)
            return real.cross_entropy(**kw)

    monkeypatch.setattr(_kernels, "native", lambda: Spy())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 9)).astype(np.float32)
    t = rng.integers(0, 9, 40)
    loss, g = logitkit.cross_entropy_with_grad(x, t)
    assert np.shares_memory(seen["labels"], t)
    assert seen["scales"].dtype == np.float32 and seen["lse"] is None and seen["coef"] is None
    ref_loss, ref_g = generic(logitkit.cross_entropy_with_grad, x, t)
    assert_close(loss, ref_loss, rtol=2e-6)
    assert_close(g, ref_g, rtol=2e-5, atol=1e-8)


def test_kernels_hand_over_what_overflows():
    """Rows whose results would overflow inside the fast formulas are flagged for the generic
    path, never answered with inf or NaN: the z-loss of lse = 1e308 (its gradient was
    [[inf, nan]]), logits whose shift x − max overflows at T > 1 (log_softmax of float32
    [3e38, −3e38] at T = 1e38 was [0, −inf]); temperatures whose reciprocal is not a finite
    positive number in the input's precision are not taken at all."""
    loss, g, special = _native_ce(np.array([[1e308, 0.0], [1.0, 2.0]]), np.array([0, 1]),
                                  z_loss=1.0)
    assert special.tolist() == [True, False]
    assert np.isfinite(loss[1]) and np.isfinite(g[1]).all()
    x = np.array([[3e38, -3e38], [1.0, 2.0]], dtype=np.float32)
    out, lse, special = np.empty_like(x), np.zeros(2), np.zeros(2, dtype=bool)
    with np.errstate(over="ignore"):
        inv_t = float(np.float32(1) / np.float32(1e38))
    _kernels.native().rows(x, out, lse, special, None, 0.0, inv_t, 1)
    assert special.tolist() == [True, False]
    assert not uses_kernel("softmax", np.array([1.0, 2.0], np.float32)[None], temperature=1e-46)
    assert not uses_kernel("softmax", np.array([[1e308, -1e308, 0.0]]), temperature=math.inf)
    assert not uses_kernel("log_softmax", np.array([[1.0, 2.0]]), temperature=1e-320)


# --------------------------------------------------------------------------------------------
# logitkit.config: the public switches
# --------------------------------------------------------------------------------------------


def test_config_switches_the_kernels_and_their_threads(monkeypatch):
    from logitkit import config

    x = np.random.default_rng(0).standard_normal((3, 5))
    assert config.kernels_enabled() and uses_kernel("softmax", x)
    with config.use_kernels(False):
        assert not config.kernels_enabled() and not uses_kernel("softmax", x)
    config.set_kernels(False)
    try:
        assert not uses_kernel("softmax", x)
    finally:
        config.set_kernels(True)
    monkeypatch.setenv("LOGITKIT_DISABLE_KERNELS", "yes")
    assert not config.kernels_enabled()
    monkeypatch.delenv("LOGITKIT_DISABLE_KERNELS")
    before = config.num_threads()
    try:
        config.set_num_threads(1)
        assert config.num_threads() == 1
        config.set_num_threads(0)  # back to the CPUs this process may run on
        assert config.num_threads() == len(os.sched_getaffinity(0)) or not hasattr(
            os, "sched_getaffinity")
    finally:
        config.set_num_threads(before)
    with pytest.raises(logitkit.LogitkitTypeError, match="`n`"):
        config.set_num_threads(1.5)
    with pytest.raises(logitkit.LogitkitValueError, match="`n`"):
        config.set_num_threads(-1)
    assert config.simd_target() in _kernels.native().targets()


def test_the_extension_is_built_from_source_and_numba_is_gone():
    """The kernels are the compiled extension (no JIT), and no dependency list names numba."""
    import importlib.metadata
    import pathlib

    native = _kernels.native()
    assert native is not None and pathlib.Path(native.__file__).suffix in (".so", ".pyd")
    assert "baseline" in native.targets() or native.targets()
    requires = importlib.metadata.requires("logitkit") or []
    assert not [r for r in requires if "numba" in r or "llvmlite" in r], requires
    root = pathlib.Path(__file__).resolve().parent.parent
    pyproject = (root / "pyproject.toml").read_text()
    assert "numba" not in pyproject and "llvmlite" not in pyproject
    assert 'build-backend = "scikit_build_core.build"' in pyproject
    cmake = [line for line in (root / "CMakeLists.txt").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    assert not [line for line in cmake if "march" in line or "mtune" in line]


def test_python_thread_pools_count_the_cpus_the_kernels_count() -> None:
    """The calibrators' Python thread pools, the kernels' pool and the CLI's idle-core test
    count one thing: the CPUs this process may run on, capped by ``LOGITKIT_NUM_THREADS``
    (``os.cpu_count()``, the machine's CPUs, oversubscribed a process pinned to fewer)."""
    if not hasattr(os, "sched_getaffinity"):  # pragma: no cover - not Linux
        pytest.skip("no CPU affinity on this platform")
    code = (
        "import os, logitkit\n"
        "from logitkit._kernels import cpus_available, python_threads\n"
        "from logitkit.calibration import _engine, _temperature, TemperatureScaler\n"
        "print(cpus_available(), python_threads(8), _engine.THREADS,\n"
        "      TemperatureScaler()._settings()[-1], logitkit.config.num_threads())\n")
    def run(env: dict[str, str], cpus: set[int]) -> list[int]:
        full = {k: v for k, v in os.environ.items() if k != "LOGITKIT_NUM_THREADS"} | env
        out = subprocess.run(["taskset", "-c", ",".join(map(str, sorted(cpus))),
                              sys.executable, "-c", code], env=full, capture_output=True,
                             text=True, check=True, timeout=120).stdout
        return [int(v) for v in out.split()]

    one = {min(os.sched_getaffinity(0))}
    # pinned to one CPU: every pool has one thread, whatever os.cpu_count() says
    assert run({}, one) == [1, 1, 1, 1, 1]
    # LOGITKIT_NUM_THREADS caps the Python pools as it caps the kernels' pool
    mine = os.sched_getaffinity(0)
    got = run({"LOGITKIT_NUM_THREADS": "1"}, mine)
    assert got == [len(mine), 1, 1, 1, 1]
    got = run({"LOGITKIT_NUM_THREADS": "3"}, mine)
    assert got[1:] == [3, 3, 3, 3]
    # anything but a positive integer is ignored, as the kernels ignore it
    got = run({"LOGITKIT_NUM_THREADS": "two"}, mine)
    assert got[1] == min(8, len(mine)) and got[2] == min(4, len(mine))
