"""The one reader of predictions, for ``calibrate`` and ``apply`` alike, and atomic writes.

``read_inputs`` turns the files a user names (``.npz``, ``.npy`` + labels, ``.csv``,
``.parquet``, ``.pt``, folders of them and glob patterns) into one ``(scores, labels)`` pair.
Both commands call it, so a file is read the same way whichever command reads it; every decision
the reader takes on the user's behalf (a dropped pandas index, the label column of a headerless
CSV) comes back as a note that the command prints.

Tables (``.csv`` and ``.parquet``) are read by one layout rule, decided by the file and the column
options only, never by the command:

1. pandas' index is dropped, with a note: leading columns named ``""`` or ``Unnamed: N`` that
   hold integers (what ``pandas.DataFrame.to_csv`` writes by default, counting 0, 1, 2, … or,
   after a shuffle or a filter, not), or, in a file without header, a first column of
   consecutive integers in a file with more rows than columns.  Parquet files drop the columns
   pandas' metadata names as the index.
2. The label column is ``--label-column`` when given (it must exist), else a column named
   ``label``.  In a CSV without header, columns are named by their position (``0``, ``1``, …) and
   the first one is the label when every value in it is an integer class index that the other
   columns could hold (0 ≤ value < number of other columns, or 0 and 1 beside one column: a
   binary score); otherwise the file has no labels.
3. The score columns are ``--logit-columns`` (names separated by commas, or one prefix: every
   column whose name starts with it) when given, else every remaining column that holds
   numbers (a column of text, such as file names, is left out with a note).

The layout is the same for both commands; ``apply`` only skips checking the labels it does not
use (an empty label column is no error there).  A cell that is empty or not a number is an
error only in a column the layout uses, and the message names the column and the file's line.

A CSV's first line is its header unless every field in it is a number or empty (a data row with
a missing value); a first line that reads ``0,1,…,W-1`` (the column names pandas gives a frame
made from an array, after an empty field for its index or not) is a header too, and so is a
lone ``0`` above numbers that are not all integers (``pandas.Series.to_csv``'s column name).
Lines of blanks are skipped.

Every problem with the user's files is raised as :class:`CliError`, whose message is the one line
the command prints: it names what was found (keys, columns) and the option that selects another.
"""

from __future__ import annotations

import csv
import glob
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
    #: False (``apply``): labels are not read, so a label column that is empty, or holds
    #: text, is no obstacle; it is still left out of the scores
    want_labels: bool = True

    @classmethod
    def from_args(cls, args: Any, *, want_labels: bool = True) -> Columns:
        return cls(label_column=args.label_column, logit_columns=args.logit_columns,
                   logits_key=args.logits_key, labels_key=args.labels_key,
                   want_labels=want_labels)


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


def read_inputs(paths: Sequence[Path], cols: Columns, labels: Path | None = None,
                option: str = "--labels") -> Predictions:
    """Scores and labels of several files (already expanded), concatenated in order.

    With ``labels`` (one input file only; ``option`` names it: ``--labels`` or
    ``--test-labels``) the labels come from that file instead, with a note when the input file
    had labels of its own.
    """
    if labels is not None and len(paths) > 1:
        raise CliError(f"{option} works with one input file; give each file its labels "
                       "instead")
    parts = [read_predictions(p, cols, labels, option) for p in paths]
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


def read_predictions(path: Path, cols: Columns, labels: Path | None = None,
                     option: str = "--labels") -> Predictions:
    """Scores (and labels, when the file or ``labels`` has them) from one file."""
    suffix = _suffix(path)
    try:
        if suffix == ".npz":
            pred = _read_npz(path, cols)
        elif suffix == ".npy":
            pred = Predictions(_load_npy(path), None, found="one array")
        elif suffix == ".csv":
            pred = _from_table(path, _read_csv(path), cols)
        elif suffix == ".parquet":
            pred = _from_table(path, _read_parquet(path), cols)
        else:
            pred = _read_pt(path, cols)
    except (CliError, MemoryError):
        raise
    except Exception as exc:  # any parser failure on a corrupt file is the file's problem
        raise CliError(f"{path}: cannot read it as {suffix[1:]} ({_first_line(exc)})") from None
    pred.scores = check_scores(pred.scores, path)
    if labels is not None:
        if pred.labels is not None:
            pred.notes.append(f"{path}: its own labels are replaced by those of {option} "
                              f"{labels}")
        pred.labels, notes = read_labels(labels, cols, expected=pred.scores.shape[0])
        pred.notes.extend(notes)
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


