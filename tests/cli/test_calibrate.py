"""``logitkit calibrate`` end to end: the demo, the table and the report, progress, warnings,
``python -m logitkit``, the top-level usage and ``logitkit bench``.  The reader is tested in
``test_inputs.py``, ``apply`` in ``test_apply.py``, path errors in ``test_paths.py``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from logitkit.calibration import TemperatureScaler
from logitkit.cli import main

# ------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "out"
    code = main(["calibrate", "--out", str(folder)])
    return code, folder


def test_demo_halves_ece_and_writes_report_and_png(cli, demo_run):
    from matplotlib.image import imread

    code, folder = demo_run
    assert code == 0
    rep = cli.report(folder)
    assert rep["after"]["ece"] <= 0.5 * rep["before"]["ece"]
    assert rep["after"]["nll"] < rep["before"]["nll"]
    assert rep["calibrator"]["params"]["temperature"] > 1 and rep["converged"]
    assert rep["before"]["accuracy"] == rep["after"]["accuracy"]
    assert set(rep["before"]) == {"accuracy", "nll", "ece", "mce", "rms_ce", "brier"}
    assert imread(folder / "reliability.png").shape == (500, 1000, 4)
    assert sorted(os.listdir(folder)) == ["reliability.png", "report.json"]  # no temp files


def test_demo_prints_before_after_table_and_default_folder(cli):
    code, out, _ = cli.run("calibrate", "--bins", "10")
    assert code == 0
    for row in ("accuracy", "NLL", "ECE", "MCE", "Brier", "chosen: temperature (T = "):
        assert any(line.startswith(row) for line in out.splitlines()), row
    assert os.path.isdir("logitkit-calibration")
    code, _, _ = cli.run("calibrate", "--json")
    assert code == 0 and os.path.isdir("logitkit-calibration-2")  # never reuses a folder


def test_subprocess_python_m_logitkit(cli, make_data, tmp_path):
    z, y = make_data()
    np.savez(tmp_path / "preds.npz", logits=z, labels=y)
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "logitkit", "calibrate", "preds.npz", "--json",
                           "--no-diagram", "--out", str(out)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep == cli.report(out)
    assert rep["calibrator"]["params"]["temperature"] == pytest.approx(
        TemperatureScaler().fit(z, y).temperature_, rel=1e-9)
    bad = subprocess.run([sys.executable, "-m", "logitkit", "calibrate", "missing.npz"],
                         capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_report_schema_and_table_come_from_one_place(cli, data):
    from logitkit.cli._report import load_report, render

    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    code, out, _ = cli.run("calibrate", "preds.npz", "--out", "o", "--no-diagram")
    assert code == 0
    rep = load_report(__import__("pathlib").Path("o/report.json"))
    assert rep["schema_version"] == 1 and rep["n_classes"] == 4
    assert rep["input"]["kind"] == "logits" and rep["method"] == rep["calibrator"]["method"]
    assert out.startswith(render(rep))


# ------------------------------------------------------------------------- options


def test_bins_and_binning_options(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    code, _, _ = cli.run("calibrate", "preds.npz", "--bins", "5", "--binning", "quantile",
                     "--out", "q")
    assert code == 0
    rep = cli.report("q")
    assert rep["bins"] == 5 and rep["binning"] == "quantile"
    code, _, _ = cli.run("calibrate", "preds.npz", "--bins", "5", "--out", "u",
                     "--no-diagram")
    assert cli.report("u")["after"]["ece"] != rep["after"]["ece"]
    assert cli.report("u")["calibrator"] == rep["calibrator"]


def test_progress_always_off_a_terminal_prints_finished_stages_not_stuck_bars(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    code, _, err = cli.run("calibrate", "preds.npz", "--progress", "always", "--out", "p",
                       "--no-diagram")
    assert code == 0
    assert "0%" not in err and "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("logitkit: fitting T")]
    assert len(lines) == 1 and "400 rows" in lines[0] and " passes) in " in lines[0]
    assert any(line.startswith("logitkit: measuring: ") for line in err.splitlines())
    code, _, err = cli.run("calibrate", "preds.npz", "--progress", "never", "--out", "n",
                       "--no-diagram")
    assert code == 0 and err == ""


def test_progress_on_a_terminal_draws_bars_and_counts_passes():
    from logitkit.cli._progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress("always", long_input=False, stream=stream)
    with progress.stage("fitting", 10) as tick:
        for _ in range(3):
            tick(10)
    text = stream.getvalue()
    assert "fitting, pass 3" in text and "%|" in text and "logitkit:" not in text
    quiet = Terminal()
    with Progress("auto", long_input=False, stream=quiet).stage("fitting", 10) as tick:
        tick(10)
    assert quiet.getvalue() == ""


def test_at_bound_warning_is_one_line_and_in_the_report(cli):
    rng = np.random.default_rng(1)
    np.savez("random.npz", logits=rng.normal(size=(300, 3)), labels=rng.integers(0, 3, 300))
    code, _, err = cli.run("calibrate", "random.npz", "--out", "r", "--no-diagram")
    assert code == 0
    assert err.startswith("logitkit: warning: The optimal temperature lies at the upper bound")
    assert cli.report("r")["at_bound"] and cli.report("r")["warnings"]


def test_bad_options_are_one_line_and_exit_2(cli):
    for args, match in [(["--bins", "0"], "positive integer"),
                        (["--binning", "adaptive"], "invalid choice"),
                        (["--input", "odds"], "invalid choice"),
                        (["--progress", "sometimes"], "invalid choice"),
                        (["--unknown"], "unrecognized arguments")]:
        cli.error("calibrate", *args, "--out", "never", match=match)
    assert not os.path.exists("never")


def test_top_level_usage(cli):
    code, out, err = cli.run()
    assert code == 2 and "calibrate" in err
    code, out, _ = cli.run("--version")
    assert code == 0 and out.startswith("logitkit ")
    code, out, _ = cli.run("calibrate", "--help")
    assert code == 0 and "--binning" in out and "--force" in out
    cli.error("frobnicate", match="invalid choice")


# ------------------------------------------------------------------------- bench


def test_bench_json_and_table(cli):
    argv = ["bench", "--shapes", "16x64,4x300", "--ops", "softmax,cross_entropy",
            "--dtypes", "float32", "--peers", "scipy", "--repeats", "1"]
    code, out, err = cli.run(*argv, "--json")
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
    code, out, err = cli.run(*argv[:-2], "--repeats", "1", "--peers", "none")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == ["op", "shape", "dtype", "memcpy", "ms"]
    assert "softmax" in out and "times are medians of 1 repeats" in out
    assert "output recycling" in out


def test_bench_bad_options_are_one_line_and_exit_2(cli):
    cli.error("bench", "--shapes", "12by4", match="--shapes")
    cli.error("bench", "--ops", "softmax,frobnicate", match="--ops")
    cli.error("bench", "--dtypes", "float16", match="--dtypes")
    cli.error("bench", "--peers", "numpy", match="--peers")
    cli.error("bench", "--repeats", "0", match="--repeats")
