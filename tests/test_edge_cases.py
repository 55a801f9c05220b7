"""The edge-case table of DESIGN §2, in value and in gradient, on every backend.

Values run on numpy, array_api_strict, torch and jax (under ``jax.jit``); gradients run on torch
autograd and ``jax.grad`` under ``jax.jit``.  Expected values come from ``reference.table``, which
applies the table's rules row by row and computes the finite remainder exactly with mpmath.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

# The helpers live next to this file (conftest's fixtures and the mpmath references).
import reference
from conftest import asarray, assert_close, grad, is_type_of, maybe_jit, to_numpy
from logitkit import entropy, log_softmax, logsumexp, softmax

inf, nan = math.inf, math.nan
T, F = True, False

FUNCS = {"softmax": softmax, "log_softmax": log_softmax, "logsumexp": logsumexp,
         "entropy": entropy}

# name -> (rows, mask or None); every row has K = 5.
CASES = {
    "finite": ([[1.0, 2.0, 3.0, 0.5, -4.0], [0.0, 0.0, 0.0, 0.0, 0.0]], None),
    "fully_masked": ([[1.0, nan, inf, -inf, 2.0]], [[F, F, F, F, F]]),
    "all_neg_inf": ([[-inf, -inf, -inf, -inf, -inf]], None),
    "masked_rest_neg_inf": ([[-inf, 3.0, -inf, nan, -inf]], [[T, F, T, F, T]]),
    "one_pos_inf": ([[1.0, inf, -inf, 2.0, 1e300]], None),
    "three_pos_inf": ([[inf, 2.0, inf, -inf, inf]], None),
    "unmasked_nan": ([[1.0, nan, 3.0, 0.0, 0.0]], None),
    "unmasked_nan_with_pos_inf": ([[inf, 1.0, nan, -inf, 0.0]], None),
    "masked_nan_and_inf_do_not_leak": ([[1.0, nan, inf, -inf, 3.0]], [[T, F, F, F, T]]),
    "masked_pos_inf_with_unmasked_pos_inf": ([[inf, inf, 0.0, nan, 1.0]], [[T, F, T, F, T]]),
    "single_live_entry": ([[5.0, nan, nan, nan, nan]], [[T, F, F, F, F]]),
}
ALL_ROWS = np.concatenate([np.array(r, dtype=np.float64) for r, _ in CASES.values()])
ALL_MASK = np.concatenate(
    [np.ones(np.shape(r), bool) if m is None else np.array(m) for r, m in CASES.values()]
)
SPECIAL = {"fully_masked", "all_neg_inf", "masked_rest_neg_inf", "one_pos_inf", "three_pos_inf"}


def run(f, xp, x, where=None, **kw):
    """``f(x, where=where, **kw)`` on backend ``xp`` (jitted on JAX, the mask a traced argument)."""
    xa = asarray(xp, x)
    if where is None:
        return maybe_jit(lambda a: f(a, **kw), xp)(xa)
    return maybe_jit(lambda a, w: f(a, where=w, **kw), xp)(xa, asarray(xp, np.asarray(where)))


def _all(a, where=None):
    return {name: f(a, where=where) for name, f in FUNCS.items()}


def run_all(xp, x, where=None):
    """The four functions at once (one compilation on JAX)."""
    out = run(_all, xp, x, where)
    return {k: out[k] for k in FUNCS}


@pytest.mark.parametrize("case", list(CASES))
def test_edge_case_table_value(xp, case):
    rows, mask = CASES[case]
    x = np.array(rows)
    for fname, out in run_all(xp, x, mask).items():
        assert is_type_of(out, xp)
        assert_close(out, reference.table(fname, x, mask), rtol=1e-13, atol=1e-300,
                     err_msg=fname)


def test_edge_cases_in_one_batch_do_not_interfere(xp):
    for fname, out in run_all(xp, ALL_ROWS, ALL_MASK).items():
        assert_close(out, reference.table(fname, ALL_ROWS, ALL_MASK), rtol=1e-13, atol=1e-300,
                     err_msg=fname)


def test_unmasked_nan_makes_the_whole_row_nan(xp):
    outs = run_all(xp, np.array([[0.0, nan, 1.0], [0.0, 1.0, 2.0]]))
    for fname in ("softmax", "log_softmax"):
        out = to_numpy(outs[fname])
        assert np.isnan(out[0]).all()
        assert np.isfinite(out[1]).all()


def test_masked_nan_does_not_leak_into_other_entries(xp):
    x = np.array([[nan, 1.0, 2.0], [inf, -inf, 0.0]])
    w = np.array([[F, T, T], [F, F, T]])
    assert_close(run(softmax, xp, x, w), [[0.0, 1 / (1 + math.e), math.e / (1 + math.e)],
                                          [0.0, 0.0, 1.0]], rtol=1e-15)


def test_empty_axis(xp):
    for fname, out in run_all(xp, np.zeros((3, 0))).items():
        if fname in ("softmax", "log_softmax"):
            assert tuple(out.shape) == (3, 0)
        else:
            assert_close(out, np.full(3, -inf if fname == "logsumexp" else 0.0))
        assert is_type_of(out, xp)


def test_empty_axis_logsumexp_keepdims_and_sign(xp):
    lse, sign = logsumexp(asarray(xp, np.zeros((2, 0, 3))), axis=1, keepdims=True,
                          return_sign=True)
    assert_close(lse, np.full((2, 1, 3), -inf))
    assert_close(sign, np.zeros((2, 1, 3)))


def test_empty_batch_keeps_its_shape(xp):
    out = softmax(asarray(xp, np.zeros((0, 4))))
    assert tuple(out.shape) == (0, 4)
    assert tuple(logsumexp(asarray(xp, np.zeros((0, 4)))).shape) == (0,)


HUGE32 = np.array([[1e38, -1e38, 0.0, 1e38, -3e37],
                   [-1e38, -1e38, -1e38, -1e38, -1e38],
                   [3e38, 3e38, 3e38, 3e38, 3e38],
                   [1e-38, -1e-38, 1e-45, 0.0, -1e-45]], dtype=np.float32)


def test_float32_huge_magnitudes_do_not_overflow(xp):
    for fname, out in run_all(xp, HUGE32).items():
        assert str(out.dtype).endswith("float32")
        ref = reference.table(fname, HUGE32.astype(np.float64))
        # no overflow: lse of the saturated row is 3e38 + log 5, representable
        assert not np.isnan(to_numpy(out)).any()
        assert_close(out, ref.astype(np.float32), rtol=2e-7, atol=1e-44, err_msg=fname)
        if fname == "logsumexp":
            assert np.isfinite(to_numpy(out)).all()
        if fname == "log_softmax":
            assert to_numpy(out)[0, 1] == np.float32(-2e38)  # the exact -2e38 is representable


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


def _weights(shape):
    return np.random.default_rng(0).uniform(-1.0, 1.0, shape)


def _loss(f, xp, c, where=None):
    """Σ c·f(x) over the finite outputs (the usual way a loss skips -inf log-probabilities)."""
    def loss(a):
        y = f(a) if where is None else f(a, where=where)
        finite = xp.isfinite(y)
        return xp.sum(xp.where(finite, y * c, xp.zeros_like(y)))
    return loss


def _expected_grad(fname, x, mask, c):
    """Analytic gradient on ordinary rows, 0 on the special rows (locally constant there)."""
    p = reference.table("softmax", x, mask)
    y = reference.table(fname, x, mask)
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        row = x[i] if mask is None else x[i][mask[i]]
        if not np.isfinite(row).any() or np.isnan(row).any() or np.isposinf(row).any():
            continue  # special row: the value is locally constant, the gradient is 0
        pi = p[i]
        if fname == "softmax":
            out[i] = pi * (c[i] - np.sum(pi * c[i]))
        elif fname == "log_softmax":
            ce = np.where(np.isfinite(y[i]), c[i], 0.0)
            out[i] = ce - pi * ce.sum()
        elif fname == "logsumexp":
            out[i] = c[i] * pi
        else:
            logp = np.where(pi > 0, np.log(np.where(pi > 0, pi, 1.0)), 0.0)
            out[i] = -c[i] * pi * (logp + y[i])
    return out


@pytest.mark.parametrize("fname", list(FUNCS))
def test_edge_case_gradients_finite_and_exactly_zero_where_masked(ad_xp, fname):
    xp = ad_xp
    nan_free = [k for k in CASES if not k.startswith("unmasked_nan")]
    x = np.concatenate([np.array(CASES[k][0], dtype=np.float64) for k in nan_free])
    mask = np.concatenate([np.ones(np.shape(CASES[k][0]), bool) if CASES[k][1] is None
                           else np.array(CASES[k][1]) for k in nan_free])
    reduces = fname in ("logsumexp", "entropy")
    c = _weights(x.shape[:1] if reduces else x.shape)
    g = to_numpy(grad(_loss(FUNCS[fname], xp, asarray(xp, c), asarray(xp, mask)),
                      asarray(xp, x), xp))
    assert np.isfinite(g).all(), g
    assert (g[~mask] == 0).all()
    assert_close(g, _expected_grad(fname, x, mask, c), rtol=1e-12, atol=1e-15)


def _weights_all(x):
    """Independent weights for each function's output, shaped like it."""
    rng = np.random.default_rng(1)
    return {f: rng.uniform(-1.0, 1.0, x.shape[:1] if f in ("logsumexp", "entropy") else x.shape)
            for f in FUNCS}


