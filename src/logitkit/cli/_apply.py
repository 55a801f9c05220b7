"""``logitkit apply``: write the calibrated probabilities of a file.

With ``--report`` the calibrator is rebuilt from a ``report.json`` of ``logitkit calibrate`` and
the report is held to what it says: the file must have the class count the calibrator was
fitted on and hold the same kind of scores, a fit that stopped at a bound or did not converge is
refused unless ``--force``, and the report's warnings are repeated.  ``--temperature T`` applies
``softmax(logits / T)`` without a report.  Files are read by the same reader as ``calibrate``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._io import (
    OUTPUT_TYPES,
    CliError,
    Columns,
    check_output_file,
    expand_inputs,
    read_inputs,
    write_array,
)
from ._kinds import Kind, detect, logits_of
from ._options import add_reader_options, positive_float
from ._report import describe_calibrator, load_report

_CHUNK = 1 << 20


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="INPUT",
                   help="scores (.npz, .npy, .csv, .parquet, .pt, or a folder of them), read "
                        "as `logitkit calibrate` reads them; labels in it are ignored")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--temperature", type=positive_float, metavar="T",
                        help="apply temperature scaling with this T")
    source.add_argument("--report", type=Path, metavar="FILE",
                        help="a report.json written by `logitkit calibrate`: its calibrator")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help=f"output probabilities, {' or '.join(OUTPUT_TYPES)}")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output file, and apply a report whose fit "
                        "stopped at a bound or did not converge")
    add_reader_options(p)
    p.set_defaults(_run=run)


def _refusal(report: dict[str, Any]) -> str | None:
    """Why a report's calibrator should not be applied without ``--force``, or None."""
    reasons = []
    if report["at_bound"]:
        reasons.append("its fit stopped at a bound of the parameter")
    if not report["converged"]:
        reasons.append("its fit did not converge")
    if not reasons:
        return None
    said = "; ".join(report["warnings"]) or "no warning was recorded"
    return f"{' and '.join(reasons)} ({said})"


def calibrator_from_report(cal: dict[str, Any], where: str
                           ) -> Callable[[np.ndarray], np.ndarray]:
    """The calibrated probabilities as a function of ``(N, K)`` logits, from the report's
    ``Calibrator.to_dict()``.

    Rebuilt, and so checked, when the report is loaded, before any input is read: the library
    checks every fitted value ``transform`` reads (present, numeric, finite, shaped for the
    class count, temperatures > 0, mixture weights ≥ 0 with a positive sum, one component per
    weight), so a damaged report is one line naming it, never NaN probabilities or a
    traceback (an unknown method too: the line lists the known ones)."""
    from .. import LogitkitError
    from ..calibration import Calibrator

    try:
        calibrator = Calibrator._from_dict(cal, "calibrator")
    except (LogitkitError, KeyError, TypeError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        raise CliError(f"{where}: malformed calibrator "
                       f"({text[0] if text else type(exc).__name__})") from None
    return lambda z: np.asarray(calibrator.predict_proba(z))


def _kind_from_report(scores: np.ndarray, given: str, fitted: str, path: str,
                      report_path: Path) -> Kind:
    """The kind the report's calibrator was fitted on, if the file can hold it."""
    if given != "auto":
        if given != fitted:
            raise CliError(f"--input {given}: the calibrator in {report_path} was fitted on "
                           f"{fitted}; apply it to {fitted}")
        return Kind(given, f"given (--input {given})")
    seen = detect(scores, "auto")
    if seen.name != fitted and not (seen.name == "logits" and fitted == "log-probs"):
        raise CliError(f"{path}: read as {seen.describe()}, but the calibrator in "
                       f"{report_path} was fitted on {fitted}; pass --input {fitted} if they "
                       "are")
    return Kind(fitted, f"as in {report_path.name}: the calibrator was fitted on {fitted}")


def run(args: argparse.Namespace) -> int:
    from .. import softmax

    # ---- every path first: input, report, output
    files = expand_inputs([args.path])
    report = load_report(args.report) if args.report is not None else None
    check_output_file(args.out, force=args.force, suffixes=OUTPUT_TYPES)
    warnings = []
    if report is not None:
        why = _refusal(report)
        if why is not None and not args.force:
            raise CliError(f"--report {args.report}: not applied: {why}; pass --force to "
                           "apply it anyway")
        warnings = [f"{args.report}: {w}" for w in report["warnings"]]
        transform = calibrator_from_report(report["calibrator"], f"--report {args.report}")
        described = describe_calibrator(report["calibrator"])
    else:
        t = args.temperature
        transform = lambda z: np.asarray(softmax(z, axis=1, temperature=t))  # noqa: E731
        described = f"temperature (T = {t:.6g})"
    # ---- the work
    pred = read_inputs(files, Columns.from_args(args, want_labels=False))
    for note in pred.notes:
        print(f"logitkit: note: {note}", file=sys.stderr)
    where = str(files[0])
    if report is not None:
        kind = _kind_from_report(pred.scores, args.input, report["input"]["kind"], where,
                                 args.report)
    else:
        kind = detect(pred.scores, args.input)
    # zeros read as in the calibration file (the report's floor), so that a row's output
    # depends on the row alone
    floor = report["input"].get("zero_floor") if report is not None else None
    logits, notes, _ = logits_of(pred.scores, kind, where, floor=floor,
                                 source=f"the calibration file of {args.report}")
    for note in notes:
        print(f"logitkit: note: {note}", file=sys.stderr)
    n, k = logits.shape
    if report is not None and k != report["n_classes"]:
        cols = pred.scores.shape[1]
        raise CliError(f"{where}: {cols} column{'s' * (cols != 1)} of scores ({k} classes), "
                       f"but the calibrator in {args.report} was fitted on "
                       f"{report['n_classes']} classes; choose the score columns with "
                       "--logit-columns or --logits-key")
    dtype = np.float32 if logits.dtype == np.float32 else np.float64
    probs = np.empty((n, k), dtype=dtype)
    rows = max(1, _CHUNK // k)
    for start in range(0, n, rows):
        probs[start:start + rows] = transform(logits[start:start + rows])
    write_array(args.out, probs)
    for w in warnings:
        print(f"logitkit: warning: {w}", file=sys.stderr)
    print(f"wrote {args.out}: {n} x {k} probabilities from {kind.describe()}, calibrated by "
          f"{described}")
    return 0
