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
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..calibration import AUTO_MAX_CLASSES, FULL_MAPS, candidates_of
from ..calibration import METHODS as ALL_METHODS
from ._helper import Helper, idle_core
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
from ._measure import Options, measure
from ._options import (
    add_progress_option,
    add_reader_options,
    bin_count,
    fold_count,
    non_negative_int,
    probability,
)
from ._outcome import Labelled, Outcome, check_fit_rows, check_label_range, held_out
from ._progress import Progress
from ._report import (
    SCHEMA_VERSION,
    candidates,
    describe_calibrator,
    measured,
    method_name,
    render,
)

DEFAULT_OUT = "logitkit-calibration"
REPORT = "report.json"
DIAGRAM = "reliability.png"
METHODS = tuple(name for name in ALL_METHODS if name != "none")  # simplest first
LONG_INPUT = 5_000_000  # logits entries from which the progress bar shows (on a terminal)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help=f"predictions ({', '.join(FORMATS)}), folders of them or glob patterns "
                        "(quoted); several files are concatenated. Without a file, runs a "
                        "built-in demo.")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="labels for a scores-only input (.npy, .npz, .csv, .parquet, .pt)")
    p.add_argument("--method", choices=("auto", *METHODS), default="auto", metavar="METHOD",
                   help="the calibrator: auto (default) cross-validates every method, "
                        "'none' (leave the scores alone) and 'stacked' (a mixture of them "
                        "weighted by held-out likelihood) and picks by out-of-fold NLL; "
                        f"or one of {', '.join(METHODS)} (still compared with none and "
                        "temperature in the table)")
    p.add_argument("--cv", type=fold_count, default=5, metavar="N",
                   help="folds of the cross-validation (default: 5)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="seed of the fold assignment (default: 0, so reruns agree; with "
                        "--scheduler the folds interleave the rows, row i in fold (i + seed) "
                        "mod N, so the seed only renumbers them)")
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
    p.add_argument("--bins", type=bin_count, default=15, metavar="N",
                   help="number of bins for ECE/MCE and the diagram (default: 15), or 'auto': "
                        "N^(1/3) within [5, 50] for N predictions")
    p.add_argument("--binning", choices=("uniform", "quantile"), default="uniform",
                   help="uniform right-closed bins, or equal-mass (quantile) bins")
    p.add_argument("--level", type=probability, default=0.95, metavar="P",
                   help="confidence level of the intervals on every figure (default: 0.95)")
    p.add_argument("--resamples", type=non_negative_int, default=1000, metavar="N",
                   help="bootstrap resamples of those intervals (default: 1000; 0: no "
                        "intervals)")
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


def read_labelled(paths: list[Path], cols: Columns, labels: Path | None, given: str,
                  what: str = "", floor: float | None = None) -> Labelled:
    """The one way ``calibrate`` reads a labelled set (the calibration file or ``--test``,
    whose zero probabilities are read as the calibration file's ``floor``)."""
    pred = read_inputs(paths, cols, labels, "--test-labels" if what == "--test" else "--labels")
    where = f"{what} {paths[0]}" if what else str(paths[0])
    if pred.labels is None:
        raise missing_labels(where, pred, cols, "--test-labels" if what == "--test" else "--labels")
    kind = detect(pred.scores, given)
    logits, notes, used = logits_of(pred.scores, kind, where, floor=floor,
                                    source="the calibration file")
    check_label_range(pred.labels, logits.shape[1], where)
    return Labelled(logits, pred.labels, kind, [str(p) for p in paths], pred.notes + notes,
                    used)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is None:
        candidate, i = Path(DEFAULT_OUT), 1
        while candidate.exists():
            i += 1
            candidate = Path(f"{DEFAULT_OUT}-{i}")
        check_output_folder(candidate, force=False, replaces=())
        return candidate
    check_output_folder(args.out, force=args.force, replaces=(REPORT, DIAGRAM))
    out = Path(args.out)
    for name in (REPORT, DIAGRAM):
        # what --force replaces must be a file: a folder (or anything else) there would only
        # fail at the write, after the whole fit
        entry = out / name
        if (entry.exists() or entry.is_symlink()) and not entry.is_file():
            what = "a folder" if entry.is_dir() else "not a regular file"
            raise CliError(f"--out {args.out}: {entry} is {what}, expected a file")
    return out


# --------------------------------------------------------------------------------------------
# the command


def run(args: argparse.Namespace) -> int:
    """Every path is checked before the Dask scheduler is reached: a typo is reported at once,
    not after a connection attempt (up to its 10 s timeout)."""
    files, test_files = _check_paths(args)
    out = _out_dir(args)
    if files and args.scheduler is not None:
        from ._scheduler import on_cluster

        with on_cluster(args.scheduler):
            return _run(args, files, test_files, out)
    return _run(args, files, test_files, out)


def _check_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Every input path, before any work: the files (expanded), then the --test files."""
    if 0 < args.resamples and args.resamples * (1.0 - args.level) / 2.0 < 1.0:
        least = math.ceil(2.0 / (1.0 - args.level) - 1e-9)
        raise CliError(f"--resamples {args.resamples}: too few for a {args.level:g} interval "
                       f"(at least {least}: each tail needs a resample); pass 0 for no "
                       "intervals")
    if not args.files:
        for option in ("labels", "test", "test_labels", "scheduler"):
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
    calibration = {p.resolve() for p in files}
    both = [p for p in test if p.resolve() in calibration]
    if both:
        raise CliError(f"--test {args.test}: {both[0]} is a calibration file too; the "
                       "figures measured on --test are held out only on rows the calibrator "
                       "did not see (leave --test out for cross-fitted figures)")
    return files, test


def _run(args: argparse.Namespace, files: list[Path], test_files: list[Path], out: Path
         ) -> int:
    # ---- every path is fine: the work starts here, with the diagram's helper process forked
    # first (before anything reads, fits or starts a thread; never beside a Dask client; only
    # with an idle core): it imports matplotlib while this process reads and fits, then draws
    with Helper(_import_matplotlib, enabled=not args.no_diagram and args.scheduler is None
                and idle_core()) as helper:
        return _work(args, files, test_files, out, helper)


def _import_matplotlib() -> None:
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401


def _work(args: argparse.Namespace, files: list[Path], test_files: list[Path], out: Path,
          helper: Helper) -> int:
    cols = Columns.from_args(args)
    test = None
    if files and args.scheduler is not None:
        from ._scheduler import load_on_cluster

        train = load_on_cluster(args, files)
        source, title = ", ".join(train.inputs), _data_name(args.files, files)
    elif files:
        train = read_labelled(files, cols, args.labels, args.input)
        check_fit_rows(len(train.y), int(train.y.min()), int(train.y.max()),
                       str(files[0]), args.cv)
        source, title = ", ".join(train.inputs), _data_name(args.files, files)
    else:
        from ._demo import make_demo

        demo = make_demo()
        train = Labelled(demo.logits, demo.labels,
                         Kind("logits", "the demo's model outputs logits"), [])
        source, title = demo.description, demo.title
    if test_files:
        test = read_labelled(test_files, cols, args.test_labels, args.input, "--test",
                             floor=train.floor)
        _check_test_matches(train, test)
    notes = train.notes + (test.notes if test is not None else [])
    for note in notes:
        print(f"logitkit: note: {note}", file=sys.stderr)

    n, k = train.logits.shape
    progress = Progress(args.progress, long_input=n * k >= LONG_INPUT)

    def draw(cal: Any, before: dict[str, Any], after: dict[str, Any],
             evaluation: dict[str, Any]) -> None:
        if not args.no_diagram:
            _submit_diagram(helper, title, cal, before, after, evaluation, args.level)

    if _is_dask(train.logits):
        from ._scheduler import fit_on_cluster

        outcome = fit_on_cluster(train, test, args, progress)
    else:
        outcome = fit(train, test, args, progress, draw)
    cal = outcome.calibrator
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "logitkit_version": _version(),
        "method": method_name(cal.to_dict()),
        "calibrator": cal.to_dict(),
        "n_classes": int(k),
        "input": {"kind": train.kind.name, "reason": train.kind.reason,
                  "zero_floor": train.floor if train.floor > -math.inf else None},
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
        "binning": args.binning,
        **measured(outcome.before, outcome.after, level=args.level,
                   resamples=args.resamples),
    }

    png = None if args.no_diagram else _diagram(outcome, report, title, helper)
    report["diagram"] = DIAGRAM if png is not None else None
    out.mkdir(parents=True, exist_ok=True)
    if png is not None:
        atomic_write(out / DIAGRAM, lambda fh: fh.write(png))
    write_json(out / REPORT, report)
    if png is None and (out / DIAGRAM).is_file():
        # an earlier run's diagram (--force into its folder) would sit beside a report that
        # says "diagram": null and show another fit; it is this command's own file name
        # (checked a file before the work), and nothing else in the folder is touched
        (out / DIAGRAM).unlink()

    for note in report["warnings"]:
        print(f"logitkit: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        print(f"wrote {out / REPORT}" + (f" and {out / DIAGRAM}" if png is not None else ""))
    return 0


def _data_name(given: list[Path], files: list[Path]) -> str:
    """What the diagram's title calls the data: the file, the folder or pattern given, or the
    first file and how many more."""
    if len(given) == 1:
        return given[0].name or str(given[0])
    return files[0].name if len(files) == 1 else f"{files[0].name} and {len(files) - 1} more"


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
        progress: Progress, ready: Callable[..., None] | None = None) -> Outcome:
    """Choose and fit the calibrator on ``train``; measure it where it was not fitted.

    Without ``test`` the "after" figures are the chosen method's out-of-fold predictions from
    the cross-validation that chose it (no refit, no row scored by a calibrator that saw it);
    with ``test`` they are the calibrator, refitted on all of ``train``, on ``test``.
    ``ready(calibrator, before, after, evaluation)`` is called as soon as those figures are
    measured, before the other candidates' (the diagram is drawn meanwhile).
    """
    from ..calibration import SEPARABLE, CalibrationWarning, select

    n = int(train.logits.shape[0])
    methods = "auto" if args.method == "auto" else [args.method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        shape = train.logits.shape  # the class count as fit_data reads it: one column is K = 2
        k = int(shape[1]) if len(shape) == 2 and shape[1] > 1 else 2
        tried = len(candidates_of(methods, n_classes=k))
        with progress.stage(f"cross-validating {_plural(tried, 'method')} over {args.cv} folds",
                            tried * args.cv + 1, unit="fits") as tick:
            sel = select(train.logits, train.y, methods=methods, cv=args.cv,
                         random_state=args.seed, progress=lambda done, total, name: tick(1))
        chosen = sel.best_ if args.method == "auto" else args.method
        row = sel.row(chosen)
        if row["error"] is not None:
            raise CliError(f"--method {chosen}: the fit failed in cross-validation: "
                           f"{row['error']}")
        # the method asked for, although another candidate scored better: refitted on all
        # rows as select refits its choice
        cal = sel.refit(chosen)
    # select's separable warning says it left the logits alone: not so when another method
    # was asked for, whose refit says instead that it was fitted anyway (and what it risks)
    said = list(dict.fromkeys([*row["warnings"], *(
        str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)
        and not (chosen != sel.best_ and str(w.message) == SEPARABLE))]))
    opts = Options.from_args(args)
    # every candidate's out-of-fold figures, from the engine (no refit: each fold's calibrator
    # on the rows it did not see); "none"'s are the model's own figures on these rows.  The
    # before/after figures come first, so that the diagram is drawn while the others are
    # measured.
    figures: dict[str, dict[str, Any]] = {}

    def oof(method: str) -> dict[str, Any]:
        if method not in figures:
            figures[method] = _measure_oof(sel, method, train.logits, train.y, opts)
        return figures[method]

    m = n if test is None else int(test.y.shape[0])
    evaluation = held_out(args, n, m, test is not None)
    if test is not None:
        with progress.stage("measuring on --test", 2 * m) as tick:
            before = measure(test.logits, test.y, opts)
            after = measure(test.logits, test.y, opts, calibrators=[cal])
            tick(2 * m)
        if ready is not None:
            ready(cal, before, after, evaluation)
    with progress.stage(f"measuring {_plural(len(sel.table_), 'method')} out of fold", n) as tick:
        if test is None:
            before, after = oof("none"), oof(chosen)
            if ready is not None:
                ready(cal, before, after, evaluation)
        for r in sel.table_:
            if r["error"] is None:
                oof(r["method"])
        tick(n)
    table = candidates(sel.table_, chosen, figures)
    note = (f"{args.cv}-fold stratified cross-validation, seed {args.seed}; near-ties go to the "
            "simpler method")
    if "stacked" in figures:
        note += "; stacked's figures are nested: each fold's mixture weighted on the other folds"
    fitted = {r["method"] for r in sel.table_}
    left = [m for m in FULL_MAPS if args.method == "auto" and m not in fitted]
    if left:
        note += (f"; above {AUTO_MAX_CLASSES} classes auto leaves out {', '.join(left)} "
                 "(K² parameters, slow): name one with --method to fit it")
    return Outcome(cal, said, before, after, evaluation, table, note)


def _measure_oof(sel: Any, method: str, logits: Any, y: Any, opts: Options) -> dict[str, Any]:
    """A candidate's out-of-fold figures: the model's own for "none" (its calibrator is the
    identity), else each row calibrated by its fold's calibrator from the selection (no
    refit), a block of rows at a time: no ``(N, K)`` float64 copy of the logits is made
    (``sel.oof_logits_`` would be one, 800 MB on 1e6 × 100)."""
    if method == "none":
        return measure(logits, y, opts)
    return measure(logits, y, opts, calibrators=sel.fold_calibrators_[method], folds=sel.folds_)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _is_dask(x: Any) -> bool:
    import array_api_compat

    return bool(array_api_compat.is_dask_array(x))


def _submit_diagram(helper: Helper, name: str, cal: Any, before: dict[str, Any],
                    after: dict[str, Any], evaluation: dict[str, Any], level: float) -> None:
    """Give ``helper`` the reliability diagram of the figures, before and after, titled with
    the data's name and the method."""
    method = describe_calibrator(cal.to_dict(), short=True)
    helper.submit(_png, [before, after], ("before", f"after ({evaluation['kind']})"),
                  level=level, title=f"{name}: calibrated by {method}")


def _diagram(outcome: Outcome, report: dict[str, Any], name: str, helper: Helper
             ) -> bytes | None:
    """The PNG of the reliability diagram (submitted now unless the fit did it), or None with
    a warning without matplotlib."""
    if not helper.submitted:
        _submit_diagram(helper, name, outcome.calibrator, outcome.before, outcome.after,
                        outcome.evaluation, report["intervals"]["level"])
    try:
        return bytes(helper.result())
    except ImportError:
        report["warnings"].append("matplotlib is not installed: no reliability diagram "
                                  "(pip install matplotlib, or pass --no-diagram)")
        return None


def _png(stats: list[dict[str, Any]], titles: tuple[str, ...], *, level: float, title: str
         ) -> bytes:
    """The PNG of :func:`~logitkit.calibration.figure_from_stats`."""
    from ..calibration import figure_from_stats

    fig = figure_from_stats(stats, titles, level=level, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
