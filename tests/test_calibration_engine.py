"""The measurement engine: every metric against its definition written out naively, from
probabilities and from logits, on every backend; one pass in the input's precision; the row
groups; the Brier decomposition; the automatic bin count; the package's import graph."""

from __future__ import annotations

import ast
import math
import pathlib
import tracemalloc

import numpy as np
import pytest

from conftest import asarray, assert_close, is_type_of, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError, softmax
from logitkit.calibration import (
    CalibrationStats,
    accuracy,
    auto_bins,
    brier_decomposition,
    brier_score,
    ece,
    mce,
    nll,
)
from logitkit.calibration import _engine as engine


def _data(n=500, k=4, seed=0, scale=2.5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    y = np.array([rng.choice(k, p=r) for r in softmax(z / 2)])
    return z, softmax(z), y


# ------------------------------------------------------------------------- naive definitions


def naive_probs(z):
    out = []
    for row in z:
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        out.append([v / s for v in e])
    return np.array(out)


def naive_binned(p, y, n_bins, norm, mode, min_count=1):
    """Loops over rows and bins, edges b/B, right-closed, first bin holds 0."""
    n, k = p.shape
    cols = ([[(max(r), float(int(np.argmax(r)) == t)) for r, t in zip(p, y, strict=True)]]
            if mode == "top-label" else
            [[(r[c], float(t == c)) for r, t in zip(p, y, strict=True)] for c in range(k)])
    per_col = []
    for col in cols:
        bins = [[] for _ in range(n_bins)]
        for conf, hit in col:
            b = 0
            while b < n_bins - 1 and conf > (b + 1) / n_bins:
                b += 1
            bins[b].append((conf, hit))
        gaps = [(len(m), sum(h for _, h in m) / len(m) - sum(c for c, _ in m) / len(m))
                for m in bins if m]
        if norm == "l1":
            per_col.append(sum(c / n * abs(g) for c, g in gaps))
        elif norm == "l2":
            per_col.append(sum(c / n * g * g for c, g in gaps))
        else:
            used = [abs(g) for c, g in gaps if c >= min_count]
            per_col.append(max(used) if used else math.nan)
    if norm == "l1":
        return sum(per_col) / len(per_col)
    if norm == "l2":
        return math.sqrt(sum(per_col) / len(per_col))
    return max(per_col)


def naive_brier(p, y):
    return sum(sum((v - float(c == t)) ** 2 for c, v in enumerate(r))
               for r, t in zip(p, y, strict=True)) / len(y)


def naive_nll(p, y):
    return -sum(math.log(r[t]) for r, t in zip(p, y, strict=True)) / len(y)


def naive_nll_logits(z, y):
    total = 0.0
    for r, t in zip(z, y, strict=True):
        m = max(r)
        total += m + math.log(sum(math.exp(v - m) for v in r)) - r[t]
    return total / len(y)


def naive_accuracy(p, y):
    return sum(int(np.argmax(r)) == t for r, t in zip(p, y, strict=True)) / len(y)


# ------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("mode", ["top-label", "classwise"])
def test_every_metric_equals_its_definition_on_every_backend(xp, from_logits, mode):
    z, _, y = _data(n=240, k=4, seed=1)
    p = naive_probs(z)
    x = asarray(xp, z if from_logits else p)
    ya = asarray(xp, y)
    for norm in ("l1", "l2", "max"):
        got = ece(x, ya, n_bins=10, norm=norm, mode=mode, min_count=1, from_logits=from_logits)
        assert is_type_of(got, xp)
        assert_close(got, naive_binned(p, y, 10, norm, mode), rtol=1e-10, err_msg=norm)
    assert_close(mce(x, ya, n_bins=7, mode=mode, min_count=12, from_logits=from_logits),
                 naive_binned(p, y, 7, "max", mode, min_count=12), rtol=1e-10)
    assert_close(brier_score(x, ya, from_logits=from_logits), naive_brier(p, y), rtol=1e-10)
    want_nll = naive_nll_logits(z, y) if from_logits else naive_nll(p, y)
    assert_close(nll(x, ya, from_logits=from_logits), want_nll, rtol=1e-10)
    assert_close(accuracy(x, ya, from_logits=from_logits), naive_accuracy(p, y), rtol=0)


@pytest.mark.parametrize("from_logits", [False, True])
def test_float32_input_equals_the_definition_of_its_own_values(from_logits):
    z, _, y = _data(n=3000, k=30, seed=2)
    z32 = z.astype(np.float32)
    p32 = softmax(z32)
    x = z32 if from_logits else p32
    p = naive_probs(z32.astype(np.float64)) if from_logits else p32.astype(np.float64)
    assert_close(ece(x, y, n_bins=12, from_logits=from_logits), naive_binned(p, y, 12, "l1",
                 "top-label"), rtol=2e-5)
    assert_close(brier_score(x, y, from_logits=from_logits), naive_brier(p, y), rtol=1e-5)
    assert_close(nll(x, y, from_logits=from_logits), naive_nll(p, y), rtol=1e-5)
    assert_close(accuracy(x, y, from_logits=from_logits), naive_accuracy(p, y), rtol=0)


def test_chunks_threads_and_one_call_agree():
    # many chunks, split over threads: the same sums as a single chunk
    _, p, y = _data(n=6000, k=50, seed=3)
    one = {f.__name__: float(f(p, y)) for f in (ece, mce, brier_score, nll, accuracy)}
    old = engine.CHUNK_ELEMENTS, engine.PARALLEL_ELEMENTS, engine.THREADS
    try:
        engine.CHUNK_ELEMENTS, engine.PARALLEL_ELEMENTS, engine.THREADS = 1000, 1, 3
        for f in (ece, mce, brier_score, nll, accuracy):
            assert_close(f(p, y), one[f.__name__], rtol=1e-12, err_msg=f.__name__)
    finally:
        engine.CHUNK_ELEMENTS, engine.PARALLEL_ELEMENTS, engine.THREADS = old


def test_logits_with_infinities_follow_the_softmax_rules_and_nan_is_an_error():
    z = np.array([[0.0, np.inf, np.inf], [1.0, -np.inf, 0.0], [2.0, 0.0, 1.0]])
    y = np.array([1, 0, 2])
    p = softmax(z)  # [0, .5, .5] for the +inf row
    assert_close(nll(z, y, from_logits=True), naive_nll(p, y), rtol=1e-12)
    assert_close(ece(z, y, from_logits=True, n_bins=4), ece(p, y, n_bins=4), rtol=1e-12)
    assert float(nll(np.array([[0.0, -np.inf]]), np.array([1]), from_logits=True)) == math.inf
    with pytest.raises(LogitkitValueError, match="logits without NaN"):
        ece(np.array([[0.0, np.nan]]), np.array([0]), from_logits=True)
    with pytest.raises(LogitkitValueError, match="row of -inf"):
        nll(np.array([[-np.inf, -np.inf]]), np.array([0]), from_logits=True)
    # a label's logit far below the rest: the label-shifted sum overflows and is redone
    big = np.array([[0.0, 200.0]], dtype=np.float32)
    assert_close(nll(big, np.array([0]), from_logits=True), 200.0, rtol=1e-6)


def test_bfloat16_softmax_outputs_are_accepted():
    # regression: the rows of a bfloat16 softmax sum to 1 only within its rounding (2.7e-3)
    import torch

    z = torch.randn(2000, 100, generator=torch.Generator().manual_seed(0)) * 3
    p16 = torch.softmax(z.to(torch.bfloat16), dim=1)
    y = torch.randint(0, 100, (2000,), generator=torch.Generator().manual_seed(1))
    worst = float((p16.float().sum(1) - 1).abs().max())
    assert worst > 1e-3  # the case the old 1e-3 tolerance refused
    got = ece(p16, y)
    assert_close(got, ece(p16.float().double().numpy() / p16.float().double().sum(1, keepdim=True)
                          .numpy(), y.numpy()), rtol=0, atol=5e-3)
    with pytest.raises(LogitkitValueError, match="rows sum to 1"):
        ece(p16.float() * 0.99, y)  # a real error is still one


def test_float32_probabilities_are_not_copied_to_float64():
    # regression: the whole matrix was upcast to float64 and validated in four passes
    rng = np.random.default_rng(4)
    p32 = softmax(rng.normal(size=(200_000, 100)).astype(np.float32) * 3)
    y = rng.integers(0, 100, 200_000)
    for f in (ece, brier_score, nll, accuracy):
        f(p32[:10], y[:10])
        tracemalloc.start()
        f(p32, y)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 0.10 * p32.nbytes, (f.__name__, peak / p32.nbytes)
    tracemalloc.start()
    stats = CalibrationStats().update(p32, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # beyond a few copies of its O(groups x bins) state, whatever N is
    assert peak < 0.10 * p32.nbytes + 8 * stats._sums.bins.nbytes


def test_validation_names_the_argument_and_the_bad_value():
    _, p, y = _data(n=10, k=3, seed=5)
    with pytest.raises(LogitkitValueError, match=r"`probs`.*in \[0, 1\].*-0\.5"):
        ece(np.array([[1.5, -0.5]]), np.array([0]))
    with pytest.raises(LogitkitValueError, match=r"`probs`.*in \[0, 1\].*1\.5"):
        ece(np.array([[1.5, 0.0]]), np.array([0]))
    with pytest.raises(LogitkitValueError, match=r"a row summing to 0\.5"):
        nll(p * 0.5, y)
    with pytest.raises(LogitkitTypeError, match="`from_logits`"):
        ece(p, y, from_logits="yes")
    with pytest.raises(LogitkitValueError, match="`temperature`"):
        CalibrationStats().update(p, y, from_logits=True, temperature=0.0)
    with pytest.raises(LogitkitValueError, match="`min_count`"):
        mce(p, y, min_count=0)
    with pytest.raises(LogitkitTypeError, match=r"`n_bins`.*'auto'"):
        ece(p, y, n_bins=2.5)
    with pytest.raises(LogitkitValueError, match="`n_bins`"):
        CalibrationStats(n_bins="auto")


# ------------------------------------------------------------------------- bins


def test_auto_bins_grow_as_the_cube_root_of_n():
    assert [auto_bins(n) for n in (1, 125, 126, 27_000, 10**9)] == [5, 5, 6, 30, 50]
    _, p, y = _data(n=1000, k=3, seed=6)
    assert_close(ece(p, y, n_bins="auto"), ece(p, y, n_bins=10), rtol=0)


def test_uniform_bins_by_arithmetic_match_a_binary_search_on_edges():
    # values on and next to every edge b/B, for several B
    for b in (3, 7, 10, 15, 49):
        edges = np.array([i / b for i in range(b + 1)])
        near = np.concatenate([edges, np.nextafter(edges, 2), np.nextafter(edges, -1)])
        conf = np.clip(np.concatenate([near, np.random.default_rng(b).random(500)]), 0, 1)
        got = engine.top_bins(conf, edges[1:-1])
        want = np.searchsorted(edges[1:-1], conf, side="left")
        np.testing.assert_array_equal(got, want)


def test_mce_leaves_out_and_reports_small_bins():
    f = np.array([0.55] * 30 + [0.95] * 2)
    p = np.stack([f, 1 - f], 1)
    y = np.array([0] * 15 + [1] * 15 + [1, 1])
    # the bin of two at 0.95 has gap 0.95; the bin of 30 at 0.55 has gap 0.05
    assert_close(mce(p, y, n_bins=10, min_count=1), 0.95, rtol=1e-12)
    assert_close(mce(p, y, n_bins=10), 0.05, rtol=1e-9)
    stats = CalibrationStats(n_bins=10).update(p, y).compute()
    assert stats["mce_excluded_bins"] == [9] and stats["mce_min_count"] == 10
    assert_close(stats["mce"], 0.05, rtol=1e-9)
    assert math.isnan(float(mce(p[:5], y[:5])))


def test_quantile_bins_come_from_one_shared_rule():
    from logitkit.calibration._binning import edges_of, quantile_edges, quantile_ranks

    conf = np.random.default_rng(7).random(101)
    want = np.quantile(conf, np.arange(1, 8) / 8, method="inverted_cdf")
    np.testing.assert_array_equal(edges_of(conf, 8, "quantile")[1:-1], want)
    np.testing.assert_array_equal(quantile_edges(conf, 8, np), want)
    assert quantile_ranks(101, 8) == [int(np.ceil(b * 101 / 8)) - 1 for b in range(1, 8)]


# ------------------------------------------------------------------------- Brier decomposition


@pytest.mark.parametrize("mode", ["classwise", "top-label"])
def test_brier_decomposition_adds_up_and_equals_its_definition(xp, mode):
    _, p, y = _data(n=400, k=3, seed=8)
    parts = brier_decomposition(asarray(xp, p), asarray(xp, y), n_bins=6, mode=mode)
    got = {k: float(to_numpy(v)) for k, v in parts.items()}
    if mode == "classwise":
        cols = [(p[:, c], (y == c).astype(float)) for c in range(3)]
        assert_close(got["brier"], naive_brier(p, y), rtol=1e-10)
    else:
        cols = [(p.max(1), (p.argmax(1) == y).astype(float))]
    cal = ref = wb = unc = 0.0
    for f, o in cols:
        b = np.minimum(np.maximum(np.ceil(f * 6).astype(int) - 1, 0), 5)
        unc += o.mean() * (1 - o.mean())
        for j in range(6):
            s = b == j
            if not s.any():
                continue
            fb, ob = f[s].mean(), o[s].mean()
            cal += s.sum() * (fb - ob) ** 2 / len(y)
            ref += s.sum() * ob * (1 - ob) / len(y)
            wb += (((f[s] - fb) ** 2).sum() - 2 * ((f[s] - fb) * (o[s] - ob)).sum()) / len(y)
    assert_close(got["calibration"], cal, rtol=1e-9)
    assert_close(got["refinement"], ref, rtol=1e-9)
    assert_close(got["within_bin"], wb, rtol=1e-8, atol=1e-15)
    assert_close(got["uncertainty"], unc, rtol=1e-9)
    assert_close(got["resolution"], unc - ref, rtol=1e-8)
    assert_close(got["calibration"] + got["refinement"] + got["within_bin"], got["brier"],
                 rtol=1e-10)


# ------------------------------------------------------------------------- groups and stats


def test_row_groups_do_not_depend_on_chunks_or_batches():
    _, p, y = _data(n=5000, k=5, seed=9)
    whole = CalibrationStats().update(p, y)
    batched = CalibrationStats()
    for i in range(0, 5000, 777):
        batched.update(p[i:i + 777], y[i:i + 777])
    np.testing.assert_allclose(batched._sums.bins, whole._sums.bins, rtol=1e-12, atol=1e-12)
    a = whole.intervals(random_state=3)
    b = batched.intervals(random_state=3)
    for key in a:
        assert_close(np.array(a[key]), np.array(b[key]), rtol=1e-9, err_msg=key)
    g = engine.group_of(0, 5000, 1024)
    assert g is not None and g[:1024].tolist() == list(range(1024))
    assert np.bincount(g, minlength=1024).min() >= 1  # every group holds rows


def test_stats_from_logits_at_a_temperature_equal_the_metrics():
    z, _, y = _data(n=3000, k=6, seed=10)
    s = CalibrationStats(n_bins=12).update(z, y, from_logits=True, temperature=2.0).compute()
    p = softmax(z / 2.0)
    assert_close(s["ece"], ece(p, y, n_bins=12), rtol=1e-10)
    assert_close(s["nll"], nll(z / 2.0, y, from_logits=True), rtol=1e-10)
    assert_close(s["brier"], brier_score(p, y), rtol=1e-10)
    assert_close(s["accuracy"], accuracy(p, y), rtol=0)
    parts = s["brier_decomposition"]
    assert_close(parts["calibration"] + parts["refinement"] + parts["within_bin"],
                 parts["brier"], rtol=1e-10)


def test_intervals_cover_the_estimate_for_every_figure():
    z, _, y = _data(n=4000, k=5, seed=11)
    stats = CalibrationStats().update(z, y, from_logits=True)
    values = stats.compute()
    for method in ("percentile", "basic", "bca"):
        for key, (low, high) in stats.intervals(method=method, random_state=0).items():
            assert low < values[key] < high, (method, key)


# ------------------------------------------------------------------------- the package


def _imports(path: pathlib.Path) -> set[str]:
    """Calibration modules ``path`` imports (at any level, relative imports)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module)
            else:
                out.update(alias.name for alias in node.names)
    return out


def test_the_calibration_package_has_no_import_circle_and_only_the_adapter_names_dask():
    import logitkit.calibration as cal

    root = pathlib.Path(cal.__file__).parent
    # _temperature.py still reaches into _dask for its fit: the calibrators' branch moves it
    # onto _blocks.row_sums; until then it is left out of both checks.
    mods = {p.stem: p for p in root.glob("_*.py") if p.stem not in ("__init__", "_temperature")}
    graph = {m: _imports(p) & set(mods) for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import circle: {' -> '.join([*trail, m, n])}"
            if n not in state:
                visit(n, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert not any("_dask" in deps for m, deps in graph.items() if m != "_dask")
    for m, p in mods.items():
        if m == "_dask":
            continue
        names = {n.id for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(ast.parse(p.read_text()))
                  if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(ast.parse(p.read_text()))
                  if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert not {n for n in names if "dask" in n.lower()}, m


def test_an_empty_block_keeps_the_other_blocks_rows():
    # regression: adding the sums of an empty block dropped the per-row results of the other
    spec = engine.Spec(keep_rows=True, brier=False)
    p, y = np.array([[0.7, 0.3], [0.4, 0.6]]), np.array([0, 0])
    full, empty = engine.block_sums(p, y, spec=spec), engine.block_sums(p[:0], y[:0], spec=spec)
    for total in (full + empty, empty + full):
        np.testing.assert_array_equal(total.rows["conf"], [0.7, 0.6])
        np.testing.assert_array_equal(total.rows["hit"], [1.0, 0.0])
