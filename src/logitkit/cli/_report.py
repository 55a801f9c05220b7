"""``report.json``: its schema, how ``calibrate`` builds it, how ``apply`` reads it back, and the
table printed from it.

The report is the one place the figures live: ``calibrate`` builds it, writes it, and prints the
table from it (or the report itself with ``--json``), so the table never says anything the
report does not.  ``apply`` reads it back through :func:`load_report`, which checks the schema.

Schema (version 1)::

    schema_version   1
    method           the chosen calibrator, as --method names it ("none": the scores are
                     left as they are; "structured-vector", whose calibrator.method is
                     "structured" with params.form "vector"; earlier reports wrote
                     "structured" there too, and apply reads only calibrator)
    calibrator       what apply needs to rebuild it: Calibrator.to_dict() (method, params,
                     fitted values, class count; restored by Calibrator.from_dict)
    n_classes        K (apply refuses a file with another class count)
    input            {"kind": "logits" | "probs" | "log-probs", "reason": ...,
                      "zero_floor": the log-probability that probabilities of exactly 0 are
                      read as (half the calibration file's least positive probability), or
                      null (logits); apply reads its zeros so}
    converged, at_bound, warnings   the fit's health (apply refuses a bound or no convergence
                                    unless --force, and repeats the warnings)
    evaluation       {"kind": "test" | "cross-fitted", "folds": N or null,
                      "rows": rows measured, "text": what "after" means, in words}
    candidates       every method tried, out of fold: nll, ece, brier, accuracy and their
                     "intervals", fit_seconds, fold_spread, accuracy_change, flagged,
                     converged, at_bound, error, chosen; and
    candidates_note  how they were scored
    before, after    accuracy, nll, ece, mce, rms_ce, brier on the evaluation rows (null: an
                     infinite nll; for mce, not defined: no bin holds mce_min_count rows)
    intervals        {"level", "resamples", "before": {figure: [low, high]}, "after": {...}}
    bins, binning, mce_min_count, mce_excluded_bins, brier_decomposition
    inputs, test_inputs, source, notes, n_samples, diagram, logitkit_version

Every figure is computed by the measurement engine (:mod:`._measure`); this module only
arranges them, so adding a column is a change here and nowhere else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._io import CliError

SCHEMA_VERSION = 1
METRICS = (("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE"), ("mce", "MCE"),
           ("rms_ce", "RMS CE"), ("brier", "Brier"))
#: The figures whose plug-in estimate is biased upward by the noise of its bins.
BINNED_ERRORS = ("ece", "mce", "rms_ce")
CANDIDATE_COLUMNS = (("nll", "NLL"), ("ece", "ECE"), ("brier", "Brier"),
                     ("accuracy", "accuracy"))


def clean(v: Any) -> float | None:
    """A JSON number: ``None`` for ±inf and NaN (JSON has neither)."""
    v = float(v)
    return v if math.isfinite(v) else None


def figures(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The report's figures from a ``CalibrationStats.compute()`` dict."""
    return {key: clean(metrics[key]) for key, _ in METRICS}


def intervals(metrics: dict[str, Any]) -> dict[str, list[float | None]]:
    """Their intervals, ``{figure: [low, high]}`` (empty without resamples)."""
    found = metrics.get("intervals") or {}
    return {key: [clean(v) for v in found[key]] for key, _ in METRICS if key in found}


def measured(before: dict[str, Any], after: dict[str, Any], *, level: float, resamples: int
             ) -> dict[str, Any]:
    """The report's figures of both sides (one place, so the table and the JSON agree)."""
    return {
        "before": figures(before),
        "after": figures(after),
        "intervals": {"level": level, "resamples": resamples,
                      "before": intervals(before), "after": intervals(after)},
        "bins": int(len(before["bin_edges"]) - 1),
        "mce_min_count": int(before["mce_min_count"]),
        "mce_excluded_bins": {"before": before["mce_excluded_bins"],
                              "after": after["mce_excluded_bins"]},
        "brier_decomposition": {"before": _clean_dict(before["brier_decomposition"]),
                                "after": _clean_dict(after["brier_decomposition"])},
    }


def _clean_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (clean(v) if isinstance(v, (int, float)) else v) for k, v in d.items()}