def read_labels(path: Path, cols: Columns, expected: int | None = None
                ) -> tuple[np.ndarray, list[str]]:
    """A 1-D label array from ``.npy``, ``.npz`` (``--labels-key``, or its only array),
    ``.csv``/``.parquet`` (the label column, or the only column), or ``.pt``; and the
    reader's notes.

    ``expected``: the number of rows of scores.  A one-column CSV whose first line is ``0``
    and that holds one label more than that has the header ``pandas.Series.to_csv`` writes
    (a label 0 and a column named ``0`` read alike; the count tells them apart).
    """
    check_input_file(path, "--labels")
    suffix = _suffix(path)
    arr: Any
    notes: list[str] = []
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
            table = _drop_index(path, _read_csv(path) if suffix == ".csv"
                                else _read_parquet(path))
            if (expected is not None and not table.header and table.first_field == "0"
                    and table.values.shape == (expected + 1, 1)):
                table = _without_first_row(path, table)
            notes = table.notes
            j = 0 if table.values.shape[1] == 1 else _label_index(path, table, cols)
            if j is None:
                raise CliError(f"{path}: expected one column of labels or a label column "
                               f"(columns: {_listing(table.names)}); use --label-column")
            arr = _table_labels(path, table, j)
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
    return as_labels(np.asarray(arr), path), notes


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
        labels = (data[cols.labels_key] if cols.want_labels and cols.labels_key in data.files
                  else None)
    return Predictions(scores, None if labels is None else as_labels(np.asarray(labels), path),
                       found=found)


# ------------------------------------------------------------------------------ tables

#: pandas' names for columns without one (``read_csv`` of a file whose index had no name)
_UNNAMED = re.compile(r"Unnamed: \d+")


@dataclass
class _Table:
    """A CSV's or Parquet file's columns, before the layout rule picks labels and scores."""

    names: list[str]
    values: np.ndarray  # (n, W) float64; NaN where a cell is empty or not a number
    notes: list[str]
    header: bool  # the file named its columns (else they are named by position)
    lines: np.ndarray | None = None  # each row's line in the file (CSV); None: "row i"
    # each column's first cell that is not a number: (row, its text); "" for an empty cell
    text: dict[int, tuple[int, str]] = field(default_factory=dict)
    empty: dict[int, int] = field(default_factory=dict)  # each column's first empty cell
    words: set[int] = field(default_factory=set)  # columns without a single number
    first_field: str = ""  # the first line's first field, as written (CSV)

    def where(self, i: int) -> str:
        return f"row {i}" if self.lines is None else f"line {int(self.lines[i])}"

    def cell_problem(self, j: int) -> str | None:
        """What keeps column ``j`` from being numbers, or None."""
        if j in self.text:
            i, cell = self.text[j]
            return f"holds text ({cell!r} in {self.where(i)})"
        if j in self.empty:
            return f"has an empty cell ({self.where(self.empty[j])})"
        return None

    def columns(self, keep: Sequence[int]) -> _Table:
        """The table of the columns ``keep``, in that order."""
        at = {j: new for new, j in enumerate(keep)}
        return _Table([self.names[j] for j in keep], self.values[:, list(keep)], self.notes,
                      self.header, self.lines,
                      {at[j]: v for j, v in self.text.items() if j in at},
                      {at[j]: v for j, v in self.empty.items() if j in at},
                      {at[j] for j in self.words if j in at}, self.first_field)


