"""The measurement engine's native pass (``csrc/calib.cpp``) against the NumPy pass (the
reference) and against the sums written out naively, row by row: random, edge and hypothesis
inputs, from probabilities and from logits, float32 and float64 (float16 widened), every option
of the engine's :class:`~logitkit.calibration._engine.Spec`; the same errors; sums that do not
depend on the threads, the SIMD target or the chunking; fork and Python-thread safety.

Bins are compared exactly where no value lies within rounding of an edge: the native and NumPy
exponentials may differ in the last unit, which moves a value sitting on an edge, so the random
data keeps its rows clear of the edges and the hypothesis test compares the bins' marginals for
logits.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from logitkit import LogitkitValueError, log_softmax, softmax
from logitkit._kernels import CalibrationPass, calibration_sums, fast_path, native
from logitkit.calibration import _engine as engine
from logitkit.calibration import accuracy, brier_score, ece, mce, nll

FIELDS = ("n", "hits", "nll", "brier", "bins", "cw")

SPECS = {
    "totals": dict(),
    "nll only": dict(top=False, brier=False),
    "uniform bins, moments, groups": dict(n_bins=10, moments=True, groups=7, keep_rows=True),
    "given edges, no brier": dict(n_bins=6, edges="given", brier=False),
    "class-wise uniform, groups": dict(cw_bins=5, groups=3, top=False),
    "class-wise per class, top bins": dict(cw_bins=4, cw_edges="per class", n_bins=8),
}


@pytest.fixture(params=native().targets())
def target(request):
    """Every SIMD target this CPU runs (the widest is the default)."""
    before = native().target()
    native().set_target(request.param)
    yield request.param
    native().set_target(before)


# ------------------------------------------------------------------------------ references


def splitmix_group(i: int, groups: int) -> int:
    """The engine's row group, in Python integers (not NumPy's uint64 arithmetic)."""
    if i < groups:
        return i
    mask = (1 << 64) - 1
    z = (i + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) % groups


def naive_sums(p: np.ndarray, y: np.ndarray, spec: engine.Spec, offset: int,
               logp_y: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The engine's sums row by row from float64 probabilities ``p`` (right-closed bins: the
    number of inner edges strictly below the value)."""
    n, k = p.shape
    g_n = spec.groups
    f = 5 if spec.moments else 3
    out = {"n": np.zeros(g_n), "hits": np.zeros(g_n), "nll": np.zeros(g_n),
           "brier": np.zeros(g_n),
           "bins": np.zeros((g_n, f, spec.n_bins)) if spec.n_bins else None,
           "cw": np.zeros((g_n, 5, k, spec.cw_bins)) if spec.cw_bins else None}
    for i in range(n):
        row, t = [float(v) for v in p[i]], int(y[i])
        g = splitmix_group(offset + i, g_n)
        conf = max(row)
        hit = float(spec.top and row.index(conf) == t)
        out["n"][g] += 1
        out["hits"][g] += hit
        out["nll"][g] += -(math.log(row[t]) if logp_y is None else float(logp_y[i]))
        if spec.brier:
            out["brier"][g] += sum((v - (c == t)) ** 2 for c, v in enumerate(row))
        if spec.n_bins:
            b = int(sum(e < conf for e in spec.inner))
            cell = out["bins"][g, :, b]
            cell[:3] += (1, conf, hit)
            if spec.moments:
                cell[3:] += (conf * conf, conf * hit)
        if spec.cw_bins:
            inner = np.asarray(spec.cw_inner)
            for c, v in enumerate(row):
                edges = inner if inner.ndim == 1 else inner[:, c]
                b = int(sum(e < v for e in edges))
                out["cw"][g, :, c, b] += (1, v, c == t, v * v, v * (c == t))
    return out


def native_block(x: np.ndarray, y: np.ndarray, spec: engine.Spec, offset: int = 0
                 ) -> engine.Sums:
    """The native pass's sums (asserting that it took the block)."""
    got = engine.native_sums(x, y.astype(np.intp), spec, offset, "probs")
    assert got is not None
    return got


def reference_block(x: np.ndarray, y: np.ndarray, spec: engine.Spec, offset: int = 0
                    ) -> engine.Sums:
    with fast_path(False):
        return engine.block_sums(x, y, spec=spec, offset=offset)


