"""The one reader behind ``logitkit calibrate`` and ``logitkit apply``: every file format, every
CSV shape a user writes (pandas' index, no header, pandas' column numbers, named columns), the
input kinds (logits, probabilities, log-probabilities, auto), and errors that name what was
found and the option to use."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from logitkit import log_softmax, softmax
from logitkit.calibration import TemperatureScaler


def _t(z, y):
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = np.column_stack([np.zeros_like(z), z])
    return TemperatureScaler().fit(z, y).temperature_


def _calibrate(cli, *args, out="out"):
    """``calibrate`` with temperature scaling: the reader's tests compare the fitted T."""
    code, stdout, err = cli.run("calibrate", *args, "--method", "temperature", "--out", out,
                                "--no-diagram")
    assert code == 0, err
    return cli.report(out), stdout, err


# ------------------------------------------------------------------------- formats


def test_every_input_format_gives_the_same_temperature(cli, data):
    import pandas as pd
    import torch

    z, y = data
    t = _t(z, y)
    np.savez("preds.npz", logits=z, labels=y)
    np.savez("named.npz", scores=z, target=y)
    np.save("logits.npy", z)
    np.save("labels.npy", y)
    frame = pd.DataFrame(z.astype(np.float64), columns=[f"z{k}" for k in range(z.shape[1])])
    frame.insert(2, "label", y)
    frame.to_csv("preds.csv", index=False)
    frame.to_parquet("preds.parquet")
    frame.rename(columns={"label": "target"}).to_parquet("renamed.parquet")
    np.savetxt("noheader.csv", np.column_stack([y, z]), delimiter=",", fmt="%.9g")
    torch.save({"logits": torch.from_numpy(z), "labels": torch.from_numpy(y)}, "preds.pt")
    torch.save(torch.from_numpy(z), "logits.pt")
    torch.save({"logits": z, "labels": y}, "numpy.pt")  # NumPy arrays pickled by torch.save
    cases = {
        "npz": ["preds.npz"],
        "npz-keys": ["named.npz", "--logits-key", "scores", "--labels-key", "target"],
        "npy": ["logits.npy", "--labels", "labels.npy"],
        "csv": ["preds.csv"],
        "csv-noheader": ["noheader.csv"],
        "parquet": ["preds.parquet"],
        "parquet-column": ["renamed.parquet", "--label-column", "target"],
        "pt": ["preds.pt"],
        "pt-tensor": ["logits.pt", "--labels", "labels.npy"],
        "pt-numpy": ["numpy.pt"],
    }
    for name, args in cases.items():
        code, out, err = cli.run("calibrate", "--method", "temperature", *args, "--out", name, "--json",
                             "--no-diagram")
        assert code == 0, (name, err)
        assert os.listdir(name) == ["report.json"]
        rep = json.loads(out)
        tol = 1e-6 if "csv" in name else 1e-9
        assert cli.temperature(rep) == pytest.approx(t, rel=tol), name
        assert rep["n_samples"] == len(y) and rep["n_classes"] == z.shape[1]
        assert rep["inputs"] == [args[0]]
        assert rep["input"]["kind"] == "logits"


def test_several_files_are_concatenated_and_a_binary_column_accepted(cli, data):
    z, y = data
    np.savez("a.npz", logits=z[:150], labels=y[:150])
    np.savez("b.npz", logits=z[150:], labels=y[150:])
    code, out, err = cli.run("calibrate", "--method", "temperature", "a.npz", "b.npz", "--json", "--out", "two",
                         "--no-diagram")
    assert code == 0, err
    assert cli.temperature(json.loads(out)) == pytest.approx(
        _t(z, y), rel=1e-9)
    s = z[:, 1] - z[:, 0]
    yb = (y % 2).astype(np.int64)
    np.savez("binary.npz", logits=s, labels=yb)
    rep, _, _ = _calibrate(cli, "binary.npz", out="bin")
    assert rep["n_classes"] == 2 and rep["input"]["kind"] == "logits"
    assert cli.temperature(rep) == pytest.approx(_t(s, yb), rel=1e-9)


# ------------------------------------------------------------------------- CSV shapes


