"""``logitkit calibrate`` end to end: the demo, the table and the report, progress, warnings,
``python -m logitkit``, the top-level usage and ``logitkit bench``.  The reader is tested in
``test_inputs.py``, ``apply`` in ``test_apply.py``, path errors in ``test_paths.py``."""

from __future__ import annotations

import contextlib
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
    """The demo, run once for the module: ``(exit status, output folder, stdout)``."""
    folder = tmp_path_factory.mktemp("demo") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["calibrate", "--out", str(folder)])
    return code, folder, stdout.getvalue()


def test_demo_tells_the_whole_story_held_out(cli, demo_run):
    from matplotlib.image import imread

    code, folder, _ = demo_run
    assert code == 0
    rep = cli.report(folder)
    methods = [c["method"] for c in rep["candidates"]]
    assert len(methods) >= 5 and methods[:2] == ["none", "temperature"]
    chosen = [c for c in rep["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["method"] == rep["method"] != "none"
    assert rep["evaluation"]["kind"] == "cross-fitted" and rep["evaluation"]["folds"] == 5
    # the "after" figures are the winner's out-of-fold figures, and beat leaving it alone
    assert rep["after"]["nll"] == pytest.approx(chosen[0]["nll"], rel=1e-9)
    assert rep["before"]["nll"] == pytest.approx(rep["candidates"][0]["nll"], rel=1e-9)
    assert rep["after"]["ece"] <= 0.5 * rep["before"]["ece"]
    assert rep["after"]["nll"] <= 0.5 * rep["before"]["nll"]
    assert min(c["nll"] for c in rep["candidates"] if c["nll"] is not None) <= chosen[0]["nll"]
    assert set(rep["before"]) == {"accuracy", "nll", "ece", "mce", "rms_ce", "brier"}
    assert imread(folder / "reliability.png").shape == (530, 1000, 4)  # 5.3 in high: a title
    assert sorted(os.listdir(folder)) == ["reliability.png", "report.json"]  # no temp files


def test_demo_model_is_scikit_learns_gaussian_naive_bayes():
    from sklearn.naive_bayes import GaussianNB

    from logitkit.cli._demo import (
        N_TRAIN,
        VAR_SMOOTHING,
        _load_digits,
        gaussian_naive_bayes,
        make_demo,
        naive_bayes_logits,
    )

    x, y = _load_digits()
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    ours = naive_bayes_logits(x[N_TRAIN:], gaussian_naive_bayes(x[:N_TRAIN], y[:N_TRAIN], 10,
                                                                VAR_SMOOTHING))
    theirs = GaussianNB(var_smoothing=VAR_SMOOTHING).fit(x[:N_TRAIN], y[:N_TRAIN])
    np.testing.assert_allclose(ours, theirs.predict_joint_log_proba(x[N_TRAIN:]), atol=1e-9)
    demo = make_demo()
    np.testing.assert_array_equal(demo.logits, ours)
    np.testing.assert_array_equal(demo.labels, y[N_TRAIN:])


def test_demo_prints_the_candidates_and_the_figures(demo_run):
    code, _, out = demo_run
    assert code == 0
    lines = out.splitlines()
    assert lines[2].startswith("after: cross-fitted: each of the 1,497 rows")
    header = next(i for i, line in enumerate(lines) if line.startswith("method "))
    assert lines[header].split() == ["method", "NLL", "ECE", "Brier", "accuracy", "fit", "s"]
    assert lines[header + 1].startswith("none ") and lines[header + 2].startswith("temperature ")
    assert sum("<- chosen" in line for line in lines) == 1
    for row in ("accuracy", "NLL", "ECE", "MCE", "RMS CE", "Brier", "chosen: "):
        assert any(line.startswith(row) for line in lines), row


def test_without_out_a_new_folder_every_time(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    out, _ = cli.ok("calibrate", "preds.npz", "--method", "temperature")
    assert "wrote logitkit-calibration/report.json" in out
    cli.ok("calibrate", "preds.npz", "--method", "temperature", "--json")
    assert os.path.isdir("logitkit-calibration-2")  # never reuses a folder


# ------------------------------------------------------------------------- held out


def _figures(logits, y):
    from logitkit import softmax
    from logitkit.calibration import accuracy, brier_score, ece, nll

    logits = np.asarray(logits, dtype=np.float64)
    probs = softmax(logits)
    return {"accuracy": float(accuracy(probs, y)), "nll": float(nll(logits, y, from_logits=True)),
            "ece": float(ece(probs, y)), "brier": float(brier_score(probs, y))}


def _assert_figures(block, expected, rel=1e-7):
    # the engine fuses the softmax into its pass: equal to the definitions up to rounding
    for key, value in expected.items():
        assert block[key] == pytest.approx(value, rel=rel, abs=1e-12), key


def test_after_figures_are_cross_fitted_not_in_sample(cli, make_data):
    from logitkit.calibration import MatrixScaler, select

    # few rows and a flexible method: in-sample figures would flatter it
    z, y = make_data(150, 5, seed=4)
    np.savez("small.npz", logits=z, labels=y)
    out, _ = cli.ok("calibrate", "small.npz", "--method", "matrix", "--cv", "3", "--seed", "7",
                    "--out", "m", "--no-diagram")
    rep = cli.report("m")
    assert rep["method"] == "matrix" and rep["evaluation"]["kind"] == "cross-fitted"
    assert "cross-fitted: each of the 150 rows scored by a calibrator fitted on the other 2 of 3" \
        in out
    sel = select(z, y, methods=["matrix"], cv=3, random_state=7)
    # (the same fits, to the optimiser's tolerance: threads may add in another order)
    _assert_figures(rep["after"], _figures(sel.oof_logits("matrix"), y), rel=1e-6)
    _assert_figures(rep["before"], _figures(z, y))
    fitted = MatrixScaler().fit(z, y)
    in_sample = fitted.predict_proba(z)
    assert rep["after"]["nll"] > 1.2 * _figures(fitted.transform(z), y)["nll"]
    assert [c["method"] for c in rep["candidates"]] == ["none", "temperature", "matrix"]
    # the calibrator written is the method refitted on every row
    from logitkit.calibration import Calibrator

    again = Calibrator.from_dict(rep["calibrator"])
    np.testing.assert_allclose(again.predict_proba(z), in_sample, rtol=1e-6, atol=1e-9)


def test_out_of_fold_figures_never_build_the_whole_calibrated_matrix(cli, make_data,
                                                                      monkeypatch):
    # regression: the command read select's oof_logits_ (an N x K float64 copy of the logits,
    # 800 MB on 1e6 x 100) and rebuilt every other candidate's the same way; it now calibrates
    # a block of rows at a time through the fold calibrators, with the same figures
    from logitkit.calibration import Selection, select

    z, y = make_data(300, 4, seed=9)
    np.savez("d.npz", logits=z, labels=y)
    sel = select(z, y, methods=["vector"], random_state=0)
    expected = {m: _figures(sel.oof_logits(m), y) for m in ("temperature", "vector")}

    def refuse(self, method):
        raise AssertionError("the whole out-of-fold matrix was built")

    monkeypatch.setattr(Selection, "oof_logits", refuse)
    cli.ok("calibrate", "d.npz", "--method", "vector", "--out", "o", "--no-diagram")
    rep = cli.report("o")
    _assert_figures(rep["after"], expected["vector"], rel=1e-9)
    rows = {c["method"]: c for c in rep["candidates"]}
    for method, want in expected.items():
        assert rows[method]["nll"] == pytest.approx(want["nll"], rel=1e-9)


def test_after_figures_on_a_test_file(cli, make_data):
    z, y = make_data(600, 4, seed=5)
    np.savez("calib.npz", logits=z[:400], labels=y[:400])
    np.savez("test.npz", logits=z[400:], labels=y[400:])
    out, _ = cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--method", "temperature",
                    "--out", "t", "--no-diagram")
    rep = cli.report("t")
    assert rep["evaluation"] == {"kind": "test", "folds": None, "rows": 200, "text": (
        "held out: the calibrator, fitted on all 400 calibration rows, measured on the 200 "
        "--test rows")}
    assert rep["test_inputs"] == ["test.npz"] and rep["n_samples"] == 400
    t = TemperatureScaler().fit(z[:400], y[:400]).temperature_
    assert cli.temperature(rep) == pytest.approx(t, rel=1e-9)
    test_z = z[400:].astype(np.float64)
    _assert_figures(rep["after"], _figures(test_z / t, y[400:]))
    _assert_figures(rep["before"], _figures(test_z, y[400:]))
    assert "measured on the 200 --test rows" in out
    # auto on the same files: the candidates still come from cross-validation on calib.npz
    cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--out", "a", "--no-diagram")
    rep = cli.report("a")
    assert rep["evaluation"]["kind"] == "test" and len(rep["candidates"]) >= 5


def test_a_method_select_did_not_choose_is_refitted_and_measured_on_the_test_file(cli,
                                                                                make_data):
    from logitkit.calibration import MatrixScaler, select

    # few calibration rows: select prefers a simpler map than the matrix asked for, so the
    # command refits matrix scaling itself; "after" must still be that fit on --test alone
    z, y = make_data(300, 5, seed=4)
    np.savez("calib.npz", logits=z[:150], labels=y[:150])
    np.savez("test.npz", logits=z[150:], labels=y[150:])
    cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--method", "matrix", "--cv", "3",
           "--seed", "7", "--out", "m", "--no-diagram")
    rep = cli.report("m")
    sel = select(z[:150], y[:150], methods=["matrix"], cv=3, random_state=7)
    assert sel.best_ != "matrix"  # the refit path, not select's own calibrator
    assert rep["method"] == "matrix" and rep["evaluation"]["kind"] == "test"
    assert [c["method"] for c in rep["candidates"] if c["chosen"]] == ["matrix"]
    fitted = MatrixScaler().fit(z[:150], y[:150])
    test_z = z[150:].astype(np.float64)
    _assert_figures(rep["after"], _figures(fitted.transform(test_z), y[150:]), rel=1e-6)
    _assert_figures(rep["before"], _figures(test_z, y[150:]))
    # the candidates' figures stay out of fold on the calibration rows
    assert rep["candidates"][2]["nll"] == pytest.approx(
        _figures(sel.oof_logits("matrix"), y[:150])["nll"], rel=1e-6)


def test_a_scores_only_test_file_takes_its_labels_from_test_labels(cli, make_data):
    z, y = make_data(600, 4, seed=5)
    np.savez("calib.npz", logits=z[:400], labels=y[:400])
    np.savez("test.npz", logits=z[400:], labels=y[400:])
    np.save("test_logits.npy", z[400:])
    np.save("test_labels.npy", y[400:])
    common = ("calib.npz", "--method", "temperature", "--no-diagram")
    cli.ok("calibrate", *common, "--test", "test.npz", "--out", "a")
    cli.ok("calibrate", *common, "--test", "test_logits.npy", "--test-labels",
           "test_labels.npy", "--out", "b")
    a, b = cli.report("a"), cli.report("b")
    assert b["evaluation"]["kind"] == "test" and b["evaluation"]["rows"] == 200
    assert b["test_inputs"] == ["test_logits.npy"]
    assert (b["before"], b["after"]) == (a["before"], a["after"])
    line = cli.error("calibrate", *common, "--test", "test_logits.npy", "--out", "c",
                     match="--test test_logits.npy: no labels found")
    assert line.endswith("pass --test-labels FILE"), line  # not --labels, which is the calibration file's


def _separable_files():
    # the wine file: every calibration row right with a wide margin; one held-out mistake
    rng = np.random.default_rng(0)

    def rows(n, mistakes):
        y = rng.integers(0, 3, n)
        z = rng.normal(size=(n, 3)) + 6 * np.eye(3)[y]
        z[:mistakes] = np.roll(6 * np.eye(3)[y[:mistakes]], 1, axis=1) + rng.normal(
            size=(mistakes, 3))
        return z, y

    z, y = rows(120, 0)
    zt, yt = rows(60, 1)
    np.savez("calib.npz", logits=z, labels=y)
    np.savez("test.npz", logits=zt, labels=yt)


def test_a_separable_file_is_not_reported_perfect(cli):
    # separable rows cannot show what over-confidence costs: left alone, and said why
    _separable_files()
    _, err = cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--out", "w",
                      "--no-diagram")
    rep = cli.report("w")
    assert rep["method"] == "none" and "separable" in err
    assert rep["after"]["nll"] == rep["before"]["nll"]
    # asked for, temperature scaling keeps a finite T (its ridge of half a row): no bound, and
    # the held-out mistake costs a few times its margin, not 100 times (T = 0.01 unpenalised)
    _, err = cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--method", "temperature",
                    "--out", "t", "--no-diagram")
    rep = cli.report("t")
    assert not rep["at_bound"] and "bound" not in err
    assert rep["after"]["nll"] < 3 * rep["before"]["nll"]