def candidates(table: list[dict[str, Any]], chosen: str,
               measured: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's candidate rows: ``Selection.table_``'s fits, their figures (and intervals)
    from the engine's ``measured[method]``, ``chosen`` marked."""
    rows = []
    for r in table:
        m = measured.get(r["method"])
        rows.append({
            "method": r["method"],
            **{key: clean(m[key] if m is not None else math.nan)
               for key, _ in CANDIDATE_COLUMNS},
            "intervals": {} if m is None else {
                key: v for key, v in intervals(m).items()
                if key in dict(CANDIDATE_COLUMNS)},
            "fit_seconds": clean(r["fit_time"]),
            "fold_spread": clean(r["fold_spread"]),
            "accuracy_change": clean(r["accuracy_change"]),
            "flagged": bool(r["flagged"]),
            "converged": bool(r["converged"]),
            "at_bound": bool(r.get("at_bound", False)),
            "error": r["error"],
            "chosen": r["method"] == chosen,
        })
    return rows


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


def _fmt(v: float | None, missing: str = "inf") -> str:
    return missing if v is None else f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


#: How a figure that JSON holds as null reads in the table: the NLL is null when it is
#: infinite; the MCE (bounded by 1) only when no bin holds ``mce_min_count`` predictions, where
#: it is not defined (the table printed "inf [inf, inf]" there).
UNDEFINED = {"mce": "n/a"}


def _with_interval(v: float | None, ci: list[float | None] | None, key: str = "") -> str:
    """``value [low, high]``."""
    missing = UNDEFINED.get(key, "inf")
    if not ci or (v is None and missing != "inf"):
        return _fmt(v, missing)
    return f"{_fmt(v, missing)} [{_fmt(ci[0], missing)}, {_fmt(ci[1], missing)}]"


def _with_spread(v: float | None, ci: list[float | None] | None) -> str:
    """``value ±h``, h half the interval's width (the candidates' compact form)."""
    if not ci or v is None or None in ci:
        return _fmt(v)
    half = (ci[1] - ci[0]) / 2  # type: ignore[operator]
    return f"{_fmt(v)} ±{half:.3f}" if half < 1 else f"{_fmt(v)} ±{half:.3g}"


def render(report: dict[str, Any]) -> str:
    """The text the command prints: what was read, what "after" means, the candidates, the
    figures; every figure with its interval."""
    ci = report["intervals"]
    level = f"{100 * ci['level']:g}%"
    lines = [f"logitkit calibrate: {report['source']}",
             f"input: {report['input']['kind']} ({report['input']['reason']})",
             f"after: {report['evaluation']['text']}"]
    candidates = report.get("candidates") or []
    if candidates:
        lines.append("")
        lines.append(f"{'method':18}" + "".join(f"{name:>16}" for _, name in
                                                CANDIDATE_COLUMNS) + f"{'fit s':>8}")
        for c in candidates:
            if c["error"] is not None:
                cells = ["-"] * 4 + ["-"]
            else:
                cells = [_with_spread(c[key], c["intervals"].get(key))
                         for key, _ in CANDIDATE_COLUMNS] + [f"{c['fit_seconds']:.3f}"]
            lines.append(f"{c['method']:18}" + "".join(f"{v:>16}" for v in cells[:4])
                         + f"{cells[4]:>8}" + _remark(c))
        spread = f"; ± half the {level} interval" if ci["resamples"] else ""
        lines.append(f"(out of fold on the calibration rows: {report['candidates_note']}"
                     f"{spread})")
    lines.append("")
    lines.append(f"chosen: {describe_calibrator(report['calibrator'])}")
    head = f"before ({level} interval)" if ci["resamples"] else "before"
    lines.append(f"{'':10}{head:>28}{'after':>28}")
    b, a = report["before"], report["after"]
    for key, name in METRICS:
        lines.append(f"{name:10}{_with_interval(b[key], ci['before'].get(key), key):>28}"
                     f"{_with_interval(a[key], ci['after'].get(key), key):>28}")
    if report["mce_excluded_bins"]["before"] or report["mce_excluded_bins"]["after"]:
        lines.append(f"(MCE over the bins of at least {report['mce_min_count']} predictions)")
    high = [name for key, name in METRICS if key in BINNED_ERRORS
            and (_above(b[key], ci["before"].get(key)) or _above(a[key], ci["after"].get(key)))]
    if high:
        # the percentile interval of an upward-biased figure lies mostly or wholly above it
        # (bootstrap's Note): right by its definition, but a reader takes it for a mistake
        # unless told why
        lines.append(f"({', '.join(high)}: intervals mostly above their figures; a binned "
                     "error is biased upward\n where its bins hold few rows, and each bootstrap "
                     "replicate is biased again)")
    return "\n".join(lines)


def _above(v: float | None, ci: list[float | None] | None) -> bool:
    """Whether a figure lies below the lower quarter of its interval (or below it)."""
    if not ci or v is None or None in ci:
        return False
    low, high = ci
    return v < low + (high - low) / 4  # type: ignore[operator]


def _remark(c: dict[str, Any]) -> str:
    if c["error"] is not None:
        return f"  failed: {c['error']}"
    notes = ["<- chosen"] if c["chosen"] else []
    if c["flagged"] and c["accuracy_change"] is not None:
        notes.append(f"accuracy {100 * c['accuracy_change']:+.1f} points")
    if not c["converged"]:
        notes.append("did not converge")
    if c["at_bound"]:
        notes.append("at a bound (separable?)")
    return "  " + ", ".join(notes) if notes else ""


_METHODS = {
    "vector": "a scale and a bias per class; Platt scaling for two classes",
    "structured-vector": "structured vector scaling, Berta et al. 2026",
    "structured": "structured matrix scaling, Berta et al. 2026",
    "dirichlet": "Dirichlet calibration, Kull et al. 2019",
    "matrix": "a full matrix and bias on the logits",
    "beta": "beta calibration one-vs-rest, Kull et al. 2017",
    "isotonic": "isotonic regression one-vs-rest",
    "histogram": "histogram binning one-vs-rest",
}


def method_name(cal: dict[str, Any]) -> str:
    """The method's name as ``--method`` and the candidates table spell it, from a
    calibrator's ``to_dict()``: ``StructuredScaler(form="vector")`` saves itself as method
    "structured" with ``params.form`` "vector" (the library's format, which ``from_dict``
    reads and reports of every version hold), and is "structured-vector" to a reader."""
    method = str(cal["method"])
    params = cal.get("params")
    if method == "structured" and isinstance(params, dict) and params.get("form") == "vector":
        return "structured-vector"
    return method


def describe_calibrator(cal: dict[str, Any], *, short: bool = False) -> str:
    """The chosen calibrator in a few words (``cal``: its ``to_dict()``); ``short`` for a
    title."""
    method = method_name(cal)
    t = cal.get("fitted", {}).get("temperature_")
    if method == "temperature" and isinstance(t, (int, float)):
        return f"temperature, T = {t:.3g}" if short else f"temperature (T = {t:.4g})"
    if short:
        return method
    if method == "none":
        return "none (the scores are left as they are)"
    if method == "stacked":
        fitted = cal.get("fitted", {})
        parts = ", ".join(f"{m} {w:.2f}" for m, w in zip(fitted.get("methods_", []),
                                                          fitted.get("weights_", []),
                                                          strict=False))
        return f"stacked (a mixture weighted by held-out likelihood: {parts})"
    return f"{method} ({_METHODS[method]})" if method in _METHODS else method


# --------------------------------------------------------------------------------------------
# reading it back
# --------------------------------------------------------------------------------------------


def load_report(path: Path) -> dict[str, Any]:
    """A report written by ``logitkit calibrate``, checked enough for ``apply`` to trust it."""
    from ._io import check_input_file

    check_input_file(path, "--report", predictions=False)
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CliError(f"--report {path}: not a JSON report ({str(exc).splitlines()[0]})"
                       ) from None
    if not isinstance(report, dict):
        raise CliError(f"--report {path}: not a report of `logitkit calibrate` (a JSON "
                       f"{type(report).__name__}, expected an object)")
    version = report.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # true and 1.0 are not 1
        what = "has no schema_version" if version is None else f"has schema_version {version!r}"
        raise CliError(f"--report {path}: {what}; this logitkit reads version "
                       f"{SCHEMA_VERSION}: run `logitkit calibrate` again to write one")
    problems = []
    cal = report.get("calibrator")
    if not (isinstance(cal, dict) and isinstance(cal.get("method"), str)
            and isinstance(cal.get("params"), dict)):
        problems.append("'calibrator' (an object with 'method' and 'params')")
    k = report.get("n_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        problems.append("'n_classes' (an integer ≥ 2)")
    elif isinstance(cal, dict) and cal.get("n_classes", k) != k:
        problems.append(f"'calibrator.n_classes' ({k}, the report's n_classes; got "
                        f"{cal['n_classes']!r})")
    kind = report.get("input")
    if not (isinstance(kind, dict) and kind.get("kind") in ("logits", "probs", "log-probs")):
        problems.append("'input' (with 'kind' logits, probs or log-probs)")
    elif not (kind.get("zero_floor") is None or (
            isinstance(kind["zero_floor"], (int, float)) and not isinstance(kind["zero_floor"], bool)
            and kind["zero_floor"] < 0)):
        problems.append("'input.zero_floor' (a negative number or null)")
    for key in ("converged", "at_bound"):
        if not isinstance(report.get(key), bool):
            problems.append(f"{key!r} (true or false)")
    if not (isinstance(report.get("warnings"), list)
            and all(isinstance(w, str) for w in report["warnings"])):
        problems.append("'warnings' (a list of strings)")
    if problems:
        raise CliError(f"--report {path}: missing or malformed {', '.join(problems)}")
    return report