def assert_sums(got, want, dtype, err_msg="", bins=True):
    rtol, atol = (2e-5, 1e-4) if np.dtype(dtype).itemsize < 8 else (1e-10, 1e-9)
    for name in FIELDS:
        a = getattr(got, name) if not isinstance(got, dict) else got[name]
        b = getattr(want, name) if not isinstance(want, dict) else want[name]
        assert (a is None) == (b is None), (name, err_msg)
        if a is None:
            continue
        if not bins and name in ("bins", "cw"):
            # the marginals: per group and field, summed over the bins (and classes)
            a, b = a.sum(axis=-1), b.sum(axis=-1)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name} {err_msg}")


def make_spec(config: str, k: int, from_logits: bool, beta: float, rng) -> engine.Spec:
    opts = dict(SPECS[config])
    edges = opts.pop("edges", None)
    cw_edges = opts.pop("cw_edges", None)
    spec = engine.Spec(from_logits=from_logits, beta=beta, **opts)
    if spec.n_bins:
        inner = (np.sort(rng.uniform(0.05, 0.95, spec.n_bins - 1)) if edges == "given"
                 else engine.uniform_inner(spec.n_bins))
        spec = replace(spec, inner=inner)
    if spec.cw_bins:
        inner = (np.sort(rng.uniform(0, 0.9, (spec.cw_bins - 1, k)), axis=0)
                 if cw_edges == "per class" else engine.uniform_inner(spec.cw_bins))
        spec = replace(spec, cw_inner=inner)
    return spec


def clear_of_edges(p: np.ndarray, spec: engine.Spec, gap: float) -> np.ndarray:
    """Rows whose confidence and probabilities lie at least ``gap`` from every edge."""
    keep = np.ones(p.shape[0], dtype=bool)
    if spec.n_bins:
        d = np.abs(p.max(axis=1)[:, None] - np.asarray(spec.inner)[None, :])
        keep &= d.min(axis=1) > gap
    if spec.cw_bins:
        inner = np.asarray(spec.cw_inner)
        inner = np.broadcast_to(inner[:, None] if inner.ndim == 1 else inner,
                                (inner.shape[0], p.shape[1]))
        d = np.abs(p[:, None, :] - inner[None, :, :])
        keep &= d.min(axis=(1, 2)) > gap
    return keep


def random_case(n, k, dtype, from_logits, config, beta=1.0, seed=0):
    """``(x, y, spec, p64)``: data in ``dtype`` clear of the edges, the spec, and the exact
    probabilities of ``x``'s own values."""
    rng = np.random.default_rng(seed)
    spec = make_spec(config, k, from_logits, beta, rng)
    z = (rng.standard_normal((n, k)) * 2.5).astype(dtype)
    x = z if from_logits else softmax(z.astype(np.float64)).astype(dtype)
    p = (softmax(x.astype(np.float64) * beta) if from_logits else x.astype(np.float64))
    keep = clear_of_edges(p, spec, 1e-5 if np.dtype(dtype).itemsize < 8 else 1e-12)
    x, p = np.ascontiguousarray(x[keep]), p[keep]
    y = rng.integers(0, k, x.shape[0])
    return x, y, spec, p


# ------------------------------------------------------------------------------ random inputs


@pytest.mark.parametrize("config", list(SPECS))
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 7, 300])
def test_native_pass_equals_the_numpy_pass_and_the_definitions(k, dtype, from_logits, config):
    n = 40 if k == 300 else 400
    beta = 0.6 if from_logits else 1.0
    x, y, spec, p = random_case(n, k, dtype, from_logits, config, beta, seed=k)
    got = native_block(x, y, spec, offset=11)
    assert_sums(got, reference_block(x, y, spec, offset=11), dtype, config)
    assert_sums(got, naive_sums(p, y, spec, 11), dtype, config)
    if spec.keep_rows:
        want = reference_block(x, y, spec, offset=11).rows
        assert got.rows is not None and want is not None
        np.testing.assert_allclose(got.rows["conf"], want["conf"], rtol=1e-6)
        np.testing.assert_array_equal(got.rows["hit"], want["hit"])
        np.testing.assert_array_equal(got.rows["group"], want["group"])


@pytest.mark.parametrize("from_logits", [False, True])
def test_every_simd_target_gives_the_same_sums(target, from_logits):
    # rows of K <= 32 run one per lane (gathered columns), longer ones and class-wise by row
    for k, dtype in [(37, np.float32), (32, np.float32), (33, np.float64), (5, np.float64)]:
        x, y, spec, p = random_case(301, k, dtype, from_logits,
                                    "uniform bins, moments, groups", seed=3)
        assert_sums(native_block(x, y, spec), naive_sums(p, y, spec, 0), dtype, target)
        x, y, spec, p = random_case(203, k, dtype, from_logits, "totals", seed=4)
        assert_sums(native_block(x, y, spec), naive_sums(p, y, spec, 0), dtype, target)
    x, y, spec, p = random_case(200, 9, np.float64, from_logits,
                                "class-wise per class, top bins", seed=4)
    assert_sums(native_block(x, y, spec), naive_sums(p, y, spec, 0), np.float64, target)