def _grad_all(xp, x, where=None):
    """Gradient of Σ_f Σ c_f·f(x) over the finite outputs of all four functions (one
    compilation on JAX), and the analytic expectation."""
    cs = _weights_all(x)
    ca = {f: asarray(xp, c) for f, c in cs.items()}
    wa = None if where is None else asarray(xp, where)

    def loss(a):
        total = 0.0
        for f, fn in FUNCS.items():
            y = fn(a) if wa is None else fn(a, where=wa)
            total = total + xp.sum(xp.where(xp.isfinite(y), y * ca[f], xp.zeros_like(y)))
        return total

    g = to_numpy(grad(loss, asarray(xp, x), xp))
    expected = sum(_expected_grad(f, x.astype(np.float64), where, cs[f]) for f in FUNCS)
    return g, expected


def test_fully_masked_row_gradient_is_zero(ad_xp):
    x = np.array([[1.0, nan, inf, -2.0], [0.5, 1.0, -1.0, 2.0]])
    w = np.array([[F, F, F, F], [T, T, F, T]])
    g, expected = _grad_all(ad_xp, x, w)
    assert (g[0] == 0).all()
    assert g[1, 2] == 0
    assert np.isfinite(g).all()
    assert np.abs(g[1]).max() > 0
    assert_close(g, expected, rtol=1e-12, atol=1e-15)