def test_a_temperature_at_its_bound_is_said_and_not_applied(cli, monkeypatch):
    # unpenalised (alpha=0), the same separable rows drive T to its lower bound, where in-sample
    # figures read NLL 0; a held-out mistake costs its margin / T
    from logitkit.calibration import TemperatureScaler

    monkeypatch.setitem(TemperatureScaler.__init__.__kwdefaults__, "alpha", 0.0)
    _separable_files()
    out, err = cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--out", "w",
                      "--no-diagram")
    rep = cli.report("w")
    temperature = rep["candidates"][1]
    assert temperature["method"] == "temperature" and temperature["at_bound"]
    assert "at a bound (separable?)" in out
    assert rep["method"] == "none" and "separable" in err
    # asked for, temperature scaling at its bound: said, and apply will not use it
    _, err = cli.ok("calibrate", "calib.npz", "--test", "test.npz", "--method", "temperature",
                    "--out", "t", "--no-diagram")
    rep = cli.report("t")
    assert rep["at_bound"] and "lower bound" in err
    assert rep["after"]["nll"] > 5 * rep["before"]["nll"]
    cli.error("apply", "test.npz", "--report", "t/report.json", "--out", "p.npy",
              match="not applied: its fit stopped at a bound")


def test_leaving_it_alone_is_a_legitimate_answer(cli):
    from logitkit import softmax

    # a small file from a model that is calibrated already: every fit only adds noise
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 3)) * 4
    y = (softmax(z).cumsum(axis=1) > rng.random((120, 1))).argmax(axis=1)
    np.savez("calibrated.npz", logits=z, labels=y)
    out, _ = cli.ok("calibrate", "calibrated.npz", "--out", "r", "--no-diagram")
    rep = cli.report("r")
    assert rep["method"] == "none" and rep["calibrator"]["method"] == "none"
    assert "chosen: none (the scores are left as they are)" in out
    assert rep["after"] == rep["before"]
    assert all(c["nll"] > rep["after"]["nll"] for c in rep["candidates"][1:] if c["nll"])
    cli.ok("apply", "calibrated.npz", "--report", "r/report.json", "--out", "p.npy")
    np.testing.assert_allclose(np.load("p.npy"), softmax(z), rtol=1e-12)


