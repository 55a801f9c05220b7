"""The one reader of predictions, for ``calibrate`` and ``apply`` alike, and atomic writes.

``read_inputs`` turns the files a user names (``.npz``, ``.npy`` + labels, ``.csv``,
``.parquet``, ``.pt``, folders of them and glob patterns) into one ``(scores, labels)`` pair.
Both commands call it, so a file is read the same way whichever command reads it; every decision
the reader takes on the user's behalf (a dropped pandas index, the label column of a headerless
CSV) comes back as a note that the command prints.

Tables (``.csv`` and ``.parquet``) are read by one layout rule, decided by the file and the column
options only, never by the command:

1. An unnamed first column that counts 0, 1, 2, … (the index ``pandas.DataFrame.to_csv`` writes
   by default; in a file without header, a first column of consecutive integers in a file with
   more rows than columns) is dropped, with a note.  Parquet files drop the columns pandas'
   metadata names as the index.
2. The label column is ``--label-column`` when given (it must exist), else a column named
   ``label``.  In a CSV without header, columns are named by their position (``0``, ``1``, …) and
   the first one is the label when every value in it is an integer class index that the other
   columns could hold (0 ≤ value < number of other columns); otherwise the file has no labels.
3. The score columns are ``--logit-columns`` (names separated by commas, or one prefix: every
   column whose name starts with it) when given, else every remaining column.

A CSV's first line is its header unless every field in it is a number; a first line that reads
``0,1,…,W-1`` (the column names pandas gives a frame made from an array) is a header too.

Every problem with the user's files is raised as :class:`CliError`, whose message is the one line
the command prints: it names what was found (keys, columns) and the option that selects another.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = (".npz", ".npy", ".csv", ".parquet", ".pt")
_PATTERN = "*?["
_SHOWN = 8  # names listed in a message before "…"


class CliError(Exception):
    """A user error: the message is printed as one line and the command exits with status 2."""


@dataclass
class Columns:
    """Where the scores and labels are inside a file (the reader's options)."""

    label_column: str | None = None  # None: a column named "label" (see the module docstring)
    logit_columns: str | None = None  # "a,b,c" or a prefix; None: every other column
    logits_key: str = "logits"
    labels_key: str = "labels"

    @classmethod
    def from_args(cls, args: Any) -> Columns:
        return cls(label_column=args.label_column, logit_columns=args.logit_columns,
                   logits_key=args.logits_key, labels_key=args.labels_key)


@dataclass
class Predictions:
    """What one file (or several, concatenated) holds."""

    scores: np.ndarray  # (N, K) floating: logits, probabilities or log-probabilities
    labels: np.ndarray | None  # (N,) int64
    notes: list[str] = field(default_factory=list)
    found: str = ""  # what the file holds, for error messages ("arrays: a, b" / "columns: …")


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(str(n)) for n in names[:_SHOWN])
    return (shown + f", … ({len(names)} in all)") if len(names) > _SHOWN else (shown or "none")


def check_input_file(path: Path, option: str = "", *, predictions: bool = True) -> None:
    """A readable, non-empty file (of a prediction format, with ``predictions``); anything else
    is a one-line :class:`CliError`."""
    where = f"{option} {path}" if option else str(path)
    if predictions and path.suffix.lower() not in FORMATS:
        raise CliError(f"{where}: unsupported file type {path.suffix.lower() or '(none)'!r}; "
                       f"expected one of {', '.join(FORMATS)}")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CliError(f"{where}: no such file") from None
    except NotADirectoryError:
        raise CliError(f"{where}: no such file ({_file_in_path(path)} is a file, not a "
                       "folder)") from None
    except OSError as exc:
        raise CliError(f"{where}: cannot read it ({exc.strerror})") from None
    if path.is_dir():
        raise CliError(f"{where}: is a folder, expected a file")
    if st.st_size == 0:
        raise CliError(f"{where}: the file is empty")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CliError(f"{where}: cannot read it ({exc.strerror})") from None


