"""``logitkit calibrate``: fit a temperature, report before/after metrics, draw the diagram."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._io import FORMATS, CliError, Columns, read_labels, read_predictions, write_json
from ._io import atomic_write as atomic_write

DEFAULT_OUT = "logitkit-calibration"
REPORT = "report.json"
DIAGRAM = "reliability.png"
LONG_INPUT = 5_000_000  # logits entries from which the progress bar shows (on a terminal)
_EVAL_CHUNK = 1 << 20  # logits entries per evaluation chunk

METRICS = (("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE"), ("mce", "MCE"),
           ("rms_ce", "RMS CE"), ("brier", "Brier"))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_column_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logits-key", default="logits", metavar="NAME",
                   help="array name of the logits in .npz/.pt files (default: logits)")
    p.add_argument("--labels-key", default="labels", metavar="NAME",
                   help="array name of the labels in .npz/.pt files (default: labels)")
    p.add_argument("--label-column", default="label", metavar="NAME",
                   help="label column of .csv/.parquet files (default: label; a .csv without "
                        "header has the label first)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help=f"predictions ({', '.join(FORMATS)}), folders of them or glob patterns "
                        "(quoted); several files are concatenated. Without a file, runs a "
                        "built-in demo.")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="labels for a logits-only input (.npy, .npz, .csv, .parquet, .pt)")
    add_column_options(p)
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
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr: auto = long inputs on a terminal")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster (e.g. tcp://host:8786): its workers read the "
                        "files, one block each, and the fit and metrics are map-reduces there")
    p.set_defaults(_run=run)


# --------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from ._scheduler import expand_inputs

    files = expand_inputs(args.files)
    if args.scheduler is not None:
        from ._scheduler import load_on_cluster

        return load_on_cluster(args, files)
    cols = Columns(label_column=args.label_column, logits_key=args.logits_key,
                   labels_key=args.labels_key)
    if args.labels is not None and len(files) > 1:
        raise CliError("--labels works with one input file; give each file its labels instead")
    parts, labels = [], []
    for path in files:
        pred = read_predictions(path, cols, need_labels=args.labels is None)
        lab = pred.labels
        if args.labels is not None:
            lab = read_labels(args.labels, cols)
        if lab is None:
            raise CliError(f"{path}: no labels found; pass --labels FILE (or store them as "
                           f"'{cols.labels_key}' / a '{cols.label_column}' column)")
        if lab.shape[0] != pred.logits.shape[0]:
            src = args.labels if args.labels is not None else path
            raise CliError(f"{src}: {lab.shape[0]} labels for {pred.logits.shape[0]} rows of "
                           "logits")
        parts.append(pred.logits)
        labels.append(lab)
    widths = {p.shape[1] for p in parts}
    if len(widths) > 1:
        raise CliError(f"the input files have different numbers of classes: {sorted(widths)}")
    logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
    y = labels[0] if len(labels) == 1 else np.concatenate(labels)
    if logits.shape[1] == 1:  # one binary logit per row: the logits [0, z]
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    k = logits.shape[1]
    if y.min() < 0 or y.max() >= k:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise CliError(f"label {bad} is out of range for {k} classes (labels must be in "
                       f"0..{k - 1})")
    return logits, y, [str(p) for p in files]


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is None:
        candidate, i = Path(DEFAULT_OUT), 1
        while candidate.exists():
            i += 1
            candidate = Path(f"{DEFAULT_OUT}-{i}")
        return candidate
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder")
    if out.exists() and not args.force:
        raise CliError(f"{out}: the output folder exists; pass --force to replace its "
                       f"{REPORT} and {DIAGRAM}, or choose another --out")
    return out


def evaluate(logits: np.ndarray, y: np.ndarray, temperature: float, n_bins: int,
             binning: str, progress: Any = None) -> dict[str, Any]:
    """Metrics of ``softmax(logits / T)`` in chunks: O(chunk + bins) memory beyond the input."""
    import array_api_compat

    if array_api_compat.is_dask_array(logits):
        from ._scheduler import evaluate_on_cluster

        return evaluate_on_cluster(logits, y, temperature, n_bins, binning)
    from .. import cross_entropy, softmax
    from ..calibration import CalibrationStats
    from ..calibration._binning import edges_of

    n, k = logits.shape
    rows = max(1, _EVAL_CHUNK // k)

    def probs(start: int) -> np.ndarray:
        return softmax(logits[start:start + rows].astype(np.float64), axis=1,
                       temperature=temperature)

    if binning == "quantile":
        conf = np.concatenate([probs(s).max(axis=1) for s in range(0, n, rows)])
        stats = CalibrationStats(edges=np.unique(edges_of(conf, n_bins, "quantile")))
    else:
        stats = CalibrationStats(n_bins=n_bins)
    nll_sum = 0.0
    for start in range(0, n, rows):
        chunk = logits[start:start + rows]
        yc = y[start:start + rows]
        stats.update(softmax(chunk.astype(np.float64), axis=1, temperature=temperature), yc)
        # the NLL from the logits: exact where log(softmax) would underflow
        nll_sum += float(cross_entropy(chunk.astype(np.float64), yc, temperature=temperature,
                                       reduction="sum"))
        if progress is not None:
            progress(len(yc))
    out = stats.compute()
    out["nll"] = nll_sum / n  # from the logits: exact where log(softmax) would underflow
    return out


def _clean(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _table(report: dict[str, Any]) -> str:
    b, a = report["before"], report["after"]
    lines = [f"{'':10}{'before':>12}{'after':>12}"]
    for key, name in METRICS:
        lines.append(f"{name:10}{_fmt(b[key]):>12}{_fmt(a[key]):>12}")
    lines.append(f"{'T':10}{_fmt(1.0):>12}{_fmt(report['temperature']):>12}")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "inf" if v is None else f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


class _Progress:
    """A tqdm bar over the rows of each pass (``desc`` names the pass)."""

    def __init__(self, n: int, mode: str, long_input: bool, desc: str = "fitting T") -> None:
        self.n = n
        self.done = 0
        self.passes = 1
        self.desc = desc
        self.bar = None
        if mode == "never" or (mode == "auto" and not (long_input and sys.stderr.isatty())):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the cli extra
            return
        self.bar = tqdm(total=n, unit="rows", desc=f"{desc}, pass 1", file=sys.stderr,
                        leave=False, dynamic_ncols=True)

    def __call__(self, rows: int) -> None:
        if self.bar is None:
            return
        if self.done >= self.n:
            self.passes += 1
            self.done = 0
            self.bar.reset(total=self.n)
            self.bar.set_description(f"{self.desc}, pass {self.passes}")
        self.done += rows
        self.bar.update(rows)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    if args.files and args.scheduler is not None:
        from ._scheduler import on_cluster

        with on_cluster(args.scheduler):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..calibration import CalibrationWarning, TemperatureScaler
    from ..calibration._diagram import figure_from_stats

    if args.files:
        logits, y, inputs = _load(args)
        fit_logits, fit_y, test_logits, test_y = logits, y, logits, y
        source = ", ".join(inputs)
        split = "in-sample (T fitted and measured on the same data)"
    else:
        if args.labels is not None:
            raise CliError("--labels needs an input file")
        from ._demo import make_demo

        demo = make_demo()
        fit_logits, fit_y = demo.calib_logits, demo.calib_labels
        test_logits, test_y = demo.test_logits, demo.test_labels
        inputs, source = [], demo.description
        split = "held out (T fitted on a calibration split, measured on a test split)"
    out = _out_dir(args)

    n, k = fit_logits.shape
    progress = _Progress(n, args.progress, n * k >= LONG_INPUT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        try:
            scaler = TemperatureScaler().fit(fit_logits, fit_y, progress=progress)
        finally:
            progress.close()
    notes = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    t = scaler.temperature_
    n_test = int(test_logits.shape[0])
    progress = _Progress(n_test, args.progress, n_test * k >= LONG_INPUT, "measuring")
    try:
        before = evaluate(test_logits, test_y, 1.0, args.bins, args.binning, progress)
        after = evaluate(test_logits, test_y, t, args.bins, args.binning, progress)
    finally:
        progress.close()

    keys = [key for key, _ in METRICS]
    report = {
        "temperature": t,
        "converged": scaler.converged_,
        "n_iter": scaler.n_iter_,
        "at_bound": scaler.at_bound_,
        "warnings": notes,
        "inputs": inputs,
        "source": source,
        "evaluation": split,
        "n_samples": int(test_logits.shape[0]),
        "n_classes": int(k),
        "bins": args.bins,
        "binning": args.binning,
        "before": {key: _clean(before[key]) for key in keys},
        "after": {key: _clean(after[key]) for key in keys},
    }

    png = None
    if not args.no_diagram:
        try:
            fig = figure_from_stats([before, after], ("before (T = 1)", f"after (T = {t:.3g})"))
        except ImportError:
            notes.append("matplotlib is not installed: no reliability diagram "
                         "(pip install matplotlib, or pass --no-diagram)")
        else:
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            png = buf.getvalue()
    report["diagram"] = DIAGRAM if png is not None else None
    out.mkdir(parents=True, exist_ok=True)
    if png is not None:
        atomic_write(out / DIAGRAM, lambda fh: fh.write(png))
    write_json(out / REPORT, report)

    for note in notes:
        print(f"logitkit: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"logitkit calibrate: {source}")
        print(f"metrics {split}")
        print(_table(report))
        print(f"wrote {out / REPORT}" + (f" and {out / DIAGRAM}" if png is not None else ""))
    return 0