def _read_csv(path: Path) -> _Table:
    """A CSV's columns: names (positions ``0``, ``1``, … without a header) and numbers.

    Lines of nothing but blanks are skipped.  A cell that is empty or not a number does not
    stop the reading: it is NaN in the values and recorded (:attr:`_Table.text`,
    :attr:`_Table.empty`), and the layout rule refuses it only in a column it uses (a column
    of file names next to the scores is left out; ``apply`` ignores the labels).
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    del text
    if not numbered:
        raise CliError(f"{path}: the file has no rows")
    fields = [c.strip() for c in next(csv.reader([numbered[0][1]]))]
    separator = next((c for c in ";\t|" if c in numbered[0][1]), None)
    if len(fields) == 1 and separator is not None:
        raise CliError(f"{path}: one field a line, with {separator!r} in it; logitkit reads "
                       "comma-separated values (pandas: to_csv without sep)")
    notes: list[str] = []
    header = _is_header(fields)
    if header:
        if _as_numbers([f for f in fields if f]) is not None:
            notes.append(f"{path}: the first line {','.join(fields)} read as the column names "
                         "(pandas' names for the columns of an array), not as data")
        repeated = sorted({n for n in fields if fields.count(n) > 1})
        if repeated:
            raise CliError(f"{path}: the header names {_listing(repeated)} more than once; "
                           "give every column its own name")
        names, rows = fields, numbered[1:]
    else:
        names, rows = [str(j) for j in range(len(fields))], numbered
    if not rows:
        raise CliError(f"{path}: the file has a header but no data rows")
    lines = np.array([n for n, _ in rows], dtype=np.int64)
    table = _Table(names, np.empty((0, 0)), notes, header, lines, first_field=fields[0])
    try:
        table.values = np.loadtxt([line for _, line in rows], delimiter=",",
                                  dtype=np.float64, ndmin=2, quotechar='"')
    except ValueError:  # a ragged row, or a cell that is empty or not a number
        _read_cells(path, table, [line for _, line in rows])
    if table.values.shape[1] != len(names):
        raise CliError(f"{path}: the header has {len(names)} names for "
                       f"{table.values.shape[1]} columns")
    return _headerless_series(path, table)


def _read_cells(path: Path, table: _Table, rows: list[str]) -> None:
    """The slow reading, cell by cell where needed, that records what is not a number."""
    cells = list(csv.reader(rows))
    width = len(table.names)  # the header's, or the first line's fields (named by position)
    for i, row in enumerate(cells):
        if len(row) != width:
            raise CliError(f"{path}: {table.where(i)} has {len(row)} fields, expected {width} "
                           f"(as {'the header' if table.header else 'the first line'})")
    table.values = np.empty((len(cells), width))
    for j in range(width):
        column = [row[j].strip() for row in cells]
        try:
            table.values[:, j] = np.array(column, dtype=np.float64)
            continue
        except ValueError:
            pass
        numbers = 0
        for i, cell in enumerate(column):
            if not cell:
                table.values[i, j] = np.nan
                table.empty.setdefault(j, i)
                continue
            try:
                table.values[i, j] = float(cell)
                numbers += 1
            except ValueError:
                table.values[i, j] = np.nan
                table.text.setdefault(j, (i, cell))
        if not numbers:  # text only, or nothing (a trailing comma's column)
            table.words.add(j)


def _headerless_series(path: Path, table: _Table) -> _Table:
    """A one-column file whose first line is ``0`` over numbers that are not all integers: the
    column name ``pandas.Series.to_csv`` writes, not a value (a column of integers, such as
    labels, is decided by its length: :func:`read_labels`)."""
    if (table.header or table.values.shape != (table.values.shape[0], 1)
            or table.first_field != "0" or table.values.shape[0] < 2 or table.text
            or table.empty):
        return table
    rest = table.values[1:, 0]
    if np.all(rest == np.round(rest)):
        return table
    return _without_first_row(path, table)


def _without_first_row(path: Path, table: _Table) -> _Table:
    note = (f"{path}: the first line 0 read as the column's name (pandas' name for a "
            "Series), not as data")
    return _Table(table.names, table.values[1:], [*table.notes, note], True,
                  None if table.lines is None else table.lines[1:], first_field=table.first_field)


def _is_header(fields: Sequence[str]) -> bool:
    """Whether a CSV's first line names its columns: some field is not a number (empty fields
    are missing numbers, not names), or it reads ``0,1,…,W-1`` (pandas' names for the columns
    of an array), after an empty field for pandas' index or not."""
    if _as_numbers([f for f in fields if f]) is None:
        return True
    return _is_position_header(fields) or (
        len(fields) > 1 and fields[0] == "" and fields[1:] == _positions(len(fields) - 1))


def _as_numbers(fields: Sequence[str]) -> list[float] | None:
    try:
        return [float(c) for c in fields]
    except ValueError:
        return None


def _positions(width: int) -> list[str]:
    return [str(j) for j in range(width)]


def _is_position_header(fields: Sequence[str]) -> bool:
    return len(fields) > 1 and list(fields) == _positions(len(fields))


