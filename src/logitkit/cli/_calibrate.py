"""``logitkit calibrate``: fit a calibrator, report held-out before/after figures, draw them.

The order of work is the promise to the user: every path is checked (inputs exist and are
files, the output folder can be written and would not be overwritten without ``--force``)
before anything is read or fitted, so a typo costs nothing; then the files are read by the one
reader, the fit runs, and the report and diagram are written atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import (
    FORMATS,
    CliError,
    Columns,
    atomic_write,
    check_input_file,
    check_output_folder,
    expand_inputs,
    missing_labels,
    read_inputs,
    write_json,
)
from ._kinds import Kind, detect, to_logits
from ._options import add_progress_option, add_reader_options, positive_int
from ._progress import Progress
from ._report import SCHEMA_VERSION, figures, render

DEFAULT_OUT = "logitkit-calibration"
REPORT = "report.json"
DIAGRAM = "reliability.png"
LONG_INPUT = 5_000_000  # logits entries from which the progress bar shows (on a terminal)
_EVAL_CHUNK = 1 << 20  # logits entries per evaluation chunk


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help=f"predictions ({', '.join(FORMATS)}), folders of them or glob patterns "
                        "(quoted); several files are concatenated. Without a file, runs a "
                        "built-in demo.")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="labels for a scores-only input (.npy, .npz, .csv, .parquet, .pt)")
    p.add_argument("--test", type=Path, metavar="FILE",
                   help="held-out predictions with labels (or a folder of them): every 'after' "
                        "figure is measured there")
    p.add_argument("--test-labels", type=Path, metavar="FILE",
                   help="labels for a scores-only --test file")
    add_reader_options(p)
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"output folder (default: a new ./{DEFAULT_OUT}[-N])")
    p.add_argument("--force", action="store_true",
                   help="write into an existing output folder, replacing its report and diagram")
    p.add_argument("--bins", type=positive_int, default=15, metavar="N",
                   help="number of bins for ECE/MCE and the diagram (default: 15)")
    p.add_argument("--binning", choices=("uniform", "quantile"), default="uniform",
                   help="uniform right-closed bins, or equal-mass (quantile) bins")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout instead of the table")
    p.add_argument("--no-diagram", action="store_true",
                   help=f"skip the reliability diagram ({DIAGRAM}); matplotlib is then not needed")
    add_progress_option(p)
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster (e.g. tcp://host:8786): its workers read the "
                        "files, one block each, and the fit and metrics are map-reduces there")
    p.set_defaults(_run=run)


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class Labelled:
    """Logits ``(N, K ≥ 2)`` and labels, with what was assumed to get them."""

    logits: Any
    y: Any
    kind: Kind
    inputs: list[str]
    notes: list[str] = field(default_factory=list)


def read_labelled(paths: list[Path], cols: Columns, labels: Path | None, given: str,
                  what: str = "") -> Labelled:
    """The one way ``calibrate`` reads a labelled set (the calibration file or ``--test``)."""
    pred = read_inputs(paths, cols, labels)
    where = f"{what} {paths[0]}" if what else str(paths[0])
    if pred.labels is None:
        raise missing_labels(where, pred, cols)
    kind = detect(pred.scores, given)
    logits = to_logits(pred.scores, kind, where)
    check_label_range(pred.labels, logits.shape[1], where)
    return Labelled(logits, pred.labels, kind, [str(p) for p in paths], pred.notes)


def check_label_range(y: np.ndarray, k: int, where: str) -> None:
    if y.min() < 0 or y.max() >= k:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise CliError(f"{where}: label {bad} is out of range for {k} classes (labels must be "
                       f"in 0..{k - 1})")


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is None:
        candidate, i = Path(DEFAULT_OUT), 1
        while candidate.exists():
            i += 1
            candidate = Path(f"{DEFAULT_OUT}-{i}")
        check_output_folder(candidate, force=False, replaces=())
        return candidate
    check_output_folder(args.out, force=args.force, replaces=(REPORT, DIAGRAM))
    return Path(args.out)


# --------------------------------------------------------------------------------------------
# measuring


LogProbs = Callable[[int, int], np.ndarray]  # rows [start, stop) → float64 log-probabilities


def temperature_log_probs(logits: np.ndarray, temperature: float) -> LogProbs:
    from .. import log_softmax

    def rows(start: int, stop: int) -> np.ndarray:
        return np.asarray(log_softmax(logits[start:stop].astype(np.float64), axis=1,
                                      temperature=temperature))

    return rows


def evaluate(log_probs: LogProbs, y: np.ndarray, k: int, n_bins: int, binning: str,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Metrics of the calibrated log-probabilities in chunks of rows: O(chunk + bins) memory.

    The NLL comes from the log-probabilities (exact where ``log(softmax)`` would underflow), the
    binned figures from their exponentials.
    """
    from ..calibration import CalibrationStats
    from ..calibration._binning import uniform_edges

    n = y.shape[0]
    rows = max(1, _EVAL_CHUNK // k)

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, n, rows):
            yield start, log_probs(start, min(n, start + rows))

    if binning == "quantile":
        conf = np.concatenate([np.exp(lp.max(axis=1)) for _, lp in chunks()])
        idx = [-(-b * n // n_bins) - 1 for b in range(1, n_bins)]
        inner = np.sort(conf)[idx] if idx else np.empty(0)
        edges = np.unique(np.concatenate([[0.0], inner, [1.0]]))
    else:
        edges = uniform_edges(n_bins)
    stats = CalibrationStats(edges=edges)
    nll_sum = 0.0
    for start, lp in chunks():
        yc = y[start:start + lp.shape[0]]
        stats.update(np.exp(lp), yc)
        nll_sum -= float(lp[np.arange(lp.shape[0]), yc].sum())
        if progress is not None:
            progress(len(yc))
    out = stats.compute()
    out["nll"] = nll_sum / n
    return out


# --------------------------------------------------------------------------------------------
# the command


def run(args: argparse.Namespace) -> int:
    if args.files and args.scheduler is not None:
        from ._scheduler import on_cluster

        with on_cluster(args.scheduler):
            return _run(args)
    return _run(args)


@dataclass
class _Fit:
    calibrator: dict[str, Any]
    converged: bool
    at_bound: bool
    warnings: list[str]
    before: dict[str, Any]
    after: dict[str, Any]
    evaluation: dict[str, Any]


def _check_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Every input path, before any work: the files (expanded), then the --test files."""
    if not args.files:
        for option in ("labels", "test", "test_labels"):
            if getattr(args, option) is not None:
                raise CliError(f"--{option.replace('_', '-')} needs an input file")
        return [], []
    files = expand_inputs(args.files)
    if args.labels is not None:
        check_input_file(args.labels, "--labels")
    test: list[Path] = []
    if args.test is not None:
        test = expand_inputs([args.test])
    if args.test_labels is not None:
        if args.test is None:
            raise CliError("--test-labels needs --test FILE")
        check_input_file(args.test_labels, "--test-labels")
    return files, test


def _run(args: argparse.Namespace) -> int:
    files, test_files = _check_paths(args)
    out = _out_dir(args)
    # ---- every path is fine: the work starts here
    cols = Columns.from_args(args)
    notes: list[str] = []
    if files and args.scheduler is not None:
        from ._scheduler import load_on_cluster

        train = load_on_cluster(args, files)
        test = None
        source = ", ".join(train.inputs)
    elif files:
        train = read_labelled(files, cols, args.labels, args.input)
        test = None
        if test_files:
            test = read_labelled(test_files, cols, args.test_labels, args.input, "--test")
            _check_test_matches(train, test)
        source = ", ".join(train.inputs)
    else:
        from ._demo import make_demo

        demo = make_demo()
        train = Labelled(demo.calib_logits, demo.calib_labels,
                         Kind("logits", "the demo's model outputs logits"), [])
        test = Labelled(demo.test_logits, demo.test_labels, train.kind, [])
        source = demo.description
    notes += train.notes + (test.notes if test is not None else [])
    for note in notes:
        print(f"logitkit: note: {note}", file=sys.stderr)

    n, k = train.logits.shape
    progress = Progress(args.progress, long_input=n * k >= LONG_INPUT)
    fit = _fit_temperature(train, test, args, progress)

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "logitkit_version": _version(),
        "method": fit.calibrator["method"],
        "calibrator": fit.calibrator,
        "n_classes": int(k),
        "input": {"kind": train.kind.name, "reason": train.kind.reason},
        "converged": fit.converged,
        "at_bound": fit.at_bound,
        "warnings": fit.warnings,
        "notes": notes,
        "inputs": train.inputs,
        "test_inputs": test.inputs if test is not None else [],
        "source": source,
        "n_samples": int(n),
        "evaluation": fit.evaluation,
        "candidates": [],
        "bins": args.bins,
        "binning": args.binning,
        "before": figures(fit.before),
        "after": figures(fit.after),
    }

    png = None if args.no_diagram else _diagram(fit, report)
    report["diagram"] = DIAGRAM if png is not None else None
    out.mkdir(parents=True, exist_ok=True)
    if png is not None:
        atomic_write(out / DIAGRAM, lambda fh: fh.write(png))
    write_json(out / REPORT, report)

    for note in report["warnings"]:
        print(f"logitkit: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        print(f"wrote {out / REPORT}" + (f" and {out / DIAGRAM}" if png is not None else ""))
    return 0


def _version() -> str:
    from .. import __version__

    return __version__


def _check_test_matches(train: Labelled, test: Labelled) -> None:
    if test.logits.shape[1] != train.logits.shape[1]:
        raise CliError(f"--test {test.inputs[0]}: {test.logits.shape[1]} classes, but "
                       f"{train.inputs[0]} has {train.logits.shape[1]}")
    if test.kind.name != train.kind.name:
        raise CliError(f"--test {test.inputs[0]}: read as {test.kind.describe()}, but "
                       f"{train.inputs[0]} as {train.kind.describe()}; pass --input to say "
                       "which they are")


def _fit_temperature(train: Labelled, test: Labelled | None, args: argparse.Namespace,
                     progress: Progress) -> _Fit:
    from ..calibration import CalibrationWarning, TemperatureScaler

    n, k = train.logits.shape
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        with progress.stage("fitting T", n) as tick:
            scaler = TemperatureScaler().fit(train.logits, train.y, progress=tick)
    notes = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    t = scaler.temperature_
    measured = test if test is not None else train
    m = int(measured.y.shape[0])
    if not train.inputs:
        text = f"held out: measured on {m:,} test images the fit never saw"
        kind = "held-out"
    elif test is not None:
        text = f"held out: measured on the {m:,} --test rows, which the fit never saw"
        kind = "test"
    else:
        text = ("in-sample: T fitted and measured on the same rows (optimistic; pass --test "
                "FILE for held-out figures)")
        kind = "in-sample"
    with progress.stage("measuring", 2 * m) as tick:
        if _is_dask(measured.logits):
            from ._scheduler import evaluate_on_cluster

            before = evaluate_on_cluster(measured.logits, measured.y, 1.0, args.bins,
                                         args.binning)
            after = evaluate_on_cluster(measured.logits, measured.y, t, args.bins,
                                        args.binning)
        else:
            before = evaluate(temperature_log_probs(measured.logits, 1.0), measured.y, k,
                              args.bins, args.binning, tick)
            after = evaluate(temperature_log_probs(measured.logits, t), measured.y, k,
                             args.bins, args.binning, tick)
    return _Fit(calibrator={"method": "temperature", "params": {"temperature": t}},
                converged=bool(scaler.converged_), at_bound=bool(scaler.at_bound_),
                warnings=notes, before=before, after=after,
                evaluation={"kind": kind, "folds": None, "rows": m, "text": text})


def _is_dask(x: Any) -> bool:
    from .._namespace import is_dask

    return is_dask(x)


def _diagram(fit: _Fit, report: dict[str, Any]) -> bytes | None:
    from ..calibration._diagram import figure_from_stats
    from ._report import describe_calibrator

    try:
        fig = figure_from_stats([fit.before, fit.after],
                                ("before", f"after: {describe_calibrator(fit.calibrator)}"))
    except ImportError:
        report["warnings"].append("matplotlib is not installed: no reliability diagram "
                                  "(pip install matplotlib, or pass --no-diagram)")
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
