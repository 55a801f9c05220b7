"""``logitkit apply``: write calibrated probabilities ``softmax(logits / T)``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ._calibrate import add_column_options
from ._io import CliError, Columns, read_predictions, write_array

_CHUNK = 1 << 20


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, metavar="INPUT",
                   help="logits (.npz, .npy, .csv, .parquet, .pt); a label column is ignored")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--temperature", type=positive_float, metavar="T",
                        help="the temperature to apply")
    source.add_argument("--report", type=Path, metavar="FILE",
                        help="a report.json written by `logitkit calibrate`")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="output probabilities, .npy or .csv")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    add_column_options(p)
    p.set_defaults(_run=run)


def _temperature_from_report(path: Path) -> float:
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: not a JSON report ({str(exc).splitlines()[0]})") from None
    t = report.get("temperature") if isinstance(report, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
        raise CliError(f"{path}: expected a positive 'temperature' in the report, got {t!r}")
    return float(t)


def run(args: argparse.Namespace) -> int:
    from .. import softmax

    t = args.temperature if args.temperature is not None else \
        _temperature_from_report(args.report)
    out: Path = args.out
    if out.suffix.lower() not in (".npy", ".csv"):
        raise CliError(f"{out}: unsupported output type {out.suffix or '(none)'!r}; use .npy "
                       "or .csv")
    if out.exists() and not args.force:
        raise CliError(f"{out}: exists; pass --force to replace it")
    if not out.parent.exists():
        raise CliError(f"{out.parent}: no such folder")
    cols = Columns(label_column=args.label_column, logits_key=args.logits_key,
                   labels_key=args.labels_key)
    logits = read_predictions(args.input, cols, need_labels=False).logits
    if logits.shape[1] == 1:
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    dtype = np.float32 if logits.dtype == np.float32 else np.float64
    n, k = logits.shape
    probs = np.empty((n, k), dtype=dtype)
    rows = max(1, _CHUNK // k)
    for start in range(0, logits.shape[0], rows):
        probs[start:start + rows] = softmax(logits[start:start + rows], axis=1, temperature=t)
    write_array(out, probs)
    print(f"wrote {out}: {n} x {k} probabilities at T = {t:.6g}")
    return 0
