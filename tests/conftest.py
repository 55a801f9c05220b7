"""Shared test harness: the ``xp`` fixture, ``assert_close``, hypothesis profiles.

``xp`` runs a test on numpy, array_api_strict, torch and jax (x64 enabled).  ``ad_xp`` runs it on
the two backends with autodiff (torch, jax).  ``maybe_jit`` wraps a function in ``jax.jit`` on JAX.
"""

from __future__ import annotations

import os

import hypothesis
import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")

hypothesis.settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "thorough", max_examples=2000, deadline=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("LOGITKIT_HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ["numpy", "array_api_strict", "torch", "jax"]
AUTODIFF = ["torch", "jax"]


def _module(name: str):
    if name == "numpy":
        return np
    if name == "array_api_strict":
        import array_api_strict

        return array_api_strict
    if name == "torch":
        import torch

        torch.set_num_threads(1)
        return torch
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp
    raise AssertionError(name)


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module of one backend: ``numpy``, ``array_api_strict``, ``torch`` or ``jax.numpy``."""
    return _module(request.param)


@pytest.fixture(params=AUTODIFF)
def ad_xp(request):
    """The array module of a backend with autodiff: ``torch`` or ``jax.numpy``."""
    return _module(request.param)


def _simd_targets() -> list[str]:
    from logitkit import _kernels

    native = _kernels.native()
    return native.targets() if native is not None else []


@pytest.fixture(params=_simd_targets())
def target(request):
    """Run a test on every SIMD target this CPU runs (the widest is the default)."""
    from logitkit import _kernels

    native = _kernels.native()
    before = native.target()
    native.set_target(request.param)
    yield request.param
    native.set_target(before)


@pytest.fixture(scope="module")
def client():
    """A ``distributed`` cluster in this process (one worker, two threads): the Dask tests'
    and the command line's ``--scheduler`` tests' scheduler."""
    import distributed

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                       dashboard_address=":0")
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def to_numpy(a) -> np.ndarray:
    if isinstance(a, np.ndarray | np.generic | float | int):
        return np.asarray(a)
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    if type(a).__module__.startswith("array_api_strict"):
        return np.asarray(a._array) if hasattr(a, "_array") else np.asarray(a)
    return np.asarray(a)


def asarray(xp, a, dtype=None):
    """``a`` (NumPy or list) as an array of ``xp``, keeping its dtype unless ``dtype`` is given."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    if xp is np:
        return a
    if xp.__name__ == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a))
    return xp.asarray(a)


def assert_close(actual, desired, *, rtol=1e-12, atol=0.0, err_msg=""):
    """Compare any backend's array with a reference: NaN equals NaN, infinities must match."""
    a = to_numpy(actual).astype(np.float64) if to_numpy(actual).dtype.kind != "b" else to_numpy(actual)
    d = np.asarray(to_numpy(desired))
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape} {err_msg}"
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)


def is_type_of(result, xp) -> bool:
    """True when ``result`` is an array of backend ``xp`` (array type in = array type out)."""
    name = xp.__name__
    mod = type(result).__module__
    if name == "numpy":
        return isinstance(result, np.ndarray | np.generic)
    if name == "jax.numpy":
        return mod.startswith("jax") or mod.startswith("jaxlib")
    return mod.startswith(name)


def maybe_jit(f, xp):
    """``jax.jit(f)`` on JAX (the way users call the library there), ``f`` elsewhere."""
    if xp.__name__ == "jax.numpy":
        import jax

        return jax.jit(f)
    return f


def grad(f, x, xp):
    """Gradient of the scalar ``f(x)`` by the backend's own autodiff (torch or jax)."""
    if xp.__name__ == "torch":
        import torch

        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(x), x)
        return g
    import jax

    return jax.jit(jax.grad(f))(x)


def dtype_of(xp, name: str):
    return getattr(xp, name)


def torch_cross_entropy(logits, target, *, reduction="mean", ignore_index=None,
                        label_smoothing=0.0, z_loss=0.0, softcap=None):
    """PyTorch's ``F.cross_entropy`` on ``softcap(logits)`` (class axis last, any batch shape)
    plus the z-loss on counted rows: the dense reference of the fused and sharded losses."""
    import torch
    import torch.nn.functional as F

    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), target.reshape(-1),
                           label_smoothing=label_smoothing, reduction="none", **kw)
    loss = loss.reshape(target.shape)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None \
        else target != ignore_index
    loss = loss + z_loss * torch.logsumexp(z, dim=-1) ** 2 * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()
