"""The built-in demo: an overconfident classifier on scikit-learn's digits (no download).

A multinomial logistic regression without regularisation is trained to (almost) zero training
loss on one sixth of the digits.  Its weights grow without bound on separable data, so on held-out
digits it is far more confident than it is accurate: a textbook case for temperature scaling.
The rest of the data is split into a calibration set (T is fitted there) and a test set (the
before/after metrics are measured there, so nothing is evaluated on the data it was fitted on).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from ._io import CliError

SEED = 0
N_TRAIN = 300


@dataclass
class Demo:
    calib_logits: np.ndarray
    calib_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    description: str


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


def _fit_unregularised(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    from scipy.optimize import minimize

    from .. import log_softmax, softmax

    onehot = np.eye(k)[y]
    n, d = x.shape

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w.reshape(d, k)
        loss = -float(np.sum(onehot * log_softmax(z, axis=1))) / n
        grad = x.T @ (softmax(z, axis=1) - onehot) / n
        return loss, grad.ravel()

    res = minimize(loss_grad, np.zeros(d * k), jac=True, method="L-BFGS-B",
                   options={"maxiter": 200})
    return np.asarray(res.x).reshape(d, k)


def make_demo() -> Demo:
    x, y = _load_digits()
    x = np.hstack([x / 16.0, np.ones((x.shape[0], 1))])
    perm = np.random.default_rng(SEED).permutation(len(y))
    x, y = x[perm], y[perm]
    k = int(y.max()) + 1
    w = _fit_unregularised(x[:N_TRAIN], y[:N_TRAIN], k)
    logits = x @ w
    half = N_TRAIN + (len(y) - N_TRAIN) // 2
    return Demo(
        calib_logits=logits[N_TRAIN:half], calib_labels=y[N_TRAIN:half],
        test_logits=logits[half:], test_labels=y[half:],
        description=(f"demo: scikit-learn digits, unregularised softmax regression trained on "
                     f"{N_TRAIN} images; T fitted on {half - N_TRAIN}, metrics on "
                     f"{len(y) - half} held-out images"),
    )
