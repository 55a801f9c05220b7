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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration._select import CANDIDATES
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
from ._kinds import Kind, detect, logits_of
from ._options import add_progress_option, add_reader_options, fold_count, positive_int
from ._progress import Progress
from ._report import SCHEMA_VERSION, candidates, describe_calibrator, figures, render

DEFAULT_OUT = "logitkit-calibration"
REPORT = "report.json"
DIAGRAM = "reliability.png"
METHODS = tuple(name for name in CANDIDATES if name != "none")  # simplest first
LONG_INPUT = 5_000_000  # logits entries from which the progress bar shows (on a terminal)
_EVAL_CHUNK = 1 << 20  # logits entries per evaluation chunk


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help=f"predictions ({', '.join(FORMATS)}), folders of them or glob patterns "
                        "(quoted); several files are concatenated. Without a file, runs a "
                        "built-in demo.")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="labels for a scores-only input (.npy, .npz, .csv, .parquet, .pt)")
    p.add_argument("--method", choices=("auto", *METHODS), default="auto", metavar="METHOD",
                   help="the calibrator: auto (default) cross-validates every method and "
                        "'none' (leave the scores alone) and picks the best out-of-fold NLL; "
                        f"or one of {', '.join(METHODS)} (still compared with none and "
                        "temperature in the table)")
    p.add_argument("--cv", type=fold_count, default=5, metavar="N",
                   help="folds of the cross-validation (default: 5)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the fold assignment (default: 0, so reruns agree)")
    p.add_argument("--test", type=Path, metavar="FILE",
                   help="held-out predictions with labels (or a folder of them): every 'after' "
                        "figure is measured there; without it they are cross-fitted")
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
                        "files, one block each, and the cross-fitting and metrics are "
                        "map-reduces there (--method auto is temperature scaling there)")
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
    logits, notes = logits_of(pred.scores, kind, where)
    check_label_range(pred.labels, logits.shape[1], where)
    return Labelled(logits, pred.labels, kind, [str(p) for p in paths], pred.notes + notes)


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


def _log_probs(z: np.ndarray, folds: np.ndarray | None, calibrators: Sequence[Any] | None
               ) -> np.ndarray:
    """float64 log-probabilities of a block of rows: of the logits themselves, or of each
    row's calibrator (``calibrators[f]`` for the rows of fold ``f``; one calibrator for all)."""
    from .. import log_softmax

    z = z.astype(np.float64)
    if calibrators is None:
        return np.asarray(log_softmax(z, axis=1))
    if folds is None or len(calibrators) == 1:
        return np.asarray(calibrators[0].predict_log_proba(z))
    out = np.empty(z.shape)
    for f, cal in enumerate(calibrators):
        rows = folds == f
        if rows.any():
            out[rows] = np.asarray(cal.predict_log_proba(z[rows]))
    return out


