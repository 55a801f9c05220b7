"""The built-in demo: an overconfident classifier on scikit-learn's digits (no download).

Gaussian naive Bayes is the textbook overconfident classifier (Niculescu-Mizil & Caruana 2005):
it multiplies 64 pixel likelihoods as if they were independent, so its log-odds are several
times too large.  It is trained here, in closed form (per-class means and variances, no
optimiser), on 300 of the 1,797 digits; its logits (joint log-likelihoods) on the other 1,497
digits, which it never saw, are the file a user would bring.  ``logitkit calibrate`` then does
exactly what it does with that file: every candidate calibrator is cross-fitted on those rows,
the winner is chosen out of fold, and every "after" figure is held out.

``var_smoothing`` (added to every variance, as a fraction of the largest pixel variance) is the
value that maximises the model's accuracy among 1e-3, 1e-2, 1e-1 and 1: a user tuning the model
for accuracy would pick it, and it leaves the model overconfident.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from ._io import CliError

SEED = 0
N_TRAIN = 300
VAR_SMOOTHING = 0.1


@dataclass
class Demo:
    logits: np.ndarray
    labels: np.ndarray
    description: str
    title: str = "demo: Gaussian naive Bayes on scikit-learn's digits"


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # The digits ship inside scikit-learn as a small CSV; reading it directly avoids importing
    # scikit-learn (seconds) for 1797 rows.  load_digits is the fallback.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise CliError("the demo uses the digits data that ship with scikit-learn; install it "
                       "(pip install scikit-learn) or pass a file: logitkit calibrate PREDS.npz")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    if os.path.exists(path):
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # pragma: no cover - layout changed

    x, y = load_digits(return_X_y=True)  # pragma: no cover
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)  # pragma: no cover


def gaussian_naive_bayes(x: np.ndarray, y: np.ndarray, k: int, var_smoothing: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log prior, means, variances)`` of Gaussian naive Bayes, as scikit-learn fits it."""
    prior = np.log(np.bincount(y, minlength=k) / len(y))
    means = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    variances = np.stack([x[y == c].var(axis=0) for c in range(k)])
    return prior, means, variances + var_smoothing * x.var(axis=0).max()


def naive_bayes_logits(x: np.ndarray, model: tuple[np.ndarray, np.ndarray, np.ndarray]
                       ) -> np.ndarray:
    """The joint log-likelihoods ``log P(c) + Σ_j log N(x_j; μ_cj, σ²_cj)``: the logits."""
    prior, means, variances = model
    sq = ((x[:, None, :] - means[None]) ** 2 / variances[None]).sum(axis=2)
    return prior - 0.5 * np.log(2 * np.pi * variances).sum(axis=1) - 0.5 * sq


def make_demo() -> Demo:
    x, y = _load_digits()
    perm = np.random.default_rng(SEED).permutation(len(y))
    x, y = x[perm], y[perm]
    k = int(y.max()) + 1
    model = gaussian_naive_bayes(x[:N_TRAIN], y[:N_TRAIN], k, VAR_SMOOTHING)
    logits = naive_bayes_logits(x[N_TRAIN:], model)
    return Demo(
        logits=logits, labels=y[N_TRAIN:],
        description=(f"demo: Gaussian naive Bayes trained on {N_TRAIN} of scikit-learn's "
                     f"digits, its logits on the {len(y) - N_TRAIN:,} digits it never saw"),
    )
