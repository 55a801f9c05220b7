"""The fused numba kernels: accuracy of their exp, fast path = generic path, the switch, torch views.

Every comparison runs the same call twice, once with the fast path and once inside
``fast_path(False)`` (the generic array-API path), and requires agreement within the DESIGN §7
bounds (both sides are within them of the exact value, so within twice of each other).
"""

from __future__ import annotations

import math
import subprocess
import sys

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
def pool(request, monkeypatch):
    """Run a test once on the serial kernels and once on the thread-pool ones (whatever the size;
    with a single numba thread both runs take the serial path)."""
    monkeypatch.setattr(_kernels, "_PARALLEL_MIN_SIZE", 2**62 if request.param == "serial" else 0)
    return request.param


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
    heavy = ["numba", "torch", "jax", "scipy", "matplotlib", "sklearn", "dask", "pandas"]
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_is_within_two_units_of_roundoff(dtype):
    from logitkit._kernels._exp import exp_array

    lo = -110.0 if dtype == np.float32 else -750.0
    rng = np.random.default_rng(7)
    d = np.concatenate([
        np.linspace(lo, 0.0, 20001), -rng.exponential(5.0, 4000), -rng.random(2000) * 1e-6,
        [0.0, -0.0, -np.log(2) / 2, -np.log(2), -1e-30], np.linspace(lo, lo + 60, 500),
    ]).astype(dtype)
    out = np.empty_like(d)
    exp_array(d, out)
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
def test_exp_propagates_nan_and_flushes_below_underflow(dtype):
    from logitkit._kernels._exp import exp_array

    d = np.array([np.nan, -np.inf, -1e30, -2000.0], dtype=dtype)
    out = np.empty_like(d)
    exp_array(d, out)
    assert np.isnan(out[0])
    assert out[1:].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_is_within_three_units_of_roundoff(dtype):
    """The softcap's vectorised tanh, against mpmath, on both sides of the switch between its
    two formulas (|z| = 0.625), where the exponential form saturates, and for tiny arguments."""
    from logitkit._kernels._exp import tanh_array

    big = 1e300 if dtype == np.float64 else 1e30
    rng = np.random.default_rng(11)
    z = np.concatenate([
        np.linspace(-20.0, 20.0, 20001), rng.standard_normal(4000) * 3,
        rng.standard_normal(1000) * 1e-4, np.linspace(0.6, 0.65, 1001),
        -np.linspace(0.6, 0.65, 1001), [1e-30, -1e-30, 5e-39, 30.0, -30.0, big, -big],
    ]).astype(dtype)
    out = np.empty_like(z)
    tanh_array(z, out)
    exact = np.array([float(mpmath.tanh(mpmath.mpf(float(v)))) for v in z])
    rel = np.abs(out - exact) / np.maximum(np.abs(exact), float(np.finfo(dtype).tiny))
    assert rel.max() <= 3 * U[dtype], rel.max() / U[dtype]
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=dtype)
    out = np.empty_like(special)
    tanh_array(special, out)
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


def test_vectorised_log_is_within_two_ulps():
    from logitkit._kernels._exp import log_array

    rng = np.random.default_rng(11)
    s = np.concatenate([1.0 + rng.random(3000), np.exp(rng.random(3000) * 30),
                        [1.0, 1.0 + 2**-52, 2**0.5 * (1 - 2**-52), 2**0.5, 2.0, 3.0, 262144.0,
                         1e300, float(np.finfo(np.float64).tiny)]])
    out = np.empty_like(s)
    log_array(s, out)
    exact = np.array([float(mpmath.log(mpmath.mpf(float(v)))) for v in s])
    assert out[s == 1.0].tolist() == [0.0]  # log(1) is exactly 0
    err = np.abs(out - exact)
    assert np.all(err <= 2 * np.spacing(np.abs(exact))), (err / np.spacing(np.abs(exact))).max()


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


def test_small_inputs_stay_on_the_calling_thread(monkeypatch):
    from logitkit._kernels import _ce, _rows

    calls = []
    for mod, names in ((_rows, ("rows", "rows_serial", "rows_split", "strided", "strided_serial")),
                       (_ce, ("ce_rows", "ce_rows_serial"))):
        for name in names:
            real = getattr(mod, name)

            def spy(*a, _real=real, _name=name):
                calls.append(_name)
                return _real(*a)

            monkeypatch.setattr(mod, name, spy)
    monkeypatch.setattr(_kernels, "_threads", lambda: 2)
    rng = np.random.default_rng(1)
    small = rng.standard_normal((150, 3))
    big = rng.standard_normal((64, _kernels._PARALLEL_MIN_SIZE // 64))
    logitkit.log_softmax(small)
    logitkit.softmax(small.reshape(50, 3, 3), axis=1)
    logitkit.cross_entropy_with_grad(small, rng.integers(0, 3, 150))
    assert calls == ["rows_serial", "strided_serial", "ce_rows_serial"]
    calls.clear()
    logitkit.log_softmax(big)
    logitkit.softmax(big.reshape(64, 8, -1), axis=1)
    logitkit.cross_entropy_with_grad(big, rng.integers(0, big.shape[1], 64))
    logitkit.logsumexp(big[:1])
    one_row = big.reshape(1, -1)  # fewer rows than threads, long enough to split
    assert one_row.shape[1] >= _kernels._SPLIT_MIN_K
    p = logitkit.softmax(one_row)
    assert calls == ["rows", "strided", "ce_rows", "rows_serial", "rows_split"]
    assert_same(p, generic(logitkit.softmax, one_row), np.float64)
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
    real = _kernels._kernels

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(_kernels, "_kernels", spy)
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


CONCURRENT = r"""
import concurrent.futures, numpy as np, numba, logitkit
from logitkit._kernels import fast_path
rng = np.random.default_rng(0)
xs = [rng.standard_normal((512, 256)) for _ in range(4)]
ts = [rng.integers(0, 256, 512) for _ in range(4)]

def work(i):
    ok = True
    for _ in range(20):
        ok &= bool(np.allclose(logitkit.softmax(xs[i]), ref[i][0], rtol=1e-12))
        ok &= bool(np.allclose(logitkit.softmax(xs[i].reshape(8, 64, 256), axis=1),
                               ref[i][1], rtol=1e-12))
        ok &= bool(np.allclose(logitkit.cross_entropy_with_grad(xs[i], ts[i])[1], ref[i][2],
                               rtol=1e-12, atol=1e-15))
    return ok

with fast_path(False):
    ref = [(logitkit.softmax(x), logitkit.softmax(x.reshape(8, 64, 256), axis=1),
            logitkit.cross_entropy_with_grad(x, t)[1]) for x, t in zip(xs, ts)]
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    print(all(ex.map(work, range(4))), numba.threading_layer())
"""


def test_threads_may_call_the_kernels_under_any_threading_layer():
    """numba's ``workqueue`` layer aborts the process on concurrent parallel launches: the
    dispatcher serialises them there (and only there)."""
    import os

    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", CONCURRENT], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "workqueue"]