def test_a_method_asked_for_is_used_and_compared_with_the_baselines(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    out, _ = cli.ok("calibrate", "preds.npz", "--method", "histogram", "--out", "h",
                    "--no-diagram")
    rep = cli.report("h")
    assert rep["method"] == "histogram"
    assert [c["method"] for c in rep["candidates"]] == ["none", "temperature", "histogram"]
    assert [c["chosen"] for c in rep["candidates"]] == [False, False, True]
    assert rep["after"]["nll"] == pytest.approx(rep["candidates"][2]["nll"], rel=1e-9)
    chosen_line = next(line for line in out.splitlines() if "<- chosen" in line)
    assert chosen_line.startswith("histogram ")


def test_cv_and_seed_options(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--method", "vector", "--cv", "3", "--out", "a",
           "--no-diagram")
    cli.ok("calibrate", "preds.npz", "--method", "vector", "--cv", "3", "--seed", "1",
           "--out", "b", "--no-diagram")
    cli.ok("calibrate", "preds.npz", "--method", "vector", "--cv", "3", "--out", "c",
           "--no-diagram")
    a, b, c = (cli.report(f) for f in "abc")
    assert a["evaluation"]["folds"] == 3 and "3-fold" in a["candidates_note"]
    assert a["after"] == c["after"]  # reruns agree
    assert a["after"]["nll"] != b["after"]["nll"]  # other folds
    cli.error("calibrate", "preds.npz", "--cv", "1", match="expected an integer ≥ 2")
    cli.error("calibrate", "preds.npz", "--cv", "500", match="cv")
    cli.error("calibrate", "preds.npz", "--method", "platt", match="invalid choice")


def test_every_figure_has_an_interval_from_the_engine(cli, data):
    from logitkit.calibration import CalibrationStats

    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    out, _ = cli.ok("calibrate", "preds.npz", "--method", "temperature", "--out", "a",
                    "--no-diagram")
    rep = cli.report("a")
    ci = rep["intervals"]
    assert ci["level"] == 0.95 and ci["resamples"] == 1000
    stats = CalibrationStats().update(z.astype(np.float64), y, from_logits=True)
    direct = stats.intervals(random_state=0)
    for side in ("before", "after"):
        assert set(ci[side]) == {"accuracy", "nll", "ece", "mce", "rms_ce", "brier"}
        for key in ("accuracy", "nll", "brier"):  # means (a binned error's bootstrap is
            low, high = ci[side][key]              # biased upward: it may miss its estimate)
            assert low <= rep[side][key] <= high, (side, key)
    for key, (low, high) in ci["before"].items():  # "before" is the model's own logits
        assert (low, high) == pytest.approx(direct[key], rel=1e-6), key
    for c in rep["candidates"]:
        assert set(c["intervals"]) == {"nll", "ece", "brier", "accuracy"}
        low, high = c["intervals"]["nll"]
        assert low <= c["nll"] <= high
    assert rep["candidates"][0]["intervals"] == {
        key: value for key, value in ci["before"].items() if key in c["intervals"]}
    nll = rep["after"]["nll"]
    low, high = ci["after"]["nll"]
    assert f"{nll:.4f} [{low:.4f}, {high:.4f}]" in out
    assert "before (95% interval)" in out and "± half the 95% interval" in out
    assert rep["mce_min_count"] == 10 and set(rep["mce_excluded_bins"]) == {"before", "after"}
    assert rep["brier_decomposition"]["after"]["brier"] == pytest.approx(
        stats.compute()["brier_decomposition"]["brier"], rel=0.5)
    # a narrower level, the same seed: nested intervals; no resamples: none at all
    cli.ok("calibrate", "preds.npz", "--method", "temperature", "--level", "0.5", "--out", "b",
           "--no-diagram")
    half = cli.report("b")["intervals"]
    for key, (low, high) in half["after"].items():
        assert ci["after"][key][0] <= low <= high <= ci["after"][key][1], key
    out, _ = cli.ok("calibrate", "preds.npz", "--method", "temperature", "--resamples", "0",
                    "--out", "c", "--no-diagram")
    none = cli.report("c")
    assert none["intervals"]["before"] == {} and none["candidates"][0]["intervals"] == {}
    assert "[" not in out.split("chosen:")[1] and "interval" not in out
    assert none["after"] == rep["after"]
    cli.error("calibrate", "preds.npz", "--level", "1", match="between 0 and 1")
    cli.error("calibrate", "preds.npz", "--resamples", "-1", match="non-negative")


def test_automatic_bins_and_the_diagram_title(cli, data, monkeypatch):
    from logitkit import calibration
    from logitkit.calibration import auto_bins
    from logitkit.cli import _helper

    monkeypatch.setattr(_helper, "available", lambda: False)  # drawn here, where the spy is
    seen = {}
    draw = calibration.figure_from_stats

    def spy(stats, titles, **kwargs):
        seen.update(titles=titles, **kwargs)
        return draw(stats, titles, **kwargs)

    monkeypatch.setattr(calibration, "figure_from_stats", spy)
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--method", "vector", "--bins", "auto", "--level", "0.9",
           "--out", "a")
    rep = cli.report("a")
    assert rep["bins"] == auto_bins(len(y)) == 8
    assert seen["title"] == "preds.npz: calibrated by vector"
    assert seen["titles"] == ("before", "after (cross-fitted)") and seen["level"] == 0.9
    cli.error("calibrate", "preds.npz", "--bins", "many", match="a positive integer or 'auto'")