def _chunks(n: int, k: int) -> list[slice]:
    step = max(1, _EVAL_CHUNK // k)
    return [slice(start, start + step) for start in range(0, n, step)]


def _block_figures(z: np.ndarray, y: np.ndarray, folds: np.ndarray | None, *,
                   calibrators: Sequence[Any] | None, edges: np.ndarray, cv: int
                   ) -> tuple[Any, np.ndarray, np.ndarray]:
    """Sums that add across row blocks: ``(CalibrationStats, Σ −log p_y per fold, rows per
    fold)``, in chunks of rows (O(chunk + bins) memory)."""
    from ..calibration import CalibrationStats

    stats = CalibrationStats(edges=edges)
    nll = np.zeros(cv)
    count = np.zeros(cv)
    for rows in _chunks(len(y), z.shape[1]):
        fc = None if folds is None else folds[rows]
        lp = _log_probs(z[rows], fc, calibrators)
        yc = y[rows]
        stats.update(np.exp(lp), yc)
        f = np.zeros(len(yc), dtype=np.intp) if fc is None else fc.astype(np.intp)
        nll += np.bincount(f, weights=-lp[np.arange(len(yc)), yc], minlength=cv)
        count += np.bincount(f, minlength=cv)
    return stats, nll, count


def evaluate(z: Any, y: Any, n_bins: int, binning: str, *, folds: Any = None,
             calibrators: Sequence[Any] | None = None, cv: int = 1) -> dict[str, Any]:
    """Held-out figures of ``z`` (logits), calibrated row by row as :func:`_log_probs` says.

    One pass over the rows through :func:`~logitkit.calibration._blocks.row_sums`, so the same
    code measures in-memory arrays and Dask arrays (one map-reduce, only O(bins) sums come
    back).  The NLL comes from the log-probabilities (exact where ``log(softmax)`` would
    underflow); ``fold_spread`` is the standard deviation of the per-fold NLL.
    """
    from ..calibration._binning import uniform_edges
    from ..calibration._blocks import row_sums

    if binning == "quantile":
        edges = _quantile_edges(z, folds, calibrators, n_bins)
    else:
        edges = uniform_edges(n_bins)
    stats, nll, count = row_sums(_block_figures, z, y, folds, calibrators=calibrators,
                                 edges=edges, cv=cv)
    out: dict[str, Any] = stats.compute()
    out["nll"] = float(nll.sum() / count.sum())
    per_fold = nll[count > 0] / count[count > 0]
    out["fold_spread"] = float(np.std(per_fold)) if per_fold.size > 1 else float("nan")
    return out


def _quantile_edges(z: np.ndarray, folds: Any, calibrators: Sequence[Any] | None,
                    n_bins: int) -> np.ndarray:
    """Equal-mass bin edges of the confidences (a first pass, in memory)."""
    from ..calibration._binning import edges_of

    conf = np.concatenate([
        np.exp(_log_probs(z[rows], None if folds is None else folds[rows], calibrators)
               .max(axis=1)) for rows in _chunks(z.shape[0], z.shape[1])])
    return np.unique(edges_of(conf, n_bins, "quantile"))


# --------------------------------------------------------------------------------------------
# the command


def run(args: argparse.Namespace) -> int:
    if args.files and args.scheduler is not None:
        from ._scheduler import on_cluster

        with on_cluster(args.scheduler):
            return _run(args)
    return _run(args)


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
    test = None
    if files and args.scheduler is not None:
        from ._scheduler import load_on_cluster

        train = load_on_cluster(args, files)
        source = ", ".join(train.inputs)
    elif files:
        train = read_labelled(files, cols, args.labels, args.input)
        source = ", ".join(train.inputs)
    else:
        from ._demo import make_demo

        demo = make_demo()
        train = Labelled(demo.logits, demo.labels,
                         Kind("logits", "the demo's model outputs logits"), [])
        source = demo.description
    if test_files:
        test = read_labelled(test_files, cols, args.test_labels, args.input, "--test")
        _check_test_matches(train, test)
    notes = train.notes + (test.notes if test is not None else [])
    for note in notes:
        print(f"logitkit: note: {note}", file=sys.stderr)

    n, k = train.logits.shape
    progress = Progress(args.progress, long_input=n * k >= LONG_INPUT)
    if _is_dask(train.logits):
        from ._scheduler import fit_on_cluster

        outcome = fit_on_cluster(train, test, args, progress)
    else:
        outcome = fit(train, test, args, progress)
    cal = outcome.calibrator
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "logitkit_version": _version(),
        "method": cal.method,
        "calibrator": cal.to_dict(),
        "n_classes": int(k),
        "input": {"kind": train.kind.name, "reason": train.kind.reason},
        "converged": bool(getattr(cal, "converged_", True)),
        "at_bound": bool(getattr(cal, "at_bound_", False)),
        "warnings": outcome.warnings,
        "notes": notes,
        "inputs": train.inputs,
        "test_inputs": test.inputs if test is not None else [],
        "source": source,
        "n_samples": int(n),
        "evaluation": outcome.evaluation,
        "candidates": outcome.candidates,
        "candidates_note": outcome.candidates_note,
        "bins": args.bins,
        "binning": args.binning,
        "before": figures(outcome.before),
        "after": figures(outcome.after),
    }

    png = None if args.no_diagram else _diagram(outcome, report)
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
    where = f"--test {test.inputs[0]}"
    if test.logits.shape[1] != train.logits.shape[1]:
        raise CliError(f"{where}: {test.logits.shape[1]} classes, but "
                       f"{train.inputs[0] if train.inputs else 'the demo'} has "
                       f"{train.logits.shape[1]}")
    if test.kind.name != train.kind.name:
        raise CliError(f"{where}: read as {test.kind.describe()}, but {train.inputs[0]} as "
                       f"{train.kind.describe()}; pass --input to say which they are")