@pytest.mark.parametrize("from_logits", [False, True])
def test_short_rows_of_every_width_are_the_same_sums_on_every_target(from_logits):
    # K = 2..32 one row per lane: float rows take their columns two at a time on AVX-512 (the
    # last of an odd K alone), one at a time on AVX2: the same values, so the same sums bit for
    # bit where every row runs in lanes (96 rows: whole lane groups of 8 and 16 rows, a block of
    # 64 and half a block; the baseline target has no FMA, its roundings differ).  87 rows
    # leave 7 rows to the row-at-a-time path, whose horizontal sums follow the vector width:
    # equal to the definitions there, on every target.
    mod = native()
    before = mod.target()
    for k in range(2, 33):
        for n in (96, 87):
            x, y, spec, p = random_case(2 * n, k, np.float32, from_logits,
                                        "uniform bins, moments, groups", seed=k)
            x, y, p = x[:n], y[:n], p[:n]  # (rows near a bin edge were dropped)
            results = []
            try:
                for target in mod.targets():
                    mod.set_target(target)
                    results.append(native_block(x, y, spec, offset=5))
            finally:
                mod.set_target(before)
            for got in results:
                assert_sums(got, naive_sums(p, y, spec, 5), np.float32, f"k={k} n={n}")
            if n % 16:
                continue
            wide = [got for got, t in zip(results, mod.targets(), strict=True)
                    if t in ("avx2", "avx512")]
            for other in wide[1:]:
                for name in FIELDS:
                    np.testing.assert_array_equal(getattr(other, name), getattr(wide[0], name),
                                                  f"{name} k={k}")


def test_metrics_with_and_without_the_kernels_agree():
    x, y, _, _ = random_case(3000, 12, np.float32, True, "totals", seed=5)
    for from_logits in (False, True):
        data = x if from_logits else softmax(x)
        for f in (ece, mce, brier_score, nll, accuracy):
            fast = float(f(data, y, from_logits=from_logits))
            with fast_path(False):
                slow = float(f(data, y, from_logits=from_logits))
            assert math.isclose(fast, slow, rel_tol=1e-5, abs_tol=1e-6), (f.__name__, fast, slow)


