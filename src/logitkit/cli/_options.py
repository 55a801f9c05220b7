"""Options that ``calibrate`` and ``apply`` share, so both read a file the same way."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ._kinds import KINDS
from ._progress import MODES


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


non_negative_int = _int_at_least(0, "a non-negative integer")
fold_count = _int_at_least(2, "an integer ≥ 2 (folds)")


def bin_count(text: str) -> int | str:
    """A positive number of bins, or ``auto``."""
    return "auto" if text == "auto" else _int_at_least(1, "a positive integer or 'auto'")(text)


def probability(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def add_reader_options(p: argparse.ArgumentParser) -> None:
    """How the reader finds scores and labels in a file, and what the scores are."""
    p.add_argument("--input", choices=KINDS, default="auto",
                   help="what the scores are: logits, probs (probabilities), log-probs, or auto "
                        "(default): rows that are non-negative and sum to 1 within 1e-3, or "
                        "one column in [0, 1], are probabilities, anything else logits")
    p.add_argument("--logits-key", default="logits", metavar="NAME",
                   help="array name of the scores in .npz/.pt files (default: logits)")
    p.add_argument("--labels-key", default="labels", metavar="NAME",
                   help="array name of the labels in .npz/.pt files (default: labels)")
    p.add_argument("--label-column", default=None, metavar="NAME",
                   help="label column of .csv/.parquet files (default: a column named 'label'; "
                        "in a .csv without header, columns are named 0, 1, 2, … and the first "
                        "is the label when it holds class indices)")
    p.add_argument("--logit-columns", default=None, metavar="NAMES",
                   help="score columns of .csv/.parquet files: names separated by commas, or "
                        "one prefix (e.g. 'logit_'); default: every column but the label")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="progress on stderr: auto = bars for long inputs on a terminal; always = "
                        "bars on a terminal, one line per finished stage elsewhere")
