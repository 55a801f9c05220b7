"""Reading predictions (npz, npy, csv, parquet, pt) and writing outputs atomically.

Every problem with the user's files is raised as :class:`CliError`, whose message is the one line
the command prints.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = (".npz", ".npy", ".csv", ".parquet", ".pt")


class CliError(Exception):
    """A user error: the message is printed as one line and the command exits with status 2."""


@dataclass
class Predictions:
    logits: np.ndarray  # (N, K) floating
    labels: np.ndarray | None  # (N,) int64


@dataclass
class Columns:
    label_column: str = "label"
    logits_key: str = "logits"
    labels_key: str = "labels"


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CliError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of "
                       f"{', '.join(FORMATS)}")
    return suffix


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if path.is_dir():
        raise CliError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise CliError(f"{path}: the file is empty")


def read_predictions(path: Path, cols: Columns, *, need_labels: bool) -> Predictions:
    """Logits (and labels when the file has them) from one file."""
    _check_file(path)
    suffix = _suffix(path)
    try:
        if suffix == ".npz":
            pred = _read_npz(path, cols)
        elif suffix == ".npy":
            pred = Predictions(_load_npy(path), None)
        elif suffix == ".csv":
            pred = _read_table(path, _read_csv(path), cols, need_labels)
        elif suffix == ".parquet":
            pred = _read_table(path, _read_parquet(path), cols, need_labels)
        else:
            pred = _read_pt(path, cols)
    except CliError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # any parser failure on a corrupt file is the file's problem
        raise CliError(f"{path}: cannot read it as {suffix[1:]} ({_first_line(exc)})") from None
    return Predictions(check_logits(pred.logits, path), pred.labels)


def read_labels(path: Path, cols: Columns) -> np.ndarray:
    """A 1-D label array from ``.npy``, ``.npz`` (``labels`` key), ``.csv``/``.parquet`` (one
    column, or the label column), or ``.pt``."""
    _check_file(path)
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
                    raise CliError(f"{path}: no array named {cols.labels_key!r} "
                                   f"(found {', '.join(data.files)}); use --labels-key")
                arr = data[key]
        elif suffix in (".csv", ".parquet"):
            names, table = _read_csv(path) if suffix == ".csv" else _read_parquet(path)
            if table.shape[1] == 1:
                arr = table[:, 0]
            elif names is not None and cols.label_column in names:
                arr = table[:, names.index(cols.label_column)]
            else:
                raise CliError(f"{path}: expected one column of labels or a column named "
                               f"{cols.label_column!r}")
        else:
            obj = _torch_load(path)
            arr = obj.get(cols.labels_key) if isinstance(obj, dict) else obj
            if arr is None:
                raise CliError(f"{path}: no entry named {cols.labels_key!r}")
            arr = _tensor_to_numpy(arr, path)
    except CliError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise CliError(f"{path}: cannot read it as {suffix[1:]} ({_first_line(exc)})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise CliError(f"{path}: expected a 1-D array of labels, got shape {arr.shape}")
    return as_labels(arr, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_npy(path: Path) -> np.ndarray:
    # Through our own handle: np.load leaves its file open when the content is corrupt.
    with open(path, "rb") as fh:
        return np.load(fh, allow_pickle=False)


def _read_npz(path: Path, cols: Columns) -> Predictions:
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
        if cols.logits_key not in data.files:
            raise CliError(f"{path}: no array named {cols.logits_key!r} "
                           f"(found {', '.join(data.files) or 'none'}); use --logits-key")
        logits = data[cols.logits_key]
        labels = data[cols.labels_key] if cols.labels_key in data.files else None
    return Predictions(logits, None if labels is None else as_labels(np.asarray(labels), path))


def _read_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise CliError(f"{path}: the file has no rows")
    names: list[str] | None = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        names = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise CliError(f"{path}: the file has a header but no data rows")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise CliError(f"{path}: row {i + 1 + (names is not None)} has {len(r)} fields, "
                           f"expected {width}")
    try:
        table = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise CliError(f"{path}: non-numeric value ({_first_line(exc)})") from None
    if names is not None and len(names) != width:
        raise CliError(f"{path}: the header has {len(names)} names for {width} columns")
    return names, table


def _read_parquet(path: Path) -> tuple[list[str] | None, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise CliError(f"{path}: cannot read it as parquet ({_first_line(exc)})") from None
    names = [str(n) for n in table.column_names]
    if table.num_rows == 0 or not names:
        raise CliError(f"{path}: the table has no rows")
    columns = []
    for name in names:
        col = table.column(name).to_numpy()
        if col.dtype.kind not in "biuf":
            raise CliError(f"{path}: column {name!r} is not numeric ({col.dtype})")
        columns.append(col.astype(np.float64))
    return names, np.stack(columns, axis=1)


def _read_table(path: Path, parsed: tuple[list[str] | None, np.ndarray], cols: Columns,
                need_labels: bool) -> Predictions:
    names, table = parsed
    if names is not None and cols.label_column in names:
        j = names.index(cols.label_column)
    elif names is None and need_labels:
        j = 0  # no header: the label is the first column
    else:
        j = None
    if j is None:
        return Predictions(table, None)
    logits = np.delete(table, j, axis=1)
    return Predictions(logits, as_labels(table[:, j], path))


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise CliError(f"{path}: reading .pt needs PyTorch (pip install torch)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"{path}: cannot read it as a PyTorch file ({_first_line(exc)})") from None


def _tensor_to_numpy(obj: Any, path: Path) -> np.ndarray:
    if hasattr(obj, "detach"):
        t = obj.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(obj)


def _read_pt(path: Path, cols: Columns) -> Predictions:
    obj = _torch_load(path)
    if isinstance(obj, dict):
        if cols.logits_key not in obj:
            raise CliError(f"{path}: no entry named {cols.logits_key!r} "
                           f"(found {', '.join(map(str, obj)) or 'none'}); use --logits-key")
        labels = obj.get(cols.labels_key)
        return Predictions(_tensor_to_numpy(obj[cols.logits_key], path),
                           None if labels is None else as_labels(
                               np.asarray(_tensor_to_numpy(labels, path)), path))
    return Predictions(_tensor_to_numpy(obj, path), None)


def as_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels (integral floats from text formats accepted)."""
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
            raise CliError(f"{path}: labels must be integer class indices, found non-integer "
                           "values")
        return arr.astype(np.int64)
    raise CliError(f"{path}: labels must be integer class indices, got dtype {arr.dtype}")