def _file_in_path(path: Path) -> Path:
    """The first ancestor of ``path`` that exists and is not a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path


def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")  # pragma: no cover - the root always exists


def _probe_writable(folder: Path, label: str, *, make_folder: bool) -> None:
    """Create and remove a file (or folder) in ``folder``: the only test root cannot fool."""
    try:
        if make_folder:
            os.rmdir(tempfile.mkdtemp(prefix=".logitkit-probe-", dir=folder))
        else:
            fd, tmp = tempfile.mkstemp(prefix=".logitkit-probe-", dir=folder)
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise CliError(f"{label}: cannot write in {folder} ({exc.strerror})") from None


def check_output_folder(out: Path, *, force: bool, replaces: Sequence[str]) -> None:
    """``out`` can be created or written, before any work starts.

    An existing folder needs ``force`` (its ``replaces`` files are replaced, nothing else is
    touched); a missing one is created later, with its parents, so its nearest existing ancestor
    must be a writable folder.
    """
    if out.exists():
        if not out.is_dir():
            raise CliError(f"--out {out}: exists and is not a folder")
        if not force:
            raise CliError(f"--out {out}: the output folder exists; pass --force to replace its "
                           f"{' and '.join(replaces)}, or choose another --out")
        _probe_writable(out, f"--out {out}", make_folder=False)
        return
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise CliError(f"--out {out}: {base} is a file, not a folder")
    _probe_writable(base, f"--out {out}", make_folder=True)


def check_output_file(out: Path, *, force: bool, suffixes: Sequence[str]) -> None:
    """``out`` is a file that can be written: right type, folder exists, no clobbering."""
    if out.suffix.lower() not in suffixes:
        raise CliError(f"--out {out}: unsupported output type {out.suffix or '(none)'!r}; use "
                       f"{' or '.join(suffixes)}")
    if out.is_dir():
        raise CliError(f"--out {out}: is a folder, expected a file name")
    if out.exists() and not force:
        raise CliError(f"--out {out}: exists; pass --force to replace it")
    parent = out.parent
    if not parent.exists():
        base = _existing_ancestor(parent)
        if not base.is_dir():
            raise CliError(f"--out {out}: {base} is a file, not a folder")
        raise CliError(f"--out {out}: no such folder {parent}")
    if not parent.is_dir():
        raise CliError(f"--out {out}: {parent} is a file, not a folder")
    _probe_writable(parent, f"--out {out}", make_folder=False)


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder becomes its prediction files, a glob pattern its matches.

    Both expansions are sorted by name, so shard order (and the result) is reproducible.  Every
    file is checked (exists, is a readable non-empty file of a known type) before any is read.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in FORMATS)
            if not found:
                raise CliError(f"{path}: no prediction files ({', '.join(FORMATS)}) in this "
                               "folder")
            out.extend(found)
        elif not path.exists() and any(c in str(path) for c in _PATTERN):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                           if Path(p).is_file())
            if not found:
                raise CliError(f"{path}: no file matches this pattern")
            out.extend(found)
        else:
            out.append(path)
    for path in out:
        check_input_file(path)
    return out


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CliError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of "
                       f"{', '.join(FORMATS)}")
    return suffix


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_inputs(paths: Sequence[Path], cols: Columns, labels: Path | None = None
                ) -> Predictions:
    """Scores and labels of several files (already expanded), concatenated in order.

    With ``labels`` (one input file only) the labels come from that file instead.
    """
    if labels is not None and len(paths) > 1:
        raise CliError("--labels works with one input file; give each file its labels instead")
    parts = [read_predictions(p, cols, labels) for p in paths]
    widths = sorted({p.scores.shape[1] for p in parts})
    if len(widths) > 1:
        raise CliError(f"the input files have different numbers of columns: {widths}")
    have = [p.labels is not None for p in parts]
    if any(have) and not all(have):
        missing = paths[have.index(False)]
        raise CliError(f"{missing}: no labels found, but other input files have them")
    notes = [note for p in parts for note in p.notes]
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([p.scores for p in parts])
    y = np.concatenate([p.labels for p in parts]) if all(have) else None
    return Predictions(scores, y, notes, parts[0].found)


def read_predictions(path: Path, cols: Columns, labels: Path | None = None) -> Predictions:
    """Scores (and labels, when the file or ``labels`` has them) from one file."""
    suffix = _suffix(path)
    try:
        if suffix == ".npz":
            pred = _read_npz(path, cols)
        elif suffix == ".npy":
            pred = Predictions(_load_npy(path), None, found="one array")
        elif suffix == ".csv":
            pred = _from_table(path, *_read_csv(path), cols)
        elif suffix == ".parquet":
            pred = _from_table(path, *_read_parquet(path), cols)
        else:
            pred = _read_pt(path, cols)
    except (CliError, MemoryError):
        raise
    except Exception as exc:  # any parser failure on a corrupt file is the file's problem
        raise CliError(f"{path}: cannot read it as {suffix[1:]} ({_first_line(exc)})") from None
    pred.scores = check_scores(pred.scores, path)
    if labels is not None:
        pred.labels = read_labels(labels, cols)
        source = labels
    else:
        source = path
    if pred.labels is not None and pred.labels.shape[0] != pred.scores.shape[0]:
        raise CliError(f"{source}: {pred.labels.shape[0]} labels for {pred.scores.shape[0]} "
                       "rows of scores")
    return pred


def missing_labels(path: Path | str, pred: Predictions, cols: Columns,
                   option: str = "--labels") -> CliError:
    """The error for a file without labels where labels are needed: what was found, what to do
    (``option``: the flag that gives this file its labels, ``--labels`` or ``--test-labels``)."""
    if pred.found.startswith("columns"):
        hint = f"name the label column with --label-column, or pass {option} FILE"
    elif pred.found.startswith(("arrays", "entries")):
        hint = f"name the labels with --labels-key (looked for {cols.labels_key!r}), or pass " \
               f"{option} FILE"
    else:
        hint = f"pass {option} FILE"
    return CliError(f"{path}: no labels found ({pred.found}); {hint}")


def read_labels(path: Path, cols: Columns) -> np.ndarray:
    """A 1-D label array from ``.npy``, ``.npz`` (``--labels-key``, or its only array),
    ``.csv``/``.parquet`` (the label column, or the only column), or ``.pt``."""
    check_input_file(path, "--labels")
    suffix = _suffix(path)
    arr: Any
    try:
        if suffix == ".npy":
            arr = _load_npy(path)
        elif suffix == ".npz":
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
                key = cols.labels_key if cols.labels_key in data.files else (
                    data.files[0] if len(data.files) == 1 else None)
                if key is None:
                    raise CliError(f"{path}: no array named {cols.labels_key!r} (arrays: "
                                   f"{_listing(data.files)}); use --labels-key")
                arr = data[key]
        elif suffix in (".csv", ".parquet"):
            names, table, notes = _read_csv(path) if suffix == ".csv" else _read_parquet(path)
            names, table, _ = _drop_index(path, names, table, notes)
            if table.shape[1] == 1:
                arr = table[:, 0]
            else:
                j = _label_index(path, names, table, cols)
                if j is None:
                    raise CliError(f"{path}: expected one column of labels or a label column "
                                   f"(columns: {_listing(names)}); use --label-column")
                arr = table[:, j]
        else:
            obj = _torch_load(path)
            if isinstance(obj, dict):
                if cols.labels_key not in obj:
                    raise CliError(f"{path}: no entry named {cols.labels_key!r} (entries: "
                                   f"{_listing(list(map(str, obj)))}); use --labels-key")
                obj = obj[cols.labels_key]
            arr = _tensor_to_numpy(obj)
    except (CliError, MemoryError):
        raise
    except Exception as exc:
        raise CliError(f"{path}: cannot read it as {suffix[1:]} ({_first_line(exc)})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise CliError(f"{path}: expected a 1-D array of labels, got shape {arr.shape}")
    return as_labels(arr, path)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


def _load_npy(path: Path) -> np.ndarray:
    # Through our own handle: np.load leaves its file open when the content is corrupt.
    with open(path, "rb") as fh:
        return np.load(fh, allow_pickle=False)


def _read_npz(path: Path, cols: Columns) -> Predictions:
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
        found = f"arrays: {_listing(data.files)}"
        if cols.logits_key not in data.files:
            raise CliError(f"{path}: no array named {cols.logits_key!r} ({found}); use "
                           "--logits-key")
        scores = data[cols.logits_key]
        labels = data[cols.labels_key] if cols.labels_key in data.files else None
    return Predictions(scores, None if labels is None else as_labels(np.asarray(labels), path),
                       found=found)


# ------------------------------------------------------------------------------ tables


def _read_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Column names (positions ``0``, ``1``, … without a header), the numbers, and notes."""
    notes: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise CliError(f"{path}: the file has no rows")
    fields = [c.strip() for c in next(csv.reader([lines[first]]))]
    header = _as_numbers(fields) is None or _is_position_header(fields)
    if header:
        if _as_numbers(fields) is not None:
            notes.append(f"{path}: the first line {','.join(fields)} read as the column names "
                         "(pandas' names for the columns of an array), not as data")
        names = fields
        text = "".join(lines[first + 1:])
    else:
        names = [str(j) for j in range(len(fields))]
    del lines
    if not text.strip():
        raise CliError(f"{path}: the file has a header but no data rows")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2,
                           quotechar='"')
    except ValueError as exc:
        msg = _first_line(exc)
        if "number of columns changed" in msg:
            raise CliError(f"{path}: rows have different numbers of fields ({msg})") from None
        raise CliError(f"{path}: non-numeric value ({msg})") from None
    if table.shape[1] != len(names):
        raise CliError(f"{path}: the header has {len(names)} names for {table.shape[1]} "
                       "columns")
    return names, table, notes