def _read_parquet(path: Path) -> _Table:
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
    repeated = sorted({n for n in keep if keep.count(n) > 1})
    if repeated:
        raise CliError(f"{path}: the table names {_listing(repeated)} more than once; give "
                       "every column its own name")
    out = _Table(keep, np.empty((table.num_rows, len(keep))), notes, True)
    for j, name in enumerate(keep):
        col = table.column(name).to_numpy()
        if col.dtype.kind in "biuf":
            out.values[:, j] = col
            missing = np.flatnonzero(np.isnan(out.values[:, j]))
            if missing.size:
                out.empty[j] = int(missing[0])
        else:
            out.values[:, j] = np.nan
            out.text[j] = (0, str(col[0]))
            out.words.add(j)
    return out


def _drop_index(path: Path, table: _Table) -> _Table:
    """Drop the index pandas wrote: leading columns named ``""`` or ``Unnamed: N`` that hold
    integers (``DataFrame.to_csv`` without ``index=False``, however the rows were shuffled or
    filtered before; ``Unnamed: 0`` when such a file was read and written again), or, without
    a header, a first column counting up by one in a file of more rows than columns."""
    n, width = table.values.shape
    drop = []
    for j in range(width - 1):  # never the last column
        col = table.values[:, j]
        integers = j not in table.text and j not in table.empty and bool(
            np.all(col == np.round(col)))
        if table.header:
            if not (integers and (table.names[j] == "" or _UNNAMED.fullmatch(table.names[j]))):
                break
        elif not (j == 0 and integers and n > width and bool(np.all(np.diff(col) == 1))):
            break
        drop.append(j)
    if not drop:
        return table
    notes = list(table.notes)
    for j in drop:
        col = table.values[:, j]
        counting = bool(np.all(np.diff(col) == 1))
        what = (f"counting {col[0]:.0f}, {col[0] + 1:.0f}, …" if counting
                else f"integers {col.min():.0f}–{col.max():.0f}")
        name = f"the column {table.names[j]!r}" if table.header else "the first column"
        notes.append(f"{path}: dropped {name} (unnamed, {what}: a pandas index; write the file "
                     "with index=False to leave it out)")
    out = table.columns(range(len(drop), width))
    out.notes = notes
    if not table.header:
        out.names = _positions(width - len(drop))
    return out


def _label_index(path: Path, table: _Table, cols: Columns) -> int | None:
    """Where the label column is (see the module docstring), or None."""
    names = table.names
    if cols.label_column is not None:
        if cols.label_column not in names:
            raise CliError(f"{path}: no column named {cols.label_column!r} (columns: "
                           f"{_listing(names)}); use --label-column")
        return names.index(cols.label_column)
    if "label" in names:
        return names.index("label")
    width = table.values.shape[1]
    if names == _positions(width) and width > 1 and 0 not in table.text and (
            0 not in table.empty) and (
            cols.logit_columns is None or "0" not in _split_list(cols.logit_columns)):
        col = table.values[:, 0]
        classes = max(2, width - 1)  # one other column: a binary score (P(class 1), a logit)
        if bool(np.all(col == np.round(col))) and col.min() >= 0 and col.max() < classes:
            return 0
    return None


def _split_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _score_indices(path: Path, table: _Table, label: int | None, cols: Columns
                   ) -> tuple[list[int], list[int]]:
    """The score columns, and the columns of text left out of them (only when the scores are
    every other column, and only columns without a single number: a typo in a column of
    scores is an error, and a column named in ``--logit-columns`` must hold numbers)."""
    names = table.names
    if cols.logit_columns is None:
        others = [j for j in range(len(names)) if j != label]
        return ([j for j in others if j not in table.words],
                [j for j in others if j in table.words])
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
        return picked, []
    missing = [w for w in wanted if w not in names]
    if missing:
        raise CliError(f"{path}: no column named {_listing(missing)} (columns: "
                       f"{_listing(names)}); use --logit-columns")
    picked = [names.index(w) for w in wanted]
    if label is not None and label in picked:
        raise CliError(f"{path}: column {names[label]!r} is both the label column and a score "
                       "column; use --label-column and --logit-columns to separate them")
    return picked, []


def _table_labels(path: Path, table: _Table, j: int) -> np.ndarray:
    """The label column ``j`` as class indices, or an error naming the column and the line."""
    name = table.names[j]
    problem = table.cell_problem(j)
    if problem is not None:
        raise CliError(f"{path}: the label column {name!r} {problem}; labels must be integer "
                       "class indices 0, 1, …")
    col = table.values[:, j]
    odd = np.flatnonzero(col != np.round(col))
    if odd.size:
        i = int(odd[0])
        raise CliError(f"{path}: the label column {name!r} holds {col[i]:g} in "
                       f"{table.where(i)}; labels must be integer class indices 0, 1, …")
    return as_labels(col, path)


