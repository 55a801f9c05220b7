"""Bad input raises one clear error of the library's family, worded
"Expected `arg` to be ..., but got ...", on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import asarray
from logitkit import (
    LogitkitError,
    LogitkitTypeError,
    LogitkitValueError,
    cross_entropy_hvp,
    entropy,
    log_softmax,
    logsumexp,
    softmax,
    softmax_jacobian,
    softmax_jvp,
)

X = np.arange(12.0).reshape(3, 4)
SOFTMAX_LIKE = [softmax, log_softmax, entropy]


def test_error_family_subclasses_builtin_errors():
    assert issubclass(LogitkitValueError, ValueError)
    assert issubclass(LogitkitTypeError, TypeError)
    assert issubclass(LogitkitValueError, LogitkitError)
    assert issubclass(LogitkitTypeError, LogitkitError)


@pytest.mark.parametrize("f", SOFTMAX_LIKE)
@pytest.mark.parametrize(("t", "shown"), [(-1.0, "-1.0"), (math.nan, "nan"), (-1e-300, "-1e-300")])
def test_negative_or_nan_scalar_temperature(xp, f, t, shown):
    with pytest.raises(LogitkitValueError,
                       match=rf"^Expected `temperature` to be non-negative, but got {shown}$"):
        f(asarray(xp, X), temperature=t)


def test_negative_or_nan_temperature_array(xp):
    for bad in (np.array([1.0, -2.0, 1.0]), np.array([1.0, np.nan, 1.0])):
        with pytest.raises(LogitkitValueError,
                           match=r"^Expected `temperature` to be non-negative, but got (-2\.0|nan)$"):
            softmax(asarray(xp, X), temperature=asarray(xp, bad))


def test_bool_or_string_temperature_is_a_type_error(xp):
    for bad in (True, "hot"):
        with pytest.raises(LogitkitTypeError, match=r"^Expected `temperature` to be a real number"):
            softmax(asarray(xp, X), temperature=bad)


@pytest.mark.parametrize("f", [softmax, log_softmax, logsumexp, entropy])
def test_non_boolean_where(xp, f):
    w = asarray(xp, np.ones((3, 4)))
    with pytest.raises(LogitkitTypeError,
                       match=r"^Expected `where` to be a boolean array, but got dtype \S*float64$"):
        f(asarray(xp, X), where=w)


@pytest.mark.parametrize("f", [softmax, log_softmax, logsumexp, entropy])
def test_axis_out_of_range(xp, f):
    with pytest.raises(LogitkitValueError, match=r"^Expected `axis` to be in \[-2, 2\) for an array "
                       r"of 2 dimensions, but got 2$"):
        f(asarray(xp, X), axis=2)
    with pytest.raises(LogitkitValueError, match=r"but got \(0, -3\)$"):
        f(asarray(xp, X), axis=(0, -3))


def test_axis_repeated(xp):
    for axis in [(1, 1), (0, -2)]:
        with pytest.raises(LogitkitValueError,
                           match=r"^Expected `axis` to be a tuple of distinct axes, but got"):
            softmax(asarray(xp, X), axis=axis)


@pytest.mark.parametrize("axis", [1.0, "0", None, True, (0, 1.5), [0, "1"]])
def test_axis_not_int(xp, axis):
    with pytest.raises(LogitkitTypeError,
                       match=r"^Expected `axis` to be an int or a tuple of ints, but got"):
        logsumexp(asarray(xp, X), axis=axis)


@pytest.mark.parametrize("cap", [0.0, -1.0, math.nan, math.inf])
def test_softcap_must_be_positive_and_finite(xp, cap):
    with pytest.raises(LogitkitValueError, match=r"^Expected `softcap` to be in \(0\.0, inf\), but got"):
        softmax(asarray(xp, X), softcap=cap)


def test_softcap_not_a_number(xp):
    with pytest.raises(LogitkitTypeError, match=r"^Expected `softcap` to be a real number, but got '1'$"):
        softmax(asarray(xp, X), softcap="1")


def test_where_that_does_not_broadcast(xp):
    with pytest.raises(LogitkitValueError, match=r"^Expected `where` to be broadcastable to shape "
                       r"\(3, 4\), but got shape \(3, 3\)$"):
        softmax(asarray(xp, X), where=asarray(xp, np.ones((3, 3), bool)))
    # broadcasting must not grow x
    with pytest.raises(LogitkitValueError, match=r"but got shape \(2, 3, 4\)$"):
        logsumexp(asarray(xp, X), where=asarray(xp, np.ones((2, 3, 4), bool)))


def test_temperature_that_does_not_broadcast(xp):
    with pytest.raises(LogitkitValueError, match=r"^Expected `temperature` to be broadcastable to "
                       r"shape \(3,\), but got shape \(4,\)$"):
        softmax(asarray(xp, X), temperature=asarray(xp, np.ones(4)))


def test_b_that_does_not_broadcast(xp):
    with pytest.raises(LogitkitValueError, match=r"^Expected `b` to be broadcastable to shape "
                       r"\(3, 4\), but got shape \(3,\)$"):
        logsumexp(asarray(xp, X), b=asarray(xp, np.ones(3)))


def test_sink_that_does_not_broadcast(xp):
    with pytest.raises(LogitkitValueError, match=r"^Expected `sink` to be broadcastable to shape "
                       r"\(3,\), but got shape \(2,\)$"):
        softmax(asarray(xp, X), sink=asarray(xp, np.zeros(2)))


def test_bool_sink_is_a_type_error():
    with pytest.raises(LogitkitTypeError, match=r"^Expected `sink` to be a real number or array"):
        softmax(X, sink=True)


def test_v_that_does_not_broadcast(xp):
    with pytest.raises(LogitkitValueError, match=r"^Expected `v` to be broadcastable to shape"):
        softmax_jvp(asarray(xp, X), asarray(xp, np.ones(3)))
    with pytest.raises(LogitkitValueError, match=r"^Expected `v` to be broadcastable to shape"):
        cross_entropy_hvp(asarray(xp, X), asarray(xp, np.ones((2, 4))))


@pytest.mark.parametrize(
    ("x", "got"),
    [("abc", "'abc'"), (np.array(["a", "b"]), "an array of dtype <U1"),
     (np.array([1.0, None], dtype=object), "an array of dtype object"),
     ([1.0, "a"], "an array of dtype <U32"), (None, "None"),
     (np.array([1 + 2j]), "an array of dtype complex128")],
)
@pytest.mark.parametrize("f", [softmax, log_softmax, logsumexp, entropy, softmax_jacobian])
def test_non_numeric_input(f, x, got):
    with pytest.raises(LogitkitTypeError, match=rf"^Expected `x` to be a (real )?numeric array, "
                       rf"but got {got}$"):
        f(x)


def test_complex_torch_input_is_a_type_error():
    import torch

    with pytest.raises(LogitkitTypeError, match=r"^Expected `x` to be a real numeric array, "
                       r"but got an array of dtype torch.complex64$"):
        softmax(torch.zeros(3, dtype=torch.complex64))


def test_integer_dtype_argument_is_a_type_error(xp):
    with pytest.raises(LogitkitTypeError, match=r"^Expected `dtype` to be a real floating dtype"):
        softmax(asarray(xp, X), dtype=xp.int32)


def test_non_bool_keepdims_is_a_type_error():
    with pytest.raises(LogitkitTypeError, match=r"^Expected `keepdims` to be a bool, but got 1$"):
        logsumexp(X, keepdims=1)


def test_arrays_from_two_libraries():
    import torch

    with pytest.raises(LogitkitTypeError, match=r"^Expected `the arrays` to be from one array "
                       r"library, but got"):
        softmax(torch.zeros(3), where=np.ones(3, bool))


# --------------------------------------------------------------------------------------------
# regressions: one validation for the fast and the generic path
# --------------------------------------------------------------------------------------------


def test_a_dtype_that_is_not_a_floating_dtype_is_a_library_type_error():
    with pytest.raises(LogitkitTypeError, match=r"^Expected `dtype` to be a real floating dtype"):
        softmax(X, dtype="foo")


@pytest.mark.parametrize("fast", [True, False])
def test_fast_and_generic_paths_take_the_same_arguments(fast):
    from logitkit._kernels import fast_path

    with fast_path(fast):
        # a dtype by name is a dtype of the array's library, on either path
        assert softmax(X, dtype="float32").dtype == np.float32
        assert softmax(X, dtype="float64").dtype == np.float64
        # a softcap is a number: a 0-d array is refused on either path
        with pytest.raises(LogitkitTypeError, match=r"^Expected `softcap` to be a real number"):
            softmax(X, softcap=np.array(2.0))


def test_return_sign_must_be_a_bool():
    with pytest.raises(LogitkitTypeError, match=r"^Expected `return_sign` to be a bool, "
                       r"but got 'x'$"):
        logsumexp(X, return_sign="x")


@pytest.mark.parametrize("f", [softmax, log_softmax, logsumexp, entropy])
def test_zero_dim_input_is_reported_as_x_not_as_axis(f):
    with pytest.raises(LogitkitValueError, match=r"^Expected `x` to be an array with at least "
                       r"one axis to reduce over, but got a 0-d array$"):
        f(np.float64(1.0))


def test_unsigned_label_out_of_range_is_reported_as_given():
    from logitkit.losses import cross_entropy

    with pytest.raises(LogitkitValueError, match=r"but got 9223372036854775813$"):
        cross_entropy(np.zeros((1, 3)), np.array([2**63 + 5], dtype=np.uint64))


def test_cross_entropy_on_meta_tensors_gives_meta_shapes():
    """A torch "meta" tensor has a shape and no values: the checks that read values skip it (as
    under ``jax.jit``) instead of failing with torch's own RuntimeError."""
    import torch

    from logitkit.losses import cross_entropy

    x = torch.zeros((4, 3), device="meta")
    y = torch.zeros(4, dtype=torch.int64, device="meta")
    loss = cross_entropy(x, y, reduction="none", label_smoothing=0.1)
    assert loss.device.type == "meta" and tuple(loss.shape) == (4,)
    assert cross_entropy(x, y).shape == ()
    assert softmax(x, temperature=2.0).device.type == "meta"


@pytest.mark.parametrize(("module", "name"), [
    ("logitkit.calibration", "TemperatureScaler"), ("logitkit.calibration", "VectorScaler"),
    ("logitkit.calibration", "BetaCalibrator"), ("logitkit.models", "SoftmaxRegression"),
])
def test_a_non_integer_max_iter_is_a_type_error_like_a_non_integer_n_bins(module, name):
    """One integer rule: a non-integer count is a TypeError (``n_bins=2.5`` always was; the
    temperature scaler's ``max_iter=2.5`` was a ValueError), naming the argument."""
    import importlib

    from logitkit.calibration import ece

    make = getattr(importlib.import_module(module), name)
    z = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5], [0.5, 1.0]])
    y = np.array([0, 1, 1, 0])
    with pytest.raises(LogitkitTypeError, match=r"^Expected `n_bins` to be .*but got 2\.5$"):
        ece(softmax(z), y, n_bins=2.5)
    with pytest.raises(LogitkitTypeError, match=r"^Expected `max_iter` to be .*but got 2\.5$"):
        make(max_iter=2.5).fit(z, y)
