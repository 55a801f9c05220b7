"""The one cross-entropy (``logitkit._ce_rows``) on every path: the fused kernel, the generic rows,
the torch adapter and the JAX adapter give the same losses and gradients, extreme values included.

The regression tests are named after what broke: each failed before the cross-entropy's rules
lived in one module.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from conftest import assert_close
from logitkit import _kernels
from logitkit.losses import cross_entropy, cross_entropy_with_grad

F32, F64 = np.float32, np.float64


# --------------------------------------------------------------------------------------------
# the paths
# --------------------------------------------------------------------------------------------


def numpy_kernel(x, t, **opts):
    return cross_entropy_with_grad(x, t, **opts)


def numpy_generic(x, t, **opts):
    with _kernels.fast_path(False):
        return cross_entropy_with_grad(x, t, **opts)


def numpy_strided(x, t, **opts):
    """The generic rows of a Fortran-order array (the answer must not depend on the layout)."""
    loss, g = numpy_generic(np.asfortranarray(x), t, **opts)
    return loss, np.ascontiguousarray(g)


def torch_adapter(x, t, **opts):
    import torch

    xt = torch.tensor(x, requires_grad=True)
    kw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in opts.items()}
    loss = cross_entropy(xt, torch.tensor(t), **kw)
    seed = torch.ones_like(loss)
    (g,) = torch.autograd.grad(loss, xt, seed)
    return loss.detach().numpy(), g.numpy()


def torch_no_grad(x, t, **opts):
    import torch

    kw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in opts.items()}
    loss, g = cross_entropy_with_grad(torch.tensor(x), torch.tensor(t), **kw)
    return loss.numpy(), g.numpy()


def jax_adapter(x, t, **opts):
    import jax
    import jax.numpy as jnp

    kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in opts.items()}
    weight = kw.pop("weight", None)

    def f(a):
        loss = cross_entropy(a, jnp.asarray(t), weight=weight, **kw)
        return jnp.sum(loss), loss

    (_, loss), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(x))
    return np.asarray(loss), np.asarray(g)


PATHS = {"numpy_kernel": numpy_kernel, "numpy_generic": numpy_generic,
         "numpy_strided": numpy_strided, "torch_adapter": torch_adapter,
         "torch_no_grad": torch_no_grad, "jax_adapter": jax_adapter}
PATH_IDS = list(PATHS)


def run(path, x, t, **opts):
    with np.errstate(all="ignore"):
        loss, g = PATHS[path](x, t, **opts)
    return np.asarray(loss, dtype=np.float64), np.asarray(g, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# regressions: each path disagreed with the others, or all of them with the exact answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATH_IDS)
def test_mean_over_zero_total_weight_has_zero_gradient(path):
    # weight[target] = 0 on the only row: the weighted mean has nothing to divide by and is 0, so
    # its gradient is 0 too (it was −0.049/0.049 on the generic path, [0, 0] on the kernel).
    x = np.array([[-3.0, 1.0]])
    w = np.array([1.0, 0.0])
    for opts in ({"label_smoothing": 0.1}, {"z_loss": 0.1}):
        loss, g = run(path, x, np.array([1]), weight=w, **opts)
        assert float(loss) == 0.0
        assert_close(g, np.zeros((1, 2)), atol=0.0)


@pytest.mark.parametrize("path", PATH_IDS)
def test_mean_over_zero_total_weight_is_zero_where_a_row_overflows(path):
    # Found by the long differential run: the z-loss of the row [0, 1e308] at T = 1e-46 is +inf,
    # and the weighted mean has nothing to divide by.  The mean over nothing is 0 with a zero
    # gradient on every path (NumPy gave a NaN loss, every path a NaN gradient: 0·inf).
    x = np.array([[0.0, 0.0], [0.0, 1e308], [0.0, 0.0]])
    loss, g = run(path, x, np.array([0, 0, 0]), weight=np.array([0.0, 0.0]), z_loss=1.0,
                  temperature=1e-46)
    assert float(loss) == 0.0
    assert_close(g, np.zeros((3, 2)), atol=0.0)
    with np.errstate(all="raise"):  # and without a floating-point warning on the way
        cross_entropy_with_grad(x, np.array([0, 0, 0]), weight=np.array([0.0, 0.0]),
                                z_loss=1.0, temperature=1e-46)


@pytest.mark.parametrize("path", PATH_IDS)
def test_temperature_divides_the_shifted_logits(path):
    # (x − max)/T, never x/T − max/T: 3e38/0.5 overflows float32, and 1.0000002/1e-10 rounds to a
    # multiple of 1024 where the difference is 2384.19.
    x = np.array([[3e38, 2.9e38]], dtype=F32)
    loss, g = run(path, x, np.array([1]), temperature=0.5)
    assert float(loss) == pytest.approx(2e37, rel=1e-6)
    assert_close(g, np.array([[2.0, -2.0]]), rtol=1e-6)
    x = np.array([[1.0, 1.0000002]], dtype=F32)
    loss, g = run(path, x, np.array([0]), temperature=1e-10)
    assert float(loss) == pytest.approx(float(np.float32(1.0000002) - np.float32(1.0)) / 1e-10,
                                        rel=1e-6)
    assert_close(g, np.array([[-1e10, 1e10]]), rtol=1e-6)


@pytest.mark.parametrize("path", PATH_IDS)
def test_huge_logsumexp_leaves_the_loss_finite(path):
    # |lse| > 1.34e154: z_loss · lse² was formed as 0 · inf = NaN even with z_loss = 0.
    loss, g = run(path, np.array([[1e200, 0.0]]), np.array([0]))
    assert float(loss) == 0.0
    assert_close(g, np.zeros((1, 2)), atol=0.0)


@pytest.mark.parametrize("path", PATH_IDS)
def test_smoothing_term_beyond_the_float_range_is_weighted_before_it_overflows(path):
    # (x − m)/T = −6e38 overflows float32, but the smoothing weight 1/3 (ε = 1) or 1/6 (ε = 0.5)
    # brings the loss back to 2e38 or 1e38, which float32 holds (found by the long differential
    # run; JAX got it, the other paths gave inf).
    x = np.array([[-3e38, 1.2e-38, 1.2e-38]], dtype=F32)
    for eps, exact in ((1.0, 2e38), (0.5, 1e38)):
        loss, _ = run(path, x, np.array([1]), label_smoothing=eps, temperature=0.5)
        assert float(loss) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("path", PATH_IDS)
def test_z_loss_gradient_where_the_coefficient_overflows(path):
    # coef = 1 + 2·c·lse overflows: inf on the class of probability 1, and 0 (not inf·0 = NaN)
    # where the probability is 0.
    loss, g = run(path, np.array([[1e308, 0.0]]), np.array([0]), z_loss=1.0)
    assert float(loss) == math.inf
    assert g[0, 0] == math.inf and g[0, 1] == 0.0


@pytest.mark.parametrize("path", PATH_IDS)
def test_z_loss_gradient_factor_beyond_the_dtype_where_the_coefficient_fits(path):
    # Found by the long differential run: float32 [3e38, 0] at T = 1e-10, c_z = 1e-4.  The
    # coefficient 1 + 2c·lse = 6e44 fits float64 (where the kernel forms it) but not float32,
    # nor does its product with 1/T: the kernel rounded it to inf and gave inf·0 = NaN on the
    # class of probability 0, whose exact gradient is 0 (the generic path gave 0).  With label
    # smoothing (the kernel's general path) and in place (out = x) too.
    x = np.array([[3e38, 0.0]], dtype=F32)
    for opts in ({}, {"label_smoothing": 0.1}):
        loss, g = run(path, x, np.array([0]), z_loss=1e-4, temperature=1e-10, **opts)
        assert float(loss) == math.inf
        assert g[0, 0] == math.inf and not np.isnan(g).any(), g
        if not opts:
            assert g[0, 1] == 0.0
    if path == "numpy_kernel":
        buf = x.copy()
        cross_entropy_with_grad(buf, np.array([0]), z_loss=1e-4, temperature=1e-10, out=buf)
        assert buf[0, 0] == math.inf and buf[0, 1] == 0.0


@pytest.mark.parametrize("path", PATH_IDS)
def test_gradient_keeps_its_digits_at_large_logits(path):
    # p = exp(q − log s) with q = z − max: 1e4 + N(0, 1) in float32 lost 6e-5 through z − lse.
    rng = np.random.default_rng(3)
    x = (1e4 + rng.standard_normal((4, 50))).astype(F32)
    t = rng.integers(0, 50, 4)
    z = x.astype(F64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), t] -= 1.0
    _, g = run(path, x, t)
    assert np.abs(g - p / 4).max() < 5e-8


def test_jit_out_of_range_label_has_a_nan_gradient():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda z: cross_entropy(z, jnp.array([5, 0]), reduction="sum"))
    x = jnp.array([[1.0, 2.0], [0.0, 1.0]])
    assert math.isnan(float(f(x)))
    g = np.asarray(jax.grad(f)(x))
    assert np.isnan(g[0]).all()  # not the gradient of label 0
    assert np.isfinite(g[1]).all()


@pytest.mark.parametrize("path", ["numpy_kernel", "numpy_generic", "torch_no_grad"])
def test_tuple_class_axes_count_in_the_order_given(path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 4, 5))
    y = rng.integers(0, 20, 2)
    flat = np.ascontiguousarray(z.transpose(0, 2, 1).reshape(2, 20))
    loss, g = run(path, z, y, axis=(2, 1), reduction="none")
    ref_loss, ref_g = run(path, flat, y, reduction="none")
    assert_close(loss, ref_loss, rtol=1e-13)
    assert_close(g, ref_g.reshape(2, 5, 4).transpose(0, 2, 1), rtol=1e-13)


# --------------------------------------------------------------------------------------------
# every path agrees: hypothesis, with the extreme values of the float range
# --------------------------------------------------------------------------------------------

# Normal numbers only: XLA on CPU flushes subnormal inputs to zero.
EXTREMES = {F32: [3e38, -3e38, 1.2e-38, -1e-30], F64: [1e308, -1e308, 2.3e-308, -1e300]}
TEMPERATURES = [1e-46, 1e-10, 0.5, 1.0, 3.0, 1e38, 1e300]


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([F32, F64]))
    n = draw(st.integers(1, 4))
    k = draw(st.integers(1, 5))
    values = st.one_of(st.floats(-30, 30), st.sampled_from([0.0, *EXTREMES[dtype]]))
    x = draw(hnp.arrays(np.float64, (n, k), elements=values)).astype(dtype)
    # A float64 draw such as 1e-45 is subnormal once in float32, and XLA flushes it to 0 (at
    # T = 1e-46, [1.4e-45, 0] becomes [0, 0]: loss ln 2 instead of 8.2e-7): keep inputs normal.
    x[np.abs(x) < np.finfo(dtype).smallest_normal] = 0
    t = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    opts = {"reduction": draw(st.sampled_from(["mean", "sum", "none"])),
            "temperature": draw(st.sampled_from(TEMPERATURES))}
    if draw(st.booleans()):
        opts["weight"] = draw(hnp.arrays(np.float64, (k,),
                                         elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
    if draw(st.booleans()):
        ignored = draw(hnp.arrays(np.bool_, (n,)))  # all rows ignored, sometimes
        t = np.where(ignored, -100, t)
        opts["ignore_index"] = -100
    if draw(st.booleans()):
        # Masked classes, the label's among them sometimes (+inf there), whole rows sometimes.
        opts["where"] = draw(hnp.arrays(np.bool_, (n, k)))
    opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    opts["z_loss"] = draw(st.sampled_from([0.0, 0.0, 1e-4, 1.0]))
    if draw(st.booleans()) and opts["temperature"] >= 0.5:
        # Below that a temperature magnifies the ulp by which two libraries' tanh may differ
        # into any loss at all: the paths then answer different, equally rounded, problems.
        opts["softcap"] = draw(st.sampled_from([0.5, 30.0]))
    return x, t, opts


def assert_paths_agree(results, dtype, opts):
    """Equal NaN and inf patterns; finite values within ``rtol`` of the reference, absolutely
    within ``rtol`` of the gradient's own scale (``(p − y)/T`` per row, times the reduction's
    factor: an entry that cancels to 0 on one path may be a rounding error on another) or a
    subnormal number (XLA flushes those to 0)."""
    rtol = 2e-5 if dtype == F32 else 1e-11
    (ref_name, (ref_loss, ref_g)), *others = results.items()
    n = ref_g.shape[0]
    terms = (1.0 / opts["temperature"]) / (n if opts["reduction"] == "mean" else 1)
    largest = np.where(np.isfinite(ref_g), np.abs(ref_g), 0.0).max(initial=0.0)
    atol = rtol * min(max(terms, largest), float(np.finfo(dtype).max))
    atol = max(atol, float(np.finfo(dtype).smallest_normal))  # XLA flushes subnormals to 0
    # DESIGN §7 bounds log_softmax's error absolutely, 16u(1 + d + ln K) per row: a loss near 0
    # (float32 [0, −15] at T = 0.5 gives e^{−30}) may differ relatively by more than rtol between
    # a path that forms log1p(s − 1) and one that forms log s in float64 (both within the bound).
    u = float(np.finfo(dtype).eps) / 2
    w = opts.get("weight")
    w_max = 1.0 if w is None else max(1.0, float(np.max(w)))
    rows = n if opts["reduction"] == "sum" else 1
    loss_atol = 16 * u * (1 + math.log(max(ref_g.shape[1], 1))) * w_max * rows
    for name, (loss, g) in others:
        msg = f"{name} vs {ref_name}"
        assert_close(loss, ref_loss, rtol=rtol, atol=loss_atol, err_msg=f"loss: {msg}")
        assert_close(g, ref_g, rtol=rtol, atol=atol, err_msg=f"gradient: {msg}")


def check_every_path(problem):
    x, t, opts = problem
    results = {path: run(path, x, t, **opts) for path in PATH_IDS}
    assert_paths_agree(results, x.dtype.type, opts)


@given(problems())
def test_every_path_gives_the_same_loss_and_gradient(problem):
    check_every_path(problem)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(problems())
def test_every_path_agrees_long_run(problem):
    """The differential test above, long (``-m slow``; 3000 examples whatever the profile)."""
    check_every_path(problem)
