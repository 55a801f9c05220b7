"""``logitkit apply``: the report's calibrator on a new file, read as ``calibrate`` reads it, and
the report held to what it says (class count, input kind, bound, convergence, warnings)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from logitkit import softmax


def _calibrated(cli, path, out="cal", *extra, method="temperature"):
    code, _, err = cli.run("calibrate", path, "--method", method, "--out", out, "--no-diagram",
                           *extra)
    assert code == 0, err
    return cli.report(out)


def test_apply_with_temperature_or_report(cli, data):
    z, y = data
    np.save("logits.npy", z)
    np.savez("preds.npz", logits=z, labels=y)
    t = cli.temperature(_calibrated(cli, "preds.npz"))
    code, out, err = cli.run("apply", "logits.npy", "--report", "cal/report.json", "--out",
                         "probs.npy")
    assert code == 0, err
    assert "probs.npy" in out and "temperature" in out
    probs = np.load("probs.npy")
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, softmax(z.astype(np.float64) / t), rtol=1e-5, atol=1e-7)
    cli.error("apply", "logits.npy", "--temperature", "2", "--out", "probs.npy",
               match="--force")
    code, _, _ = cli.run("apply", "preds.npz", "--temperature", "2", "--out", "probs.npy",
                     "--force")
    assert code == 0
    np.testing.assert_allclose(np.load("probs.npy"), softmax(z.astype(np.float64) / 2),
                               rtol=1e-5, atol=1e-7)
    import pandas as pd

    frame = pd.DataFrame(z, columns=list("abcd"))
    frame["label"] = y
    frame.to_csv("preds.csv", index=False)
    assert cli.run("apply", "preds.csv", "--temperature", "0.5", "--out", "p.csv")[0] == 0
    back = np.loadtxt("p.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(back, softmax(z.astype(np.float64) / 0.5), rtol=1e-6, atol=1e-9)


def test_headerless_csv_is_read_the_same_by_calibrate_and_apply(cli, data):
    z, y = data
    np.savetxt("labelled.csv", np.column_stack([y, z]), delimiter=",", fmt="%.9g")
    t = cli.temperature(_calibrated(cli, "labelled.csv"))
    code, _, err = cli.run("apply", "labelled.csv", "--report", "cal/report.json", "--out",
                       "p.npy")
    assert code == 0, err
    assert "column 0" in err and "read as the labels" in err
    probs = np.load("p.npy")
    assert probs.shape == z.shape
    np.testing.assert_allclose(probs, softmax(z.astype(np.float64) / t), rtol=1e-6, atol=1e-9)


def test_pandas_index_is_dropped_by_apply_too(cli, data):
    import pandas as pd

    z, y = data
    frame = pd.DataFrame(z.astype(np.float64), columns=list("abcd"))
    frame["label"] = y
    frame.to_csv("indexed.csv")
    frame.drop(columns="label").to_csv("scores.csv")
    t = cli.temperature(_calibrated(cli, "indexed.csv"))
    for path in ("indexed.csv", "scores.csv"):
        code, _, err = cli.run("apply", path, "--report", "cal/report.json", "--out",
                           f"{path}.npy")
        assert code == 0, err
        assert "pandas index" in err
        np.testing.assert_allclose(np.load(f"{path}.npy"), softmax(z.astype(np.float64) / t),
                                   rtol=1e-6, atol=1e-9)


def test_apply_refuses_a_file_with_another_class_count(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    np.save("five.npy", np.column_stack([z, z[:, :1]]))
    _calibrated(cli, "preds.npz")
    line = cli.error("apply", "five.npy", "--report", "cal/report.json", "--out",
                      "p.npy", match="5 columns of scores (5 classes)")
    assert "fitted on 4 classes" in line
    assert not pathlib.Path("p.npy").exists()
    # a class count is not a matter of opinion: --force does not override it
    cli.error("apply", "five.npy", "--report", "cal/report.json", "--out", "p.npy",
               "--force", match="fitted on 4 classes")


def test_apply_refuses_a_fit_at_a_bound_unless_forced_and_repeats_the_warning(cli):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 3))
    np.savez("random.npz", logits=z, labels=rng.integers(0, 3, 300))
    rep = _calibrated(cli, "random.npz")
    assert rep["at_bound"] and rep["warnings"]
    line = cli.error("apply", "random.npz", "--report", "cal/report.json", "--out",
                      "p.npy", match="not applied: its fit stopped at a bound")
    assert "upper bound" in line and "--force" in line
    assert not pathlib.Path("p.npy").exists()
    code, _, err = cli.run("apply", "random.npz", "--report", "cal/report.json", "--out",
                         "p.npy", "--force")
    assert code == 0, err
    assert err.startswith("logitkit: warning: cal/report.json: The optimal temperature lies at "
                          "the upper bound")
    assert pathlib.Path("p.npy").exists()


def test_apply_refuses_a_fit_that_did_not_converge_unless_forced(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    rep = _calibrated(cli, "preds.npz")
    rep["converged"] = False
    rep["warnings"] = ["the fit stopped after 3 iterations"]
    pathlib.Path("cal/report.json").write_text(json.dumps(rep))
    cli.error("apply", "preds.npz", "--report", "cal/report.json", "--out", "p.npy",
               match="did not converge (the fit stopped after 3 iterations)")
    code, _, err = cli.run("apply", "preds.npz", "--report", "cal/report.json", "--out",
                       "p.npy", "--force")
    assert code == 0 and "warning: cal/report.json: the fit stopped after 3" in err


def test_apply_reads_the_kind_the_calibrator_was_fitted_on(cli, data):
    z, y = data
    p = softmax(z.astype(np.float64))
    np.savez("probs.npz", logits=p, labels=y)
    np.save("logits.npy", z)
    np.save("probs.npy", p)
    rep = _calibrated(cli, "probs.npz")
    assert rep["input"]["kind"] == "probs"
    t = cli.temperature(rep)
    code, out, err = cli.run("apply", "probs.npy", "--report", "cal/report.json", "--out",
                         "out.npy")
    assert code == 0, err
    assert "from probabilities" in out
    np.testing.assert_allclose(np.load("out.npy"), softmax(np.log(p) / t), rtol=1e-9)
    line = cli.error("apply", "logits.npy", "--report", "cal/report.json", "--out",
                      "x.npy", match="logits.npy: read as logits")
    assert "fitted on probs" in line and "--input probs" in line
    cli.error("apply", "probs.npy", "--report", "cal/report.json", "--input", "logits",
               "--out", "x.npy", match="--input logits: the calibrator in cal/report.json was "
                                       "fitted on probs")
    # a log-probabilities report takes files that auto-detection calls logits
    np.savez("logp.npz", logits=np.log(p), labels=y)
    _calibrated(cli, "logp.npz", "lp", "--input", "log-probs")
    np.save("logp.npy", np.log(p))
    code, _, err = cli.run("apply", "logp.npy", "--report", "lp/report.json", "--out",
                       "lp.npy")
    assert code == 0, err


def test_apply_reads_a_folder_of_shards_in_order(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    t = cli.temperature(_calibrated(cli, "preds.npz"))
    pathlib.Path("shards").mkdir()
    for i, part in enumerate(np.array_split(z, 3)):
        np.save(f"shards/part-{i}.npy", part)
    code, _, err = cli.run("apply", "shards", "--report", "cal/report.json", "--out",
                       "p.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load("p.npy"), softmax(z.astype(np.float64) / t), rtol=1e-5)


def test_apply_refuses_reports_it_cannot_trust(cli, data):
    np.save("logits.npy", data[0])
    pathlib.Path("bad.json").write_text("{not json")
    pathlib.Path("list.json").write_text("[1, 2]")
    pathlib.Path("old.json").write_text(json.dumps({"temperature": 1.5}))
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    good = _calibrated(cli, "preds.npz")
    truncated = dict(good, calibrator={"method": "temperature", "params": {}})
    pathlib.Path("truncated.json").write_text(json.dumps(truncated))
    pathlib.Path("partial.json").write_text(json.dumps({"schema_version": 1, "n_classes": 1}))
    unknown = dict(good, calibrator=dict(good["calibrator"], method="voodoo"))
    pathlib.Path("unknown.json").write_text(json.dumps(unknown))
    floor = dict(good, input=dict(good["input"], zero_floor="half"))
    pathlib.Path("floor.json").write_text(json.dumps(floor))
    cases = [
        (["--report", "bad.json"], "not a JSON report"),
        (["--report", "list.json"], "a JSON list, expected an object"),
        (["--report", "old.json"], "has no schema_version"),
        (["--report", "truncated.json"], "malformed calibrator"),
        (["--report", "partial.json"], "missing or malformed 'calibrator'"),
        (["--report", "unknown.json"], "malformed calibrator (Expected `calibrator['method']`"),
        (["--report", "floor.json"], "malformed 'input.zero_floor'"),
    ]
    for args, match in cases:
        cli.error("apply", "logits.npy", *args, "--out", "p.npy", match=match)
    assert not pathlib.Path("p.npy").exists()


def test_apply_bad_options(cli, data):
    z, _ = data
    np.save("logits.npy", z)
    cases = [
        (["logits.npy", "--out", "p.npy"], "one of the arguments"),
        (["logits.npy", "--temperature", "0", "--out", "p.npy"], "positive"),
        (["logits.npy", "--temperature", "nan", "--out", "p.npy"], "positive"),
        (["logits.npy", "--temperature", "2", "--report", "x.json", "--out", "p.npy"],
         "not allowed"),
        (["logits.npy", "--temperature", "2", "--out", "p.parquet"], "unsupported output"),
        (["logits.npy", "--temperature", "2"], "required"),
        (["logits.npy", "--temperature", "2", "--input", "odds", "--out", "p.npy"],
         "invalid choice"),
    ]
    for args, match in cases:
        cli.error("apply", *args, match=match)
    assert not pathlib.Path("p.npy").exists()


@pytest.mark.parametrize("method", ["structured", "isotonic"])
def test_apply_reproduces_the_reports_calibrator(cli, data, method):
    from logitkit.calibration import make_calibrator

    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    rep = _calibrated(cli, "preds.npz", method=method)
    assert rep["method"] == method
    cli.ok("apply", "preds.npz", "--report", "cal/report.json", "--out", "p.npy")
    expected = make_calibrator(method).fit(z, y).predict_proba(z)  # fitted on every row
    np.testing.assert_allclose(np.load("p.npy"), expected, rtol=1e-5, atol=1e-7)


def _edited(report, path, edit):
    import copy

    rep = copy.deepcopy(report)
    edit(rep, rep["calibrator"]["fitted"])
    pathlib.Path(path).write_text(json.dumps(rep))
    return path


@pytest.mark.parametrize("method,edit,match", [
    ("vector", lambda r, f: f.update(coef_=[float("nan")] * 4), "['coef_']` to be 4 finite"),
    ("vector", lambda r, f: f.pop("coef_"), "['coef_']` to be 4 finite numbers, but got nothing"),
    ("vector", lambda r, f: f.update(coef_=[1.0] * 3), "but got shape (3,)"),
    ("vector", lambda r, f: f.update(coef_=[[1.0] * 4] * 4), "but got shape (4, 4)"),
    ("vector", lambda r, f: f.update(coef_="1,1,1,1"), "but got '1,1,1,1'"),
    ("vector", lambda r, f: f.update(intercept_=[1, True, 0, 0]), "['intercept_']"),
    ("matrix", lambda r, f: f.update(coef_=[[1.0] * 4] * 3), "a 4 × 4 array"),
    ("temperature", lambda r, f: f.pop("temperature_"), "['temperature_']` to be a finite "
                                                        "number > 0"),
    ("temperature", lambda r, f: f.update(temperature_=-2.0), "number > 0, but got -2.0"),
    ("temperature", lambda r, f: f.update(temperature_=None), "number > 0, but got None"),
    ("temperature", lambda r, f: r["calibrator"].update(n_classes=3), "calibrator.n_classes"),
    ("temperature", lambda r, f: r.update(schema_version=True), "schema_version True"),
    ("temperature", lambda r, f: r.update(schema_version=1.0), "schema_version 1.0"),
    ("stacked", lambda r, f: f["weights_"].__setitem__(0, -0.5), "['weights_']` to be"),
    ("stacked", lambda r, f: f.update(weights_=[0.0] * len(f["weights_"])), "positive sum"),
    ("stacked", lambda r, f: f.update(weights_=f["weights_"][:-1]), "one per weight"),
    ("stacked", lambda r, f: f["components_"].pop(), "one per weight, but got"),
    ("stacked", lambda r, f: f["components_"][-1]["fitted"].update(n_classes_=3),
     "['components_']"),
])
def test_apply_refuses_a_malformed_calibrator_before_reading_the_input(cli, data, method, edit,
                                                                        match, monkeypatch):
    # every fitted value the calibrator reads is checked when the report is loaded: one
    # line naming --report, before the input is read (not NaN probabilities, a broadcast
    # error or an internal error after it)
    from logitkit.cli import _apply

    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    rep = _calibrated(cli, "preds.npz", "cal", "--resamples", "0", method=method)
    bad = _edited(rep, "bad.json", edit)

    def forbidden(*args, **kwargs):
        raise AssertionError("the input was read before the report was checked")

    monkeypatch.setattr(_apply, "read_inputs", forbidden)
    line = cli.error("apply", "preds.npz", "--report", bad, "--out", "p.npy", match=match)
    assert line.startswith("logitkit: error: --report bad.json: ")
    assert not pathlib.Path("p.npy").exists()


def test_structured_vector_is_named_so_and_older_reports_still_apply(cli, data):
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    code, out, err = cli.run("calibrate", "preds.npz", "--method", "structured-vector", "--out",
                             "sv", "--no-diagram", "--resamples", "0")
    assert code == 0, err
    assert "chosen: structured-vector (structured vector scaling" in out
    rep = cli.report("sv")
    assert rep["method"] == "structured-vector"
    # the library's own format, as before
    assert rep["calibrator"]["method"] == "structured"
    assert rep["calibrator"]["params"]["form"] == "vector"
    out, _ = cli.ok("apply", "preds.npz", "--report", "sv/report.json", "--out", "p.npy")
    assert "calibrated by structured-vector (structured vector scaling" in out
    # a report written before: "method": "structured", told apart by params.form only
    rep["method"] = "structured"
    pathlib.Path("old.json").write_text(json.dumps(rep))
    out, _ = cli.ok("apply", "preds.npz", "--report", "old.json", "--out", "q.npy")
    assert "calibrated by structured-vector (structured vector scaling" in out
    np.testing.assert_array_equal(np.load("q.npy"), np.load("p.npy"))
