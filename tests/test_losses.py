"""Cross-entropy on every backend: closed forms, options, edge cases, errors, the kernel contract."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit
from conftest import asarray, assert_close, grad, is_type_of, maybe_jit, to_numpy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit.losses import cross_entropy, cross_entropy_with_grad, margin_cross_entropy

RNG = np.random.default_rng(20261123)


@pytest.fixture(autouse=True)
def _generic_path(monkeypatch):
    """These tests pin the generic path; the fused kernel is compared with it in its own tests."""
    import logitkit._kernels as kernels

    monkeypatch.setattr(kernels, "cross_entropy", lambda problem: None)


def _wg(xp, *arrays, **options):
    """``cross_entropy_with_grad`` (jitted on JAX: one compilation instead of op-by-op)."""
    return maybe_jit(lambda *a: cross_entropy_with_grad(*a, **options), xp)(*arrays)


def _ce(xp, *arrays, **options):
    return maybe_jit(lambda *a: cross_entropy(*a, **options), xp)(*arrays)


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _ce_rows(x, t):
    z = x - x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return lse - np.take_along_axis(z, t[:, None], axis=-1)[:, 0]


def _onehot(t, k):
    return np.eye(k)[t]


def test_top_level_names_are_the_losses():
    for name in ["cross_entropy", "cross_entropy_with_grad", "kl_divergence", "distillation_loss",
                 "margin_cross_entropy", "info_nce", "ntxent", "clip_loss"]:
        assert getattr(logitkit, name) is getattr(logitkit.losses, name)


def test_integer_targets_value_and_type(xp):
    x = RNG.normal(size=(6, 5))
    t = RNG.integers(0, 5, 6)
    f = maybe_jit(lambda a, b: cross_entropy(a, b, reduction="none"), xp)
    out = f(asarray(xp, x), asarray(xp, t))
    assert is_type_of(out, xp)
    assert_close(out, _ce_rows(x, t), rtol=1e-13)
    total = _ce(xp, asarray(xp, x), asarray(xp, t), reduction="sum")
    assert_close(total, _ce_rows(x, t).sum(), rtol=1e-13)


def test_gradient_is_p_minus_y(xp):
    x = RNG.normal(size=(4, 7))
    t = RNG.integers(0, 7, 4)
    loss, g = _wg(xp, asarray(xp, x), asarray(xp, t))
    assert is_type_of(g, xp)
    assert_close(loss, _ce_rows(x, t).mean(), rtol=1e-13)
    assert_close(g, (_softmax(x) - _onehot(t, 7)) / 4, rtol=1e-12, atol=1e-16)


def test_probability_targets_use_zero_log_zero(xp):
    x = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]])
    q = np.array([[0.25, 0.0, 0.75], [1.0, 0.0, 0.0]])
    loss, g = _wg(xp, asarray(xp, x), asarray(xp, q), reduction="none")
    logp0 = np.array([0.0, 1.0]) - np.log1p(np.exp(-1.0)) - 1.0
    logp1 = np.array([2.0, 0.5]) - np.logaddexp(2.0, 0.5)
    assert_close(loss, [-(0.25 * logp0[0] + 0.75 * logp0[1]), -logp1[0]], rtol=1e-13)
    p = np.array([[math.exp(logp0[0]), 0.0, math.exp(logp0[1])],
                  [math.exp(logp1[0]), math.exp(logp1[1]), 0.0]])
    assert_close(g, p - q, rtol=1e-12, atol=1e-17)
    assert np.isfinite(to_numpy(g)).all()


def test_ignore_index_and_fully_masked_rows_leave_the_mean(xp):
    x = RNG.normal(size=(5, 4))
    t = np.array([1, -1, 3, 0, 2])
    where = np.ones((5, 4), dtype=bool)
    where[3] = False
    loss, g = _wg(xp, asarray(xp, x), asarray(xp, t), ignore_index=-1,
                                      where=asarray(xp, where))
    kept = [0, 2, 4]
    assert_close(loss, _ce_rows(x[kept], t[kept]).mean(), rtol=1e-13)
    g = to_numpy(g)
    assert (g[[1, 3]] == 0).all()
    assert_close(g[kept], (_softmax(x[kept]) - _onehot(t[kept], 4)) / 3, rtol=1e-12, atol=1e-16)
    rows = _ce(xp, asarray(xp, x), asarray(xp, t), ignore_index=-1,
                         where=asarray(xp, where), reduction="none")
    assert (to_numpy(rows)[[1, 3]] == 0).all()


def test_mean_over_no_counted_row_is_zero(xp):
    x = asarray(xp, RNG.normal(size=(2, 3)))
    loss, g = _wg(xp, x, asarray(xp, np.array([-100, -100])), ignore_index=-100)
    assert float(to_numpy(loss)) == 0.0
    assert (to_numpy(g) == 0).all()


def test_label_smoothing_is_uniform_over_unmasked_classes(xp):
    x = RNG.normal(size=(3, 5))
    t = np.array([0, 4, 2])
    where = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 1, 1, 0]], dtype=bool)
    eps = 0.2
    loss, g = _wg(xp, asarray(xp, x), asarray(xp, t), label_smoothing=eps,
                                      where=asarray(xp, where), reduction="none")
    kv = where.sum(axis=1, keepdims=True)
    y = (1 - eps) * _onehot(t, 5) + eps * where / kv
    z = np.where(where, x, -np.inf)
    logp = z - np.log(np.exp(np.where(where, x, -np.inf)).sum(axis=1, keepdims=True))
    expected_loss = -np.where(y > 0, y * np.where(where, logp, 0), 0).sum(axis=1)
    assert_close(loss, expected_loss, rtol=1e-13)
    p = np.where(where, np.exp(logp), 0)
    assert_close(g, p - y, rtol=1e-12, atol=1e-16)


def test_z_loss_and_logit_l2_closed_forms(xp):
    x = RNG.normal(size=(3, 4)) * 3
    t = np.array([3, 0, 1])
    c, lam = 1e-2, 0.3
    loss, g = _wg(xp, asarray(xp, x), asarray(xp, t), z_loss=c, logit_l2=lam,
                                      reduction="sum")
    lse = np.log(np.exp(x).sum(axis=1))
    expected = _ce_rows(x, t) + c * lse**2 + 0.5 * lam * (x**2).sum(axis=1)
    assert_close(loss, expected.sum(), rtol=1e-13)
    p = _softmax(x)
    assert_close(g, p - _onehot(t, 4) + 2 * c * lse[:, None] * p + lam * x, rtol=1e-12)


def test_temperature_softcap_and_weight_gradient(xp):
    x = RNG.normal(size=(4, 6)) * 4
    t = np.array([5, 0, 2, 2])
    w = RNG.uniform(0.2, 2.0, 6)
    T, cap = 1.7, 5.0
    loss, g = _wg(xp, asarray(xp, x), asarray(xp, t), temperature=T, softcap=cap,
                                      weight=asarray(xp, w))
    z = cap * np.tanh(x / cap) / T
    wt = w[t]
    assert_close(loss, (wt * _ce_rows(z, t)).sum() / wt.sum(), rtol=1e-13)
    gz = wt[:, None] * (_softmax(z) - _onehot(t, 6)) / wt.sum()
    assert_close(g, gz / T * (1 - np.tanh(x / cap) ** 2), rtol=1e-12, atol=1e-17)


def test_per_row_temperature(xp):
    x = RNG.normal(size=(3, 4))
    t = np.array([0, 1, 2])
    temp = np.array([0.5, 1.0, 4.0])
    out = _ce(xp, asarray(xp, x), asarray(xp, t), temperature=asarray(xp, temp),
                        reduction="none")
    assert_close(out, _ce_rows(x / temp[:, None], t), rtol=1e-13)


def test_class_axis_anywhere(xp):
    x = RNG.normal(size=(2, 5, 3))  # (batch, K, positions) as in torch's spatial loss
    t = RNG.integers(0, 5, (2, 3))
    out = _ce(xp, asarray(xp, x), asarray(xp, t), axis=1, reduction="none")
    ref = _ce_rows(np.moveaxis(x, 1, -1).reshape(-1, 5), t.reshape(-1)).reshape(2, 3)
    assert_close(out, ref, rtol=1e-13)
    _, g = _wg(xp, asarray(xp, x), asarray(xp, t), axis=1, reduction="sum")
    gref = _softmax(np.moveaxis(x, 1, -1)) - np.eye(5)[t]
    assert_close(g, np.moveaxis(gref, -1, 1), rtol=1e-12, atol=1e-16)


@mpmath.workdps(50)
def test_confident_prediction_loss_is_exact():
    x = np.array([[40.0, 0.0, -3.0], [12.0, 11.0, -50.0]])
    t = np.array([0, 0])
    out = cross_entropy(x, t, reduction="none")
    for row, (xi, ti) in enumerate(zip(x, t, strict=True)):
        s = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in xi)) - mpmath.mpf(xi[ti])
        assert abs(out[row] - float(s)) <= 4 * np.finfo(float).eps * float(s)


def test_special_rows():
    x = np.array([[np.inf, 0.0, np.inf], [np.inf, 0.0, 1.0], [-np.inf, -np.inf, -np.inf],
                  [np.nan, 0.0, 0.0]])
    loss, g = cross_entropy_with_grad(x, np.array([0, 1, 0, 1]), reduction="none")
    assert loss[0] == pytest.approx(math.log(2))
    assert loss[1] == np.inf and loss[2] == np.inf and np.isnan(loss[3])
    assert_close(g[0], [-0.5, 0.0, 0.5])
    assert np.isnan(g[3]).all()


def test_a_target_on_a_masked_class_gives_inf(xp):
    """Probability 0 there, as for a −inf logit (DESIGN: ``−log 0 = inf``), with integer labels,
    label smoothing and class weights alike."""
    x = asarray(xp, np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]))
    t = asarray(xp, np.array([0, 0, 2]))
    where = asarray(xp, np.array([[False, True, True], [False, True, True], [True] * 3]))
    for options in ({}, {"label_smoothing": 0.1}, {"weight": asarray(xp, np.ones(3))}):
        loss = to_numpy(_ce(xp, x, t, where=where, reduction="none", **options))
        assert loss[0] == np.inf and loss[1] == np.inf and np.isfinite(loss[2]), (options, loss)


def test_adapters_agree_on_special_rows(ad_xp):
    x = np.array([[np.inf, 0.0, np.inf], [1.0, 0.0, -np.inf], [-np.inf, -np.inf, -np.inf]])
    t = np.array([0, 1, 0])
    where = np.array([[True] * 3, [True] * 3, [False] * 3])
    _, ref_g = cross_entropy_with_grad(x, t, where=where, label_smoothing=0.1)
    g = grad(lambda v: cross_entropy(v, asarray(ad_xp, t), where=asarray(ad_xp, where),
                                     label_smoothing=0.1), asarray(ad_xp, x), ad_xp)
    assert_close(g, ref_g, rtol=1e-12, atol=1e-16)
    assert np.isfinite(ref_g).all() and (ref_g[2] == 0).all()


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax.numpy"])  # no float16 in strict
def test_low_precision_accumulates_in_float32(backend):
    import importlib

    xp = importlib.import_module(backend)
    x = RNG.normal(size=(3, 8))
    t = np.array([1, 2, 3])
    out = _ce(xp, asarray(xp, x, "float16"), asarray(xp, t), reduction="none")
    assert out.dtype == xp.float16
    assert_close(out, _ce_rows(x.astype(np.float16).astype(np.float64), t), rtol=2e-3)
    _, g = _wg(xp, asarray(xp, x, "float16"), asarray(xp, t))
    assert g.dtype == xp.float16


def test_integer_logits_promote_to_default_float():
    loss, g = cross_entropy_with_grad(np.array([[1, 2, 3]]), np.array([2]))
    assert loss.dtype == np.float64 and g.dtype == np.float64


# --------------------------------------------------------------------------------------------
# invariants
# --------------------------------------------------------------------------------------------


@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 6)),
                 elements=st.floats(-30, 30)),
    data=st.data(),
)
def test_invariants_gradient_shift_nonnegative(x, data):
    n, k = x.shape
    t = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    loss, g = cross_entropy_with_grad(x, t, reduction="sum")
    assert loss >= 0
    np.testing.assert_allclose(g, _softmax(x) - _onehot(t, k), atol=1e-12)
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-12)
    shifted = cross_entropy(x + 7.25, t, reduction="sum")
    np.testing.assert_allclose(shifted, loss, rtol=1e-10, atol=1e-12)


@given(m=st.floats(-700, 700), k=st.integers(1, 10**6))
def test_margin_formula(m, k):
    exact = mpmath.log1p((k - 1) * mpmath.exp(-mpmath.mpf(m)))
    got = float(margin_cross_entropy(m, k))
    assert got == pytest.approx(float(exact), rel=1e-13, abs=1e-300)


def test_margin_is_the_cross_entropy_of_a_margin_row(xp):
    m, k = 2.5, 7
    row = np.zeros((1, k))
    row[0, 0] = m
    ce = _ce(xp, asarray(xp, row), asarray(xp, np.array([0])))
    margin = maybe_jit(lambda a, b: margin_cross_entropy(a, b), xp)
    assert_close(margin(asarray(xp, np.array([m])), asarray(xp, np.array([k]))),
                 [float(to_numpy(ce))], rtol=1e-14)
    assert_close(margin(asarray(xp, np.array([0.0, np.inf, -np.inf, -5.0])),
                        asarray(xp, np.array([10, 10, 10, 1]))),
                 [math.log(10), 0.0, np.inf, 0.0])


def test_margin_rejects_fewer_than_one_class():
    with pytest.raises(LogitkitValueError, match="num_classes"):
        margin_cross_entropy(1.0, 0)


# --------------------------------------------------------------------------------------------
# out and the kernel contract
# --------------------------------------------------------------------------------------------


def test_out_receives_the_gradient_even_when_it_is_the_logits():
    x = RNG.normal(size=(4, 5))
    t = np.array([0, 1, 2, 3])
    loss_ref, g_ref = cross_entropy_with_grad(x, t, label_smoothing=0.1)
    buf = x.copy()
    loss, g = cross_entropy_with_grad(buf, t, label_smoothing=0.1, out=buf)
    assert g is buf
    assert loss == loss_ref
    np.testing.assert_array_equal(buf, g_ref)


@pytest.mark.parametrize(
    ("out", "err"),
    [(np.empty((4, 4)), LogitkitValueError), (np.empty((4, 5), np.float32), LogitkitValueError),
     ([0.0] * 20, LogitkitTypeError)],
)
def test_out_is_validated(out, err):
    with pytest.raises(err, match="`out`"):
        cross_entropy_with_grad(np.zeros((4, 5)), np.zeros(4, dtype=int), out=out)


def test_out_must_be_writeable():
    out = np.empty((2, 3))
    out.flags.writeable = False
    with pytest.raises(LogitkitValueError, match="writeable"):
        cross_entropy_with_grad(np.zeros((2, 3)), np.zeros(2, dtype=int), out=out)


def test_fast_kernel_is_asked_first_with_the_validated_problem(monkeypatch):
    import logitkit._kernels as kernels

    seen = []

    def fake(problem):
        seen.append(problem)
        return None

    monkeypatch.setattr(kernels, "cross_entropy", fake)
    x = np.zeros((2, 3))
    t = np.array([0, 1])
    out = np.empty((2, 3))
    _, g = cross_entropy_with_grad(x, t, label_smoothing=0.1, z_loss=1e-4, out=out)
    assert g is out
    (pb,) = seen
    assert pb.x.base is x or pb.x is x  # the logits' own rows, no copy
    assert pb.label_smoothing == 0.1 and pb.z_loss == 1e-4 and pb.temperature == 1.0
    assert pb.out.base is out and pb.grad_scale.shape == (2,)
    assert pb.counted.tolist() == [True, True]


def test_generic_path_when_the_kernel_declines(monkeypatch):
    import logitkit._kernels as kernels

    monkeypatch.setattr(kernels, "cross_entropy", lambda problem: None)
    loss, g = cross_entropy_with_grad(np.zeros((1, 2)), np.array([0]))
    assert loss == pytest.approx(math.log(2))
    np.testing.assert_allclose(g, [[-0.5, 0.5]])


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(target=np.array([0, 3])), LogitkitValueError, r"class indices in \[0, 3\)"),
        (dict(target=np.array([0, -1])), LogitkitValueError, "class indices"),
        (dict(label_smoothing=1.5), LogitkitValueError, "label_smoothing"),
        (dict(label_smoothing=-0.1), LogitkitValueError, "label_smoothing"),
        (dict(weight=np.array([1.0, -1.0, 1.0])), LogitkitValueError, "non-negative"),
        (dict(weight=np.array([1.0, 1.0])), LogitkitValueError, r"shape \(3,\)"),
        (dict(target=np.array([0, 1, 2])), LogitkitValueError, "shape"),
        (dict(target=np.full((2, 3), 0.5)), LogitkitValueError, "sum to 1"),
        (dict(target=np.array([[1.5, -0.5, 0.0]] * 2)), LogitkitValueError, "non-negative"),
        (dict(target=np.array([[1.0, 0, 0]] * 2), ignore_index=0), LogitkitValueError,
         "ignore_index"),
        (dict(target=np.ones((2, 3), dtype=bool)), LogitkitTypeError, "integer class indices"),
        (dict(reduction="batchmean"), LogitkitValueError, "reduction"),
        (dict(temperature=0.0), LogitkitValueError, "temperature"),
        (dict(temperature=-1.0), LogitkitValueError, "temperature"),
        (dict(z_loss=-1.0), LogitkitValueError, "z_loss"),
        (dict(logit_l2=float("nan")), LogitkitValueError, "logit_l2"),
        (dict(softcap=0.0), LogitkitValueError, "softcap"),
        (dict(ignore_index=1.5), LogitkitTypeError, "ignore_index"),
        (dict(where=np.ones((2, 4), dtype=bool)), LogitkitValueError, "where"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, err, match):
    kwargs = dict(kwargs)
    target = kwargs.pop("target", np.array([0, 1]))
    with pytest.raises(err, match=match):
        cross_entropy(np.zeros((2, 3)), target, **kwargs)
    with pytest.raises(err, match=match):
        cross_entropy_with_grad(np.zeros((2, 3)), target, **kwargs)


def test_bad_labels_on_torch_raise_too():
    import torch
    with pytest.raises(LogitkitValueError, match="class indices"):
        cross_entropy(torch.zeros(2, 3, requires_grad=True), torch.tensor([0, 5]))


def test_out_of_range_labels_under_jit_give_nan_not_a_wrong_loss():
    import jax
    jnp = jax.numpy
    f = jax.jit(lambda x, t: cross_entropy(x, t, reduction="none"))
    out = np.asarray(f(jnp.zeros((3, 4)), jnp.array([0, 4, -2])))
    assert out[0] == pytest.approx(math.log(4))
    assert np.isnan(out[1:]).all()


def test_out_of_range_label_on_an_eager_jax_array_is_an_error():
    # A JAX array outside jit holds its values: it is validated like NumPy, not treated as lazy.
    import jax.numpy as jnp

    with pytest.raises(LogitkitValueError, match=r"Expected `target` to be class indices"):
        cross_entropy(jnp.zeros((2, 3)), jnp.asarray([0, 5]))