def test_report_schema_and_table_come_from_one_place(cli, data):
    import pathlib

    from logitkit.cli._report import load_report, render

    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    out, _ = cli.ok("calibrate", "preds.npz", "--out", "o", "--no-diagram")
    rep = load_report(pathlib.Path("o/report.json"))
    assert rep["schema_version"] == 1 and rep["n_classes"] == 4
    assert rep["input"]["kind"] == "logits" and rep["method"] == rep["calibrator"]["method"]
    assert out.startswith(render(rep))


def test_an_interval_above_its_figure_is_explained(cli, data):
    # the percentile interval of a binned error near the noise of its bins lies mostly or
    # wholly above the figure (a --test file of 558 rows: RMS CE 0.0410 [0.0437, 0.0917]);
    # the table says why, and only then (figures of other kinds are not named: the reason
    # given is the bins')
    import copy
    import pathlib

    from logitkit.cli._report import load_report, render

    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--out", "o", "--no-diagram")
    rep = load_report(pathlib.Path("o/report.json"))
    inside = copy.deepcopy(rep)
    for part in ("before", "after"):
        for key, v in inside[part].items():
            if inside["intervals"][part].get(key) and v is not None:
                inside["intervals"][part][key] = [v - 0.01, v + 0.01]
    assert "above their figures" not in render(inside)
    above = copy.deepcopy(inside)
    v = above["after"]["rms_ce"]
    above["intervals"]["after"]["rms_ce"] = [v + 0.003, v + 0.05]  # wholly above
    text = render(above)
    assert ("(RMS CE: intervals mostly above their figures; a binned error is biased upward\n"
            " where its bins hold few rows, and each bootstrap replicate is biased again)") in text
    v = above["before"]["ece"]
    above["intervals"]["before"]["ece"] = [v - 0.001, v + 0.03]  # mostly above
    above["intervals"]["after"]["nll"] = [above["after"]["nll"] + 0.1, 9.0]  # not a binned error
    assert "(ECE, RMS CE: intervals mostly above their figures" in render(above)
    above["intervals"]["before"]["ece"] = [v - 0.002, v + 0.002]  # in the middle: not named
    assert "(RMS CE: intervals mostly above" in render(above)