def test_masked_nan_gives_no_nan_gradient(ad_xp):
    x = np.array([[nan, 1.0, inf, 2.0, -inf]])
    w = np.array([[F, T, F, T, F]])
    g, expected = _grad_all(ad_xp, x, w)
    assert np.isfinite(g).all()
    assert (g[0, [0, 2, 4]] == 0).all()
    assert_close(g, expected, rtol=1e-12, atol=1e-15)


def test_all_neg_inf_and_pos_inf_rows_have_zero_gradient(ad_xp):
    x = np.array([[-inf, -inf, -inf], [inf, 0.0, inf], [1.0, inf, -inf]])
    g, _ = _grad_all(ad_xp, x)
    assert (g == 0).all()


def test_nan_row_does_not_poison_the_gradient_of_other_rows(ad_xp):
    x = np.array([[nan, 1.0, 2.0], [0.5, -1.0, 3.0]])
    g, expected = _grad_all(ad_xp, x)
    assert_close(g[1], expected[1], rtol=1e-12, atol=1e-15)


def test_float32_huge_magnitudes_have_finite_gradients(ad_xp):
    g, expected = _grad_all(ad_xp, HUGE32[:2])
    assert np.isfinite(g).all()
    assert_close(g, expected, rtol=1e-5, atol=1e-6)


def test_empty_axis_gradient_is_empty(ad_xp):
    xp = ad_xp
    g = to_numpy(grad(lambda a: xp.sum(softmax(a, axis=0) * 2.0), asarray(xp, np.zeros((0, 3))),
                      xp))
    assert g.shape == (0, 3)


def test_row_spanning_more_than_the_float_range_warns_nothing(xp):
    # [3e38, -3e38] in float32: x - max rounds to -inf, which is the right answer; NumPy used to
    # warn "overflow encountered in subtract" (an error under filterwarnings=error).
    x = asarray(xp, np.array([[3e38, -3e38, 0.0]], dtype=np.float32))
    from logitkit._kernels import fast_path

    with fast_path(False):
        assert_close(softmax(x), np.array([[1.0, 0.0, 0.0]]))
        assert_close(log_softmax(x)[..., :2], np.array([[0.0, -np.inf]]))
        assert_close(logsumexp(x), np.array([3e38], dtype=np.float32))


# --------------------------------------------------------------------------------------------
# regressions: temperatures, empty axes and JAX's NaN hunting at the ends of the float range
# --------------------------------------------------------------------------------------------


def _exact_log_softmax(z) -> np.ndarray:
    import mpmath

    vals = [mpmath.mpf(v) for v in z]
    s = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in vals))
    return np.array([float(v - s) for v in vals])