def fit(train: Labelled, test: Labelled | None, args: argparse.Namespace,
        progress: Progress) -> Outcome:
    """Choose and fit the calibrator on ``train``; measure it where it was not fitted.

    Without ``test`` the "after" figures are the chosen method's out-of-fold predictions from
    the cross-validation that chose it (no refit, no row scored by a calibrator that saw it);
    with ``test`` they are the calibrator, refitted on all of ``train``, on ``test``.
    """
    from ..calibration import CalibrationWarning, select

    n = int(train.logits.shape[0])
    methods = "auto" if args.method == "auto" else [args.method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        with progress.stage(f"cross-validating {_plural(len(_tried(methods)), 'method')} "
                            f"over {args.cv} folds", n) as tick:
            sel = select(train.logits, train.y, methods=methods, cv=args.cv,
                         random_state=args.seed)
            tick(n)
        chosen = sel.best_ if args.method == "auto" else args.method
        if chosen == sel.best_:
            cal = sel.calibrator_
        else:  # the method asked for, although another candidate scored better
            cls, params = CANDIDATES[chosen]
            cal = cls(**params).fit(train.logits, train.y)
    row = sel.row(chosen)
    if row["error"] is not None:
        raise CliError(f"--method {chosen}: the fit failed in cross-validation: {row['error']}")
    said = list(dict.fromkeys([*row["warnings"], *(
        str(w.message) for w in caught if issubclass(w.category, CalibrationWarning))]))
    table = candidates(sel.table_, chosen)
    note = (f"{args.cv}-fold stratified cross-validation, seed {args.seed}; near-ties go to the "
            "simpler method")
    measured = test if test is not None else train
    m = int(measured.y.shape[0])
    with progress.stage("measuring", 2 * m) as tick:
        before = evaluate(measured.logits, measured.y, args.bins, args.binning)
        tick(m)
        if test is None:  # the chosen method's out-of-fold logits: no row seen by its fit
            after = evaluate(sel.oof_logits(chosen), measured.y, args.bins, args.binning)
        else:
            after = evaluate(test.logits, test.y, args.bins, args.binning, calibrators=[cal])
        tick(m)
    evaluation = held_out(args, n, m, test is not None)
    return Outcome(cal, said, before, after, evaluation, table, note)


def held_out(args: argparse.Namespace, n: int, m: int, on_test: bool) -> dict[str, Any]:
    """The report's ``evaluation``: what the "after" figures are, in words too."""
    if on_test:
        return {"kind": "test", "folds": None, "rows": m,
                "text": f"held out: the calibrator, fitted on all {n:,} calibration rows, "
                        f"measured on the {m:,} --test rows"}
    return {"kind": "cross-fitted", "folds": args.cv, "rows": m,
            "text": f"cross-fitted: each of the {m:,} rows scored by a calibrator fitted on "
                    f"the other {args.cv - 1} of {args.cv} folds"}


def _tried(methods: Any) -> list[str]:
    if methods == "auto":
        return list(CANDIDATES)
    return list(dict.fromkeys(["none", "temperature", *methods]))


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _is_dask(x: Any) -> bool:
    from .._namespace import is_dask

    return is_dask(x)


def _diagram(outcome: Outcome, report: dict[str, Any]) -> bytes | None:
    from ..calibration._diagram import figure_from_stats

    try:
        after = (f"after ({outcome.evaluation['kind']}): "
                 f"{describe_calibrator(report['calibrator'], short=True)}")
        fig = figure_from_stats([outcome.before, outcome.after], ("before", after))
    except ImportError:
        report["warnings"].append("matplotlib is not installed: no reliability diagram "
                                  "(pip install matplotlib, or pass --no-diagram)")
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