# ------------------------------------------------------------------------------ edge inputs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_with_infinities_and_rows_of_one_class(dtype):
    inf = np.inf
    z = np.array([[0.0, inf, inf, 1.0],      # +inf entries share the mass: left to the caller
                  [1.0, -inf, 0.0, -inf],    # -inf entries have none
                  [-inf, -inf, 3.0, -inf],   # one finite entry: probability 1
                  [2.0, 2.0, 2.0, 2.0],      # a tie: the first class
                  [400.0, -400.0, 0.0, 1.0],  # a dominant row
                  [-1e3, -1e3 - 1, -1e3, 5.0]], dtype=dtype)
    y = np.array([1, 0, 2, 3, 1, 0])
    spec = engine.Spec(from_logits=True, n_bins=4, inner=engine.uniform_inner(4), groups=2,
                       keep_rows=True, cw_bins=3, cw_inner=engine.uniform_inner(3))
    got = native_block(z, y, spec, offset=0)
    want = reference_block(z, y, spec)
    assert_sums(got, want, dtype)
    p = softmax(z.astype(np.float64))
    logp = log_softmax(z.astype(np.float64))  # exact where log(softmax) would underflow
    assert (p[[4, 5], [1, 0]] == 0).all() and np.isfinite(logp[[4, 5], [1, 0]]).all()
    assert_sums(got, naive_sums(p, y, spec, 0, logp_y=logp[np.arange(6), y]), dtype)
    res = calibration_sums(CalibrationPass(x=z, labels=y, work=np.dtype(dtype),
                                           from_logits=True))
    assert res is not None and res.n_flagged == 1 and res.flagged.tolist() == [1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_far_entries_flushed_below_the_normal_range_change_nothing_visible(dtype):
    # exp(d) below e^-43 (float; e^-354 double) and probabilities below 2^-63 (2^-511) count as
    # 0 in the sums (no subnormal results): far below the sums' rounding
    rng = np.random.default_rng(14)
    z = (rng.standard_normal((300, 24)) * (60 if dtype == np.float32 else 400)).astype(dtype)
    y = rng.integers(0, 24, 300)
    spec = engine.Spec(from_logits=True, n_bins=10, inner=engine.uniform_inner(10), cw_bins=4,
                       cw_inner=engine.uniform_inner(4))
    p64 = softmax(z.astype(np.float64))
    keep = clear_of_edges(p64, spec, 1e-5)
    z, y, p64 = z[keep], y[keep], p64[keep]
    logp = log_softmax(z.astype(np.float64))[np.arange(len(y)), y]
    got = native_block(z, y, spec)
    assert_sums(got, reference_block(z, y, spec), dtype)
    assert_sums(got, naive_sums(p64, y, spec, 0, logp_y=logp), dtype)
    p = softmax(z).astype(dtype)
    assert (p[p > 0] < 1e-30).any()  # tiny probabilities in the input
    spec = replace(spec, from_logits=False)
    assert_sums(native_block(p, y, spec), reference_block(p, y, spec), dtype)


@pytest.mark.parametrize("k", [2, 40])
def test_values_on_given_edges_and_repeated_edges_fall_in_the_lower_bin(k):
    # right-closed bins: a value equal to an edge belongs to the bin below it, repeated edges
    # leave empty bins between them (NumPy's searchsorted(inner, v, side="left"))
    inner = np.array([0.1, 0.3, 0.3, 0.5, 0.9])
    on = np.array([0.1, 0.3, 0.5, 0.9, 0.95, 0.6, 1.0, 0.3000000000000001, 0.75])
    p = np.zeros((len(on), k))
    p[:, 0] = on
    p[:, 1:] = ((1 - on) / (k - 1))[:, None]
    y = np.arange(len(on)) % 2
    per_class = np.repeat(inner[:, None], k, axis=1)
    per_class[:, 1] = [0.0, 0.05, 0.3, 0.3, 0.7]
    for spec in (engine.Spec(n_bins=6, inner=inner, moments=True),
                 engine.Spec(cw_bins=6, cw_inner=inner, top=False),
                 engine.Spec(cw_bins=6, cw_inner=per_class, n_bins=6, inner=inner)):
        got = native_block(p, y, spec)
        assert_sums(got, reference_block(p, y, spec), np.float64)
        assert_sums(got, naive_sums(p, y, spec, 0), np.float64)


def test_uniform_bins_on_and_next_to_every_edge(target):
    # the bins of uniform edges by arithmetic (a block of rows at a time, in vector lanes) are
    # those of the edges themselves: values on b/B, one ulp either side, 1 and 1/K
    for nb in (7, 10, 15):
        edges = engine.uniform_full(nb)
        on = np.concatenate([edges, np.nextafter(edges, 2.0), np.nextafter(edges, -1.0)])
        on = np.clip(on, 1 / 16, 1.0)
        on = np.random.default_rng(nb).permutation(np.tile(on, 4))  # 4 blocks' worth and a tail
        k = 16
        p = np.empty((len(on), k))
        p[:, 0] = on
        p[:, 1:] = ((1 - on) / (k - 1))[:, None]
        y = np.where(on < 1, np.arange(len(on)) % 3, 0)  # no label of probability 0
        spec = engine.Spec(n_bins=nb, inner=engine.uniform_inner(nb), moments=True)
        got = native_block(p, y, spec)
        np.testing.assert_array_equal(got.bins[:, 0], naive_sums(p, y, spec, 0)["bins"][:, 0])
        assert_sums(got, reference_block(p, y, spec), np.float64, target)
        assert_sums(got, naive_sums(p, y, spec, 0), np.float64, target)


@pytest.mark.parametrize("n", [60, 279, 280, 2000])
def test_grouped_sums_with_and_without_the_cache_line_cells(n, target):
    # a grouped range of at least 4 rows a (group, bin) cell (7 x 10 = 70 cells: 280 rows) sums
    # into line-aligned cells and folds them; a shorter one adds to the (G, F, B) sums directly
    # (zeroing and folding 1024 x 15 cells had cost 1000 x 100 CalibrationStats 1.7 ms)
    for from_logits in (False, True):
        x, y, spec, _ = random_case(n, 12, np.float32, from_logits,
                                    "uniform bins, moments, groups", seed=n)
        spec = replace(spec, groups=7, n_bins=10, inner=engine.uniform_inner(10))
        assert_sums(native_block(x, y, spec), reference_block(x, y, spec), np.float32, target)


@pytest.mark.parametrize("groups", [16, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grouped_cells_with_rows_left_to_the_caller(dtype, groups, target):
    # through the cells (3000 rows, at least 4 a cell), a group's rows and hits are its cells'
    # counts and hits, added at the end: rows left to the caller (+inf logits, computed by the
    # careful path) count once, in their own group; a power-of-two G takes the groups of a
    # block in vector lanes past the first G rows (offset 5: the first block straddles them)
    rng = np.random.default_rng(22)
    z = (rng.standard_normal((3000, 5)) * 2).astype(dtype)
    z[[1, 20, 21, 700, 2999]] = [0, np.inf, 1, 2, 3]
    y = rng.integers(0, 5, 3000)
    spec = engine.Spec(from_logits=True, n_bins=10, inner=engine.uniform_inner(10),
                       moments=True, groups=groups)
    got = native_block(z, y, spec, offset=5)
    assert_sums(got, reference_block(z, y, spec, offset=5), dtype, target)
    want = np.bincount([splitmix_group(5 + i, groups) for i in range(3000)], minlength=groups)
    np.testing.assert_array_equal(got.n, want)
    np.testing.assert_array_equal(got.bins[:, 0].sum(axis=1), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_left_to_the_caller_among_short_rows_in_lanes(dtype, target):
    # rows of K <= 32 run one per SIMD lane: a NaN, a +inf or a row with nothing finite in
    # some lanes leaves those rows to the caller and sums the others
    rng = np.random.default_rng(21)
    z = (rng.standard_normal((211, 5)) * 2).astype(dtype)
    odd = [0, 3, 17, 18, 40, 63, 64, 130, 199, 210]
    for i, row in zip(odd, itertools.cycle([[np.nan, 0, 1, 2, 3], [0, np.inf, 1, 2, 3],
                                            [-np.inf] * 5, [np.inf] * 5])):
        z[i] = row
    y = rng.integers(0, 5, 211)
    for groups in (1, 3, 16):  # 16: a power of two takes the group by a mask
        spec = engine.Spec(from_logits=True, n_bins=10, inner=engine.uniform_inner(10),
                           moments=True, groups=groups, keep_rows=True)
        # NaN rows and rows of -inf are errors of the whole call: the +inf rows stay
        keep = ~(np.isnan(z).any(axis=1) | np.isneginf(z.max(axis=1)))
        zz, yy = np.ascontiguousarray(z[keep]), y[keep]
        got = native_block(zz, yy, spec)
        want = reference_block(zz, yy, spec)
        assert_sums(got, want, dtype, target)
        np.testing.assert_array_equal(got.rows["hit"], want.rows["hit"])
        np.testing.assert_allclose(got.rows["conf"], want.rows["conf"], rtol=1e-6)
    res = calibration_sums(CalibrationPass(x=z, labels=y, work=np.dtype(dtype),
                                           from_logits=True))
    assert res is not None and res.n_flagged == len(odd)
    assert np.flatnonzero(res.flagged).tolist() == odd


@pytest.mark.parametrize("from_logits", [False, True])
def test_sums_without_the_nll_leave_it_zero_and_the_rest_as_they_were(from_logits):
    x, y, spec, _ = random_case(500, 6, np.float32, from_logits,
                                "uniform bins, moments, groups", seed=8)
    for s in (spec, replace(spec, groups=1, keep_rows=False)):
        without = replace(s, nll=False)
        full, got, ref = native_block(x, y, s), native_block(x, y, without), \
            reference_block(x, y, without)
        assert not got.nll.any() and not ref.nll.any() and full.nll.all()
        for name in ("n", "hits", "brier", "bins"):
            np.testing.assert_array_equal(getattr(got, name), getattr(full, name), name)
        assert_sums(got, ref, np.float32)


@pytest.mark.parametrize("from_logits", [False, True])
def test_one_column_and_two_columns(from_logits):
    rng = np.random.default_rng(6)
    col = rng.normal(size=300) if from_logits else rng.uniform(0, 1, 300)
    y = rng.integers(0, 2, 300)
    for f in (ece, mce, brier_score, nll, accuracy):
        for x in (col, col[:, None]):
            fast = float(f(x, y, from_logits=from_logits))
            with fast_path(False):
                slow = float(f(x, y, from_logits=from_logits))
            assert math.isclose(fast, slow, rel_tol=1e-12, abs_tol=1e-15), f.__name__
    spec = engine.Spec(from_logits=from_logits, n_bins=5, inner=engine.uniform_inner(5))
    x = engine.as_rows_2d(col, from_logits)
    p = softmax(x) if from_logits else x
    assert_sums(native_block(x, y, spec), naive_sums(p, y, spec, 0), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_rows_within_the_tolerance_and_beyond(dtype):
    rng = np.random.default_rng(7)
    p = softmax(rng.normal(size=(500, 6)))
    y = rng.integers(0, 6, 500)
    spec = engine.Spec(n_bins=10, inner=engine.uniform_inner(10))
    for off in (9e-4, -9e-4, 1e-3 - 2e-6):  # accepted (the last in the kernel's margin)
        q = p.copy()
        q[17] *= 1 + off
        q = q.astype(dtype)
        assert_sums(engine.block_sums(q, y, spec=spec), reference_block(q, y, spec), dtype)
        assert_sums(engine.block_sums(q, y, spec=spec), naive_sums(q.astype(np.float64), y,
                                                                   spec, 0), dtype)
    q = p.copy()
    q[17] *= 1 + 1e-3 - 2e-6
    res = calibration_sums(CalibrationPass(x=q.astype(dtype), labels=y, work=np.dtype(dtype),
                                           from_logits=False))
    assert res is not None and res.invalid  # left to the reference, which accepts it
    for off in (1.2e-3, -1.2e-3):
        q = (p * np.where(np.arange(500) == 17, 1 + off, 1.0)[:, None]).astype(dtype)
        with pytest.raises(LogitkitValueError, match="rows sum to 1"):
            engine.block_sums(q, y, spec=spec)


BAD = {
    "nan probability": (False, lambda p, z: p.__setitem__((3, 1), np.nan)),
    "negative": (False, lambda p, z: p.__setitem__((5, 0), -0.25)),
    "above one": (False, lambda p, z: p.__setitem__((8, 2), 1.5)),
    "row sum": (False, lambda p, z: p.__setitem__(9, p[9] * 0.5)),
    "two errors": (False, lambda p, z: (p.__setitem__(2, p[2] * 0.5),
                                        p.__setitem__((40, 0), -1.0))),
    "nan logit": (True, lambda p, z: z.__setitem__((4, 3), np.nan)),
    "nan beside +inf": (True, lambda p, z: (z.__setitem__((1, 0), np.inf),
                                            z.__setitem__((6, 2), np.nan))),
    "row of -inf": (True, lambda p, z: z.__setitem__(7, -np.inf)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(BAD))
def test_errors_are_those_of_the_numpy_pass(case, dtype):
    rng = np.random.default_rng(8)
    z = rng.normal(size=(60, 5)).astype(dtype)
    p = softmax(z)
    from_logits, spoil = BAD[case]
    spoil(p, z)
    x = z if from_logits else p
    y = rng.integers(0, 5, 60)
    messages = []
    for enabled in (True, False):
        with fast_path(enabled), pytest.raises(LogitkitValueError) as err:
            ece(x, y, from_logits=from_logits)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("from_logits", [False, True])
def test_labels_are_checked_in_the_pass_with_the_numpy_pass_message(from_logits):
    rng = np.random.default_rng(15)
    z = rng.normal(size=(300, 6))
    x = z if from_logits else softmax(z)
    for bad in (6, -1):
        for k in (6, 40):  # one row per lane, and one row at a time
            xx = np.concatenate([x] * (k // 6), axis=1)[:, :k]
            xx = xx if from_logits else xx / xx.sum(axis=1, keepdims=True)
            y = rng.integers(0, 6, 300)
            y[250] = bad + (k - 6 if bad > 0 else 0)
            res = calibration_sums(CalibrationPass(x=xx, labels=y, work=np.dtype(np.float64),
                                                   from_logits=from_logits))
            assert res is not None and res.invalid
            messages = []
            for enabled in (True, False):
                with fast_path(enabled), pytest.raises(LogitkitValueError) as err:
                    nll(xx, y, from_logits=from_logits)
                messages.append(str(err.value))
            assert messages[0] == messages[1] and "label" in messages[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [False, True])
def test_short_rows_check_every_lanes_label_in_full_64_bits(from_logits, dtype, target):
    # Rows of K <= 32 read their labels a register of int64 lanes at a time (two for float
    # rows) and narrow them to T's integer lanes: a label out of range in any lane of either
    # register stops the pass, 2**32 + 1 and -2**32 + 3 too (their low 32 bits are in range).
    rng = np.random.default_rng(16)
    z = rng.normal(size=(40, 6)).astype(dtype)
    x = z if from_logits else softmax(z.astype(np.float64)).astype(dtype)
    y = rng.integers(0, 6, 40)
    ok = calibration_sums(CalibrationPass(x=x, labels=y, work=np.dtype(dtype),
                                          from_logits=from_logits))
    assert ok is not None and not ok.invalid and ok.totals[0, 0] == 40
    for row in range(18):  # every lane of the first lane group (16 float lanes at most) and beyond
        for bad in (6, -1, 2**32 + 1, -(2**32) + 3):
            yy = y.copy()
            yy[row] = bad
            res = calibration_sums(CalibrationPass(x=x, labels=yy, work=np.dtype(dtype),
                                                   from_logits=from_logits))
            assert res is not None and res.invalid, (row, bad)


@pytest.mark.parametrize("from_logits", [False, True])
def test_labels_of_every_integer_dtype_give_the_int64_sums(from_logits):
    # int32 labels are read as they are (no int64 copy: a fifth of 1e7 x 10 float32), narrower
    # ones widened to int32, the others to int64; out of range they stop the pass in lanes (K = 6)
    # and row by row (K = 40) alike
    for k in (6, 40):
        x, y, spec, _ = random_case(300, k, np.float32, from_logits,
                                    "uniform bins, moments, groups", seed=k)
        want = native_block(x, y.astype(np.int64), spec)
        for dt in (np.int32, np.uint8, np.int16, np.uint32, np.bool_):
            yy = (y % 2 if dt is np.bool_ else y).astype(dt)
            ref = want if dt is not np.bool_ else native_block(x, yy.astype(np.int64), spec)
            got = engine.block_sums(x, yy, spec=spec)
            for name in FIELDS:
                np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), name)
        for bad in (k, -1):
            yy = y.astype(np.int32)
            yy[250] = bad
            res = calibration_sums(CalibrationPass(x=x, labels=yy, work=np.dtype(np.float32),
                                                   from_logits=from_logits))
            assert res is not None and res.invalid
            with pytest.raises(LogitkitValueError, match="label"):
                engine.block_sums(x, yy, spec=spec)
        strided = np.repeat(y.astype(np.int32), 2)[::2]  # not contiguous: converted
        np.testing.assert_array_equal(engine.block_sums(x, strided, spec=spec).bins, want.bins)


def test_int32_labels_are_not_copied():
    import tracemalloc

    x, y, spec, _ = random_case(40000, 10, np.float32, False, "totals", seed=23)
    y32 = y.astype(np.int32)
    engine.block_sums(x, y32, spec=spec)
    tracemalloc.start()
    try:
        engine.block_sums(x, y32, spec=spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.05 * x.nbytes  # an int64 copy of the labels alone is 20%


@pytest.mark.parametrize("from_logits", [False, True])
def test_half_precision_and_other_layouts_are_widened_a_slab_at_a_time(from_logits, monkeypatch):
    import logitkit._kernels as kernels

    x32, y, spec, _ = random_case(900, 11, np.float32, from_logits,
                                  "uniform bins, moments, groups", seed=9)
    x16 = x32.astype(np.float16)
    p = softmax(x16.astype(np.float64)) if from_logits else x16.astype(np.float64)
    keep = clear_of_edges(p, spec, 1e-5)
    x16, y, p = x16[keep], y[keep], p[keep]
    whole = native_block(x16, y, spec)
    assert_sums(whole, reference_block(x16, y, spec), np.float32)
    assert_sums(whole, naive_sums(p, y, spec, 0), np.float32)
    monkeypatch.setattr(kernels, "SLAB_ELEMENTS", 11 * 50)  # 50 rows a slab
    assert_sums(native_block(x16, y, spec), whole, np.float32)
    fortran = np.asfortranarray(x16.astype(np.float32))
    assert_sums(native_block(fortran, y, spec), whole, np.float32)


# ------------------------------------------------------------------------------ hypothesis


@st.composite
def blocks(draw):
    n = draw(st.integers(1, 30))
    k = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    from_logits = draw(st.booleans())
    if from_logits:
        values = st.one_of(st.floats(-80, 80, width=32), st.sampled_from([-np.inf, 0.0, 1e30]))
        x = draw(hnp.arrays(dtype, (n, k), elements=values))
    else:
        w = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 1)))
        w[:, 0] += 1e-3
        x = (w / w.sum(axis=1, keepdims=True)).astype(dtype)
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, max(k, 2) - 1)))
    spec = engine.Spec(
        from_logits=from_logits, beta=draw(st.sampled_from([1.0, 0.5, 3.0])) if from_logits
        else 1.0, n_bins=draw(st.sampled_from([0, 1, 3, 15])), groups=draw(st.integers(1, 5)),
        moments=draw(st.booleans()), brier=draw(st.booleans()),
        cw_bins=draw(st.sampled_from([0, 2, 6])))
    if spec.n_bins:
        spec = replace(spec, inner=engine.uniform_inner(spec.n_bins))
    if spec.cw_bins:
        spec = replace(spec, cw_inner=engine.uniform_inner(spec.cw_bins))
    return x, y, spec, draw(st.integers(0, 1000))


@given(blocks())
def test_hypothesis_native_equals_numpy_pass_or_raises_the_same(case):
    x, y, spec, offset = case
    outcomes = []
    for enabled in (True, False):
        with fast_path(enabled):
            try:
                outcomes.append(engine.block_sums(x, y, spec=spec, offset=offset))
            except LogitkitValueError as err:
                outcomes.append(str(err))
    fast, slow = outcomes
    if isinstance(slow, str):
        assert fast == slow
        return
    assert not isinstance(fast, str)
    # probabilities are binned from the same values; logits' exponentials may differ by an ulp
    assert_sums(fast, slow, x.dtype, bins=not spec.from_logits)


# ------------------------------------------------------------------------------ determinism


def test_sums_do_not_depend_on_the_threads_and_tasks_only_on_the_shape(monkeypatch):
    import logitkit._kernels as kernels

    monkeypatch.setattr(kernels, "TASK_BYTES", 1 << 12)  # many tasks on a small input
    x, y, spec, _ = random_case(4000, 33, np.float32, True, "class-wise per class, top bins",
                                seed=12)
    spec = replace(spec, groups=5)
    assert kernels.calibration_tasks(4000, 33, 4, 100) > 8
    mod = native()
    threads, before = mod.num_threads(), mod.min_parallel_ns()
    results = []
    try:
        mod.set_min_parallel_ns(0.0)
        for t in (1, 2, 3):
            mod.set_num_threads(t)
            results.append(native_block(x, y, spec, offset=3))
    finally:
        mod.set_num_threads(threads)
        mod.set_min_parallel_ns(before)
    for other in results[1:]:
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(other, name), getattr(results[0], name), name)


