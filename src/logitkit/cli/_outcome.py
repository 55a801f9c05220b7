"""What ``calibrate`` reads and produces: a labelled set and the outcome of a fit (shared by the
local run and the cluster run)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._io import CliError
from ._kinds import Kind


@dataclass
class Labelled:
    """Logits ``(N, K ≥ 2)`` and labels, with what was assumed to get them."""

    logits: Any
    y: Any
    kind: Kind
    inputs: list[str]
    notes: list[str] = field(default_factory=list)
    #: the log-probability that probabilities of exactly 0 were read as (``-inf``: none seen);
    #: the files read against this set's fit use it too (see :mod:`._kinds`)
    floor: float = -math.inf


def check_label_range(y: np.ndarray, k: int, where: str) -> None:
    if y.min() < 0 or y.max() >= k:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise CliError(f"{where}: label {bad} is out of range for {k} classes (labels must be "
                       f"in 0..{k - 1})")


def check_fit_rows(n: int, low: int, high: int, where: str, cv: int) -> None:
    """A calibration set that cross-validation can use (``low``, ``high``: its least and
    greatest label): rows of two classes at least (with one, every calibrator learns to
    predict it, and the held-out table says "accuracy 1.0"), and a row for every fold (the
    library's own message names neither the file nor ``--cv``).  The one check of the local
    and the ``--scheduler`` paths."""
    if low == high:
        raise CliError(f"{where}: every label is {low}; calibration needs rows of at least "
                       "two classes")
    if n < cv:
        raise CliError(f"--cv {cv}: more folds than the {n} rows of {where}; pass --cv {n} "
                       "or fewer")


@dataclass
class Outcome:
    """What a fit produced: the calibrator and the held-out figures (the report's content)."""

    calibrator: Any  # a fitted logitkit.calibration.Calibrator
    warnings: list[str]
    before: dict[str, Any]
    after: dict[str, Any]
    evaluation: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    candidates_note: str = ""


def held_out(args: argparse.Namespace, n: int, m: int, on_test: bool) -> dict[str, Any]:
    """The report's ``evaluation``: what the "after" figures are, in words too."""
    if on_test:
        return {"kind": "test", "folds": None, "rows": m,
                "text": f"held out: the calibrator, fitted on all {n:,} calibration rows, "
                        f"measured on the {m:,} --test rows"}
    return {"kind": "cross-fitted", "folds": args.cv, "rows": m,
            "text": f"cross-fitted: each of the {m:,} rows scored by a calibrator fitted on "
                    f"the other {args.cv - 1} of {args.cv} folds"}
