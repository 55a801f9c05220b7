"""What the scores in a file are (``--input``), and the logits every calibrator is given.

``--input auto`` (the default) reads rows that are non-negative and sum to 1 within 1e-3, or a
single column with every value in [0, 1], as probabilities; everything else is logits.
Log-probabilities of ``K ≥ 2`` classes are logits already (``softmax(log p) = p``), so ``auto``
never needs to tell them apart; ``--input log-probs`` checks that they are.  One column of
values at most 0 is the exception: read as logits it is the binary logit ``z`` (``P = σ(z)``),
while as ``log P(class 1)`` it is another model, so ``auto`` reads it as logits and says how to
read it the other way.  The decision, and why, is written into
the table and the report, so that ``apply`` reads its file the same way.

The logits handed on are always ``(N, K)`` with ``K ≥ 2``:

- logits: as given; one column ``z`` is the binary logit, read as ``[0, z]``;
- probabilities: ``log p`` of each row divided by its sum (a row that sums to 1 within 1e-3 is
  renormalised exactly); one column ``p = P(class 1)`` becomes ``[log(1 − p), log p]``;
- log-probabilities: as given; one column ``log p`` becomes ``[log(1 − p), log p]``.

A probability of exactly 0 would be a logit of ``-inf``; it is read as half the smallest positive
probability in the calibration file instead, and its row renormalised (:func:`zero_floor`, the
library's rule for ``from_probs=True``), with a note.  That one value, fixed by the calibration
file whether or not it holds a zero, is used for every file read against the fit: ``--test``
and, through the report's ``input.zero_floor``, ``apply``'s input; a row's calibrated
probabilities then depend on the row alone, not on the smallest probability of the file it came
in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calibration import floored_logs
from ..calibration import zero_floor as library_zero_floor
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
    if scores.shape[1] == 1 and scores.max() <= 0:
        # log P(class 1) looks the same, and read as a logit it is a different model
        return Kind("logits", "assumed: one column, every value at most 0, read as the binary "
                              "logit; pass --input log-probs if it is log P(class 1)")
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


def zero_floor(scores: np.ndarray, kind: Kind) -> tuple[int, float]:
    """``(how many probabilities are exactly 0, the log-probability that a zero is read as)``.

    The library's rule (:func:`logitkit.calibration.zero_floor`, that of its calibrators
    with ``from_probs=True``): half the smallest positive probability of the scores, computed
    whether or not they hold a zero, so that the calibration file fixes it for every file read
    against the fit.  One column of probabilities counts ``p = 1`` too (its ``1 − p`` is 0).
    ``(0, -inf)`` for logits.
    """
    if kind.name == "logits":
        return 0, -math.inf
    p = np.exp(scores.astype(np.float64)) if kind.name == "log-probs" else scores
    parts = [p, 1 - p] if scores.shape[1] == 1 else [p]
    count = sum(int(np.count_nonzero(q == 0)) for q in parts)
    if not np.all((p >= 0) & (p <= 1)):  # refused by logits_of, naming the file and the kind
        return count, -math.inf
    return count, library_zero_floor(p)


def floor_note(path: Path | str, count: int, floor: float, source: str = "") -> str:
    whose = f"as in {source}" if source else "half the smallest positive one"
    return (f"{path}: {count} probabilit{'y' if count == 1 else 'ies'} of exactly 0 read as "
            f"{math.exp(floor):.3g}, {whose}: a logit of -inf leaves most calibrators nothing "
            "to fit")


def logits_of(scores: np.ndarray, kind: Kind, path: Path | str, *,
              floor: float | None = None, source: str = ""
              ) -> tuple[np.ndarray, list[str], float]:
    """:func:`to_logits` with zero probabilities floored, the note that says so (when there
    are zeros), and the floor used (``-inf`` for logits).  ``floor``: the calibration file's
    (``source`` names it in the note), used instead of this file's own when given."""
    count, own = zero_floor(scores, kind)
    if floor is None or floor == -math.inf:
        floor, source = own, ""
    logits = to_logits(scores, kind, path, floor=floor)
    return logits, [floor_note(path, count, floor, source)] if count else [], floor


def to_logits(scores: np.ndarray, kind: Kind, path: Path | str, *,
              floor: float = -math.inf) -> np.ndarray:
    """The ``(N, K ≥ 2)`` logits of ``scores`` read as ``kind`` (checked; see the module).

    Log-probabilities of ``-inf`` from probabilities of 0 become ``floor`` and their rows are
    renormalised, by the library's rule (:func:`logitkit.calibration.floored_logs`; see
    :func:`zero_floor`; the default keeps them ``-inf``).
    """
    out = _logits(scores, kind, path)
    if kind.name != "logits" and floor > -math.inf:
        hit = np.isneginf(out)
        if hit.any():
            rows = hit.any(axis=1)
            block = floored_logs(out[rows].astype(np.float64), floor)
            out = out.copy() if out is scores else out
            out[rows] = block.astype(out.dtype)
    return out


def _logits(scores: np.ndarray, kind: Kind, path: Path | str) -> np.ndarray:
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