def test_group_sums_do_not_depend_on_how_the_rows_are_cut():
    x, y, spec, _ = random_case(3000, 20, np.float64, True, "uniform bins, moments, groups",
                                seed=13)
    whole = native_block(x, y, spec)
    m = x.shape[0]
    cuts = [0, 1, 700, m - 1, m]
    parts = [native_block(x[a:b], y[a:b], spec, offset=a) for a, b in itertools.pairwise(cuts)]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    assert_sums(total, whole, np.float64)
    np.testing.assert_array_equal(total.n, whole.n)
    np.testing.assert_array_equal(total.bins[:, 0], whole.bins[:, 0])
    np.testing.assert_array_equal(total.rows["group"], whole.rows["group"])


def test_python_threads_get_the_serial_result_bit_for_bit():
    cases = [random_case(3000, k, dt, lg, cfg, seed=k)
             for k, dt, lg, cfg in [(50, np.float32, True, "uniform bins, moments, groups"),
                                    (8, np.float64, False, "class-wise uniform, groups"),
                                    (200, np.float32, False, "totals")]]
    expected = [native_block(x, y, spec) for x, y, spec, _ in cases]

    def work(seed):
        order = np.random.default_rng(seed).integers(0, len(cases), 12)
        for j in order:
            x, y, spec, _ = cases[j]
            got = native_block(x, y, spec)
            if not all(np.array_equal(getattr(got, f), getattr(expected[j], f)) for f in FIELDS
                       if getattr(got, f) is not None):
                return False
        return True

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        assert all(ex.map(work, range(6)))


def test_fork_children_compute_the_parents_sums():
    from test_kernel_fork import run

    out = run("""
        from logitkit.calibration import CalibrationStats
        zz = rng.standard_normal((20000, 100)).astype(np.float32)
        yy = rng.integers(0, 100, 20000)
        ee = np.exp(zz - zz.max(axis=1, keepdims=True))
        pp = ee / ee.sum(axis=1, keepdims=True)  # the probabilities' pass too
        def figures():
            out = []
            for xx, from_logits in ((zz, True), (pp, False)):
                got = CalibrationStats(15).update(xx, yy, from_logits=from_logits).compute()
                out += [got[key] for key in ("nll", "brier", "ece", "mce")] + [
                    got["bin_count"].tolist(), np.nan_to_num(got["bin_confidence"]).tolist()]
            return out
        want = figures()
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if figures() == want else 3)
            children.append(pid)
        print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
    """)
    assert out == "[0, 0]"