def test_pandas_index_column_is_dropped_with_a_note(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame(z.astype(np.float64), columns=[f"z{k}" for k in range(4)])
    frame["label"] = y
    frame.to_csv("indexed.csv")  # pandas writes its index as an unnamed first column
    rep, _, err = _calibrate(cli, "indexed.csv")
    assert cli.temperature(rep) == pytest.approx(_t(z, y), rel=1e-6)
    assert rep["n_classes"] == 4
    assert "pandas index" in err and "index=False" in err
    assert any("pandas index" in note for note in rep["notes"])
    # the same without a header: an index counting 0, 1, 2, … before the label column
    frame.to_csv("indexed-noheader.csv", header=False, columns=["label", *frame.columns[:4]])
    rep, _, err = _calibrate(cli, "indexed-noheader.csv", out="noheader")
    assert cli.temperature(rep) == pytest.approx(_t(z, y), rel=1e-6)
    assert "pandas index" in err and "column 0" in err


def test_pandas_index_read_back_and_written_again_is_dropped(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame(z.astype(np.float64), columns=list("abcd"))
    frame["label"] = y
    frame.to_csv("once.csv")
    pd.read_csv("once.csv").to_csv("twice.csv", index=False)  # a column named "Unnamed: 0"
    rep, _, err = _calibrate(cli, "twice.csv")
    assert rep["n_classes"] == 4 and "pandas index" in err


def test_parquet_index_stored_by_pandas_is_dropped(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame(z.astype(np.float64), columns=list("abcd"))
    frame["label"] = y
    frame.index = 1000 + 3 * np.arange(len(y))  # not a RangeIndex: pandas stores it as a column
    frame.to_parquet("indexed.parquet")
    rep, _, err = _calibrate(cli, "indexed.parquet")
    assert rep["n_classes"] == 4
    assert cli.temperature(rep) == pytest.approx(_t(z, y), rel=1e-9)
    assert "index column" in err


def test_pandas_column_numbers_are_a_header_not_a_row(cli, data):
    import pandas as pd

    z, y = data
    pd.DataFrame(np.column_stack([y, z])).to_csv("numbered.csv", index=False)  # "0,1,2,3,4"
    rep, _, err = _calibrate(cli, "numbered.csv")
    assert rep["n_samples"] == len(y) and rep["n_classes"] == 4
    assert cli.temperature(rep) == pytest.approx(_t(z, y), rel=1e-6)
    assert "column names" in err


def _applied(cli, path, out, *args):
    """``apply --temperature 2`` of ``path``: the probabilities it wrote."""
    _, err = cli.ok("apply", path, "--temperature", "2", "--out", out, *args)
    return np.load(out), err


def test_pandas_index_that_does_not_count_is_dropped_too(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame(z.astype(np.float64), columns=[f"logit_{k}" for k in range(4)])
    frame["label"] = y
    t = _t(z, y)
    shuffled = frame.sample(frac=1.0, random_state=0)
    shuffled.to_csv("shuffled.csv")  # an index of 0..N-1 in shuffled order
    frame.iloc[::2].to_csv("every_other.csv")  # 0, 2, 4, …
    frame.to_csv("once.csv")
    pd.read_csv("once.csv").to_csv("twice.csv")  # ",Unnamed: 0,logit_0,…": two index columns
    for path, (zz, yy) in [("shuffled.csv", (z[shuffled.index], y[shuffled.index])),
                           ("every_other.csv", (z[::2], y[::2])), ("twice.csv", (z, y))]:
        rep, _, err = _calibrate(cli, path, out=path + "-out")
        assert rep["n_classes"] == 4, path
        assert cli.temperature(rep) == pytest.approx(_t(zz, yy), rel=1e-6), path
        assert "pandas index" in err and "index=False" in err
        p, err = _applied(cli, path, path + ".npy")
        assert p.shape == (len(yy), 4) and "pandas index" in err
        np.testing.assert_allclose(p, softmax(zz.astype(np.float64) / 2), rtol=1e-6)
    assert "'Unnamed: 0'" in " ".join(cli.report("twice.csv-out")["notes"])
    # an index the user named is read as named, with a note
    shuffled.rename_axis("id").to_csv("named_index.csv")
    rep, _, err = _calibrate(cli, "named_index.csv", out="named-out")
    assert rep["n_classes"] == 5 and "the column 'id' holds the integers 0–399" in err
    assert "--logit-columns" in err
    assert t == pytest.approx(_t(z, y))


def test_a_series_written_by_pandas_has_its_header_0_read_as_a_name(cli, data):
    import pandas as pd

    z, y = data
    s = (z[:, 1] - z[:, 0]).astype(np.float64)
    yb = (y % 2).astype(np.int64)
    p1 = 1 / (1 + np.exp(-s))
    pd.Series(p1).to_csv("p1.csv", index=False)  # first line "0"
    pd.Series(yb).to_csv("y.csv", index=False)  # "0", then the labels
    np.save("p1.npy", p1)
    rep, _, err = _calibrate(cli, "p1.csv", "--labels", "y.csv")
    assert rep["n_samples"] == len(yb) and rep["input"]["kind"] == "probs"
    assert cli.temperature(rep) == pytest.approx(_t(s, yb), rel=1e-6)
    assert "column's name" in err
    rep, _, _ = _calibrate(cli, "p1.npy", "--labels", "y.csv", out="npy")
    assert rep["n_samples"] == len(yb)
    p, err = _applied(cli, "p1.csv", "p1-out.npy")
    assert p.shape == (len(yb), 2) and "column's name" in err
    assert "exactly 0" not in err  # the header is not a probability of 0
    # labels without a header whose first label is 0: as many as the rows, all of them read
    first0 = np.r_[0, yb[1:]]
    np.savetxt("y-plain.csv", first0, fmt="%d")
    rep, _, _ = _calibrate(cli, "p1.npy", "--labels", "y-plain.csv", out="plain")
    assert rep["n_samples"] == len(yb)
    assert cli.temperature(rep) == pytest.approx(_t(s, first0), rel=1e-6)


def test_a_headerless_first_row_with_an_empty_cell_is_an_error_not_a_header(cli, data):
    z, _ = data
    rows = [",".join(f"{v:.6f}" for v in row) for row in z[:50]]
    rows[0] = rows[0].replace(rows[0].split(",")[1], "", 1)
    with open("nohdr.csv", "w") as fh:
        fh.write("\n".join(rows) + "\n")
    for command in (["calibrate", "nohdr.csv"], ["apply", "nohdr.csv", "--temperature", "2"]):
        cli.error(*command, "--out", "x.npy" if command[0] == "apply" else "x",
                  match="column '1' has an empty cell (line 1)")
    assert not os.path.exists("x") and not os.path.exists("x.npy")


def test_a_column_of_text_is_left_out_and_text_where_numbers_belong_is_named(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame(z.astype(np.float64), columns=[f"logit_{k}" for k in range(4)])
    frame.insert(0, "file", [f"img_{i}.png" for i in range(len(y))])
    frame["label"] = y
    frame.to_csv("with_id.csv", index=False)
    frame.to_parquet("with_id.parquet", index=False)
    t = _t(z, y)
    for path in ("with_id.csv", "with_id.parquet"):
        rep, _, err = _calibrate(cli, path, out=path + "-auto")
        assert rep["n_classes"] == 4 and "left out the column 'file' (not a number" in err
        assert cli.temperature(rep) == pytest.approx(t, rel=1e-6)
        rep, _, _ = _calibrate(cli, path, "--logit-columns", "logit_", "--label-column",
                               "label", out=path + "-named")
        assert cli.temperature(rep) == pytest.approx(t, rel=1e-6)
        line = cli.error("calibrate", path, "--logit-columns", "file,logit_0", "--out", "x",
                         match="the score column 'file' holds text ('img_0.png' in")
        assert "--logit-columns" in line
    words = frame.assign(label=np.where(y == 0, "cat", "dog"))
    words.to_csv("words.csv", index=False)
    line = cli.error("calibrate", "words.csv", "--out", "x",
                     match="the label column 'label' holds text (")
    assert "line 2" in line and "integer class indices" in line
    typo = frame.astype({"logit_2": object})
    typo.loc[5, "logit_2"] = "0.3.1"
    typo.to_csv("typo.csv", index=False)  # one bad cell in a column of numbers: an error
    cli.error("calibrate", "typo.csv", "--out", "x",
              match="the score column 'logit_2' holds text ('0.3.1' in line 7)")
    assert not os.path.exists("x")


def test_apply_ignores_a_label_column_that_is_empty(cli, data):
    import pandas as pd

    z, _ = data
    frame = pd.DataFrame(z[:50].astype(np.float64), columns=[f"logit_{k}" for k in range(4)])
    frame["label"] = np.nan
    frame.to_csv("unlab_empty.csv", index=False)
    frame.to_csv("unlab_nan.csv", index=False, na_rep="nan")
    np.savez("unlab_nan.npz", logits=z[:50], labels=np.full(50, np.nan))
    want = softmax(z[:50].astype(np.float64) / 2)
    for path in ("unlab_empty.csv", "unlab_nan.csv", "unlab_nan.npz"):
        p, _ = _applied(cli, path, path + ".npy")
        np.testing.assert_allclose(p, want, rtol=1e-6)
    cli.error("calibrate", "unlab_empty.csv", "--out", "x",
              match="the label column 'label' has an empty cell (line 2)")
    cli.error("calibrate", "unlab_nan.csv", "--out", "x",
              match="the label column 'label' holds nan in line 2")


def test_csv_cell_errors_name_the_line_and_the_column(cli):
    import pathlib

    pathlib.Path("empty.csv").write_text("a,b,label\n0.1,0.2,0\n0.3,,1\n")
    pathlib.Path("inf.csv").write_text("a,b,label\n0.1,0.2,0\n0.3,inf,1\n")
    pathlib.Path("ragged.csv").write_text("a,b,label\n0.1,0.2,0\n0.3,0.4\n")
    pathlib.Path("same.csv").write_text("a,b,a\n0.1,0.2,0\n0.3,0.4,1\n")
    cli.error("calibrate", "empty.csv", "--out", "x",
              match="the score column 'b' has an empty cell (line 3)")
    cli.error("calibrate", "inf.csv", "--out", "x", match="found inf in line 3, column 'b'")
    line = cli.error("calibrate", "ragged.csv", "--out", "x",
                     match="line 3 has 2 fields, expected 3")
    assert "usecols" not in line
    cli.error("calibrate", "same.csv", "--out", "x", match="the header names 'a' more than once")
    pathlib.Path("semicolons.csv").write_text("a;b;label\n0.1;0.2;0\n0.3;0.4;1\n")
    cli.error("calibrate", "semicolons.csv", "--out", "x",
              match="one field a line, with ';' in it; logitkit reads comma-separated values")
    # a line of blanks at the end is no row
    rng = np.random.default_rng(0)
    rows = "".join(f"{a:.4f},{b:.4f},{int(c)}\n" for a, b, c in
                   zip(rng.normal(size=60), rng.normal(size=60), rng.integers(0, 2, 60),
                       strict=True))
    pathlib.Path("blanks.csv").write_text("a,b,label\n" + rows + "   \n \t\n")
    rep, _, _ = _calibrate(cli, "blanks.csv")
    assert rep["n_samples"] == 60
    # a comma at the end of every line: a column of nothing, left out
    with open("blanks.csv") as fh:
        trailing = "".join(line.rstrip("\n") + ",\n" for line in fh if line.strip())
    pathlib.Path("trailing.csv").write_text(trailing)
    rep, _, err = _calibrate(cli, "trailing.csv", out="trailing")
    assert rep["n_samples"] == 60 and rep["n_classes"] == 2
    assert "left out the column ''" in err
    assert not os.path.exists("x")


def test_labels_of_shape_n_by_1_are_one_column_in_every_format(cli, data):
    z, y = data
    np.savez("col.npz", logits=z, labels=y[:, None])
    np.save("z.npy", z)
    np.save("ycol.npy", y[:, None])
    t = _t(z, y)
    assert cli.temperature(_calibrate(cli, "col.npz")[0]) == pytest.approx(t, rel=1e-6)
    rep = _calibrate(cli, "z.npy", "--labels", "ycol.npy", out="npy")[0]
    assert cli.temperature(rep) == pytest.approx(t, rel=1e-6)
    np.savez("onehot.npz", logits=z, labels=np.eye(4)[y])
    cli.error("calibrate", "onehot.npz", "--out", "x",
              match="expected a 1-D array of labels (class indices), got shape (400, 4)")


def test_columns_named_by_position_get_one_note_that_says_so(cli, data):
    import pandas as pd

    z, y = data
    pd.DataFrame(np.column_stack([y, z])).to_csv("numbered.csv", index=False)
    _, _, err = _calibrate(cli, "numbered.csv")
    assert "no header row" not in err and "columns named by position" in err
    pd.DataFrame(np.column_stack([y, z])).to_csv("numbered-index.csv")  # ",0,1,2,3,4"
    rep, _, err = _calibrate(cli, "numbered-index.csv", out="ix")
    assert rep["n_classes"] == 4 and "pandas index" in err
    assert "column 0 (integers 0–3) read as the labels" in err


def test_headerless_csv_label_first_or_scores_only(cli, data):
    z, y = data
    np.savetxt("labelled.csv", np.column_stack([y, z]), delimiter=",", fmt="%.9g")
    np.savetxt("scores.csv", z, delimiter=",", fmt="%.9g")
    np.save("labels.npy", y)
    rep, _, err = _calibrate(cli, "labelled.csv", out="a")
    assert rep["n_classes"] == 4 and "column 0" in err and "read as the labels" in err
    t = _t(z, y)
    assert cli.temperature(rep) == pytest.approx(t, rel=1e-6)
    code, _, err = cli.run("calibrate", "--method", "temperature", "scores.csv", "--labels", "labels.npy", "--out", "b",
                       "--no-diagram")
    assert code == 0, err
    assert "all 4 columns read as scores" in err
    assert cli.temperature(cli.report("b")) == pytest.approx(t, rel=1e-6)
    # beside one column of scores (P(class 1) or a binary logit), 0/1 in column 0 are labels
    s1, yb = z[:, 1] - z[:, 0], (y % 2)
    np.savetxt("binary.csv", np.column_stack([yb, s1]), delimiter=",", fmt="%.17g")
    rep, _, err = _calibrate(cli, "binary.csv", out="binary")
    assert rep["n_classes"] == 2 and "read as the labels" in err
    assert cli.temperature(rep) == pytest.approx(_t(s1, yb), rel=1e-6)
    # a column chosen by its number
    code, _, err = cli.run("calibrate", "--method", "temperature", "labelled.csv", "--label-column", "0",
                       "--logit-columns", "1,2,3,4", "--out", "c", "--no-diagram")
    assert code == 0, err
    assert cli.temperature(cli.report("c")) == pytest.approx(t, rel=1e-6)


def test_label_and_logit_columns_by_name_list_and_prefix(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame({"id": np.arange(len(y)) * 7.0, "target": y})
    for k in range(4):
        frame[f"logit_{k}"] = z[:, k].astype(np.float64)
    frame["weight"] = 1.0
    frame.to_csv("named.csv", index=False)
    frame.to_parquet("named.parquet")
    t = _t(z, y)
    for path in ("named.csv", "named.parquet"):
        for columns in ("logit_", "logit_*", "logit_0,logit_1,logit_2,logit_3"):
            out = f"{path}-{columns}".replace("*", "s").replace(",", "")
            code, _, err = cli.run("calibrate", "--method", "temperature", path, "--label-column", "target",
                               "--logit-columns", columns, "--out", out, "--no-diagram")
            assert code == 0, err
            assert cli.temperature(cli.report(out)) == pytest.approx(
                t, rel=1e-6)
    found = "'id', 'target', 'logit_0', 'logit_1', 'logit_2', 'logit_3', 'weight'"
    line = cli.error("calibrate", "named.csv", "--logit-columns", "logit_",
                      "--out", "x", match="no labels found")
    assert found in line and "--label-column" in line
    line = cli.error("calibrate", "named.csv", "--label-column", "y", "--out", "x",
                      match="no column named 'y'")
    assert found in line and "use --label-column" in line
    line = cli.error("calibrate", "named.csv", "--label-column", "target",
                      "--logit-columns", "score_", "--out", "x",
                      match="no column named or starting with 'score_'")
    assert found in line and "use --logit-columns" in line
    cli.error("calibrate", "named.csv", "--label-column", "target", "--logit-columns",
               "logit_0,z9", "--out", "x", match="no column named 'z9'")
    cli.error("calibrate", "named.csv", "--label-column", "target", "--logit-columns",
               "target,logit_0", "--out", "x", match="both the label column and a score")
    assert not os.path.exists("x")


def test_npz_and_pt_errors_name_the_keys_found_and_the_option(cli, data):
    import torch

    z, y = data
    np.savez("named.npz", scores=z, target=y)
    np.savez("nolabels.npz", logits=z)
    torch.save({"scores": torch.from_numpy(z)}, "named.pt")
    line = cli.error("calibrate", "named.npz", match="no array named 'logits'")
    assert "'scores', 'target'" in line and "--logits-key" in line
    line = cli.error("calibrate", "nolabels.npz", match="no labels found")
    assert "arrays: 'logits'" in line and "--labels-key" in line and "--labels FILE" in line
    line = cli.error("calibrate", "named.pt", match="no entry named 'logits'")
    assert "'scores'" in line and "--logits-key" in line
    torch.save([torch.from_numpy(z), torch.from_numpy(y)], "list.pt")
    line = cli.error("calibrate", "list.pt", match="holds a list of 2 items")
    assert "as a dict" in line


def test_pt_refused_by_weights_only_loading_is_one_clean_complete_line(cli, data):
    import datetime

    import torch

    z, y = data
    torch.save({"logits": torch.from_numpy(z), "labels": torch.from_numpy(y),
                "written": datetime.date(2025, 1, 31)}, "objects.pt")
    line = cli.error("calibrate", "objects.pt", match="weights-only loader refuses")
    assert "\x1b" not in line
    assert "datetime.date" in line
    assert line.rstrip().endswith("as .npz")


# ------------------------------------------------------------------------- input kinds


def test_probabilities_are_recognised_and_calibrated_through_their_log(cli, data):
    z, y = data
    p = softmax(z.astype(np.float64))
    np.savez("probs.npz", logits=p.astype(np.float32), labels=y)
    rep, out, _ = _calibrate(cli, "probs.npz")
    assert rep["input"]["kind"] == "probs"
    assert "sums to 1 within 0.001" in rep["input"]["reason"]
    assert "input: probs (assumed: every row is non-negative and sums to 1" in out
    assert cli.temperature(rep) == pytest.approx(_t(z, y), rel=1e-5)


def test_one_column_of_probabilities_is_p_of_class_one(cli):
    rng = np.random.default_rng(3)
    s = rng.normal(size=500) * 4
    y = (rng.uniform(size=500) < 1 / (1 + np.exp(-s / 4))).astype(np.int64)
    p = 1 / (1 + np.exp(-s))
    np.savez("p1.npz", logits=p, labels=y)
    rep, out, _ = _calibrate(cli, "p1.npz")
    assert rep["input"]["kind"] == "probs" and rep["n_classes"] == 2
    assert "P(class 1)" in out
    assert cli.temperature(rep) == pytest.approx(_t(s, y), rel=1e-6)
    # the same column, declared logits, is fitted as logits
    code, _, err = cli.run("calibrate", "--method", "temperature", "p1.npz", "--input", "logits", "--out", "as-logits",
                       "--no-diagram")
    assert code == 0, err
    rep = cli.report("as-logits")
    assert rep["input"] == {"kind": "logits", "reason": "given (--input logits)",
                            "zero_floor": None}
    assert cli.temperature(rep) == pytest.approx(_t(p, y), rel=1e-9)


def test_log_probabilities_kind(cli, data):
    z, y = data
    lp = log_softmax(z.astype(np.float64))
    np.savez("logp.npz", logits=lp, labels=y)
    rep, _, _ = _calibrate(cli, "logp.npz")
    assert rep["input"]["kind"] == "logits"  # auto: log-probabilities are logits already
    t = _t(z, y)
    assert cli.temperature(rep) == pytest.approx(t, rel=1e-6)
    code, _, err = cli.run("calibrate", "--method", "temperature", "logp.npz", "--input", "log-probs", "--out", "lp",
                       "--no-diagram")
    assert code == 0, err
    assert cli.report("lp")["input"]["kind"] == "log-probs"
    assert cli.temperature(cli.report("lp")) == pytest.approx(t, rel=1e-6)
    s = z[:, 1] - z[:, 0]
    yb = (y % 2).astype(np.int64)
    np.savez("logp1.npz", logits=-np.logaddexp(0, -s), labels=yb)  # log P(class 1)
    code, _, err = cli.run("calibrate", "--method", "temperature", "logp1.npz", "--input", "log-probs", "--out",
                       "lp1", "--no-diagram")
    assert code == 0, err
    assert cli.temperature(cli.report("lp1")) == pytest.approx(
        _t(s, yb), rel=1e-6)
    # auto reads the column as a binary logit, and says how to read it as log P(class 1)
    rep, out, _ = _calibrate(cli, "logp1.npz", out="lp1-auto")
    assert rep["input"]["kind"] == "logits" and "--input log-probs" in rep["input"]["reason"]
    assert "pass --input log-probs if it is log P(class 1)" in out


def test_zero_probabilities_are_read_as_half_the_smallest_with_a_note(cli, data):
    z, y = data
    p = np.round(softmax(z.astype(np.float64)), 3)  # a CSV's rounding: many exact zeros
    p /= p.sum(axis=1, keepdims=True)
    zeros = int((p == 0).sum())
    smallest = p[p > 0].min()
    assert zeros > 50
    np.savez("rounded.npz", logits=p, labels=y)
    code, _, err = cli.run("calibrate", "rounded.npz", "--out", "r", "--no-diagram")
    assert code == 0, err
    rep = cli.report("r")
    note = f"rounded.npz: {zeros} probabilities of exactly 0 read as {smallest / 2:.3g}, half"
    assert note in err and any(note in n for n in rep["notes"])
    assert all(c["error"] is None for c in rep["candidates"]), rep["candidates"]
    assert rep["before"]["nll"] is not None  # finite: no label has probability 0 left
    floored = np.where(p == 0, smallest / 2, p)
    floored /= floored.sum(axis=1, keepdims=True)
    cli.ok("calibrate", "rounded.npz", "--method", "temperature", "--out", "t", "--no-diagram")
    assert cli.temperature(cli.report("t")) == pytest.approx(_t(np.log(floored), y), rel=1e-6)
    # one column: p = 0 and p = 1 both leave a class at 0
    np.savez("p1.npz", logits=np.array([0.0, 1.0, 0.25, 0.5, 0.75, 1.0]),
             labels=np.array([0, 1, 0, 1, 1, 0]))
    _, err = cli.ok("calibrate", "p1.npz", "--method", "temperature", "--cv", "2", "--out",
                    "one", "--no-diagram")
    assert "3 probabilities of exactly 0 read as 0.125" in err
    _, err = cli.ok("apply", "rounded.npz", "--report", "t/report.json", "--out", "p.npy")
    assert (f"rounded.npz: {zeros} probabilities of exactly 0 read as {smallest / 2:.3g}, as in "
            "the calibration file of t/report.json") in err


def test_a_report_without_a_floor_leaves_apply_its_files_own(cli, data):
    # reports written before every probability file recorded its floor hold null there:
    # apply then reads its file's zeros as half that file's own least probability, and says so
    z, y = data
    p = np.round(softmax(z.astype(np.float64)), 3)
    p /= p.sum(axis=1, keepdims=True)
    few = np.flatnonzero((p == 0).any(axis=1))[:5]
    np.savez("rounded.npz", logits=p, labels=y)
    np.savez("few.npz", logits=p[few], labels=y[few])
    cli.ok("calibrate", "rounded.npz", "--method", "temperature", "--out", "t", "--no-diagram")
    rep = cli.report("t")
    rep["input"]["zero_floor"] = None
    with open("old.json", "w") as fh:
        json.dump(rep, fh)
    _, err = cli.ok("apply", "few.npz", "--report", "old.json", "--out", "few.npy")
    assert "half the smallest positive one" in err
    own = p[few][p[few] > 0].min()
    logs = np.where(p[few] == 0, np.log(own / 2), np.log(np.where(p[few] > 0, p[few], 1.0)))
    logs -= np.logaddexp.reduce(logs, axis=1, keepdims=True)
    t = cli.temperature(rep)
    assert np.allclose(np.load("few.npy"), softmax(logs / t), rtol=1e-6, atol=1e-12)


def test_log_probabilities_of_minus_inf_are_read_as_zero_probabilities(cli, data):
    # a zero probability given as log 0 = -inf (--input log-probs) is read by the same rule as
    # the probability 0 itself: the same floor, the same rows, the same fit
    z, y = data
    p = np.round(softmax(z.astype(np.float64)), 3)
    p /= p.sum(axis=1, keepdims=True)
    assert (p == 0).sum() > 50
    np.savez("p.npz", logits=p, labels=y)
    with np.errstate(divide="ignore"):
        np.savez("lp.npz", logits=np.log(p), labels=y)
    cli.ok("calibrate", "p.npz", "--method", "temperature", "--out", "a", "--no-diagram")
    _, err = cli.ok("calibrate", "lp.npz", "--input", "log-probs", "--method", "temperature",
                    "--out", "b", "--no-diagram")
    assert "probabilities of exactly 0 read as" in err
    a, b = cli.report("a"), cli.report("b")
    assert b["input"]["zero_floor"] == pytest.approx(a["input"]["zero_floor"], rel=1e-12)
    assert cli.temperature(b) == pytest.approx(cli.temperature(a), rel=1e-9)


def test_zero_probabilities_of_every_file_are_read_as_in_the_calibration_file(cli, data):
    # apply and --test read a zero as the calibration file's floor, not as half their own
    # smallest probability: a row's calibrated probabilities depend on the row alone
    z, y = data
    p = np.round(softmax(z.astype(np.float64)), 3)
    p /= p.sum(axis=1, keepdims=True)
    smallest = p[p > 0].min()
    few = np.flatnonzero((p == 0).any(axis=1))[:5]
    assert p[few][p[few] > 0].min() > smallest  # their own floor would differ
    np.savez("rounded.npz", logits=p, labels=y)
    np.savez("few.npz", logits=p[few], labels=y[few])
    cli.ok("calibrate", "rounded.npz", "--method", "temperature", "--out", "t", "--no-diagram",
           "--test", "few.npz")
    rep = cli.report("t")
    assert rep["input"]["zero_floor"] == pytest.approx(np.log(smallest / 2), rel=1e-12)
    assert any("few.npz" in n and "as in the calibration file" in n for n in rep["notes"])
    floored = np.where(p == 0, smallest / 2, p)
    floored = np.log(floored / floored.sum(axis=1, keepdims=True))
    t = cli.temperature(rep)
    cli.ok("apply", "few.npz", "--report", "t/report.json", "--out", "few.npy")
    assert np.allclose(np.load("few.npy"), softmax(floored[few] / t), rtol=1e-6, atol=1e-12)
    # a calibration file without zeros fixes the floor too (the library's rule: half the
    # least probability the fit saw), and apply reads its file's zeros with it
    clean = softmax(z.astype(np.float64))
    np.savez("clean.npz", logits=clean, labels=y)
    cli.ok("calibrate", "clean.npz", "--method", "temperature", "--out", "c", "--no-diagram")
    floor = cli.report("c")["input"]["zero_floor"]
    assert floor == np.log(clean.min()) - np.log(2.0)
    _, err = cli.ok("apply", "few.npz", "--report", "c/report.json", "--out", "few2.npy")
    assert "as in the calibration file of c/report.json" in err
    logs = np.where(p[few] == 0, floor, np.log(np.where(p[few] > 0, p[few], 1.0)))
    logs -= np.logaddexp.reduce(logs, axis=1, keepdims=True)
    t = cli.temperature(cli.report("c"))
    assert np.allclose(np.load("few2.npy"), softmax(logs / t), rtol=1e-6, atol=1e-12)


def test_input_kind_errors_are_one_line(cli, data):
    z, y = data
    p = softmax(z.astype(np.float64))
    np.savez("logits.npz", logits=z, labels=y)
    np.savez("unnormalised.npz", logits=p * 0.99, labels=y)
    np.savez("probs.npz", logits=p, labels=y)
    cli.error("calibrate", "logits.npz", "--input", "probs",
               match="probabilities must lie in [0, 1]")
    line = cli.error("calibrate", "unnormalised.npz", "--input", "probs",
                      match="probabilities must sum to 1 in every row, row 0 sums to 0.99")
    assert "--input logits" in line
    cli.error("calibrate", "logits.npz", "--input", "log-probs",
               match="log-probabilities must be ≤ 0")
    cli.error("calibrate", "probs.npz", "--input", "log-probs",
               match="log-probabilities must be ≤ 0")
    np.savez("negative.npz", logits=-np.abs(z), labels=y)
    cli.error("calibrate", "negative.npz", "--input", "log-probs",
               match="must exponentiate to rows that sum to 1")
    line = cli.error("calibrate", "probs.npz", "--test", "logits.npz",
                      match="--test logits.npz: read as logits")
    assert "probs.npz as probabilities" in line and "--input" in line


# ------------------------------------------------------------------------- bad files


def test_bad_files_are_one_line_and_exit_2(cli, data):
    import pathlib

    z, y = data
    np.save("logits.npy", z)
    np.save("labels.npy", y)
    np.savez("nolabels.npz", logits=z)
    np.savez("range.npz", logits=z, labels=y + 1)
    np.savez("negative.npz", logits=z, labels=y - 1)
    np.savez("short.npz", logits=z, labels=y[:-3])
    zn = z.copy()
    zn[3, 2] = np.nan
    np.savez("nan.npz", logits=zn, labels=y)
    zi = z.copy()
    zi[4, 0] = np.inf
    np.savez("inf.npz", logits=zi, labels=y)
    np.savez("zero_rows.npz", logits=np.zeros((0, 4)), labels=np.zeros(0, dtype=int))
    np.savez("floatlabels.npz", logits=z, labels=y + 0.5)
    pathlib.Path("empty.npz").touch()
    pathlib.Path("corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    pathlib.Path("corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    pathlib.Path("corrupt.pt").write_bytes(b"not a torch file")
    pathlib.Path("text.csv").write_text("label,a,b\n1,0.5,0.2\n0,0.1,oops\n")
    pathlib.Path("ragged.csv").write_text("label,a,b\n1,0.5,0.2\n0,0.1\n")
    pathlib.Path("header_only.csv").write_text("label,a,b\n")
    pathlib.Path("blank.csv").write_text("\n\n")
    pathlib.Path("wide_header.csv").write_text("label,a,b,c\n1,0.5,0.2\n")
    pathlib.Path("corrupt.parquet").write_bytes(b"PAR1 nope")
    pathlib.Path("preds.txt").write_text("1,2\n")
    pathlib.Path("emptydir").mkdir()
    cases = [
        (["empty.npz"], "empty"),
        (["corrupt.npz"], "cannot read"),
        (["corrupt.npy", "--labels", "labels.npy"], "cannot read"),
        (["corrupt.pt"], "cannot read"),
        (["corrupt.parquet"], "cannot read"),
        (["text.csv"], "the score column 'b' holds text ('oops' in line 3)"),
        (["ragged.csv"], "fields"),
        (["header_only.csv"], "no data rows"),
        (["blank.csv"], "no rows"),
        (["wide_header.csv"], "the header has 4 names for 3 columns"),
        (["logits.npy"], "no labels"),
        (["nolabels.npz"], "no labels"),
        (["range.npz"], "out of range"),
        (["negative.npz"], "label -1"),
        (["short.npz"], "labels for"),
        (["logits.npy", "--labels", "short.npz"], "397 labels for 400 rows"),
        (["logits.npy", "--labels", "nolabels.npz"], "1-D array of labels"),
        (["nan.npz"], "nan"),
        (["inf.npz"], "inf"),
        (["zero_rows.npz"], "no predictions"),
        (["floatlabels.npz"], "integer"),
        (["preds.txt"], "unsupported file type"),
        (["nolabels.npz", "--logits-key", "scores"], "no array named 'scores'"),
        (["emptydir"], "no prediction files"),
        (["logits.npy", "logits.npy", "--labels", "labels.npy"], "one input file"),
    ]
    for args, match in cases:
        cli.error("calibrate", *args, "--out", "never", match=match)
    assert not os.path.exists("never")


def test_a_calibration_set_of_one_class_or_fewer_rows_than_folds_is_refused(cli, data):
    z, y = data
    np.savez("one.npz", logits=z, labels=np.full(len(y), 2))
    cli.error("calibrate", "one.npz", "--out", "x",
              match="one.npz: every label is 2; calibration needs rows of at least two classes")
    np.savez("small.npz", logits=z[:3], labels=np.array([0, 1, 0]))
    cli.error("calibrate", "small.npz", "--out", "x",
              match="--cv 5: more folds than the 3 rows of small.npz; pass --cv 3 or fewer")
    rep, _, _ = _calibrate(cli, "small.npz", "--cv", "3", out="three")
    assert rep["n_samples"] == 3
    assert not os.path.exists("x")
