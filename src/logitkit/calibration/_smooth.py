"""Smooth ECE (Błasiok & Nakkiran 2023) and its smoothed reliability curve.

The residuals ``r_i = f_i − y_i`` of the confidences ``f_i`` (top label: ``y_i`` is "correct";
class-wise: ``f_i = p_ik`` and ``y_i = [label = k]``) are smoothed with a Gaussian kernel of
bandwidth ``σ`` reflected at 0 and 1, and the smooth ECE is the mass of their absolute value:

.. math::
    \\mathrm{smECE}_\\sigma = \\frac{\\int_0^1 \\bigl|\\sum_i K_\\sigma(t, f_i)\\, r_i\\bigr|\\,dt}
    {\\int_0^1 \\sum_i K_\\sigma(t, f_i)\\,dt}

The automatic bandwidth is the fixed point ``σ* = smECE_σ*`` (the paper's choice: the error is
then measured at the resolution it has), found as ``relplot`` finds it: ``σ = 1`` if it already
satisfies ``σ ≥ smECE_σ``, else ten halvings of [0, 1], keeping the smallest ``σ`` found with
``σ ≥ smECE_σ`` (bandwidths below ``10⁻³`` count as satisfying it).

Discretisation (``relplot`` 1.0's, so that the two agree to rounding): the weights 1 and ``r_i``
are split linearly onto a mesh of ``m = max(2000, round(20/σ)) // 2 + 1`` nodes on [0, 1]; the
mesh is reflected once at each end (the end nodes themselves are not mirrored) and convolved
with the Gaussian evaluated at ``linspace(0, 1, m) − ½`` (offsets within ±½, half a node off
centre when ``m`` is even); the two smoothed sequences are interpolated linearly at
``max(round(10/σ), 200)`` points of [0, 1] and the smooth ECE is the ratio of their sums (the
density sum with ``10⁻⁴`` added per point).  Convolutions use the FFT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._namespace import (
    LogitkitValueError,
    check_choice,
    check_int,
    check_number,
    expected,
    namespace,
)
from ._binning import MODES
from ._blocks import partitioned, row_reduce
from ._engine import Spec, Sums, block_sums, group_of
from ._measure import host_sums
from ._resample import MAX_GROUPS, jackknife_counts, resample_counts

__all__ = ["SmoothReliability", "smooth_ece", "smooth_reliability"]

#: relplot's smallest bandwidth, its density floor, and its number of halvings.
EPS = 1e-3
DENSITY_FLOOR = 1e-4
HALVINGS = 10
#: float64 elements the per-group meshes of a bootstrap may hold.
MESH_BUDGET = 1 << 22


def mesh_size(sigma: float) -> int:
    return max(2000, round(20 / sigma)) // 2 + 1


def eval_points(sigma: float) -> int:
    return max(round(10 / sigma), 200)


def splat(f: np.ndarray, w: np.ndarray | None, m: int, key: np.ndarray | None = None,
          size: int = 1) -> np.ndarray:
    """``w`` (ones when ``None``) split linearly onto ``m`` nodes ``j/(m − 1)``; with ``key``
    (a group per value), one mesh per group: shape ``(size, m)``."""
    t = np.asarray(f, dtype=np.float64) * (m - 1)
    j = np.clip(np.floor(t), 0, m - 2).astype(np.intp)
    frac = t - j
    if key is not None:
        j = j + key * m
    ww = np.ones_like(frac) if w is None else np.asarray(w, dtype=np.float64)
    out = np.bincount(j, (1 - frac) * ww, size * m)
    out += np.bincount(j + 1, frac * ww, size * m)
    return out.reshape(size, m)


def _offsets(m: int) -> tuple[np.ndarray, float]:
    """The kernel's node offsets ``d`` (an output node ``i`` gathers nodes ``i + d``) and the
    half-node shift ``s`` of relplot's kernel for an even mesh: the Gaussian is evaluated on
    ``linspace(0, 1, m) − ½``, centred on a node when ``m`` is odd and half-way between two
    when ``m`` is even."""
    shift = m // 2 - (m - 1) / 2
    return np.arange(-(m - 1 - m // 2), m // 2 + 1), shift


def _weights(sigma: float, m: int) -> tuple[np.ndarray, np.ndarray]:
    d, shift = _offsets(m)
    x = (d - shift) / (m - 1)
    return d, np.exp(-(x * x) / (2 * sigma * sigma)) / (np.sqrt(2 * np.pi) * sigma)


def _kernel_fft(sigma: float, m: int, length: int) -> np.ndarray:
    """FFT of the kernel of bandwidth ``sigma`` (:func:`_weights`) laid out for a circular
    convolution of ``length``: position ``q`` holds the weight of offset ``d = −q``."""
    d, w = _weights(sigma, m)
    buf = np.zeros(length)
    buf[(-d) % length] = w
    return np.fft.rfft(buf)


class Smoother:
    """Reflected Gaussian smoothing of meshes ``v`` ``(L, m)``: their FFT is taken once, and
    each call multiplies it by the kernels of the (few distinct) bandwidths asked for.
    ``precision`` float32 halves the cost where a relative error of 1e-6 is fine (resamples)."""

    def __init__(self, v: np.ndarray, precision: Any = np.float64) -> None:
        self.m = m = v.shape[-1]
        self.ext = np.concatenate([v[:, :0:-1], v, v[:, -2::-1]], axis=1).astype(precision)
        self.length = 1 << int(np.ceil(np.log2(self.ext.shape[1] + m)))
        self._spectrum: np.ndarray | None = None

    def _unique(self, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(np.broadcast_to(sigma, (self.ext.shape[0],)), return_inverse=True)

    def __call__(self, sigma: np.ndarray) -> np.ndarray:
        if self._spectrum is None:
            self._spectrum = np.fft.rfft(self.ext, self.length, axis=1)
        values, index = self._unique(sigma)
        kernels = np.stack([_kernel_fft(float(s), self.m, self.length) for s in values])
        out = np.fft.irfft(self._spectrum * kernels.astype(self._spectrum.dtype)[index],
                           self.length, axis=1)
        return out[:, self.m - 1: 2 * self.m - 1]

    def total(self, sigma: np.ndarray) -> np.ndarray:
        """``self(sigma).sum(axis=1)`` without smoothing: each extended node's weight times
        the kernel mass it sends to the ``m`` nodes of [0, 1]."""
        values, index = self._unique(sigma)
        m = self.m
        lattice = np.arange(-(m - 1), 2 * (m - 1) + 1)  # the extended nodes
        out = np.empty(self.ext.shape[0])
        for j, sv in enumerate(values):
            d, w = _weights(float(sv), m)
            c = np.concatenate([[0.0], np.cumsum(w)])
            # node l reaches the outputs i = l − d in [0, m): d in (l − m, l]
            lo = np.searchsorted(d, lattice - m, side="right")
            hi = np.searchsorted(d, lattice, side="right")
            mass = c[hi] - c[lo]
            sel = index == j
            out[sel] = self.ext[sel] @ mass.astype(self.ext.dtype)
        return out


def smooth_mesh(v: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Reflected Gaussian smoothing of meshes ``v`` ``(L, m)`` with bandwidths ``sigma``."""
    return Smoother(v)(sigma)


