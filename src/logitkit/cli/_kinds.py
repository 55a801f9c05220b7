"""What the scores in a file are (``--input``), and the logits every calibrator is given.

``--input auto`` (the default) reads rows that are non-negative and sum to 1 within 1e-3, or a
single column with every value in [0, 1], as probabilities; everything else is logits.
Log-probabilities are logits already (``softmax(log p) = p``), so ``auto`` never needs to tell
them apart; ``--input log-probs`` checks that they are.  The decision, and why, is written into
the table and the report, so that ``apply`` reads its file the same way.

The logits handed on are always ``(N, K)`` with ``K ≥ 2``:

- logits: as given; one column ``z`` is the binary logit, read as ``[0, z]``;
- probabilities: ``log p`` of each row divided by its sum (a row that sums to 1 within 1e-3 is
  renormalised exactly); one column ``p = P(class 1)`` becomes ``[log(1 − p), log p]``;
- log-probabilities: as given; one column ``log p`` becomes ``[log(1 − p), log p]``.

A probability of exactly 0 becomes a logit of ``-inf``: the model excluded that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import CliError

KINDS = ("auto", "logits", "probs", "log-probs")
SUM_TOL = 1e-3
_CHUNK = 1 << 20  # entries per chunk of the row checks


@dataclass(frozen=True)
class Kind:
    """The kind of scores a file holds: ``logits``, ``probs`` or ``log-probs``."""

    name: str
    reason: str  # why: "given (--input probs)", or what auto-detection saw

    @property
    def assumed(self) -> bool:
        return not self.reason.startswith("given")

    def describe(self) -> str:
        noun = {"logits": "logits", "probs": "probabilities",
                "log-probs": "log-probabilities"}[self.name]
        return f"{noun} ({self.reason})"


def _row_sums(scores: np.ndarray, *, exp: bool = False) -> np.ndarray:
    """Row sums of ``scores`` (of ``exp(scores)``) in float64, in chunks of rows."""
    rows = max(1, _CHUNK // scores.shape[1])

    def one(block: np.ndarray) -> np.ndarray:
        block = block.astype(np.float64)
        return (np.exp(block) if exp else block).sum(axis=1)

    return np.concatenate([one(scores[s:s + rows]) for s in range(0, scores.shape[0], rows)])


def _looks_like_probs(scores: np.ndarray) -> bool:
    if scores.min() < 0:
        return False
    if scores.shape[1] == 1:
        return bool(scores.max() <= 1)
    return bool(np.all(np.abs(_row_sums(scores) - 1) <= SUM_TOL))


def detect(scores: np.ndarray, given: str) -> Kind:
    """The kind of ``scores`` (an ``(N, K)`` array that passed ``check_scores``)."""
    if given != "auto":
        return Kind(given, f"given (--input {given})")
    if _looks_like_probs(scores):
        if scores.shape[1] == 1:
            why = "one column, every value in [0, 1]: P(class 1)"
        else:
            why = f"every row is non-negative and sums to 1 within {SUM_TOL:g}"
        return Kind("probs", f"assumed: {why}; pass --input logits if they are logits")
    if scores.min() < 0:
        why = "some values are negative"
    elif scores.shape[1] == 1:
        why = "one column with values above 1"
    else:
        why = f"rows do not sum to 1 within {SUM_TOL:g}"
    return Kind("logits", f"assumed: {why}, so not probabilities")


def _refusal(path: Path | str, problem: str, kind: Kind) -> CliError:
    return CliError(f"{path}: {problem} (read as {kind.describe()}); pass --input logits if "
                    "they are logits")


def _check_range(bad: np.ndarray, scores: np.ndarray, path: Path | str, rule: str,
                 kind: Kind) -> None:
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise _refusal(path, f"{rule}, found {scores[i, j]:g} in row {i}, column {j}", kind)


def _check_sums(sums: np.ndarray, path: Path | str, rule: str, kind: Kind) -> None:
    off = np.abs(sums - 1) > SUM_TOL
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise _refusal(path, f"{rule}, row {i} sums to {sums[i]:.6g}", kind)


def to_logits(scores: np.ndarray, kind: Kind, path: Path | str) -> np.ndarray:
    """The ``(N, K ≥ 2)`` logits of ``scores`` read as ``kind`` (checked; see the module)."""
    k = scores.shape[1]
    if kind.name == "logits":
        if k == 1:  # one binary logit per row: the logits [0, z]
            return np.concatenate([np.zeros_like(scores), scores], axis=1)
        return scores
    if kind.name == "probs":
        _check_range((scores < 0) | (scores > 1), scores, path,
                     "probabilities must lie in [0, 1]", kind)
        with np.errstate(divide="ignore"):
            if k == 1:
                return np.concatenate([np.log1p(-scores), np.log(scores)], axis=1)
            sums = _row_sums(scores)
            _check_sums(sums, path, "probabilities must sum to 1 in every row", kind)
            out = np.log(scores)
            out -= np.log(sums).astype(out.dtype)[:, None]
            return out
    _check_range(scores > 1e-6, scores, path, "log-probabilities must be ≤ 0", kind)
    if k == 1:
        lp = np.minimum(scores, 0)
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(-np.expm1(lp)), lp], axis=1)
    _check_sums(_row_sums(scores, exp=True), path,
                "log-probabilities must exponentiate to rows that sum to 1", kind)
    return scores
