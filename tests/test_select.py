"""select: stratified folds, out-of-fold figures, the choice rules, and what it returns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_close
from logitkit import LogitkitTypeError, LogitkitValueError, softmax
from logitkit.calibration import (
    Calibrator,
    IdentityCalibrator,
    Selection,
    TemperatureScaler,
    VectorScaler,
    nll,
    select,
)
from logitkit.calibration._select import CANDIDATES, stratified_folds


def make(n=1000, k=4, seed=0, scale=3.0, bias=0.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    y = (softmax(true, axis=1).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return scale * true + bias, y


def test_folds_are_stratified_and_balanced():
    y = np.repeat(np.arange(3), [50, 31, 19])
    folds = stratified_folds(y, 5, np.random.default_rng(0))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 100
    for c, count in ((0, 50), (1, 31), (2, 19)):
        per_fold = np.bincount(folds[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == count


def test_table_holds_out_of_fold_figures_of_every_candidate():
    z, y = make(n=800, k=3, seed=1)
    sel = select(z, y, random_state=0)
    assert isinstance(sel, Selection)
    assert [r["method"] for r in sel.table_] == list(CANDIDATES)
    for r in sel.table_:
        assert set(r) >= {"method", "nll", "ece", "brier", "accuracy", "accuracy_change",
                          "fold_spread", "fit_time", "converged", "at_bound", "flagged", "chosen",
                          "warnings", "error"}
        if r["error"] is None:
            oof = sel.oof_logits(r["method"])
            assert_close(r["nll"], nll(oof, y, from_logits=True), rtol=1e-12)
            per_fold = [float(nll(oof[sel.folds_ == f], y[sel.folds_ == f], from_logits=True))
                        for f in range(5)]
            assert_close(r["fold_spread"], np.std(per_fold), rtol=1e-12)
    # every row's out-of-fold logits come from the fold calibrator that did not see it
    fold_cals = sel.fold_calibrators_["temperature"]
    ts = [c.temperature_ for c in fold_cals]
    assert len(set(ts)) == 5
    rows = sel.folds_ == 2
    assert_close(sel.oof_logits("temperature")[rows], z[rows] / ts[2], rtol=1e-12)
    refit = TemperatureScaler().fit(z[~rows], y[~rows])  # the folds start from all rows' fit
    assert_close(refit.temperature_, ts[2], rtol=1e-9)
    assert sum(r["chosen"] for r in sel.table_) == 1 and sel.row()["method"] == sel.best_
    assert_close(sel.oof_logits_, sel.oof_logits(sel.best_), rtol=0)


def test_choice_is_best_out_of_fold_and_refitted_on_all_rows():
    z, y = make(n=1200, k=4, seed=2, bias=np.array([1.5, 0.0, -1.0, 0.5]))
    sel = select(z, y, methods=["vector", "matrix"], random_state=1)
    names = [r["method"] for r in sel.table_]
    assert names == ["none", "temperature", "vector", "matrix"]  # always both baselines
    ok = [r for r in sel.table_ if r["error"] is None and not r["accuracy_change"] < -0.01]
    best = min(r["nll"] for r in ok)
    assert sel.row()["nll"] <= best * 1.001
    assert sel.row()["nll"] <= sel.row("none")["nll"]
    assert sel.row()["nll"] <= sel.row("temperature")["nll"]
    direct = type(sel.calibrator_)(**sel.calibrator_.get_params()).fit(z, y)
    assert_close(sel.calibrator_.transform(z), direct.transform(z), rtol=1e-12)
    assert_close(sel.predict_proba(z), direct.predict_proba(z), rtol=1e-12)


def test_near_ties_go_to_the_simpler_method():
    # perfectly calibrated logits: temperature scaling finds T ≈ 1, a near-tie with "none"
    z, y = make(n=1500, k=3, seed=3, scale=1.0)
    sel = select(z, y, methods=["temperature"], random_state=0)
    none, ts = sel.row("none"), sel.row("temperature")
    assert abs(ts["nll"] - none["nll"]) <= 1e-3 * none["nll"]
    assert sel.best_ == "none" and isinstance(sel.calibrator_, IdentityCalibrator)


def test_leave_it_alone_on_near_separable_small_data():
    # a few rows, far apart: every fitted map loses out of fold to the logits as they are
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 20)
    z = np.eye(3)[y] * 6.0 + rng.normal(size=(60, 3)) * 0.8
    sel = select(z, y, random_state=0)
    assert sel.row()["nll"] <= sel.row("none")["nll"]
    assert np.isfinite(sel.row()["nll"])


def test_a_temperature_at_its_bound_is_never_chosen():
    # separable folds (the wine file of issue 13): T goes to its lower bound and the folds'
    # held-out rows all look right, yet new rows get infinitely confident predictions
    rng = np.random.default_rng(11)
    y = np.repeat(np.arange(3), 15)
    z = np.eye(3)[y] * 50.0 + rng.normal(size=(45, 3))
    sel = select(z, y, methods=["temperature"], random_state=0)
    row = sel.row("temperature")
    assert row["at_bound"] and not row["chosen"]
    assert sel.best_ == "none"


def test_accuracy_changes_beyond_one_point_are_flagged():
    # class biases that misplace the arg-max: vector scaling removes them and gains accuracy
    z, y = make(n=1500, k=3, seed=5, scale=1.0, bias=np.array([2.0, 0.0, 0.0]))
    sel = select(z, y, methods=["vector"], random_state=0)
    row = sel.row("vector")
    assert row["accuracy_change"] > 0.01 and row["flagged"]
    assert not sel.row("temperature")["flagged"]  # scaling never moves the arg-max
    assert sel.best_ == "vector"  # a gain is flagged, not excluded


def test_a_failing_candidate_is_reported_and_never_chosen():
    z, y = make(n=300, k=3, seed=6)
    z[np.arange(300), (y + 1) % 3] = -np.inf  # excluded classes: the vector map cannot take them
    sel = select(z, y, methods=["vector", "isotonic"], random_state=0)
    row = sel.row("vector")
    assert row["error"] is not None and "finite" in row["error"] and not row["chosen"]
    assert row["nll"] == np.inf
    assert sel.best_ != "vector"


def test_folds_start_from_the_fit_on_all_rows_and_progress_is_reported():
    z, y = make(n=800, k=3, seed=12)
    calls = []
    sel = select(z, y, methods=["matrix", "dirichlet"], random_state=0,
                 progress=lambda done, total, method: calls.append((done, total, method)))
    assert [c[0] for c in calls] == list(range(1, 25)) and {c[1] for c in calls} == {24}
    assert [c[2] for c in calls[::6]] == ["none", "temperature", "dirichlet", "matrix"]
    for method in ("dirichlet", "matrix"):
        cold = [type(c)(**c.get_params()).fit(z[sel.folds_ != f], y[sel.folds_ != f])
                for f, c in enumerate(sel.fold_calibrators_[method])]
        warm = sel.fold_calibrators_[method]
        assert sum(c.n_iter_ for c in warm) <= sum(c.n_iter_ for c in cold)
        for a, b in zip(warm, cold, strict=True):
            assert abs(a.objective_ - b.objective_) < 1e-9
    # the returned calibrator is the candidate's fit on all rows, not a refit
    assert sel.calibrator_.n_classes_ == 3


def test_scoring_random_state_and_json():
    z, y = make(n=600, k=3, seed=7)
    a = select(z, y, methods="vector", scoring="brier", random_state=3)
    b = select(z, y, methods="vector", scoring="brier", random_state=3)
    assert np.array_equal(a.folds_, b.folds_) and a.best_ == b.best_
    assert a.row()["brier"] <= min(r["brier"] for r in a.table_) * 1.001
    data = json.loads(json.dumps(a.to_dict()))
    assert data["best"] == a.best_ and len(data["table"]) == 3
    again = Calibrator.from_dict(data["calibrator"])
    assert np.array_equal(again.transform(z), a.calibrator_.transform(z))
    assert a.best_ in repr(a)


def test_probabilities_in():
    z, y = make(n=600, k=3, seed=8)
    p = softmax(z, axis=1)
    a = select(p, y, methods=["vector"], random_state=0, from_probs=True)
    b = select(np.log(p), y, methods=["vector"], random_state=0)
    assert a.best_ == b.best_
    assert_close(a.row()["nll"], b.row()["nll"], rtol=1e-7)
    assert a.calibrator_.from_probs


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"methods": "magic"}, LogitkitValueError, "methods"),
    ({"methods": 3}, LogitkitTypeError, "methods"),
    ({"cv": 1}, LogitkitValueError, "cv"),
    ({"cv": 2.0}, LogitkitTypeError, "cv"),
    ({"cv": 50}, LogitkitValueError, "at most the number of rows"),
    ({"scoring": "auc"}, LogitkitValueError, "scoring"),
    ({"from_probs": "yes"}, LogitkitTypeError, "from_probs"),
])
def test_bad_arguments(kwargs, error, match):
    z, y = make(n=40, k=3, seed=9)
    with pytest.raises(error, match=match):
        select(z, y, **kwargs)


def test_selection_lookups():
    z, y = make(n=300, k=3, seed=10)
    sel = select(z, y, methods=["vector"], random_state=0)
    with pytest.raises(LogitkitValueError, match="method"):
        sel.oof_logits("isotonic")
    with pytest.raises(LogitkitValueError, match="method"):
        sel.row("isotonic")
    assert isinstance(VectorScaler().fit(z, y), Calibrator)
