"""Options of softmax, log_softmax, logsumexp and entropy, on every backend, and differential
tests against the peers a user would otherwise pick (SciPy, PyTorch, JAX) for every option they
share.  Where a peer differs from DESIGN §2 the test name says so and ours is held to the table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special

import reference
from conftest import asarray, assert_close, is_type_of, maybe_jit, to_numpy
from logitkit import entropy, log_softmax, logsumexp, softmax

inf, nan = math.inf, math.nan


def run(xp, f, x, **kw):
    """``f(x, **kw)`` on backend ``xp``; on JAX under ``jax.jit`` with the array arguments traced
    (the way users call it there, and one compilation instead of one per operation)."""
    names = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    static = {k: v for k, v in kw.items() if k not in names}

    def call(a, *arrays):
        return f(a, **static, **dict(zip(names, arrays, strict=True)))

    return maybe_jit(call, xp)(asarray(xp, x), *(asarray(xp, kw[k]) for k in names))
RNG = np.random.default_rng(20260101)
X3 = RNG.normal(size=(3, 4, 5)) * 3.0


def _np_softmax(z, axis=-1):
    return scipy.special.softmax(z, axis=axis)


# ---------------------------------------------------------------------------------------------
# array type, shapes, axis
# ---------------------------------------------------------------------------------------------


def test_array_type_in_is_array_type_out(xp):
    # eager on purpose (jit is covered everywhere else)
    for f in [softmax, log_softmax, logsumexp, entropy]:
        out = f(asarray(xp, X3))
        assert is_type_of(out, xp)
        assert tuple(out.shape) == ((3, 4, 5) if f in (softmax, log_softmax) else (3, 4))


def test_list_input_gives_numpy():
    assert isinstance(softmax([1.0, 2.0]), np.ndarray)
    assert isinstance(logsumexp([[1.0, 2.0]]), np.ndarray)


def all4(x, **kw):
    """The four functions at once (one compilation on JAX)."""
    return softmax(x, **kw), log_softmax(x, **kw), logsumexp(x, **kw), entropy(x, **kw)


def test_axis_int_and_tuple_match_scipy(xp):
    for axis in [1, -1, -3, (0, 2), (2, 0), (0, 1, 2)]:
        msg = f"axis={axis}"
        p, logp, lse, h = run(xp, all4, X3, axis=axis)
        assert_close(p, scipy.special.softmax(X3, axis=axis), rtol=1e-14, err_msg=msg)
        assert_close(logp, scipy.special.log_softmax(X3, axis=axis), rtol=1e-13, atol=1e-15,
                     err_msg=msg)
        assert_close(lse, scipy.special.logsumexp(X3, axis=axis), rtol=1e-14, err_msg=msg)
        ref = scipy.special.softmax(X3, axis=axis)
        assert_close(h, -np.sum(ref * np.log(ref), axis=axis), rtol=1e-13, err_msg=msg)


def test_logsumexp_keepdims_matches_scipy(xp):
    for axis in [1, (0, 2)]:
        out = run(xp, logsumexp, X3, axis=axis, keepdims=True)
        assert_close(out, scipy.special.logsumexp(X3, axis=axis, keepdims=True), rtol=1e-14)


def test_zero_dimensional_axis_tuple_over_all_axes_gives_scalar(xp):
    out = run(xp, logsumexp, X3, axis=(0, 1, 2))
    assert tuple(out.shape) == ()
    assert_close(out, scipy.special.logsumexp(X3), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# differential: torch and jax
# ---------------------------------------------------------------------------------------------


def test_matches_torch_softmax_log_softmax_logsumexp():
    import torch

    for dtype, rtol in [(torch.float64, 1e-14), (torch.float32, 2e-6)]:
        t = torch.from_numpy(X3).to(dtype)
        for dim in (0, 1, 2):
            assert_close(softmax(t, axis=dim), torch.softmax(t, dim), rtol=rtol, atol=1e-30)
            assert_close(log_softmax(t, axis=dim), torch.log_softmax(t, dim), rtol=rtol,
                         atol=1e-6 if dtype == torch.float32 else 1e-15)
        for dim in (1, (0, 2)):
            for keep in (False, True):
                assert_close(logsumexp(t, axis=dim, keepdims=keep),
                             torch.logsumexp(t, dim, keepdim=keep), rtol=rtol)


def test_dtype_matches_torch_softmax_dtype_argument():
    import torch

    t = torch.from_numpy(X3).to(torch.float32)
    out = softmax(t, dtype=torch.float64)
    assert out.dtype == torch.float64
    assert_close(out, torch.softmax(t, -1, dtype=torch.float64), rtol=1e-14)


def test_fully_masked_row_is_zero_where_torch_masked_fill_gives_nan():
    import torch

    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([[True, False, True], [False, False, False]])
    theirs = torch.softmax(x.masked_fill(~w, -inf), -1)
    assert torch.isnan(theirs[1]).all()  # PyTorch's idiom: NaN on a fully masked row
    ours = softmax(x, where=w)
    assert_close(ours[0], theirs[0], rtol=1e-15)
    assert_close(ours[1], np.zeros(3))
    assert_close(log_softmax(x, where=w)[1], np.full(3, -inf))
    assert float(logsumexp(x, where=w)[1]) == -inf


def test_matches_jax_nn_with_where_under_jit():
    import jax
    import jax.numpy as jnp
    import jax.scipy.special as jss

    x = jnp.asarray(X3)
    w = jnp.asarray(RNG.uniform(size=X3.shape) < 0.6)
    w = w.at[0, 0].set(False)  # one fully masked row: jax.nn agrees with the table here
    for axis in (-1, 1):
        p, logp, lse, _ = run(jnp, all4, np.asarray(x), axis=axis, where=np.asarray(w))
        assert_close(p, jax.nn.softmax(x, axis=axis, where=w), rtol=1e-14)
        assert_close(logp, jax.nn.log_softmax(x, axis=axis, where=w), rtol=1e-13, atol=1e-15)
        assert_close(lse, jss.logsumexp(x, axis=axis, where=w), rtol=1e-14)


def test_logsumexp_b_and_return_sign_match_jax_scipy():
    import jax.numpy as jnp
    import jax.scipy.special as jss

    b = RNG.normal(size=X3.shape)
    ours = run(jnp, logsumexp, X3, axis=(0, 2), b=b, return_sign=True, keepdims=True)
    theirs = jss.logsumexp(jnp.asarray(X3), axis=(0, 2), b=jnp.asarray(b), return_sign=True,
                           keepdims=True)
    assert_close(ours[0], theirs[0], rtol=1e-12)
    assert_close(ours[1], theirs[1])


# ---------------------------------------------------------------------------------------------
# logsumexp: b, return_sign, keepdims against SciPy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "keepdims"), [(-1, False), (0, True), ((0, 2), False)])
def test_logsumexp_b_return_sign_keepdims_match_scipy(xp, axis, keepdims):
    b = RNG.normal(size=X3.shape)
    b[0, 0, :2] = 0.0
    lse, sign = maybe_jit(
        lambda a, bb: logsumexp(a, axis=axis, b=bb, keepdims=keepdims, return_sign=True), xp
    )(asarray(xp, X3), asarray(xp, b))
    ref_lse, ref_sign = scipy.special.logsumexp(X3, axis=axis, b=b, keepdims=keepdims,
                                                return_sign=True)
    assert_close(lse, ref_lse, rtol=1e-12, atol=1e-14)
    assert_close(sign, ref_sign)


def test_logsumexp_negative_sum_without_return_sign_is_nan_like_scipy(xp):
    x = np.array([[0.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, -2.0], [-1.0, 1.0]])
    out = run(xp, logsumexp, x, b=b)
    with np.errstate(invalid="ignore"):
        ref = scipy.special.logsumexp(x, axis=-1, b=b)
    assert np.isnan(to_numpy(out)[0]) and np.isnan(ref[0])
    assert_close(out, ref, rtol=1e-14)


def test_logsumexp_zero_weights_exclude_their_entries(xp):
    x = np.array([[inf, 1.0, 2.0], [nan, 0.0, 0.0]])
    b = np.array([[0.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    lse, sign = run(xp, logsumexp, x, b=b, return_sign=True)
    assert_close(lse, [np.log(np.e + np.e**2), np.log(3.0)], rtol=1e-15)
    assert_close(sign, [1.0, 1.0])


def test_logsumexp_exact_cancellation_gives_neg_inf_sign_zero(xp):
    lse, sign = run(xp, logsumexp, np.array([3.0, 3.0]), b=np.array([1.0, -1.0]),
                          return_sign=True)
    assert float(to_numpy(lse)) == -inf and float(to_numpy(sign)) == 0.0


def test_logsumexp_b_broadcasts(xp):
    b = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    out = run(xp, logsumexp, X3, b=b)
    assert_close(out, scipy.special.logsumexp(X3, axis=-1, b=b), rtol=1e-14)


def test_logsumexp_sign_without_b(xp):
    lse, sign = run(xp, logsumexp, np.array([[0.0, 1.0], [-inf, -inf], [nan, 0.0]]),
                          return_sign=True)
    assert_close(sign, [1.0, 0.0, nan])
    assert_close(lse, [np.log1p(np.e), -inf, nan], rtol=1e-15)


def test_logsumexp_with_b_and_where(xp):
    x = np.array([[1.0, nan, 2.0], [0.0, 5.0, 1.0]])
    w = np.array([[True, False, True], [False, False, False]])
    b = np.array([[2.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
    lse, sign = run(xp, logsumexp, x, b=b, where=w,
                          return_sign=True)
    assert_close(lse, [np.log(np.e**2 - 2 * np.e), -inf], rtol=1e-14)
    assert_close(sign, [-1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# temperature
# ---------------------------------------------------------------------------------------------


def test_scalar_temperature_is_division(xp):
    three = lambda a, **kw: (softmax(a, **kw), log_softmax(a, **kw), entropy(a, **kw))  # noqa: E731
    for t in [0.25, 1e-3, 1e5]:
        p, logp, h = run(xp, three, X3, temperature=t)
        assert_close(p, _np_softmax(X3 / t), rtol=1e-12, atol=1e-300)
        assert_close(logp, scipy.special.log_softmax(X3 / t, axis=-1), rtol=1e-12, atol=1e-12)
        ref = _np_softmax(X3 / t)
        ref_h = -np.sum(np.where(ref > 0, ref * np.log(np.where(ref > 0, ref, 1.0)), 0.0),
                        axis=-1)
        assert_close(h, ref_h, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shape", ["reduced", "keepdims"])
def test_per_row_temperature_array(xp, shape):
    t = RNG.uniform(0.2, 4.0, size=(3, 4))
    ta = t if shape == "reduced" else t[..., None]
    out = run(xp, softmax, X3, temperature=ta)
    assert_close(out, _np_softmax(X3 / t[..., None]), rtol=1e-13)


def test_per_row_temperature_over_tuple_axis(xp):
    t = np.array([0.5, 2.0, 1.0, 3.0])  # one per entry of axis 1, reducing over (0, 2)
    out = run(xp, softmax, X3, axis=(0, 2), temperature=t)
    assert_close(out, scipy.special.softmax(X3 / t[None, :, None], axis=(0, 2)), rtol=1e-13)


def test_zero_temperature_is_one_hot_with_ties_split(xp):
    x = np.array([[1.0, 3.0, 3.0, -2.0], [4.0, 1.0, 0.0, 3.9], [-inf, -inf, -inf, -inf]])
    out = maybe_jit(lambda a: softmax(a, temperature=0.0), xp)(asarray(xp, x))
    assert_close(out, [[0, 0.5, 0.5, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    lout = run(xp, log_softmax, x, temperature=0.0)
    assert_close(lout, [[-inf, -np.log(2), -np.log(2), -inf], [0, -inf, -inf, -inf],
                        [-inf] * 4], rtol=1e-15)
    assert_close(run(xp, entropy, x, temperature=0.0), [np.log(2), 0.0, 0.0], rtol=1e-15)


def test_zero_temperature_ignores_masked_max(xp):
    x = np.array([[1.0, 9.0, 3.0, 3.0]])
    w = np.array([[True, False, True, True]])
    out = run(xp, softmax, x, temperature=0.0, where=w)
    assert_close(out, [[0, 0, 0.5, 0.5]])


def test_infinite_temperature_is_uniform_over_unmasked(xp):
    x = np.array([[1.0, 300.0, -5.0, 2.0], [1.0, -inf, 2.0, 3.0]])
    w = np.array([[True, False, True, True], [True, True, True, True]])
    out = run(xp, softmax, x, temperature=inf, where=w)
    assert_close(out, [[1 / 3, 0, 1 / 3, 1 / 3], [1 / 3, 0, 1 / 3, 1 / 3]], rtol=1e-15)
    assert_close(run(xp, entropy, x, temperature=inf, where=w),
                 [np.log(3), np.log(3)], rtol=1e-15)


def test_per_row_temperature_mixes_zero_finite_and_infinite(xp):
    x = np.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    t = np.array([0.0, 2.0, inf])
    out = maybe_jit(lambda a, tt: softmax(a, temperature=tt), xp)(asarray(xp, x), asarray(xp, t))
    assert_close(out, [[0, 1, 0], _np_softmax(x[1] / 2.0), [1 / 3] * 3], rtol=1e-15)


def test_tiny_temperature_does_not_overflow_into_a_false_tie(xp):
    # [2e9, 3e9] / 1e-30 overflows float32 when divided before the max shift.
    x = np.array([2e9, 3e9, 2.5e9], dtype=np.float32)
    out = run(xp, softmax, x, temperature=1e-30)
    assert_close(out, [0.0, 1.0, 0.0])
    assert_close(run(xp, log_softmax, x, temperature=1e-30), [-inf, 0.0, -inf])


def test_tiny_temperature_on_a_row_with_pos_inf(xp):
    x = np.array([inf, 1e30, 3.0], dtype=np.float32)
    assert_close(run(xp, softmax, x, temperature=1e-20), [1.0, 0.0, 0.0])


def test_temperature_with_where_and_nan_masked(xp):
    x = np.array([[nan, 1.0, 2.0, inf]])
    w = np.array([[False, True, True, False]])
    out = run(xp, softmax, x, temperature=0.5, where=w)
    assert_close(out, [[0, *_np_softmax(np.array([2.0, 4.0]))[:], 0]], rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# where, softcap, sink
# ---------------------------------------------------------------------------------------------


def test_where_broadcasts_from_the_class_axis(xp):
    w = np.array([True, False, True, True, False])
    out = run(xp, softmax, X3, where=w)
    ref = np.where(w, _np_softmax(np.where(w, X3, -inf)), 0.0)
    assert_close(out, ref, rtol=1e-14)


def test_where_with_tuple_axis(xp):
    w = RNG.uniform(size=X3.shape) < 0.5
    w[:, 1, :] = False  # a fully masked (axis 0, 2) slice
    p, logp, lse, h = run(xp, all4, X3, axis=(0, 2), where=w)
    z = np.where(w, X3, -inf)
    live = w.any(axis=(0, 2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(live, scipy.special.softmax(np.where(live, z, 0.0), axis=(0, 2)), 0.0)
    ref = np.where(w, ref, 0.0)
    assert_close(p, ref, rtol=1e-14)
    assert_close(logp, np.where(ref > 0, np.log(np.where(ref > 0, ref, 1.0)), -inf), rtol=1e-13)
    assert_close(lse[1], -inf)
    assert_close(h[1], 0.0)


def test_softcap_is_tanh_before_temperature(xp):
    for cap in [0.5, 30.0]:
        z = cap * np.tanh(X3 / cap) / 0.7
        p, logp = run(xp, lambda a, **kw: (softmax(a, **kw), log_softmax(a, **kw)), X3,
                      softcap=cap, temperature=0.7)
        assert_close(p, _np_softmax(z), rtol=1e-13)
        assert_close(logp, scipy.special.log_softmax(z, axis=-1), rtol=1e-13, atol=1e-15)


def test_softcap_maps_infinities_to_the_cap(xp):
    out = run(xp, softmax, np.array([inf, -inf, 0.0]), softcap=2.0)
    e = np.exp([2.0, -2.0, 0.0])
    assert_close(out, e / e.sum(), rtol=1e-15)


def _with_sink(z, s):
    s = np.broadcast_to(np.asarray(s, dtype=np.float64)[..., None], (*z.shape[:-1], 1))
    return _np_softmax(np.concatenate([z, s], axis=-1))[..., :-1]


def test_sink_zero_is_softmax_off_by_one(xp):
    out = run(xp, softmax, X3, sink=0.0)
    assert_close(out, np.exp(X3) / (1.0 + np.exp(X3).sum(-1, keepdims=True)), rtol=1e-14)
    lse_ref = np.log1p(np.exp(X3).sum(-1, keepdims=True))
    assert_close(run(xp, log_softmax, X3, sink=0.0), X3 - lse_ref, rtol=1e-13, atol=1e-15)


def test_sink_max_includes_the_sink(xp):
    # A sink far above every logit must not overflow; one far below changes nothing.
    x = np.array([[1.0, 2.0], [1.0, 2.0], [-1000.0, -1001.0]])
    s = np.array([1000.0, -1000.0, 0.0])
    out = run(xp, softmax, x, sink=s)
    assert_close(out, [[0.0, 0.0], _np_softmax(x[1]), [0.0, 0.0]], rtol=1e-15, atol=1e-300)
    lout = to_numpy(run(xp, log_softmax, x, sink=s))
    assert_close(lout[0], [-999.0, -998.0], rtol=1e-15)
    assert_close(lout[2], [-1000.0, -1001.0], rtol=1e-15)


def test_per_row_sink_with_temperature_is_not_divided_by_it(xp):
    s = RNG.normal(size=(3, 4))
    t = np.array([1.0, 0.5, 4.0])[:, None]
    out = maybe_jit(lambda a, ss, tt: softmax(a, sink=ss, temperature=tt), xp)(
        asarray(xp, X3), asarray(xp, s), asarray(xp, t))
    assert_close(out, _with_sink(X3 / t[..., None], s), rtol=1e-13)
    assert_close(run(xp, softmax, X3, sink=s, temperature=0.5),
                 _with_sink(X3 / 0.5, s), rtol=1e-13)


def test_sink_with_where_and_fully_masked_row(xp):
    x = np.array([[1.0, nan], [3.0, 4.0]])
    w = np.array([[True, False], [False, False]])
    out = run(xp, softmax, x, where=w, sink=0.0)
    assert_close(out, [[np.e / (1 + np.e), 0.0], [0.0, 0.0]], rtol=1e-15)


def test_sink_zero_temperature_limit_follows_the_sign_of_the_max(xp):
    # lim_{T→0} softmax([x/T, s]): the max wins if positive, the sink wins if it is negative,
    # and at exactly 0 they share (e^0 against e^s).
    x = np.array([[1.0, 2.0], [-1.0, -2.0], [0.0, -1.0]])
    out = run(xp, softmax, x, temperature=0.0, sink=0.5)
    assert_close(out, [[0.0, 1.0], [0.0, 0.0], [1 / (1 + np.exp(0.5)), 0.0]], rtol=1e-15)
    near = run(xp, softmax, x, temperature=1e-6, sink=0.5)
    assert_close(near, out, rtol=1e-12, atol=1e-300)


def test_sink_infinite_temperature_limit(xp):
    out = run(xp, softmax, X3, temperature=inf, sink=1.0)
    assert_close(out, np.full(X3.shape, 1 / (5 + np.e)), rtol=1e-15)


def test_sink_on_empty_axis_gives_empty(xp):
    out = run(xp, softmax, np.zeros((2, 0)), sink=0.0)
    assert tuple(out.shape) == (2, 0)


# ---------------------------------------------------------------------------------------------
# dtype policy
# ---------------------------------------------------------------------------------------------


def test_dtype_sets_accumulation_and_output(xp):
    p, logp, lse = run(xp, lambda a, **kw: (softmax(a, **kw), log_softmax(a, **kw),
                                            logsumexp(a, **kw)), X3, dtype=xp.float32)
    assert p.dtype == logp.dtype == lse.dtype == xp.float32
    assert_close(p, _np_softmax(X3), rtol=1e-6)
    assert_close(lse, scipy.special.logsumexp(X3, axis=-1), rtol=1e-6)


def test_integer_and_bool_input_is_promoted_to_the_default_float(xp):
    default = xp.asarray(1.0).dtype
    outs = run(xp, all4, np.array([[1, 2, 3], [0, -4, 2]]))
    for f, out in zip([softmax, log_softmax, logsumexp, entropy], outs, strict=True):
        assert out.dtype == default
        tol = 1e-6 if "32" in str(default) else 1e-14
        ref = reference.table(f.__name__, np.array([[1.0, 2.0, 3.0], [0.0, -4.0, 2.0]]))
        assert_close(out, ref, rtol=tol, err_msg=f.__name__)
    for out in run(xp, all4, np.array([[True, False, True]])):
        assert out.dtype == default


# array_api_strict has no float16 (the standard does not define it), NumPy has no bfloat16.
LOW = {"numpy": ["float16"], "torch": ["float16", "bfloat16"], "jax": ["float16", "bfloat16"]}


def _low_precision_cases():
    return [(b, d) for b, ds in LOW.items() for d in ds]


def _module(name):
    if name == "numpy":
        return np
    if name == "torch":
        import torch

        return torch
    import jax.numpy as jnp

    return jnp


def _cast(mod, a, dname):
    if mod is np:
        return a.astype(dname)
    if mod.__name__ == "torch":
        return mod.from_numpy(a).to(getattr(mod, dname))
    return mod.asarray(a, dtype=getattr(mod, dname))


@pytest.mark.parametrize(("backend", "dname"), _low_precision_cases())
def test_low_precision_input_returns_its_dtype_accurately(backend, dname):
    mod = _module(backend)
    x = _cast(mod, X3.astype(np.float32), dname)
    x64 = f32(x).astype(np.float64)
    outs = maybe_jit(all4, mod)(x)
    for f, out in zip([softmax, log_softmax, logsumexp, entropy], outs, strict=True):
        assert out.dtype == x.dtype
        ref = reference.table(f.__name__, x64)
        # one rounding to the output dtype, no accumulation error beyond float32
        eps = 2.0**-8 if dname == "bfloat16" else 2.0**-11
        assert_close(f32(out), ref, rtol=eps, atol=eps, err_msg=f.__name__)


@pytest.mark.parametrize(("backend", "dname"), _low_precision_cases())
def test_float16_row_whose_naive_sum_overflows_accumulates_in_float32(backend, dname):
    k = 70_000  # sum of exp(x - max) = k > 65504, the float16 max
    with np.errstate(over="ignore"):
        naive = np.sum(np.exp(np.zeros(k, np.float16)), dtype=np.float16)
    assert np.isinf(naive)
    mod = _module(backend)
    x = _cast(mod, np.full((1, k), 3.0, np.float32), dname)
    p, _, lse, h = maybe_jit(all4, mod)(x)
    assert_close(f32(p), np.full((1, k), 1.0 / k), rtol=2.0**-7)
    assert_close(f32(lse), [3.0 + np.log(k)], rtol=2.0**-7)
    assert_close(f32(h), [np.log(k)], rtol=2.0**-7)


def f32(a):
    if type(a).__module__.startswith("torch"):
        return a.float().numpy()
    return np.asarray(a, dtype=np.float32)


def test_low_precision_with_explicit_float32_dtype():
    import torch

    x = torch.from_numpy(X3).to(torch.bfloat16)
    out = softmax(x, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, _np_softmax(x.float().double().numpy()), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# NumPy's namespace: the module itself on NumPy >= 2.1, array-api-compat's wrapper before
# ---------------------------------------------------------------------------------------------


def test_numpy_before_2_1_through_the_compat_wrapper_gives_the_same_numbers(monkeypatch):
    """NumPy 1.26-2.0 gets array-api-compat's wrapper (no ``astype``/``cumulative_sum`` in the
    module there); the bodies must not rely on anything only one of the two namespaces has."""
    from logitkit import _namespace
    from logitkit.losses import cross_entropy, cross_entropy_with_grad

    rng = np.random.default_rng(7)
    x = (rng.normal(size=(6, 5)) * 4.0).astype(np.float32)
    y = rng.integers(0, 5, size=6)
    x[0, 1] = -inf

    def results():
        return [softmax(x), log_softmax(x, temperature=0.5), logsumexp(x, axis=-1), entropy(x),
                cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-3, reduction="none"),
                *cross_entropy_with_grad(x, y, reduction="sum")]

    native = results()
    monkeypatch.setattr(_namespace, "_NATIVE_NUMPY", False)
    assert _namespace.namespace(x) is not np
    wrapped = results()
    for a, b in zip(native, wrapped, strict=True):
        assert type(b) is type(a) and b.dtype == a.dtype
        np.testing.assert_array_equal(b, a)