def _table_scores(path: Path, table: _Table, scores: list[int]) -> np.ndarray:
    """The score columns, every cell a number (``-inf`` allowed: an excluded class), or an
    error naming the column and the line."""
    for j in scores:
        problem = table.cell_problem(j)
        if problem is not None:
            raise CliError(f"{path}: the score column {table.names[j]!r} {problem}; every score "
                           "must be a number (choose the score columns with --logit-columns)")
    values = table.values[:, scores]
    bad = np.isnan(values) | np.isposinf(values)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise CliError(f"{path}: scores must be finite (-inf marks an excluded class), found "
                       f"{values[i, j]} in {table.where(i)}, column {table.names[scores[j]]!r}")
    none = np.flatnonzero(np.all(np.isneginf(values), axis=1))
    if none.size:
        raise CliError(f"{path}: {table.where(int(none[0]))} has no finite score (all -inf)")
    return values


def _index_like(path: Path, table: _Table, scores: list[int]) -> list[str]:
    """Notes on named score columns that hold each of ``N`` consecutive integers once (an
    index a user named, ``id``): read as scores, as named, but never without a word."""
    n = table.values.shape[0]
    if n < 3:
        return []
    values = table.values[:, scores]
    integral = np.flatnonzero(np.all(values == np.round(values), axis=0))
    notes = []
    for j in integral:
        col = values[:, j]
        if col.max() - col.min() == n - 1 and np.unique(col).size == n:
            notes.append(f"{path}: the column {table.names[scores[j]]!r} holds the integers "
                         f"{col.min():.0f}–{col.max():.0f}, each once, like an index: read as "
                         "scores; if it is an index, choose the scores with --logit-columns")
    return notes


def _from_table(path: Path, table: _Table, cols: Columns) -> Predictions:
    table = _drop_index(path, table)
    label = _label_index(path, table, cols)
    scores, text = _score_indices(path, table, label, cols)
    names, notes = table.names, list(table.notes)
    if text:
        notes.append(f"{path}: left out the column{'s' if len(text) > 1 else ''} "
                     f"{_listing([names[j] for j in text])} (not a number in it: not scores)")
    if not scores:
        raise CliError(f"{path}: no score columns (columns: {_listing(names)}); use "
                       "--logit-columns")
    if (names == _positions(len(names)) and cols.label_column is None
            and cols.logit_columns is None):
        what = (f"column 0 (integers {table.values[:, 0].min():.0f}–"
                f"{table.values[:, 0].max():.0f}) read as the labels and columns "
                f"1–{len(names) - 1} as the scores" if label == 0 else
                f"all {len(names)} columns read as scores (no label column)")
        where = "no header row" if not table.header else "columns named by position"
        notes.append(f"{path}: {where}: {what}; give the file a header, or choose with "
                     "--label-column and --logit-columns (columns are numbered from 0)")
    if cols.logit_columns is None:
        notes.extend(_index_like(path, table, scores))
    labels = (None if label is None or not cols.want_labels
              else _table_labels(path, table, label))
    return Predictions(_table_scores(path, table, scores), labels, notes,
                       f"columns: {_listing(names)}")


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
        labels = obj.get(cols.labels_key) if cols.want_labels else None
        return Predictions(_tensor_to_numpy(obj[cols.logits_key]),
                           None if labels is None else as_labels(
                               np.asarray(_tensor_to_numpy(labels)), path), found=found)
    if isinstance(obj, (list, tuple)):
        raise CliError(f"{path}: holds a {type(obj).__name__} of {len(obj)} items; save the "
                       "logits and labels as a dict (torch.save({'logits': tensor, 'labels': "
                       "tensor}, path)) or as one tensor of logits")
    return Predictions(_tensor_to_numpy(obj), None, found="one tensor")


# ------------------------------------------------------------------------------ checks


def as_labels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Integer labels ``(N,)`` (integral floats from text formats accepted; an ``(N, 1)``
    column is read as ``(N,)``, as NumPy's ``savetxt``/``reshape(-1, 1)`` leave it)."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        hint = ("; one-hot or probability labels: pass their argmax" if arr.ndim == 2 else "")
        raise CliError(f"{path}: expected a 1-D array of labels (class indices), got shape "
                       f"{arr.shape}{hint}")
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