def interpolate(v: np.ndarray, points: int) -> np.ndarray:
    """Linear interpolation of meshes ``v`` ``(L, m)`` at ``points`` points of [0, 1]."""
    m = v.shape[-1]
    t = np.linspace(0.0, 1.0, points) * (m - 1)
    j = np.clip(np.floor(t), 0, m - 2).astype(np.intp)
    frac = t - j
    return v[:, j] * (1 - frac) + v[:, j + 1] * frac


def _ratio(res: np.ndarray, dens: np.ndarray, points: int | None) -> np.ndarray:
    if points is not None:
        res, dens = interpolate(res, points), interpolate(dens, points)
    return np.abs(res).sum(axis=1) / (dens + DENSITY_FLOOR).sum(axis=1)


class _Column:
    """One column's confidences and residuals, with its meshes cached by size."""

    def __init__(self, f: np.ndarray, r: np.ndarray) -> None:
        self.f, self.r = f, r
        self._meshes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def meshes(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        if m not in self._meshes:
            self._meshes[m] = (splat(self.f, self.r, m), splat(self.f, None, m))
        return self._meshes[m]

    def at(self, sigma: float) -> float:
        m = mesh_size(sigma)
        res, dens = self.meshes(m)
        s = np.array([sigma])
        return float(_ratio(smooth_mesh(res, s), smooth_mesh(dens, s), eval_points(sigma))[0])


def _fixed_point(at: Callable[[float], float]) -> float:
    """relplot's search for ``σ = smECE_σ`` (see the module docstring)."""

    def ok(sigma: float) -> bool:
        return sigma < EPS or sigma < at(sigma)

    if ok(1.0):
        return 1.0
    hi, lo = 1.0, 0.0
    for _ in range(HALVINGS):
        mid = (hi + lo) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return hi


def _fixed_points(at: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """:func:`_fixed_point` for ``n`` problems at once (``at`` maps ``n`` bandwidths to ``n``
    smooth ECEs)."""
    one = np.ones(n)
    ok1 = at(one) > one
    hi, lo = np.ones(n), np.zeros(n)
    for _ in range(HALVINGS):
        mid = (hi + lo) / 2
        ok = (mid < EPS) | (mid < at(mid))
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return np.where(ok1, 1.0, hi)


def _check(mode: str, bandwidth: object, from_logits: object) -> float | None:
    check_choice(mode, "mode", MODES)
    if not isinstance(from_logits, bool):
        raise LogitkitValueError(expected("from_logits", "a bool", from_logits))
    if bandwidth is None:
        return None
    return check_number(bandwidth, "bandwidth", low=0.0, low_open=True, high=np.inf,
                        high_open=True)


def _columns(x: Any, y: Any, mode: str, from_logits: bool) -> tuple[list[_Column], Sums]:
    """The columns to smooth, from one pass over the data."""
    spec = Spec(from_logits=from_logits, brier=False, keep_rows=True,
                keep_probs=mode == "classwise", groups=MAX_GROUPS)
    sums = host_sums(x, y, spec)
    rows = sums.rows
    assert rows is not None
    if not rows or rows["conf"].size == 0:
        raise LogitkitValueError(expected("probs", "non-empty (at least one row)", "0 rows"))
    if mode == "top-label":
        return [_Column(rows["conf"], rows["conf"] - rows["hit"])], sums
    p, labels = rows["probs"], rows["labels"]
    cols = []
    for k in range(p.shape[1]):
        f = np.ascontiguousarray(p[:, k])
        cols.append(_Column(f, f - (labels == k)))
    return cols, sums


def _value(cols: list[_Column], bandwidth: float | None) -> tuple[float, list[float]]:
    sigmas = [bandwidth if bandwidth is not None else _fixed_point(c.at) for c in cols]
    return float(np.mean([c.at(s) for c, s in zip(cols, sigmas, strict=True)])), sigmas


def _like(value: float, x: Any, y: Any) -> Any:
    xp = namespace(x, y)
    if xp is np:
        return np.asarray(value)
    import array_api_compat

    return xp.asarray(value, dtype=xp.float64 if hasattr(xp, "float64") else None,
                      device=array_api_compat.device(x))


def smooth_ece(
    probs: Any,
    y: Any,
    /,
    *,
    mode: str = "top-label",
    bandwidth: float | None = None,
    from_logits: bool = False,
) -> Any:
    r"""Smooth ECE (Błasiok & Nakkiran 2023): the calibration error after kernel smoothing.

    .. math::
        \mathrm{smECE}_\sigma = \frac{\int_0^1 \bigl|\sum_i K_\sigma(t, f_i)(f_i - y_i)\bigr|\,dt}
        {\int_0^1 \sum_i K_\sigma(t, f_i)\,dt},
        \qquad \sigma^\ast:\ \sigma^\ast = \mathrm{smECE}_{\sigma^\ast}

    with ``K_σ`` the Gaussian kernel reflected at 0 and 1.  Unlike the binned ECE it has no bin
    edges to choose, is continuous in the predictions, and is within constant factors of the
    distance to the nearest perfectly calibrated predictor.

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` for a binary problem; logits with
            ``from_logits``.
        y: ``(N,)`` integer labels.
        mode: ``"top-label"`` (the confidence against "correct", as relplot's ``smECE`` of
            ``multiclass_logits_to_confidences``) or ``"classwise"`` (each class column against
            ``y == k``, each with its own automatic bandwidth, averaged over classes).
        bandwidth: a fixed ``σ > 0`` instead of the automatic fixed point.
        from_logits: ``probs`` holds logits.

    Returns:
        A 0-d float64 array of the input's array type (computed on the host from the per-row
        confidences; not traceable under ``jax.jit``).  Dask input gives a lazy 0-d Dask array.

    Note:
        The automatic bandwidth and the discretisation are ``relplot`` 1.0's (see the module
        :mod:`logitkit.calibration._smooth`), and the two agree to rounding.  The per-row
        confidences are kept (``N`` floats; class-wise, the ``N × K`` probabilities).

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import smooth_ece
        >>> rng = np.random.default_rng(0)
        >>> f = rng.uniform(0.5, 1.0, 5000)
        >>> correct = rng.uniform(size=5000) < f ** 2          # overconfident
        >>> probs = np.stack([f, 1 - f], axis=1)
        >>> y = np.where(correct, 0, 1)
        >>> round(float(smooth_ece(probs, y)), 3)
        0.177

    References:
        Błasiok & Nakkiran, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing",
        ICLR 2024.
    """
    bw = _check(mode, bandwidth, from_logits)
    if partitioned(probs, y):
        spec = Spec(from_logits=from_logits, brier=False, keep_rows=True,
                    keep_probs=mode == "classwise")
        return row_reduce(block_sums, probs, y, lazy=True, spec=spec,
                          finish=_LazyFinish(mode, bw))
    cols, _ = _columns(probs, y, mode, from_logits)
    return _like(_value(cols, bw)[0], probs, y)


class _LazyFinish:
    """The smooth ECE of concatenated per-row results (picklable, for a lazy result of partitioned input)."""

    def __init__(self, mode: str, bandwidth: float | None) -> None:
        self.mode, self.bandwidth = mode, bandwidth

    def __call__(self, sums: Sums) -> np.ndarray:
        rows = sums.rows
        assert rows is not None
        if self.mode == "top-label":
            cols = [_Column(rows["conf"], rows["conf"] - rows["hit"])]
        else:
            p, labels = rows["probs"], rows["labels"]
            cols = [_Column(np.ascontiguousarray(p[:, k]), p[:, k] - (labels == k))
                    for k in range(p.shape[1])]
        return np.asarray(_value(cols, self.bandwidth)[0])


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------


def _group_meshes(col: _Column, group: np.ndarray, n_groups: int, m: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    return (splat(col.f, col.r, m, group, n_groups), splat(col.f, None, m, group, n_groups))


def smooth_replicates(probs: Any, y: Any, *, mode: str = "top-label",
                      bandwidth: float | None = None, from_logits: bool = False,
                      n_resamples: int, random_state: Any, jackknife: bool = False
                      ) -> tuple[float, np.ndarray, np.ndarray | None, int]:
    """The smooth ECE, ``n_resamples`` bootstrap replicates of it, leave-one-group-out values
    (for BCa) and the number of groups: the row groups' meshes are resampled, each replicate
    finding its own bandwidth on the mesh of the full sample's."""
    bw = _check(mode, bandwidth, from_logits)
    cols, sums = _columns(probs, y, mode, from_logits)
    value, sigmas = _value(cols, bw)
    rows = sums.rows
    assert rows is not None
    n = rows["conf"].shape[0]
    m_max = max(mesh_size(s) for s in sigmas)
    g = int(min(MAX_GROUPS, n, max(8, MESH_BUDGET // (2 * m_max * len(cols)))))
    group = rows["group"] if g == MAX_GROUPS or n <= g else group_of(0, n, g)
    assert group is not None
    rng = np.random.default_rng(random_state)
    reps = np.zeros(n_resamples)
    jack = np.zeros(g)
    for col, sigma in zip(cols, sigmas, strict=True):
        m = mesh_size(sigma)
        res_g, dens_g = _group_meshes(col, group, g, m)
        live = np.flatnonzero(dens_g.sum(axis=1) > 0)
        res_g, dens_g = res_g[live], dens_g[live]
        gl = live.size
        batch = max(1, (1 << 24) // (8 * m))
        reps += np.concatenate([_evaluate(c @ res_g, c @ dens_g, bw)
                                for c in resample_counts(rng, n_resamples, gl, batch)])
        if jackknife:
            jack[:gl] += np.concatenate([_evaluate(c @ res_g, c @ dens_g, bw)
                                         for c in jackknife_counts(gl, batch)])
    k = len(cols)
    return value, reps / k, (jack / k if jackknife else None), g


def _evaluate(res: np.ndarray, dens: np.ndarray, bandwidth: float | None) -> np.ndarray:
    """Smooth ECEs of resampled meshes ``(R, m)``: at ``bandwidth``, or each at its own
    automatic bandwidth (evaluated on the mesh nodes)."""

    smooth_res, smooth_dens = Smoother(res, np.float32), Smoother(dens, np.float32)
    floor = DENSITY_FLOOR * dens.shape[1]

    def at(sigma: np.ndarray) -> np.ndarray:
        return np.abs(smooth_res(sigma)).sum(axis=1) / (smooth_dens.total(sigma) + floor)

    r = res.shape[0]
    if bandwidth is not None:
        return at(np.full(r, bandwidth))
    sigma = _fixed_points(at, r)
    return at(sigma)


# --------------------------------------------------------------------------------------------
# the smoothed reliability curve
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothReliability:
    """A smoothed reliability curve (see :func:`smooth_reliability`).

    Attributes:
        t: ``(M,)`` confidences from 0 to 1.
        accuracy: ``(M,)`` the smoothed accuracy ``E[correct | conf = t]`` (NaN where the kernel
            weights add up to less than one prediction: no data nearby).
        low, high: ``(M,)`` the pointwise bootstrap band of ``accuracy`` (``level``).
        density: ``(M,)`` the kernel density of the confidences (integrates to about 1).
        bandwidth: the bandwidth used.
        smooth_ece: the smooth ECE at that bandwidth.
        level: the band's confidence level.
    """

    t: np.ndarray
    accuracy: np.ndarray
    low: np.ndarray
    high: np.ndarray
    density: np.ndarray
    bandwidth: float
    smooth_ece: float
    level: float


def smooth_reliability(
    probs: Any,
    y: Any,
    /,
    *,
    bandwidth: float | None = None,
    from_logits: bool = False,
    points: int = 200,
    level: float = 0.95,
    n_resamples: int = 200,
    random_state: Any = None,
) -> SmoothReliability:
    """The smoothed (top-label) reliability curve of relplot, with a bootstrap band.

    The curve is ``(C(t) − R(t))/D(t)``, the kernel average of ``correct`` near ``t``, with
    ``C``, ``R`` and ``D`` the reflected-kernel smoothings of the confidences, of the residuals
    ``conf − correct`` and of the weights 1 at the smooth ECE's bandwidth (the automatic one
    unless ``bandwidth`` is given), as relplot's diagram draws it.  (It was ``t − R(t)/D(t)``,
    which takes the kernel average of the confidences to be ``t``: half a unit off relplot's
    where the confidences thin out, and below 0 there.)  The band is the pointwise ``level`` interval
    of the curves of ``n_resamples`` resamples of the row groups (see
    :func:`~logitkit.calibration.bootstrap`).

    Args:
        probs: ``(N, K)`` probabilities, or ``(N,)`` binary; logits with ``from_logits``.
        y: ``(N,)`` integer labels.
        bandwidth: a fixed ``σ`` instead of the automatic one.
        from_logits: ``probs`` holds logits.
        points: number of points ``t`` on [0, 1].
        level: confidence level of the band.
        n_resamples: bootstrap resamples for the band (0: no band, ``low = high = accuracy``).
        random_state: ``None``, an int seed or a ``numpy.random.Generator``.

    Returns:
        A :class:`SmoothReliability` (NumPy arrays).

    Examples:
        >>> import numpy as np
        >>> from logitkit.calibration import smooth_reliability
        >>> rng = np.random.default_rng(0)
        >>> f = rng.uniform(0.5, 1.0, 5000)
        >>> y = np.where(rng.uniform(size=5000) < f ** 2, 0, 1)
        >>> curve = smooth_reliability(np.stack([f, 1 - f], 1), y, random_state=0)
        >>> i = np.searchsorted(curve.t, 0.8)
        >>> bool(curve.low[i] < 0.8 ** 2 < curve.high[i] < 0.8)   # below the diagonal
        True
    """
    bw = _check("top-label", bandwidth, from_logits)
    points = check_int(points, "points", low=2)
    n_resamples = check_int(n_resamples, "n_resamples", low=0)
    level = check_number(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
    cols, sums = _columns(probs, y, "top-label", from_logits)
    (col,) = cols
    value, (sigma,) = _value(cols, bw)
    m = mesh_size(sigma)
    n = col.f.shape[0]

    def curve(res: np.ndarray, dens: np.ndarray, conf: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        width = np.full(res.shape[0], sigma)
        sr = interpolate(smooth_mesh(res, width), points)
        sd = interpolate(smooth_mesh(dens, width), points)
        sc = interpolate(smooth_mesh(conf, width), points)
        # shown where the kernel weights add up to at least one prediction's worth of data
        # (Σ_i φ_σ(t − f_i) · σ√(2π) ≥ 1): elsewhere the ratio is noise over nothing
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(sd * sigma * np.sqrt(2 * np.pi) >= 1.0, (sc - sr) / sd, np.nan)
        return acc, sd

    res, dens = col.meshes(m)
    acc, sd = curve(res, dens, splat(col.f, col.f, m))
    acc, sd = acc[0], sd[0]
    low = high = acc
    if n_resamples:
        rows = sums.rows
        assert rows is not None
        g = int(min(MAX_GROUPS, n, max(8, MESH_BUDGET // (2 * m))))
        group = rows["group"] if g == MAX_GROUPS or n <= g else group_of(0, n, g)
        assert group is not None
        res_g, dens_g = _group_meshes(col, group, g, m)
        conf_g = splat(col.f, col.f, m, group, g)
        live = np.flatnonzero(dens_g.sum(axis=1) > 0)
        (counts,) = resample_counts(np.random.default_rng(random_state), int(n_resamples),
                                    live.size, int(n_resamples))
        reps, _ = curve(counts @ res_g[live], counts @ dens_g[live], counts @ conf_g[live])
        alpha = (1 - level) / 2
        seen = np.flatnonzero(np.isfinite(acc) & np.isfinite(reps).any(axis=0))
        low, high = np.full(points, np.nan), np.full(points, np.nan)
        if seen.size:
            q = np.nanquantile(reps[:, seen], [alpha, 1 - alpha], axis=0)
            low[seen], high[seen] = q[0], q[1]
    # the density of the confidences: the smoothed weights Σ_i φ_σ(t − f_i), over N
    density = sd / n
    return SmoothReliability(t=np.linspace(0.0, 1.0, points), accuracy=acc, low=low,
                             high=high, density=density, bandwidth=float(sigma),
                             smooth_ece=float(value), level=float(level))