def test_temperature_limits_at_the_ends_of_the_float_range(xp):
    # T = 1e-46 is 0 in float32 and T = 1e38 leaves x − max overflowing: the exact answers.
    x = np.array([1.0, 2.0], dtype=np.float32)
    assert_close(run(softmax, xp, x, temperature=1e-46), [0.0, 1.0], atol=0.0)
    wide = np.array([3e38, -3e38], dtype=np.float32)
    exact = _exact_log_softmax([float(wide[0]) / 1e38, float(wide[1]) / 1e38])
    assert_close(run(log_softmax, xp, wide, temperature=1e38), exact, rtol=1e-6)
    # T = ∞ is uniform over the finite entries, however far apart they are.
    x64 = np.array([1e308, -1e308, 0.0])
    assert_close(run(softmax, xp, x64, temperature=math.inf), np.full(3, 1 / 3), rtol=1e-15)
    assert_close(run(entropy, xp, x64, temperature=math.inf), math.log(3), rtol=1e-15)


@pytest.mark.parametrize("fname", ["softmax", "log_softmax", "entropy"])
def test_empty_class_axis_with_a_temperature_gives_an_empty_result(xp, fname):
    out = run(FUNCS[fname], xp, np.zeros((3, 0)), temperature=2.5)
    if fname == "entropy":
        assert_close(out, np.zeros(3), atol=0.0)
    else:
        assert tuple(out.shape) == (3, 0)


def test_torch_empty_axis_returns_a_new_tensor_with_double_backward():
    import torch

    for requires_grad in (False, True):
        x = torch.zeros((10, 0), requires_grad=requires_grad)
        for f in (softmax, log_softmax):
            for t in (1.0, 2.0):
                y = f(x, axis=1, temperature=t)
                assert y is not x and y.shape == (10, 0)
    x = torch.zeros((10, 0), requires_grad=True)
    (g,) = torch.autograd.grad(softmax(x, axis=1).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)  # as torch.softmax allows
    assert gg.shape == (10, 0)


def test_eager_jax_calls_on_finite_input_pass_the_nan_and_inf_checks():
    """``jax.debug_infs``/``debug_nans`` raise on any eager op that makes an inf or a NaN: an
    ±inf or NaN constant built unconditionally tripped every call on finite input."""
    import jax
    import jax.numpy as jnp

    import logitkit as lk

    x = jnp.array([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]])
    y = jnp.array([0, 2])
    calls = [
        lambda: lk.softmax(x), lambda: lk.log_softmax(x, temperature=0.5),
        lambda: lk.logsumexp(x), lambda: lk.logsumexp(x, b=jnp.ones(3), return_sign=True),
        lambda: lk.entropy(x), lambda: lk.softmax(x, softcap=3.0, sink=0.0),
        lambda: lk.softmax(x, temperature=jnp.array([0.5, 2.0])),
        lambda: lk.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-3),
        lambda: lk.cross_entropy_with_grad(x, y, weight=jnp.array([1.0, 2.0, 0.5])),
        lambda: jax.grad(lambda a: lk.cross_entropy(a, y))(x),
        lambda: lk.kl_divergence(lk.softmax(x), x), lambda: lk.softmax_jvp(x, x),
    ]
    for flag in ("jax_debug_infs", "jax_debug_nans"):
        jax.config.update(flag, True)
        try:
            for call in calls:
                call()
        finally:
            jax.config.update(flag, False)


def _long_rows(k: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return 1.0 + 1e-13 * rng.normal(size=k)  # near-ties: every term of the sum is about 1


@pytest.mark.parametrize(("backend", "path"), [("numpy", "kernel"), ("numpy", "generic"),
                                                ("torch", "kernel"), ("torch", "generic"),
                                                ("jax", "generic")])
def test_long_rows_meet_the_accuracy_bound(backend, path):
    """K = 10⁵ near-tie rows, along the last axis at T = 3 and along axis 0: one running sum of
    10⁵ terms of about 1 drifts beyond DESIGN §7 (7× on the kernel's rows, 244× on its strided
    layout, 3× on NumPy's strided sums)."""
    from conftest import _module
    from logitkit._kernels import fast_path

    xp = _module(backend)
    x = _long_rows(100_000)
    cases = [(x / 3.0, np.stack([x, x[::-1]]), {"temperature": 3.0}, lambda a: a[0]),
             (x, np.stack([x, x[::-1]], axis=1), {"axis": 0}, lambda a: a[..., 0])]
    with fast_path(path == "kernel"):
        for z, arr, opts, first in cases:
            exact = reference.exact_row(z)
            a = asarray(xp, arr)
            lse_opts = {k: v for k, v in opts.items() if k == "axis"}
            lse_in = a if "temperature" not in opts else a / 3.0
            got = {"softmax": first(to_numpy(softmax(a, **opts))),
                   "log_softmax": first(to_numpy(log_softmax(a, **opts))),
                   "logsumexp": first(to_numpy(logsumexp(lse_in, **lse_opts)))}
            ratios = reference.error_bound_ratios(z, exact, got, "float64")
            assert max(ratios.values()) <= 1.0, (opts, ratios)