# ------------------------------------------------------------------------- options


def test_subprocess_python_m_logitkit(cli, make_data, tmp_path):
    z, y = make_data()
    np.savez(tmp_path / "preds.npz", logits=z, labels=y)
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "logitkit", "calibrate", "preds.npz", "--json",
                           "--no-diagram", "--method", "temperature", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep == cli.report(out)
    assert cli.temperature(rep) == pytest.approx(TemperatureScaler().fit(z, y).temperature_,
                                                 rel=1e-9)
    bad = subprocess.run([sys.executable, "-m", "logitkit", "calibrate", "missing.npz"],
                         capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_many_classes_auto_leaves_the_full_maps_out_and_says_so(cli, data, monkeypatch):
    # above AUTO_MAX_CLASSES classes (here 3: the data have 4) the progress counts and the
    # table's note follow select's candidates
    import logitkit.calibration._select as sel_mod
    from logitkit.cli import _calibrate

    monkeypatch.setattr(sel_mod, "AUTO_MAX_CLASSES", 3)
    monkeypatch.setattr(_calibrate, "AUTO_MAX_CLASSES", 3)
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    out, err = cli.ok("calibrate", "preds.npz", "--progress", "always", "--out", "p",
                      "--no-diagram")
    assert "logitkit: cross-validating 8 methods over 5 folds: 41 fits in " in err, err
    assert "above 3 classes auto leaves out structured, dirichlet, matrix" in out
    assert not any(line.startswith(("structured ", "dirichlet ", "matrix "))
                   for line in out.splitlines())
    out, _ = cli.ok("calibrate", "preds.npz", "--method", "matrix", "--out", "m",
                    "--no-diagram")
    assert "leaves out" not in out and cli.report("m")["calibrator"]["method"] == "matrix"


def test_bins_and_binning_options(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--bins", "5", "--binning", "quantile", "--out", "q")
    rep = cli.report("q")
    assert rep["bins"] == 5 and rep["binning"] == "quantile"
    cli.ok("calibrate", "preds.npz", "--bins", "5", "--out", "u", "--no-diagram")
    assert cli.report("u")["after"]["ece"] != rep["after"]["ece"]
    assert cli.report("u")["calibrator"] == rep["calibrator"]


def test_progress_always_off_a_terminal_prints_finished_stages_not_stuck_bars(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    _, err = cli.ok("calibrate", "preds.npz", "--progress", "always", "--out", "p",
                    "--no-diagram")
    assert "0%" not in err and "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("logitkit: cross-validating 11 methods over 5 folds: 56 fits in ")
               for line in lines), err
    assert any(line.startswith("logitkit: measuring 11 methods out of fold: 400 rows in ")
               for line in lines), err
    _, err = cli.ok("calibrate", "preds.npz", "--progress", "never", "--out", "n",
                    "--no-diagram")
    assert err == ""


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
    lines = io.StringIO()
    with Progress("always", long_input=False, stream=lines).stage("fitting", 10) as tick:
        for _ in range(3):
            tick(10)
    assert lines.getvalue().startswith("logitkit: fitting: 10 rows (3 passes) in ")


def test_at_bound_warning_is_one_line_and_in_the_report(cli):
    rng = np.random.default_rng(1)
    np.savez("random.npz", logits=rng.normal(size=(300, 3)), labels=rng.integers(0, 3, 300))
    _, err = cli.ok("calibrate", "random.npz", "--method", "temperature", "--out", "r",
                    "--no-diagram")
    assert err.startswith("logitkit: warning: The optimal temperature lies at the upper bound")
    assert cli.report("r")["at_bound"] and cli.report("r")["warnings"]


def test_bad_options_are_one_line_and_exit_2(cli):
    for args, match in [(["--bins", "0"], "positive integer"),
                        (["--binning", "adaptive"], "invalid choice"),
                        (["--input", "odds"], "invalid choice"),
                        (["--progress", "sometimes"], "invalid choice"),
                        (["--method", "auto", "--cv", "two"], "expected an integer ≥ 2"),
                        (["--seed", "x"], "--seed: expected a non-negative integer, got 'x'"),
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


def test_bench_quick_keeps_the_repeats_and_shapes_it_is_given(cli):
    argv = ["bench", "--quick", "--ops", "softmax", "--dtypes", "float32", "--peers", "none",
            "--json"]
    code, out, err = cli.run(*argv, "--repeats", "2", "--shapes", "8x16")
    assert code == 0, err
    report = json.loads(out)
    assert report["repeats"] == 2 and [r["shape"] for r in report["results"]] == [[8, 16]]
    code, out, err = cli.run(*argv, "--shapes", "8x16")
    assert code == 0, err
    assert json.loads(out)["repeats"] == 3


def test_bench_bad_options_are_one_line_and_exit_2(cli):
    cli.error("bench", "--shapes", "12by4", match="--shapes")
    cli.error("bench", "--ops", "softmax,frobnicate", match="--ops")
    cli.error("bench", "--dtypes", "float16", match="--dtypes")
    cli.error("bench", "--peers", "numpy", match="--peers")
    cli.error("bench", "--repeats", "0", match="--repeats")


def test_a_negative_seed_is_an_argument_error(cli, data):
    np.savez("preds.npz", logits=data[0], labels=data[1])
    cli.error("calibrate", "preds.npz", "--seed", "-1", "--out", "s", "--no-diagram",
              match="argument --seed: expected a non-negative integer, got '-1'")
    assert not os.path.exists("s")


def test_a_method_named_on_separable_rows_is_said_to_be_fitted_anyway(cli):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 3))
    y = rng.integers(0, 3, 300)
    z[np.arange(300), y] += 6
    np.savez("sep.npz", logits=z, labels=y)
    code, out, err = cli.run("calibrate", "sep.npz", "--method", "temperature", "--out", "sp",
                             "--no-diagram", "--resamples", "0")
    assert code == 0, err
    assert "chosen: temperature" in out
    assert "separable" in err and "temperature was fitted anyway" in err
    assert "left as they are" not in err
    rep = cli.report("sp")
    assert rep["method"] == "temperature"
    assert not any("left as they are" in w for w in rep["warnings"])
    # apply repeats the report's warnings: the same words
    code, _, err = cli.run("apply", "sep.npz", "--report", "sp/report.json", "--out", "p.npy",
                           "--force")
    assert code == 0, err
    assert "temperature was fitted anyway" in err and "left as they are" not in err


def test_ctrl_c_at_start_up_is_one_line_and_130(cli, monkeypatch):
    # regression: Ctrl-C during `from ._io import CliError` (the first thing main does)
    # printed a traceback
    import builtins

    real = builtins.__import__

    def importing(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "_io" or name.endswith("cli._io"):
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", importing)
    code, out, err = cli.run("calibrate", "x.npz")
    assert code == 130
    assert err == "logitkit: interrupted\n" and "Traceback" not in out + err


def _two_shards(folder, z, y):
    """``folder/a.npz`` and ``folder/b.npz``: the first 200 rows and the rest."""
    os.mkdir(folder)
    np.savez(f"{folder}/a.npz", logits=z[:200], labels=y[:200])
    np.savez(f"{folder}/b.npz", logits=z[200:], labels=y[200:])


def test_a_test_file_that_is_also_a_calibration_file_is_refused(cli, data):
    z, y = data
    np.savez("cal.npz", logits=z, labels=y)
    _two_shards("shards", z, y)
    cli.error("calibrate", "cal.npz", "--test", "cal.npz", "--out", "x",
              match="cal.npz is a calibration file too")
    cli.error("calibrate", "shards", "--test", "shards/b.npz", "--out", "x",
              match="is a calibration file too")
    cli.error("calibrate", "--scheduler", "tcp://127.0.0.1:1", "--out", "x",
              match="--scheduler needs an input file")
    assert not os.path.exists("x")


def test_too_few_resamples_for_the_level_are_refused(cli, data):
    z, y = data
    np.savez("cal.npz", logits=z, labels=y)
    cli.error("calibrate", "cal.npz", "--resamples", "2", "--out", "x",
              match="--resamples 2: too few for a 0.95 interval (at least 40")
    cli.error("calibrate", "cal.npz", "--resamples", "100", "--level", "0.99", "--out", "x",
              match="(at least 200")
    cli.ok("calibrate", "cal.npz", "--method", "temperature", "--resamples", "40", "--out",
           "ok", "--no-diagram")
    assert not os.path.exists("x")


def test_an_undefined_mce_reads_n_a_not_inf(cli, data):
    z, y = data
    np.savez("cal.npz", logits=z, labels=y)
    np.savez("test8.npz", logits=z[:8], labels=y[:8])
    out, _ = cli.ok("calibrate", "cal.npz", "--test", "test8.npz", "--method", "temperature",
                    "--out", "o", "--no-diagram")
    mce = next(line for line in out.splitlines() if line.startswith("MCE"))
    assert "inf" not in mce and mce.split()[1:] == ["n/a", "n/a"]
    assert cli.report("o")["after"]["mce"] is None


def test_test_labels_errors_and_notes_name_test_labels(cli, data):
    z, y = data
    np.savez("cal.npz", logits=z, labels=y)
    _two_shards("testshards", z, y)
    np.save("labels.npy", y)
    cli.error("calibrate", "cal.npz", "--test", "testshards", "--test-labels", "labels.npy",
              "--out", "x", match="--test-labels works with one input file")
    np.savez("test.npz", logits=z, labels=y)
    _, err = cli.ok("calibrate", "cal.npz", "--test", "test.npz", "--test-labels",
                    "labels.npy", "--method", "temperature", "--out", "o", "--no-diagram")
    assert "test.npz: its own labels are replaced by those of --test-labels labels.npy" in err