def check_logits(logits: Any, path: Path | str) -> np.ndarray:
    arr = np.asarray(logits)
    if arr.dtype.kind not in "biuf":
        raise CliError(f"{path}: logits must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise CliError(f"{path}: logits must be a 2-D array (N, K), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CliError(f"{path}: no predictions (logits of shape {arr.shape})")
    # The row max is NaN for a row with a NaN and +inf for a row with +inf: O(N) extra memory.
    top = arr.max(axis=1)
    bad = ~np.isfinite(top)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = arr[i]
        if np.isneginf(top[i]):
            raise CliError(f"{path}: row {i} has no finite logit (all -inf)")
        j = int(np.flatnonzero(np.isnan(row) | np.isposinf(row))[0])
        raise CliError(f"{path}: logits must be finite (-inf marks an excluded class), found "
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


def write_array(target: Path, arr: np.ndarray) -> None:
    suffix = target.suffix.lower()
    if suffix == ".npy":
        atomic_write(target, lambda fh: np.save(fh, arr, allow_pickle=False))
    elif suffix == ".csv":
        def write(fh: Any) -> None:
            header = ",".join(f"p{k}" for k in range(arr.shape[1]))
            np.savetxt(fh, arr, delimiter=",", header=header, comments="", fmt="%.9g")
        atomic_write(target, write)
    else:
        raise CliError(f"{target}: unsupported output type {suffix or '(none)'!r}; "
                       "use .npy or .csv")