def _as_numbers(fields: Sequence[str]) -> list[float] | None:
    try:
        return [float(c) for c in fields]
    except ValueError:
        return None


def _is_position_header(fields: Sequence[str]) -> bool:
    return len(fields) > 1 and list(fields) == [str(j) for j in range(len(fields))]


def _read_parquet(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    names = [str(n) for n in table.column_names]
    notes: list[str] = []
    meta = table.schema.metadata or {}
    index_cols: list[str] = []
    if b"pandas" in meta:
        try:
            index_cols = [c for c in json.loads(meta[b"pandas"]).get("index_columns", [])
                          if isinstance(c, str)]
        except ValueError:
            index_cols = []
    if index_cols:
        notes.append(f"{path}: dropped the index column {_listing(index_cols)} that pandas "
                     "stored with the table")
    keep = [n for n in names if n not in index_cols]
    if table.num_rows == 0 or not keep:
        raise CliError(f"{path}: the table has no rows")
    columns = []
    for name in keep:
        col = table.column(name).to_numpy()
        if col.dtype.kind not in "biuf":
            raise CliError(f"{path}: column {name!r} is not numeric ({col.dtype}); choose the "
                           "score columns with --logit-columns")
        columns.append(col.astype(np.float64))
    return keep, np.stack(columns, axis=1), notes


def _drop_index(path: Path, names: list[str], table: np.ndarray, notes: list[str]
                ) -> tuple[list[str], np.ndarray, list[str]]:
    """Drop an unnamed first column that counts 0, 1, 2, … (a pandas index)."""
    n, width = table.shape
    headerless = names == [str(j) for j in range(width)]
    unnamed = names[0] in ("", "Unnamed: 0") or (headerless and n > width)
    col = table[:, 0]
    counts = (width > 1 and unnamed and col[0] == np.round(col[0])
              and bool(np.all(np.diff(col) == 1)))
    if not counts:
        return names, table, notes
    notes = [*notes, f"{path}: dropped the first column (unnamed, counting {col[0]:.0f}, "
                     f"{col[0] + 1:.0f}, …: a pandas index; write the file with index=False to "
                     "leave it out)"]
    rest = names[1:]
    if headerless:
        rest = [str(j) for j in range(width - 1)]
    return rest, table[:, 1:], notes


def _label_index(path: Path, names: list[str], table: np.ndarray, cols: Columns
                 ) -> int | None:
    """Where the label column is (see the module docstring), or None."""
    if cols.label_column is not None:
        if cols.label_column not in names:
            raise CliError(f"{path}: no column named {cols.label_column!r} (columns: "
                           f"{_listing(names)}); use --label-column")
        return names.index(cols.label_column)
    if "label" in names:
        return names.index("label")
    width = table.shape[1]
    if names == [str(j) for j in range(width)] and width > 1 and (
            cols.logit_columns is None or "0" not in _split_list(cols.logit_columns)):
        col = table[:, 0]
        if bool(np.all(col == np.round(col))) and col.min() >= 0 and col.max() < width - 1:
            return 0
    return None


def _split_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _score_indices(path: Path, names: list[str], label: int | None, cols: Columns
                   ) -> list[int]:
    if cols.logit_columns is None:
        return [j for j in range(len(names)) if j != label]
    wanted = _split_list(cols.logit_columns)
    if not wanted:
        raise CliError(f"--logit-columns: expected column names or a prefix, got "
                       f"{cols.logit_columns!r}")
    if len(wanted) == 1 and wanted[0] not in names:
        prefix = wanted[0].rstrip("*")
        picked = [j for j, n in enumerate(names) if n.startswith(prefix) and j != label]
        if not picked:
            raise CliError(f"{path}: no column named or starting with {prefix!r} (columns: "
                           f"{_listing(names)}); use --logit-columns")
        return picked
    missing = [w for w in wanted if w not in names]
    if missing:
        raise CliError(f"{path}: no column named {_listing(missing)} (columns: "
                       f"{_listing(names)}); use --logit-columns")
    picked = [names.index(w) for w in wanted]
    if label is not None and label in picked:
        raise CliError(f"{path}: column {names[label]!r} is both the label column and a score "
                       "column; use --label-column and --logit-columns to separate them")
    return picked


def _from_table(path: Path, names: list[str], table: np.ndarray, notes: list[str],
                cols: Columns) -> Predictions:
    width = table.shape[1]
    headerless = names == [str(j) for j in range(width)]
    names, table, notes = _drop_index(path, names, table, notes)
    label = _label_index(path, names, table, cols)
    scores = _score_indices(path, names, label, cols)
    if headerless and cols.label_column is None and cols.logit_columns is None:
        what = (f"column 0 (integers {table[:, 0].min():.0f}–{table[:, 0].max():.0f}) read as "
                f"the labels and columns 1–{len(names) - 1} as the scores" if label == 0 else
                f"all {len(names)} columns read as scores (no label column)")
        notes.append(f"{path}: no header row: {what}; give the file a header, or choose with "
                     "--label-column and --logit-columns (columns are numbered from 0)")
    labels = None if label is None else as_labels(table[:, label], path)
    return Predictions(table[:, scores], labels, notes, f"columns: {_listing(names)}")


# ------------------------------------------------------------------------------ PyTorch


def _torch_load(path: Path) -> Any:
    """``torch.load`` with weights only: never runs code from the file.

    NumPy arrays (which ``torch.save`` pickles) are allowed through PyTorch's own allowlist,
    since rebuilding an array runs no code; anything else the safe loader refuses is reported
    with the names it refused, in one line.
    """
    try:
        import torch
    except ImportError:
        raise CliError(f"{path}: reading .pt needs PyTorch (pip install torch)") from None
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = _ANSI.sub("", str(exc))
        refused = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
        if not refused:  # not a refusal of an object: a corrupt file
            detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            raise CliError(f"{path}: cannot read it as a PyTorch file "
                           f"({detail[0].strip() if detail else 'unpickling failed'})") from None
        raise CliError(f"{path}: PyTorch's weights-only loader refuses this file (it holds "
                       f"{', '.join(refused)}); "
                       "logitkit never unpickles arbitrary objects: save the logits and labels "
                       "as tensors (torch.save({'logits': tensor, 'labels': tensor}, path)) or "
                       "as .npz") from None


def _numpy_globals() -> list[Any]:
    """What ``torch.save`` of a numeric NumPy array pickles: its rebuild function and dtypes."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64,
                                          np.uint8, np.uint16, np.uint32, np.uint64,
                                          np.float16, np.float32, np.float64)]
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def _tensor_to_numpy(obj: Any) -> np.ndarray:
    if hasattr(obj, "detach"):
        t = obj.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(obj)


def _read_pt(path: Path, cols: Columns) -> Predictions:
    obj = _torch_load(path)
    if isinstance(obj, dict):
        found = f"entries: {_listing(list(map(str, obj)))}"
        if cols.logits_key not in obj:
            raise CliError(f"{path}: no entry named {cols.logits_key!r} ({found}); use "
                           "--logits-key")
        labels = obj.get(cols.labels_key)
        return Predictions(_tensor_to_numpy(obj[cols.logits_key]),
                           None if labels is None else as_labels(
                               np.asarray(_tensor_to_numpy(labels)), path), found=found)
    return Predictions(_tensor_to_numpy(obj), None, found="one tensor")


# ------------------------------------------------------------------------------ checks


def as_labels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Integer labels (integral floats from text formats accepted)."""
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
            raise CliError(f"{path}: labels must be integer class indices, found non-integer "
                           "values")
        return arr.astype(np.int64)
    raise CliError(f"{path}: labels must be integer class indices, got dtype {arr.dtype}")


def check_scores(scores: Any, path: Path | str) -> np.ndarray:
    """A finite-or-``-inf`` floating ``(N, K)`` array (a 1-D array is one column)."""
    arr = np.asarray(scores)
    if arr.dtype.kind not in "biuf":
        raise CliError(f"{path}: scores must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise CliError(f"{path}: scores must be a 2-D array (N, K), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CliError(f"{path}: no predictions (scores of shape {arr.shape})")
    # The row max is NaN for a row with a NaN and +inf for a row with +inf: O(N) extra memory.
    top = arr.max(axis=1)
    bad = ~np.isfinite(top)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = arr[i]
        if np.isneginf(top[i]):
            raise CliError(f"{path}: row {i} has no finite score (all -inf)")
        j = int(np.flatnonzero(np.isnan(row) | np.isposinf(row))[0])
        raise CliError(f"{path}: scores must be finite (-inf marks an excluded class), found "
                       f"{row[j]} in row {i}, column {j}")
    return arr


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def atomic_write(target: Path, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Write ``target`` through a temporary file in the same folder, then ``os.replace`` it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        fh: Any = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(target: Path, obj: Any) -> None:
    atomic_write(target, lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"),
                 binary=False)


OUTPUT_TYPES = (".npy", ".csv")


def write_array(target: Path, arr: np.ndarray) -> None:
    suffix = target.suffix.lower()
    if suffix == ".npy":
        atomic_write(target, lambda fh: np.save(fh, arr, allow_pickle=False))
    elif suffix == ".csv":
        def write(fh: Any) -> None:
            header = ",".join(f"p{k}" for k in range(arr.shape[1]))
            np.savetxt(fh, arr, delimiter=",", header=header, comments="", fmt="%.9g")
        atomic_write(target, write)
    else:  # pragma: no cover - check_output_file refuses other types before any work
        raise CliError(f"{target}: unsupported output type {suffix or '(none)'!r}; "
                       f"use {' or '.join(OUTPUT_TYPES)}")
