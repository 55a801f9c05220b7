"""``logitkit calibrate`` and ``logitkit apply`` end to end: every input format, the demo, every
bad input (one line on stderr, exit status 2, no traceback), no overwrite without --force."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from logitkit import softmax
from logitkit.calibration import TemperatureScaler
from logitkit.cli import main


def _data(n=400, k=4, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    cdf = np.cumsum(softmax(true), axis=1)
    y = np.minimum((rng.uniform(size=(n, 1)) > cdf).sum(axis=1), k - 1)
    return (3 * true).astype(np.float32), y.astype(np.int64)


@pytest.fixture
def data():
    return _data()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _user_error(capsys, *argv, match):
    code, out, err = _run(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err + out
    return lines[0]


def _report(folder):
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as fh:
        return json.load(fh)


# ------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "out"
    code = main(["calibrate", "--out", str(folder)])
    return code, folder


def test_demo_halves_ece_and_writes_report_and_png(demo_run):
    from matplotlib.image import imread

    code, folder = demo_run
    assert code == 0
    report = _report(folder)
    assert report["after"]["ece"] <= 0.5 * report["before"]["ece"]
    assert report["after"]["nll"] < report["before"]["nll"]
    assert report["temperature"] > 1 and report["converged"]
    assert report["before"]["accuracy"] == report["after"]["accuracy"]
    assert set(report["before"]) == {"accuracy", "nll", "ece", "mce", "rms_ce", "brier"}
    assert imread(folder / "reliability.png").shape == (500, 1000, 4)
    assert sorted(os.listdir(folder)) == ["reliability.png", "report.json"]  # no temp files


def test_demo_prints_before_after_table_and_default_folder(capsys):
    code, out, _ = _run(capsys, "calibrate", "--bins", "10")
    assert code == 0
    for row in ("accuracy", "NLL", "ECE", "MCE", "Brier", "T "):
        assert any(line.startswith(row) for line in out.splitlines()), row
    assert os.path.isdir("logitkit-calibration")
    code, _, _ = _run(capsys, "calibrate", "--json")
    assert code == 0 and os.path.isdir("logitkit-calibration-2")  # never reuses a folder


def test_subprocess_python_m_logitkit(tmp_path):
    z, y = _data()
    np.savez(tmp_path / "preds.npz", logits=z, labels=y)
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "logitkit", "calibrate", "preds.npz", "--json",
                           "--no-diagram", "--out", str(out)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == _report(out)
    assert report["temperature"] == pytest.approx(_expected_t(z, y), rel=1e-9)
    bad = subprocess.run([sys.executable, "-m", "logitkit", "calibrate", "missing.npz"],
                         capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------- input formats


def _expected_t(z, y):
    return TemperatureScaler().fit(z, y).temperature_


def test_every_input_format_gives_the_same_temperature(capsys, data):
    import pandas as pd
    import torch

    z, y = data
    t = _expected_t(z, y)
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
    }
    for name, args in cases.items():
        code, out, err = _run(capsys, "calibrate", *args, "--out", name, "--json",
                              "--no-diagram")
        assert code == 0, (name, err)
        assert os.listdir(name) == ["report.json"]
        report = json.loads(out)
        tol = 1e-6 if "csv" in name else 1e-9
        assert report["temperature"] == pytest.approx(t, rel=tol), name
        assert report["n_samples"] == len(y) and report["n_classes"] == z.shape[1]
        assert report["inputs"] == [args[0]]


def test_several_files_are_concatenated_and_binary_column_accepted(capsys, data):
    z, y = data
    np.savez("a.npz", logits=z[:150], labels=y[:150])
    np.savez("b.npz", logits=z[150:], labels=y[150:])
    code, out, _ = _run(capsys, "calibrate", "a.npz", "b.npz", "--json", "--out", "two",
                        "--no-diagram")
    assert code == 0
    assert json.loads(out)["temperature"] == pytest.approx(_expected_t(z, y), rel=1e-9)
    s = z[:, 1] - z[:, 0]
    yb = (y % 2).astype(np.int64)
    np.savez("binary.npz", logits=s, labels=yb)
    code, out, _ = _run(capsys, "calibrate", "binary.npz", "--json", "--out", "bin",
                        "--no-diagram")
    assert code == 0
    report = json.loads(out)
    assert report["n_classes"] == 2
    assert report["temperature"] == pytest.approx(_expected_t(s, yb), rel=1e-9)


def test_bins_binning_and_progress_options(capsys, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    code, _, err = _run(capsys, "calibrate", "preds.npz", "--bins", "5", "--binning",
                          "quantile", "--progress", "always", "--out", "q")
    assert code == 0
    report = _report("q")
    assert report["bins"] == 5 and report["binning"] == "quantile"
    assert "fitting T, pass 1" in err
    code, _, _ = _run(capsys, "calibrate", "preds.npz", "--bins", "5", "--out", "u",
                      "--no-diagram")
    assert _report("u")["after"]["ece"] != report["after"]["ece"]
    assert _report("u")["temperature"] == report["temperature"]


def test_at_bound_warning_is_one_line_and_in_the_report(capsys):
    rng = np.random.default_rng(1)
    np.savez("random.npz", logits=rng.normal(size=(300, 3)), labels=rng.integers(0, 3, 300))
    code, _, err = _run(capsys, "calibrate", "random.npz", "--out", "r", "--no-diagram")
    assert code == 0
    assert err.startswith("logitkit: warning: The optimal temperature lies at the upper bound")
    assert _report("r")["at_bound"] and _report("r")["warnings"]


# ------------------------------------------------------------------------- outputs


def test_existing_output_needs_force_and_writes_are_atomic(capsys, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    assert _run(capsys, "calibrate", "preds.npz", "--out", "out")[0] == 0
    before = pathlib.Path("out/report.json").read_text()
    _user_error(capsys, "calibrate", "preds.npz", "--out", "out", match="--force")
    assert pathlib.Path("out/report.json").read_text() == before
    np.savez("preds.npz", logits=z[:200], labels=y[:200])
    code, _, _ = _run(capsys, "calibrate", "preds.npz", "--out", "out", "--force")
    assert code == 0 and _report("out")["n_samples"] == 200
    assert sorted(os.listdir("out")) == ["reliability.png", "report.json"]
    pathlib.Path("afile").touch()
    _user_error(capsys, "calibrate", "preds.npz", "--out", "afile", "--force",
                match="not a folder")


def test_apply_with_temperature_or_report(capsys, data):
    z, y = data
    np.save("logits.npy", z)
    np.savez("preds.npz", logits=z, labels=y)
    assert _run(capsys, "calibrate", "preds.npz", "--out", "cal", "--no-diagram")[0] == 0
    t = _report("cal")["temperature"]
    code, out, _ = _run(capsys, "apply", "logits.npy", "--report", "cal/report.json", "--out",
                        "probs.npy")
    assert code == 0 and "probs.npy" in out
    probs = np.load("probs.npy")
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, softmax(z.astype(np.float64) / t), rtol=1e-5, atol=1e-7)
    _user_error(capsys, "apply", "logits.npy", "--temperature", "2", "--out", "probs.npy",
                match="--force")
    code, _, _ = _run(capsys, "apply", "preds.npz", "--temperature", "2", "--out", "probs.npy",
                      "--force")
    assert code == 0
    np.testing.assert_allclose(np.load("probs.npy"), softmax(z.astype(np.float64) / 2),
                               rtol=1e-5, atol=1e-7)
    import pandas as pd

    frame = pd.DataFrame(z, columns=list("abcd"))
    frame["label"] = y
    frame.to_csv("preds.csv", index=False)
    assert _run(capsys, "apply", "preds.csv", "--temperature", "0.5", "--out", "p.csv")[0] == 0
    back = np.loadtxt("p.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(back, softmax(z.astype(np.float64) / 0.5), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_and_exit_2(capsys, data):
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
    with open("corrupt.npz", "wb") as fh:
        fh.write(b"PK\x03\x04 this is not a zip archive at all")
    with open("corrupt.npy", "wb") as fh:
        fh.write(b"\x93NUMPY garbage")
    with open("corrupt.pt", "wb") as fh:
        fh.write(b"not a torch file")
    with open("text.csv", "w") as fh:
        fh.write("label,a,b\n1,0.5,oops\n")
    with open("ragged.csv", "w") as fh:
        fh.write("label,a,b\n1,0.5,0.2\n0,0.1\n")
    with open("header_only.csv", "w") as fh:
        fh.write("label,a,b\n")
    with open("corrupt.parquet", "wb") as fh:
        fh.write(b"PAR1 nope")
    pathlib.Path("preds.txt").write_text("1,2\n")
    pathlib.Path("emptydir").mkdir()
    cases = [
        (["missing.npz"], "no such file"),
        (["empty.npz"], "empty"),
        (["corrupt.npz"], "cannot read"),
        (["corrupt.npy", "--labels", "labels.npy"], "cannot read"),
        (["corrupt.pt"], "cannot read"),
        (["corrupt.parquet"], "cannot read"),
        (["text.csv"], "non-numeric"),
        (["ragged.csv"], "fields"),
        (["header_only.csv"], "no data rows"),
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
        (["--bins", "0"], "positive integer"),
        (["--binning", "adaptive"], "invalid choice"),
        (["--unknown"], "unrecognized arguments"),
        (["--labels", "labels.npy"], "needs an input file"),
    ]
    for args, match in cases:
        line = _user_error(capsys, "calibrate", *args, "--out", "never", match=match)
        assert line.startswith("logitkit"), line
    assert not os.path.exists("never")


def test_apply_bad_inputs(capsys, data):
    z, _ = data
    np.save("logits.npy", z)
    with open("bad.json", "w") as fh:
        fh.write("{not json")
    with open("no_t.json", "w") as fh:
        json.dump({"temperature": -1}, fh)
    cases = [
        (["logits.npy", "--out", "p.npy"], "one of the arguments"),
        (["logits.npy", "--temperature", "0", "--out", "p.npy"], "positive"),
        (["logits.npy", "--temperature", "nan", "--out", "p.npy"], "positive"),
        (["logits.npy", "--temperature", "2", "--report", "no_t.json", "--out", "p.npy"],
         "not allowed"),
        (["logits.npy", "--report", "bad.json", "--out", "p.npy"], "not a JSON report"),
        (["logits.npy", "--report", "no_t.json", "--out", "p.npy"], "positive 'temperature'"),
        (["logits.npy", "--report", "none.json", "--out", "p.npy"], "no such file"),
        (["logits.npy", "--temperature", "2", "--out", "p.parquet"], "unsupported output"),
        (["logits.npy", "--temperature", "2", "--out", "nodir/p.npy"], "no such folder"),
        (["missing.npy", "--temperature", "2", "--out", "p.npy"], "no such file"),
        (["logits.npy", "--temperature", "2"], "required"),
    ]
    for args, match in cases:
        _user_error(capsys, "apply", *args, match=match)
    assert not os.path.exists("p.npy")


def test_top_level_usage(capsys):
    code, out, err = _run(capsys)
    assert code == 2 and "calibrate" in err
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("logitkit ")
    code, out, _ = _run(capsys, "calibrate", "--help")
    assert code == 0 and "--binning" in out and "--force" in out
    _user_error(capsys, "frobnicate", match="invalid choice")


# ------------------------------------------------------------------------- bench


def test_bench_json_and_table(capsys):
    argv = ["bench", "--shapes", "16x64,4x300", "--ops", "softmax,cross_entropy",
            "--dtypes", "float32", "--peers", "scipy", "--repeats", "1"]
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["repeats"] == 1
    from logitkit._kernels import buffer_cache_limit

    assert report["buffer_cache_bytes"] == buffer_cache_limit()
    rows = report["results"]
    assert [(r["op"], r["shape"]) for r in rows] == [
        ("softmax", [16, 64]), ("cross_entropy", [16, 64]),
        ("softmax", [4, 300]), ("cross_entropy", [4, 300])]
    for r in rows:
        assert r["copy_s"] > 0 and r["dtype"] == "float32"
        assert set(r["seconds"]) == {"logitkit", "scipy"}
        assert r["ratio_to_copy"]["logitkit"] == pytest.approx(
            r["seconds"]["logitkit"] / r["copy_s"])
        assert r["speedup"]["scipy"] == pytest.approx(
            r["seconds"]["scipy"] / r["seconds"]["logitkit"])
    code, out, err = _run(capsys, *argv[:-2], "--repeats", "1", "--peers", "none")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == ["op", "shape", "dtype", "memcpy", "ms"]
    assert "softmax" in out and "times are medians of 1 repeats" in out
    assert "output recycling" in out


def test_bench_bad_options_are_one_line_and_exit_2(capsys):
    _user_error(capsys, "bench", "--shapes", "12by4", match="--shapes")
    _user_error(capsys, "bench", "--ops", "softmax,frobnicate", match="--ops")
    _user_error(capsys, "bench", "--dtypes", "float16", match="--dtypes")
    _user_error(capsys, "bench", "--peers", "numpy", match="--peers")
    _user_error(capsys, "bench", "--repeats", "0", match="--repeats")
